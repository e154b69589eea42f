"""What infra/gcs/setup_bucket.sh grants, read from its --dry_run output: the exact gcloud
commands, and what each account may then do to which objects (iam_model: the roles'
permissions and `resource.name.startsWith` conditions)."""
from __future__ import annotations

import subprocess

import pytest
from iam_model import DELETE, READ, SETUP_BUCKET, WRITE, Binding, bindings, matches
from iam_model import allowed as _allowed
from iam_model import dry_run as _dry_run

PROJECT, REGION, BUCKET = "my-proj", "us-central1", "my-bucket"
DATAFLOW = f"serviceAccount:seqrec-dataflow@{PROJECT}.iam.gserviceaccount.com"
RECOMMEND = f"serviceAccount:seqrec-recommend@{PROJECT}.iam.gserviceaccount.com"
TRAINER = f"serviceAccount:seqrec-trainer@{PROJECT}.iam.gserviceaccount.com"
BUILD = f"serviceAccount:seqrec-build@{PROJECT}.iam.gserviceaccount.com"
LAUNCHER = "user:me@example.com"
BUILDER = f"serviceAccount:ci@{PROJECT}.iam.gserviceaccount.com"
OBJECTS = f"projects/_/buckets/{BUCKET}/objects/"


def dry_run(*flags: str) -> list[list[str]]:
    return _dry_run(PROJECT, REGION, BUCKET, *flags)


def allowed(grants, member, permission, obj=""):
    return _allowed(grants, member, permission, BUCKET, obj)


# What each job does, on objects it really uses (beam_jobs, trainer.storage, CheckpointManager).
MUST = {
    DATAFLOW: [(READ, "raw/ml-1m/ratings.dat"),
               (WRITE, "data/ml-1m/train/part-00000-of-00032.tfrecord.gz"),
               (DELETE, "data/ml-1m/_SUCCESS"),  # --overwrite replaces a finished run
               (WRITE, "data/ml-1m/train/beam-temp-part-x/0"), (DELETE, "data/ml-1m/train/beam-temp-part-x/0"),
               (READ, "data/ml-1m/_SUCCESS"),
               (WRITE, "dataflow/tmp/beamapp-x/tmp.json"), (DELETE, "dataflow/tmp/beamapp-x/tmp.json"),
               (WRITE, "dataflow/staging/beamapp-x/pipeline.pb"),
               (READ, "dataflow/staging/beamapp-x/pipeline.pb"),
               (DELETE, "dataflow/staging/template_launches/x/operation_result")],
    # beam_jobs.recommend_all's workers: users/ and the export in, Parquet out (temporary
    # names, then renamed), Beam's scratch space.
    RECOMMEND: [(READ, "data/ml-1m/users/part-00000-of-00032.tfrecord.gz"),
                (READ, "data/ml-1m/metadata.json"),
                (READ, "runs/r1/export/LATEST"), (READ, "runs/r1/export/3/saved_model.pb"),
                (READ, "runs/r1/model/variables/variables.index"),  # a Vertex AI run's
                (WRITE, "recs/r1/.tmp-ab12-part-00000-of-00032.parquet"),
                (DELETE, "recs/r1/.tmp-ab12-part-00000-of-00032.parquet"),
                (WRITE, "recs/r1/part-00000-of-00032.parquet"), (WRITE, "recs/r1/_SUCCESS"),
                (WRITE, "dataflow/staging/beamapp-x/requirements.txt"),
                (READ, "dataflow/staging/beamapp-x/pipeline.pb"),
                (DELETE, "dataflow/tmp/beamapp-x/tmp.json")],
    TRAINER: [(READ, "data/ml-1m/_SUCCESS"), (READ, "data/ml-1m/train/part-00000-of-00032.tfrecord.gz"),
              (WRITE, "runs/r1/.seqrec-preflight-0a1b"), (DELETE, "runs/r1/.seqrec-preflight-0a1b"),
              (WRITE, "runs/r1/checkpoints/ckpt-7.index"), (DELETE, "runs/r1/checkpoints/ckpt-1.index"),
              (WRITE, "runs/r1/checkpoints/checkpoint"), (DELETE, "runs/r1/checkpoints/checkpoint"),
              (READ, "runs/r1/config.json"), (WRITE, "runs/r1/model/saved_model.pb"),
              (WRITE, "runs/r1/logs/train/events.out.tfevents.1")],
    # Cloud Build as seqrec-build@: the source gcloud staged, the build's log.
    BUILD: [(READ, "cloudbuild/source/1700000000.5-ab.tgz"),
            (WRITE, "cloudbuild/logs/log-1234.txt"), (DELETE, "cloudbuild/logs/log-1234.txt")],
    # Whoever runs the build scripts: stages the source, reads the log, writes the spec.
    BUILDER: [(WRITE, "cloudbuild/source/1700000000.5-ab.tgz"),
              (READ, "cloudbuild/logs/log-1234.txt"),
              (WRITE, "templates/seqrec-v1.json"), (DELETE, "templates/seqrec-v1.json")],
}
MUST_NOT = {
    DATAFLOW: [(p, o) for p in (READ, WRITE, DELETE)
               for o in ("runs/r1/checkpoints/ckpt-7.index", "runs/r1/model/saved_model.pb",
                         "runs/r1/config.json", "templates/seqrec-v1.json")]
              + [(WRITE, "raw/ml-1m/ratings.dat"), (DELETE, "raw/ml-1m/ratings.dat")],
    # Reads the data and the runs, changes neither; nothing of the input or templates.
    RECOMMEND: [(p, o) for p in (WRITE, DELETE)
                for o in ("data/ml-1m/_SUCCESS", "data/ml-1m/users/part-00000-of-00032.tfrecord.gz",
                          "runs/r1/export/LATEST", "runs/r1/checkpoints/ckpt-7.index")]
               + [(p, o) for p in (READ, WRITE, DELETE)
                  for o in ("raw/ml-1m/ratings.dat", "templates/seqrec-v1.json",
                            "cloudbuild/source/1-ab.tgz")]
               + [(WRITE, "rec/r1/x"), (WRITE, "recs")],  # near misses of the prefix
    TRAINER: [(p, o) for p in (WRITE, DELETE)
              for o in ("data/ml-1m/_SUCCESS", "data/ml-1m/train/part-00000-of-00032.tfrecord.gz",
                        "data/ml-1m/metadata.json")]
             + [(p, o) for p in (READ, WRITE, DELETE)
                for o in ("raw/ml-1m/ratings.dat", "dataflow/staging/beamapp-x/pipeline.pb",
                          "templates/seqrec-v1.json")]
             + [(WRITE, "run/r1/x"), (WRITE, "runs")],  # near misses of the prefix
    BUILD: [(p, o) for p in (READ, WRITE, DELETE)
            for o in ("raw/ml-1m/ratings.dat", "data/ml-1m/_SUCCESS", "runs/r1/config.json",
                      "dataflow/staging/beamapp-x/pipeline.pb", "templates/seqrec-v1.json")]
           + [(WRITE, "cloudbuild/source/1-ab.tgz"), (DELETE, "cloudbuild/source/1-ab.tgz")],
    BUILDER: [(p, o) for p in (READ, WRITE, DELETE)
              for o in ("raw/ml-1m/ratings.dat", "data/ml-1m/_SUCCESS", "runs/r1/config.json",
                        "dataflow/staging/beamapp-x/pipeline.pb")],
}


