"""The Bayes posterior of a synthetic data_dir's label, from the data's order alone.

beam_jobs.synthetic walks each user through movies (its module doc); the Beam job then
orders each user's ratings by (timestamp, movie_id). Inside a session a step shares the
previous rating's second with probability P_ZERO_GAP, so the data's order is the walk's
except inside same-second groups, which come out in ascending id order. A label may share
the second of the context's last movies, and then it may have been walked before some of
them: the context can hold a movie walked after its label.

`label_posterior` scores every movie as the label that follows a user's rows, with the
generator's own probabilities, summing over what the data cannot show: which neighbouring
rows share a second (any run of ascending ids may), the walk's order inside each such
group, and whether the label joins the last group (its id then above the group's, so
that it sorts last) or comes in a later second. A walk's probability is the product of
its steps':

    first rating:                           rest(x)
    a step with a gap (new session or not): P_NEW rest(x) + (1-P_NEW)(1-P_ZERO) within(x | prev)
    a step in the same second:              (1-P_NEW) P_ZERO within(x | prev)
    within(x | prev) = sum_k P_FOLLOW w_k [x = succ_k(prev), unseen]
                       + (1 - sum_k P_FOLLOW w_k [succ_k(prev) unseen]) rest(x)

where rest(x) is the draw by popularity (in a favourite genre with P_TASTE), never a seen
movie. It is exact for the generator up to three simplifications: only the last `window`
rows are summed over (the row before them is taken as the walk's movie before them);
same-second groups hold at most `max_group` rows of the context; and the rest draw is
taken as rejection without the generator's four-retry cap. It knows what no model of the
data knows: every parameter and the user's favourite genres; and the ratings below
--min_rating, which the default data_dir keeps in its contexts too (the reference
timelines, --nolow_ratings_in_context, drop them; seen_movie_id keeps them). It
does not model rows after the label (for a validation label, the test rating may share
its second and have been walked before it), so its validation posterior is the less
calibrated one (bench/README_quality.md measures both).
"""
from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np

from beam_jobs import synthetic as syn

ZERO = (1 - syn.P_NEW_SESSION) * syn.P_ZERO_GAP  # a step in the previous step's second
GAP = (1 - syn.P_NEW_SESSION) * (1 - syn.P_ZERO_GAP)  # a later step of the same session
MAX_GROUP = 4  # 4 of the 6,040 synthetic test labels follow a longer same-second group
WINDOW = 8


class Steps:
    """One user's step probabilities, each a float64 [M] vector over the next movie
    (internal indices). seen: bool [M], the movies walked before the step.

    fav: the user's two favourite genres, or None for a user whose favourites are not
    known: the taste draw then follows the generator's prior over favourites
    (movies.genre_weights, from which each of the two is drawn)."""

    def __init__(self, movies: syn.Movies, fav: np.ndarray | None):
        pop = np.diff(np.concatenate([[0.0], movies.pop_cdf]))
        share = (np.full(len(fav), 1.0 / len(fav)) if fav is not None
                 else movies.genre_weights)
        genres = fav if fav is not None else range(len(share))
        in_genre = np.zeros(len(pop))
        for g, s in zip(genres, share, strict=True):
            weight = pop * (movies.primary == g)
            if weight.sum() > 0:
                in_genre += s * weight / weight.sum()
        self.raw = syn.P_TASTE * in_genre + (1 - syn.P_TASTE) * pop  # before rejection
        self.successors = movies.successors
        self.follow = syn.P_FOLLOW * syn.SUCCESSOR_WEIGHTS

    def _unseen(self, seen: np.ndarray) -> float:
        return max(1.0 - float(self.raw[seen].sum()), 1e-300)

    def rest(self, seen: np.ndarray) -> np.ndarray:
        return np.where(seen, 0.0, self.raw) / self._unseen(seen)

    def within(self, prev: int, seen: np.ndarray) -> np.ndarray:
        out = np.zeros(len(self.raw))
        followed = 0.0
        for s, f in zip(self.successors[prev], self.follow, strict=True):
            if not seen[s]:
                out[s] += f
                followed += f
        return out + (1.0 - followed) * self.rest(seen)

    def entering(self, prev: int, seen: np.ndarray) -> np.ndarray:
        """A step with a gap after `prev` (-1: the user's first rating)."""
        if prev < 0:
            return self.rest(seen)
        return syn.P_NEW_SESSION * self.rest(seen) + GAP * self.within(prev, seen)

    def within_from_each(self, x: int, seen: np.ndarray) -> np.ndarray:
        """[M] over j: within(x | prev=j) with j seen too (x unseen, not j)."""
        succ = self.successors
        hit = (succ == x) @ self.follow
        followed = (~seen[succ]) @ self.follow
        unseen = np.maximum(self._unseen(seen) - self.raw, 1e-300)
        return hit + (1.0 - followed) * self.raw[x] / unseen

    def within_past_each(self, prev: int, x: int, seen: np.ndarray) -> np.ndarray:
        """[M] over j: within(x | prev) with j seen too (x unseen, not j)."""
        hit, followed = 0.0, np.zeros(len(self.raw))
        for s, f in zip(self.successors[prev], self.follow, strict=True):
            if not seen[s]:
                hit += f * (s == x)
                followed += f
                followed[s] -= f  # j = s: a successor walked already
        unseen = np.maximum(self._unseen(seen) - self.raw, 1e-300)
        return hit + (1.0 - followed) * self.raw[x] / unseen


