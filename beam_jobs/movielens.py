"""MovieLens input formats: file discovery, ratings byte ranges, line parsing, movies table.

Two layouts are read by the same job:

* "dat" (ML-1M): ratings.dat `UserID::MovieID::Rating::Timestamp`, movies.dat
  `MovieID::Title::Genres`, Latin-1, no header.
* "csv" (ML-20M/25M/latest): ratings.csv `userId,movieId,rating,timestamp` and movies.csv
  `movieId,title,genres`, UTF-8, a header line, RFC 4180 quoting (titles with commas).

Ratings are read as newline-aligned byte ranges, parsed in bulk with pyarrow (fast path) and
line by line only when a range holds a line the fast path cannot vouch for; both paths
accept exactly the same lines (see parse_rating_line), so the output never depends on how
the file was cut into ranges. Downloads live in beam_jobs/download.py.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs import example_records, schema, timelines

FORMATS = {"dat": ("ratings.dat", "movies.dat"), "csv": ("ratings.csv", "movies.csv")}
RATINGS_HEADER = b"userid,movieid,rating,timestamp"
MOVIES_HEADER = "movieid,title,genres"
MAX_ID = 2**31 - 1
MAX_TIMESTAMP = 2**62
# Longest line (bytes, without its newline) of a ratings or movies file. Real lines are
# far shorter (ML-25M: 60-byte ratings, 200-byte movies); a longer one is set aside rather
# than parsed: a huge genre list would size the encoder's header tables, and a field of
# more than 4,300 digits is more than Python's int() will read.
MAX_LINE_BYTES = 4096
# Reasons a line is set aside (errors/ files, counters malformed_<reason>).
BLANK, UNDECODABLE, FIELD_COUNT, NON_NUMERIC = "blank_line", "undecodable", "field_count", "non_numeric"
OUT_OF_RANGE, RATING_RANGE = "id_out_of_range", "rating_out_of_range"
OVERLONG, NUL_BYTE = "overlong_line", "nul_byte"
UNKNOWN_MOVIE, DUPLICATE_MOVIE = "unknown_movie", "duplicate_movie_id"
MAX_ERROR_TEXT = 500
# Text encoding of a movies file by format; ratings files are ASCII (read as UTF-8 for the
# errors/ text).
MOVIES_ENCODING = {"dat": "latin-1", "csv": "utf-8"}
RATINGS_ENCODING = "utf-8"


class InputError(ValueError):
    """Unusable input: the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class InputFiles:
    format: str  # "dat" | "csv"
    ratings: str
    movies: str
    ratings_size: int
    movies_size: int


def _is_local(path: str) -> bool:
    return "://" not in path


def _size(path: str) -> int | None:
    """Size of `path`, None if it does not exist; other failures (e.g. no credentials for
    gs://) raise InputError with their cause rather than pretending the file is missing,
    and so does a local directory in place of the file (its size would read as a file's)."""
    if _is_local(path) and os.path.isdir(path):
        raise InputError(f"{path}: is a directory, not a file")
    try:
        found = FileSystems.match([path])[0].metadata_list
    except Exception as e:  # BeamIOError wraps the filesystem's own exception
        if "No such file" in str(e) or "not found" in str(e).lower():
            return None
        raise InputError(f"{path}: cannot read its metadata: {e}") from e
    return found[0].size_in_bytes if found else None


def find_inputs(input_dir: str) -> InputFiles:
    """Finds the ratings and movies files under `input_dir`; raises InputError naming the
    flag or file before any worker starts: input_dir missing or a file; an input file
    missing, a directory, empty, or without a data line (only blank lines, and the csv
    header)."""
    if _is_local(input_dir) and os.path.exists(input_dir) and not os.path.isdir(input_dir):
        raise InputError(f"--input_dir {input_dir}: is a file, not a directory")
    found = {}
    for fmt, (ratings, _movies) in FORMATS.items():
        size = _size(schema.join(input_dir, ratings))
        if size is not None:
            found[fmt] = size
    if not found:
        if _is_local(input_dir) and not FileSystems.exists(input_dir):
            raise InputError(f"--input_dir {input_dir}: no such directory")
        raise InputError(
            f"--input_dir {input_dir}: found neither ratings.dat (ML-1M) nor ratings.csv "
            "(ML-20M/25M/latest)")
    if len(found) > 1:
        raise InputError(f"--input_dir {input_dir}: holds both ratings.dat and ratings.csv; "
                         "keep one layout per directory")
    fmt, ratings_size = next(iter(found.items()))
    ratings, movies = (schema.join(input_dir, n) for n in FORMATS[fmt])
    movies_size = _size(movies)
    if movies_size is None:
        raise InputError(f"{movies}: movies file not found (needed next to {ratings})")
    for path, size, what, header in ((movies, movies_size, "movies", _is_movies_header),
                                     (ratings, ratings_size, "ratings", _is_ratings_header)):
        if size == 0:
            raise InputError(f"{path}: {what} file is empty")
        if not _has_data_line(path, header if fmt == "csv" else None):
            raise InputError(f"{path}: {what} file has no data lines (empty input: blank "
                             f"lines only{', besides the header' if fmt == 'csv' else ''})")
    return InputFiles(fmt, ratings, movies, ratings_size, movies_size)


