"""Full-vocabulary retrieval evaluation: top-k accuracy, NDCG@k and MRR.

Every metric comes from one number per query: the rank of its label among
all V vocabulary candidates,

    rank = 1 + #{candidates whose score is strictly greater than the label's}

(ties count in the label's favour: the "min" rank). This is exactly the rule of
`tfrs.metrics.FactorizedTopK` as the tutorial uses it (score-based, i.e. no
`true_candidate_ids`): it appends the label score to the top-k scores and asks
`tf.math.in_top_k`, which counts a target tied across the top-k boundary as a
hit. So `top_k` here equals FactorizedTopK's `top_k_categorical_accuracy`
(= Recall@k with one label), and `top_1`, `mrr` and `ndcg_10` agree with it
(top_1 is the fraction of queries with rank 1, etc.). Two differences, both on
purpose:

* The label's score is read from the same [B, V] score matrix it is compared
  against, so the label never outranks itself through rounding (FactorizedTopK
  recomputes it with a separate reduce_sum).
* A query whose score row contains a non-finite value is a miss (rank = inf),
  like `tf.math.in_top_k`; a diverged model therefore scores 0, not 1.

Because ties favour the label, a degenerate model (all scores equal) would get
top_1 = 1.0; the extra key `label_tie_rate` (fraction of queries whose label
score equals another candidate's) makes that visible. It is ~0 for a trained
float model.

With one relevant item per query: NDCG@k = 1 / log2(rank + 1) if rank <= k
else 0 (the ideal DCG is 1), MRR = mean(1 / rank).

Implementation: one tf.function embeds the whole vocabulary [V, d] (once per
call: the embeddings change while training), then loops over the dataset
computing per batch scores = query [B, d] @ cand^T -> [B, V], reduced straight
to ranks. No top_k is needed, and only running sums leave the loop: test
queries are streamed, never held at once. Memory per step is B x V x 4 bytes
(1024 x 62k for ML-25M = 250 MB).

Speed: the arithmetic is small (6k ML-1M test queries: ~0.03 s of GRU, ~0.07 s
of scoring on 2 CPU cores); tracing the function took 1-2 s. So the traced
function is kept (a small LRU keyed on the towers, the vocabulary and the
options) and reused by later calls, e.g. every epoch's evaluation: the weights
are read when it runs, never baked in, and the dataset is an argument (any
dataset with the same element spec reuses the trace). XLA on the scoring part
measured 0.7-1.7x across runs (bench/README_train.md), i.e. noise on a shared
machine, so it is not used (the towers' hash-table lookups cannot be
XLA-compiled anyway).

Distribution: this is a plain single-device computation. Called inside a
`strategy.scope()` (cross-replica context) it reads the mirrored variables'
values and gives the same numbers as without a strategy; there is no
cross-replica reduction, so nothing is multiplied by the worker count (the
Keras MultiWorker evaluate() pitfall in docs/design.md). Under MultiWorker every
worker that calls it on the full test set gets identical numbers.
"""
from __future__ import annotations

import collections
import hashlib
import math
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from beam_jobs import schema
from trainer import markov

DEFAULT_KS = (1, 5, 10, 50, 100)

# Candidate embeddings are computed in chunks so a huge vocabulary never needs
# one giant candidate-tower call.
_CANDIDATE_CHUNK = 65536

# Traced evaluation functions kept for reuse (see module doc), most recent
# last. Bounded so towers no longer used are eventually released.
_TRACED: collections.OrderedDict = collections.OrderedDict()
_TRACED_MAX = 4


def candidate_embeddings(candidate_model: tf.keras.Model, movie_ids: Sequence[int]) -> tf.Tensor:
    """Embeds the whole vocabulary.

    Args:
      candidate_model: int64 ids [N] -> float32 [N, d].
      movie_ids: the vocabulary, [V] ints.

    Returns:
      float32 [V, d], row i for movie_ids[i].
    """
    return _embed(candidate_model, tf.constant(np.asarray(movie_ids, dtype=np.int64)))


