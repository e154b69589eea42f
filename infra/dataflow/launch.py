"""Runs the seqrec Beam job (beam_jobs.pipeline) on Dataflow.

    python infra/dataflow/launch.py --project=P --region=us-central1 --bucket=B \
        [--input_dir=gs://B/raw/ml-1m] [--output_dir=gs://B/data/ml-1m] \
        [--machine_type=n2-standard-4] [--max_num_workers=20] [--print] [--dry_run] \
        [-- MORE FLAGS for beam_jobs.pipeline, e.g. --num_shards=32 --overwrite]

Two ways to launch:
  * direct (default): `python -m beam_jobs.pipeline --runner=DataflowRunner ...` from this
    checkout. Beam builds an sdist of the project from --setup_file (the top-level setup.py)
    and Dataflow workers pip-install it, so every module a transform uses is importable
    there. `--dry_run` builds the Dataflow job offline and submits nothing.
  * --flex_template=gs://B/templates/seqrec.json: `gcloud dataflow flex-template run` of a
    template built by infra/dataflow/build_flex_template.sh (no local checkout needed to
    launch, e.g. from a scheduler).

Bucket layout (infra/README.md): gs://B/raw/ (MovieLens input), gs://B/data/ (outputs),
gs://B/dataflow/{tmp,staging}/ (Beam's scratch space).
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETUP_FILE = os.path.join(REPO, "setup.py")

BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
# Dataflow job names: lowercase letters, digits and hyphens, starting with a letter.
JOB_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def default_job_name(now: datetime.datetime | None = None) -> str:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("seqrec-timelines-%Y%m%d-%H%M%S")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python infra/dataflow/launch.py",
        description=__doc__.split("\n\n")[0],
        epilog="Flags after `--` go to beam_jobs.pipeline unchanged (job flags such as "
        "--num_shards or --split, or more Beam/Dataflow options).",
    )
    p.add_argument("--project", required=True, help="GCP project that runs the job.")
    p.add_argument("--region", required=True, help="Dataflow region, e.g. us-central1.")
    p.add_argument("--bucket", required=True,
                   help="Bucket (no gs://) for temp/staging files and, by default, the data.")
    p.add_argument("--input_dir", default=None,
                   help="MovieLens files on GCS (default gs://BUCKET/raw/ml-1m): workers read "
                   "them, so a local path works only with --dry_run.")
    p.add_argument("--output_dir", default=None,
                   help="Where the TFRecords, vocab and metadata go (default gs://BUCKET/data/"
                   "<basename of input_dir>).")
    p.add_argument("--job_name", default=None,
                   help="Dataflow job name (default seqrec-timelines-<UTC timestamp>).")
    p.add_argument("--machine_type", default="n2-standard-4",
                   help="Worker machine type (default n2-standard-4).")
    p.add_argument("--max_num_workers", type=int, default=20,
                   help="Autoscaling ceiling (default 20).")
    p.add_argument("--num_workers", type=int, default=None,
                   help="Initial workers (default: Dataflow decides).")
    p.add_argument("--service_account_email", default=None,
                   help="Worker service account (see infra/gcs/setup_bucket.sh); default: the "
                   "Compute Engine default account, which has far more rights than needed.")
    p.add_argument("--subnetwork", default=None,
                   help="regions/REGION/subnetworks/NAME, for VPCs without a default network.")
    p.add_argument("--no_use_public_ips", action="store_true",
                   help="Workers without external IPs (needs Private Google Access).")
    p.add_argument("--worker_image", default=None,
                   help="Worker container with the project's dependencies preinstalled, e.g. "
                   "the Flex Template image (--sdk_container_image); default: Dataflow's "
                   "stock Beam image, and every worker pip-installs them at start-up.")
    p.add_argument("--flex_template", default=None,
                   help="gs:// path of a built Flex Template spec: launch that instead.")
    p.add_argument("--dry_run", action="store_true",
                   help="Build the Dataflow job offline and submit nothing (direct mode).")
    p.add_argument("--print", action="store_true", help="Print the command; run nothing.")
    return p


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Returns (launcher args, extra pipeline flags given after `--`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = make_parser()
    args = parser.parse_args(argv)
    if not BUCKET_RE.match(args.bucket):
        parser.error(f"--bucket={args.bucket!r} is not a bucket name (give it without gs://)")
    args.job_name = args.job_name or default_job_name()
    if not JOB_NAME_RE.match(args.job_name):
        parser.error(f"--job_name={args.job_name!r}: use lowercase letters, digits and '-', "
                     "starting with a letter")
    args.input_dir = (args.input_dir or f"gs://{args.bucket}/raw/ml-1m").rstrip("/")
    if not args.input_dir.startswith("gs://") and not args.dry_run:
        parser.error(f"--input_dir={args.input_dir}: Dataflow workers cannot read local files; "
                     "copy them to gs:// first (infra/README.md)")
    name = os.path.basename(args.input_dir) or "ml-1m"
    args.output_dir = args.output_dir or f"gs://{args.bucket}/data/{name}"
    if args.flex_template and args.dry_run:
        parser.error("--dry_run builds the job locally; it does not apply to --flex_template")
    return args, extra


def dataflow_options(args: argparse.Namespace) -> list[str]:
    """Beam pipeline options for DataflowRunner (`--name=value` strings)."""
    opts = [
        "--runner=DataflowRunner",
        f"--project={args.project}",
        f"--region={args.region}",
        f"--job_name={args.job_name}",
        f"--temp_location=gs://{args.bucket}/dataflow/tmp",
        f"--staging_location=gs://{args.bucket}/dataflow/staging",
        f"--machine_type={args.machine_type}",
        f"--max_num_workers={args.max_num_workers}",
        "--autoscaling_algorithm=THROUGHPUT_BASED",
    ]
    if args.num_workers:
        opts.append(f"--num_workers={args.num_workers}")
    if args.service_account_email:
        opts.append(f"--service_account_email={args.service_account_email}")
    if args.subnetwork:
        opts.append(f"--subnetwork={args.subnetwork}")
    if args.no_use_public_ips:
        opts.append("--no_use_public_ips")
    if args.worker_image:
        opts.append(f"--sdk_container_image={args.worker_image}")
    return opts


def pipeline_argv(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """Everything after `python -m beam_jobs.pipeline` in direct mode."""
    argv = [f"--input_dir={args.input_dir}", f"--output_dir={args.output_dir}"]
    argv += dataflow_options(args)
    # Workers pip-install the sdist Beam builds from this file (no save_main_session).
    argv.append(f"--setup_file={SETUP_FILE}")
    if args.dry_run:
        argv.append("--dry_run=True")
    return argv + list(extra)


def flex_template_command(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """`gcloud dataflow flex-template run` with the job flags as template parameters."""
    params = [f"input_dir={args.input_dir}", f"output_dir={args.output_dir}"]
    for flag in extra:
        if not flag.startswith("--"):
            raise SystemExit(f"launch.py: {flag!r}: give template parameters as --name=value")
        name, _, value = flag[2:].partition("=")
        params.append(f"{name}={value or 'true'}")
    cmd = [
        "gcloud", "dataflow", "flex-template", "run", args.job_name,
        f"--project={args.project}",
        f"--region={args.region}",
        f"--template-file-gcs-location={args.flex_template}",
        f"--temp-location=gs://{args.bucket}/dataflow/tmp",
        f"--staging-location=gs://{args.bucket}/dataflow/staging",
        f"--worker-machine-type={args.machine_type}",
        f"--max-workers={args.max_num_workers}",
    ]
    if args.num_workers:
        cmd.append(f"--num-workers={args.num_workers}")
    if args.service_account_email:
        cmd.append(f"--service-account-email={args.service_account_email}")
    if args.subnetwork:
        cmd.append(f"--subnetwork={args.subnetwork}")
    if args.no_use_public_ips:
        cmd.append("--disable-public-ips")
    if args.worker_image:
        params.append(f"sdk_container_image={args.worker_image}")
    # gcloud's dict syntax: ^~^ makes "~" the separator, so values may contain commas.
    return cmd + ["--parameters=^~^" + "~".join(params)]


def command(args: argparse.Namespace, extra: list[str]) -> list[str]:
    if args.flex_template:
        return flex_template_command(args, extra)
    return [sys.executable, "-m", "beam_jobs.pipeline"] + pipeline_argv(args, extra)


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    cmd = command(args, extra)
    if args.print:
        print(shlex.join(cmd))
        return 0
    print("+", shlex.join(cmd), file=sys.stderr, flush=True)
    # From the repository root: beam_jobs is importable and setup.py builds from there.
    code = subprocess.call(cmd, cwd=REPO)
    if code == 0 and args.dry_run:
        print("dry run: the Dataflow job was built offline; nothing was submitted",
              file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
