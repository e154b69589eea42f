"""bench/synthetic_ceiling.py: the generator's own next-movie distribution as a scorer."""
import re

import numpy as np

from beam_jobs import synthetic as syn
from bench import synthetic_ceiling


def test_oracle_replays_the_generator_and_ranks_its_next_movies(capsys):
    # The replay raises if any user's movies differ from what the generator writes.
    synthetic_ceiling.main(["--num_users=150", "--k=10"])
    shares = [float(x) for x in re.findall(r"\| 150 \| ([\d.]+) \|", capsys.readouterr().out)]
    # The walk follows a successor ~57% of the time: a scorer that knows the
    # graph must place far more next movies in its top 10 than chance (10/3883).
    assert len(shares) == 2 and all(0.3 < s < 0.8 for s in shares)


def test_probability_is_a_distribution_over_unseen_movies():
    cfg = syn.Config(num_users=5)
    movies = syn.make_movies(cfg)
    seen = np.zeros(len(movies.ids), bool)
    seen[movies.successors[7, 0]] = True  # the likeliest successor, already seen
    p = synthetic_ceiling.next_movie_probability(movies, np.array([0, 3]), 7, seen)
    assert abs(p.sum() - 1.0) < 1e-9 and p[seen].sum() == 0.0
    assert p[movies.successors[7, 1]] >= (1 - syn.P_NEW_SESSION) * syn.P_FOLLOW * 0.25
