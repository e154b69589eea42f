"""Records passed between steps, and everything written besides shards: errors/,
vocab.tsv, metadata.json, _SUCCESS; plus the output_dir check and cleanup made before the
job starts.

All output goes through Beam's FileSystems, so output_dir may be a gs:// URI.

One run's complete output or no _SUCCESS: every file is hashed as it is written (shards by
tfrecord.TFRecordWriter, the others here), metadata.json lists them all (schema.MANIFEST,
schema.FILES), and finalize writes _SUCCESS only after reading back exactly those files
with those bytes -- then checks again, because another job writing the same output_dir
may overwrite files at any time (see finalize).
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

from beam_jobs import schema, timelines
from beam_jobs.tfrecord import TMP_PREFIX, write_bytes

COUNTER_NAMESPACE = "seqrec"
ERRORS_HEADER = "file\tline\treason\ttext"
_JOB_ERROR = "seqrec job failed: "
_PROBE_PREFIX = ".seqrec-write-check-"
_LOG = logging.getLogger(__name__)


class OutputError(ValueError):
    """output_dir cannot be used as asked."""


class JobError(RuntimeError):
    """A failure of the job's own making, raised inside the pipeline; its message reaches
    the command line's one error line (job_error_message)."""

    def __init__(self, message: str):
        super().__init__(_JOB_ERROR + message)


class BadInputError(JobError):
    """Too many bad lines, or no example left."""


class OutputChangedError(JobError):
    """The files in output_dir are not (or no longer) the ones this run wrote."""


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
    """What one shard wrote. label_ids/label_counts: train label histogram ([k] int64).
    files: {split: {"bytes", "sha256"}} of the files as written (train, validation when
    written, test, users). user_records: records in its users/ file."""

    shard: int
    name: str
    users: int
    short_users: int
    train_examples: int
    test_examples: int
    label_ids: np.ndarray
    label_counts: np.ndarray
    files: dict
    user_records: int = 0
    validation_examples: int = 0


class WrittenFile(NamedTuple):
    """A file written besides the shards. path: relative to output_dir; record:
    schema.file_record of its bytes; count: errors/ lines or vocab.tsv rows."""

    path: str
    count: int
    record: dict


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


def write_errors(element: tuple[str, list], output_dir: str) -> WrittenFile:
    """(input file, its ErrorRecords) -> errors/<input basename>.tsv sorted by line, the
    file name escaped like the text (schema.escape_field)."""
    input_file, records = element
    rows = sorted(r for r in records if r is not None)
    lines = [ERRORS_HEADER] + [f"{schema.escape_field(r.file)}\t{r.line}\t{r.reason}\t{r.text}"
                               for r in rows]
    rel = posixpath.join(schema.ERRORS_DIR, errors_file_name(input_file))
    path = schema.join(output_dir, rel)
    data = ("\n".join(lines) + "\n").encode("utf-8")
    write_bytes(path, data)
    if rows:
        _LOG.info("set aside %d lines of %s in %s", len(rows), input_file, path)
    return WrittenFile(rel, len(rows), schema.file_record(data))


def write_vocab(_, output_dir: str, movies: MoviesStats,
                shard_results: list[ShardResult]) -> WrittenFile:
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
    data = ("\n".join(lines) + "\n").encode()
    write_bytes(schema.join(output_dir, schema.VOCAB_FILE), data)
    return WrittenFile(schema.VOCAB_FILE, len(table), schema.file_record(data))


def sha256_of(path: str) -> tuple[str, str]:
    digest = hashlib.sha256()
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return path, digest.hexdigest()


_MAX_LISTED = 5  # mismatched files named in one error message


def mismatches(output_dir: str, metadata: dict) -> list[str]:
    """What differs between output_dir and the files `metadata` lists (schema.listed_files):
    files missing, of another size or SHA-256 (read back in full), and files in train/,
    validation/, test/, users/ or errors/ that it does not list. [] when output_dir holds exactly them."""
    expected = schema.listed_files(metadata)
    base = schema.join(output_dir, "")
    patterns = [schema.join(output_dir, d, "*")
                for d in (*schema.SHARD_DIRS, schema.ERRORS_DIR)]
    patterns.append(schema.join(output_dir, schema.VOCAB_FILE))
    found = {m.path[len(base):]: m.size_in_bytes
             for r in FileSystems.match(patterns) for m in r.metadata_list}
    problems = [f"{rel}: not written by this run" for rel in sorted(set(found) - set(expected))]
    for rel, record in sorted(expected.items()):
        if rel not in found:
            problems.append(f"{rel}: missing")
        elif found[rel] != record["bytes"]:
            problems.append(f"{rel}: {found[rel]} bytes, this run wrote {record['bytes']}")
        else:
            digest = _sha256_or_none(schema.join(output_dir, rel))
            if digest is None:
                problems.append(f"{rel}: missing")
            elif digest != record["sha256"]:
                problems.append(f"{rel}: other bytes than this run wrote (SHA-256 differs)")
    return problems


