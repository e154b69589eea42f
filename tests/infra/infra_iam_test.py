"""What infra/gcs/setup_bucket.sh grants, read from its --dry_run output: the exact gcloud
commands, and what each account may then do to which objects, decided by a small model of
Cloud Storage's IAM (roles' permissions, `resource.name.startsWith` conditions)."""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess

import pytest
from infra_paths import INFRA

SETUP_BUCKET = os.path.join(INFRA, "gcs", "setup_bucket.sh")
PROJECT, REGION, BUCKET = "my-proj", "us-central1", "my-bucket"
DATAFLOW = f"serviceAccount:seqrec-dataflow@{PROJECT}.iam.gserviceaccount.com"
TRAINER = f"serviceAccount:seqrec-trainer@{PROJECT}.iam.gserviceaccount.com"
LAUNCHER = "user:me@example.com"
OBJECTS = f"projects/_/buckets/{BUCKET}/objects/"


def dry_run(*flags: str) -> list[list[str]]:
    """The argv of every command the script prints (`+ ` lines), as a shell reads them."""
    result = subprocess.run(["bash", SETUP_BUCKET, "--dry_run", *flags, PROJECT, REGION, BUCKET],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


@dataclasses.dataclass(frozen=True)
class Binding:
    scope: str  # "projects", "buckets", "service-accounts", "repositories"
    resource: str
    member: str
    role: str
    condition: str | None  # the CEL expression, None: unconditioned


def _flag(argv: list[str], name: str) -> str | None:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) <= 1, argv
    return values[0] if values else None


def bindings(commands: list[list[str]], verb: str = "add-iam-policy-binding") -> list[Binding]:
    out = []
    for argv in commands:
        if verb not in argv:
            continue
        at = argv.index(verb)
        condition = _flag(argv, "condition")
        if condition == "None":
            condition = None
        elif condition is not None:
            parts = dict(p.split("=", 1) for p in condition.split(","))
            assert set(parts) == {"expression", "title"}, condition  # gcloud wants a title
            condition = parts["expression"]
        out.append(Binding(argv[at - 1], argv[at + 1], _flag(argv, "member"), _flag(argv, "role"),
                           condition))
    return out


# The permissions of the storage roles the script uses (Cloud Storage's IAM roles page),
# as far as objects and listing go.
OBJECT_RW = {"storage.objects.get", "storage.objects.list", "storage.objects.create",
             "storage.objects.delete", "storage.objects.update"}
ROLE_PERMISSIONS = {
    "roles/storage.objectViewer": {"storage.objects.get", "storage.objects.list"},
    "roles/storage.objectCreator": {"storage.objects.create"},
    "roles/storage.objectUser": OBJECT_RW,
    "roles/storage.objectAdmin": OBJECT_RW | {"storage.objects.getIamPolicy",
                                              "storage.objects.setIamPolicy"},
    "roles/storage.legacyBucketReader": {"storage.buckets.get", "storage.objects.list"},
}
# Listing and bucket metadata are requests on the bucket; the rest on one object.
ON_BUCKET = {"storage.objects.list", "storage.buckets.get"}
_STARTS_WITH = re.compile(r'resource\.name\.startsWith\("([^"]+)"\)')


def _matches(condition: str | None, resource: str) -> bool:
    if condition is None:
        return True
    prefix = _STARTS_WITH.fullmatch(condition)
    assert prefix, f"a condition this model does not read: {condition}"
    return resource.startswith(prefix.group(1))


def allowed(grants: list[Binding], member: str, permission: str, obj: str = "") -> bool:
    """Whether `member` may use `permission` on gs://BUCKET/obj (on the bucket itself for
    listing and bucket metadata)."""
    resource = f"projects/_/buckets/{BUCKET}" if permission in ON_BUCKET else OBJECTS + obj
    return any(b.member == member and b.scope == "buckets" and b.resource == f"gs://{BUCKET}"
               and permission in ROLE_PERMISSIONS.get(b.role, ()) and _matches(b.condition, resource)
               for b in grants)


READ, WRITE, DELETE = "storage.objects.get", "storage.objects.create", "storage.objects.delete"
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
    TRAINER: [(READ, "data/ml-1m/_SUCCESS"), (READ, "data/ml-1m/train/part-00000-of-00032.tfrecord.gz"),
              (WRITE, "runs/r1/.seqrec-preflight-0a1b"), (DELETE, "runs/r1/.seqrec-preflight-0a1b"),
              (WRITE, "runs/r1/checkpoints/ckpt-7.index"), (DELETE, "runs/r1/checkpoints/ckpt-1.index"),
              (WRITE, "runs/r1/checkpoints/checkpoint"), (DELETE, "runs/r1/checkpoints/checkpoint"),
              (READ, "runs/r1/config.json"), (WRITE, "runs/r1/model/saved_model.pb"),
              (WRITE, "runs/r1/logs/train/events.out.tfevents.1")],
}
MUST_NOT = {
    DATAFLOW: [(p, o) for p in (READ, WRITE, DELETE)
               for o in ("runs/r1/checkpoints/ckpt-7.index", "runs/r1/model/saved_model.pb",
                         "runs/r1/config.json", "templates/seqrec-v1.json")]
              + [(WRITE, "raw/ml-1m/ratings.dat"), (DELETE, "raw/ml-1m/ratings.dat")],
    TRAINER: [(p, o) for p in (WRITE, DELETE)
              for o in ("data/ml-1m/_SUCCESS", "data/ml-1m/train/part-00000-of-00032.tfrecord.gz",
                        "data/ml-1m/metadata.json")]
             + [(p, o) for p in (READ, WRITE, DELETE)
                for o in ("raw/ml-1m/ratings.dat", "dataflow/staging/beamapp-x/pipeline.pb",
                          "templates/seqrec-v1.json")]
             + [(WRITE, "run/r1/x"), (WRITE, "runs")],  # near misses of the prefix
}


