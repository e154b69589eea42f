"""Command-line handling shared by the launchers: infra/dataflow/launch.py,
infra/dataflow/launch_recommend.py and infra/trainer/launch.py.

A launch is `python infra/.../launch*.py LAUNCHER_FLAGS [-- JOB_FLAGS]`. The launcher's
flags say where and how to run (project, bucket, machines); the flags after the first `--`
are the job's own (beam_jobs.pipeline's, beam_jobs.recommend_all's or trainer.train's) and
reach it unchanged. The launcher passes the job nothing else but what the launch itself
must set (its input and output locations, the multi-host strategy, the workers'
dependencies), so the job's own defaults apply, declared once, in the job's code.

Contracts of this module:
  * `parse` splits at `--` and parses the launcher's side without abbreviations (`--gpus`
    is not `--gpus_per_host`, as absl refuses `--embed` for `--embedding_dim`); a job flag
    given before `--` is refused with a hint to move it.
  * `trainer_config`, `pipeline_config` and `recommend_config` check job flags against
    the job's REAL parser before anything is rendered or submitted: trainer.config's absl
    definitions in a fresh FlagValues per call, then TrainConfig's validation;
    beam_jobs.options (or recommend_all's parser), then Beam's own option parsers for the
    rest.
  * Every refusal is a `UsageError` whose message is one line naming the flag (for a
    misspelt one, the closest valid name too); `main` prints it as
    `PROG: error: MESSAGE` and exits 2.

The launchers are scripts, not a package: each puts infra/ on sys.path to import this
module, and this module puts the repository first on sys.path, so the job code checked is
this checkout's, the code the images and the staged package are built from.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import difflib
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

TRAINER = "trainer.train"
PIPELINE = "beam_jobs.pipeline"
RECOMMEND = "beam_jobs.recommend_all"

# Values end up in YAML scalars, gcloud flags and URIs: these catch typos (and anything
# that would need quoting) before a job waits an hour for machines.
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
GCS_URI_RE = re.compile(r"^gs://[a-z0-9][a-z0-9._-]{1,61}[a-z0-9](/[A-Za-z0-9._=/-]*)?$")
# Dataflow job names: lowercase letters, digits and hyphens, starting with a letter.
JOB_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class UsageError(Exception):
    """A command line a launcher refuses; the message is one line and names the flag."""


def check(value: object, pattern: re.Pattern, flag: str, what: str) -> str:
    """`value` as a string if it matches `pattern`, else UsageError naming --`flag`."""
    if not pattern.match(str(value)):
        raise UsageError(f"--{flag}={value!r} is not {what}")
    return str(value)


def timestamped(prefix: str, now: datetime.datetime | None = None) -> str:
    """PREFIX-YYYYmmdd-HHMMSS (UTC): a name unique per launch, valid as a job name."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime(f"{prefix}-%Y%m%d-%H%M%S")


def make_parser(prog: str, doc: str, job: str, **kwargs) -> argparse.ArgumentParser:
    """The launcher's argparse parser: the first paragraph of `doc` as its description, no
    abbreviated flag names, an epilog on the flags after `--`."""
    p = argparse.ArgumentParser(
        prog=prog, description=doc.split("\n\n")[0], allow_abbrev=False,
        epilog=f"Flags after `--` go to {job} unchanged (checked first by its own parser); "
        f"it gets nothing else the launch does not need, so its own defaults apply.",
        **kwargs)
    return p


