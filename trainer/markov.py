"""Counted successors: the next movie from the last few, by how often it followed them.

Over the train split, R[i, j] counts the examples whose label is movie j while movie i
is the b-th last movie of their context (b = 0 the last one), each weighted decay**b,
and each row is divided by its total plus `smoothing`:

    R[i, j] = sum_b decay^b #(i b-th last, label j) / (sum_j' sum_b decay^b #(...) + smoothing)

Only each row's `top` largest entries are kept (Successors: [V, top] indices and
weights; 100 lost nothing on ML-100K's validation, where the median movie has 58
successors). A query scores candidate j with S_j = sum_b decay^b R[i_b, j] over its own
last `last` movies i_b: a first-order Markov chain over skip-grams, mixed over the last
movies (a mixture of their successor distributions, not a product).

Two uses: evaluate.markov_baseline ranks by S alone (a baseline row of
bench/quality.py), and `mix` blends S into a model's scores (--markov_weight).
DEFAULT_LAST, DEFAULT_DECAY, DEFAULT_SMOOTHING and the weight were chosen on validation
(bench/README_quality.md).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow as tf

from beam_jobs import schema

DEFAULT_LAST = 3
DEFAULT_DECAY = 0.5
DEFAULT_SMOOTHING = 5.0
DEFAULT_TOP = 100
# Pairs buffered before they are merged (each pair: an int64 key and a float64 weight);
# the buffer may also grow to the merged pairs' count, so the merges' total cost stays
# O(n log n) however many distinct pairs there are.
_MERGE_EVERY = 4_000_000


@dataclasses.dataclass(frozen=True)
class Successors:
    """R's largest entries by row. index: int64 [V, top], vocabulary positions (-1:
    none; a row's entries by decreasing weight); weight: float32 [V, top] (0 where
    index is -1). Rows follow the vocabulary order of the movie_ids it was counted on."""

    index: np.ndarray
    weight: np.ndarray
    last: int
    decay: float

    def dense(self) -> np.ndarray:
        """R as float32 [V, V] (tests and small vocabularies)."""
        size = self.index.shape[0]
        out = np.zeros((size, size), np.float32)
        rows, cols = np.nonzero(self.index >= 0)
        out[rows, self.index[rows, cols]] = self.weight[rows, cols]
        return out


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


def _merge(keys: list, weights: list) -> tuple[np.ndarray, np.ndarray]:
    """Sums the weights of equal keys: (unique keys, their weights)."""
    unique, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    return unique, np.bincount(inverse, weights=np.concatenate(weights))


def count_successors(
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    movie_ids: Sequence[int],
    last: int = DEFAULT_LAST,
    decay: float = DEFAULT_DECAY,
    smoothing: float = DEFAULT_SMOOTHING,
    top: int = DEFAULT_TOP,
) -> Successors:
    """R (module doc) from the train split, sparse: memory grows with the distinct
    (movie, next movie) pairs seen, not with V^2.

    Args:
      batches: (contexts int64 [B, L] right-padded with 0, labels int64 [B]) pairs.
      movie_ids: the vocabulary [V]; R's rows and columns follow its order. Ids
        outside it (in contexts or labels) are not counted.
      last: how many of each context's last movies count (>= 1).
      decay: weight ratio between one of them and the next older one (> 0).
      smoothing: added to every row's total (>= 0): a movie followed a few times
        only gets smaller weights than one whose successors are well counted.
      top: entries kept per row (>= 1).
    """
    if last < 1 or decay <= 0 or smoothing < 0 or top < 1:
        raise ValueError(f"need last >= 1, decay > 0, smoothing >= 0, top >= 1; got {last}, "
                         f"{decay}, {smoothing}, {top}")
    size = len(movie_ids)
    keys, weights, pending, merged_size = [], [], 0, 0
    for contexts, labels in batches:
        label = vocab_index(movie_ids, np.reshape(labels, [-1]))
        previous = vocab_index(movie_ids, last_movies(contexts, last))  # [B, last]
        for b in range(last):
            ok = (previous[:, b] >= 0) & (label >= 0)
            keys.append(previous[ok, b] * size + label[ok])
            weights.append(np.full(int(ok.sum()), decay ** b))
            pending += keys[-1].size
        if pending > max(_MERGE_EVERY, merged_size):
            merged = _merge(keys, weights)
            keys, weights, pending = [merged[0]], [merged[1]], 0
            merged_size = merged[0].size
    key, weight = _merge(keys, weights) if keys else (np.zeros(0, np.int64), np.zeros(0))
    row, col = key // size, key % size
    weight = weight / (np.bincount(row, weights=weight, minlength=size)[row] + smoothing)
    # Each row's entries by decreasing weight (ties: lower index first), then the first top.
    order = np.lexsort((col, -weight, row))
    row, col, weight = row[order], col[order], weight[order]
    rank = np.arange(row.size) - np.searchsorted(row, row)  # place within its row
    keep = rank < top
    index = np.full((size, top), -1, np.int64)
    out = np.zeros((size, top), np.float32)
    index[row[keep], rank[keep]] = col[keep]
    out[row[keep], rank[keep]] = weight[keep]
    return Successors(index, out, last, decay)


def successor_scores(successors_index: tf.Tensor, successors_weight: tf.Tensor,
                     context: tf.Tensor, context_index: tf.Tensor, last: int,
                     decay: float) -> tf.Tensor:
    """S for a batch: float32 [B, V].

    Args:
      successors_index, successors_weight: Successors.index / .weight as tensors [V, top].
      context: int64 [B, L] raw ids, right-padded with 0.
      context_index: int64 [B, L]: their vocabulary positions, -1 for pads and unknown
        ids (an unknown id keeps its place and counts nothing, as when counting).
      last, decay: as counted.
    """
    vocab_size = tf.shape(successors_index, out_type=tf.int64)[0]
    batch = tf.shape(context_index, out_type=tf.int64)[0]
    length = tf.reduce_sum(tf.cast(context != schema.PAD_MOVIE_ID, tf.int64), axis=1)
    scores = tf.zeros(tf.stack([batch * vocab_size]), tf.float32)
    for b in range(last):
        at = length - 1 - b
        movie = tf.gather(context_index, tf.maximum(at, 0), batch_dims=1)  # [B]
        present = (at >= 0) & (movie >= 0)
        index = tf.gather(successors_index, tf.maximum(movie, 0))  # [B, top]
        weight = tf.gather(successors_weight, tf.maximum(movie, 0))
        weight *= tf.cast(present, tf.float32)[:, None] * (decay ** b)
        flat = tf.range(batch)[:, None] * vocab_size + tf.maximum(index, 0)
        scores += tf.math.unsorted_segment_sum(
            tf.reshape(tf.where(index >= 0, weight, 0.0), [-1]), tf.reshape(flat, [-1]),
            batch * vocab_size)
    return tf.reshape(scores, tf.stack([batch, vocab_size]))


def mix(model_scores: tf.Tensor, successor: tf.Tensor, weight: float) -> tf.Tensor:
    """A model's scores [B, V] blended with successor_scores [B, V]: float32 [B, V],

        log((softmax(model_scores) + weight * S / sum(S)) / (1 + weight))

    the log of a mixture of the model's next-movie distribution and the counted one (a
    query none of whose last movies has counted successors keeps the model's alone,
    renormalised: the same ranking). A mixture, not a product: either can put a movie
    in the top k on its own.
    """
    model = tf.nn.softmax(tf.cast(model_scores, tf.float32), axis=1)
    total = tf.reduce_sum(successor, axis=1, keepdims=True)
    counted = tf.math.divide_no_nan(successor, total)
    return tf.math.log((model + weight * counted) / (1.0 + weight))