def read_bytes(path: str) -> bytes:
    """The whole file at `path` (local or gs://)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def _is_ratings_header(line: bytes) -> bool:
    return line.strip().lower().replace(b" ", b"") == RATINGS_HEADER


def _is_movies_header(line: bytes) -> bool:
    return line.strip().lower().replace(b" ", b"") == MOVIES_HEADER.encode()


_SCAN_BLOCK = 1 << 16


def _has_data_line(path: str, is_header=None) -> bool:
    """Whether `path` holds a non-blank line other than its first non-blank line when
    `is_header` says that one is a header. Reads up to the first data line: one block of
    a real file, the whole file only when it is all blank (a blank line, as in
    parse_rating_line, is one with nothing but whitespace)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        buf = b""
        while not buf:
            block = f.read(_SCAN_BLOCK)
            if not block:
                return False
            buf = block.lstrip()
        if is_header is None:
            return True
        # The first non-blank line, whole (a header is short: stop looking after 4 KB).
        while b"\n" not in buf and len(buf) < 4096:
            block = f.read(_SCAN_BLOCK)
            if not block:
                break
            buf += block
        first, _, rest = buf.partition(b"\n")
        if not is_header(first) or rest.strip():
            return True
        while block := f.read(_SCAN_BLOCK):
            if block.strip():
                return True
    return False


# ---------------------------------------------------------------- ratings byte ranges


