"""bench/synthetic_ceiling.py: the generator's own next-movie distribution as a scorer."""
import re

import numpy as np

from beam_jobs import synthetic as syn
from bench import synthetic_ceiling


def test_oracle_replays_the_generator_and_ranks_its_next_movies(capsys):
    # The replay raises if any user's movies differ from what the generator writes.
    synthetic_ceiling.main(["--num_users=150", "--k=10"])
    rows = re.findall(r"\| 150 \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|",
                      capsys.readouterr().out)
    shares = [float(x) for row in rows for x in row]
    # The walk follows a successor ~57% of the time: a scorer that knows the
    # graph must place far more next movies in its top 10 than chance (10/3883),
    # seeing the walk or only the data's order.
    assert len(shares) == 6 and all(0.3 < s < 0.8 for s in shares)


def test_probability_is_a_distribution_over_unseen_movies():
    cfg = syn.Config(num_users=5)
    movies = syn.make_movies(cfg)
    seen = np.zeros(len(movies.ids), bool)
    seen[movies.successors[7, 0]] = True  # the likeliest successor, already seen
    p = synthetic_ceiling.next_movie_probability(movies, np.array([0, 3]), 7, seen)
    assert abs(p.sum() - 1.0) < 1e-9 and p[seen].sum() == 0.0
    assert p[movies.successors[7, 1]] >= (1 - syn.P_NEW_SESSION) * syn.P_FOLLOW * 0.25


def test_data_view_takes_the_beam_jobs_label_and_only_what_the_data_shows():
    cfg = syn.Config(num_users=5)
    movies = syn.make_movies(cfg)
    index = synthetic_ceiling.movie_index(movies)
    fav = np.array([0, 3])
    a, b, c, d = 11, 22, 33, 44  # internal indices, walked in this order
    walk = np.array([a, b, c, d])

    def p(prev, seen_movies):
        seen = np.zeros(len(movies.ids), bool)
        seen[list(seen_movies)] = True
        return synthetic_ceiling.next_movie_probability(movies, fav, prev, seen)

    # c was rated 1 star: the data drops it from the timeline (it stays seen), so the
    # data's previous movie for d is b, while the walk's is c.
    rows = (movies.ids[walk], np.array([5, 4, 1, 5]), np.array([10, 20, 25, 30]))
    label, true, data = synthetic_ceiling.data_view(movies, index, fav, walk, rows, back=1)
    assert label == d
    np.testing.assert_allclose(true, p(c, {a, b, c}))
    np.testing.assert_allclose(data, p(b, {a, b, c}))
    # Validation: the second-to-last kept movie, b.
    label, true, data = synthetic_ceiling.data_view(movies, index, fav, walk, rows, back=2)
    assert label == b
    np.testing.assert_allclose(true, p(a, {a}))
    np.testing.assert_allclose(data, p(a, {a}))
    # b and c in the same second: the data cannot order them, so both may be d's previous
    # movie and their distributions are averaged.
    rows = (movies.ids[walk], np.array([5, 4, 3, 5]), np.array([10, 20, 20, 30]))
    label, true, data = synthetic_ceiling.data_view(movies, index, fav, walk, rows, back=1)
    assert label == d
    np.testing.assert_allclose(true, p(c, {a, b, c}))
    np.testing.assert_allclose(data, (p(b, {a, b, c}) + p(c, {a, b, c})) / 2)
