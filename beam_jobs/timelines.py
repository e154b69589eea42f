"""Pure functions: timeline order, context windows, split assignment, Example encoding.

No Beam, no TensorFlow: the pipeline calls these per shard, tests call them directly.
Examples are serialized by hand (protobuf wire format) because building tf.train.Example
objects in Python runs at 16k-95k examples/s and TensorFlow takes seconds to import on
every worker; tests/beam_jobs/timelines_test.py proves the bytes equal
tf.train.Example(...).SerializeToString(deterministic=True).
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import struct
from collections.abc import Iterator, Sequence

import numpy as np

from beam_jobs import schema

_YEAR = re.compile(r"\((\d{4})\)\s*$")


def year_from_title(title: str) -> int:
    """The release year in a MovieLens title like "Toy Story (1995)"; 0 if there is none."""
    m = _YEAR.search(title)
    return int(m.group(1)) if m else schema.PAD_YEAR


def split_genres(genres: str) -> list[str]:
    """"Animation|Children's" -> ["Animation", "Children's"]; "" -> []."""
    return [g for g in genres.split("|") if g]


def stable_u64(*parts: object) -> int:
    """A 64-bit hash of the parts' text that is the same in every process and on every
    machine (Python's hash() is salted per process)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def shard_of_user(user_id: int, num_shards: int) -> int:
    """The shard that holds all examples of `user_id` (both splits)."""
    return stable_u64("shard", user_id) % num_shards


def order_timeline(movie_ids: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Indices that order one user's ratings by (timestamp, movie_id).

    The movie_id tie-break is required: ML-1M has many equal timestamps and a
    distributed shuffle keeps no input order.
    """
    return np.lexsort((movie_ids, timestamps))


def context_window(position: int, max_context_length: int) -> tuple[int, int]:
    """[start, end) of the context of the example labelled by `position` (>= 1)."""
    return max(0, position - max_context_length), position


def is_train(user_id: int, position: int, num_positions: int, split: str,
             train_fraction: float, seed: int) -> bool:
    """Split of the example labelled by timeline `position` (1..num_positions-1 valid).

    "last": the user's last example (position num_positions-1) is test.
    "random": stable_u64(user, position, seed) / 2**64 < train_fraction is train.
    """
    if split == "last":
        return position != num_positions - 1
    if split == "random":
        return stable_u64("split", user_id, position, seed) < train_fraction * 2.0**64
    raise ValueError(f"split must be 'last' or 'random', got {split!r}")


# ---------------------------------------------------------------- readable form (tests, docs)


def example_features(
    movie_ids: Sequence[int],
    ratings: Sequence[float],
    years: Sequence[int],
    genres: Sequence[Sequence[str]],
    position: int,
    max_context_length: int,
    max_context_movie_genre_length: int,
) -> dict[str, list]:
    """Features of one example as Python lists (the slow, obvious definition).

    Args:
      movie_ids, ratings, years, genres: one user's timeline, already ordered; genres[j] is
        the list of genres of movie j.
      position: index of the label movie (>= 1).
    Returns:
      {feature name: list} with the lengths of schema.features().
    """
    start, end = context_window(position, max_context_length)
    pad = max_context_length - (end - start)
    flat = [g.encode() for j in range(start, end) for g in genres[j]]
    flat = flat[:max_context_movie_genre_length]
    return {
        schema.CONTEXT_MOVIE_ID: list(movie_ids[start:end]) + [schema.PAD_MOVIE_ID] * pad,
        schema.CONTEXT_MOVIE_RATING: list(ratings[start:end]) + [schema.PAD_RATING] * pad,
        schema.CONTEXT_MOVIE_YEAR: list(years[start:end]) + [schema.PAD_YEAR] * pad,
        schema.CONTEXT_MOVIE_GENRE: flat
        + [schema.PAD_GENRE] * (max_context_movie_genre_length - len(flat)),
        schema.LABEL_MOVIE_ID: [movie_ids[position]],
    }


# ---------------------------------------------------------------- fast wire-format encoding

_VARINTS: list[bytes] = []


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


def _entry_prefix(key: str) -> bytes:
    # Features.feature map entry: field 1 = key (string), field 2 = Feature (message).
    k = key.encode()
    return b"\x0a" + varint(len(k)) + k + b"\x12"


# Deterministic serialization writes map entries sorted by key.
_GENRE = _entry_prefix(schema.CONTEXT_MOVIE_GENRE)
_ID = _entry_prefix(schema.CONTEXT_MOVIE_ID)
_RATING = _entry_prefix(schema.CONTEXT_MOVIE_RATING)
_YEARS = _entry_prefix(schema.CONTEXT_MOVIE_YEAR)
_LABEL = _entry_prefix(schema.LABEL_MOVIE_ID)
_PAD_GENRE_PIECE = b"\x0a" + varint(len(schema.PAD_GENRE)) + schema.PAD_GENRE


def _entry(prefix: bytes, feature: bytes) -> bytes:
    e = prefix + varint(len(feature)) + feature
    return b"\x0a" + varint(len(e)) + e


def _int64_feature(packed: bytes) -> bytes:
    # Feature.int64_list (field 3) -> Int64List.value (field 1, packed varints).
    inner = b"\x0a" + varint(len(packed)) + packed
    return b"\x1a" + varint(len(inner)) + inner


def _float_feature(packed: bytes) -> bytes:
    # Feature.float_list (field 2) -> FloatList.value (field 1, packed little-endian f32).
    inner = b"\x0a" + varint(len(packed)) + packed
    return b"\x12" + varint(len(inner)) + inner


def _bytes_feature(pieces: bytes) -> bytes:
    # Feature.bytes_list (field 1) -> BytesList.value (field 1, one piece per value).
    return b"\x0a" + varint(len(pieces)) + pieces


def genre_piece(genre: str) -> bytes:
    """One BytesList value on the wire."""
    g = genre.encode()
    return b"\x0a" + varint(len(g)) + g


@dataclasses.dataclass(frozen=True)
class EncodedMovie:
    """Per-movie wire pieces, computed once per worker.

    id_varint: varint(movie_id). year_varint: varint(year). genre_pieces: one BytesList
    value per genre.
    """

    id_varint: bytes
    year_varint: bytes
    genre_pieces: tuple[bytes, ...]


def encode_movie(movie_id: int, year: int, genres: Sequence[str]) -> EncodedMovie:
    return EncodedMovie(varint(movie_id), varint(year), tuple(genre_piece(g) for g in genres))


def encode_timeline(
    user_id: int,
    movies: Sequence[EncodedMovie],
    movie_ids: np.ndarray,
    ratings: np.ndarray,
    max_context_length: int,
    max_context_movie_genre_length: int,
    split: str = "last",
    train_fraction: float = 0.9,
    seed: int = 0,
) -> Iterator[tuple[bool, int, bytes]]:
    """Serialized examples of one ordered timeline, oldest label first.

    Args:
      user_id: for the split hash.
      movies: movies[j] = encode_movie(...) of the j-th rated movie.
      movie_ids: [n] int64 label ids (same order).
      ratings: [n] float32 ratings (same order).
    Yields:
      (is_train, label_movie_id, tf.train.Example bytes) for positions 1..n-1, equal to
      example_features(...) serialized with deterministic=True.
    """
    n = len(movies)
    L, G = max_context_length, max_context_movie_genre_length
    rating_bytes = np.asarray(ratings, dtype="<f4").tobytes()
    ids = [m.id_varint for m in movies]
    years = [m.year_varint for m in movies]
    # Flattened genre pieces of the whole timeline; movie j's pieces start at gstart[j].
    flat: list[bytes] = []
    gstart = [0] * (n + 1)
    for j, m in enumerate(movies):
        flat.extend(m.genre_pieces)
        gstart[j + 1] = len(flat)
    zeros = b"\x00" * L
    zero_floats = b"\x00" * (4 * L)
    for i in range(1, n):
        s = i - L if i > L else 0
        pad = L - (i - s)
        g0 = gstart[s]
        g1 = min(gstart[i], g0 + G)
        genres = b"".join(flat[g0:g1]) + _PAD_GENRE_PIECE * (G - (g1 - g0))
        label = int(movie_ids[i])
        features = b"".join((
            _entry(_GENRE, _bytes_feature(genres)),
            _entry(_ID, _int64_feature(b"".join(ids[s:i]) + zeros[:pad])),
            _entry(_RATING, _float_feature(rating_bytes[4 * s:4 * i] + zero_floats[:4 * pad])),
            _entry(_YEARS, _int64_feature(b"".join(years[s:i]) + zeros[:pad])),
            _entry(_LABEL, _int64_feature(ids[i])),
        ))
        train = is_train(user_id, i, n, split, train_fraction, seed)
        yield train, label, b"\x0a" + varint(len(features)) + features


def float32_bits(x: float) -> float:
    """x rounded to float32, as the Example stores it (for comparisons in tests)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]