def _changed(output_dir: str, problems: list[str], when: str) -> OutputChangedError:
    shown = "; ".join(problems[:_MAX_LISTED])
    more = f" (+{len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
    return OutputChangedError(
        f"--output_dir {output_dir}: {when}, its files are not the ones this run wrote: "
        f"{shown}{more}. Another job is writing the same output_dir? No {schema.SUCCESS_FILE} "
        "is left there; run the job again, alone, with --overwrite")


def _read_or_none(path: str) -> bytes | None:
    """The bytes of a file, None if it does not exist (see _unless_gone)."""
    def read():
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return f.read()
    return _unless_gone(read, path)


def _sha256_or_none(path: str) -> str | None:
    """sha256_of, streamed; None if the file does not exist (see _unless_gone)."""
    return _unless_gone(lambda: sha256_of(path)[1], path)


def _unless_gone(read, path: str):
    """read(), or None when `path` does not exist. Another job writing the same
    output_dir may replace the file while it is read (on gs:// a rename is a delete and a
    copy: a read in between fails with 404 and then the file is back): one more try;
    a second failure of a file that exists is a real error."""
    for attempt in (1, 2):
        try:
            return read()
        except Exception:  # Beam and GCS wrap the filesystem's error differently
            if not FileSystems.exists(path):
                return None
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _retract(output_dir: str) -> None:
    """Removes _SUCCESS, whoever wrote it: called when this run fails after writing files,
    which then no longer match any other run's metadata.json either."""
    success = schema.join(output_dir, schema.SUCCESS_FILE)
    try:
        FileSystems.delete([success])
    except Exception:  # not there (or removed meanwhile by another job): nothing to retract
        if FileSystems.exists(success):
            raise


def finalize(_, cfg, inputs, movies: MoviesStats, range_stats: list[RangeStats],
             shard_results: list[ShardResult], error_files: list[WrittenFile],
             vocab: WrittenFile, sha256: dict[str, str]) -> dict:
    """Fails on too many bad lines or no examples; else checks that output_dir holds
    exactly the files this run wrote (schema.listed_files of its metadata: sizes and
    SHA-256 read back), writes metadata.json, then _SUCCESS (schema.success_record), and
    checks the files, metadata.json and _SUCCESS again. Returns the metadata.

    Why twice: a job writing the same output_dir may overwrite any file between the first
    check and _SUCCESS. Every run writes all its files before its finalize starts, so the
    run that finalizes last checks the final state; and any failure here, its own bad
    input included, removes _SUCCESS (whoever wrote it) -- this run's files are on disk.
    So two jobs that reach finalize leave one run's complete output with its _SUCCESS, or
    no _SUCCESS. A job killed while writing leaves files no check here sees; readers check
    the manifest (trainer/data.py) for that.

    Raises:
      BadInputError: too many bad lines, or no examples.
      OutputChangedError: output_dir's files are not (all) this run's.
    """
    try:
        return _finalize(cfg, inputs, movies, range_stats, shard_results, error_files, vocab,
                         sha256)
    except Exception:  # ours or not: this run's files are there, no _SUCCESS may stay
        _retract(cfg.output_dir)
        raise


