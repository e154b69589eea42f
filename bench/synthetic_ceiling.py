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

Two more columns score the labels the Beam job writes instead (data_view: the last and
second-to-last kept movie in (timestamp, movie_id) order): knowing the walk, and seeing
only the data's order.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from beam_jobs import synthetic as syn  # noqa: E402
from beam_jobs.options import JobConfig  # noqa: E402

# The Beam job's own default (its flags are declared once, in JobConfig).
MIN_RATING = JobConfig.__dataclass_fields__["min_rating"].default


def _walks(cfg: syn.Config, movies: syn.Movies, counts: np.ndarray):
    """Yields (favourite genres [2], walk [n] internal movie indices, (movie ids [n],
    stars [n], timestamps [n]) as written) per user, in the generator's own order of
    draws (make_block's, one block of users at a time)."""
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
        users, ids, stars, ts = syn.make_block(cfg, movies, first + 1, block)[:4]
        for j, i in enumerate(order):
            walk = picked[offsets[j]:offsets[j] + sorted_counts[j]]
            mine = users == first + 1 + i
            if not np.array_equal(np.sort(movies.ids[walk]), np.sort(ids[mine])):
                raise AssertionError(f"replay differs from the generator for user {first + 1 + i}")
            yield favs[i], walk, (ids[mine], stars[mine], ts[mine])


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


def movie_index(movies: syn.Movies) -> dict[int, int]:
    """Movie id -> internal index (the inverse of movies.ids)."""
    return {int(m): i for i, m in enumerate(movies.ids)}


def data_view(movies: syn.Movies, index: dict[int, int], fav: np.ndarray, walk: np.ndarray,
              rows, back: int, min_rating: float = MIN_RATING
              ) -> tuple[int, np.ndarray, np.ndarray]:
    """The data_dir's example `back` steps from the end (1: test, 2: validation) of one
    user, scored two ways by the generator's distribution.

    index: movie_index(movies). rows: (movie ids, stars, timestamps) as written. The
    Beam job keeps stars >= min_rating and orders by (timestamp, movie_id); its label is
    the back-th last kept movie. Returns (label, true [M], seen_through_data [M]): `true` knows the walk (the
    label's real previous movie and what was really seen before it); `seen_through_data`
    knows the generator but only the data's order: what precedes the label there is
    seen, and the previous movie is any of the context's last same-second movies
    (their distributions averaged: the data cannot tell their order)."""
    ids, stars, ts = rows
    order = np.lexsort((ids, ts))
    ids, stars, ts = ids[order], stars[order], ts[order]
    kept = np.flatnonzero(stars >= min_rating)
    at = kept[-back]
    label = index[int(ids[at])]
    step = int(np.flatnonzero(walk == label)[0])
    seen = np.zeros(len(movies.ids), bool)
    seen[walk[:step]] = True
    true = next_movie_probability(movies, fav, int(walk[step - 1]), seen)
    seen = np.zeros(len(movies.ids), bool)
    seen[[index[int(m)] for m in ids[:at]]] = True
    context = kept[kept < at]
    last = context[ts[context] == ts[context[-1]]]
    data = np.mean([next_movie_probability(movies, fav, index[int(ids[c])], seen)
                    for c in last], axis=0)
    return label, true, data


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num_users", type=int, default=syn.ML1M_USERS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--min_rating", type=float, default=MIN_RATING,
                   help="the Beam job's --min_rating (what the data_dir keeps)")
    a = p.parse_args(argv)
    cfg = syn.Config(num_users=a.num_users, seed=a.seed)
    movies = syn.make_movies(cfg)
    counts = syn.ratings_counts(cfg)
    index = movie_index(movies)
    names = ("last step (test)", "second-to-last step (validation)")
    hits = {name: ([], [], []) for name in names}

    def hit(prob, movie):
        return movie in np.argpartition(-prob, a.k)[:a.k]

    for fav, walk, rows in _walks(cfg, movies, counts):
        for name, back in zip(names, (1, 2), strict=True):
            t = len(walk) - back
            seen = np.zeros(len(movies.ids), bool)
            seen[walk[:t]] = True
            walk_hits, true_hits, data_hits = hits[name]
            walk_hits.append(hit(next_movie_probability(movies, fav, walk[t - 1], seen),
                                 walk[t]))
            label, true, data = data_view(movies, index, fav, walk, rows, back, a.min_rating)
            true_hits.append(hit(true, label))
            data_hits.append(hit(data, label))
    print(f"| step | users | oracle top-{a.k} | the data_dir's labels | the same, seeing "
          "only the data's order |\n|---|---|---|---|---|")
    for name, (walk_hits, true_hits, data_hits) in hits.items():
        print(f"| {name} | {len(walk_hits)} | {np.mean(walk_hits):.4f} | "
              f"{np.mean(true_hits):.4f} | {np.mean(data_hits):.4f} |")


if __name__ == "__main__":
    main()