def add_print(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--print", action="store_true",
                   help=f"Print {what}; submit nothing (and need no credentials).")


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None, job: str,
          job_flags: Callable[[], set[str]]) -> tuple[argparse.Namespace, list[str]]:
    """(launcher flags, job flags): `argv` split at its first `--`.

    Raises UsageError for a launcher-side flag the parser does not know, saying so when it
    is one of `job_flags()` (the job's flag names, without dashes) that belongs after `--`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    job_argv: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, job_argv = argv[:cut], argv[cut + 1:]
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        name = unknown[0].split("=", 1)[0]
        if name.lstrip("-") in job_flags():
            raise UsageError(f"{name} is a {job} flag: give it after `--` "
                             f"(... -- {unknown[0]})")
        raise UsageError(f"unrecognized argument {unknown[0]}"
                         + _did_you_mean(name, _option_strings(parser)))
    return args, job_argv


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every --flag of `parser` and of its subcommands."""
    out = []
    for action in parser._actions:  # argparse has no public listing
        out += [s for s in action.option_strings if s.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _option_strings(sub)
    return out


def _did_you_mean(name: str, candidates: Sequence[str]) -> str:
    # What an abbreviation would have meant first, then the nearest spelling.
    close = [c for c in candidates if c.startswith(name)][:1] or \
        difflib.get_close_matches(name, candidates, n=1)
    return f"; did you mean {close[0]}?" if close else ""


# --- trainer.train ----------------------------------------------------------------------

def trainer_flag_names() -> set[str]:
    """Every flag trainer.train defines, from trainer.config (no TensorFlow import)."""
    return set(_trainer_flag_values())


def _trainer_flag_values():
    from absl import flags

    from trainer import config

    fv = flags.FlagValues()
    config.define_flags(fv)
    return fv


def _parse_trainer(trainer_argv: Sequence[str]):
    """A fresh absl FlagValues holding trainer.train's flags, parsed from `trainer_argv`
    as trainer.train parses them (no abbreviations; a flag given twice: the last wins)."""
    from absl import flags

    fv = _trainer_flag_values()
    try:
        rest = fv([TRAINER, *trainer_argv])
    except flags.UnrecognizedFlagError as e:
        # absl's message carries its suggestions: "... Did you mean: a, b ?"
        close = re.search(r"Did you mean: (.+) \?$", str(e))
        hint = (f"; did you mean --{close.group(1).split(', ')[0]}?" if close else
                f" (python -m {TRAINER} --helpfull lists them)")
        raise UsageError(f"{TRAINER}: no flag --{e.flagname}{hint}") from None
    except flags.Error as e:
        raise UsageError(f"{TRAINER}: {e}") from None
    if rest[1:]:
        raise UsageError(f"{rest[1]!r}: {TRAINER} takes only flags (--name=value) after `--`")
    return fv


def trainer_flags_given(trainer_argv: Sequence[str]) -> set[str]:
    """The names of the trainer flags `trainer_argv` sets (in any spelling absl takes)."""
    fv = _parse_trainer(trainer_argv)
    return {name for name in fv if fv[name].present}


def trainer_config(trainer_argv: Sequence[str], environ: Mapping[str, str]):
    """The trainer.config.TrainConfig that `python -m trainer.train TRAINER_ARGV` builds in a
    process whose environment is `environ` (e.g. the AIP_* variables Vertex AI sets).

    The trainer's own flag definitions and config validation decide, so what passes here
    passes there.

    Raises:
      UsageError: a flag trainer.train does not define (naming the closest one it does), a
        value it refuses, or a positional argument (the trainer would ignore it).
    """
    from trainer import config

    fv = _parse_trainer(trainer_argv)
    with _quiet_absl_logging():
        try:
            return config.config_from_flags(fv, environ=environ)
        except config.ConfigError as e:
            raise UsageError(f"{TRAINER}: {e}") from None


@contextlib.contextmanager
def _quiet_absl_logging():
    """config_from_flags logs the AIP_* choices it makes; that is for the trainer's log,
    not the launcher's output (the launcher prints where outputs land itself)."""
    from absl import logging

    old = logging.get_verbosity()
    logging.set_verbosity(logging.WARNING)
    try:
        yield
    finally:
        logging.set_verbosity(old)


# --- beam_jobs.pipeline -----------------------------------------------------------------

def pipeline_flag_names() -> set[str]:
    """The job flags beam_jobs.pipeline defines (beam_jobs.options), without dashes."""
    from beam_jobs import options

    return {s[2:] for s in options.flag_names(options.make_parser())}


def pipeline_config(pipeline_argv: Sequence[str]):
    """(beam_jobs.options.JobConfig, Beam options) that `python -m beam_jobs.pipeline
    PIPELINE_ARGV` parses, by the job's own parser: exact flag names, values checked, and
    every flag that is not the job's must be a Beam pipeline option.

    Raises:
      UsageError: anything that parser refuses (its one-line message names the flag and,
        for an unknown one, the closest valid flag).
    """
    from beam_jobs import options

    try:
        cfg, beam_args, _ = options.parse_args(list(pipeline_argv))
    except options.FlagError as e:
        raise UsageError(f"{PIPELINE}: {e}") from None
    return cfg, beam_args


# --- beam_jobs.recommend_all -------------------------------------------------------------

def recommend_flag_names() -> set[str]:
    """The job flags beam_jobs.recommend_all defines, without dashes."""
    from beam_jobs import options, recommend_all

    return {s[2:] for s in options.flag_names(recommend_all.make_parser())}


def recommend_config(recommend_argv: Sequence[str]):
    """(RecommendConfig, Beam options) that `python -m beam_jobs.recommend_all
    RECOMMEND_ARGV` parses, by the job's own parser (parse_command_line: exact names,
    values checked, one of --model_dir/--export_dir, every other flag a Beam option).
    Nothing is read: the job checks its paths itself when it starts.

    Raises:
      UsageError: anything that parser refuses, in its one-line message.
    """
    from beam_jobs import options, recommend_all

    try:
        cfg, beam_args, _ = recommend_all.parse_command_line(list(recommend_argv))
    except options.FlagError as e:
        raise UsageError(f"{RECOMMEND}: {e}") from None
    return cfg, beam_args


# --- Dataflow: what infra/dataflow/launch.py and launch_recommend.py share ----------------

def add_dataflow_flags(p: argparse.ArgumentParser, job_name_prefix: str,
                       worker_image_help: str) -> None:
    """Where the job runs and on what workers. The defaults are the launchers' cost
    policy, not Beam's or the job's."""
    p.add_argument("--project", required=True, help="GCP project that runs the job.")
    p.add_argument("--region", required=True, help="Dataflow region, e.g. us-central1.")
    p.add_argument("--bucket", required=True,
                   help="Bucket (no gs://) for temp/staging files and, by default, the data.")
    p.add_argument("--job_name", default=None,
                   help=f"Dataflow job name (default {job_name_prefix}-<UTC timestamp>).")
    # Here, not after `--`, because a Flex Template launch spells them as gcloud flags.
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
    p.add_argument("--worker_image", default=None, help=worker_image_help)


def check_dataflow_flags(args: argparse.Namespace, job_name_prefix: str) -> None:
    """Checks --bucket and sets/checks --job_name (default PREFIX-<UTC timestamp>)."""
    check(args.bucket, BUCKET_RE, "bucket", "a bucket name (give it without gs://)")
    args.job_name = check(args.job_name or timestamped(job_name_prefix), JOB_NAME_RE,
                          "job_name", "a Dataflow job name (lowercase letters, digits and "
                          "'-', starting with a letter)")


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


def flag_values(job_argv: Sequence[str]) -> list[tuple[str, str]]:
    """`--name=value` flags as (name, value) pairs; a bare `--name` is (name, "true").

    For targets that take parameters rather than a command line (a Flex Template)."""
    out = []
    for flag in job_argv:
        if not flag.startswith("--"):
            raise UsageError(f"{flag!r}: give job flags as --name=value here")
        name, eq, value = flag[2:].partition("=")
        out.append((name, value if eq else "true"))
    return out


def flag_value(job_argv: Sequence[str], name: str) -> str | None:
    """The value `job_argv` gives --`name` (the last one wins, as in argparse and absl):
    V for `--name=V` or `--name V`, "" for a bare `--name`, None when not given."""
    value = None
    for i, arg in enumerate(job_argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}":
            following = job_argv[i + 1] if i + 1 < len(job_argv) else "--"
            value = "" if following.startswith("-") else following
    return value


# --- printing or running ----------------------------------------------------------------

def run(cmd: Sequence[str], cwd: str | None = None) -> int:
    """Runs `cmd`, echoed to stderr first; returns its exit status."""
    print("+", shlex.join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(list(cmd), cwd=cwd)


def print_or_run_dataflow(args: argparse.Namespace, cmd: Sequence[str]) -> int:
    """A Dataflow launcher's last step: --print echoes `cmd`; otherwise it runs from the
    repository root (beam_jobs is importable and setup.py builds from there), and a
    --dry_run says that nothing was submitted. Returns the exit status."""
    if args.print:
        print(shlex.join(cmd))
        return 0
    code = run(cmd, cwd=REPO)
    if code == 0 and args.dry_run:
        print("dry run: the Dataflow job was built offline; nothing was submitted",
              file=sys.stderr)
    return code


def main(prog: str, launch: Callable[[list[str] | None], int],
         argv: list[str] | None = None) -> int:
    """Runs `launch(argv)`; a UsageError becomes one line on stderr and exit status 2."""
    try:
        return launch(argv)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