def _ascending_runs(ids: np.ndarray, start: int, max_group: int):
    """Lengths g of the possible same-second groups rows[start:start+g]: ascending ids."""
    g = 1
    while start + g <= len(ids) and g <= max_group:
        yield g
        if start + g == len(ids) or ids[start + g] < ids[start + g - 1]:
            return
        g += 1


def _orders(steps: Steps, group: tuple, prev: int, seen: np.ndarray):
    """(walk order, probability) of each order of one same-second group, entered after
    `prev` with a gap; seen: walked before the group."""
    for order in itertools.permutations(group):
        s = seen.copy()
        p = steps.entering(prev, s)[order[0]]
        for a, b in itertools.pairwise(order):
            s[a] = True
            p *= ZERO * steps.within(a, s)[b]
        yield order, p


def _joining(steps: Steps, group: tuple, prev: int, seen: np.ndarray,
             label_last: bool) -> np.ndarray:
    """[M] over j: the probability that the walk entered `group` + {j} after `prev` with
    a gap and walked it in one second, j at any place in its order (the last only, if
    label_last)."""
    out = np.zeros(len(steps.raw))
    for order in itertools.permutations(group):
        before = seen.copy()  # walked before order[i], j not counted
        step = [steps.entering(prev, before)[order[0]]]
        seens = [before.copy()]
        for a, b in itertools.pairwise(order):
            before[a] = True
            seens.append(before.copy())
            step.append(ZERO * steps.within(a, before)[b])
        places = [len(order)] if label_last else range(len(order) + 1)
        for place in places:  # j walked just before order[place]
            if place == 0:
                p = steps.entering(prev, seen)
            else:
                walked = seens[place - 1].copy()
                walked[order[place - 1]] = True
                p = np.prod(step[:place]) * ZERO * steps.within(order[place - 1], walked)
            if place < len(order):
                p = p * ZERO * steps.within_from_each(order[place], seens[place])
                for i in range(place + 1, len(order)):
                    p = p * ZERO * steps.within_past_each(order[i - 1], order[i], seens[i])
            out += p
    return out


def _forward(steps: Steps, movies: syn.Movies, rows: np.ndarray, max_group: int,
             window: int) -> tuple[list, dict, int]:
    """The forward pass over the last `window` rows: (forward, seen, first). forward[i]
    maps the movie walked last before row i to the probability of rows[first:i] as whole
    same-second groups; seen[i]: bool [M], rows[:i] (first <= i <= n)."""
    n, m = len(rows), len(movies.ids)
    ids = movies.ids[rows]
    first = max(0, n - window)
    seen = {first: np.zeros(m, bool)}
    seen[first][rows[:first]] = True
    for i in range(first, n):
        seen[i + 1] = seen[i].copy()
        seen[i + 1][rows[i]] = True
    forward = [defaultdict(float) for _ in range(n + 1)]
    forward[first][int(rows[first - 1]) if first else -1] = 1.0
    for i in range(first, n):
        for prev, p in forward[i].items():
            for g in _ascending_runs(ids, i, max_group):
                group = tuple(int(r) for r in rows[i:i + g])
                for order, q in _orders(steps, group, prev, seen[i]):
                    forward[i + g][order[-1]] += p * q
    return forward, seen, first


