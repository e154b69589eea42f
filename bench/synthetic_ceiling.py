"""The top-k a perfect model could reach on beam_jobs.synthetic data: its own generator as
the scorer.

    python bench/synthetic_ceiling.py [--num_users=6040 --seed=0 --k=10]

beam_jobs.synthetic draws each user's next movie from a known distribution (module doc
there): after the previous movie, with (1 - P_NEW_SESSION) * P_FOLLOW one of its K
successors (weights SUCCESSOR_WEIGHTS) unless already seen; otherwise by popularity,
within one of the user's two favourite genres (P_TASTE) or overall, never a movie already
seen. This script replays the generator (same seed, same draws), scores every movie for
each user's last and second-to-last step with that distribution (the Bayes-optimal
ranking), and prints the share of steps whose movie is in the top k: no scorer of the
walk's steps beats it on average. The data_dir's labels are not the walk's steps, though:
the Beam job never makes a rating below --min_rating a label and orders same-second
ratings by movie id, so a context may end with a movie walked after its label, which tells
about the label.

The other columns score the labels the Beam job writes instead (data_view: the last and
second-to-last kept movie in (timestamp, movie_id) order): knowing the walk (the label's
real previous movie), and by the Bayes posterior from the data's order alone
(bench/data_order_bayes.py: no timestamps, so it sums over which rows share a second and
their walk order), with that posterior's own expectation of its top-k share (equal to the
share when the posterior is right), the same posterior when it ignores that a label
sharing the second of the context's last movies may have been walked before them
(label_last), and the share of labels for which that happened: their context holds a movie
walked after them. Two more columns ask what a model of the examples could know: the
same posterior given only the example's context (the last --context_length ratings before
the label; a model sees no more), and that one again for a user whose favourite genres
are not known (the generator's prior over them instead). A last row scores the test
labels with contexts that end before the label's second (beam_jobs.pipeline
--context_before_label_second): the Bayes posterior of the user's last kept rating given
the ratings of earlier seconds (second_posterior).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from beam_jobs import synthetic as syn  # noqa: E402
from beam_jobs.options import JobConfig  # noqa: E402
from bench import data_order_bayes  # noqa: E402

# The Beam job's own defaults (its flags are declared once, in JobConfig).
MIN_RATING = JobConfig.__dataclass_fields__["min_rating"].default
CONTEXT_LENGTH = JobConfig.__dataclass_fields__["max_context_length"].default


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
    steps = data_order_bayes.Steps(movies, fav)
    return (syn.P_NEW_SESSION * steps.rest(seen)
            + (1 - syn.P_NEW_SESSION) * steps.within(prev, seen))


def movie_index(movies: syn.Movies) -> dict[int, int]:
    """Movie id -> internal index (the inverse of movies.ids)."""
    return {int(m): i for i, m in enumerate(movies.ids)}


def data_view(movies: syn.Movies, index: dict[int, int], fav: np.ndarray, walk: np.ndarray,
              rows, back: int, min_rating: float = MIN_RATING
              ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """The data_dir's example `back` steps from the end (1: test, 2: validation) of one
    user: (label, true [M], before [n], earlier [n']).

    index: movie_index(movies). rows: (movie ids, stars, timestamps) as written. The
    Beam job keeps stars >= min_rating and orders by (timestamp, movie_id); its label is
    the back-th last kept movie. `true` is the generator's distribution knowing the walk
    (the label's real previous movie and what was really seen before it); `before`
    holds the internal indices of every rating before the label in the data's order,
    those below min_rating included (data_order_bayes.label_posterior's rows); `earlier`
    those of the seconds before the label's (--context_before_label_second's context)."""
    ids, stars, ts = rows
    order = np.lexsort((ids, ts))
    ids, stars, ts = ids[order], stars[order], ts[order]
    at = np.flatnonzero(stars >= min_rating)[-back]
    label = index[int(ids[at])]
    step = int(np.flatnonzero(walk == label)[0])
    seen = np.zeros(len(movies.ids), bool)
    seen[walk[:step]] = True
    true = next_movie_probability(movies, fav, int(walk[step - 1]), seen)
    return (label, true, np.array([index[int(m)] for m in ids[:at]], np.int64),
            np.array([index[int(m)] for m in ids[ts < ts[at]]], np.int64))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num_users", type=int, default=syn.ML1M_USERS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--min_rating", type=float, default=MIN_RATING,
                   help="the Beam job's --min_rating (what the data_dir keeps)")
    p.add_argument("--context_length", type=int, default=CONTEXT_LENGTH,
                   help="the Beam job's --max_context_length (what an example holds)")
    a = p.parse_args(argv)
    if a.context_length < 1:  # before[-0:] would be the whole history
        p.error(f"--context_length={a.context_length}: give a positive length")
    cfg = syn.Config(num_users=a.num_users, seed=a.seed)
    movies = syn.make_movies(cfg)
    counts = syn.ratings_counts(cfg)
    index = movie_index(movies)
    names = ("last step (test)", "second-to-last step (validation)")
    columns = {name: [] for name in names}
    second = []  # test labels, contexts before the label's second: (hit, expected share)
    kept = data_order_bayes.kept_probability(movies, a.min_rating)

    def scored(prob, movie):
        """(movie in prob's top k, the share of prob's mass there)."""
        top = np.argpartition(-prob, a.k)[:a.k]
        return movie in top, prob[top].sum() / prob.sum()

    def hit(prob, movie):
        return scored(prob, movie)[0]

    untold = data_order_bayes.Steps(movies, None)  # favourite genres not known
    for fav, walk, rows in _walks(cfg, movies, counts):
        steps = data_order_bayes.Steps(movies, fav)
        step_of = {int(m): i for i, m in enumerate(walk)}
        for name, back in zip(names, (1, 2), strict=True):
            t = len(walk) - back
            seen = np.zeros(len(movies.ids), bool)
            seen[walk[:t]] = True
            label, true, before, earlier = data_view(movies, index, fav, walk, rows, back,
                                                     a.min_rating)
            if back == 1:
                second.append(scored(
                    data_order_bayes.second_posterior(steps, movies, earlier, kept), label))
            bayes = data_order_bayes.label_posterior(steps, movies, before)
            last = data_order_bayes.label_posterior(steps, movies, before, label_last=True)
            context = before[-a.context_length:]
            in_context = data_order_bayes.label_posterior(steps, movies, context)
            no_taste = data_order_bayes.label_posterior(untold, movies, context)
            columns[name].append((
                hit(next_movie_probability(movies, fav, walk[t - 1], seen), walk[t]),
                hit(true, label), *scored(bayes, label), hit(last, label),
                max((step_of[int(r)] for r in before), default=-1) > step_of[label],
                hit(in_context, label), hit(no_taste, label)))
    print(f"| step | users | oracle top-{a.k} | the data_dir's labels, knowing the walk | "
          "the same, Bayes from the data's order | its expected share | the same, the "
          "label walked after its whole context | labels walked before a context movie | "
          f"Bayes from the example's context (last {a.context_length} ratings) | the same, "
          "favourite genres not known |\n|---|---|---|---|---|---|---|---|---|---|")
    for name, values in columns.items():
        means = " | ".join(f"{v:.4f}" for v in np.mean(values, axis=0))
        print(f"| {name} | {len(values)} | {means} |")
    share, expected = np.mean(second, axis=0)
    print(f"| last step (test), contexts before the label's second | {len(second)} | - | - | "
          f"{share:.4f} | {expected:.4f} | - | - | - | - |")


if __name__ == "__main__":
    main()
