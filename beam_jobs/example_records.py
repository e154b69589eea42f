"""The bytes of the job's shards: tf.train.Example encoding and TFRecord framing (numpy).

One encoder, one framer, one masked CRC32-C, used by the job (beam_jobs/shards.py) and by
nothing else in it:

* `ExampleEncoder`: the examples of a whole shard (or a batch of it) as protobuf wire bytes,
  equal to `tf.train.Example(...).SerializeToString(deterministic=True)` of the features
  schema.features() describes (tests/beam_jobs/example_records_test.py checks that against
  TensorFlow, example by example).
* `frame_records`: TFRecord framing (u64 length, masked CRC of the length, data, masked CRC
  of the data), equal to what tf.io.TFRecordWriter writes (same test).
* `masked_crc32c` / `mask_crc`: TFRecord's masked CRC32-C.

No TensorFlow: it takes seconds to import on every worker, and building tf.train.Example
objects in Python is slow; bench/encode.py measures this encoder against
tf.train.Example + SerializeToString and prints the table (bench/README_prep.md quotes it).

How: every example is the concatenation of 15 byte segments, each either a header that
depends only on a payload length (precomputed tables), a slice of a per-shard byte stream
(varints of the ordered movie ids / years, float32 ratings, genre pieces: a context window
is one contiguous slice of each stream), or padding. One ragged gather over a single pool
builds thousands of examples at once; the framer adds a header and a CRC segment to each
record inside the same gather, so the records are copied once.

Wire layout of one example (deterministic serialization writes map entries sorted by key):

    Example    = 0x0a len Features
    Features   = entry(context_movie_genre) entry(context_movie_id) entry(context_movie_rating)
                 entry(context_movie_year) entry(label_movie_id) [entry(seen_movie_id)]
                 (the last only in held-out examples: validation/, test/)
    entry(k)   = 0x0a len (0x0a len k  0x12 len Feature)
    Feature    = 0x0a len BytesList(0x0a len value ...)        bytes
               | 0x12 len FloatList(0x0a len packed f32 LE)    float
               | 0x1a len Int64List(0x0a len packed varints)   int64
"""
from __future__ import annotations

import functools
import threading

import google_crc32c
import numpy as np

from beam_jobs import schema, timelines

# ---------------------------------------------------------------- TFRecord: CRC and framing

_CRC_MASK_DELTA = 0xA282EAD8


