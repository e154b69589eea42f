"""Job specs of infra/: they parse, validate against the real API schemas, and every flag
they pass to beam_jobs.pipeline or trainer.train is accepted by that entry point's parser.

Specs are rendered by their launchers (as a user would), never regexed from the templates.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from infra_paths import INFRA, ROOT, files, load

trainer_launch = load("infra/trainer/launch.py", "infra_trainer_launch")
dataflow_launch = load("infra/dataflow/launch.py", "infra_dataflow_launch")

IMAGE = "us-central1-docker.pkg.dev/my-proj/seqrec/trainer:abc123"
VERTEX = ["vertex", "--project=my-proj", "--region=us-central1"]
K8S = ["k8s", "--namespace=ml"]
COMMON = ["--bucket=my-bucket", f"--image={IMAGE}", "--run_name=exp1"]
# Flags a user adds after `--`: they must reach the trainer unchanged.
EXTRA = ["--", "--embedding_dim=64", "--learning_rate=0.05"]
CASES = {  # name -> (launcher argv, hosts)
    "vertex-1x8": (VERTEX + COMMON + EXTRA, 1),
    "vertex-4x8": (VERTEX + COMMON + ["--hosts=4", "--spot"] + EXTRA, 4),
    "k8s-1x8": (K8S + COMMON + EXTRA, 1),
    "k8s-3x4": (K8S + COMMON + ["--hosts=3", "--gpus_per_host=4",
                                "--global_batch_size=12000"] + EXTRA, 3),
}


def render(argv):
    args, extra = trainer_launch.parse_args(argv)
    return args, trainer_launch.render(args, extra)


def trainer_argvs(argv) -> list[list[str]]:
    args, docs = render(argv)
    return [c["args"] for c in trainer_launch.trainer_containers(args.target, docs)]


def test_every_yaml_and_json_file_parses():
    yamls, jsons = files(".yaml"), files(".json")
    assert len(yamls) == 4 and len(jsons) == 1, (yamls, jsons)
    for path in yamls:
        with open(path, encoding="utf-8") as f:
            assert [d for d in yaml.safe_load_all(f) if d], path
    for path in jsons:
        with open(path, encoding="utf-8") as f:
            json.load(f)


@pytest.mark.parametrize("case", ["vertex-1x8", "vertex-4x8"])
def test_vertex_spec_is_a_valid_custom_job_spec(case):
    from google.cloud.aiplatform_v1.types import custom_job
    from google.protobuf import json_format

    argv, hosts = CASES[case]
    _, docs = render(argv)
    assert len(docs) == 1
    # Strict parse into the API's own message: an unknown or misspelt field fails here.
    spec = json_format.ParseDict(docs[0], custom_job.CustomJobSpec.pb()())
    pools = spec.worker_pool_specs
    # Pool 0 is the chief (TF_CONFIG task "chief"), pool 1 the other workers.
    assert [p.replica_count for p in pools] == ([1] if hosts == 1 else [1, hosts - 1])
    for pool in pools:
        assert pool.machine_spec.accelerator_count == 8
        assert pool.container_spec.image_uri == IMAGE
        assert "--model_dir=gs://my-bucket/runs/exp1" in pool.container_spec.args
    assert spec.scheduling.restart_job_on_worker_restart
    assert spec.base_output_directory.output_uri_prefix == "gs://my-bucket/runs/exp1"
    strategy = custom_job.Scheduling.Strategy
    assert spec.scheduling.strategy == (strategy.SPOT if "--spot" in argv else strategy.STANDARD)


def _as_job(template: dict, name: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": template["spec"]}


# The oldest Kubernetes the specs support: podFailurePolicy is GA from 1.31.
K8S_VERSION = "1.31.0"


@pytest.mark.parametrize("case", ["k8s-1x8", "k8s-3x4"])
def test_k8s_specs_validate_against_the_kubernetes_schema(case):
    import kubernetes_validate

    argv, hosts = CASES[case]
    _, docs = render(argv)
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
    assert container["resources"]["limits"]["nvidia.com/gpu"] == (8 if hosts == 1 else 4)
    assert pod["restartPolicy"] == "Never"


def test_k8s_multi_host_env_names_the_pods_jobset_creates():
    # JobSet names pod i of replicated job "worker" <jobset>-worker-0-<i> under the
    # subdomain <jobset>; the entry point builds TF_CONFIG from these.
    _, docs = render(CASES["k8s-3x4"][0])
    pod = docs[0]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env == {"SEQREC_NUM_WORKERS": "3", "SEQREC_WORKER_HOST_PREFIX": "exp1-worker-0-",
                   "SEQREC_WORKER_DOMAIN": "exp1", "SEQREC_WORKER_PORT": "2222"}


# Parses argument lists with the trainer's real absl flags, in a fresh process: absl
# flags are process-global and trainer.train defines them only when run as a program.
_PARSE_TRAINER_FLAGS = r"""
import json, sys
from absl import flags
from trainer import train
train._define_flags()
out = []
for argv in json.load(sys.stdin):
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["trainer.train"] + argv)
        cfg = train.config_from_flags()
        out.append({"ok": True, "strategy": cfg.strategy, "embedding_dim": cfg.embedding_dim,
                    "global_batch_size": cfg.global_batch_size})
    except (flags.Error, ValueError) as e:
        out.append({"ok": False, "error": str(e)})