@pytest.fixture(scope="module")
def grants() -> list[Binding]:
    return bindings(dry_run(f"--launcher={LAUNCHER}", f"--builder={BUILDER}", "--gke_namespace=ml"))


@pytest.mark.parametrize("member", [DATAFLOW, RECOMMEND, TRAINER, BUILD, BUILDER],
                         ids=["dataflow", "recommend", "trainer", "build", "builder"])
def test_accounts_can_do_their_job_and_nothing_else_to_objects(grants, member):
    missing = [(p, o) for p, o in MUST[member] if not allowed(grants, member, p, o)]
    assert not missing, missing
    extra = [(p, o) for p, o in MUST_NOT[member] if allowed(grants, member, p, o)]
    assert not extra, extra
    # Listing (Beam's and TF's globs, the trainer's preflight) and the bucket lookups Beam
    # makes before staging files and gcloud before uploading a build's source are requests
    # on the bucket.
    assert allowed(grants, member, "storage.objects.list")
    assert allowed(grants, member, "storage.buckets.get")


def test_the_model_can_fail():
    """What older versions of the script granted (objectAdmin on the bucket) lets the
    Dataflow workers delete checkpoints and the trainer delete the data."""
    old = [Binding("buckets", f"gs://{BUCKET}", m, "roles/storage.objectAdmin", None)
           for m in (DATAFLOW, TRAINER)]
    assert allowed(old, DATAFLOW, DELETE, "runs/r1/checkpoints/ckpt-1.index")
    assert allowed(old, TRAINER, DELETE, "data/ml-1m/_SUCCESS")
    with pytest.raises(AssertionError, match="does not read"):
        matches('resource.name.endsWith(".json")', OBJECTS + "x.json")


def _storage_command(member: str, role: str, prefix: str | None) -> list[str]:
    argv = ["gcloud", "storage", "buckets", "add-iam-policy-binding", f"gs://{BUCKET}"]
    if prefix is None:
        return argv + ["--condition=None", f"--member={member}", f"--role={role}"]
    who = member.split(":")[1].split("@")[0]
    title = f"{who}-{role.split('.')[-1]}-{prefix.rstrip('/').replace('/', '-')}"
    return argv + [f"--member={member}", f"--role={role}",
                   f'--condition=expression=resource.name.startsWith("{OBJECTS}{prefix}"),'
                   f"title={title}"]


