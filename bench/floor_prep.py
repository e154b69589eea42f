"""The speed floor: the data contract in one process, vectorised with numpy and pyarrow.

    python -m bench.floor_prep --input_dir=DIR --output_dir=DIR [--num_shards=8 ...]

Same output contract as beam_jobs.pipeline for the default flags (split=last, ratings >=
min_rating, timelines ordered by (timestamp, movie_id), users with >= min_timeline_length
kept ratings, context of up to max_context_length previous movies, right-padded): GZIP
TFRecord shards under train/ and test/ (users assigned to shards by the contract's stable
hash) and vocab.tsv. No metadata.json, errors/ or _SUCCESS: this is a benchmark, not the job.

Every step is a whole-array numpy operation; even the tf.train.Example protobuf bytes and the
TFRecord framing are laid out with array arithmetic (each output byte is written once), so
the only per-record Python is one CRC call. That is what makes it a floor: an
implementation that does less per record is hard to imagine in Python.
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

from beam_jobs import schema, timelines

GZIP_LEVEL = 1  # Same as beam_jobs.tfrecord: level 1 is ~3x faster than 6, ~10% larger.
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


def _vlen(v: np.ndarray) -> np.ndarray:
    """Bytes of the base-128 varint of each (non-negative) value."""
    v = np.asarray(v, dtype=np.int64)
    n = np.ones(v.shape, dtype=np.int64)
    for k in range(1, 10):
        n += v >= (1 << (7 * k))
    return n


def _prefix(key: str) -> bytes:
    k = key.encode()
    return b"\x0a" + timelines.varint(len(k)) + k + b"\x12"


class _Layout:
    """Collects segments of every record, then writes each byte once into one buffer.

    A segment is (kind, payload, per-record length). Records are laid out back to back, each
    framed as a TFRecord: [length u64][crc u32][data][crc u32].
    """

    def __init__(self, n: int):
        self.n = n
        self.segments: list[tuple[str, object, np.ndarray]] = []

    def const(self, data: bytes):
        self.segments.append(("const", np.frombuffer(data, np.uint8), np.full(self.n, len(data))))

    def varint(self, values: np.ndarray):
        self.segments.append(("varint", values, _vlen(values)))

    def packed(self, values: np.ndarray):
        nb = _vlen(values)
        self.segments.append(("packed", (values, nb), nb.sum(axis=1)))

    def raw(self, data: np.ndarray):  # [n, k] uint8
        self.segments.append(("raw", data, np.full(self.n, data.shape[1])))

    def pieces(self, ids: np.ndarray, table: np.ndarray, lengths: np.ndarray):
        plen = lengths[ids]
        self.segments.append(("pieces", (ids, table, plen), plen.sum(axis=1)))

    def write(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(buffer, record data starts, record data ends), framing crcs still to fill."""
        lens = np.stack([s[2] for s in self.segments], axis=1)  # [n, S]
        data_len = lens.sum(axis=1)
        framed = data_len + 16
        rec_start = np.concatenate([[0], np.cumsum(framed)[:-1]])
        seg_start = rec_start[:, None] + 12 + np.cumsum(lens, axis=1) - lens
        out = np.zeros(int(framed.sum()), np.uint8)
        # TFRecord header: little-endian length and the masked crc of those 8 bytes.
        header = data_len.astype("<u8").view(np.uint8).reshape(self.n, 8)
        out[rec_start[:, None] + np.arange(8)] = header
        uniq, inv = np.unique(data_len, return_inverse=True)
        hcrc = np.array([_masked(google_crc32c.value(int(x).to_bytes(8, "little")))
                         for x in uniq], dtype="<u4")[inv]
        out[rec_start[:, None] + 8 + np.arange(4)] = hcrc.view(np.uint8).reshape(self.n, 4)
        for (kind, payload, length), start in zip(self.segments, seg_start.T, strict=True):
            if kind == "const":
                out[start[:, None] + np.arange(len(payload))] = payload
            elif kind == "raw":
                out[start[:, None] + np.arange(payload.shape[1])] = payload
            elif kind == "varint":
                _put_varints(out, start, payload, length)
            elif kind == "packed":
                values, nb = payload
                elem = start[:, None] + np.cumsum(nb, axis=1) - nb
                _put_varints(out, elem.ravel(), values.ravel(), nb.ravel())
            else:
                ids, table, plen = payload
                elem = start[:, None] + np.cumsum(plen, axis=1) - plen
                for j in range(table.shape[1]):
                    m = plen > j
                    out[elem[m] + j] = table[ids[m], j]
        return out, rec_start + 12, rec_start + 12 + data_len


