"""bench/synthetic_ceiling.py: the generator's own next-movie distribution as a scorer."""
import re

import numpy as np
import pytest

from beam_jobs import synthetic as syn
from bench import data_order_bayes, synthetic_ceiling


def test_oracle_replays_the_generator_and_ranks_its_next_movies(capsys):
    # The replay raises if any user's movies differ from what the generator writes.
    synthetic_ceiling.main(["--num_users=150", "--k=10"])
    out = capsys.readouterr().out
    rows = re.findall(r"\| 150 \| " + r" \| ".join([r"([\d.]+)"] * 8) + r" \|", out)
    shares = np.array(rows, float)
    # The walk follows a successor ~57% of the time: every scorer that knows the graph
    # places far more next movies in its top 10 than chance (10/3883).
    assert shares.shape == (2, 8)
    scorers = shares[:, [0, 1, 2, 3, 4, 6, 7]]
    assert np.all((0.3 < scorers) & (scorers < 0.8))
    # About a tenth of the labels precede a movie of their context in the walk.
    assert np.all((0.02 < shares[:, 5]) & (shares[:, 5] < 0.25))
    # On test labels the Bayes posterior's own expectation matches its share (150 users:
    # one standard error ~0.04), and ignoring the leak costs it.
    bayes, expected, label_last = shares[0, 2:5]
    assert abs(bayes - expected) < 0.1 and label_last <= bayes
    # Contexts before the label's second: the same check of the last row's posterior.
    second = re.search(r"second \| 150 \| - \| - \| ([\d.]+) \| ([\d.]+) \| - \| - \|", out)
    assert second and abs(float(second[1]) - float(second[2])) < 0.1


def test_a_posterior_from_the_context_alone_knows_less():
    # A user's 40 rows before the label (movies 0, 7, 14, ...): the posterior from all
    # of them rules out every one; from the example's last 10 rows, only those ten.
    cfg = syn.Config(num_users=5)
    movies = syn.make_movies(cfg)
    fav = np.array([0, 3])
    steps = data_order_bayes.Steps(movies, fav)
    untold = data_order_bayes.Steps(movies, None)
    rows = np.arange(40, dtype=np.int64) * 7
    full = data_order_bayes.label_posterior(steps, movies, rows)
    context = data_order_bayes.label_posterior(steps, movies, rows[-10:])
    assert np.all(full[rows] == 0) and np.all(context[rows[-10:]] == 0)
    drawable = rows[:-10][steps.raw[rows[:-10]] > 0]  # popularity 0: never drawn
    assert drawable.size > 20 and np.all(context[drawable] > 0)
    # Not knowing the favourites: the taste draw follows the genre prior, which moves
    # mass towards the genres the user does not favour.
    unfavoured = ~np.isin(movies.primary, fav)
    assert untold.raw[unfavoured].sum() > steps.raw[unfavoured].sum()
    np.testing.assert_allclose(untold.raw.sum(), 1.0)
    np.testing.assert_allclose(steps.raw.sum(), 1.0)


def test_a_context_length_below_one_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        synthetic_ceiling.main(["--context_length=0"])
    assert exit_.value.code == 2 and "--context_length=0" in capsys.readouterr().err


def test_probability_is_a_distribution_over_unseen_movies():
    cfg = syn.Config(num_users=5)
    movies = syn.make_movies(cfg)
    seen = np.zeros(len(movies.ids), bool)
    seen[movies.successors[7, 0]] = True  # the likeliest successor, already seen
    p = synthetic_ceiling.next_movie_probability(movies, np.array([0, 3]), 7, seen)
    assert abs(p.sum() - 1.0) < 1e-9 and p[seen].sum() == 0.0
    assert p[movies.successors[7, 1]] >= (1 - syn.P_NEW_SESSION) * syn.P_FOLLOW * 0.25


def test_data_view_takes_the_beam_jobs_label_and_what_precedes_it():
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

    # c was rated 1 star: the data drops it from the timeline (it stays among the rows
    # before the label: seen_movie_id keeps it), so the walk's previous movie for d is c.
    rows = (movies.ids[walk], np.array([5, 4, 1, 5]), np.array([10, 20, 25, 30]))
    label, true, before, earlier = synthetic_ceiling.data_view(movies, index, fav, walk, rows,
                                                               back=1)
    assert label == d and before.tolist() == [a, b, c] and earlier.tolist() == [a, b, c]
    np.testing.assert_allclose(true, p(c, {a, b, c}))
    # Validation: the second-to-last kept movie, b.
    label, true, before, earlier = synthetic_ceiling.data_view(movies, index, fav, walk, rows,
                                                               back=2)
    assert label == b and before.tolist() == earlier.tolist() == [a]
    np.testing.assert_allclose(true, p(a, {a}))
    # d then c in one second: the data orders them by movie id (c's is smaller), so the
    # label is d, c precedes it there, and d's previous movie in the walk is b.
    walk = np.array([a, b, d, c])
    rows = (movies.ids[walk], np.array([5, 4, 3, 5]), np.array([10, 20, 30, 30]))
    label, true, before, earlier = synthetic_ceiling.data_view(movies, index, fav, walk, rows,
                                                               back=1)
    assert movies.ids[c] < movies.ids[d]
    assert label == d and before.tolist() == [a, b, c] and earlier.tolist() == [a, b]
    np.testing.assert_allclose(true, p(b, {a, b}))
