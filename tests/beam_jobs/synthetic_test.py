"""Tests of beam_jobs.synthetic: determinism, MovieLens shape, sequential structure, sample."""
import collections
import csv
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from beam_jobs import synthetic
from tests.beam_jobs import util

SMALL = synthetic.Config(num_users=400, num_movies=300, ratings_per_user=60, seed=3)


def _read(path, mode="rb"):
    with open(path, mode) as f:
        return f.read()


def _ratings_dat(path):
    """[N, 4] int array (user, movie, rating, timestamp) from a ratings.dat."""
    with open(path, encoding="latin-1") as f:
        return np.array([[int(x) for x in line.split("::")] for line in f], dtype=np.int64)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("small"))
    stats = synthetic.generate(SMALL, out)
    return out, stats, _ratings_dat(os.path.join(out, "ratings.dat"))


def test_same_flags_give_identical_bytes_and_block_size_does_not_matter(small, tmp_path):
    out, _, _ = small
    # Block sizes 7 and 1000 share no block boundaries with the fixture's default (1000 > 400).
    for block_size in (7, 1000):
        again = str(tmp_path / f"b{block_size}")
        synthetic.generate(synthetic.Config(**{**vars(SMALL), "block_size": block_size}), again)
        for name in ("ratings.dat", "movies.dat"):
            assert _read(os.path.join(again, name)) == _read(os.path.join(out, name)), name


def test_another_seed_gives_other_data(small, tmp_path):
    out, _, _ = small
    synthetic.generate(synthetic.Config(**{**vars(SMALL), "seed": 4}), str(tmp_path))
    assert _read(tmp_path / "ratings.dat") != _read(os.path.join(out, "ratings.dat"))


def test_shape_matches_movielens_1m(small):
    out, stats, r = small
    users, movies, stars, ts = r.T
    per_user = np.bincount(users)[1:]
    assert users.min() == 1 and users.max() == SMALL.num_users
    assert len(per_user) == SMALL.num_users and per_user.min() >= 20
    assert stats["ratings"] == len(r) == round(SMALL.num_users * SMALL.ratings_per_user)
    assert per_user.max() > 2.5 * np.median(per_user)  # heavy tail
    mix = np.bincount(stars, minlength=6)[1:] / len(stars)
    # 40% of ratings follow their movie's quality, so with 300 movies the mix varies more
    # than 24k independent draws would (measured on the ML-1M default: within 0.008).
    np.testing.assert_allclose(mix, synthetic.RATING_MIX, atol=0.035)
    assert ts.min() >= synthetic.T_MIN and ts.max() <= synthetic.T_MAX
    # Distinct movies per user, like MovieLens.
    assert len(np.unique(users * 10**6 + movies)) == len(r)
    # ~1/3 of ratings share a timestamp with another rating of the same user (ML-1M: many).
    _, inverse, counts = np.unique(users * 2**32 + ts, return_inverse=True, return_counts=True)
    assert 0.2 < (counts[inverse] > 1).mean() < 0.45
    # Grouped by user ascending, but not time-sorted within users.
    assert np.all(np.diff(users) >= 0)
    within = np.diff(ts)[np.diff(users) == 0]
    assert (within < 0).mean() > 0.3

    lines = _read(os.path.join(out, "movies.dat")).decode("latin-1").splitlines()
    ids = [int(line.split("::")[0]) for line in lines]
    assert len(ids) == SMALL.num_movies and ids == sorted(set(ids))
    assert max(ids) > len(ids)  # gaps like ML-1M's 1..3952
    assert set(movies.tolist()) <= set(ids)
    # Like ML-1M (3,706 of 3,883), a few listed movies have no ratings at all.
    assert 0.9 * len(ids) < stats["rated_movies"] == len(set(movies.tolist())) < len(ids)
    for line in lines:
        _, title, genres = line.split("::")
        assert re.search(r" \((19|20)\d\d\)$", title), title
        assert set(genres.split("|")) <= set(synthetic.GENRES), genres
    text = "\n".join(lines)
    assert "," in text
    # Non-ASCII titles are really Latin-1 on disk (one byte per letter), like ML-1M.
    raw = _read(os.path.join(out, "movies.dat"))
    assert any(ord(c) > 127 for c in text)
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")


