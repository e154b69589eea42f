"""The data contract between the Beam job and the trainer (schema version 1).

Stdlib only: the trainer imports this module, and nothing here may pull in Beam
or TensorFlow. docs/design.md ("Data contract") has the prose version.

Layout of a finished `data_dir` (a local path or gs:// URI):

    train/part-00000-of-00004.tfrecord.gz ...   tf.train.Example shards (features())
    validation/part-00000-of-00004.tfrecord.gz  each user's second-to-last example, with
                       SEEN_MOVIE_ID (HELD_OUT_FEATURES); only when the run wrote it
                       (--split=last without --novalidation): see example_splits
    test/part-00000-of-00004.tfrecord.gz ...    each user's last example (--split=last),
                       with SEEN_MOVIE_ID unless --novalidation (has_seen_movie_ids)
    users/part-00000-of-00004.tfrecord.gz ...   one tf.train.Example per user (USER_FEATURES):
                       the input of batch recommendations (beam_jobs/recommend_all.py)
    vocab.tsv          every movie of movies.dat, most frequent (train split) first
    metadata.json      schema version, flags, input fingerprint, counts, shard lists
    errors/            malformed input lines set aside, with file and line number
    _SUCCESS           written last; its absence means the run did not finish

Integrity: metadata.json's "manifest" lists every shard of every split with its
size in bytes, SHA-256 and example count, its "files" the size and SHA-256 of
vocab.tsv and of every errors/ file, and _SUCCESS holds the SHA-256 of
metadata.json's exact bytes (`success_record`). Output is deterministic, so two
runs of the same input and flags write the same bytes; files of runs that differ
fail `check_success` or the manifest (trainer/data.py verifies every shard before
training). A data_dir whose files are not all from one run is refused. The job
checks the same before it writes _SUCCESS: `listed_files` is the complete list of
what train/, validation/, test/, users/, errors/ and vocab.tsv must hold.

Text: vocab.tsv and errors/*.tsv are UTF-8, one record per "\n"-terminated line,
tab-separated, every text field written with `escape_field` (see there).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import re
from collections.abc import Mapping
from typing import Any

SCHEMA_VERSION = 1

# Feature keys, as in the TensorFlow Lite reference example generator.
CONTEXT_MOVIE_ID = "context_movie_id"
CONTEXT_MOVIE_RATING = "context_movie_rating"
CONTEXT_MOVIE_YEAR = "context_movie_year"
CONTEXT_MOVIE_GENRE = "context_movie_genre"
LABEL_MOVIE_ID = "label_movie_id"

# Padding. MovieLens ids start at 1, so 0 never collides with a real movie.
PAD_MOVIE_ID = 0
PAD_RATING = 0.0
PAD_YEAR = 0
PAD_GENRE = b"UNK"

DEFAULT_MAX_CONTEXT_LENGTH = 10
DEFAULT_MAX_CONTEXT_MOVIE_GENRE_LENGTH = 10

# Output names.
TRAIN = "train"
TEST = "test"
# The example splits every data_dir has: what the trainer reads and verifies
# (trainer/data.py).
SPLITS = (TRAIN, TEST)
# validation/: each user's second-to-last example (--split=last, the default). Optional:
# data_dirs written before it existed, with --novalidation or with --split=random have
# none, and their metadata.json lists none (example_splits, manifest_splits). Its
# examples have the features of test/ (features() plus SEEN_MOVIE_ID).
VALIDATION = "validation"
# Every example split a run may write, in the order of a user's timeline.
EXAMPLE_SPLITS = (TRAIN, VALIDATION, TEST)
# users/: one record per user for batch recommendations. Not a training split: data_dirs
# written before it existed have no users/ and still train; the trainer never reads it.
USERS = "users"
# Every shard directory a run may write, in manifest order. A manifest lists VALIDATION
# and USERS only when the run wrote them (manifest_splits).
SHARD_DIRS = (*EXAMPLE_SPLITS, USERS)
# Features of a users/ record, in the wire order of deterministic serialization (keys
# sorted): context_movie_id int64 [L] (the user's last L kept movies by (timestamp,
# movie_id), oldest first, right-padded with PAD_MOVIE_ID), seen_movie_id int64 [n >= 1]
# (every movie the user rated, kept or below --min_rating, ascending, no duplicates:
# what --exclude_seen removes), user_id int64 [1].
USER_ID = "user_id"
SEEN_MOVIE_ID = "seen_movie_id"
USER_FEATURES = (CONTEXT_MOVIE_ID, SEEN_MOVIE_ID, USER_ID)
# Held-out examples (validation/ and test/; not train/) carry, besides features(),
# seen_movie_id int64 [n >= 1], variable length (parse it with tf.io.VarLenFeature or
# RaggedFeature): the movies of every rating ordered before the label in the user's
# (timestamp, movie_id) timeline, ratings below --min_rating included (the same meaning as
# users/ seen_movie_id: what excluding seen movies removes), ascending, no duplicates. A
# MovieLens user rates a movie once, so the label is never among them (an input that
# repeats a user's movie may list it). Runs with --novalidation and runs written before it
# existed have none (has_seen_movie_ids).
HELD_OUT_FEATURES = (SEEN_MOVIE_ID,)
VOCAB_FILE = "vocab.tsv"
# Header line of vocab.tsv. Titles and genres are written with escape_field.
VOCAB_COLUMNS = ("movie_id", "count", "year", "title", "genres")
METADATA_FILE = "metadata.json"
SUCCESS_FILE = "_SUCCESS"
ERRORS_DIR = "errors"
SHARD_GLOB = "part-*-of-*.tfrecord*"
# metadata.json key: {split: [{"name", "bytes", "sha256", "examples"}, ...]} in shard order.
MANIFEST = "manifest"
# metadata.json key: {path relative to data_dir: {"bytes", "sha256"}} of vocab.tsv and of
# every errors/ file.
FILES = "files"

COMPRESSIONS = {"gzip": ".tfrecord.gz", "none": ".tfrecord"}


class SchemaError(ValueError):
    """A data_dir that does not satisfy this contract."""


@dataclasses.dataclass(frozen=True)
class Feature:
    """One fixed-length feature of a tf.train.Example.

    Attributes:
      name: feature key.
      dtype: "int64", "float" or "bytes" (the tf.train.Feature kind).
      length: number of values; every example carries exactly this many.
      default: padding value (None: the feature is never padded).
    """

    name: str
    dtype: str
    length: int
    default: Any


def features(
    max_context_length: int = DEFAULT_MAX_CONTEXT_LENGTH,
    max_context_movie_genre_length: int = DEFAULT_MAX_CONTEXT_MOVIE_GENRE_LENGTH,
) -> tuple[Feature, ...]:
    """The features of every example, in a stable order."""
    return (
        Feature(CONTEXT_MOVIE_ID, "int64", max_context_length, PAD_MOVIE_ID),
        Feature(CONTEXT_MOVIE_RATING, "float", max_context_length, PAD_RATING),
        Feature(CONTEXT_MOVIE_YEAR, "int64", max_context_length, PAD_YEAR),
        Feature(CONTEXT_MOVIE_GENRE, "bytes", max_context_movie_genre_length, PAD_GENRE),
        Feature(LABEL_MOVIE_ID, "int64", 1, None),
    )


def features_from_metadata(metadata: Mapping[str, Any]) -> tuple[Feature, ...]:
    """The feature list a finished run wrote, from its metadata.json contents."""
    flags = metadata.get("flags", {})
    return features(
        int(flags.get("max_context_length", DEFAULT_MAX_CONTEXT_LENGTH)),
        int(flags.get("max_context_movie_genre_length", DEFAULT_MAX_CONTEXT_MOVIE_GENRE_LENGTH)),
    )


def shard_name(index: int, num_shards: int, compression: str = "gzip") -> str:
    """File name of shard `index` of `num_shards`, e.g. part-00000-of-00004.tfrecord.gz."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {sorted(COMPRESSIONS)}, got {compression!r}")
    return f"part-{index:05d}-of-{num_shards:05d}{COMPRESSIONS[compression]}"


