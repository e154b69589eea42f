"""Trainer job specs of infra/: they parse, validate against the real API schemas, pass the
trainer only what the launch must set (its own defaults apply otherwise), deliver the
user's flags, and follow Vertex AI's output-directory conventions.

Specs are rendered by their launcher (as a user would), never regexed from the templates;
the trainer side is trainer.config itself (its absl flags and config validation).
"""
from __future__ import annotations

import pytest
import yaml
from absl import flags
from infra_paths import files, load

from trainer import config

trainer_launch = load("infra/trainer/launch.py", "infra_trainer_launch")

IMAGE = "us-central1-docker.pkg.dev/my-proj/seqrec/trainer:abc123"
VERTEX = ["vertex", "--project=my-proj", "--region=us-central1"]
K8S = ["k8s", "--namespace=ml"]
COMMON = ["--bucket=my-bucket", f"--image={IMAGE}", "--run_name=exp1"]
RUN_DIR = "gs://my-bucket/runs/exp1"
# Every spec: (target argv, hosts, GPUs per host). Batch sizes must divide by hosts x GPUs;
# the trainer's default does for each of these.
SPECS = {
    "vertex-1x8": (VERTEX + COMMON, 1, 8),
    "vertex-4x8": (VERTEX + COMMON + ["--hosts=4", "--spot"], 4, 8),
    "k8s-1x8": (K8S + COMMON, 1, 8),
    "k8s-2x4": (K8S + COMMON + ["--hosts=2", "--gpus_per_host=4"], 2, 4),
}
# Flags a user adds after `--`: they must reach every trainer container unchanged.
USER = ["--embedding_dim=64", "--learning_rate=0.05", "--global_batch_size=4096"]


def render(argv):
    launch = trainer_launch.prepare(argv)
    return launch, trainer_launch.render(launch)


def container_args(argv) -> list[list[str]]:
    launch, docs = render(argv)
    return [c["args"] for c in trainer_launch.trainer_containers(launch.args.target, docs)]


def platform_env(target: str) -> dict[str, str]:
    """What the platform sets in the trainer's container that trainer.config reads: on
    Vertex AI, the variables its API documents for baseOutputDirectory (checked against
    that documentation below)."""
    if target == "k8s":
        return {}
    return {"AIP_MODEL_DIR": f"{RUN_DIR}/model/", "AIP_CHECKPOINT_DIR": f"{RUN_DIR}/checkpoints/",
            "AIP_TENSORBOARD_LOG_DIR": f"{RUN_DIR}/logs/"}


def trainer_parse(args: list[str], environ: dict[str, str]):
    """(FlagValues, TrainConfig) as `python -m trainer.train ARGS` builds them: the
    trainer's own flag definitions in a fresh FlagValues, then its config_from_flags."""
    fv = flags.FlagValues()
    config.define_flags(fv)
    fv(["trainer.train", *args])
    return fv, config.config_from_flags(fv, environ=environ)


def test_every_yaml_file_parses():
    yamls = files(".yaml")
    assert len(yamls) == 4, yamls
    for path in yamls:
        with open(path, encoding="utf-8") as f:
            assert [d for d in yaml.safe_load_all(f) if d], path
    assert files(".json") == []  # the Flex Template metadata is generated (template_metadata.py)


@pytest.mark.parametrize("case", ["vertex-1x8", "vertex-4x8"])
def test_vertex_spec_is_a_valid_custom_job_spec(case):
    from google.cloud.aiplatform_v1.types import custom_job
    from google.protobuf import json_format

    argv, hosts, gpus = SPECS[case]
    _, docs = render(argv + ["--", *USER])
    assert len(docs) == 1
    # Strict parse into the API's own message: an unknown or misspelt field fails here.
    spec = json_format.ParseDict(docs[0], custom_job.CustomJobSpec.pb()())
    pools = spec.worker_pool_specs
    # Pool 0 is the chief (TF_CONFIG task "chief"), pool 1 the other workers.
    assert [p.replica_count for p in pools] == ([1] if hosts == 1 else [1, hosts - 1])
    for pool in pools:
        assert pool.machine_spec.accelerator_count == gpus
        assert pool.container_spec.image_uri == IMAGE
    assert spec.scheduling.restart_job_on_worker_restart
    assert spec.base_output_directory.output_uri_prefix == RUN_DIR
    strategy = custom_job.Scheduling.Strategy
    assert spec.scheduling.strategy == (strategy.SPOT if "--spot" in argv else strategy.STANDARD)