def test_csv_format_parses_with_quoted_titles(tmp_path):
    cfg = synthetic.Config(num_users=60, num_movies=120, ratings_per_user=30, format="csv")
    synthetic.generate(cfg, str(tmp_path))
    with open(tmp_path / "movies.csv", encoding="utf-8", newline="") as f:
        movies = list(csv.reader(f))
    assert movies[0] == ["movieId", "title", "genres"]
    assert all(len(row) == 3 for row in movies)
    assert any("," in row[1] for row in movies[1:])  # needed RFC 4180 quoting
    assert _read(tmp_path / "movies.csv").count(b'"') > 0
    with open(tmp_path / "ratings.csv", encoding="utf-8", newline="") as f:
        ratings = list(csv.DictReader(f))
    assert len(ratings) == 60 * 30
    values = {float(row["rating"]) for row in ratings}
    assert values <= {x / 2 for x in range(1, 11)} and any(v % 1 for v in values)
    movie_ids = {int(row[0]) for row in movies[1:]}
    assert {int(row["movieId"]) for row in ratings} <= movie_ids


def test_next_movie_is_predictable_beyond_popularity(small):
    """A first-order "next given previous" table from 80% of users beats popularity on the rest.

    Timelines are ordered like the pipeline does, by (timestamp, movie_id).
    """
    _, _, r = small
    r = r[np.lexsort((r[:, 1], r[:, 3], r[:, 0]))]
    same_user = r[1:, 0] == r[:-1, 0]
    prev, nxt, user = r[:-1, 1][same_user], r[1:, 1][same_user], r[1:, 0][same_user]
    train = user % 5 != 0
    table = collections.defaultdict(collections.Counter)
    for p, n in zip(prev[train].tolist(), nxt[train].tolist(), strict=True):
        table[p][n] += 1
    popular = [m for m, _ in collections.Counter(nxt[train].tolist()).most_common(10)]
    markov_hits = pop_hits = 0
    for p, n in zip(prev[~train].tolist(), nxt[~train].tolist(), strict=True):
        markov_hits += n in [m for m, _ in table[p].most_common(10)]
        pop_hits += n in popular
    held_out = int((~train).sum())
    # Measured: Markov hit@10 ~0.4, popularity ~0.05 on this config.
    assert markov_hits / held_out > 3 * pop_hits / held_out
    assert markov_hits / held_out > 0.2


def test_bad_flags_name_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--num_movies"):
        synthetic.generate(synthetic.Config(num_movies=10), str(tmp_path))
    with pytest.raises(ValueError, match="--ratings_per_user"):
        synthetic.generate(synthetic.Config(ratings_per_user=5), str(tmp_path))


def test_committed_sample_regenerates_identically(tmp_path):
    readme = _read(os.path.join(util.SAMPLE, "README.md"), "r")
    command = next(line.strip() for line in readme.splitlines()
                   if "python -m beam_jobs.synthetic" in line)  # fmt: skip
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "beam_jobs.synthetic"]
    argv = [sys.executable, *argv[1:]]
    argv = [f"--output_dir={tmp_path}" if a.startswith("--output_dir") else a for a in argv]
    subprocess.run(argv, cwd=util.ROOT, check=True, capture_output=True)
    for name in ("ratings.dat", "movies.dat"):
        assert _read(tmp_path / name) == _read(os.path.join(util.SAMPLE, name)), name
    assert sum(os.path.getsize(os.path.join(util.SAMPLE, n))
               for n in os.listdir(util.SAMPLE)) < 1 << 20
