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
import types
import typing
from collections.abc import Callable
from typing import Any, NamedTuple

from beam_jobs import schema


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
    """argparse's "argument --x: problem" (or "argument --x/--nox: problem", a bool
    option's action) as "--x: problem"."""
    return re.sub(r"^argument (\S+?)(?:/--no\S+)?: ", r"\1: ", message).replace("\n", " ")


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


# --- Declaring an option -------------------------------------------------------------------
# A check is (predicate, what the value must be); errors read "--NAME: must be >= 1, got 0".
Check = tuple[Callable[[Any], bool], str]


def at_least(n: float, why: str = "") -> Check:
    return (lambda v: v >= n), f"must be >= {n}" + (f" ({why})" if why else "")


def unit_interval() -> Check:
    return (lambda v: 0.0 <= v <= 1.0), "must be in [0, 1]"


def option(default: Any = dataclasses.MISSING, help: str = "", *,  # noqa: A002
           choices: tuple | None = None, check: Check | None = None, recorded: bool = True,
           required_flag: bool | None = None) -> Any:
    """A config field: the one place an option is declared (name and type are the field's).

    Args:
      default: the default (none: the option is required).
      help: the flag's help text; "{default}" in it is replaced by the default as shown
        to users (2.0 as "2").
      choices: the allowed values (argparse's choices; checked on every config too).
      check: (predicate, requirement) checked on the flag's value and on every config.
      recorded: written to metadata.json "flags" (JobConfig.recorded_flags).
      required_flag: whether the command line must give it (default: when there is no
        default). input_dir is required by the config but may come from --download.
    """
    meta = {"help": help, "choices": choices, "check": check, "recorded": recorded,
            "required_flag": (default is dataclasses.MISSING if required_flag is None
                              else required_flag)}
    return dataclasses.field(default=default, metadata=meta)


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def help_text(f: dataclasses.Field) -> str:
    """The help of a declared option, its default filled in."""
    return f.metadata["help"].replace("{default}", _shown(f.default))


def _check_problem(f: dataclasses.Field, value: Any) -> str | None:
    """What the option's check says of `value` (None: it passes, or there is no check)."""
    check = f.metadata["check"]
    if check is not None and value is not None and not check[0](value):
        return f"{check[1]}, got {value!r}"
    return None