def mask_crc(crc):
    """TFRecord's mask of a CRC32-C value: rotate right by 15 bits, add 0xa282ead8 (mod
    2**32). Takes a Python int or a numpy uint64 array (values < 2**32)."""
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32-C of `data`."""
    return mask_crc(google_crc32c.value(data))


_GATHER_BLOCK = 1 << 21  # output bytes per index array: bounds memory to ~16 MB of indices


def ragged_gather(pool: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """concat(pool[s:s+l] for s, l in zip(starts, lens)) without a per-segment Python loop.

    The index of output byte k is built as a running sum of steps: +1 inside a segment and
    a jump at each segment start (one cumsum instead of repeat + arange + add). Long outputs
    are built in blocks of segments so the index arrays stay small.
    """
    lens = np.asarray(lens, dtype=np.int64)
    keep = lens > 0
    starts, lens = np.asarray(starts, np.int64)[keep], lens[keep]
    ends = np.cumsum(lens)
    total = int(ends[-1]) if len(ends) else 0
    if total == 0:
        return np.zeros(0, dtype=pool.dtype)
    if total <= _GATHER_BLOCK:
        return _gather(pool, starts, lens, total)
    cuts = np.searchsorted(ends, np.arange(_GATHER_BLOCK, total, _GATHER_BLOCK), side="right")
    bounds = [0, *np.unique(cuts).tolist(), len(lens)]
    out = np.empty(total, dtype=pool.dtype)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if a == b:
            continue
        lo = int(ends[a - 1]) if a else 0
        out[lo:int(ends[b - 1])] = _gather(pool, starts[a:b], lens[a:b], int(ends[b - 1]) - lo)
    return out


_scratch = threading.local()


def _gather(pool, starts, lens, total):
    # A reused index buffer: a fresh 16 MB array per call cost more in page faults than
    # the gather itself.
    buf = getattr(_scratch, "idx", None)
    if buf is None or len(buf) < total:
        buf = _scratch.idx = np.empty(max(total, _GATHER_BLOCK), dtype=np.int64)
    idx = buf[:total]
    idx.fill(1)
    out_starts = np.cumsum(lens) - lens
    idx[0] = starts[0]
    idx[out_starts[1:]] = starts[1:] - (starts[:-1] + lens[:-1]) + 1
    np.cumsum(idx, out=idx)
    return pool[idx]


def frame_records(pool: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """TFRecord framing of records given as byte segments of `pool`.

    Args:
      pool: uint8 bytes the segments point into.
      starts, lens: [E, k] int64: record e is the concatenation of
        pool[starts[e, j]:starts[e, j] + lens[e, j]] for j = 0..k-1.
    Returns:
      [T] uint8: the E records back to back, each as tf.io.TFRecordWriter frames it: u64
      length (little-endian), masked CRC32-C of those 8 bytes, data, masked CRC32-C of the
      data (CRCs little-endian u32).
    """
    starts, lens = np.asarray(starts, np.int64), np.asarray(lens, np.int64)
    lengths = lens.sum(axis=1)
    E = len(lengths)
    if E == 0:
        return np.zeros(0, np.uint8)
    header = np.zeros((E, 12), dtype=np.uint8)
    header[:, :8] = lengths.astype("<u8").view(np.uint8).reshape(E, 8)
    # Few distinct lengths: one CRC call each.
    uniq, inverse = np.unique(lengths, return_inverse=True)
    len_crc = np.array([masked_crc32c(int(n).to_bytes(8, "little")) for n in uniq], "<u4")
    header[:, 8:] = len_crc[inverse].view(np.uint8).reshape(E, 4)
    # The headers and a zeroed CRC slot become two more segments of each record; the data
    # CRCs are filled in after the gather.
    pool = np.concatenate([pool, header.ravel(), np.zeros(4, np.uint8)])
    hdr_base, zero4 = len(pool) - 12 * E - 4, len(pool) - 4
    starts = np.concatenate([(hdr_base + 12 * np.arange(E))[:, None], starts,
                             np.full((E, 1), zero4)], axis=1)
    lens = np.concatenate([np.full((E, 1), 12), lens, np.full((E, 1), 4)], axis=1)
    out = ragged_gather(pool, starts.ravel(), lens.ravel())
    data_start = np.cumsum(lengths + 16) - (lengths + 16) + 12
    raw = out.tobytes()
    value = google_crc32c.value
    crcs = np.array([value(raw[a:a + n]) for a, n in
                     zip(data_start.tolist(), lengths.tolist(), strict=True)], np.uint64)
    masked = mask_crc(crcs).astype("<u4")
    out[(data_start + lengths)[:, None] + np.arange(4)] = masked.view(np.uint8).reshape(E, 4)
    return out


# ---------------------------------------------------------------- protobuf wire pieces


def _varint_slow(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 two's complement, as protobuf does
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


_VARINTS = [_varint_slow(i) for i in range(1 << 14)]


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative (or int64 negative) integer."""
    return _VARINTS[n] if 0 <= n < (1 << 14) else _varint_slow(n)


_MAXV = 5  # bytes of the largest varint stored in a stream (ids, years < 2**35)


