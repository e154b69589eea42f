"""Runs batch recommendations (beam_jobs.recommend_all) on Dataflow.

    python infra/dataflow/launch_recommend.py --project=P --region=us-central1 --bucket=B \
        --run_name=RUN [--machine_type=n2-standard-4] [--max_num_workers=20] \
        [--worker_image=IMAGE] [--print] [--dry_run] \
        [-- JOB FLAGS for beam_jobs.recommend_all, e.g. --k=100 --exclude_seen]

The job gets, unless the flags after `--` name them (bucket layout: infra/README.md):
--data_dir=gs://B/data/ml-1m, --model_dir=gs://B/runs/RUN (the newest of its export/
versions: a Kubernetes run; a Vertex AI run's SavedModel is gs://B/runs/RUN/model, given
as `-- --export_dir=...`, which replaces --model_dir) and --output_dir=gs://B/recs/RUN;
the Dataflow options of infra/dataflow/launch.py; and nothing else: its own flags'
defaults apply. Every flag is checked by the job's own parser, and Beam's, before anything
is built or submitted.

The same conventions as infra/dataflow/launch.py (direct mode, no Flex Template): `python
-m beam_jobs.recommend_all --runner=DataflowRunner ... --setup_file=setup.py` from this
checkout; Beam builds an sdist of the project and every worker pip-installs it. Unlike the
prep job's, these workers need TensorFlow (the model handler loads the SavedModel):

  * default: Beam's --requirements_file=infra/dataflow/recommend_requirements.txt (setup.py's
    `recommend` extra), with --requirements_cache=skip: workers pip-install TensorFlow
    from PyPI at start-up (they need PyPI: public IPs or Cloud NAT); the launch itself
    downloads nothing.
  * --worker_image=IMAGE: a worker container with TensorFlow preinstalled (built from
    infra/dataflow/flex_template/Dockerfile with --build-arg EXTRAS=gcp,recommend); no
    requirements file, so workers start without installing TensorFlow.

`--dry_run` builds the Dataflow job offline and submits nothing; the data_dir and model may
then be local (the job reads them when it starts, before building the pipeline).
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # infra/, for the shared launcher_args
import launcher_args as la  # noqa: E402

SETUP_FILE = os.path.join(la.REPO, "setup.py")
REQUIREMENTS_FILE = os.path.join(HERE, "recommend_requirements.txt")
JOB_NAME_PREFIX = "seqrec-recommend"
# A run name becomes a path segment of the defaults: the trainer launcher's --run_name.
RUN_NAME_RE = la.JOB_NAME_RE


def make_parser() -> argparse.ArgumentParser:
    p = la.make_parser("python infra/dataflow/launch_recommend.py", __doc__, la.RECOMMEND)
    la.add_dataflow_flags(
        p, JOB_NAME_PREFIX,
        "Worker container with the project's dependencies AND TensorFlow preinstalled "
        "(--sdk_container_image; infra/dataflow/flex_template/Dockerfile built with "
        "--build-arg EXTRAS=gcp,recommend); default: Dataflow's stock Beam image, and "
        "every worker pip-installs TensorFlow (recommend_requirements.txt) at start-up.")
    p.add_argument("--run_name", required=True,
                   help="The training run (gs://BUCKET/runs/RUN_NAME) whose export scores "
                   "the users; the output defaults to gs://BUCKET/recs/RUN_NAME.")
    p.add_argument("--dry_run", action="store_true",
                   help="Build the Dataflow job offline (Beam's --dry_run=True) and submit "
                   "nothing; the data_dir and model may then be local.")
    la.add_print(p, "the command")
    return p


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """(launcher args, job flags): the job flags are the ones after `--`, with the bucket
    layout's --data_dir/--model_dir/--output_dir put first where they name none. Checked
    with the job's and Beam's parsers; raises la.UsageError naming the flag."""
    args, extra = la.parse(make_parser(), argv, la.RECOMMEND, la.recommend_flag_names)
    la.check_dataflow_flags(args, JOB_NAME_PREFIX)
    la.check(args.run_name, RUN_NAME_RE, "run_name", "a run name (lowercase letters, digits "
             "and '-', starting with a letter)")
    own = []
    if la.flag_value(extra, "data_dir") is None:
        own.append(f"--data_dir=gs://{args.bucket}/data/ml-1m")
    if la.flag_value(extra, "model_dir") is None and la.flag_value(extra, "export_dir") is None:
        own.append(f"--model_dir=gs://{args.bucket}/runs/{args.run_name}")
    if la.flag_value(extra, "output_dir") is None:
        own.append(f"--output_dir=gs://{args.bucket}/recs/{args.run_name}")
    job_flags = own + extra
    cfg, _ = la.recommend_config(recommend_argv(args, job_flags))  # the whole command line
    for flag in ("data_dir", "output_dir", "model_dir", "export_dir"):
        uri = getattr(cfg, flag)
        if uri is not None and not uri.startswith("gs://") and not args.dry_run:
            raise la.UsageError(f"--{flag}={uri}: Dataflow workers cannot reach local files; "
                                "use gs:// (infra/README.md), or --dry_run")
    return args, job_flags


def worker_dependencies(args: argparse.Namespace) -> list[str]:
    """Beam options that give the workers this project and TensorFlow (module doc)."""
    # The project: workers pip-install the sdist Beam builds from this file.
    opts = [f"--setup_file={SETUP_FILE}"]
    if not args.worker_image:
        # "skip": workers pip-install from PyPI; the default would first `pip download`
        # TensorFlow (~600 MB) here and upload it to the staging location.
        opts += [f"--requirements_file={REQUIREMENTS_FILE}", "--requirements_cache=skip"]
    return opts


def recommend_argv(args: argparse.Namespace, job_flags: list[str]) -> list[str]:
    """Everything after `python -m beam_jobs.recommend_all`: the Dataflow options, the
    workers' dependencies, then the job flags (given last, so the user's win)."""
    argv = la.dataflow_options(args) + worker_dependencies(args)
    if args.dry_run:
        argv.append("--dry_run=True")
    return argv + list(job_flags)


def command(args: argparse.Namespace, job_flags: list[str]) -> list[str]:
    return [sys.executable, "-m", la.RECOMMEND] + recommend_argv(args, job_flags)


def launch(argv: list[str] | None = None) -> int:
    args, job_flags = parse_args(argv)
    return la.print_or_run_dataflow(args, command(args, job_flags))


def main(argv: list[str] | None = None) -> int:
    return la.main("launch_recommend.py", launch, argv)


if __name__ == "__main__":
    sys.exit(main())
