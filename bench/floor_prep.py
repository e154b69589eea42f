"""The speed floor: the data contract in one process, vectorised with numpy and pyarrow.

    python -m bench.floor_prep --input_dir=DIR --output_dir=DIR [--num_shards=8 ...]

Same output contract as beam_jobs.pipeline for the default flags (split=last, ratings >=
min_rating, timelines ordered by (timestamp, movie_id), users with >= min_timeline_length
kept ratings, context of up to max_context_length previous movies, right-padded): GZIP
TFRecord shards under train/ and test/ (users assigned to shards by the contract's stable
hash) and vocab.tsv. No metadata.json, errors/ or _SUCCESS: this is a benchmark, not the job.

Every step is a whole-array numpy operation; even the tf.train.Example protobuf bytes and the
TFRecord framing are laid out with array arithmetic (padded byte columns and one boolean
selection per chunk of 65,536 examples), so the only per-record Python is one CRC call. That
is what makes it a floor: an implementation that does less per record is hard to imagine in
Python. Only valid input is handled (it is a benchmark): ratings of movies missing from the
movies file are dropped, as the job sets them aside; malformed lines raise.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import re
import sys
import time
import zlib

import google_crc32c
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from beam_jobs import example_records, schema, timelines

# beam_jobs.tfrecord.GZIP_LEVEL (not imported: it would bring Beam's import time into the
# floor), so the shards can be byte-identical to the job's.
GZIP_LEVEL = 1
CHUNK = 65536  # Examples encoded at once; bounds the index arrays (~40 MB).
_YEAR = re.compile(r"\((\d{4})\)\s*$")


# ---------------------------------------------------------------- reading


def read_ratings(input_dir: str) -> tuple[dict, str]:
    """{user, movie, rating, timestamp} numpy columns and the format ("dat"/"csv")."""
    if os.path.exists(os.path.join(input_dir, "ratings.dat")):
        fmt = "dat"
        with open(os.path.join(input_dir, "ratings.dat"), "rb") as f:
            data = f.read().replace(b"::", b":")  # pyarrow wants a one-byte delimiter
        opts = pacsv.ReadOptions(column_names=["user", "movie", "rating", "timestamp"])
        parse = pacsv.ParseOptions(delimiter=":")
    else:
        fmt = "csv"
        with open(os.path.join(input_dir, "ratings.csv"), "rb") as f:
            data = f.read()
        opts = pacsv.ReadOptions(column_names=["user", "movie", "rating", "timestamp"],
                                 skip_rows=1)
        parse = pacsv.ParseOptions(delimiter=",")
    types = {"user": pa.int64(), "movie": pa.int64(), "rating": pa.float32(),
             "timestamp": pa.int64()}
    table = pacsv.read_csv(io.BytesIO(data), read_options=opts, parse_options=parse,
                           convert_options=pacsv.ConvertOptions(column_types=types))
    return {name: table.column(name).to_numpy() for name in table.column_names}, fmt


def read_movies(input_dir: str, fmt: str) -> tuple[np.ndarray, list, list, np.ndarray]:
    """(ids ascending, titles, genre lists, years) of the movies file."""
    rows = []
    if fmt == "dat":
        with open(os.path.join(input_dir, "movies.dat"), encoding="latin-1") as f:
            for line in f:
                fields = line.rstrip("\r\n").split("::")
                rows.append((int(fields[0]), "::".join(fields[1:-1]).strip(), fields[-1].strip()))
    else:
        with open(os.path.join(input_dir, "movies.csv"), encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            next(reader)
            rows = [(int(a), b.strip(), c.strip()) for a, b, c in reader]
    rows.sort()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    titles = [r[1] for r in rows]
    genres = [[g for g in r[2].split("|") if g] for r in rows]
    years = np.array([int(m.group(1)) if (m := _YEAR.search(t)) else 0 for t in titles])
    return ids, titles, genres, years


# ---------------------------------------------------------------- protobuf layout


_VARINT_LIMITS = np.array([1 << (7 * k) for k in range(1, 9)] + [2**63 - 1], dtype=np.int64)


def _vlen(v: np.ndarray) -> np.ndarray:
    """Bytes of the base-128 varint of each (non-negative) value."""
    return 1 + np.searchsorted(_VARINT_LIMITS, np.asarray(v, dtype=np.int64), side="right")


def _prefix(key: str) -> bytes:
    k = key.encode()
    return b"\x0a" + example_records.varint(len(k)) + k + b"\x12"


class _Columns:
    """Records as padded byte columns plus a mask of the bytes that exist.

    Every segment of a record (a constant, a varint, packed varints, raw bytes, genre pieces)
    becomes a block of columns of an [n, width] uint8 matrix; `mask` marks the real bytes.
    Concatenating the blocks and selecting matrix[mask] (row-major) yields every record's
    segments back to back: the whole layout is one boolean selection, no per-record Python.
    """

    def __init__(self, n: int):
        self.n = n
        self.blocks: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []

    def raw(self, data: np.ndarray, mask: np.ndarray | None = None):
        self.blocks.append(data)
        self.masks.append(np.ones(data.shape, bool) if mask is None else mask)

    def const(self, data: bytes):
        self.raw(np.broadcast_to(np.frombuffer(data, np.uint8), (self.n, len(data))))

    def varints(self, values: np.ndarray):
        """[n] or [n, k] non-negative ints as (packed) varints, in column order."""
        v = np.asarray(values, dtype=np.int64).reshape(self.n, -1)
        nb = _vlen(v)
        width = int(nb.max()) if v.size else 1
        j = np.arange(width)
        byte = (v[:, :, None] >> (7 * j)) & 0x7F
        byte |= np.where(j < nb[:, :, None] - 1, 0x80, 0)
        self.raw(byte.astype(np.uint8).reshape(self.n, -1),
                 (j < nb[:, :, None]).reshape(self.n, -1))

    def pieces(self, ids: np.ndarray, table: np.ndarray, lengths: np.ndarray):
        """Rows of `table` (valid up to `lengths`) for each [n, k] id."""
        w = table.shape[1]
        self.raw(table[ids].reshape(self.n, -1),
                 (np.arange(w) < lengths[ids][:, :, None]).reshape(self.n, -1))

    def join(self) -> tuple[np.ndarray, np.ndarray]:
        """(all bytes, [n] byte length of each record)."""
        mask = np.concatenate(self.masks, axis=1)
        return np.concatenate(self.blocks, axis=1)[mask], mask.sum(axis=1)


def _masked(crc: np.ndarray) -> np.ndarray:
    """TFRecord's CRC mask (the job's own), on arrays of CRC32-C values."""
    return example_records.mask_crc(crc.astype(np.uint64))


def _u32_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype("<u4").view(np.uint8).reshape(-1, 4)


def encode_records(ids, ratings, years, genre_ids, labels, genre_table, genre_lens) -> bytes:
    """TFRecord-framed tf.train.Example bytes for n examples.

    Args:
      ids, years: [n, L] int64; ratings: [n, L] float32; genre_ids: [n, G] rows of
        genre_table (the pad piece included); labels: [n] int64.
      genre_table: [V, W] uint8 BytesList value pieces ("\\x0a" len bytes), genre_lens: [V].
    Returns:
      The framed records, equal to tf.train.Example(...).SerializeToString(deterministic=True)
      framed by tf.io.TFRecordWriter (map entries in key order, as deterministic output is).
    """
    n, L = ids.shape

    # Lengths first (bottom up), so every length prefix is known before any byte is laid out.
    def int_lengths(values):
        packed = _vlen(values).sum(axis=1)
        inner = 1 + _vlen(packed) + packed  # Int64List: 0a len packed
        return packed, inner, 1 + _vlen(inner) + inner  # Feature: 1a len Int64List

    genre_len = genre_lens[genre_ids].sum(axis=1)
    ints = {schema.CONTEXT_MOVIE_ID: (ids, int_lengths(ids)),
            schema.CONTEXT_MOVIE_YEAR: (years, int_lengths(years)),
            schema.LABEL_MOVIE_ID: (labels[:, None], int_lengths(labels[:, None]))}
    f_inner = 1 + len(example_records.varint(4 * L)) + 4 * L
    f_const = b"\x12" + example_records.varint(f_inner) + b"\x0a" + example_records.varint(4 * L)
    features = {  # key -> Feature length, in key order (deterministic serialization)
        schema.CONTEXT_MOVIE_GENRE: 1 + _vlen(genre_len) + genre_len,
        schema.CONTEXT_MOVIE_ID: ints[schema.CONTEXT_MOVIE_ID][1][2],
        schema.CONTEXT_MOVIE_RATING: np.full(n, len(f_const) + 4 * L),
        schema.CONTEXT_MOVIE_YEAR: ints[schema.CONTEXT_MOVIE_YEAR][1][2],
        schema.LABEL_MOVIE_ID: ints[schema.LABEL_MOVIE_ID][1][2],
    }
    bodies = {k: len(_prefix(k)) + _vlen(f) + f for k, f in features.items()}
    total = sum(1 + _vlen(b) + b for b in bodies.values())
    record_len = 1 + _vlen(total) + total

    cols = _Columns(n)
    header = record_len.astype("<u8").view(np.uint8).reshape(n, 8)
    cols.raw(header)  # TFRecord: u64 length, masked crc32c of those 8 bytes
    uniq, inv = np.unique(record_len, return_inverse=True)
    hcrc = _masked(np.array([google_crc32c.value(int(x).to_bytes(8, "little")) for x in uniq]))
    cols.raw(_u32_bytes(hcrc[inv]))
    cols.const(b"\x0a")  # Example.features
    cols.varints(total)
    for key in sorted(features):
        cols.const(b"\x0a")  # Features.feature map entry: key, then Feature
        cols.varints(bodies[key])
        cols.const(_prefix(key))
        cols.varints(features[key])
        if key == schema.CONTEXT_MOVIE_GENRE:
            cols.const(b"\x0a")  # Feature.bytes_list; its values are pre-encoded pieces
            cols.varints(genre_len)
            cols.pieces(genre_ids, genre_table, genre_lens)
        elif key == schema.CONTEXT_MOVIE_RATING:
            cols.const(f_const)  # Feature.float_list, FloatList.value packed
            cols.raw(np.ascontiguousarray(ratings, dtype="<f4").view(np.uint8).reshape(n, 4 * L))
        else:
            values, (packed, inner, _) = ints[key]
            cols.const(b"\x1a")  # Feature.int64_list
            cols.varints(inner)
            cols.const(b"\x0a")  # Int64List.value, packed
            cols.varints(packed)
            cols.varints(values)
    cols.raw(np.zeros((n, 4), np.uint8))  # data crc, filled below
    out, framed = cols.join()
    ends = np.cumsum(framed) - 4
    starts = ends - record_len
    buf = out.tobytes()
    crcs = np.fromiter((google_crc32c.value(buf[a:b])
                        for a, b in zip(starts.tolist(), ends.tolist(), strict=True)),
                       dtype=np.uint64, count=n)
    out[ends[:, None] + np.arange(4)] = _u32_bytes(_masked(crcs))
    return out.tobytes()


# ---------------------------------------------------------------- the contract


def build_examples(r: dict, movie_ids: np.ndarray, movie_genres: list, movie_years: np.ndarray,
                   min_rating: float, min_timeline_length: int, L: int, G: int):
    """Whole-array version of the contract's steps 1-5 (split=last).

    Returns (users [E], is_train [E], ids [E, L], ratings [E, L], years [E, L],
    genre_ids [E, G] (row V-1 of the genre table = pad), labels [E], genre names [V-1]).
    """
    keep = r["rating"] >= min_rating
    row = np.searchsorted(movie_ids, r["movie"])
    row = np.minimum(row, len(movie_ids) - 1)
    keep &= movie_ids[row] == r["movie"]  # the job sets ratings of unknown movies aside
    user, movie, rating, ts, row = (r["user"][keep], r["movie"][keep], r["rating"][keep],
                                    r["timestamp"][keep], row[keep])
    order = np.lexsort((movie, ts, user))
    user, movie, rating, row = user[order], movie[order], rating[order], row[order]
    first = np.concatenate([[True], user[1:] != user[:-1]])
    starts = np.flatnonzero(first)
    lengths = np.diff(np.append(starts, len(user)))
    long_enough = np.repeat(lengths >= min_timeline_length, lengths)
    user, movie, rating, row = user[long_enough], movie[long_enough], rating[long_enough], row[long_enough]
    lengths = lengths[lengths >= min_timeline_length]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pos = np.arange(len(user)) - np.repeat(starts, lengths)  # position in the timeline
    label = np.flatnonzero(pos >= 1)  # one example per position >= 1
    n_ctx = np.minimum(pos[label], L)
    # Context rows, oldest first; padding points at an extra row R holding the pad values,
    # so each feature is one gather (int32 indices: half the memory traffic of int64).
    R = len(user)
    k = np.arange(L, dtype=np.int32)
    ctx = (label - n_ctx).astype(np.int32)[:, None] + k
    ctx = np.where(k < n_ctx[:, None], ctx, np.int32(R))
    ids = np.append(movie, schema.PAD_MOVIE_ID)[ctx]
    ratings = np.append(rating, np.float32(schema.PAD_RATING)).astype(np.float32)[ctx]
    years = np.append(movie_years[row], schema.PAD_YEAR)[ctx]
    # Genres: the context movies' genres flattened in order, first G kept, "UNK" padded.
    # Lay the genres of every kept rating out as one stream (gstart[j]: first genre of
    # rating j); an example's genres are then the stream from its first context rating on,
    # cut at its label: one [E, G] gather.
    names = sorted({g for gs in movie_genres for g in gs})
    index = {g: i for i, g in enumerate(names)}
    pad = len(names)
    flat = np.array([index[g] for gs in movie_genres for g in gs] or [pad])
    count = np.array([len(gs) for gs in movie_genres])
    first = np.cumsum(count) - count  # first genre of each movie in `flat`
    gcount = count[row]
    gstart = np.concatenate([[0], np.cumsum(gcount)])
    within = np.arange(gstart[-1]) - np.repeat(gstart[:-1], gcount)
    stream = flat[np.repeat(first[row], gcount) + within]
    slot = gstart[label - n_ctx][:, None] + np.arange(G)
    slot = np.where(slot < gstart[label][:, None], slot, len(stream))
    genre_ids = np.append(stream, pad)[slot]
    is_last = np.append(user[1:] != user[:-1], True)
    is_train = ~is_last[label]
    return user[label], is_train, ids, ratings, years, genre_ids, movie[label], names


def genre_pieces(names: list) -> tuple[np.ndarray, np.ndarray]:
    """[V, W] uint8 table of BytesList value pieces (pad "UNK" last) and their lengths."""
    pieces = [example_records.genre_piece(g) for g in names]
    pieces.append(b"\x0a" + example_records.varint(len(schema.PAD_GENRE)) + schema.PAD_GENRE)
    width = max(len(p) for p in pieces)
    table = np.zeros((len(pieces), width), np.uint8)
    for i, p in enumerate(pieces):
        table[i, : len(p)] = np.frombuffer(p, np.uint8)
    return table, np.array([len(p) for p in pieces])


def run(args) -> dict:
    t0 = time.perf_counter()
    r, fmt = read_ratings(args.input_dir)
    movie_ids, titles, movie_genres, movie_years = read_movies(args.input_dir, fmt)
    users, is_train, ids, ratings, years, genre_ids, labels, names = build_examples(
        r, movie_ids, movie_genres, movie_years, args.min_rating, args.min_timeline_length,
        args.max_context_length, args.max_context_movie_genre_length)
    table, lens = genre_pieces(names)
    shard = np.array([timelines.shard_of_user(int(u), args.num_shards) for u in np.unique(users)])
    shard_of = shard[np.searchsorted(np.unique(users), users)]
    counts = {}
    for split, mask in ((schema.TRAIN, is_train), (schema.TEST, ~is_train)):
        os.makedirs(os.path.join(args.output_dir, split), exist_ok=True)
        counts[split] = int(mask.sum())
        for s in range(args.num_shards):
            sel = np.flatnonzero(mask & (shard_of == s))  # already (user, position) ordered
            path = os.path.join(args.output_dir, split, schema.shard_name(s, args.num_shards))
            z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
            with open(path, "wb") as f:
                for c in range(0, len(sel), CHUNK):
                    i = sel[c : c + CHUNK]
                    f.write(z.compress(encode_records(ids[i], ratings[i], years[i],
                                                      genre_ids[i], labels[i], table, lens)))
                f.write(z.flush())
    # vocab.tsv: every movie, by count of train labels (descending), then id.
    vocab_count = np.bincount(np.searchsorted(movie_ids, labels[is_train]),
                              minlength=len(movie_ids))
    order = np.lexsort((movie_ids, -vocab_count))
    with open(os.path.join(args.output_dir, schema.VOCAB_FILE), "w", encoding="utf-8") as f:
        f.write("\t".join(schema.VOCAB_COLUMNS) + "\n")
        for m in order.tolist():
            f.write(schema.format_vocab_row(int(movie_ids[m]), int(vocab_count[m]),
                                            int(movie_years[m]), titles[m],
                                            "|".join(movie_genres[m])) + "\n")
    return {"examples": counts, "seconds": round(time.perf_counter() - t0, 2)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input_dir", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--min_rating", type=float, default=2.0)
    p.add_argument("--min_timeline_length", type=int, default=3)
    p.add_argument("--max_context_length", type=int, default=schema.DEFAULT_MAX_CONTEXT_LENGTH)
    p.add_argument("--max_context_movie_genre_length", type=int,
                   default=schema.DEFAULT_MAX_CONTEXT_MOVIE_GENRE_LENGTH)
    p.add_argument("--num_shards", type=int, default=8)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    print(run(args))


if __name__ == "__main__":
    main()