def test_service_accounts_storage_commands_are_exactly_these():
    """Per account: bucket metadata and names, then one role per prefix. Each printed line
    is the command as a shell reads it (the condition quoted)."""
    storage = [argv for argv in dry_run()
               if argv[:4] == ["gcloud", "storage", "buckets", "add-iam-policy-binding"]]
    assert storage == [
        _storage_command(DATAFLOW, "roles/storage.legacyBucketReader", None),
        _storage_command(RECOMMEND, "roles/storage.legacyBucketReader", None),
        _storage_command(TRAINER, "roles/storage.legacyBucketReader", None),
        _storage_command(BUILD, "roles/storage.legacyBucketReader", None),
        _storage_command(DATAFLOW, "roles/storage.objectViewer", "raw/"),
        _storage_command(DATAFLOW, "roles/storage.objectUser", "data/"),
        _storage_command(DATAFLOW, "roles/storage.objectUser", "dataflow/"),
        _storage_command(RECOMMEND, "roles/storage.objectViewer", "data/"),
        _storage_command(RECOMMEND, "roles/storage.objectViewer", "runs/"),
        _storage_command(RECOMMEND, "roles/storage.objectUser", "recs/"),
        _storage_command(RECOMMEND, "roles/storage.objectUser", "dataflow/"),
        _storage_command(TRAINER, "roles/storage.objectViewer", "data/"),
        _storage_command(TRAINER, "roles/storage.objectUser", "runs/"),
        _storage_command(BUILD, "roles/storage.objectViewer", "cloudbuild/source/"),
        _storage_command(BUILD, "roles/storage.objectUser", "cloudbuild/logs/"),
    ]


def test_older_bucket_wide_object_admin_is_revoked():
    """An unconditioned objectAdmin left by an older version would outweigh the prefixes."""
    revoked = bindings(dry_run(), verb="remove-iam-policy-binding")
    assert {(b.member, b.role, b.condition) for b in revoked} == {
        (DATAFLOW, "roles/storage.objectAdmin", None), (TRAINER, "roles/storage.objectAdmin", None)}


def _project_roles(grants: list[Binding], member: str) -> set[str]:
    return {b.role for b in grants if b.scope == "projects" and b.member == member}


def test_no_project_wide_storage_or_basic_roles(grants):
    assert not [b for b in grants if b.scope == "projects" and b.role.startswith("roles/storage.")]
    assert not {b.role for b in grants} & {"roles/owner", "roles/editor", "roles/viewer"}
    # The Dataflow worker role (Dataflow has no narrower one), and nothing else.
    assert _project_roles(grants, DATAFLOW) == _project_roles(grants, RECOMMEND) == {
        "roles/dataflow.worker"}
    assert _project_roles(grants, TRAINER) == _project_roles(grants, BUILD) == set()
    # Unconditioned storage roles on the bucket: names and metadata only, but the launcher's.
    wide = {(b.member, b.role) for b in grants if b.scope == "buckets" and b.condition is None}
    assert {r for m, r in wide if m != LAUNCHER} == {"roles/storage.legacyBucketReader"}


def _acts_as(grants: list[Binding], member: str) -> set[str]:
    return {b.resource for b in grants
            if b.role == "roles/iam.serviceAccountUser" and b.member == member}


def test_launcher_launches_and_does_not_build(grants):
    assert _project_roles(grants, LAUNCHER) == {"roles/dataflow.developer", "roles/aiplatform.user"}
    assert _acts_as(grants, LAUNCHER) == {m.split(":")[1] for m in (DATAFLOW, RECOMMEND, TRAINER)}
    assert not [b for b in grants if b.member == LAUNCHER and b.scope == "repositories"]


def test_cloud_build_rights_go_to_the_builder_alone(grants):
    """roles/cloudbuild.builds.editor is project-wide (Cloud Build has nothing narrower):
    only --builder gets it, and its builds can run as seqrec-build@ and nothing else of
    this set-up."""
    editors = {b.member for b in grants if b.role.startswith("roles/cloudbuild.")}
    assert editors == {BUILDER}
    assert _project_roles(grants, BUILDER) == {"roles/cloudbuild.builds.editor"}
    assert _acts_as(grants, BUILDER) == {BUILD.split(":")[1]}
    # Without --builder nobody gets a Cloud Build role.
    assert not [b for b in bindings(dry_run(f"--launcher={LAUNCHER}"))
                if b.role.startswith("roles/cloudbuild.")]
    # The images are pushed by the build account; the builder may push a local build.
    writers = {b.member for b in grants if b.role == "roles/artifactregistry.writer"}
    assert writers == {BUILD, BUILDER}


@pytest.mark.parametrize("args, message", [
    (["p", "us-central1", "gs://b"], "BUCKET must be a bucket name without gs://"),
    (["--builder=ci@example.com", "p", "us-central1", "b12"], "--builder must be user:EMAIL"),
    (["--launcher=user:", "p", "us-central1", "b12"], "--launcher must be user:EMAIL"),
])
def test_setup_bucket_refuses_bad_arguments(args, message):
    result = subprocess.run(["bash", SETUP_BUCKET, "--dry_run", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
