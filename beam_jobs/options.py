"""Job flags of beam_jobs.pipeline, parsed once at the entry point into a typed config.

Flags not listed here must be Beam pipeline options (``--runner``, ``--project``,
``--direct_num_workers``, ...: any option of a ``PipelineOptions`` subclass); they pass
through untouched (``parse_known_args``). Anything else -- a misspelled or abbreviated flag,
a stray argument -- is refused with a FlagError naming it and the closest valid flag, so
nothing a user types is silently ignored (Beam itself only logs "Discarding unparseable
args" and runs on). Names must be exact: neither the job's parser nor Beam's takes
abbreviations (``--num_shard``, ``--run``). Runner-specific options that no PipelineOptions
class declares (passed through by portable runners) are refused too.

Refused flags and values raise FlagError with a one-line message (no usage dump); the entry
points print it as ``error: ...`` and exit with status 2. ``--help`` works as usual.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import sys
from typing import Any, NamedTuple

from beam_jobs import schema

DEFAULT_SEED = 42
DEFAULT_NUM_SHARDS = 8
DEFAULT_MAX_BAD_FRACTION = 0.001
DOWNLOADS = ("ml-1m", "ml-20m", "ml-25m", "ml-latest-small")


class FlagError(ValueError):
    """A flag, flag value or flag combination the job refuses (a one-line message)."""


class StrictParser(argparse.ArgumentParser):
    """argparse without abbreviations whose errors raise FlagError("--flag: problem")
    instead of printing the usage and exiting."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str):
        raise FlagError(_one_line(message))


def _one_line(message: str) -> str:
    """argparse's "argument --x: problem" as "--x: problem"."""
    return re.sub(r"^argument (\S+): ", r"\1: ", message).replace("\n", " ")


