"""Launches `python -m trainer.train` on Vertex AI or Kubernetes, one host or several.

    python infra/trainer/launch.py vertex --project=P --region=us-central1 \
        --bucket=B --image=IMAGE [--hosts=2] [--gpus_per_host=8] [--print] [-- TRAINER FLAGS]
    python infra/trainer/launch.py k8s --bucket=B --image=IMAGE [--hosts=2] [--print]

One host -> `--strategy=mirrored` over its GPUs (vertex/single_host.yaml, k8s/single_host.yaml);
several -> `--strategy=multi_worker` (vertex/multi_host.yaml, k8s/multi_host.yaml, a JobSet).
The specs are templates with ${NAME} fields; this fills them in, checks that every field
was given, appends the flags after `--` to the trainer's, and submits with gcloud or kubectl
(`--print`: print the rendered spec and the command instead).

Bucket layout (see infra/README.md): data_dir defaults to gs://BUCKET/data/ml-1m and
model_dir is gs://BUCKET/runs/RUN_NAME (checkpoints, TensorBoard events, config.json,
metrics.json, export/). Launching again with the same --run_name resumes that run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import string
import subprocess
import sys
import tempfile

import yaml  # PyYAML: a dependency of apache-beam, so installed with the project.

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = {
    ("vertex", False): os.path.join(HERE, "vertex", "single_host.yaml"),
    ("vertex", True): os.path.join(HERE, "vertex", "multi_host.yaml"),
    ("k8s", False): os.path.join(HERE, "k8s", "single_host.yaml"),
    ("k8s", True): os.path.join(HERE, "k8s", "multi_host.yaml"),
}

# Values are substituted into YAML unquoted, so each must be a plain scalar. These
# patterns also catch typos before a job waits an hour for GPUs.
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
# Kubernetes DNS-1035 label; 40 chars leaves room for "-worker-0-NNN" in pod hostnames.
RUN_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$")
IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")
URI_RE = re.compile(r"^gs://[a-z0-9][a-z0-9._-]{1,61}[a-z0-9](/[A-Za-z0-9._=/-]*)?$")
WORD_RE = re.compile(r"^[A-Za-z0-9._-]+$")
DURATION_RE = re.compile(r"^[0-9]+s$")


def default_run_name(now: datetime.datetime | None = None) -> str:
    """seqrec-YYYYmmdd-HHMMSS (UTC): unique per launch, valid everywhere a name goes."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("seqrec-%Y%m%d-%H%M%S")