@pytest.fixture(scope="module")
def grants() -> list[Binding]:
    return bindings(dry_run(f"--launcher={LAUNCHER}", "--gke_namespace=ml"))


@pytest.mark.parametrize("member", [DATAFLOW, TRAINER], ids=["dataflow", "trainer"])
def test_job_accounts_can_do_their_job_and_nothing_else_to_objects(grants, member):
    missing = [(p, o) for p, o in MUST[member] if not allowed(grants, member, p, o)]
    assert not missing, missing
    extra = [(p, o) for p, o in MUST_NOT[member] if allowed(grants, member, p, o)]
    assert not extra, extra
    # Listing (Beam's and TF's globs, the trainer's preflight) and the bucket lookup Beam
    # makes before staging files are requests on the bucket.
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
        _matches('resource.name.endsWith(".json")', OBJECTS + "x.json")


def _storage_command(member: str, role: str, prefix: str | None) -> list[str]:
    argv = ["gcloud", "storage", "buckets", "add-iam-policy-binding", f"gs://{BUCKET}"]
    if prefix is None:
        return argv + ["--condition=None", f"--member={member}", f"--role={role}"]
    who = member.split(":")[1].split("@")[0]
    title = f"{who}-{role.split('.')[-1]}-{prefix.rstrip('/').replace('/', '-')}"
    return argv + [f"--member={member}", f"--role={role}",
                   f'--condition=expression=resource.name.startsWith("{OBJECTS}{prefix}"),'
                   f"title={title}"]


def test_job_accounts_storage_commands_are_exactly_these():
    """Per account: bucket metadata and names, then one role per prefix. Each printed line
    is the command as a shell reads it (the condition quoted)."""
    commands = dry_run()
    storage = [argv for argv in commands
               if argv[:4] == ["gcloud", "storage", "buckets", "add-iam-policy-binding"]]
    assert storage == [
        _storage_command(DATAFLOW, "roles/storage.legacyBucketReader", None),
        _storage_command(TRAINER, "roles/storage.legacyBucketReader", None),
        _storage_command(DATAFLOW, "roles/storage.objectViewer", "raw/"),
        _storage_command(DATAFLOW, "roles/storage.objectUser", "data/"),
        _storage_command(DATAFLOW, "roles/storage.objectUser", "dataflow/"),
        _storage_command(TRAINER, "roles/storage.objectViewer", "data/"),
        _storage_command(TRAINER, "roles/storage.objectUser", "runs/"),
    ]


def test_older_bucket_wide_object_admin_is_revoked():
    """An unconditioned objectAdmin left by an older version would outweigh the prefixes."""
    revoked = bindings(dry_run(), verb="remove-iam-policy-binding")
    assert {(b.member, b.role, b.condition) for b in revoked} == {
        (DATAFLOW, "roles/storage.objectAdmin", None), (TRAINER, "roles/storage.objectAdmin", None)}


def test_no_project_wide_storage_or_basic_roles(grants):
    project = [b for b in grants if b.scope == "projects"]
    assert not [b for b in project if b.role.startswith("roles/storage.")]
    assert not {b.role for b in grants} & {"roles/owner", "roles/editor", "roles/viewer"}
    # The job accounts: the Dataflow worker role (Dataflow has no narrower one), nothing else.
    assert [(b.member, b.role) for b in project if b.member in (DATAFLOW, TRAINER)] == [
        (DATAFLOW, "roles/dataflow.worker")]
    # Unconditioned storage roles on the bucket: names and metadata only, but the launcher's.
    wide = {(b.member, b.role) for b in grants if b.scope == "buckets" and b.condition is None}
    assert {r for m, r in wide if m != LAUNCHER} == {"roles/storage.legacyBucketReader"}


def test_launcher_acts_as_exactly_the_two_job_accounts(grants):
    acts_as = {b.resource for b in grants if b.role == "roles/iam.serviceAccountUser"}
    assert acts_as == {m.split(":")[1] for m in (DATAFLOW, TRAINER)}


def test_setup_bucket_rejects_a_gs_uri_as_bucket():
    result = subprocess.run(["bash", SETUP_BUCKET, "--dry_run", "p", "us-central1", "gs://b"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "BUCKET must be a bucket name without gs://" in result.stderr
