"""The top-k a perfect model could reach on beam_jobs.synthetic data: its own generator as
the scorer.

    python bench/synthetic_ceiling.py [--num_users=6040 --seed=0 --k=10]

beam_jobs.synthetic draws each user's next movie from a known distribution (module doc
there): after the previous movie, with (1 - P_NEW_SESSION) * P_FOLLOW one of its K
successors (weights SUCCESSOR_WEIGHTS) unless already seen; otherwise by popularity,
within one of the user's two favourite genres (P_TASTE) or overall, never a movie already
seen. This script replays the generator (same seed, same draws), scores every movie for
each user's last and second-to-last step with that distribution (the Bayes-optimal
ranking), and prints the share of steps whose movie is in the top k. No model of the
ratings can beat it on average; it is an upper bound for bench/quality.py's synthetic
rows. It overstates what the data allows: it knows the true walk order (the data has
timestamp ties), the favourite genres and the movies below --min_rating.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from beam_jobs import synthetic as syn  # noqa: E402


def _walks(cfg: syn.Config, movies: syn.Movies, counts: np.ndarray):
    """Yields (favourite genres [2], walk [n] internal movie indices) per user, in the
    generator's own order of draws (make_block's, one block of users at a time)."""
    fav_p = np.cumsum(movies.genre_weights)
    fav_p /= fav_p[-1]
    for first in range(0, cfg.num_users, cfg.block_size):
        block = counts[first:first + cfg.block_size]
        # User ids start at 1 (generate's make_block(cfg, movies, start + 1, ...)).
        draws = [syn._user_draws(cfg, first + 1 + i, int(n)) for i, n in enumerate(block)]
        favs = np.minimum(np.array([np.searchsorted(fav_p, d[1], side="right") for d in draws]),
                          len(syn.GENRES) - 1).reshape(-1, 2)
        order = np.argsort(-block, kind="stable")
        sorted_counts = block[order]
        u = np.concatenate([draws[i][0] for i in order])
        offsets = np.concatenate([[0], np.cumsum(sorted_counts)[:-1]]).astype(np.int64)
        picked, _ = syn._walk(movies, u, offsets, sorted_counts, favs[order])
        # The replay must be the generator's: each user's movies equal what it writes.
        users, ids = syn.make_block(cfg, movies, first + 1, block)[:2]
        for j, i in enumerate(order):
            walk = picked[offsets[j]:offsets[j] + sorted_counts[j]]
            written = np.sort(ids[users == first + 1 + i])
            if not np.array_equal(np.sort(movies.ids[walk]), written):
                raise AssertionError(f"replay differs from the generator for user {first + 1 + i}")
            yield favs[i], walk


def next_movie_probability(movies: syn.Movies, fav: np.ndarray, prev: int,
                           seen: np.ndarray) -> np.ndarray:
    """[M] probability of each movie being the next step after `prev` (seen: bool [M])."""
    m = len(movies.ids)
    pop = np.diff(np.concatenate([[0.0], movies.pop_cdf]))
    in_genre = np.zeros(m)
    for g in fav:
        members = movies.primary == g
        weight = pop * members
        if weight.sum() > 0:
            in_genre += 0.5 * weight / weight.sum()
    rest = syn.P_TASTE * in_genre + (1 - syn.P_TASTE) * pop
    rest = np.where(seen, 0.0, rest)
    rest /= max(rest.sum(), 1e-12)
    follow = np.zeros(m)
    p_follow = (1 - syn.P_NEW_SESSION) * syn.P_FOLLOW
    for k, w in enumerate(syn.SUCCESSOR_WEIGHTS):
        s = movies.successors[prev, k]
        if not seen[s]:
            follow[s] += p_follow * w
    return follow + (1 - follow.sum()) * rest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num_users", type=int, default=syn.ML1M_USERS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=10)
    a = p.parse_args(argv)
    cfg = syn.Config(num_users=a.num_users, seed=a.seed)
    movies = syn.make_movies(cfg)
    counts = syn.ratings_counts(cfg)
    hits = {"last step (test)": [], "second-to-last step (validation)": []}
    for fav, walk in _walks(cfg, movies, counts):
        for name, t in zip(hits, (len(walk) - 1, len(walk) - 2), strict=True):
            seen = np.zeros(len(movies.ids), bool)
            seen[walk[:t]] = True
            prob = next_movie_probability(movies, fav, walk[t - 1], seen)
            top = np.argpartition(-prob, a.k)[:a.k]
            hits[name].append(walk[t] in top)
    print(f"| step | users | oracle top-{a.k} |\n|---|---|---|")
    for name, h in hits.items():
        print(f"| {name} | {len(h)} | {np.mean(h):.4f} |")


if __name__ == "__main__":
    main()