def _check(value: str, pattern: re.Pattern, flag: str, what: str) -> str:
    if not pattern.match(str(value)):
        raise SystemExit(f"launch.py: --{flag}={value!r} is not {what}")
    return str(value)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python infra/trainer/launch.py",
        description=__doc__.split("\n\n")[0],
        epilog="Flags after `--` go to trainer.train unchanged (e.g. -- --embedding_dim=64).",
    )
    sub = p.add_subparsers(dest="target", required=True)
    vertex = sub.add_parser("vertex", help="Vertex AI CustomJob (gcloud ai custom-jobs create)")
    k8s = sub.add_parser("k8s", help="Kubernetes Job (1 host) or JobSet (several) via kubectl")
    for q in (vertex, k8s):
        q.add_argument("--bucket", required=True, help="GCS bucket name (no gs://).")
        q.add_argument("--image", required=True,
                       help="Trainer image built from infra/trainer/Dockerfile.")
        q.add_argument("--run_name", default=None,
                       help="Names the job and model_dir gs://BUCKET/runs/RUN_NAME. Reuse it to "
                       "resume a run. Default: seqrec-<UTC timestamp>.")
        q.add_argument("--data_dir", default=None,
                       help="Output of beam_jobs.pipeline (default gs://BUCKET/data/ml-1m).")
        q.add_argument("--hosts", type=int, default=1,
                       help="Machines/pods. 1: MirroredStrategy; >1: MultiWorkerMirroredStrategy.")
        q.add_argument("--gpus_per_host", type=int, default=8)
        q.add_argument("--epochs", type=int, default=3)
        q.add_argument("--global_batch_size", type=int, default=12800,
                       help="Over all GPUs of all hosts; must divide evenly (default 12800, the "
                       "TFRS tutorial's).")
        q.add_argument("--checkpoint_every_steps", type=int, default=100,
                       help="A preempted run loses at most this many steps.")
        q.add_argument("--print", action="store_true",
                       help="Print the command and the rendered spec; submit nothing.")
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


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Returns (launcher args, extra trainer flags given after `--`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = make_parser().parse_args(argv)
    return args, extra


def template_values(args: argparse.Namespace) -> dict[str, str]:
    """The ${NAME} values of the templates, each checked to be a safe YAML scalar."""
    if args.hosts < 1 or args.gpus_per_host < 1:
        raise SystemExit("launch.py: --hosts and --gpus_per_host must be >= 1")
    replicas = args.hosts * args.gpus_per_host
    if args.global_batch_size % replicas:
        raise SystemExit(
            f"launch.py: --global_batch_size={args.global_batch_size} does not divide by the "
            f"{replicas} GPUs ({args.hosts} hosts x {args.gpus_per_host}); per-GPU batches "
            "must be equal")
    bucket = _check(args.bucket, BUCKET_RE, "bucket", "a bucket name (no gs://)")
    run_name = _check(args.run_name or default_run_name(), RUN_NAME_RE, "run_name",
                      "a lowercase DNS label of at most 40 characters")
    data_dir = _check(args.data_dir or f"gs://{bucket}/data/ml-1m", URI_RE, "data_dir",
                      "a gs:// URI (the trainer's hosts read it from the bucket)")
    values = {
        "RUN_NAME": run_name,
        "IMAGE": _check(args.image, IMAGE_RE, "image", "an image reference"),
        "DATA_DIR": data_dir,
        "MODEL_DIR": f"gs://{bucket}/runs/{run_name}",
        "NUM_HOSTS": str(args.hosts),
        "NUM_OTHER_HOSTS": str(args.hosts - 1),
        "GPUS_PER_HOST": str(args.gpus_per_host),
        "EPOCHS": str(args.epochs),
        "GLOBAL_BATCH_SIZE": str(args.global_batch_size),
        "CHECKPOINT_EVERY_STEPS": str(args.checkpoint_every_steps),
    }
    if args.target == "vertex":
        values.update(
            MACHINE_TYPE=_check(args.machine_type, WORD_RE, "machine_type", "a machine type"),
            ACCELERATOR_TYPE=_check(args.accelerator_type, WORD_RE, "accelerator_type",
                                    "an AcceleratorType name"),
            TIMEOUT=_check(args.timeout, DURATION_RE, "timeout", "a duration like 86400s"),
            SCHEDULING_STRATEGY="SPOT" if args.spot else "STANDARD",
        )
    else:
        values.update(
            NAMESPACE=_check(args.namespace, RUN_NAME_RE, "namespace", "a namespace name"),
            K8S_SERVICE_ACCOUNT=_check(args.k8s_service_account, WORD_RE,
                                       "k8s_service_account", "a service account name"),
            ACCELERATOR=_check(args.accelerator, WORD_RE, "accelerator", "a GKE accelerator"),
            BACKOFF_LIMIT=str(args.backoff_limit),
        )
    return values


def render(args: argparse.Namespace, extra: list[str]) -> list[dict]:
    """The spec documents for `args`: one CustomJobSpec, or the Kubernetes objects."""
    path = TEMPLATES[(args.target, args.hosts > 1)]
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        text = string.Template(text).substitute(template_values(args))
    except KeyError as e:  # a template field this launcher does not fill: a bug here
        raise SystemExit(f"launch.py: {path} uses ${{{e.args[0]}}}, which has no value") from e
    # A JSON round trip unshares the nested objects that YAML merge keys (<<: *pool) share
    # between worker pools, so appending flags below touches each container once.
    docs = [json.loads(json.dumps(d)) for d in yaml.safe_load_all(text) if d is not None]
    for container in trainer_containers(args.target, docs):
        container["args"] = list(container["args"]) + list(extra)
    if args.target == "vertex" and args.service_account:
        docs[0]["serviceAccount"] = args.service_account
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


def submit_command(args: argparse.Namespace, spec_path: str) -> list[str]:
    if args.target == "vertex":
        return ["gcloud", "ai", "custom-jobs", "create", f"--project={args.project}",
                f"--region={args.region}", f"--display-name={template_values(args)['RUN_NAME']}",
                f"--config={spec_path}"]
    cmd = ["kubectl"]
    if args.context:
        cmd.append(f"--context={args.context}")
    return cmd + ["apply", "-f", spec_path]


def dump(docs: list[dict]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    if args.run_name is None:  # fix it once: template_values is called more than once
        args.run_name = default_run_name()
    docs = render(args, extra)
    text = dump(docs)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    if args.print:
        shown = args.output or "SPEC.yaml"
        print(f"# {shlex.join(submit_command(args, shown))}")
        print(f"# model_dir: {template_values(args)['MODEL_DIR']}")
        sys.stdout.write(text)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = args.output or os.path.join(tmp, f"{args.run_name}.yaml")
        if not args.output:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        cmd = submit_command(args, path)
        print("+", shlex.join(cmd), file=sys.stderr)
        return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
