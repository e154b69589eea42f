"""Runs the seqrec Beam job (beam_jobs.pipeline) on Dataflow.

    python infra/dataflow/launch.py --project=P --region=us-central1 --bucket=B \
        [--machine_type=n2-standard-4] [--max_num_workers=20] [--print] [--dry_run] \
        [-- JOB FLAGS for beam_jobs.pipeline, e.g. --input_dir=gs://B/raw/ml-20m --num_shards=32]

The job gets --input_dir=gs://B/raw/ml-1m and --output_dir=gs://B/data/<input's basename>
unless the flags after `--` name them, the Dataflow options below, and nothing else: its
own flags' defaults (beam_jobs.options) apply. Every flag is checked by the job's own
parser, and Beam's, before anything is built or submitted.

Two ways to launch:
  * direct (default): `python -m beam_jobs.pipeline --runner=DataflowRunner ...` from this
    checkout. Beam builds an sdist of the project from --setup_file (the top-level setup.py)
    and Dataflow workers pip-install it, so every module a transform uses is importable
    there. `--dry_run` builds the Dataflow job offline and submits nothing.
  * --flex_template=gs://B/templates/seqrec.json: `gcloud dataflow flex-template run` of a
    template built by infra/dataflow/build_flex_template.sh (no local checkout needed to
    launch, e.g. from a scheduler); the job flags become template parameters.

Bucket layout (infra/README.md): gs://B/raw/ (MovieLens input), gs://B/data/ (outputs),
gs://B/dataflow/{tmp,staging}/ (Beam's scratch space).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # infra/, for the shared launcher_args
import launcher_args as la  # noqa: E402


def _load_template_metadata():
    """flex_template/template_metadata.py, by path: that folder also holds the template's
    main.py, which must not become importable as `main`."""
    path = os.path.join(HERE, "flex_template", "template_metadata.py")
    spec = importlib.util.spec_from_file_location("seqrec_template_metadata", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


template_metadata = _load_template_metadata()

SETUP_FILE = os.path.join(la.REPO, "setup.py")
# Dataflow job names: lowercase letters, digits and hyphens, starting with a letter.
JOB_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def make_parser() -> argparse.ArgumentParser:
    p = la.make_parser("python infra/dataflow/launch.py", __doc__, la.PIPELINE)
    p.add_argument("--project", required=True, help="GCP project that runs the job.")
    p.add_argument("--region", required=True, help="Dataflow region, e.g. us-central1.")
    p.add_argument("--bucket", required=True,
                   help="Bucket (no gs://) for temp/staging files and, by default, the data.")
    p.add_argument("--job_name", default=None,
                   help="Dataflow job name (default seqrec-timelines-<UTC timestamp>).")
    # Dataflow worker options, here because a Flex Template launch spells them as gcloud
    # flags. The defaults are this launcher's cost policy, not Beam's or the job's.
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
                   help="Build the Dataflow job offline (Beam's --dry_run=True) and submit "
                   "nothing; the input may then be local (direct mode only).")
    la.add_print(p, "the command")
    return p


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """(launcher args, job flags): the job flags are the ones after `--`, with
    --input_dir/--output_dir from the bucket layout put first where they name none. Checked
    with the job's and Beam's parsers; raises la.UsageError naming the flag."""
    args, extra = la.parse(make_parser(), argv, la.PIPELINE, la.pipeline_flag_names)
    la.check(args.bucket, la.BUCKET_RE, "bucket", "a bucket name (give it without gs://)")
    args.job_name = la.check(args.job_name or la.timestamped("seqrec-timelines"), JOB_NAME_RE,
                             "job_name", "a Dataflow job name (lowercase letters, digits and "
                             "'-', starting with a letter)")
    if args.flex_template and args.dry_run:
        raise la.UsageError("--dry_run builds the job locally; it does not apply to "
                            "--flex_template")
    # The bucket layout's locations, unless the job flags name their own.
    input_dir = la.flag_value(extra, "input_dir") or f"gs://{args.bucket}/raw/ml-1m"
    own = []
    if la.flag_value(extra, "input_dir") is None:
        own.append(f"--input_dir={input_dir}")
    if la.flag_value(extra, "output_dir") is None:
        name = os.path.basename(input_dir.rstrip("/")) or "ml-1m"
        own.append(f"--output_dir=gs://{args.bucket}/data/{name}")
    job_flags = own + extra
    if args.flex_template:
        cfg, _ = la.pipeline_config(job_flags)
        declared = {p["name"] for p in template_metadata.parameters()}
        for name, _ in la.flag_values(job_flags):
            if name not in declared:
                raise la.UsageError(f"--{name} is not a parameter of the Flex Template "
                                    "(infra/dataflow/flex_template/template_metadata.py)")
    else:  # the whole command line, Dataflow options included
        cfg, _ = la.pipeline_config(pipeline_argv(args, job_flags))
    for flag, uri in (("input_dir", cfg.input_dir), ("output_dir", cfg.output_dir)):
        if not uri.startswith("gs://") and not args.dry_run:
            raise la.UsageError(f"--{flag}={uri}: Dataflow workers cannot reach local files; "
                                "use gs:// (infra/README.md), or --dry_run")
    return args, job_flags


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


def pipeline_argv(args: argparse.Namespace, job_flags: list[str]) -> list[str]:
    """Everything after `python -m beam_jobs.pipeline` in direct mode: the Dataflow
    options, then the job flags (given last, so the user's win)."""
    argv = dataflow_options(args)
    # Workers pip-install the sdist Beam builds from this file (no save_main_session).
    argv.append(f"--setup_file={SETUP_FILE}")
    if args.dry_run:
        argv.append("--dry_run=True")
    return argv + list(job_flags)


def flex_template_command(args: argparse.Namespace, job_flags: list[str]) -> list[str]:
    """`gcloud dataflow flex-template run` with the job flags as template parameters."""
    params = [f"{name}={value}" for name, value in la.flag_values(job_flags)]
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


def command(args: argparse.Namespace, job_flags: list[str]) -> list[str]:
    if args.flex_template:
        return flex_template_command(args, job_flags)
    return [sys.executable, "-m", "beam_jobs.pipeline"] + pipeline_argv(args, job_flags)


def launch(argv: list[str] | None = None) -> int:
    args, job_flags = parse_args(argv)
    cmd = command(args, job_flags)
    if args.print:
        print(shlex.join(cmd))
        return 0
    # From the repository root: beam_jobs is importable and setup.py builds from there.
    code = la.run(cmd, cwd=la.REPO)
    if code == 0 and args.dry_run:
        print("dry run: the Dataflow job was built offline; nothing was submitted",
              file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    return la.main("launch.py", launch, argv)


if __name__ == "__main__":
    sys.exit(main())