def tf_compression_type(compression: str) -> str:
    """The `compression_type` argument tf.data.TFRecordDataset expects."""
    return {"gzip": "GZIP", "none": ""}[compression]


def join(base: str, *parts: str) -> str:
    """Joins URI parts with '/', for local paths and gs:// alike."""
    return posixpath.join(base.rstrip("/") if base != "/" else base, *parts)


def check_metadata(metadata: Mapping[str, Any], source: str) -> None:
    """Raises SchemaError unless `metadata` (read from `source`) is schema version 1."""
    version = metadata.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SchemaError(
            f"{source}: schema_version is {version!r}, this code reads version "
            f"{SCHEMA_VERSION}; rebuild the data with this version of beam_jobs.pipeline"
        )
    for key in ("flags", "counts", "shards"):
        if key not in metadata:
            raise SchemaError(f"{source}: metadata has no {key!r} entry")


def loads_metadata(text: str, source: str) -> dict:
    """Parses and checks metadata.json text; errors name `source`."""
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as e:
        raise SchemaError(f"{source}: not valid JSON ({e})") from e
    if not isinstance(metadata, dict):
        raise SchemaError(f"{source}: expected a JSON object")
    check_metadata(metadata, source)
    return metadata


# --- Text fields of the job's TSV files (vocab.tsv, errors/*.tsv) -----------------------
# Rule: lines end with "\n" and nothing else splits them; fields are separated by "\t".
# A field is written with escape_field: a backslash becomes "\\", tab/LF/CR become "\t",
# "\n", "\r", and every other character that could split a line or is unprintable -- the
# C0 and C1 controls (NUL, \x0b, \x0c, \x1c-\x1e, \x85, DEL, ...), U+2028, U+2029 (all that
# str.splitlines splits on) and lone surrogates -- becomes "\xNN" (< 0x100) or "\uNNNN".
# unescape_field reverses it exactly: any title or genre list round-trips.
_ESCAPE = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESCAPE = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
_TO_ESCAPE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_ESCAPED = re.compile(r"\\(?:([\\tnr])|x([0-9a-f]{2})|u([0-9a-f]{4}))")


