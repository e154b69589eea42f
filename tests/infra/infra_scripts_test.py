"""Shell scripts and Dockerfiles of infra/: linted, and the ones that can run here, run."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from iam_model import DELETE, READ, WRITE, allowed, bindings, dry_run
from infra_paths import INFRA, ROOT, files, load, tool

ENTRYPOINT = os.path.join(INFRA, "trainer", "entrypoint.sh")


def _run(cmd, env=None, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, **kw)


def test_shell_scripts_pass_shellcheck():
    scripts = files(".sh")
    assert len(scripts) >= 4, scripts  # entrypoint, two image builds, bucket set-up
    result = _run([tool("shellcheck"), "--severity=style", *scripts])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfiles_pass_hadolint():
    dockerfiles = files("Dockerfile")
    assert len(dockerfiles) == 2, dockerfiles  # trainer, Dataflow Flex Template
    for path in dockerfiles:
        result = _run([tool("hadolint"), "--no-color", path])
        assert result.returncode == 0, f"{path}:\n{result.stdout}{result.stderr}"


def _dockerfile_args(path: str) -> dict[str, str]:
    with open(path, encoding="utf-8") as f:
        return dict(re.findall(r"^ARG (\w+)=(\S+)$", f.read(), re.M))


def _copy_sources(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        lines = [ln for ln in f.read().splitlines() if ln.startswith("COPY ")]
    sources = []
    for line in lines:
        if "--from=" in line:  # copied from another image, not the build context
            continue
        parts = [p for p in line.split()[1:] if not p.startswith("--")]
        sources += parts[:-1]
    return sources


@pytest.mark.parametrize("dockerfile", ["infra/trainer/Dockerfile",
                                        "infra/dataflow/flex_template/Dockerfile"])
def test_dockerfile_copies_only_existing_paths_its_dockerignore_keeps(dockerfile):
    path = os.path.join(ROOT, dockerfile)
    with open(path + ".dockerignore", encoding="utf-8") as f:
        kept = [ln[1:].rstrip("/") for ln in f.read().splitlines() if ln.startswith("!")]
    for source in _copy_sources(path):
        assert os.path.exists(os.path.join(ROOT, source)), f"{dockerfile}: COPY {source}: missing"
        assert any(source.rstrip("/") == k or source.startswith(k + "/") for k in kept), (
            f"{dockerfile}: COPY {source} is excluded by its .dockerignore")


def test_base_images_match_the_pinned_stack():
    """The images must carry the versions setup.py pins: tf-keras 2.21 needs TF 2.21
    exactly (a different base TF would be replaced by a CPU-only wheel), and Dataflow
    workers must run the Beam and Python that built the job."""
    import apache_beam
    import tensorflow as tf

    trainer = _dockerfile_args(os.path.join(INFRA, "trainer", "Dockerfile"))
    assert trainer["BASE_IMAGE"] == f"tensorflow/tensorflow:{tf.__version__}-gpu"
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        assert f'"tensorflow>={".".join(tf.__version__.split(".")[:2])},' in f.read()

    flex = _dockerfile_args(os.path.join(INFRA, "dataflow", "flex_template", "Dockerfile"))
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert flex["SDK_IMAGE"] == f"apache/beam_python{py}_sdk:{apache_beam.__version__}"
    assert f"python{py.replace('.', '')}-template-launcher-base" in flex["LAUNCHER_IMAGE"]


def test_trainer_image_sets_legacy_keras_and_runs_trainer():
    with open(os.path.join(INFRA, "trainer", "Dockerfile"), encoding="utf-8") as f:
        text = f.read()
    assert re.search(r"^ENV TF_USE_LEGACY_KERAS=1\b", text, re.M)
    assert 'ENTRYPOINT ["/usr/local/bin/seqrec-train"]' in text
    assert re.search(r"^COPY (--chmod=0?755 )?infra/trainer/entrypoint.sh "
                     r"/usr/local/bin/seqrec-train$", text, re.M)


def test_entrypoint_execs_the_real_trainer_with_its_flags():
    # The image's entry point runs `python -m trainer.train "$@"`; --helpfull lists the
    # trainer's own flags without starting TensorFlow (absl exits 1 after help).
    env = dict(os.environ, SEQREC_PYTHON=sys.executable)
    result = _run(["bash", ENTRYPOINT, "--helpfull"], env=env, cwd=ROOT)
    assert result.returncode in (0, 1), result.stderr
    assert result.stdout.startswith("Trains the sequential retrieval model"), result.stdout[:300]
    for flag in ("--data_dir", "--model_dir", "--strategy", "--checkpoint_every_steps"):
        assert flag in result.stdout


def _worker_env(index, num_workers=3, **extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(SEQREC_NUM_WORKERS=str(num_workers), JOB_COMPLETION_INDEX=str(index),
               SEQREC_WORKER_HOST_PREFIX="run7-worker-0-", SEQREC_WORKER_DOMAIN="run7")
    env.update(extra)
    return env


def test_entrypoint_tf_config_is_what_multi_worker_strategy_reads(monkeypatch):
    """Each pod's TF_CONFIG, read by TensorFlow's own resolver (the one
    MultiWorkerMirroredStrategy uses): same cluster everywhere, its own index."""
    import tensorflow as tf

    TFConfigClusterResolver = tf.distribute.cluster_resolver.TFConfigClusterResolver

    expected = [f"run7-worker-0-{i}.run7:2222" for i in range(3)]
    for index in range(3):
        result = _run(["bash", ENTRYPOINT, "--print_tf_config"], env=_worker_env(index))
        assert result.returncode == 0, result.stderr
        monkeypatch.setenv("TF_CONFIG", result.stdout.strip())
        resolver = TFConfigClusterResolver()
        assert resolver.cluster_spec().as_dict() == {"worker": expected}
        assert (resolver.task_type, resolver.task_id) == ("worker", index)


def test_entrypoint_keeps_a_tf_config_it_is_given():
    # Vertex AI sets TF_CONFIG (chief + workers) itself: it must reach the trainer as is.
    vertex = json.dumps({"cluster": {"chief": ["h0:2222"], "worker": ["h1:2222"]},
                         "task": {"type": "worker", "index": 0}})
    result = _run(["bash", ENTRYPOINT, "--print_tf_config"],
                  env=_worker_env(2, TF_CONFIG=vertex))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(vertex)


@pytest.mark.parametrize("extra, message", [
    ({"JOB_COMPLETION_INDEX": "3"}, "worker index must be an integer in [0, 3), got '3'"),
    ({"JOB_COMPLETION_INDEX": ""}, "neither SEQREC_WORKER_INDEX nor JOB_COMPLETION_INDEX"),
    ({"SEQREC_NUM_WORKERS": "two"}, "SEQREC_NUM_WORKERS must be a positive integer"),
    ({"SEQREC_WORKER_HOST_PREFIX": ""}, "SEQREC_WORKER_HOST_PREFIX is required"),
    ({"SEQREC_WORKER_DOMAIN": 'x"y'}, "must be lowercase DNS names"),
])
def test_entrypoint_rejects_a_broken_cluster_env(extra, message):
    result = _run(["bash", ENTRYPOINT, "--print_tf_config"], env=_worker_env(0, **extra))
    assert result.returncode == 2
    assert message in result.stderr


def _fake_gcloud(tmp_path):
    """gcloud is Google's tool, not ours: a stand-in first on PATH records each call's
    argv (one JSON list a line) and keeps a copy of the files it is handed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(
        '#!/bin/bash\n'
        f'"{sys.executable}" -c \'import json, sys; print(json.dumps(sys.argv[1:]))\' "$@" '
        '>>"$GCLOUD_DIR/calls"\n'
        'for a in "$@"; do\n'
        '  case "$a" in --config=*|--metadata-file=*) cp "${a#*=}" "$GCLOUD_DIR/${a%%=*}" ;; esac\n'
        'done\n')
    gcloud.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "PYTHON": sys.executable, "GCLOUD_DIR": str(tmp_path)}
    return env, tmp_path


