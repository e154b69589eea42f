"""Launches `python -m trainer.train` on Vertex AI or Kubernetes, one host or several.

    python infra/trainer/launch.py vertex --project=P --region=us-central1 \
        --bucket=B --image=IMAGE [--hosts=2] [--gpus_per_host=8] [--print] [-- TRAINER FLAGS]
    python infra/trainer/launch.py k8s --bucket=B --image=IMAGE [--hosts=2] [--print] \
        [-- TRAINER FLAGS]

One host: the trainer's own default strategy (MirroredStrategy over the host's GPUs;
vertex/single_host.yaml, k8s/single_host.yaml). Several: `--strategy=multi_worker`
(vertex/multi_host.yaml, k8s/multi_host.yaml, a JobSet). The specs are templates with
${NAME} fields; this fills them in, sets every trainer container's args, and submits with
gcloud or kubectl (`--print`: print the command, where the outputs land and the spec).

The trainer's args are `--data_dir` (default gs://BUCKET/data/ml-1m), on Kubernetes
`--model_dir=gs://BUCKET/runs/RUN_NAME`, `--strategy=multi_worker` for several hosts, then
the flags after `--`: nothing else, so trainer.config's defaults apply. On Vertex AI the run
directory is the job's baseOutputDirectory instead of a flag: Vertex sets AIP_MODEL_DIR,
AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR beneath it and the trainer follows them
(trainer.config.config_from_flags). All of it is checked with the trainer's own flag
definitions and config validation before anything is rendered. Launching again with the
same --run_name resumes that run (same directories).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import string
import sys
import tempfile

import yaml  # PyYAML: a dependency of apache-beam, so installed with the project.

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # infra/, for the shared launcher_args
import launcher_args as la  # noqa: E402

TEMPLATES = {
    ("vertex", False): os.path.join(HERE, "vertex", "single_host.yaml"),
    ("vertex", True): os.path.join(HERE, "vertex", "multi_host.yaml"),
    ("k8s", False): os.path.join(HERE, "k8s", "single_host.yaml"),
    ("k8s", True): os.path.join(HERE, "k8s", "multi_host.yaml"),
}

# Template values are substituted into YAML unquoted, so each must be a plain scalar.
# Kubernetes DNS-1035 label; 40 chars leaves room for "-worker-0-NNN" in pod hostnames.
RUN_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$")
IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")
WORD_RE = re.compile(r"^[A-Za-z0-9._-]+$")
DURATION_RE = re.compile(r"^[0-9]+s$")

# What Vertex AI sets in every container of a CustomJob from its baseOutputDirectory
# (CustomJobSpec.base_output_directory in the aiplatform API: "AIP_MODEL_DIR =
# <base_output_directory>/model/", and so on).
VERTEX_ENV = {"AIP_MODEL_DIR": "model/", "AIP_CHECKPOINT_DIR": "checkpoints/",
              "AIP_TENSORBOARD_LOG_DIR": "logs/"}


def make_parser() -> argparse.ArgumentParser:
    p = la.make_parser("python infra/trainer/launch.py", __doc__, la.TRAINER)
    sub = p.add_subparsers(dest="target", required=True)
    vertex = sub.add_parser("vertex", allow_abbrev=False,
                            help="Vertex AI CustomJob (gcloud ai custom-jobs create)")
    k8s = sub.add_parser("k8s", allow_abbrev=False,
                         help="Kubernetes Job (1 host) or JobSet (several) via kubectl")
    for q in (vertex, k8s):
        q.add_argument("--bucket", required=True, help="GCS bucket name (no gs://).")
        q.add_argument("--image", required=True,
                       help="Trainer image built from infra/trainer/Dockerfile.")
        q.add_argument("--run_name", default=None,
                       help="Names the job and its directory gs://BUCKET/runs/RUN_NAME. Reuse "
                       "it to resume a run. Default: seqrec-<UTC timestamp>.")
        q.add_argument("--hosts", type=int, default=1,
                       help="Machines/pods. 1: MirroredStrategy; >1: MultiWorkerMirroredStrategy.")
        q.add_argument("--gpus_per_host", type=int, default=8,
                       help="GPUs per machine; the trainer's --global_batch_size must divide "
                       "by hosts x gpus_per_host.")
        la.add_print(q, "the submit command, where the outputs land and the rendered spec")
        q.add_argument("--output", default=None, help="Also write the rendered spec here.")
    vertex.add_argument("--project", required=True)
    vertex.add_argument("--region", required=True)
    vertex.add_argument("--machine_type", default="a2-highgpu-8g")
    vertex.add_argument("--accelerator_type", default="NVIDIA_TESLA_A100",
                        help="Vertex AcceleratorType enum name, e.g. NVIDIA_H100_80GB.")
    vertex.add_argument("--spot", action="store_true",
                        help="Spot VMs: cheaper, preemptible; the job restarts and resumes.")
    vertex.add_argument("--service_account", default=None,
                        help="Training service account e-mail (see infra/gcs/setup_bucket.sh).")
    vertex.add_argument("--timeout", default="604800s", help="Job time limit (default 7 days).")
    k8s.add_argument("--namespace", default="default")
    k8s.add_argument("--k8s_service_account", default="seqrec-trainer",
                     help="Kubernetes service account bound to the GCP training SA "
                     "(Workload Identity).")
    k8s.add_argument("--accelerator", default="nvidia-tesla-a100",
                     help="GKE node label cloud.google.com/gke-accelerator.")
    k8s.add_argument("--backoff_limit", type=int, default=6,
                     help="Restarts after real failures (preemptions do not count on 1 host).")
    k8s.add_argument("--context", default=None, help="kubectl --context.")
    return p


@dataclasses.dataclass(frozen=True)
class Launch:
    """One checked launch: everything the spec and the submit command are made from."""

    args: argparse.Namespace
    values: dict[str, str]  # the templates' ${NAME} fields
    trainer_args: list[str]  # every trainer container's args
    environ: dict[str, str]  # what the platform sets that trainer.config reads
    config: object  # the trainer.config.TrainConfig the trainer will build


def prepare(argv: list[str] | None) -> Launch:
    """Parses and checks a launch; raises la.UsageError (naming the flag) for anything the
    launcher, the trainer's flags or its config would refuse."""
    args, user_flags = la.parse(make_parser(), argv, la.TRAINER, la.trainer_flag_names)
    if args.hosts < 1 or args.gpus_per_host < 1:
        raise la.UsageError("--hosts and --gpus_per_host must be >= 1")
    bucket = la.check(args.bucket, la.BUCKET_RE, "bucket", "a bucket name (no gs://)")
    run_name = la.check(args.run_name or la.timestamped("seqrec"), RUN_NAME_RE, "run_name",
                        "a lowercase DNS label of at most 40 characters")
    run_dir = f"gs://{bucket}/runs/{run_name}"
    values = {
        "RUN_NAME": run_name,
        "RUN_DIR": run_dir,
        "IMAGE": la.check(args.image, IMAGE_RE, "image", "an image reference"),
        "NUM_HOSTS": str(args.hosts),
        "NUM_OTHER_HOSTS": str(args.hosts - 1),
        "GPUS_PER_HOST": str(args.gpus_per_host),
    }
    if args.target == "vertex":
        values.update(
            MACHINE_TYPE=la.check(args.machine_type, WORD_RE, "machine_type", "a machine type"),
            ACCELERATOR_TYPE=la.check(args.accelerator_type, WORD_RE, "accelerator_type",
                                      "an AcceleratorType name"),
            TIMEOUT=la.check(args.timeout, DURATION_RE, "timeout", "a duration like 86400s"),
            SCHEDULING_STRATEGY="SPOT" if args.spot else "STANDARD",
        )
        environ = {var: f"{run_dir}/{sub}" for var, sub in VERTEX_ENV.items()}
    else:
        values.update(
            NAMESPACE=la.check(args.namespace, RUN_NAME_RE, "namespace", "a namespace name"),
            K8S_SERVICE_ACCOUNT=la.check(args.k8s_service_account, WORD_RE,
                                         "k8s_service_account", "a service account name"),
            ACCELERATOR=la.check(args.accelerator, WORD_RE, "accelerator", "a GKE accelerator"),
            BACKOFF_LIMIT=str(args.backoff_limit),
        )
        environ = {}
    # Only what this launch must set; the user's flags come last, so theirs win.
    given = la.trainer_flags_given(user_flags)
    own = []
    if "data_dir" not in given:
        own.append(f"--data_dir=gs://{bucket}/data/ml-1m")
    if args.target == "k8s" and "model_dir" not in given:
        own.append(f"--model_dir={run_dir}")
    if args.hosts > 1 and "strategy" not in given:
        own.append("--strategy=multi_worker")
    trainer_args = own + user_flags
    cfg = la.trainer_config(trainer_args, environ)
    _check_config(cfg, args)
    return Launch(args, values, trainer_args, environ, cfg)