def plan_ranges(size: int, chunk_bytes: int = 0) -> list[tuple[int, int]]:
    """[start, end) byte ranges covering a file of `size` bytes. A line belongs to the range
    holding its first byte. Automatic size: at least 8 ranges, 1..32 MiB each."""
    if chunk_bytes <= 0:
        chunk_bytes = min(32 << 20, max(1 << 20, -(-size // 8)))
    return [(s, min(s + chunk_bytes, size)) for s in range(0, size, chunk_bytes)]


@dataclasses.dataclass(frozen=True)
class RangeText:
    """The lines of one byte range.

    body: the lines whose first byte lies in [start, end), with their newlines.
    lines_before: newlines in [start, first line) (0 or 1), to turn local line indices
      into file line numbers together with the newline counts of earlier ranges.
    newlines: newline bytes in [start, end) (prefix sums of these number the lines).
    """

    body: bytes
    lines_before: int
    newlines: int


def read_range(path: str, start: int, end: int) -> RangeText:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        a = max(start - 1, 0)
        f.seek(a)
        buf = f.read(end - a)
        covered = buf[start - a:]
        newlines = covered.count(b"\n")
        if start == 0 or buf[:1] == b"\n":
            p = start
        else:
            nl = buf.find(b"\n", 1)
            if nl < 0 or a + nl + 1 >= end:
                return RangeText(b"", 0, newlines)  # one line spans the whole range
            p = a + nl + 1
        body = buf[p - a:]
        if body and not body.endswith(b"\n"):
            # The last line continues past `end`: read up to its newline (or EOF), keeping
            # at most MAX_LINE_BYTES + 1 bytes of it: enough to know it is overlong.
            keep = max(0, MAX_LINE_BYTES + 1 - (len(body) - body.rfind(b"\n") - 1))
            tail = []
            while True:
                block = f.read(1 << 16)
                if not block:
                    break
                nl = block.find(b"\n")
                piece = block if nl < 0 else block[:nl]
                tail.append(piece[:keep])
                keep -= len(tail[-1])
                if nl >= 0:
                    tail.append(b"\n")
                    break
            body += b"".join(tail)
    return RangeText(body, 0 if p == start else 1, newlines)


# ---------------------------------------------------------------- ratings lines

_INT = re.compile(rb"[0-9]+\Z")
_FLOAT = re.compile(rb"(?:[0-9]+\.?[0-9]*|\.[0-9]+)\Z")
_MAX_DIGITS = len(str(MAX_TIMESTAMP))  # no id or timestamp in range has more


def _bounded_int(digits: bytes) -> int | None:
    """int(digits) of an _INT match, None when it has more significant digits than any
    value in range (int() refuses more than 4,300 digits: a ValueError, not a reason)."""
    significant = digits.lstrip(b"0")
    return int(significant or b"0") if len(significant) <= _MAX_DIGITS else None


def _bad_line(line: bytes) -> str | None:
    """The reason checked before any parsing, for ratings and movies lines alike."""
    if len(line) > MAX_LINE_BYTES:
        return OVERLONG
    if b"\0" in line:
        return NUL_BYTE
    return None


def parse_rating_line(line: bytes, fmt: str) -> tuple[int, int, float, int] | str:
    """(user, movie, rating, timestamp) of one line (without newline), or the reason it is
    malformed. This is the definition of a valid line; the bulk path agrees with it."""
    line = line.rstrip(b"\r")
    if not line.strip():
        return BLANK
    if bad := _bad_line(line):
        return bad
    try:
        line.decode("ascii")
    except UnicodeDecodeError:
        return UNDECODABLE
    fields = line.split(b"::" if fmt == "dat" else b",")
    if len(fields) != 4:
        return FIELD_COUNT
    u, m, r, t = fields
    if not (_INT.match(u) and _INT.match(m) and _INT.match(t) and _FLOAT.match(r)):
        return NON_NUMERIC
    user, movie, ts = _bounded_int(u), _bounded_int(m), _bounded_int(t)
    if user is None or movie is None or ts is None:
        return OUT_OF_RANGE
    rating = float(r)
    if not (1 <= user <= MAX_ID and 1 <= movie <= MAX_ID and ts <= MAX_TIMESTAMP):
        return OUT_OF_RANGE
    if not (0.5 <= rating <= 5.0 and rating * 2 == int(rating * 2)):
        return RATING_RANGE
    return user, movie, rating, ts


@dataclasses.dataclass
class ParsedRatings:
    """Valid lines of one range as columns, plus the malformed ones.

    line: [n] int64 local line index (0 = first line of the range body) of each row.
    user, movie: [n] int64; rating: [n] float32; timestamp: [n] int64.
    errors: (local line index, reason, line bytes) of each malformed line.
    num_lines: data lines in the range (a csv header is not a data line).
    """

    line: np.ndarray
    user: np.ndarray
    movie: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    errors: list[tuple[int, str, bytes]]
    num_lines: int


_ALLOWED = np.zeros(256, dtype=bool)
_ALLOWED[list(b"0123456789.,\n")] = True
_COLUMNS = ["user", "movie", "rating", "timestamp"]
_TYPES = {"user": pa.int64(), "movie": pa.int64(), "rating": pa.float64(), "timestamp": pa.int64()}


def parse_ratings(body: bytes, fmt: str, file_start: bool) -> ParsedRatings:
    """Parses a range body; `file_start` says it begins at byte 0 (csv header check)."""
    first = 0
    if fmt == "csv" and file_start:
        nl = body.find(b"\n")
        if _is_ratings_header(body[:nl] if nl >= 0 else body):
            first = nl + 1 if nl >= 0 else len(body)
    text = body[first:]
    skipped = 1 if first else 0
    fast = _parse_bulk(text, fmt)
    if fast is not None:
        fast.line += skipped
        return fast
    return _parse_lines(text, fmt, skipped)


def _count_lines(text: bytes) -> int:
    return text.count(b"\n") + (1 if text and not text.endswith(b"\n") else 0)


def _parse_bulk(text: bytes, fmt: str) -> ParsedRatings | None:
    """pyarrow parse of a clean range, or None when any line needs the exact path."""
    n = _count_lines(text)
    if n == 0:
        return None
    if b"\r" in text:
        text = text.replace(b"\r\n", b"\n")
    newlines = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == ord("\n"))
    if np.diff(newlines, prepend=-1, append=len(text)).max() > MAX_LINE_BYTES + 1:
        return None  # an overlong line (the exact path says so)
    if fmt == "dat":
        if b"," in text:
            return None
        text = text.replace(b"::", b",")
    if not _ALLOWED[np.frombuffer(text, dtype=np.uint8)].all():
        return None
    try:
        table = pacsv.read_csv(
            io.BytesIO(text),
            read_options=pacsv.ReadOptions(column_names=_COLUMNS),
            parse_options=pacsv.ParseOptions(delimiter=","),
            convert_options=pacsv.ConvertOptions(column_types=_TYPES),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if table.num_rows != n or any(c.null_count for c in table.columns):
        return None  # blank lines (skipped by pyarrow) or empty fields
    user, movie, rating, ts = (table.column(c).to_numpy() for c in _COLUMNS)
    ok = ((user >= 1) & (user <= MAX_ID) & (movie >= 1) & (movie <= MAX_ID)
          & (ts >= 0) & (ts <= MAX_TIMESTAMP)
          & (rating >= 0.5) & (rating <= 5.0) & (rating * 2 == np.floor(rating * 2)))
    if not ok.all():
        return None
    return ParsedRatings(np.arange(n, dtype=np.int64), user, movie, rating.astype(np.float32),
                         ts, [], n)


def _parse_lines(text: bytes, fmt: str, skipped: int) -> ParsedRatings:
    lines = text.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final newline ends the last line, it does not start a new one
    rows, errors = [], []
    for i, line in enumerate(lines):
        parsed = parse_rating_line(line, fmt)
        if isinstance(parsed, str):
            errors.append((i + skipped, parsed, line[:MAX_ERROR_TEXT]))
        else:
            rows.append((i + skipped,) + parsed)
    cols = list(zip(*rows, strict=True)) if rows else [(), (), (), (), ()]
    return ParsedRatings(
        np.array(cols[0], dtype=np.int64), np.array(cols[1], dtype=np.int64),
        np.array(cols[2], dtype=np.int64), np.array(cols[3], dtype=np.float32),
        np.array(cols[4], dtype=np.int64), errors, len(lines))


# ---------------------------------------------------------------- movies


class MoviesTable:
    """Every valid movie of the movies file, sorted by id.

    ids: [m] int64 ascending; years: [m] int64; titles, genres: m strings ("A|B").
    """

    def __init__(self, ids, titles, genres, years):
        order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
        self.ids = np.asarray(ids, dtype=np.int64)[order]
        self.titles = [titles[i] for i in order]
        self.genres = [genres[i] for i in order]
        self.years = np.asarray(years, dtype=np.int64)[order]
        self._bytes = None

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_bytes"] = None  # rebuilt per worker, not shipped
        return state

    def rows(self, movie_ids: np.ndarray) -> np.ndarray:
        """[n] row of each id in this table, -1 where the id is unknown."""
        pos = np.searchsorted(self.ids, movie_ids)
        pos = np.minimum(pos, max(len(self.ids) - 1, 0))
        known = (self.ids[pos] == movie_ids) if len(self.ids) else np.zeros(len(movie_ids), bool)
        return np.where(known, pos, -1)

    def movie_bytes(self) -> example_records.MovieBytes:
        """Wire pieces of every row as arrays (computed once per process)."""
        if self._bytes is None:
            self._bytes = example_records.MovieBytes(self)
        return self._bytes


def parse_movies(data: bytes, fmt: str) -> tuple[MoviesTable, list[tuple[int, str, bytes]], int]:
    """(table, errors as (1-based line, reason, text), data lines) of a movies file."""
    ids, titles, genres, years, errors = [], [], [], [], []
    seen = set()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    num_lines = 0
    for n, raw in enumerate(lines, start=1):
        line = raw.rstrip(b"\r")
        if n == 1 and fmt == "csv" and _is_movies_header(line):
            continue
        num_lines += 1
        parsed = _bad_line(line) or _parse_movie_line(line, fmt)
        if isinstance(parsed, str):
            errors.append((n, parsed, raw[:MAX_ERROR_TEXT]))
            continue
        movie_id, title, genre = parsed
        if movie_id in seen:
            errors.append((n, DUPLICATE_MOVIE, raw[:MAX_ERROR_TEXT]))
            continue
        seen.add(movie_id)
        ids.append(movie_id)
        titles.append(title)
        genres.append(genre)
        years.append(timelines.year_from_title(title))
    return MoviesTable(ids, titles, genres, years), errors, num_lines


def _parse_movie_line(line: bytes, fmt: str) -> tuple[int, str, str] | str:
    if not line.strip():
        return BLANK
    if fmt == "dat":
        text = line.decode("latin-1")  # ML-1M's encoding; every byte decodes
        fields = text.split("::")
        if len(fields) < 3:
            return FIELD_COUNT
        fields = [fields[0], "::".join(fields[1:-1]), fields[-1]]
    else:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return UNDECODABLE
        try:
            fields = next(csv.reader([text], strict=True))
        except csv.Error:
            return FIELD_COUNT
        if len(fields) != 3:
            return FIELD_COUNT
    if not _INT.match(fields[0].encode()):
        return NON_NUMERIC
    movie_id = _bounded_int(fields[0].encode())
    if movie_id is None or not 1 <= movie_id <= MAX_ID:
        return OUT_OF_RANGE
    return movie_id, fields[1].strip(), fields[2].strip()


def error_text(line: bytes, encoding: str) -> str:
    """A line (its first MAX_ERROR_TEXT bytes) as one errors/ TSV field: decoded with its
    file's encoding, an undecodable byte NN kept as the lone surrogate U+DCNN (Python's
    surrogateescape), then schema.escape_field. Exact: the bytes are
    schema.unescape_field(text).encode(encoding, "surrogateescape")."""
    return schema.escape_field(line.decode(encoding, "surrogateescape"))
