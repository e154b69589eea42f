"""bench/data_order_bayes.py: the label's posterior from the data's order, against
enumerating every walk that the data's order could come from."""
import itertools

import numpy as np
import pytest

from beam_jobs import synthetic as syn
from bench import data_order_bayes as dob

P_NEW = syn.P_NEW_SESSION


def _walk_probability(steps, order, gaps):
    """A walk's probability from the generator's step rules (module doc of
    beam_jobs.synthetic): the first rating by the rest draw, then per step a new
    session, a later step of the session, or one in the same second (gap False)."""
    seen = np.zeros(len(steps.raw), bool)
    p = steps.rest(seen)[order[0]]
    for (a, b), gap in zip(itertools.pairwise(order), gaps, strict=True):
        seen[a] = True
        within = steps.within(a, seen)[b]
        if gap:
            p *= P_NEW * steps.rest(seen)[b] + (1 - P_NEW) * (1 - syn.P_ZERO_GAP) * within
        else:
            p *= (1 - P_NEW) * syn.P_ZERO_GAP * within
    return p


def _enumerated(steps, movies, rows, label, label_last=False):
    """P(label, rows): the sum over every walk order of rows + [label] (ending with the
    label, if label_last) and every gap pattern whose (second, movie id) order is rows,
    then label."""
    want = [*rows, label]
    total = 0.0
    for order in itertools.permutations(want):
        for gaps in itertools.product((False, True), repeat=len(want) - 1):
            second = np.concatenate([[0], np.cumsum(gaps)])
            data = sorted(range(len(order)), key=lambda i: (second[i], movies.ids[order[i]]))
            if [order[i] for i in data] != want:
                continue
            if label_last and order[-1] != label:
                continue
            total += _walk_probability(steps, order, gaps)
    return total


@pytest.fixture(scope="module")
def movies():
    return syn.make_movies(syn.Config(num_users=5))


def _chain(movies, start, length):
    """`length` movies, each the likeliest successor of the one before."""
    out = [start]
    while len(out) < length:
        out.append(int(movies.successors[out[-1], 0]))
    return out


@pytest.mark.parametrize("ascending", [True, False])
@pytest.mark.parametrize("label_last", [False, True])
def test_posterior_is_the_sum_over_walks(movies, ascending, label_last):
    steps = dob.Steps(movies, np.array([7, 4]))
    chain = _chain(movies, 40, 6)
    rows = sorted(chain[:3], key=lambda x: movies.ids[x])  # one same-second group may hold all
    if not ascending:  # the last two cannot share a second
        rows = [rows[0], rows[2], rows[1]]
    post = dob.label_posterior(steps, movies, np.array(rows), label_last=label_last)
    # Successors and predecessors of the rows (ids above and below theirs), and others:
    # a label walked before a row of its second is scored through that row.
    predecessors = np.flatnonzero(np.isin(movies.successors, rows).any(axis=1))
    labels = sorted({int(s) for r in rows for s in movies.successors[r]} | set(chain[3:])
                    | set(predecessors[:12].tolist()) | {0, 1, len(movies.ids) - 1}
                    - set(rows))
    above = [j for j in labels if movies.ids[j] > movies.ids[rows].max()]
    assert len(set(above) & set(predecessors)) >= 2 and len(above) < len(labels)
    want = np.array([_enumerated(steps, movies, rows, j, label_last) for j in labels])
    np.testing.assert_allclose(post[labels], want, rtol=1e-9)
    assert np.all(post[rows] == 0)


def test_the_first_rating_and_an_empty_history(movies):
    steps = dob.Steps(movies, np.array([0, 1]))
    seen = np.zeros(len(movies.ids), bool)
    np.testing.assert_allclose(dob.label_posterior(steps, movies, np.array([], np.int64)),
                               steps.rest(seen))
    one = dob.label_posterior(steps, movies, np.array([5]))
    for j in (int(movies.successors[5, 0]), 9, 300):
        np.testing.assert_allclose(one[j], _enumerated(steps, movies, [5], j), rtol=1e-9)