def _embed(candidate_model: tf.keras.Model, ids: tf.Tensor) -> tf.Tensor:
    """candidate_embeddings of int64 ids [V] (static V), eagerly or in a tf.function."""
    size = int(ids.shape[0])
    chunks = [
        tf.cast(candidate_model(ids[i : i + _CANDIDATE_CHUNK]), tf.float32)
        for i in range(0, size, _CANDIDATE_CHUNK)
    ]
    embeddings = tf.concat(chunks, axis=0)
    if embeddings.shape.rank != 2:
        raise ValueError(
            f"candidate_model must map ids [N] to embeddings [N, d], got shape {embeddings.shape}"
        )
    return embeddings


def _vocab_table(movie_ids: np.ndarray) -> tf.lookup.StaticHashTable:
    """movie id -> its index in movie_ids (int64), -1 for ids outside the vocabulary."""
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(movie_ids, tf.int64), tf.range(len(movie_ids), dtype=tf.int64)
        ),
        default_value=-1,
    )


def _check_vocab(movie_ids: Sequence[int]) -> np.ndarray:
    ids = np.asarray(movie_ids, dtype=np.int64).reshape(-1)
    if ids.size == 0:
        raise ValueError("movie_ids is empty: nothing to rank")
    if np.unique(ids).size != ids.size:
        raise ValueError("movie_ids has duplicate ids; each candidate must appear once")
    return ids


def _check_ks(ks: Sequence[int], ndcg_k: int) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1 or ndcg_k < 1:
        raise ValueError(f"ks and ndcg_k must be positive, got ks={ks} ndcg_k={ndcg_k}")
    return ks


def _batch_ids(features: Mapping[str, tf.Tensor], table: tf.lookup.StaticHashTable):
    """Reads and checks one batch: context ids [B, L], label index [B]."""
    context = tf.cast(features[schema.CONTEXT_MOVIE_ID], tf.int64)
    label = tf.cast(features[schema.LABEL_MOVIE_ID], tf.int64)
    # Labels must be scalars per example; a [B, 1] label is flattened here
    # (and checked to really be one per row).
    label = tf.reshape(label, [-1])
    label_index = table.lookup(label)
    checks = [
        tf.debugging.Assert(
            tf.equal(tf.size(label), tf.shape(context)[0]),
            [f"{schema.LABEL_MOVIE_ID} must hold one id per example; label ids and contexts:",
             tf.size(label), tf.shape(context)[0]],
        ),
        tf.debugging.Assert(
            tf.reduce_all(label_index >= 0),
            [f"{schema.LABEL_MOVIE_ID} not in movie_ids (vocabulary and data do not match):",
             tf.boolean_mask(label, label_index < 0)],
        ),
    ]
    # Without the dependency the gathers that use label_index may run first and
    # fail with an anonymous "indices[0] = -1" error.
    with tf.control_dependencies(checks):
        label_index = tf.identity(label_index)
    return context, label_index


def _excluded_context(context, label_index, table):
    """Which context positions to take out of the ranking.

    Returns:
      (context vocab index [B, L] clipped to >= 0, bool mask [B, L]): True for
      in-vocabulary context movies other than the label, first occurrence
      only (so a repeated id is removed once).
    """
    index = table.lookup(context)
    length = tf.shape(context)[1]
    # repeated[b, i]: some position j < i of row b holds the same id as i.
    same = tf.equal(index[:, :, None], index[:, None, :])  # [B, L, L]
    lower = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)  # j <= i
    before = lower & ~tf.eye(length, dtype=tf.bool)  # j < i
    repeated = tf.reduce_any(same & before[None], axis=2)
    mask = (index >= 0) & (index != label_index[:, None]) & ~repeated
    return tf.maximum(index, 0), mask