def _calls(out) -> list[list[str]]:
    return [json.loads(line) for line in (out / "calls").read_text().splitlines()]


def test_build_flex_template_hands_gcloud_the_generated_metadata(tmp_path):
    """The template's parameters are generated from beam_jobs.options at build time."""
    template_metadata = load("infra/dataflow/launch.py", "infra_dataflow_launch").template_metadata
    env, out = _fake_gcloud(tmp_path)
    result = _run(["bash", os.path.join(INFRA, "dataflow", "build_flex_template.sh"),
                   "my-proj", "us-central1", "my-bucket", "v1"], env=env)
    assert result.returncode == 0, result.stderr
    build, template = _calls(out)
    assert build[:5] == ["builds", "submit", ROOT, "--project=my-proj", "--region=us-central1"]
    assert template[:6] == ["dataflow", "flex-template", "build",
                            "gs://my-bucket/templates/seqrec-v1.json", "--project=my-proj",
                            "--image=us-central1-docker.pkg.dev/my-proj/seqrec/dataflow:v1"]
    assert json.loads((out / "--metadata-file").read_text()) == template_metadata.metadata()


BUILDS = {  # script -> (argv after the script, the image it builds)
    "infra/trainer/build_image.sh": (["my-proj", "us-central1", "my-bucket", "v1"],
                                     "us-central1-docker.pkg.dev/my-proj/seqrec/trainer:v1"),
    "infra/dataflow/build_flex_template.sh": (["my-proj", "us-central1", "my-bucket", "v1"],
                                              "us-central1-docker.pkg.dev/my-proj/seqrec/dataflow:v1"),
}


