"""beam_jobs.example_records (the job's one Example encoder and TFRecord framer) and
beam_jobs.tfrecord (the shard writer), checked byte for byte against TensorFlow."""
import numpy as np
import pytest
import tensorflow as tf

from beam_jobs import example_records, movielens, schema, tfrecord, timelines
from tests.beam_jobs import util


def _tf_example(f):
    feature = {
        schema.CONTEXT_MOVIE_ID: tf.train.Feature(
            int64_list=tf.train.Int64List(value=f[schema.CONTEXT_MOVIE_ID])),
        schema.CONTEXT_MOVIE_RATING: tf.train.Feature(
            float_list=tf.train.FloatList(value=f[schema.CONTEXT_MOVIE_RATING])),
        schema.CONTEXT_MOVIE_YEAR: tf.train.Feature(
            int64_list=tf.train.Int64List(value=f[schema.CONTEXT_MOVIE_YEAR])),
        schema.CONTEXT_MOVIE_GENRE: tf.train.Feature(
            bytes_list=tf.train.BytesList(value=f[schema.CONTEXT_MOVIE_GENRE])),
        schema.LABEL_MOVIE_ID: tf.train.Feature(
            int64_list=tf.train.Int64List(value=f[schema.LABEL_MOVIE_ID])),
    }
    if schema.SEEN_MOVIE_ID in f:  # held-out examples
        feature[schema.SEEN_MOVIE_ID] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=f[schema.SEEN_MOVIE_ID]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _tf_written(tmp_path, records) -> bytes:
    """The bytes tf.io.TFRecordWriter writes for `records` (uncompressed)."""
    path = str(tmp_path / "tf.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for r in records:
            w.write(r)
    with open(path, "rb") as f:
        return f.read()


def _unframe(buf: bytes) -> list[bytes]:
    """The records of TFRecord-framed bytes (lengths only; the CRCs are compared whole)."""
    out, a = [], 0
    while a < len(buf):
        n = int.from_bytes(buf[a:a + 8], "little")
        out.append(buf[a + 12:a + 12 + n])
        a += n + 16
    return out


def _frame(records) -> bytes:
    """frame_records of whole records (one segment each)."""
    pool = np.frombuffer(b"".join(records), np.uint8)
    lens = np.array([len(r) for r in records], np.int64)
    return example_records.frame_records(pool, (np.cumsum(lens) - lens)[:, None],
                                         lens[:, None]).tobytes()


def test_varint_matches_protobuf():
    values = [0, 1, 127, 128, 300, 16383, 16384, 2**31 - 1, 2**35 - 1]
    for n in values:
        # Int64List: tag 0x0a, length, packed varints.
        assert tf.train.Int64List(value=[n]).SerializeToString()[2:] == example_records.varint(n)
    mat, lens = example_records.varint_matrix(np.array(values))
    for row, n, v in zip(mat, lens, values, strict=True):
        assert bytes(row[:n]) == example_records.varint(v)
    with pytest.raises(ValueError, match="2\\*\\*35"):
        example_records.varint_matrix(np.array([2**35]))


def test_framing_equals_tensorflow_writer(tmp_path):
    records = [b"", b"a", b"x" * 70000] + [bytes([i % 256]) * i for i in range(1, 300)]
    assert _frame(records) == _tf_written(tmp_path, records)
    assert example_records.frame_records(np.zeros(0, np.uint8), np.zeros((0, 1), np.int64),
                                         np.zeros((0, 1), np.int64)).size == 0


def _random_table(rng, size=300):
    ids = np.sort(rng.choice(np.arange(1, 400000), size=size, replace=False))
    names = ["Action", "Children's", "Sci-Fi", "Film-Noir", "Documentary", "(no genres listed)",
             "Café", "x" * 200]  # non-ASCII, and a piece whose length needs a 2-byte varint
    genres = ["|".join(rng.choice(names, size=rng.integers(0, 5), replace=False)) for _ in ids]
    titles = [f"M {i} ({rng.integers(1900, 2020)})" if rng.random() < 0.8 else f"M {i}"
              for i in ids]
    return movielens.MoviesTable(list(ids), titles, genres,
                                 [timelines.year_from_title(t) for t in titles])


@pytest.mark.parametrize("L,G,seen,early", [
    (10, 10, False, False), (3, 2, False, False), (1, 1, False, False), (20, 30, False, False),
    (10, 10, True, False), (1, 1, True, False), (3, 4, False, True), (10, 10, True, True)])
def test_encoder_equals_tensorflow_serialization_and_writer(tmp_path, L, G, seen, early):
    """seen: the examples also carry seen_movie_id (held-out examples), lists of 1 to
    ~6,000 ids up to 400,000: 1- to 3-byte varints, entry and Example lengths past any
    precomputed header table. early: contexts end before their label at random
    (--context_before_label_second), given to the encoder as ctx_end."""
    rng = np.random.default_rng(L * 100 + G + 7 * seen + 13 * early)
    table = _random_table(rng)
    rows_all, ratings_all, label_pos, ctx_start, ctx_end, want = [], [], [], [], [], []
    seen_ids, seen_offsets = [], [0]
    offset = 0
    for _user in range(25):
        n = int(rng.integers(2, 30))
        rows = rng.integers(0, len(table), size=n)
        ratings = rng.choice(np.arange(1, 11) / 2, size=n).astype(np.float32)
        ids = table.ids[rows].tolist()
        genres = [timelines.split_genres(table.genres[r]) for r in rows]
        years = table.years[rows].tolist()
        for i in range(1, n):
            end = int(rng.integers(1, i + 1)) if early else i
            f = util.example_features(ids, ratings.tolist(), years, genres, i, L, G, end)
            if seen:
                size = int(rng.choice([1, 2, 17, 300, 6000]))
                f[schema.SEEN_MOVIE_ID] = np.sort(rng.choice(
                    np.arange(1, 400000), size=size, replace=False)).tolist()
                seen_ids.extend(f[schema.SEEN_MOVIE_ID])
                seen_offsets.append(len(seen_ids))
            want.append(_tf_example(f).SerializeToString(deterministic=True))
            label_pos.append(offset + i)
            ctx_start.append(offset + max(0, end - L))
            ctx_end.append(offset + end)
        rows_all.append(rows)
        ratings_all.append(ratings)
        offset += n
    encoder = example_records.ExampleEncoder(
        np.concatenate(rows_all), np.concatenate(ratings_all), table.movie_bytes(), L, G)
    seen_ids, seen_offsets = np.array(seen_ids, np.int64), np.array(seen_offsets, np.int64)

    def batch_seen(a, b):  # as write_shard slices them
        if not seen:
            return None
        return (seen_ids[seen_offsets[a]:seen_offsets[b]],
                seen_offsets[a:b + 1] - seen_offsets[a])

    # As the job calls it: in batches, each batch framed.
    half = len(label_pos) // 2
    framed = b"".join(
        encoder.encode_framed(np.array(label_pos[a:b]), np.array(ctx_start[a:b]),
                              batch_seen(a, b),
                              np.array(ctx_end[a:b]) if early else None).tobytes()
        for a, b in ((0, half), (half, len(label_pos))))
    got = _unframe(framed)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"example {i}: {tf.train.Example.FromString(g)} != {w}"
    assert framed == _tf_written(tmp_path, want)


def test_encoder_refuses_an_empty_seen_list():
    table = _random_table(np.random.default_rng(0), size=5)
    encoder = example_records.ExampleEncoder(np.array([0, 1, 2]), np.ones(3, np.float32),
                                             table.movie_bytes(), 10, 10)
    with pytest.raises(ValueError, match="non-empty"):
        encoder.encode_framed(np.array([1, 2]), np.array([0, 0]),
                              (np.array([7], np.int64), np.array([0, 1, 1])))


def test_example_features_padding_and_genre_truncation():
    """The oracle itself, on a hand-checked case: timeline of 3 movies; the label at
    position 2 sees movies 0 and 1."""
    f = util.example_features(
        [11, 12, 13], [5.0, 3.5, 1.0], [1995, 0, 2001],
        [["A", "B", "C"], ["D", "E"], ["F"]], position=2,
        max_context_length=3, max_context_movie_genre_length=4)
    assert f == {
        schema.CONTEXT_MOVIE_ID: [11, 12, 0],
        schema.CONTEXT_MOVIE_RATING: [5.0, 3.5, 0.0],
        schema.CONTEXT_MOVIE_YEAR: [1995, 0, 0],
        schema.CONTEXT_MOVIE_GENRE: [b"A", b"B", b"C", b"D"],  # E cut by the limit of 4
        schema.LABEL_MOVIE_ID: [13],
    }


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_tfrecord_writer_round_trip_with_tf_data(tmp_path, compression):
    records = [b"", b"a", b"x" * 70000] + [bytes([i]) * i for i in range(50)]

    def write(path):
        writer = tfrecord.TFRecordWriter(path, compression)
        # In pieces, past the writer's flush size: blocks must stay in order.
        for part in (records[:2], records[2:], records * 80):
            writer.write_framed(_frame(part), len(part))
        writer.close()
        return writer.count

    path = str(tmp_path / schema.shard_name(0, 1, compression))
    assert write(path) == len(records) * 81
    ds = tf.data.TFRecordDataset(path, compression_type=schema.tf_compression_type(compression))
    assert [r.numpy() for r in ds] == records * 81
    # Same records, same bytes (gzip mtime is 0).
    again = str(tmp_path / "again")
    write(again)
    assert open(path, "rb").read() == open(again, "rb").read()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