def _seen_mask(features: Mapping[str, tf.Tensor], label_index, table, vocab_size: int):
    """bool [B, V]: True for the vocabulary entries each query's user has already
    rated (features["seen_movie_id"], int64 SparseTensor [B, n]), never the label.

    A scatter into a [B, V] mask (the size of the score matrix) rather than a
    gather of the seen ids' scores: a heavy user has thousands of seen ids, and
    a mask counts a repeated id once without an n x n comparison.
    """
    if schema.SEEN_MOVIE_ID not in features:
        raise ValueError(f"excluding seen movies needs the {schema.SEEN_MOVIE_ID!r} feature in "
                         "the evaluation data (validation/test examples carry it since the Beam "
                         "job wrote a validation split)")
    seen = features[schema.SEEN_MOVIE_ID]
    index = table.lookup(tf.cast(seen.values, tf.int64))
    known = index >= 0
    where = tf.stack([tf.boolean_mask(seen.indices[:, 0], known), tf.boolean_mask(index, known)],
                     axis=1)
    batch = tf.shape(label_index, out_type=tf.int64)[0]
    mask = tf.tensor_scatter_nd_update(tf.zeros(tf.stack([batch, vocab_size]), tf.bool), where,
                                       tf.ones(tf.shape(where)[:1], tf.bool))
    return mask & ~tf.cast(tf.one_hot(label_index, vocab_size, dtype=tf.int8), tf.bool)


def _sums(rank: tf.Tensor, ks: tuple[int, ...], ndcg_k: int) -> tuple[tf.Tensor, ...]:
    """Per-batch metric sums from float64 ranks [B] (inf = miss)."""
    hits = tf.stack([tf.reduce_sum(tf.cast(rank <= k, tf.float64)) for k in ks])
    reciprocal = tf.reduce_sum(1.0 / rank)
    ln2 = tf.constant(math.log(2.0), tf.float64)
    # 1 / log2(rank + 1); a miss (rank = inf) gives 0 in both branches, no NaN.
    gain = tf.where(rank <= ndcg_k, ln2 / tf.math.log(rank + 1.0), 0.0)
    return hits, reciprocal, tf.reduce_sum(gain)


def _make_run(ranks_fn, ks, ndcg_k, prepare=lambda: None):
    """A tf.function dataset -> metric sums, running ranks_fn(features, prepare())
    over every batch (prepare runs once per call, e.g. to embed the candidates)."""

    # autograph=False with an explicit tf.while_loop over get_next_as_optional():
    # the loop must not depend on autograph reading this file's source. When the
    # source changed on disk during a run, autograph fell back to a Python `for`
    # over the dataset, which never finished (seen twice, memory growing to 10 GB).
    # An iterator-driven loop (not dataset.reduce) so the towers run on the
    # function's device (a GPU if any) instead of tf.data's host threads.
    @tf.function(autograph=False)
    def run(dataset):
        state = prepare()
        iterator = iter(dataset)

        def body(hits, rr, ndcg, ties, n, batch):
            rank, tied = ranks_fn(batch.get_value(), state)
            b_hits, b_rr, b_ndcg = _sums(rank, ks, ndcg_k)
            return (
                hits + b_hits,
                rr + b_rr,
                ndcg + b_ndcg,
                ties + tf.reduce_sum(tf.cast(tied, tf.float64)),
                n + tf.cast(tf.size(rank), tf.float64),
                iterator.get_next_as_optional(),
            )

        zero = tf.constant(0.0, tf.float64)
        start = (tf.zeros([len(ks)], tf.float64), zero, zero, zero, zero,
                 iterator.get_next_as_optional())
        *sums, _ = tf.while_loop(lambda *args: args[-1].has_value(), body, start)
        return tuple(sums)

    return run