@pytest.mark.parametrize("script", list(BUILDS))
def test_builds_run_as_the_build_account_with_what_setup_bucket_grants(tmp_path, script):
    """Cloud Build runs the build as seqrec-build@ (not the project's default build account),
    with the source staged and the log written under the bucket's cloudbuild/ prefix; the
    accounts setup_bucket.sh makes can do exactly that there (iam_model): --builder stages
    the source and reads the log, seqrec-build@ reads the source and writes the log."""
    argv, image = BUILDS[script]
    env, out = _fake_gcloud(tmp_path)
    result = _run(["bash", os.path.join(ROOT, script), *argv], env=env)
    assert result.returncode == 0, result.stderr
    submit = _calls(out)[0]
    assert submit[:2] == ["builds", "submit"]
    staging = [a.split("=", 1)[1] for a in submit if a.startswith("--gcs-source-staging-dir=")]
    assert staging == ["gs://my-bucket/cloudbuild/source"]
    config = yaml.safe_load((out / "--config").read_text())
    assert config["images"] == [image]
    assert config["options"] == {"logging": "GCS_ONLY"}  # the log in the bucket only
    build_sa = "seqrec-build@my-proj.iam.gserviceaccount.com"
    assert config["serviceAccount"] == f"projects/my-proj/serviceAccounts/{build_sa}"
    assert config["logsBucket"] == "gs://my-bucket/cloudbuild/logs"

    builder = "serviceAccount:ci@my-proj.iam.gserviceaccount.com"
    grants = bindings(dry_run("my-proj", "us-central1", "my-bucket", f"--builder={builder}"))
    source = staging[0].removeprefix("gs://my-bucket/") + "/1700000000.5-ab.tgz"
    log = config["logsBucket"].removeprefix("gs://my-bucket/") + "/log-1234.txt"
    for member, permission, obj in [(builder, WRITE, source), (f"serviceAccount:{build_sa}", READ, source),
                                    (f"serviceAccount:{build_sa}", WRITE, log),
                                    (f"serviceAccount:{build_sa}", DELETE, log), (builder, READ, log)]:
        assert allowed(grants, member, permission, "my-bucket", obj), (member, permission, obj)
    # gcloud looks the staging bucket up before uploading the source.
    assert allowed(grants, builder, "storage.buckets.get", "my-bucket")
    acts_as = {b.resource for b in grants
               if b.member == builder and b.role == "roles/iam.serviceAccountUser"}
    assert acts_as == {build_sa}
    if script.endswith("build_image.sh"):
        assert result.stdout.splitlines()[-1] == image  # what IMAGE=$(... | tail -1) takes


def test_build_image_refuses_a_gs_uri_as_bucket():
    result = _run(["bash", os.path.join(INFRA, "trainer", "build_image.sh"), "p", "us-central1",
                   "gs://b"])
    assert result.returncode == 2
    assert "BUCKET must be a bucket name without gs://" in result.stderr