print(json.dumps(out))
"""


def parse_trainer_flags(argvs: list[list[str]]) -> list[dict]:
    result = subprocess.run([sys.executable, "-c", _PARSE_TRAINER_FLAGS],
                            input=json.dumps(argvs), capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_trainer_flag_in_the_specs_is_accepted_by_trainer_train():
    names, argvs = [], []
    for name, (argv, hosts) in CASES.items():
        for args in trainer_argvs(argv):
            names.append((name, hosts))
            argvs.append(args)
    # A control the parser must refuse: proves this check can fail.
    argvs.append(argvs[0] + ["--no_such_flag=1"])
    parsed = parse_trainer_flags(argvs)
    *specs, control = parsed
    assert not control["ok"] and "no_such_flag" in control["error"]
    for (name, hosts), argv, got in zip(names, argvs[:-1], specs, strict=True):
        assert got["ok"], f"{name}: {argv}: {got.get('error')}"
        assert got["strategy"] == ("mirrored" if hosts == 1 else "multi_worker"), name
        assert got["embedding_dim"] == 64, name  # the flags after `--` arrived


def test_launcher_refuses_a_batch_that_does_not_split_evenly():
    with pytest.raises(SystemExit, match="does not divide by the 24 GPUs"):
        render(K8S + COMMON + ["--hosts=3"])  # 12800 % 24 != 0
    with pytest.raises(SystemExit, match="--bucket='gs://my-bucket' is not a bucket name"):
        render(VERTEX + ["--bucket=gs://my-bucket", f"--image={IMAGE}"])


@pytest.mark.parametrize("target", ["vertex", "k8s"])
def test_trainer_launcher_cli_prints_the_spec_and_command(target, tmp_path):
    argv = (VERTEX if target == "vertex" else K8S) + COMMON + ["--hosts=2"]
    out = tmp_path / "spec.yaml"
    result = subprocess.run(
        [sys.executable, os.path.join(INFRA, "trainer", "launch.py"), *argv, "--print",
         f"--output={out}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    command = result.stdout.splitlines()[0]
    if target == "vertex":
        assert command.startswith("# gcloud ai custom-jobs create --project=my-proj")
    else:
        assert command == f"# kubectl apply -f {out}"
    printed = list(yaml.safe_load_all(result.stdout))
    assert printed == list(yaml.safe_load_all(out.read_text()))
    assert printed == render(argv)[1]


# --- Dataflow ---------------------------------------------------------------------------

def beam_unknown_flags(beam_args: list[str]) -> list[str]:
    """Flags no Beam PipelineOptions class defines (Beam itself only warns on them)."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    seen = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(beam_args)
    return unknown


DATAFLOW = ["--project=my-proj", "--region=us-central1", "--bucket=my-bucket",
            "--job_name=timelines-1", "--service_account_email=df@my-proj.iam.gserviceaccount.com",
            "--subnetwork=regions/us-central1/subnetworks/default", "--no_use_public_ips",
            "--num_workers=2", f"--worker_image={IMAGE}"]


def test_every_dataflow_launcher_flag_is_accepted_by_the_pipeline_and_beam():
    from beam_jobs import options

    args, extra = dataflow_launch.parse_args(DATAFLOW + ["--", "--num_shards=32", "--overwrite"])
    cmd = dataflow_launch.command(args, extra)
    assert cmd[:3] == [sys.executable, "-m", "beam_jobs.pipeline"]
    cfg, beam_args, _ = options.parse_args(cmd[3:])
    assert (cfg.input_dir, cfg.output_dir) == ("gs://my-bucket/raw/ml-1m",
                                               "gs://my-bucket/data/ml-1m")
    assert cfg.num_shards == 32 and cfg.overwrite
    assert beam_unknown_flags(beam_args) == []
    assert beam_unknown_flags(beam_args + ["--no_such_option=1"]) == ["--no_such_option=1"]
    assert "--runner=DataflowRunner" in beam_args
    assert f"--setup_file={os.path.join(ROOT, 'setup.py')}" in beam_args