def _escape_char(m: re.Match) -> str:
    c = m.group()
    if c in _ESCAPE:
        return _ESCAPE[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def escape_field(text: str) -> str:
    """`text` as one TSV field of one line (see the rule above)."""
    return _TO_ESCAPE.sub(_escape_char, text)


def _unescape_char(m: re.Match) -> str:
    short, byte, code = m.groups()
    return _UNESCAPE[short] if short else chr(int(byte or code, 16))


def unescape_field(field: str) -> str:
    """The text escape_field wrote. A backslash that starts no escape is kept as is
    (vocab.tsv files written before escaping existed replaced tabs and line ends by spaces
    and wrote backslashes unescaped)."""
    return _ESCAPED.sub(_unescape_char, field) if "\\" in field else field


def format_vocab_row(movie_id: int, count: int, year: int, title: str, genres: str) -> str:
    """One vocab.tsv line (no newline); title and genres escaped (escape_field)."""
    return f"{movie_id}\t{count}\t{year}\t{escape_field(title)}\t{escape_field(genres)}"


def parse_vocab(text: str, source: str) -> list[dict]:
    """Parses vocab.tsv text into rows {movie_id, count, year, title, genres}: lines split
    at "\n" only, title and genres unescaped (unescape_field)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline ending the last line starts no line
    if not lines or tuple(lines[0].split("\t")) != VOCAB_COLUMNS:
        header = "\t".join(VOCAB_COLUMNS)
        raise SchemaError(f"{source}: header must be {header!r}")
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(VOCAB_COLUMNS):
            raise SchemaError(f"{source}:{n}: expected {len(VOCAB_COLUMNS)} tab-separated fields")
        try:
            rows.append(
                {
                    "movie_id": int(fields[0]),
                    "count": int(fields[1]),
                    "year": int(fields[2]),
                    "title": unescape_field(fields[3]),
                    "genres": unescape_field(fields[4]),
                }
            )
        except ValueError as e:
            raise SchemaError(f"{source}:{n}: {e}") from e
    return rows


def file_record(data: bytes) -> dict:
    """{"bytes", "sha256"} of a file's exact bytes, as "manifest" and "files" hold them."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def manifest_splits(metadata: Mapping[str, Any]) -> tuple[str, ...]:
    """The shard directories metadata.json's manifest lists: SPLITS, plus VALIDATION and
    USERS when the run wrote them (runs before they existed did not)."""
    return tuple(s for s in SHARD_DIRS if s in SPLITS or s in metadata[MANIFEST])


def example_splits(metadata: Mapping[str, Any]) -> tuple[str, ...]:
    """The example splits a run wrote, timeline order: (TRAIN, TEST), or (TRAIN,
    VALIDATION, TEST) when its manifest lists validation/. Its count is then
    counts["validation_examples"] (0 in runs of this version that wrote none; absent in
    runs written before validation/ existed)."""
    manifest = metadata.get(MANIFEST, {})
    return tuple(s for s in EXAMPLE_SPLITS if s in SPLITS or s in manifest)


def has_seen_movie_ids(metadata: Mapping[str, Any]) -> bool:
    """Whether the held-out examples (validation/, test/) carry SEEN_MOVIE_ID: runs with
    the "validation" flag on (the default; --split=random too, which writes no
    validation/). False for --novalidation and for runs written before the flag existed."""
    return bool(metadata.get("flags", {}).get("validation", False))


def listed_files(metadata: Mapping[str, Any]) -> dict[str, dict]:
    """{path relative to the data_dir: {"bytes", "sha256"}} of every file metadata.json's
    "manifest" (split/name) and "files" list: exactly what train/, test/, validation/ and
    users/ (when listed), errors/ and vocab.tsv of a complete data_dir hold, nothing more."""
    out = {}
    for split in manifest_splits(metadata):
        for entry in metadata[MANIFEST][split]:
            out[f"{split}/{entry['name']}"] = {"bytes": entry["bytes"], "sha256": entry["sha256"]}
    out.update(metadata.get(FILES, {}))
    return out


def success_record(metadata_bytes: bytes) -> bytes:
    """The content of _SUCCESS: it commits to metadata.json's exact bytes."""
    digest = hashlib.sha256(metadata_bytes).hexdigest()
    return (json.dumps({"metadata_sha256": digest}, sort_keys=True) + "\n").encode()


def check_success(success_bytes: bytes, metadata_bytes: bytes, source: str) -> bool:
    """Checks that _SUCCESS commits to these metadata.json bytes.

    Returns:
      True when verified; False for an empty _SUCCESS (a data_dir written before
      manifests existed: readable, but its files cannot be checked).
    Raises:
      SchemaError (naming `source`) when _SUCCESS names other metadata: the
      data_dir mixes the files of more than one run.
    """
    if not success_bytes.strip():
        return False
    try:
        expected = json.loads(success_bytes)["metadata_sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise SchemaError(f"{source}: unreadable {SUCCESS_FILE} ({e})") from None
    if hashlib.sha256(metadata_bytes).hexdigest() != expected:
        raise SchemaError(
            f"{source}: {METADATA_FILE} is not the one {SUCCESS_FILE} was written for: the "
            "directory holds files of more than one run (two jobs wrote the same "
            "output_dir?). Rerun the Beam job into an empty output_dir.")
    return True