def _problem(f: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with `value` for option `f` by its declaration (None: nothing)."""
    choices = f.metadata["choices"]
    if choices is not None and value not in choices and not (value is None and f.default is None):
        return f"must be one of {choices}, got {value!r}"
    return _check_problem(f, value)


def validate(config: Any) -> None:
    """Raises FlagError("--name: problem") for the first option of the dataclass `config`
    whose value its declaration refuses."""
    for f in dataclasses.fields(config):
        problem = _problem(f, getattr(config, f.name))
        if problem:
            raise FlagError(f"--{f.name}: {problem}")


# argparse converters by field type: one-line messages that name what was expected.
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


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


_CONVERTERS = {int: _int, float: _float, bool: _bool, str: str}


def _converter(f: dataclasses.Field, kind: type):
    convert = _CONVERTERS[kind]
    if f.metadata["check"] is None:
        return convert

    def checked(text: str):
        value = convert(text)
        problem = _check_problem(f, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    checked.__name__ = convert.__name__  # argparse names the type in some messages
    return checked


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Adds one --flag per field of the dataclass `cls`, declared with option(): same name,
    type, default, help, choices and check. A bool flag takes an optional value
    (--overwrite, --overwrite=false) and has a negative spelling (--nooverwrite)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        kwargs: dict[str, Any] = {"type": _converter(f, kind), "help": help_text(f)}
        if f.metadata["choices"] is not None:
            kwargs["choices"] = f.metadata["choices"]
        names = [f"--{f.name}"]
        if kind is bool:
            kwargs.update(nargs="?", const=_NO_VALUE, action=_BoolAction)
            names.append(f"--no{f.name}")
        if f.metadata["required_flag"]:
            kwargs["required"] = True
        else:
            kwargs["default"] = None if f.default is dataclasses.MISSING else f.default
        parser.add_argument(*names, **kwargs)


_NO_VALUE = object()  # a bool flag given without "=value"


class _BoolAction(argparse.Action):
    """A bool option's one action for --name, --name=true|false and --noname (absl's
    spelling, as the trainer's flags take it): one declaration, one dest."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string == f"--no{self.dest}":
            if values is not _NO_VALUE:
                raise argparse.ArgumentError(
                    self, f"{option_string} takes no value (it means --{self.dest}=false)")
            values = False
        elif values is _NO_VALUE:
            values = True
        setattr(namespace, self.dest, values)


DOWNLOADS = ("ml-1m", "ml-20m", "ml-25m", "ml-latest-small")


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Everything that decides the job's output: every job flag, declared once (option()).
    The recorded ones are saved in metadata.json under "flags" (recorded_flags). Values are
    checked when a config is made (FlagError), from flags or in code."""

    input_dir: str = option(
        help="Directory (or gs:// prefix) holding ratings.dat+movies.dat (ML-1M) or "
        "ratings.csv+movies.csv (ML-20M/25M/latest). With --download: where the release is "
        "unpacked (default ~/.cache/seqrec/movielens).", required_flag=False)
    # output_dir and overwrite say where and how the run was written, not what the data
    # is: left out of metadata.json, which stays byte-identical across runs of the same
    # input and flags (any runner, any directory).
    output_dir: str = option(help="Output directory or gs:// URI.", recorded=False)
    min_rating: float = option(2.0, "Keep ratings >= this as labels (default {default}); "
                               "see --low_ratings_in_context for the others.")
    low_ratings_in_context: bool = option(
        True, "Ratings below --min_rating stay in the contexts and users/ histories (never "
        "labels): a movie rated 1 star was watched all the same, and the next movie may "
        "follow it (default {default}). --nolow_ratings_in_context drops them from the "
        "timelines, as the reference generator does.")
    min_timeline_length: int = option(3, "Drop users with fewer kept ratings (default "
                                      "{default}).", check=at_least(1))
    max_context_length: int = option(
        schema.DEFAULT_MAX_CONTEXT_LENGTH,
        "Context movies per example, right-padded (default {default}).", check=at_least(1))
    max_context_movie_genre_length: int = option(
        schema.DEFAULT_MAX_CONTEXT_MOVIE_GENRE_LENGTH,
        "Flattened context genres per example, truncated/padded (default {default}).",
        check=at_least(1))
    context_before_label_second: bool = option(
        False, "Contexts and seen_movie_id hold only ratings from seconds before the label's, "
        "as a served history would: movies rated in the label's own second, which the "
        "(timestamp, movie_id) order puts before it by id alone, stay out, and labels in a "
        "user's first second get no example. Off (default {default}): a context ends right "
        "before its label in that order.")
    split: str = option(
        "last", "last: each user's last example is test (default, leak-free); random: a "
        "stable hash of (user, position, seed) < train_fraction is train.",
        choices=("last", "random"))
    train_fraction: float = option(0.9, "Train share for --split=random (default {default}).",
                                   check=unit_interval())
    seed: int = option(42, "Seed of the random split hash (default {default}).")
    validation: bool = option(
        True, "With --split=last, write each user's second-to-last example to validation/ "
        "(train/ keeps the rest); validation/ and test/ examples (any --split) carry "
        "seen_movie_id. --novalidation writes the earlier two-split layout (byte for byte "
        "with --nolow_ratings_in_context) (default {default}).")
    num_shards: int = option(
        8, "Shards per split; users are assigned to shards by a stable hash (default "
        "{default}: enough files for 8 readers, few enough to stay large on ML-1M).",
        check=at_least(1))
    compression: str = option("gzip", "Shard compression (default {default}).",
                              choices=tuple(sorted(schema.COMPRESSIONS)))
    max_bad_fraction: float = option(
        0.001, "Fail when (malformed + unknown-movie) rating lines / rating lines exceeds "
        "this (default {default}: a few stray lines pass, a wrong file format fails).",
        check=unit_interval())
    overwrite: bool = option(
        False, "Replace a finished run in output_dir (its _SUCCESS is removed first).",
        recorded=False)
    download: str | None = option(
        None, "Fetch this official GroupLens release (SHA-256 checked) and use it as input. "
        "Base URL: --download_base_url or $SEQREC_MOVIELENS_BASE_URL.", choices=DOWNLOADS)
    # Only tunes reading; never changes the output, so it is not recorded either.
    read_chunk_bytes: int = option(
        0, "Bytes of ratings per parallel read task (default {default}: automatic). Never "
        "changes the output.", check=at_least(0), recorded=False)

    __post_init__ = validate

    def recorded_flags(self) -> dict[str, Any]:
        """The flags written to metadata.json: every option declared recorded."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata["recorded"]}


PROG = "python -m beam_jobs.pipeline"
VERBOSITY = {0: "the job's own progress lines, warnings and errors, and DataflowRunner's "
                "job lines (job id, console URL, state)",
             1: "every library's INFO lines too (Beam's included)",
             2: "everything at DEBUG"}


def make_parser(prog: str = PROG) -> StrictParser:
    """The job's flags: JobConfig's options, then two that do not change the output."""
    p = StrictParser(
        prog=prog,
        description="MovieLens ratings -> per-user timelines -> tf.train.Example shards "
        "(train/, validation/, test/, users/), vocab.tsv, metadata.json, errors/, _SUCCESS. "
        "Other flags must be "
        "Beam pipeline options (--runner, --project, --direct_num_workers, ...); anything "
        "else is refused, and no flag may be abbreviated.",
    )
    add_options(p, JobConfig)
    # A test hook for --download (where the zips are served from), not an option.
    p.add_argument("--download_base_url", default=None, help=argparse.SUPPRESS)
    add_verbosity(p)
    return p


def add_verbosity(p: argparse.ArgumentParser) -> None:
    """-v/--verbosity: not part of a job's config, as how much is logged never changes
    the output."""
    p.add_argument("-v", "--verbosity", type=_int, choices=sorted(VERBOSITY), nargs="?",
                   const=1, default=0, metavar="N",
                   help="Log lines shown: " + "; ".join(
                       f"{n}: {what}" for n, what in VERBOSITY.items())
                   + " (default 0; -v alone is 1).")


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