def _finish(run, dataset: tf.data.Dataset, ks, ndcg_k) -> dict:
    """Runs a _make_run function over dataset and averages the sums."""
    try:
        hits, rr, ndcg, ties, n = (t.numpy() for t in run(dataset))
    except tf.errors.InvalidArgumentError as e:
        # Our own checks: surface their one-line message, not the graph trace.
        failed = [line for line in e.message.splitlines() if "assertion failed:" in line]
        if not failed:
            raise
        raise ValueError(f"evaluation data: {failed[0].strip()}") from e
    if n == 0:
        raise ValueError("evaluation dataset is empty")
    metrics = {f"top_{k}": float(h / n) for k, h in zip(ks, hits, strict=True)}
    metrics[f"ndcg_{ndcg_k}"] = float(ndcg / n)
    metrics["mrr"] = float(rr / n)
    metrics["label_tie_rate"] = float(ties / n)
    metrics["num_queries"] = int(n)
    return metrics


def _label_ranks(scores, features, context, label_index, table, vocab_size: int,
                 exclude_context: bool, exclude_seen: bool, position=None):
    """(rank float64 [B], tied bool [B]) of each query's label among its scores [B, V].

    rank = 1 + the candidates scored above the label (inf where a score is not
    finite), leaving out the excluded ones; tied: whether another candidate has the
    label's score (ties count in the label's favour). position: int64 [V] or None: a
    strict order breaking score ties instead (a tied candidate of lower position
    ranks above the label; tied is then False).
    """
    label_score = tf.gather(scores, label_index, batch_dims=1)[:, None]  # [B, 1]
    above = scores > label_score  # [B, V]
    level = tf.equal(scores, label_score)
    if position is not None:
        label_position = tf.gather(position, label_index)[:, None]
        above |= level & (position[None, :] < label_position)
        level &= tf.equal(position[None, :], label_position)  # the label alone
    greater = tf.reduce_sum(tf.cast(above, tf.int64), axis=1)  # [B]
    # Ties with other candidates (the label equals itself once).
    tied = tf.reduce_sum(tf.cast(level, tf.int64), axis=1) - 1
    if exclude_seen:  # the context is part of what was seen
        seen = _seen_mask(features, label_index, table, vocab_size)
        greater -= tf.reduce_sum(tf.cast(seen & above, tf.int64), axis=1)
        tied -= tf.reduce_sum(tf.cast(seen & level, tf.int64), axis=1)
    elif exclude_context:
        index, mask = _excluded_context(context, label_index, table)
        greater -= tf.reduce_sum(tf.cast(mask & tf.gather(above, index, batch_dims=1), tf.int64), 1)
        tied -= tf.reduce_sum(tf.cast(mask & tf.gather(level, index, batch_dims=1), tf.int64), 1)
    finite = tf.reduce_all(tf.math.is_finite(scores), axis=1)
    rank = tf.where(finite, tf.cast(greater, tf.float64) + 1.0, np.inf)
    return rank, finite & (tied > 0)


def _retrieval_run(query_model, candidate_model, ids: np.ndarray, ks, ndcg_k, exclude_context,
                   exclude_seen, successors: markov.Successors | None = None,
                   markov_weight: float = 0.0):
    """The traced retrieval evaluation for these towers/vocabulary/options, built
    once and then reused (LRU of _TRACED_MAX). The key holds the towers' (and the
    successors') ids: the cached function references them, so they stay alive (and
    their ids unique) while cached."""
    if not markov_weight:
        successors = None
    key = (id(query_model), id(candidate_model), hashlib.sha256(ids.tobytes()).hexdigest(),
           ks, ndcg_k, exclude_context, exclude_seen, id(successors), float(markov_weight))
    run = _TRACED.get(key)
    if run is not None:
        _TRACED.move_to_end(key)
        return run
    table = _vocab_table(ids)
    ids_t = tf.constant(ids)
    if successors is not None:
        _check_successors(successors, ids)
        blend_index, blend_weight = tf.constant(successors.index), tf.constant(successors.weight)

    def prepare():
        return _embed(candidate_model, ids_t)  # [V, d], fresh every call

    def ranks(features, cand):
        context, label_index = _batch_ids(features, table)
        query = tf.cast(query_model(context), tf.float32)  # [B, d]
        scores = tf.matmul(query, cand, transpose_b=True)  # [B, V]
        if successors is not None:
            scores = markov.mix(scores, markov.successor_scores(
                blend_index, blend_weight, context, table.lookup(context), successors.last,
                successors.decay), markov_weight)
        return _label_ranks(scores, features, context, label_index, table, ids.size,
                            exclude_context, exclude_seen)

    run = _make_run(ranks, ks, ndcg_k, prepare)
    _TRACED[key] = run
    while len(_TRACED) > _TRACED_MAX:
        _TRACED.popitem(last=False)
    return run