def _check_config(cfg, args: argparse.Namespace) -> None:
    """What the trainer would accept but cannot work on this cluster."""
    option = cfg.flat()  # every option's value by its flag name, presets applied
    if args.hosts > 1 and option["strategy"] != "multi_worker":
        raise la.UsageError(f"--strategy={option['strategy']} with --hosts={args.hosts}: "
                            "several hosts train together only with --strategy=multi_worker")
    replicas, batch = args.hosts * args.gpus_per_host, option["global_batch_size"]
    if batch % replicas:
        raise la.UsageError(
            f"--global_batch_size={batch} does not divide by the {replicas} GPUs "
            f"({args.hosts} hosts x {args.gpus_per_host}); per-GPU batches must be equal")
    # Pods and VMs keep nothing on local disk: every directory must be in a bucket.
    for flag in ("data_dir", "model_dir", "checkpoint_dir", "tensorboard_dir", "export_dir"):
        if option[flag]:
            la.check(option[flag], la.GCS_URI_RE, flag,
                     "a gs:// URI (the job's machines keep no disk)")


def render(launch: Launch) -> list[dict]:
    """The spec documents: one CustomJobSpec, or the Kubernetes objects."""
    path = TEMPLATES[(launch.args.target, launch.args.hosts > 1)]
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        text = string.Template(text).substitute(launch.values)
    except KeyError as e:  # a template field this launcher does not fill: a bug here
        raise la.UsageError(f"{path} uses ${{{e.args[0]}}}, which has no value") from e
    # A JSON round trip unshares the nested objects that YAML merge keys (<<: *pool) share
    # between worker pools, so each container gets its own args list.
    docs = [json.loads(json.dumps(d)) for d in yaml.safe_load_all(text) if d is not None]
    for container in trainer_containers(launch.args.target, docs):
        container["args"] = list(launch.trainer_args)
    if launch.args.target == "vertex" and launch.args.service_account:
        docs[0]["serviceAccount"] = launch.args.service_account
    return docs