def test_flex_template_parameters_are_pipeline_flags():
    from beam_jobs import options

    with open(os.path.join(INFRA, "dataflow", "flex_template", "metadata.json")) as f:
        params = json.load(f)["parameters"]
    job_flags = {a.dest for a in options.make_parser()._actions}
    for p in params:
        if p["name"] in job_flags:
            continue
        # Not a job flag: then a Beam option (the workers' image).
        assert beam_unknown_flags([f"--{p['name']}=x"]) == [], p["name"]
    # The launcher's template parameters, parsed for real.
    args, extra = dataflow_launch.parse_args(
        DATAFLOW + ["--flex_template=gs://my-bucket/templates/seqrec.json", "--",
                    "--num_shards=16", "--split=random"])
    cmd = dataflow_launch.command(args, extra)
    assert cmd[:5] == ["gcloud", "dataflow", "flex-template", "run", "timelines-1"]
    (params_arg,) = [c for c in cmd if c.startswith("--parameters=")]
    pairs = params_arg[len("--parameters=^~^"):].split("~")
    declared = {p["name"] for p in params}
    assert {kv.split("=", 1)[0] for kv in pairs} <= declared
    cfg, beam_args, _ = options.parse_args(["--" + kv for kv in pairs])
    assert cfg.num_shards == 16 and cfg.split == "random"
    assert beam_args == [f"--sdk_container_image={IMAGE}"]
    assert beam_unknown_flags(beam_args) == []


def test_dataflow_launcher_refuses_local_input_unless_dry_run(capsys):
    with pytest.raises(SystemExit):
        dataflow_launch.parse_args(DATAFLOW + ["--input_dir=data/sample"])
    assert "Dataflow workers cannot read local files" in capsys.readouterr().err
    args, _ = dataflow_launch.parse_args(DATAFLOW + ["--input_dir=data/sample", "--dry_run"])
    assert args.output_dir == "gs://my-bucket/data/sample"


def test_dataflow_launcher_cli_prints_the_command():
    result = subprocess.run(
        [sys.executable, os.path.join(INFRA, "dataflow", "launch.py"), *DATAFLOW, "--print"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[1:3] == ["-m", "beam_jobs.pipeline"]
    assert "--runner=DataflowRunner" in result.stdout.split()


def test_flex_template_entry_file_hands_its_flags_to_the_pipeline():
    # The launcher container runs main.py with the template parameters as flags; --help
    # shows they reach beam_jobs.pipeline's parser (run from the image's install path).
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, os.path.join(INFRA, "dataflow", "flex_template", "main.py"), "--help"],
        capture_output=True, text=True, timeout=120, env=env, cwd=INFRA)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m beam_jobs.pipeline")
    assert "--num_shards" in result.stdout


def readme_launches() -> list[list[str]]:
    """The `python infra/.../launch.py` commands of infra/README.md, as argv lists:
    continuation lines joined, [optional] flags included, shell variables filled in."""
    import re
    import shlex

    with open(os.path.join(INFRA, "README.md"), encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")
    values = {"PROJECT": "my-proj", "REGION": "us-central1", "BUCKET": "my-bucket",
              "IMAGE": IMAGE}
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("python infra/"):
            continue
        line = re.sub(r"\s#\s.*$", "", line).replace("[", "").replace("]", "")
        line = re.sub(r"\$(\w+)", lambda m: values[m.group(1)], line)
        out.append(shlex.split(line)[1:])
    return out


def test_readme_launch_commands_use_real_flags():
    from beam_jobs import options

    commands = readme_launches()
    scripts = [c[0] for c in commands]
    assert scripts.count("infra/dataflow/launch.py") == 3, scripts
    assert scripts.count("infra/trainer/launch.py") == 2, scripts
    for script, *argv in commands:
        if script == "infra/trainer/launch.py":
            args, docs = render(argv)
            assert docs and args.run_name == "ml1m-gru32"
            continue
        args, extra = dataflow_launch.parse_args(argv)
        cmd = dataflow_launch.command(args, extra)
        if args.flex_template:
            (params,) = [c for c in cmd if c.startswith("--parameters=")]
            argv = ["--" + kv for kv in params[len("--parameters=^~^"):].split("~")]
        else:
            argv = cmd[3:]
        _, beam_args, _ = options.parse_args(argv)
        assert beam_unknown_flags(beam_args) == [], (script, argv)