def evaluate_retrieval(
    query_model: tf.keras.Model,
    candidate_model: tf.keras.Model,
    dataset: tf.data.Dataset,
    movie_ids: Sequence[int],
    ks: Sequence[int] = DEFAULT_KS,
    *,
    exclude_context: bool = False,
    exclude_seen: bool = False,
    ndcg_k: int = 10,
    successors: markov.Successors | None = None,
    markov_weight: float = 0.0,
) -> dict:
    """Ranks each query's label among the whole vocabulary (see module doc).

    Args:
      query_model: int64 context ids [B, L] (0 = pad) -> float32 [B, d].
      candidate_model: int64 movie ids [N] -> float32 [N, d].
      dataset: batches of feature dicts with "context_movie_id" int64 [B, L]
        and "label_movie_id" int64 [B] (other keys are ignored).
      movie_ids: the candidate vocabulary, [V] distinct ints. Every label must
        be in it (otherwise a ValueError lists the missing ones).
      ks: cut-offs for top-k accuracy.
      exclude_context: remove the movies of each query's own context from its
        ranking (the label itself is never removed, even if it is in the
        context: a re-watch still counts).
      exclude_seen: remove every movie the query's user rated before the label
        (the dataset's "seen_movie_id", int64 SparseTensor [B, n]; see
        data.make_eval_dataset) from its ranking, never the label. It covers
        the context, so exclude_context adds nothing to it. Right when users
        never consume an item twice (MovieLens: nobody re-rates a movie), so a
        seen movie can never be the next one; wrong for re-watches or re-buys.
      ndcg_k: cut-off of NDCG.
      successors, markov_weight: with a weight > 0, rank by markov.mix of the
        towers' scores and these successors' (from markov.count_successors over
        the same movie_ids): --markov_weight.

    Returns:
      {"top_<k>": ..., "ndcg_<ndcg_k>": ..., "mrr": ..., "label_tie_rate": ...}
      as Python floats, plus "num_queries" (int).
    """
    ks = _check_ks(ks, ndcg_k)
    ids = _check_vocab(movie_ids)
    if markov_weight and successors is None:
        raise ValueError("markov_weight > 0 needs successors (markov.count_successors)")
    run = _retrieval_run(query_model, candidate_model, ids, ks, ndcg_k, bool(exclude_context),
                         bool(exclude_seen), successors, markov_weight)
    return _finish(run, dataset, ks, ndcg_k)