def _as_job(template: dict, name: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": template["spec"]}


# The oldest Kubernetes the specs support: podFailurePolicy is GA from 1.31.
K8S_VERSION = "1.31.0"


@pytest.mark.parametrize("case", ["k8s-1x8", "k8s-2x4"])
def test_k8s_specs_validate_against_the_kubernetes_schema(case):
    import kubernetes_validate

    argv, hosts, gpus = SPECS[case]
    _, docs = render(argv + ["--", *USER])
    (doc,) = docs
    if hosts == 1:
        assert doc["kind"] == "Job"
        job = doc
    else:
        # JobSet is a CRD (no schema ships with Kubernetes); the Job it stamps out is
        # validated as a batch/v1 Job, the JobSet fields are checked by hand.
        assert (doc["apiVersion"], doc["kind"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet")
        assert doc["spec"]["network"]["enableDNSHostnames"] is True
        assert doc["spec"]["failurePolicy"]["maxRestarts"] >= 1
        (rjob,) = doc["spec"]["replicatedJobs"]
        assert rjob["name"] == "worker" and rjob["replicas"] == 1
        job = _as_job(rjob["template"], doc["metadata"]["name"])
        assert job["spec"]["completionMode"] == "Indexed"
        assert job["spec"]["parallelism"] == job["spec"]["completions"] == hosts
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
    assert pod["restartPolicy"] == "Never"


def test_k8s_multi_host_env_names_the_pods_jobset_creates():
    # JobSet names pod i of replicated job "worker" <jobset>-worker-0-<i> under the
    # subdomain <jobset>; the entry point builds TF_CONFIG from these.
    _, docs = render(SPECS["k8s-2x4"][0])
    pod = docs[0]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env == {"SEQREC_NUM_WORKERS": "2", "SEQREC_WORKER_HOST_PREFIX": "exp1-worker-0-",
                   "SEQREC_WORKER_DOMAIN": "exp1", "SEQREC_WORKER_PORT": "2222"}


# What a launch must set, and so may differ from the trainer's defaults without the user
# asking: where the data is, where the run writes (Kubernetes: a flag; Vertex AI: the
# spec's baseOutputDirectory), and for several hosts the strategy.
MUST_SET = {"data_dir": "gs://my-bucket/data/ml-1m", "model_dir": RUN_DIR,
            "strategy": "multi_worker"}


def unrequested(args: list[str], target: str, hosts: int) -> list[str]:
    """The trainer flags in `args` whose value differs from trainer.config's default
    although the launch did not need to set them."""
    fv, cfg = trainer_parse(args, platform_env(target))
    defaults = config.defaults()
    must = dict(MUST_SET)
    if target == "vertex":
        del must["model_dir"]  # from AIP_MODEL_DIR, not a flag
    if hosts == 1:
        del must["strategy"]
    out = []
    for name in fv:
        if not fv[name].present:
            continue
        if name in must:
            if fv[name].value != must[name]:
                out.append(f"--{name}={fv[name].value} (expected {must[name]})")
        elif fv[name].value != defaults.get(name):
            out.append(f"--{name}={fv[name].value} (trainer default {defaults.get(name)!r})")
    return out


@pytest.mark.parametrize("case", list(SPECS))
def test_specs_pass_only_what_the_launch_must_set(case):
    argv, hosts, _ = SPECS[case]
    target = argv[0]
    for args in container_args(argv):
        assert unrequested(args, target, hosts) == [], (case, args)
        # And the config the trainer builds is its default one, but for those and what the
        # platform's variables set: the directories, and on Vertex AI (export_dir from
        # AIP_MODEL_DIR) no numbered export versions, Vertex reading the SavedModel there.
        _, cfg = trainer_parse(args, platform_env(target))
        env_dirs = {"model_dir", "checkpoint_dir", "tensorboard_dir", "export_dir"}
        expected = dict(config.defaults())
        if target == "vertex":
            expected["export_versions"] = False
        for name, default in expected.items():
            if name not in MUST_SET and name not in env_dirs:
                assert cfg.flat()[name] == default, (case, name)
    # A control: a value the user did not ask for is caught (this check can fail).
    leaked = container_args(argv)[0] + ["--global_batch_size=12800"]
    assert unrequested(leaked, target, hosts) == ["--global_batch_size=12800 (trainer default "
                                                  f"{config.defaults()['global_batch_size']})"]


@pytest.mark.parametrize("case", list(SPECS))
def test_user_flags_after_the_separator_reach_every_trainer_container(case):
    argv, hosts, _ = SPECS[case]
    for args in container_args(argv + ["--", *USER]):
        assert args[-len(USER):] == USER
        _, cfg = trainer_parse(args, platform_env(argv[0]))
        option = cfg.flat()
        assert [option[k] for k in ("embedding_dim", "learning_rate", "global_batch_size")] == [
            64, 0.05, 4096]
        assert option["strategy"] == ("auto" if hosts == 1 else "multi_worker")
    # The user's value wins over one the launch would set.
    (args, *_) = container_args(argv + ["--", "--data_dir=gs://other/data"])
    assert trainer_parse(args, platform_env(argv[0]))[1].data_dir == "gs://other/data"
    assert not any(a.startswith("--data_dir=gs://my-bucket") for a in args)


def test_vertex_output_variables_are_what_the_aiplatform_api_documents():
    """The launcher (and this test's platform_env) assume the AIP_* values Vertex AI sets
    from baseOutputDirectory; the API's own documentation of the field says which."""
    from google.cloud.aiplatform_v1.types import custom_job

    doc = " ".join(custom_job.CustomJobSpec.__doc__.replace("``", "").split())
    for_custom_job = doc[doc.index("For CustomJob:"):doc.index("For CustomJob backing a Trial")]
    for var, sub in trainer_launch.VERTEX_ENV.items():
        assert f"{var} = <base_output_directory>/{sub}" in for_custom_job, var
    launch = trainer_launch.prepare(SPECS["vertex-1x8"][0])
    assert launch.environ == platform_env("vertex")


@pytest.mark.parametrize("case", list(SPECS))
def test_outputs_land_under_the_run_directory_and_a_relaunch_finds_them(case):
    argv, _, _ = SPECS[case]
    target = argv[0]
    first, again = trainer_launch.prepare(argv), trainer_launch.prepare(argv + ["--print"])
    cfg = first.config
    expected = {  # infra/README.md, "Where the outputs land"
        "vertex": (RUN_DIR, f"{RUN_DIR}/checkpoints/", f"{RUN_DIR}/logs/", f"{RUN_DIR}/model/"),
        "k8s": (RUN_DIR, f"{RUN_DIR}/checkpoints", RUN_DIR, f"{RUN_DIR}/export"),
    }[target]
    assert (cfg.model_dir, cfg.checkpoints_uri, cfg.tensorboard_uri, cfg.export_uri) == expected
    # What the trainer would resolve in the container from the rendered spec, too.
    (args, *_) = container_args(argv)
    assert trainer_parse(args, platform_env(target))[1] == cfg
    # Resuming is launching again with the same --run_name: the same directories.
    assert again.config == cfg
    assert trainer_launch.render(again) == trainer_launch.render(first)
    if target == "vertex":
        assert not any(a.startswith("--model_dir") for a in args)
