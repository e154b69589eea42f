"""Records passed between steps, and everything written besides shards: errors/,
vocab.tsv, metadata.json, _SUCCESS; plus the output_dir check made before the job starts.

All output goes through Beam's FileSystems, so output_dir may be a gs:// URI.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import tempfile
from typing import Any, NamedTuple

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs import schema
from beam_jobs.tfrecord import write_bytes

COUNTER_NAMESPACE = "seqrec"
ERRORS_HEADER = "file\tline\treason\ttext"
_JOB_ERROR = "seqrec job failed: "
_LOG = logging.getLogger(__name__)


class OutputError(ValueError):
    """output_dir cannot be used as asked."""


class BadInputError(RuntimeError):
    """Too many bad lines, or no example left."""

    def __init__(self, message: str):
        super().__init__(_JOB_ERROR + message)


def job_error_message(e: BaseException) -> str | None:
    """Our own failure message inside whatever a runner wrapped it in, if any."""
    text = str(e)
    i = text.rfind(_JOB_ERROR)  # runners may wrap it in a copy of its own message
    if i < 0:
        return None
    return text[i + len(_JOB_ERROR):].split("\n")[0].split(" [while running")[0].strip(" '\"")


class ErrorRecord(NamedTuple):
    """A set-aside input line. line: 1-based line number in `file`."""

    file: str
    line: int
    reason: str
    text: str


class PendingError(NamedTuple):
    """An ErrorRecord whose line is local to its byte range (numbered by resolve_line)."""

    file: str
    range_start: int
    lines_before: int
    local_line: int
    reason: str
    text: str


class RangeStats(NamedTuple):
    """Counts of one ratings byte range. newlines: newline bytes in [start, end)."""

    file: str
    start: int
    newlines: int
    lines: int
    malformed: dict
    unknown_movie: int
    below_min_rating: int
    kept_ratings: int


class MoviesStats(NamedTuple):
    table: Any  # movielens.MoviesTable
    lines: int
    malformed: dict


class ShardResult(NamedTuple):
    """What one shard wrote. label_ids/label_counts: train label histogram ([k] int64)."""

    shard: int
    name: str
    users: int
    short_users: int
    train_examples: int
    test_examples: int
    label_ids: np.ndarray
    label_counts: np.ndarray


def reason_counts(errors) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in errors:
        out[e[1]] = out.get(e[1], 0) + 1
    return dict(sorted(out.items()))


def newlines_before(stats: list[RangeStats]) -> dict[tuple[str, int], int]:
    """{(file, range start): newlines in that file before the range}."""
    out, totals = {}, {}
    for s in sorted(stats, key=lambda s: (s.file, s.start)):
        out[(s.file, s.start)] = totals.get(s.file, 0)
        totals[s.file] = totals.get(s.file, 0) + s.newlines
    return out


def resolve_line(error: PendingError, before: dict[tuple[str, int], int]) -> ErrorRecord:
    """Line number = newlines before the error's range + lines before the range's first
    line + local index + 1."""
    line = before[(error.file, error.range_start)] + error.lines_before + error.local_line + 1
    return ErrorRecord(error.file, line, error.reason, error.text)


def by_file(record: ErrorRecord) -> tuple[str, ErrorRecord]:
    return record.file, record


def errors_file_name(input_file: str) -> str:
    return posixpath.basename(input_file) + ".tsv"


def write_errors(element: tuple[str, list], output_dir: str) -> tuple[str, int]:
    """(input file, its ErrorRecords) -> errors/<input basename>.tsv sorted by line;
    returns (name, count)."""
    input_file, records = element
    rows = sorted(r for r in records if r is not None)
    lines = [ERRORS_HEADER] + [f"{r.file}\t{r.line}\t{r.reason}\t{r.text}" for r in rows]
    name = errors_file_name(input_file)
    path = schema.join(output_dir, schema.ERRORS_DIR, name)
    write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
    if rows:
        _LOG.info("set aside %d lines of %s in %s", len(rows), input_file, path)
    return name, len(rows)


def write_vocab(_, output_dir: str, movies: MoviesStats, shard_results: list[ShardResult]) -> int:
    """vocab.tsv: every movie, count = train examples labelled with it; count desc, id asc."""
    table = movies.table
    counts = np.zeros(len(table), dtype=np.int64)
    for r in shard_results:
        if len(r.label_ids):
            np.add.at(counts, table.rows(r.label_ids), r.label_counts)
    order = np.lexsort((table.ids, -counts))
    lines = ["\t".join(schema.VOCAB_COLUMNS)]
    for i in order.tolist():
        lines.append(schema.format_vocab_row(int(table.ids[i]), int(counts[i]),
                                             int(table.years[i]), table.titles[i],
                                             table.genres[i]))
    write_bytes(schema.join(output_dir, schema.VOCAB_FILE), ("\n".join(lines) + "\n").encode())
    return len(table)


def sha256_of(path: str) -> tuple[str, str]:
    digest = hashlib.sha256()
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return path, digest.hexdigest()


def finalize(_, cfg, inputs, movies: MoviesStats, range_stats: list[RangeStats],
             shard_results: list[ShardResult], error_files, vocab_size: int,
             sha256: dict[str, str]) -> dict:
    """Fails on too many bad lines or no examples; else writes metadata.json, then
    _SUCCESS. Returns the metadata."""
    lines = sum(s.lines for s in range_stats)
    malformed: dict[str, int] = {}
    for s in range_stats:
        for reason, n in s.malformed.items():
            malformed[reason] = malformed.get(reason, 0) + n
    unknown = sum(s.unknown_movie for s in range_stats)
    bad = sum(malformed.values()) + unknown
    bad_fraction = bad / lines if lines else 1.0
    if bad_fraction > cfg.max_bad_fraction:
        raise BadInputError(
            f"{inputs.ratings}: {bad} of {lines} rating lines are malformed or name unknown "
            f"movies ({bad_fraction:.4%} > --max_bad_fraction={cfg.max_bad_fraction}); "
            f"by reason: {dict(sorted(malformed.items()))}, unknown_movie: {unknown}. "
            f"The lines are listed under {schema.join(cfg.output_dir, schema.ERRORS_DIR)}")
    results = sorted(shard_results, key=lambda r: r.shard)
    counts = {
        "lines": lines,
        "malformed": sum(malformed.values()),
        "malformed_by_reason": dict(sorted(malformed.items())),
        "unknown_movie": unknown,
        "bad_fraction": round(bad_fraction, 9),
        "below_min_rating": sum(s.below_min_rating for s in range_stats),
        "kept_ratings": sum(s.kept_ratings for s in range_stats),
        "users": sum(r.users for r in results),
        "short_users_dropped": sum(r.short_users for r in results),
        "train_examples": sum(r.train_examples for r in results),
        "test_examples": sum(r.test_examples for r in results),
        "movie_lines": movies.lines,
        "movies": len(movies.table),
        "movies_malformed": sum(movies.malformed.values()),
        "movies_malformed_by_reason": movies.malformed,
    }
    if counts["train_examples"] + counts["test_examples"] == 0:
        raise BadInputError(
            f"{inputs.ratings}: no examples: {counts['kept_ratings']} ratings kept "
            f"(--min_rating={cfg.min_rating}) and no user has --min_timeline_length="
            f"{cfg.min_timeline_length} of them")
    metadata = {
        "schema_version": schema.SCHEMA_VERSION,
        "flags": cfg.recorded_flags(),
        "input": {"format": inputs.format, "files": [inputs.ratings, inputs.movies],
                  "sha256": dict(sorted(sha256.items()))},
        "counts": counts,
        "shards": {split: [r.name for r in results] for split in schema.SPLITS},
        "shard_examples": {schema.TRAIN: [r.train_examples for r in results],
                           schema.TEST: [r.test_examples for r in results]},
        "vocab_size": vocab_size,
        "errors": {name: n for name, n in sorted(error_files)},
    }
    out = cfg.output_dir
    write_bytes(schema.join(out, schema.METADATA_FILE),
                (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode())
    write_bytes(schema.join(out, schema.SUCCESS_FILE), b"")
    return metadata


def prepare_output_dir(output_dir: str, overwrite: bool) -> None:
    """Refuses a local output_dir that is a file or cannot be created or written, and a
    finished run unless `overwrite`; then removes the outputs of any earlier run (its
    _SUCCESS first, so an interrupted cleanup never looks finished)."""
    if "://" not in output_dir:
        _check_local_dir(output_dir)
    success = schema.join(output_dir, schema.SUCCESS_FILE)
    if FileSystems.exists(success):
        if not overwrite:
            raise OutputError(f"--output_dir {output_dir} already holds a finished run "
                              f"({success} exists); pass --overwrite to replace it")
        FileSystems.delete([success])
    patterns = [schema.join(output_dir, split, schema.SHARD_GLOB) for split in schema.SPLITS]
    patterns += [schema.join(output_dir, schema.ERRORS_DIR, "*.tsv"),
                 schema.join(output_dir, schema.VOCAB_FILE),
                 schema.join(output_dir, schema.METADATA_FILE)]
    stale = [m.path for r in FileSystems.match(patterns) for m in r.metadata_list]
    if stale:
        FileSystems.delete(stale)


def _check_local_dir(output_dir: str) -> None:
    """Creates output_dir and writes and removes a file in it: the job's own first write
    would otherwise fail late, inside a worker. A real write rather than os.access, which
    ignores read-only mounts and answers yes to root everywhere."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise OutputError(f"--output_dir {output_dir}: is a file, not a directory")
    try:
        os.makedirs(output_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=output_dir, prefix=".seqrec-write-check-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        where = f" ({e.filename})" if e.filename and e.filename != output_dir else ""
        raise OutputError(f"--output_dir {output_dir}: cannot write there: "
                          f"{e.strerror or e}{where}") from e


def summary(output_dir: str) -> str | None:
    """One line about a finished run in output_dir (None if it did not finish here, e.g.
    a Dataflow dry run)."""
    path = schema.join(output_dir, schema.METADATA_FILE)
    if not FileSystems.exists(schema.join(output_dir, schema.SUCCESS_FILE)):
        return None
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        c = json.loads(f.read())["counts"]
    return (f"{output_dir}: {c['train_examples']} train / {c['test_examples']} test examples "
            f"from {c['users']} users ({c['lines']} rating lines, {c['malformed']} malformed, "
            f"{c['unknown_movie']} unknown movie; see errors/)")