def prog(module: str) -> str:
    """The command as the user typed it, for usage lines and error hints: the console
    script's name (e.g. seqrec-prep) when started through one, else `python -m module`
    (sys.argv[0] is then the module's .py file). Only for entry points reading sys.argv."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not name or name.endswith(".py") or name.startswith("-"):
        return f"python -m {module}"
    return name


def flag_names(parser: argparse.ArgumentParser) -> list[str]:
    """The --flags of `parser` a user may type (hidden ones and --help left out)."""
    return [s for a in parser._actions  # argparse has no public listing
            if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
            for s in a.option_strings if s.startswith("--")]


def refuse_unknown(unknown: list[str], candidates: list[str], prog_name: str) -> None:
    """Raises FlagError naming the first of `unknown` (arguments no parser took) and the
    closest of `candidates` (difflib); does nothing when `unknown` is empty."""
    if not unknown:
        return
    flags = [a for a in unknown if a.startswith("-")]
    if not flags:
        raise FlagError(f"unexpected argument {unknown[0]!r}: flags are --name=value "
                        f"(see {prog_name} --help)")
    name = flags[0].split("=", 1)[0]
    close = difflib.get_close_matches(name, candidates, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise FlagError(f"unknown flag {name}{hint} (see {prog_name} --help)")


def beam_parser() -> argparse.ArgumentParser:
    """A parser of every Beam pipeline option, built the way Beam's
    PipelineOptions.get_all_options builds its own (each PipelineOptions subclass once,
    Beam's argument parser, no abbreviations); its errors raise FlagError."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    class _Parser(_BeamArgumentParser):
        def error(self, message):
            raise FlagError(_one_line(message))

    parser = _Parser(allow_abbrev=False, add_help=False)
    classes = {}
    for cls in PipelineOptions.__subclasses__():
        classes.setdefault(str(cls), cls)
    for cls in classes.values():
        cls._add_argparse_args(parser)  # how Beam itself collects them
    return parser


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Everything that decides the job's output. Saved (minus output_dir/overwrite) in
    metadata.json under "flags"."""

    input_dir: str
    output_dir: str
    min_rating: float = 2.0
    min_timeline_length: int = 3
    max_context_length: int = schema.DEFAULT_MAX_CONTEXT_LENGTH
    max_context_movie_genre_length: int = schema.DEFAULT_MAX_CONTEXT_MOVIE_GENRE_LENGTH
    split: str = "last"
    train_fraction: float = 0.9
    seed: int = DEFAULT_SEED
    num_shards: int = DEFAULT_NUM_SHARDS
    compression: str = "gzip"
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION
    overwrite: bool = False
    download: str | None = None
    read_chunk_bytes: int = 0

    def recorded_flags(self) -> dict[str, Any]:
        """The flags written to metadata.json.

        output_dir and overwrite are left out on purpose: they say where and how the run
        was written, not what the data is, and leaving them out keeps metadata.json
        byte-identical across runs of the same input and flags (any runner, any dir).
        read_chunk_bytes only tunes reading and never changes the output.
        """
        flags = dataclasses.asdict(self)
        for key in ("output_dir", "overwrite", "read_chunk_bytes"):
            flags.pop(key)
        return flags


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _fraction(text: str) -> float:
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


PROG = "python -m beam_jobs.pipeline"
VERBOSITY = {0: "the job's own progress lines, warnings and errors, and DataflowRunner's "
                "job lines (job id, console URL, state)",
             1: "every library's INFO lines too (Beam's included)",
             2: "everything at DEBUG"}


def make_parser(prog: str = PROG) -> StrictParser:
    p = StrictParser(
        prog=prog,
        description="MovieLens ratings -> per-user timelines -> tf.train.Example shards "
        "(train/, test/), vocab.tsv, metadata.json, errors/, _SUCCESS. Other flags must be "
        "Beam pipeline options (--runner, --project, --direct_num_workers, ...); anything "
        "else is refused, and no flag may be abbreviated.",
    )
    p.add_argument("--input_dir", default=None,
                   help="Directory (or gs:// prefix) holding ratings.dat+movies.dat (ML-1M) or "
                   "ratings.csv+movies.csv (ML-20M/25M/latest). With --download: where the "
                   "release is unpacked (default ~/.cache/seqrec/movielens).")
    p.add_argument("--output_dir", required=True, help="Output directory or gs:// URI.")
    p.add_argument("--min_rating", type=_float, default=2.0,
                   help="Keep ratings >= this (default 2).")
    p.add_argument("--min_timeline_length", type=_positive_int, default=3,
                   help="Drop users with fewer kept ratings (default 3).")
    p.add_argument("--max_context_length", type=_positive_int,
                   default=schema.DEFAULT_MAX_CONTEXT_LENGTH,
                   help="Context movies per example, right-padded (default 10).")
    p.add_argument("--max_context_movie_genre_length", type=_positive_int,
                   default=schema.DEFAULT_MAX_CONTEXT_MOVIE_GENRE_LENGTH,
                   help="Flattened context genres per example, truncated/padded (default 10).")
    p.add_argument("--split", choices=("last", "random"), default="last",
                   help="last: each user's last example is test (default, leak-free); random: "
                   "a stable hash of (user, position, seed) < train_fraction is train.")
    p.add_argument("--train_fraction", type=_fraction, default=0.9,
                   help="Train share for --split=random (default 0.9).")
    p.add_argument("--seed", type=_int, default=DEFAULT_SEED,
                   help=f"Seed of the random split hash (default {DEFAULT_SEED}).")
    p.add_argument("--num_shards", type=_positive_int, default=DEFAULT_NUM_SHARDS,
                   help=f"Shards per split; users are assigned to shards by a stable hash "
                   f"(default {DEFAULT_NUM_SHARDS}: enough files for 8 readers, few enough to "
                   "stay large on ML-1M).")
    p.add_argument("--compression", choices=sorted(schema.COMPRESSIONS), default="gzip",
                   help="Shard compression (default gzip).")
    p.add_argument("--max_bad_fraction", type=_fraction, default=DEFAULT_MAX_BAD_FRACTION,
                   help="Fail when (malformed + unknown-movie) rating lines / rating lines "
                   f"exceeds this (default {DEFAULT_MAX_BAD_FRACTION}: a few stray lines pass, a "
                   "wrong file format fails).")
    p.add_argument("--overwrite", type=_bool, nargs="?", const=True, default=False,
                   help="Replace a finished run in output_dir (its _SUCCESS is removed first).")
    p.add_argument("--download", choices=DOWNLOADS, default=None,
                   help="Fetch this official GroupLens release (SHA-256 checked) and use it as "
                   "input. Base URL: --download_base_url or $SEQREC_MOVIELENS_BASE_URL.")
    p.add_argument("--download_base_url", default=None, help=argparse.SUPPRESS)
    p.add_argument("--read_chunk_bytes", type=_non_negative_int, default=0,
                   help="Bytes of ratings per parallel read task (default 0: automatic). "
                   "Never changes the output.")
    # Not part of JobConfig: how much is logged never changes the output.
    p.add_argument("-v", "--verbosity", type=_int, choices=sorted(VERBOSITY), nargs="?",
                   const=1, default=0, metavar="N",
                   help="Log lines shown: " + "; ".join(
                       f"{n}: {what}" for n, what in VERBOSITY.items())
                   + " (default 0; -v alone is 1).")
    return p


class CommandLine(NamedTuple):
    """A parsed command line of beam_jobs.pipeline."""

    config: JobConfig
    beam_args: list[str]  # Beam pipeline options, as typed
    download_base_url: str | None
    verbosity: int  # a key of VERBOSITY


def parse_command_line(argv: list[str], prog: str = PROG) -> CommandLine:
    """Parses the job's flags and checks that every other argument is a Beam pipeline
    option (and a valid value of it).

    Raises:
      FlagError: an unknown or abbreviated flag (naming the closest job or Beam flag), a
        stray argument, a bad value, or a missing --output_dir/--input_dir.
      SystemExit: --help (after printing it).
    """
    parser = make_parser(prog)
    args, rest = parser.parse_known_args(argv)
    beam = beam_parser()
    _, unknown = beam.parse_known_args(rest)
    refuse_unknown(unknown, flag_names(parser) + flag_names(beam), prog)
    if args.input_dir is None and args.download is None:
        raise FlagError("--input_dir is required (or --download=ml-1m|...)")
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(JobConfig)}
    return CommandLine(JobConfig(**values), rest, args.download_base_url, args.verbosity)


def parse_args(argv: list[str]) -> tuple[JobConfig, list[str], str | None]:
    """(config, beam_args, download_base_url) of parse_command_line (same checks, same
    FlagError). Input-dir defaulting for --download is resolved by the caller (it needs
    the download)."""
    c = parse_command_line(argv)
    return c.config, c.beam_args, c.download_base_url
