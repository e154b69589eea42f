"""Example encoding speed: the job's encoder against tf.train.Example, on the same examples.

    python -m bench.encode [--num_users=2000 --ratings_per_user=165 --repeats=3]

Both rows turn the same ordered timelines (synthetic movies, ML-1M-like genres and
timeline lengths) into serialized tf.train.Example bytes of the data contract (default
context 10, genres 10):

  example_records   beam_jobs.example_records.ExampleEncoder.encode_framed, as
                    beam_jobs/shards.py calls it (one encoder per timeline set, batches of
                    shards.BATCH_EXAMPLES), TFRecord framing and CRCs included
  tf.train.Example  the features as Python lists -> tf.train.Example(...) ->
                    SerializeToString(deterministic=True), one example at a time (the
                    reference generator's way); framing NOT included (it only adds)

Time is the median wall time of --repeats runs in this process (CPU-bound, one thread),
after one warm-up run; the bytes of both rows are compared (they must be equal) before
anything is printed. This is what a claim about the encoder's speed must cite.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from beam_jobs import example_records, movielens, schema, shards, synthetic, timelines


def make_timelines(num_users: int, ratings_per_user: float, seed: int):
    """(MoviesTable, rows [N], ratings [N] float32, label_pos [E], ctx_start [E]) for
    random timelines over synthetic.make_movies' default table."""
    movies = synthetic.make_movies(synthetic.Config(seed=seed))
    table = movielens.MoviesTable(list(movies.ids), movies.titles, movies.genres,
                                  [timelines.year_from_title(t) for t in movies.titles])
    rng = np.random.default_rng(seed)
    lengths = np.maximum(3, rng.lognormal(np.log(ratings_per_user * 0.6), 0.9, num_users)
                         .astype(np.int64))
    rows = rng.integers(0, len(table), size=int(lengths.sum()))
    ratings = rng.integers(1, 6, size=len(rows)).astype(np.float32)
    user = np.repeat(np.arange(num_users), lengths)
    label_pos, ctx_start, *_ = shards.example_positions(user, 3, schema.DEFAULT_MAX_CONTEXT_LENGTH)
    return table, rows, ratings, label_pos, ctx_start


def encode_ours(table, rows, ratings, label_pos, ctx_start) -> list[bytes]:
    L, G = schema.DEFAULT_MAX_CONTEXT_LENGTH, schema.DEFAULT_MAX_CONTEXT_MOVIE_GENRE_LENGTH
    encoder = example_records.ExampleEncoder(rows, ratings, table.movie_bytes(), L, G)
    step = shards.BATCH_EXAMPLES
    return [encoder.encode_framed(label_pos[b:b + step], ctx_start[b:b + step]).tobytes()
            for b in range(0, len(label_pos), step)]


def encode_tf(table, rows, ratings, label_pos, ctx_start) -> list[bytes]:
    import tensorflow as tf

    L, G = schema.DEFAULT_MAX_CONTEXT_LENGTH, schema.DEFAULT_MAX_CONTEXT_MOVIE_GENRE_LENGTH
    ids, years = table.ids[rows].tolist(), table.years[rows].tolist()
    genres = [[g.encode() for g in timelines.split_genres(table.genres[r])] for r in rows]
    rts = ratings.tolist()
    out = []
    for i, s in zip(label_pos.tolist(), ctx_start.tolist(), strict=True):
        pad = L - (i - s)
        flat = [g for j in range(s, i) for g in genres[j]][:G]
        feature = {
            schema.CONTEXT_MOVIE_ID: tf.train.Feature(int64_list=tf.train.Int64List(
                value=ids[s:i] + [schema.PAD_MOVIE_ID] * pad)),
            schema.CONTEXT_MOVIE_RATING: tf.train.Feature(float_list=tf.train.FloatList(
                value=rts[s:i] + [schema.PAD_RATING] * pad)),
            schema.CONTEXT_MOVIE_YEAR: tf.train.Feature(int64_list=tf.train.Int64List(
                value=years[s:i] + [schema.PAD_YEAR] * pad)),
            schema.CONTEXT_MOVIE_GENRE: tf.train.Feature(bytes_list=tf.train.BytesList(
                value=flat + [schema.PAD_GENRE] * (G - len(flat)))),
            schema.LABEL_MOVIE_ID: tf.train.Feature(int64_list=tf.train.Int64List(
                value=[ids[i]])),
        }
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        out.append(example.SerializeToString(deterministic=True))
    return out


def _time(fn, args, repeats: int) -> tuple[float, list]:
    result = fn(*args)  # warm-up (imports, caches)
    walls = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args)
        walls.append(time.perf_counter() - t)
    return statistics.median(walls), result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num_users", type=int, default=2000)
    p.add_argument("--ratings_per_user", type=float, default=165.6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    data = make_timelines(args.num_users, args.ratings_per_user, args.seed)
    n = len(data[3])
    ours_s, ours = _time(encode_ours, data, args.repeats)
    tf_s, theirs = _time(encode_tf, data, args.repeats)
    # Framed by the framer tests/beam_jobs/example_records_test.py checks against TF's.
    lens = np.array([len(r) for r in theirs], np.int64)
    same = b"".join(ours) == example_records.frame_records(
        np.frombuffer(b"".join(theirs), np.uint8), (np.cumsum(lens) - lens)[:, None],
        lens[:, None]).tobytes()
    print(f"{n:,} examples ({args.num_users:,} users), median of {args.repeats} runs, one "
          "thread")
    head = f"{'encoder':<18} {'s':>8} {'examples/s':>12} {'vs tf.train.Example':>20}"
    print(head)
    print("-" * len(head))
    for name, s in (("example_records", ours_s), ("tf.train.Example", tf_s)):
        print(f"{name:<18} {s:>8.2f} {n / s:>12,.0f} {tf_s / s:>19.1f}x")
    print(f"same bytes: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
