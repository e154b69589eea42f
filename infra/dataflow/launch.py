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
JOB_NAME_PREFIX = "seqrec-timelines"


def make_parser() -> argparse.ArgumentParser:
    p = la.make_parser("python infra/dataflow/launch.py", __doc__, la.PIPELINE)
    la.add_dataflow_flags(
        p, JOB_NAME_PREFIX,
        "Worker container with the project's dependencies preinstalled, e.g. the Flex "
        "Template image (--sdk_container_image); default: Dataflow's stock Beam image, and "
        "every worker pip-installs them at start-up.")
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
    la.check_dataflow_flags(args, JOB_NAME_PREFIX)
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


def pipeline_argv(args: argparse.Namespace, job_flags: list[str]) -> list[str]:
    """Everything after `python -m beam_jobs.pipeline` in direct mode: the Dataflow
    options, then the job flags (given last, so the user's win)."""
    argv = la.dataflow_options(args)
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
    return la.print_or_run_dataflow(args, command(args, job_flags))


def main(argv: list[str] | None = None) -> int:
    return la.main("launch.py", launch, argv)


if __name__ == "__main__":
    sys.exit(main())