def _finalize(cfg, inputs, movies, range_stats, shard_results, error_files, vocab, sha256):
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
        "validation_examples": sum(r.validation_examples for r in results),
        "test_examples": sum(r.test_examples for r in results),
        "user_records": sum(r.user_records for r in results),
        "movie_lines": movies.lines,
        "movies": len(movies.table),
        "movies_malformed": sum(movies.malformed.values()),
        "movies_malformed_by_reason": movies.malformed,
    }
    if counts["train_examples"] + counts["validation_examples"] + counts["test_examples"] == 0:
        raise BadInputError(
            f"{inputs.ratings}: no examples: {counts['kept_ratings']} ratings kept "
            f"(--min_rating={cfg.min_rating}) and no user has --min_timeline_length="
            f"{cfg.min_timeline_length} of them")
    # validation/ is listed (manifest, "shards", "shard_examples") only when this run wrote
    # it (schema.example_splits); its count is always there, 0 when not written.
    splits = (schema.EXAMPLE_SPLITS if timelines.writes_validation(cfg.split, cfg.validation)
              else schema.SPLITS)
    examples = {split: [getattr(r, f"{split}_examples") for r in results] for split in splits}
    # users/ is listed beside the example splits (schema.USERS); "shards" and
    # "shard_examples" keep describing the example splits only, as readers expect.
    errors = sorted(error_files)
    metadata = {
        "schema_version": schema.SCHEMA_VERSION,
        "flags": cfg.recorded_flags(),
        "input": {"format": inputs.format, "files": [inputs.ratings, inputs.movies],
                  "sha256": dict(sorted(sha256.items()))},
        "counts": counts,
        "shards": {split: [r.name for r in results] for split in splits},
        "shard_examples": examples,
        schema.MANIFEST: {
            **{split: [{"name": r.name, **r.files[split], "examples": n}
                       for r, n in zip(results, examples[split], strict=True)]
               for split in splits},
            schema.USERS: [{"name": r.name, **r.files[schema.USERS], "examples": r.user_records}
                           for r in results]},
        schema.FILES: {f.path: f.record for f in [vocab, *errors]},
        "vocab_size": vocab.count,
        "errors": {posixpath.basename(f.path): f.count for f in errors},
    }
    out = cfg.output_dir
    problems = mismatches(out, metadata)
    if problems:
        raise _changed(out, problems, "before writing " + schema.SUCCESS_FILE)
    metadata_bytes = (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode()
    success = schema.success_record(metadata_bytes)
    write_bytes(schema.join(out, schema.METADATA_FILE), metadata_bytes)
    write_bytes(schema.join(out, schema.SUCCESS_FILE), success)
    problems = [f"{name}: not the one this run wrote" for name, data in (
        (schema.METADATA_FILE, metadata_bytes), (schema.SUCCESS_FILE, success))
        if _read_or_none(schema.join(out, name)) != data]
    problems += mismatches(out, metadata)
    if problems:
        raise _changed(out, problems, "after writing " + schema.SUCCESS_FILE)
    return metadata


def leftover_patterns(output_dir: str) -> list[str]:
    """Where a run that did not finish leaves temporary files: the .tmp-<uuid>-<name> files
    of tfrecord's writers (train/, validation/, test/, users/, errors/, the top level) and the top level's
    write probe (_check_local_dir). On gs:// they are orphaned objects, matched by globs
    like train/*."""
    dirs = [output_dir] + [schema.join(output_dir, d)
                           for d in (*schema.SHARD_DIRS, schema.ERRORS_DIR)]
    return ([schema.join(d, f"{TMP_PREFIX}*") for d in dirs]
            + [schema.join(output_dir, f"{_PROBE_PREFIX}*")])


def prepare_output_dir(output_dir: str, overwrite: bool,
                       run_outputs: list[str] | None = None) -> None:
    """Refuses a local output_dir that is a file or cannot be created or written, and a
    finished run unless `overwrite`; then removes the outputs of any earlier run (its
    _SUCCESS first, so an interrupted cleanup never looks finished) and the temporary
    files of any run that did not finish (leftover_patterns). `run_outputs`: globs of
    what a run writes (default: this job's shards, errors, vocab and metadata)."""
    if "://" not in output_dir:
        _check_local_dir(output_dir)
    success = schema.join(output_dir, schema.SUCCESS_FILE)
    if FileSystems.exists(success):
        if not overwrite:
            raise OutputError(f"--output_dir {output_dir} already holds a finished run "
                              f"({success} exists); pass --overwrite to replace it")
        FileSystems.delete([success])
    if run_outputs is None:
        run_outputs = [schema.join(output_dir, split, schema.SHARD_GLOB)
                       for split in schema.SHARD_DIRS]
        run_outputs += [schema.join(output_dir, schema.ERRORS_DIR, "*.tsv"),
                        schema.join(output_dir, schema.VOCAB_FILE)]
    patterns = [*run_outputs, schema.join(output_dir, schema.METADATA_FILE),
                *leftover_patterns(output_dir)]
    stale = sorted({m.path for r in FileSystems.match(patterns) for m in r.metadata_list})
    if stale:
        _LOG.info("removing %d files of an earlier run from %s", len(stale), output_dir)
        try:
            FileSystems.delete(stale)
        except Exception:  # Beam wraps the filesystem's error: fine if they are gone
            if any(FileSystems.exists(p) for p in stale):
                raise


def _check_local_dir(output_dir: str) -> None:
    """Creates output_dir and writes and removes a file in it: the job's own first write
    would otherwise fail late, inside a worker. A real write rather than os.access, which
    ignores read-only mounts and answers yes to root everywhere."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise OutputError(f"--output_dir {output_dir}: is a file, not a directory")
    try:
        os.makedirs(output_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=output_dir, prefix=_PROBE_PREFIX)
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
    validation = c.get("validation_examples", 0)
    held_out = (f"{validation} validation / " if validation else "") + f"{c['test_examples']}"
    return (f"{output_dir}: {c['train_examples']} train / {held_out} test examples "
            f"from {c['users']} users ({c['lines']} rating lines, {c['malformed']} malformed, "
            f"{c['unknown_movie']} unknown movie; see errors/)")