def varint_matrix(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([n, 5] uint8 varint bytes, left-aligned; [n] lengths) of values in [0, 2**35)."""
    x = np.asarray(x, dtype=np.int64)
    lens = np.ones(x.shape, dtype=np.int64)
    for k in range(1, 9):
        lens += x >= (1 << (7 * k))
    if len(x) and (lens.max() > _MAXV or x.min() < 0):
        raise ValueError("values must be in [0, 2**35) for the encoder")
    k = np.arange(_MAXV)
    groups = (x[:, None] >> (7 * k)) & 0x7F
    more = k[None, :] < (lens[:, None] - 1)
    return (groups | (more * 0x80)).astype(np.uint8), lens


def genre_piece(genre: str) -> bytes:
    """One BytesList value on the wire (field 1, length-delimited)."""
    g = genre.encode()
    return b"\x0a" + varint(len(g)) + g


def _entry_prefix(key: str) -> bytes:
    # Features.feature map entry: field 1 = key (string), field 2 = Feature (message).
    k = key.encode()
    return b"\x0a" + varint(len(k)) + k + b"\x12"


_GENRE = _entry_prefix(schema.CONTEXT_MOVIE_GENRE)
_ID = _entry_prefix(schema.CONTEXT_MOVIE_ID)
_RATING = _entry_prefix(schema.CONTEXT_MOVIE_RATING)
_YEARS = _entry_prefix(schema.CONTEXT_MOVIE_YEAR)
_LABEL = _entry_prefix(schema.LABEL_MOVIE_ID)
_SEEN = _entry_prefix(schema.SEEN_MOVIE_ID)
_PAD_GENRE_PIECE = genre_piece(schema.PAD_GENRE.decode())


def _header_table(fn, size: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Headers fn(n) for n in [0, size): (concatenated bytes, [size] offsets, [size] lens)."""
    parts = [fn(n) for n in range(size)]
    lens = np.array([len(p) for p in parts], dtype=np.int64)
    return b"".join(parts), np.cumsum(lens) - lens, lens


# Feature's field of each packed list: float_list (2), int64_list (3).
_FLOAT_LIST, _INT64_LIST = b"\x12", b"\x1a"


def _packed_header(prefix: bytes, list_tag: bytes):
    """fn(n): the entry header of a packed FloatList/Int64List feature (map entry `prefix`,
    Feature field `list_tag`) whose packed values take n bytes."""
    def fn(packed_len: int) -> bytes:
        inner = 1 + len(varint(packed_len)) + packed_len
        feat = 1 + len(varint(inner)) + inner
        body = len(prefix) + len(varint(feat)) + feat
        return (b"\x0a" + varint(body) + prefix + varint(feat) + list_tag + varint(inner)
                + b"\x0a" + varint(packed_len))
    return fn


def _genre_header(pieces_len: int) -> bytes:
    feat = 1 + len(varint(pieces_len)) + pieces_len
    body = len(_GENRE) + len(varint(feat)) + feat
    return b"\x0a" + varint(body) + _GENRE + varint(feat) + b"\x0a" + varint(pieces_len)


@functools.lru_cache(maxsize=8)
def _headers(L: int, G: int, max_piece: int) -> tuple:
    """The header tables of an encoder (indexed by payload length), the constant regions of
    its pool as uint8 and their offsets: the same for every shard of a job, so built once
    per process (rebuilding them took a quarter of a 64-shard run on a small input)."""
    id_hdr = _header_table(_packed_header(_ID, _INT64_LIST), _MAXV * L + 1)
    yr_hdr = _header_table(_packed_header(_YEARS, _INT64_LIST), _MAXV * L + 1)
    lb_hdr = _header_table(_packed_header(_LABEL, _INT64_LIST), _MAXV + 1)
    g_hdr = _header_table(_genre_header, G * max_piece + 1)
    rt_hdr = _packed_header(_RATING, _FLOAT_LIST)(4 * L)
    # The largest possible features length bounds the example-header table.
    max_features = (sum(len(h[0]) for h in (id_hdr, yr_hdr, lb_hdr, g_hdr))
                    + 2 * _MAXV * L + _MAXV + len(g_hdr[1]) + len(rt_hdr) + 4 * L)
    ex_hdr = _header_table(lambda n: b"\x0a" + varint(n), max_features + 1)
    regions = [ex_hdr[0], g_hdr[0], id_hdr[0], rt_hdr, yr_hdr[0], lb_hdr[0], b"\x00" * (4 * L),
               _PAD_GENRE_PIECE * G]
    base = np.cumsum([0] + [len(r) for r in regions])
    pool = np.frombuffer(b"".join(regions), np.uint8)
    return id_hdr, yr_hdr, lb_hdr, g_hdr, rt_hdr, ex_hdr, pool, base


# ---------------------------------------------------------------- the encoder


class MovieBytes:
    """Per-movie wire pieces of a movielens.MoviesTable as arrays (built once per worker).

    id_v, year_v: [m, 5] uint8 varints with lengths id_len, year_len ([m]).
    genre_pool: uint8, every movie's genre pieces back to back; movie r's pieces start at
    genre_off[r] (bytes) and there are genre_count[r] of them, whose byte lengths are
    piece_len[piece_start[r]:piece_start[r] + genre_count[r]].
    """

    def __init__(self, table):
        self.id_v, self.id_len = varint_matrix(table.ids)
        self.year_v, self.year_len = varint_matrix(table.years)
        pieces = [[genre_piece(g) for g in timelines.split_genres(gs)] for gs in table.genres]
        self.genre_count = np.array([len(p) for p in pieces], dtype=np.int64)
        flat = [p for ps in pieces for p in ps]
        self.piece_len = np.array([len(p) for p in flat], dtype=np.int64)
        self.piece_start = np.cumsum(self.genre_count) - self.genre_count
        self.genre_len = np.array([sum(len(p) for p in ps) for ps in pieces], dtype=np.int64)
        self.genre_off = np.cumsum(self.genre_len) - self.genre_len
        self.genre_pool = np.frombuffer(b"".join(flat), dtype=np.uint8)
        self.max_piece = int(self.piece_len.max()) if len(flat) else 0


class ExampleEncoder:
    """Encodes and frames the examples over the ordered ratings of one or more timelines.

    Args:
      rows: [N] MoviesTable rows of the ordered ratings (each timeline contiguous, oldest
        first).
      ratings: [N] float32, same order.
      movies: the table's MovieBytes.
      max_context_length, max_context_movie_genre_length: L and G of schema.features().
    """

    def __init__(self, rows: np.ndarray, ratings: np.ndarray, movies: MovieBytes,
                 max_context_length: int, max_context_movie_genre_length: int):
        L, G = max_context_length, max_context_movie_genre_length
        self.L, self.G = L, G
        # Per-shard streams: id varints, year varints, float32 ratings, genre pieces.
        self.id_len = movies.id_len[rows]
        id_stream = movies.id_v[rows][np.arange(_MAXV)[None, :] < self.id_len[:, None]]
        self.id_off = np.r_[0, np.cumsum(self.id_len)]
        yr_len = movies.year_len[rows]
        yr_stream = movies.year_v[rows][np.arange(_MAXV)[None, :] < yr_len[:, None]]
        self.yr_off = np.r_[0, np.cumsum(yr_len)]
        rt_stream = np.ascontiguousarray(ratings, dtype="<f4").view(np.uint8)
        g_stream = ragged_gather(movies.genre_pool, movies.genre_off[rows],
                                 movies.genre_len[rows])
        pcount = movies.genre_count[rows]
        self.gpos = np.r_[0, np.cumsum(pcount)]
        plen = ragged_gather(movies.piece_len, movies.piece_start[rows], pcount)
        self.pbyte = np.r_[0, np.cumsum(plen)]
        self.unk_piece = _PAD_GENRE_PIECE
        (self.id_hdr, self.yr_hdr, self.lb_hdr, self.g_hdr, self.rt_hdr, self.ex_hdr,
         regions, base) = _headers(L, G, max(movies.max_piece, len(self.unk_piece)))
        streams = [g_stream, id_stream, rt_stream, yr_stream]
        sbase = base[-1] + np.cumsum([0] + [len(x) for x in streams])
        self.pool = np.concatenate([regions] + streams)
        self.base = base[:8]
        self.sbase = sbase[:4]

    def encode_framed(self, label_pos: np.ndarray, ctx_start: np.ndarray,
                      seen: tuple[np.ndarray, np.ndarray] | None = None,
                      ctx_end: np.ndarray | None = None) -> np.ndarray:
        """The examples as consecutive TFRecords ([T] uint8, frame_records' layout).

        Args:
          label_pos: [E] index (into rows) of each example's label.
          ctx_start: [E] index of its first context movie (same timeline, >= ctx_end - L).
          seen: None (train examples: the features of schema.features()), or (ids [S],
            offsets [E+1]): example e also carries schema.SEEN_MOVIE_ID =
            ids[offsets[e]:offsets[e+1]] (non-empty, in the order given).
          ctx_end: [E] one past its last context movie (ctx_start < ctx_end <= label_pos);
            None: label_pos, the context right before the label.
        """
        starts, lens = self._segments(label_pos, ctx_start,
                                      label_pos if ctx_end is None else ctx_end)
        if seen is None:
            return frame_records(self.pool, starts, lens)
        return frame_records(*_with_seen(self.pool, starts, lens, *seen))

    def _segments(self, label_pos: np.ndarray, ctx_start: np.ndarray, ctx_end: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
        """[E, 15] pool offsets and lengths of the byte segments of each example: the
        context rows [s, e), the label row i."""
        L, G = self.L, self.G
        i, s = np.asarray(label_pos, np.int64), np.asarray(ctx_start, np.int64)
        e = np.asarray(ctx_end, np.int64)
        E = len(i)
        pad = L - (e - s)
        p0 = self.gpos[s]
        p1 = np.minimum(self.gpos[e], p0 + G)
        g_from, g_len = self.pbyte[p0], self.pbyte[p1] - self.pbyte[p0]
        unk = G - (p1 - p0)
        id_payload = self.id_off[e] - self.id_off[s] + pad
        yr_payload = self.yr_off[e] - self.yr_off[s] + pad
        g_payload = g_len + unk * len(self.unk_piece)
        lb_payload = self.id_len[i]
        id_hdr, yr_hdr, lb_hdr, g_hdr, ex_hdr = (
            self.id_hdr, self.yr_hdr, self.lb_hdr, self.g_hdr, self.ex_hdr)
        features_len = (id_hdr[2][id_payload] + id_payload + yr_hdr[2][yr_payload] + yr_payload
                        + g_hdr[2][g_payload] + g_payload + lb_hdr[2][lb_payload] + lb_payload
                        + len(self.rt_hdr) + 4 * L)
        B_EX, B_G, B_ID, B_RT, B_YR, B_LB, B_ZERO, B_UNK = self.base
        S_G, S_ID, S_RT, S_YR = self.sbase
        z = np.zeros(E, np.int64)
        starts = np.stack([
            B_EX + ex_hdr[1][features_len],
            B_G + g_hdr[1][g_payload], S_G + g_from, z + B_UNK,
            B_ID + id_hdr[1][id_payload], S_ID + self.id_off[s], z + B_ZERO,
            z + B_RT, S_RT + 4 * s, z + B_ZERO,
            B_YR + yr_hdr[1][yr_payload], S_YR + self.yr_off[s], z + B_ZERO,
            B_LB + lb_hdr[1][lb_payload], S_ID + self.id_off[i],
        ], axis=1)
        lens = np.stack([
            ex_hdr[2][features_len],
            g_hdr[2][g_payload], g_len, unk * len(self.unk_piece),
            id_hdr[2][id_payload], self.id_off[e] - self.id_off[s], pad,
            z + len(self.rt_hdr), 4 * (e - s), 4 * pad,
            yr_hdr[2][yr_payload], self.yr_off[e] - self.yr_off[s], pad,
            lb_hdr[2][lb_payload], lb_payload,
        ], axis=1)
        return starts, lens


def _headers_for(fn, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Headers fn(n) of every n in `lengths`, built once per distinct n: (uint8 pool,
    [E] offsets into it, [E] lengths)."""
    uniq, inverse = np.unique(lengths, return_inverse=True)
    parts = [fn(int(n)) for n in uniq]
    plen = np.array([len(p) for p in parts], np.int64)
    pool = np.frombuffer(b"".join(parts), np.uint8)
    return pool, (np.cumsum(plen) - plen)[inverse], plen[inverse]


def _with_seen(pool: np.ndarray, starts: np.ndarray, lens: np.ndarray, ids: np.ndarray,
               offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adds a seen_movie_id entry to examples given as _segments (starts, lens [E, 15]).

    The entry's key sorts after label_movie_id, so under deterministic serialization it
    is the last entry: two segments (its header, its packed varints) appended to each
    example, and the Example header (segment 0) rebuilt for the longer body. Seen lists
    are as long as a user's history, beyond any precomputed header table: headers are
    built per distinct length instead.
    """
    offsets = np.asarray(offsets, np.int64)
    if len(offsets) != len(starts) + 1 or (np.diff(offsets) < 1).any():
        raise ValueError("seen: one non-empty list of movie ids per example")
    v, vlen = varint_matrix(ids)
    stream = v[np.arange(_MAXV)[None, :] < vlen[:, None]]
    voff = np.r_[0, np.cumsum(vlen)]
    payload = voff[offsets[1:]] - voff[offsets[:-1]]
    seen_hdr, seen_hdr_start, seen_hdr_len = _headers_for(
        _packed_header(_SEEN, _INT64_LIST), payload)
    features_len = lens[:, 1:].sum(axis=1) + seen_hdr_len + payload
    ex_hdr, ex_hdr_start, ex_hdr_len = _headers_for(lambda n: b"\x0a" + varint(n),
                                                    features_len)
    b_stream = len(pool)
    b_seen_hdr = b_stream + len(stream)
    b_ex_hdr = b_seen_hdr + len(seen_hdr)
    pool = np.concatenate([pool, stream, seen_hdr, ex_hdr])
    starts = np.concatenate([(b_ex_hdr + ex_hdr_start)[:, None], starts[:, 1:],
                             (b_seen_hdr + seen_hdr_start)[:, None],
                             (b_stream + voff[offsets[:-1]])[:, None]], axis=1)
    lens = np.concatenate([ex_hdr_len[:, None], lens[:, 1:], seen_hdr_len[:, None],
                           payload[:, None]], axis=1)
    return pool, starts, lens


# ---------------------------------------------------------------- users/ records


def _int64_entry(key: str, values: list[int]) -> bytes:
    """One Features.feature map entry holding an Int64List (packed varints)."""
    packed = b"".join(varint(v) for v in values)
    int64_list = b"\x0a" + varint(len(packed)) + packed if packed else b""
    feature = b"\x1a" + varint(len(int64_list)) + int64_list
    k = key.encode()
    entry = b"\x0a" + varint(len(k)) + k + b"\x12" + varint(len(feature)) + feature
    return b"\x0a" + varint(len(entry)) + entry


def encode_user_records(user_ids: np.ndarray, contexts: np.ndarray,
                        seen: list[np.ndarray]) -> np.ndarray:
    """users/ records (schema.USER_FEATURES), TFRecord-framed, back to back.

    Args:
      user_ids: [U] user ids.
      contexts: [U, L] context movie ids, right-padded.
      seen: U arrays of seen movie ids (ascending, unique, non-empty).
    Returns:
      [T] uint8, equal to tf.io.TFRecordWriter writing
      tf.train.Example(...).SerializeToString(deterministic=True) of each user (checked
      against TensorFlow in tests/beam_jobs/recommend_all_test.py).

    One Python loop over users (not over ratings): ~10 us a user, ~2 s for ML-25M's
    162,541 users spread over the shards; the train/test encoder's ragged gather is not
    worth its complexity here.
    """
    records = [
        b"\x0a" + varint(len(body)) + body
        for body in (
            _int64_entry(schema.CONTEXT_MOVIE_ID, ctx)
            + _int64_entry(schema.SEEN_MOVIE_ID, s)
            + _int64_entry(schema.USER_ID, [u])
            for u, ctx, s in zip(user_ids.tolist(), contexts.tolist(),
                                 (x.tolist() for x in seen), strict=True))]
    if not records:
        return np.zeros(0, np.uint8)
    lens = np.array([len(r) for r in records], np.int64)
    pool = np.frombuffer(b"".join(records), np.uint8)
    return frame_records(pool, (np.cumsum(lens) - lens)[:, None], lens[:, None])