def popularity_baseline(
    dataset: tf.data.Dataset,
    movie_ids: Sequence[int],
    counts: Sequence[int] | Mapping[int, int],
    ks: Sequence[int] = DEFAULT_KS,
    *,
    exclude_context: bool = False,
    exclude_seen: bool = False,
    ndcg_k: int = 10,
) -> dict:
    """The same metrics for "recommend the most-watched movies" to everyone.

    Ties in `counts` are broken by vocabulary order (earlier in movie_ids
    ranks higher), so the ranking is a strict total order and
    label_tie_rate is 0.

    Args:
      dataset, movie_ids, ks, exclude_context, exclude_seen, ndcg_k: as
        evaluate_retrieval.
      counts: train-split counts, either aligned with movie_ids ([V]) or a
        mapping movie id -> count (missing ids count 0).

    Returns:
      The same dict as evaluate_retrieval.
    """
    ks = _check_ks(ks, ndcg_k)
    ids = _check_vocab(movie_ids)
    # position[i]: how many candidates rank above vocabulary entry i. The
    # ranking is the same for every query, so no score matrix is needed.
    position = tf.constant(_popularity_position(ids, counts))
    table = _vocab_table(ids)

    def ranks(features, _):
        context, label_index = _batch_ids(features, table)
        label_position = tf.gather(position, label_index)  # [B]
        above = label_position
        if exclude_seen:
            seen = _seen_mask(features, label_index, table, ids.size)
            seen_above = seen & (position[None, :] < label_position[:, None])
            above -= tf.reduce_sum(tf.cast(seen_above, tf.int64), axis=1)
        elif exclude_context:
            index, mask = _excluded_context(context, label_index, table)
            context_above = mask & (tf.gather(position, index) < label_position[:, None])
            above -= tf.reduce_sum(tf.cast(context_above, tf.int64), axis=1)
        return tf.cast(above, tf.float64) + 1.0, tf.zeros_like(above, tf.bool)

    return _finish(_make_run(ranks, ks, ndcg_k), dataset, ks, ndcg_k)


def _popularity_position(ids: np.ndarray, counts) -> np.ndarray:
    """int64 [V]: each vocabulary entry's place in the popularity order (most counted
    first, ties by vocabulary order). counts: aligned with ids, or a mapping id -> count."""
    if isinstance(counts, Mapping):
        counts = [counts.get(int(i), 0) for i in ids]
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    if counts.size != ids.size:
        raise ValueError(f"counts has {counts.size} entries but movie_ids has {ids.size}")
    order = np.lexsort((np.arange(ids.size), -counts))  # by count desc, then vocab order
    position = np.empty(ids.size, np.int64)
    position[order] = np.arange(ids.size)
    return position


def markov_baseline(
    dataset: tf.data.Dataset,
    movie_ids: Sequence[int],
    successors: markov.Successors,
    counts: Sequence[int] | Mapping[int, int],
    ks: Sequence[int] = DEFAULT_KS,
    *,
    exclude_context: bool = False,
    exclude_seen: bool = False,
    ndcg_k: int = 10,
) -> dict:
    """The same metrics for trainer/markov.py's counting baseline: candidates ranked by
    markov.successor_scores of the query's context; ties (movies none of its last
    movies was followed by) broken by popularity (`counts`), then vocabulary order, so
    label_tie_rate is 0.

    Args:
      dataset, movie_ids, ks, exclude_context, exclude_seen, ndcg_k: as
        evaluate_retrieval.
      successors: from markov.count_successors over the same movie_ids.
      counts: as popularity_baseline.

    Returns:
      The same dict as evaluate_retrieval.
    """
    ks = _check_ks(ks, ndcg_k)
    ids = _check_vocab(movie_ids)
    _check_successors(successors, ids)
    position = tf.constant(_popularity_position(ids, counts))
    table = _vocab_table(ids)
    index, weight = tf.constant(successors.index), tf.constant(successors.weight)

    def ranks(features, _):
        context, label_index = _batch_ids(features, table)
        scores = markov.successor_scores(index, weight, context, table.lookup(context),
                                         successors.last, successors.decay)
        return _label_ranks(scores, features, context, label_index, table, ids.size,
                            exclude_context, exclude_seen, position)

    return _finish(_make_run(ranks, ks, ndcg_k), dataset, ks, ndcg_k)


def _check_successors(successors: markov.Successors, ids: np.ndarray) -> None:
    if successors.index.shape[0] != ids.size:
        raise ValueError(f"successors has {successors.index.shape[0]} rows for {ids.size} movies")
