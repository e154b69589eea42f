"""A counting baseline: the next movie from the last few, by how often it followed them.

Over the train split, R[i, j] counts the examples whose label is movie j while movie i
is the b-th last movie of their context (b = 0 the last one), each weighted decay**b,
and each row is divided by its total plus `smoothing`:

    R[i, j] = sum_b decay^b #(i b-th last, label j) / (sum_j' sum_b decay^b #(...) + smoothing)

A query scores candidate j with sum_b decay^b R[i_b, j] over its own last `last` movies
i_b: a first-order Markov chain over skip-grams, mixed over the last movies (a mixture
of their successor distributions, not a product). evaluate.markov_baseline ranks by
these scores, breaking ties (every movie none of the last movies was followed by scores
0) by popularity, then vocabulary order. DEFAULT_LAST, DEFAULT_DECAY and
DEFAULT_SMOOTHING were chosen on validation (bench/README_quality.md).

The matrix is dense, V x V float32: 10 MB for ML-100K's 1.7K movies, 60 MB for
ML-1M's 3.9K; refused above MAX_MOVIES (a sparse top-N per row would be needed there).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from beam_jobs import schema

DEFAULT_LAST = 3
DEFAULT_DECAY = 0.5
DEFAULT_SMOOTHING = 5.0
MAX_MOVIES = 20_000  # 1.6 GB of float32


def vocab_index(movie_ids: Sequence[int], ids: np.ndarray) -> np.ndarray:
    """Each of `ids` (any shape) -> its position in movie_ids, -1 if absent (pad, unknown)."""
    vocab = np.asarray(movie_ids, np.int64)
    order = np.argsort(vocab, kind="stable")
    ids = np.asarray(ids, np.int64)
    pos = np.clip(np.searchsorted(vocab[order], ids), 0, vocab.size - 1)
    return np.where(vocab[order][pos] == ids, order[pos], -1)


def last_movies(contexts: np.ndarray, last: int) -> np.ndarray:
    """Right-padded contexts [N, L] (pad id 0) -> [N, last]: the last real movie's id
    first, then the one before it, ...; 0 where a context holds fewer."""
    contexts = np.asarray(contexts, np.int64)
    length = (contexts != schema.PAD_MOVIE_ID).sum(axis=1)
    out = np.zeros((contexts.shape[0], last), np.int64)
    rows = np.arange(contexts.shape[0])
    for b in range(last):
        at = length - 1 - b
        ok = at >= 0
        out[ok, b] = contexts[rows[ok], at[ok]]
    return out


def successor_matrix(
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    movie_ids: Sequence[int],
    last: int = DEFAULT_LAST,
    decay: float = DEFAULT_DECAY,
    smoothing: float = DEFAULT_SMOOTHING,
) -> np.ndarray:
    """R (module doc) from the train split.

    Args:
      batches: (contexts int64 [B, L] right-padded with 0, labels int64 [B]) pairs.
      movie_ids: the vocabulary [V]; rows and columns of R follow its order. Ids
        outside it (in contexts or labels) are not counted.
      last: how many of each context's last movies count (>= 1).
      decay: weight ratio between one of them and the next older one (> 0).
      smoothing: added to every row's total (>= 0): a movie followed a few times
        only gets smaller scores than one whose successors are well counted.

    Returns:
      float32 [V, V]; a row of zeros for a movie never in the last `last` of a context.
    """
    vocab_size = len(movie_ids)
    if vocab_size > MAX_MOVIES:
        raise ValueError(f"the Markov baseline keeps a dense {vocab_size} x {vocab_size} "
                         f"matrix; refused above {MAX_MOVIES} movies")
    if last < 1 or decay <= 0 or smoothing < 0:
        raise ValueError(f"need last >= 1, decay > 0, smoothing >= 0; got {last}, {decay}, "
                         f"{smoothing}")
    counts = np.zeros((vocab_size, vocab_size), np.float64)
    for contexts, labels in batches:
        label = vocab_index(movie_ids, np.reshape(labels, [-1]))
        previous = vocab_index(movie_ids, last_movies(contexts, last))  # [B, last]
        for b in range(last):
            ok = (previous[:, b] >= 0) & (label >= 0)
            np.add.at(counts, (previous[ok, b], label[ok]), decay ** b)
    return (counts / (counts.sum(axis=1, keepdims=True) + smoothing)).astype(np.float32)