def _put_varints(out, start, values, nb):
    values = np.asarray(values, dtype=np.int64)
    for j in range(int(nb.max()) if len(nb) else 0):
        m = nb > j
        byte = (values[m] >> (7 * j)) & 0x7F
        out[start[m] + j] = byte | np.where(nb[m] - 1 > j, 0x80, 0)


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


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
    lay = _Layout(n)

    def entry(key: str, feature_len: np.ndarray):
        body = len(_prefix(key)) + _vlen(feature_len) + feature_len
        lay.const(b"\x0a")
        lay.varint(body)
        lay.const(_prefix(key))
        lay.varint(feature_len)

    def int_lengths(values):
        p = _vlen(values).sum(axis=1)
        inner = 1 + _vlen(p) + p
        return p, inner, 1 + _vlen(inner) + inner

    # Lengths first (bottom up), so every prefix is known before any byte is written.
    b_len = genre_lens[genre_ids].sum(axis=1)
    g_feat = 1 + _vlen(b_len) + b_len
    ints = {k: int_lengths(v) for k, v in (("id", ids), ("year", years), ("label", labels[:, None]))}
    f_inner = 1 + _vlen(4 * L) + 4 * L
    f_feat = np.full(n, 1 + _vlen(np.array([f_inner]))[0] + f_inner)
    total = np.zeros(n, np.int64)
    for key, feat in ((schema.CONTEXT_MOVIE_GENRE, g_feat), (schema.CONTEXT_MOVIE_ID, ints["id"][2]),
                      (schema.CONTEXT_MOVIE_RATING, f_feat),
                      (schema.CONTEXT_MOVIE_YEAR, ints["year"][2]),
                      (schema.LABEL_MOVIE_ID, ints["label"][2])):
        body = len(_prefix(key)) + _vlen(feat) + feat
        total += 1 + _vlen(body) + body

    lay.const(b"\x0a")
    lay.varint(total)
    entry(schema.CONTEXT_MOVIE_GENRE, g_feat)
    lay.const(b"\x0a")  # Feature.bytes_list
    lay.varint(b_len)
    lay.pieces(genre_ids, genre_table, genre_lens)
    for key, name, values in ((schema.CONTEXT_MOVIE_ID, "id", ids),):
        _int_feature(lay, entry, key, ints[name], values)
    entry(schema.CONTEXT_MOVIE_RATING, f_feat)
    lay.const(b"\x12" + timelines.varint(int(f_inner)) + b"\x0a" + timelines.varint(4 * L))
    lay.raw(np.ascontiguousarray(ratings, dtype="<f4").view(np.uint8).reshape(n, 4 * L))
    _int_feature(lay, entry, schema.CONTEXT_MOVIE_YEAR, ints["year"], years)
    _int_feature(lay, entry, schema.LABEL_MOVIE_ID, ints["label"], labels[:, None])

    out, starts, ends = lay.write()
    buf = out.tobytes()
    crcs = np.array([_masked(google_crc32c.value(buf[a:b]))
                     for a, b in zip(starts.tolist(), ends.tolist(), strict=True)], dtype="<u4")
    out[ends[:, None] + np.arange(4)] = crcs.view(np.uint8).reshape(n, 4)
    return out.tobytes()


def _int_feature(lay, entry, key, lengths, values):
    p, inner, feat = lengths
    entry(key, feat)
    lay.const(b"\x1a")  # Feature.int64_list
    lay.varint(inner)
    lay.const(b"\x0a")  # Int64List.value, packed
    lay.varint(p)
    lay.packed(values)


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
    k = np.arange(L)
    ctx = label[:, None] - n_ctx[:, None] + k  # oldest first
    valid = k < n_ctx[:, None]
    ctx = np.where(valid, ctx, 0)
    ids = np.where(valid, movie[ctx], schema.PAD_MOVIE_ID)
    ratings = np.where(valid, rating[ctx], np.float32(schema.PAD_RATING)).astype(np.float32)
    years = np.where(valid, movie_years[row[ctx]], schema.PAD_YEAR)
    # Genres: the context movies' genres flattened in order, first G kept, "UNK" padded.
    names = sorted({g for gs in movie_genres for g in gs})
    index = {g: i for i, g in enumerate(names)}
    width = max((len(gs) for gs in movie_genres), default=0)
    pad = len(names)
    per_movie = np.full((len(movie_ids), max(width, 1)), pad)
    for m, gs in enumerate(movie_genres):
        per_movie[m, : len(gs)] = [index[g] for g in gs]
    count = np.array([len(gs) for gs in movie_genres])
    gcount = np.where(valid, count[row[ctx]], 0)  # [E, L]
    slot0 = np.cumsum(gcount, axis=1) - gcount
    genre_ids = np.full((len(label), G), pad)
    for j in range(width):
        for c in range(L):
            s = slot0[:, c] + j
            m = (j < gcount[:, c]) & (s < G)
            genre_ids[m, s[m]] = per_movie[row[ctx[m, c]], j]
    is_last = np.append(user[1:] != user[:-1], True)
    is_train = ~is_last[label]
    return user[label], is_train, ids, ratings, years, genre_ids, movie[label], names


def genre_pieces(names: list) -> tuple[np.ndarray, np.ndarray]:
    """[V, W] uint8 table of BytesList value pieces (pad "UNK" last) and their lengths."""
    pieces = [timelines.genre_piece(g) for g in names]
    pieces.append(b"\x0a" + timelines.varint(len(schema.PAD_GENRE)) + schema.PAD_GENRE)
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
