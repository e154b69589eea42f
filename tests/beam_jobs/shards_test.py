"""beam_jobs.shards: packed shuffle columns and example positions."""
import numpy as np
import pytest

from beam_jobs import schema, shards


def test_columns_round_trip():
    user = [5, 5, 3, 5, 5, 9]  # not grouped: runs still decode in order
    movie = [1, 2, 3, 4, 5, 2**31 - 1]
    rating = [0.5, 5.0, 3.5, 2.0, 1.0, 4.5]
    for ts in ([10, 9, 8, 7, 6, 5], [0, 2**40, 3, 4, 5, 2**62]):  # uint32 offsets / int64
        c = shards.Columns(user, movie, rating, ts)
        assert c.user.tolist() == user and c.movie.tolist() == movie
        assert c.rating.tolist() == rating and c.timestamp.tolist() == ts
        assert len(c) == 6
    assert shards.Columns([5] * 4, [1] * 4, [1.0] * 4, [1] * 4).run_users.tolist() == [5]
    empty = shards.Columns([], [], [], [])
    assert len(empty) == 0 and empty.user.tolist() == [] and empty.timestamp.tolist() == []
    with pytest.raises(ValueError, match="multiples of 0.5"):
        shards.Columns([1], [1], [4.25], [1])


def test_example_positions():
    # Users (sorted rows): 1 x4, 2 x2 (short, dropped at min length 3), 3 x3. Context 2.
    user = np.array([1, 1, 1, 1, 2, 2, 3, 3, 3])
    label, ctx, end, remaining, position, users, short = shards.example_positions(user, 3, 2)
    assert label.tolist() == [1, 2, 3, 7, 8]
    assert ctx.tolist() == [0, 0, 1, 6, 6]           # max(user start, label - 2)
    assert end.tolist() == label.tolist()            # the context ends right before its label
    assert remaining.tolist() == [2, 1, 0, 1, 0]     # examples after it: 0 = user's last
    assert position.tolist() == [1, 2, 3, 1, 2]
    assert (users, short) == (2, 1)


def test_example_positions_with_contexts_before_the_label_second():
    # User 1 rates at seconds 5, 5, 6, 6, 6, 9; user 3 at 1, 2, 2. Context 2.
    user = np.array([1, 1, 1, 1, 1, 1, 3, 3, 3])
    second = np.array([5, 5, 6, 6, 6, 9, 1, 2, 2])
    assert shards.first_of_second(user, second).tolist() == [0, 0, 2, 2, 2, 5, 6, 7, 7]
    label, ctx, end, remaining, position, users, short = shards.example_positions(
        user, 3, 2, second)
    # Row 1 shares the user's first second: no example. Rows 2-4 (second 6) see rows 0-1,
    # row 5 the last two rows of second 6; rows 7 and 8 (second 2) see row 6 only.
    assert label.tolist() == [2, 3, 4, 5, 7, 8]
    assert end.tolist() == [2, 2, 2, 5, 7, 7]
    assert ctx.tolist() == [0, 0, 0, 3, 6, 6]
    assert remaining.tolist() == [3, 2, 1, 0, 1, 0]
    assert position.tolist() == [2, 3, 4, 5, 1, 2]
    assert (users, short) == (2, 0)


def test_example_positions_with_context_only_rows():
    # --low_ratings_in_context: rows 0, 3 (user 1) and 6 (user 3) are context only (False).
    # User 1: C L L C L; user 2: C L (one label row: short); user 3: L C L L.
    user = np.array([1, 1, 1, 1, 1, 2, 2, 3, 3, 3, 3])
    labels = np.array([0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1], bool)
    label, ctx, end, remaining, position, users, short = shards.example_positions(
        user, 2, 2, labels=labels)
    # User 1's first label row (1) has a context (row 0); user 3's first row (7) has none.
    assert label.tolist() == [1, 2, 4, 9, 10]
    assert ctx.tolist() == [0, 0, 2, 7, 8]
    assert end.tolist() == label.tolist()
    assert remaining.tolist() == [2, 1, 0, 1, 0]  # label rows after it
    assert position.tolist() == [0, 1, 2, 1, 2]   # place among the user's label rows
    assert (users, short) == (2, 1)
    # Every row a label: the same as no mask.
    every = shards.example_positions(user, 2, 2, labels=np.ones(len(user), bool))
    for a, b in zip(every, shards.example_positions(user, 2, 2), strict=True):
        assert np.array_equal(a, b)
    # With seconds: row 2 shares row 1's second, so it sees row 0 only; user 3's row 9
    # shares row 8's second and sees row 7.
    second = np.array([1, 2, 2, 3, 4, 1, 2, 5, 6, 6, 7])
    label, ctx, end, remaining, position, _, _ = shards.example_positions(
        user, 2, 2, second, labels)
    assert label.tolist() == [1, 2, 4, 9, 10]
    assert end.tolist() == [1, 1, 4, 8, 10]
    assert ctx.tolist() == [0, 0, 2, 7, 8]
    assert remaining.tolist() == [2, 1, 0, 1, 0]


def test_shard_bytes_do_not_depend_on_chunk_order(tmp_path):
    """Duplicate (user, timestamp, movie) rows with different ratings arrive in whatever
    order the shuffle gives; the shard must not change."""
    from beam_jobs import movielens
    from beam_jobs.options import JobConfig

    table = movielens.MoviesTable([1, 2, 3], ["a (1990)", "b", "c"], ["X|Y", "", "Z"],
                                  [1990, 0, 0])
    a = shards.Columns([7, 7], [1, 2], [5.0, 3.0], [10, 20])
    b = shards.Columns([7, 7], [2, 3], [4.0, 2.0], [20, 30])
    outs = []
    for i, chunks in enumerate(([a, b], [b, a])):
        cfg = JobConfig(input_dir="in", output_dir=str(tmp_path / str(i)), num_shards=1,
                        compression="none")
        result = shards.write_shard(0, chunks, cfg, table)
        assert (result.train_examples, result.validation_examples,
                result.test_examples) == (1, 1, 1)
        outs.append([(tmp_path / str(i) / split / result.name).read_bytes()
                     for split in schema.SHARD_DIRS])
    assert outs[0] == outs[1]