def label_posterior(steps: Steps, movies: syn.Movies, rows: np.ndarray, *,
                    label_last: bool = False, max_group: int = MAX_GROUP,
                    window: int = WINDOW) -> np.ndarray:
    """Unnormalised P(label = j, rows) for every movie: float64 [M], 0 for rows' movies.

    rows: int [n >= 0], internal movie indices of every rating before the label, in the
    data's (timestamp, movie_id) order. label_last=True keeps only the walks that reach
    the label after every row (the posterior of a scorer that ignores how a same-second
    label can precede its context's last movies in the walk). Sums over the last
    `window` rows (_forward).
    """
    n, m = len(rows), len(movies.ids)
    rows = np.asarray(rows, np.int64)
    ids = movies.ids[rows]
    forward, seen, first = _forward(steps, movies, rows, max_group, window)
    label = np.zeros(m)
    for prev, p in forward[n].items():  # the label in a later second
        label += p * steps.entering(prev, seen[n])
    for g in range(1, min(max_group, n - first) + 1):  # the label in the last group's second
        i = n - g
        if g > 1 and ids[i] > ids[i + 1]:
            break
        above = movies.ids > ids[i:].max()  # it sorts after the group
        group = tuple(int(r) for r in rows[i:])
        for prev, p in forward[i].items():
            label += p * above * _joining(steps, group, prev, seen[i], label_last)
    label[seen[n]] = 0.0
    return label


def kept_probability(movies: syn.Movies, min_rating: float) -> np.ndarray:
    """[M] each movie's chance of a rating >= min_rating (integer stars, as in .dat):
    beam_jobs.synthetic draws stars from a uniform that follows the movie's quality
    (uniform within +-0.1 of it, mod 1) with P_RATING_FROM_QUALITY, else is free."""
    stars = int(np.ceil(min_rating))
    low = 0.0 if stars <= 1 else float(np.cumsum(syn.RATING_MIX)[min(stars, 6) - 2])
    low = min(low, 1.0)  # stars < min_rating <=> the uniform < low
    start = movies.quality - 0.1
    inside = sum(np.clip(np.minimum(start + shift + 0.2, low) - np.maximum(start + shift, 0.0),
                         0.0, None) for shift in (-1.0, 0.0, 1.0)) / 0.2
    return 1.0 - (syn.P_RATING_FROM_QUALITY * inside + (1 - syn.P_RATING_FROM_QUALITY) * low)


def second_posterior(steps: Steps, movies: syn.Movies, rows: np.ndarray, kept: np.ndarray,
                     *, max_group: int = MAX_GROUP, window: int = WINDOW) -> np.ndarray:
    """Unnormalised P(label = j, rows) [M] for a user's last kept rating when `rows` are
    every rating of the user's earlier seconds, in the data's order (the test label of
    --context_before_label_second, whose context holds only those seconds).

    The walk goes on after rows with a gap, rates one or two movies in that one second and
    ends; the label is that second's largest-id kept movie, so a second movie there is
    either below min_rating or kept with a smaller id. A longer last second is not summed
    (its weight is ZERO^2, 3%), nor ratings below min_rating in later seconds. kept:
    kept_probability(movies, min_rating).
    """
    n, m = len(rows), len(movies.ids)
    rows = np.asarray(rows, np.int64)
    forward, seen, _ = _forward(steps, movies, rows, max_group, window)
    done = seen[n]
    unseen = ~done
    index = np.arange(m)  # internal indices ascend with movie ids
    followed = unseen[steps.successors] @ steps.follow  # [M] successor mass after each movie
    rest_left = np.maximum(steps._unseen(done) - steps.raw, 1e-300)  # once it is walked

    def others(v):
        """[M] over j: sum over x != j of v(x), kept x counted only below j."""
        return np.cumsum(v * kept) - v * kept + (v * (1 - kept)).sum() - v * (1 - kept)

    # j then x: the sum over x of within(x | j), whatever came before j.
    j_then_x = (1.0 - followed) * others(steps.raw * unseen) / rest_left
    for s, f in zip(steps.successors.T, steps.follow, strict=True):
        j_then_x += f * unseen[s] * np.where(s < index, 1.0, 1.0 - kept[s])
    label = np.zeros(m)
    for prev, p in forward[n].items():
        a = steps.entering(prev, done)  # [M] the second's first movie (0 if seen)
        # x then j: the sum over x of a(x) within(j | x).
        x_then_j = steps.raw * others(a * (1.0 - followed) / rest_left)
        for j, f in zip(steps.successors.T, steps.follow, strict=True):
            weight = a * f * np.where(index < j, 1.0, 1.0 - kept) * unseen[j]
            x_then_j += np.bincount(j, weights=weight, minlength=m)
        label += p * (a + ZERO * (x_then_j + a * j_then_x))
    label *= kept
    label[done] = 0.0
    return label