def trainer_containers(target: str, docs: list[dict]) -> list[dict]:
    """The container specs that run trainer.train (their "args" are its flags)."""
    if target == "vertex":
        return [pool["containerSpec"] for pool in docs[0]["workerPoolSpecs"]]
    out = []
    for doc in docs:
        if doc["kind"] == "Job":
            out += doc["spec"]["template"]["spec"]["containers"]
        elif doc["kind"] == "JobSet":
            for rjob in doc["spec"]["replicatedJobs"]:
                out += rjob["template"]["spec"]["template"]["spec"]["containers"]
    return out


def outputs(cfg) -> list[tuple[str, str]]:
    """Where the run writes, as the trainer resolves it (flags, then the platform's AIP_*
    variables, then model_dir)."""
    return [("model_dir", f"{cfg.model_dir} (config.json, metrics.json)"),
            ("checkpoints", cfg.checkpoints_uri),
            ("tensorboard", f"{cfg.tensorboard_uri} (train/, eval/)"),
            ("export", cfg.export_uri if cfg.flat()["export"] else "(none: --noexport)")]


def submit_command(launch: Launch, spec_path: str) -> list[str]:
    args = launch.args
    if args.target == "vertex":
        return ["gcloud", "ai", "custom-jobs", "create", f"--project={args.project}",
                f"--region={args.region}", f"--display-name={launch.values['RUN_NAME']}",
                f"--config={spec_path}"]
    cmd = ["kubectl"]
    if args.context:
        cmd.append(f"--context={args.context}")
    return cmd + ["apply", "-f", spec_path]


def dump(docs: list[dict]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)


def launch(argv: list[str] | None = None) -> int:
    job = prepare(argv)
    text = dump(render(job))
    if job.args.output:
        with open(job.args.output, "w", encoding="utf-8") as f:
            f.write(text)
    if job.args.print:
        print(f"# {shlex.join(submit_command(job, job.args.output or 'SPEC.yaml'))}")
        for what, where in outputs(job.config):
            print(f"# {what}: {where}")
        sys.stdout.write(text)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = job.args.output or os.path.join(tmp, f"{job.values['RUN_NAME']}.yaml")
        if not job.args.output:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        return la.run(submit_command(job, path))


def main(argv: list[str] | None = None) -> int:
    return la.main("launch.py", launch, argv)


if __name__ == "__main__":
    sys.exit(main())
