"""Job flags of beam_jobs.pipeline, parsed once at the entry point into a typed config.

Flags not listed here (``--runner``, ``--project``, ``--direct_num_workers``, ...) are
Beam pipeline options and pass through untouched (``parse_known_args``).
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from beam_jobs import schema

DEFAULT_SEED = 42
DEFAULT_NUM_SHARDS = 8
DEFAULT_MAX_BAD_FRACTION = 0.001
DOWNLOADS = ("ml-1m", "ml-20m", "ml-25m", "ml-latest-small")


class FlagError(ValueError):
    """A flag combination the job refuses."""


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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m beam_jobs.pipeline",
        description="MovieLens ratings -> per-user timelines -> tf.train.Example shards "
        "(train/, test/), vocab.tsv, metadata.json, errors/, _SUCCESS. Unknown flags are "
        "Beam pipeline options (--runner, --project, --direct_num_workers, ...).",
    )
    p.add_argument("--input_dir", default=None,
                   help="Directory (or gs:// prefix) holding ratings.dat+movies.dat (ML-1M) or "
                   "ratings.csv+movies.csv (ML-20M/25M/latest). With --download: where the "
                   "release is unpacked (default ~/.cache/seqrec/movielens).")
    p.add_argument("--output_dir", required=True, help="Output directory or gs:// URI.")
    p.add_argument("--min_rating", type=float, default=2.0,
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
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
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
    p.add_argument("--read_chunk_bytes", type=_positive_int, default=0,
                   help="Bytes of ratings per parallel read task (default 0: automatic). "
                   "Never changes the output.")
    return p


def parse_args(argv: list[str] | None) -> tuple[JobConfig, list[str], str | None]:
    """Returns (config, beam_args, download_base_url). Input-dir defaulting for --download
    is resolved by the caller (it needs the download)."""
    args, beam_args = make_parser().parse_known_args(argv)
    if args.input_dir is None and args.download is None:
        make_parser().error("--input_dir is required (or --download=ml-1m|...)")
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(JobConfig)}
    return JobConfig(**values), beam_args, args.download_base_url