def test_a_window_shorter_than_the_history_changes_little(movies):
    # Only the last `window` rows are summed over; the row before them stands for the
    # walk's movie before them. On a six-row history (two ascending runs of three, which
    # may or may not form one second), a window of three rows moves about 1% of the
    # posterior's mass (total variation) from the sum over all six.
    steps = dob.Steps(movies, np.array([7, 4]))
    chain = _chain(movies, 40, 6)
    rows = np.array(sorted(chain[:3], key=lambda x: movies.ids[x])
                    + sorted(chain[3:], key=lambda x: movies.ids[x]))
    whole = dob.label_posterior(steps, movies, rows, window=6)
    short = dob.label_posterior(steps, movies, rows, window=3)
    distance = np.abs(whole / whole.sum() - short / short.sum()).sum() / 2
    assert 0 < distance < 0.03


def _last_second_enumerated(steps, movies, rows, label, kept):
    """P(label, rows) for --context_before_label_second's test label by enumeration:
    every walk of rows (as _enumerated) whose last row ends its second, then a gap and one
    or two movies in one second (every movie x as the other, below min_rating or kept
    with a smaller id), the label the second's largest-id kept movie."""
    m = len(movies.ids)
    total = 0.0
    for order in itertools.permutations(rows):
        for gaps in itertools.product((False, True), repeat=len(rows) - 1):
            second = np.concatenate([[0], np.cumsum(gaps)])
            data = sorted(range(len(order)), key=lambda i: (second[i], movies.ids[order[i]]))
            if [order[i] for i in data] != list(rows):
                continue
            p = _walk_probability(steps, order, gaps)
            seen = np.zeros(m, bool)
            seen[list(order)] = True

            def step(prev, x, walked, gap):
                within = steps.within(prev, walked)[x]
                if gap:
                    return P_NEW * steps.rest(walked)[x] + (
                        1 - P_NEW) * (1 - syn.P_ZERO_GAP) * within
                return (1 - P_NEW) * syn.P_ZERO_GAP * within

            alone = step(order[-1], label, seen, True)
            pair = 0.0
            for x in range(m):
                if seen[x] or x == label:
                    continue
                ok = (1 - kept[x]) + kept[x] * (movies.ids[x] < movies.ids[label])
                with_x = seen.copy()
                with_x[x] = True
                with_label = seen.copy()
                with_label[label] = True
                pair += ok * (step(order[-1], x, seen, True) * step(x, label, with_x, False)
                              + step(order[-1], label, seen, True)
                              * step(label, x, with_label, False))
            total += p * kept[label] * (alone + pair)
    return total


def test_last_second_posterior_is_the_sum_over_walks():
    movies = syn.make_movies(syn.Config(num_users=5, num_movies=40))
    steps = dob.Steps(movies, np.array([7, 4]))
    kept = dob.kept_probability(movies, 2.0)
    assert np.all((0.8 < kept) & (kept < 1.0))
    chain = _chain(movies, 5, 3)
    rows = sorted(chain[:2], key=lambda x: movies.ids[x])
    post = dob.second_posterior(steps, movies, np.array(rows), kept)
    labels = [j for j in range(len(movies.ids)) if j not in rows]
    want = np.array([_last_second_enumerated(steps, movies, rows, j, kept) for j in labels])
    np.testing.assert_allclose(post[labels], want, rtol=1e-9)
    assert np.all(post[rows] == 0)


def test_kept_probability_matches_the_generators_stars():
    cfg = syn.Config(num_users=400, num_movies=60)
    movies = syn.make_movies(cfg)
    counts = syn.ratings_counts(cfg)
    _, ids, stars, _, _ = syn.make_block(cfg, movies, 1, counts)
    rows = np.searchsorted(movies.ids, ids)
    rated = np.bincount(rows, minlength=len(movies.ids))
    many = rated >= 200
    assert many.sum() >= 10
    for min_rating in (2.0, 3.0, 4.0):
        kept = dob.kept_probability(movies, min_rating)[many]
        share = np.bincount(rows, weights=stars >= min_rating, minlength=len(movies.ids))
        # Per movie, the share of ratings kept against the formula, in binomial standard
        # errors: a wrong formula (say, without the quality-following draws) moves them
        # by several.
        z = (share[many] / rated[many] - kept) / np.sqrt(kept * (1 - kept) / rated[many])
        assert abs(z.mean()) < 0.6 and z.std() < 1.5 and np.abs(z).max() < 4, min_rating
