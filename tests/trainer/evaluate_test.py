"""Tests for trainer.evaluate: hand-computed ranks, agreement with FactorizedTopK."""
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

from beam_jobs import schema
from tests.trainer.towers import hand_towers, tower_cfg
from trainer import evaluate, model


def batches(contexts, labels, batch_size=2):
    return tf.data.Dataset.from_tensor_slices(
        {
            schema.CONTEXT_MOVIE_ID: tf.constant(contexts, tf.int64),
            schema.LABEL_MOVIE_ID: tf.constant(labels, tf.int64),
            # An extra feature, as real batches carry; it must be ignored.
            schema.CONTEXT_MOVIE_RATING: tf.zeros([len(labels), len(contexts[0])]),
        }
    ).batch(batch_size)


# Vocabulary: movies 1..4 with 2-d embeddings (row 0 unused: the pad id).
CANDIDATES = [[0, 0], [1, 0], [0, 1], [1, 1], [-1, 0]]
# Queries are chosen by the first context movie.
QUERIES = [[0, 0], [2, 1], [0, 1], [-1, 0], [0, 0]]
VOCAB = [1, 2, 3, 4]
# Scores (query . candidate) for movies 1, 2, 3, 4:
#   context [1, 0, 0]: q=[2, 1]  -> [2, 1, 3, -2]; label 1 (2): only movie 3 is greater -> rank 2
#   context [2, 3, 0]: q=[0, 1]  -> [0, 1, 1, 0];  label 3 (1): none greater, movie 2 ties -> rank 1
#   context [3, 2, 2]: q=[-1, 0] -> [-1, 0, -1, 1]; label 1 (-1): movies 2, 4 greater -> rank 3,
#                                                   movie 3 ties
CONTEXTS = [[1, 0, 0], [2, 3, 0], [3, 2, 2]]
LABELS = [1, 3, 1]


def test_hand_computed_ranks():
    towers = hand_towers(QUERIES, CANDIDATES)
    got = evaluate.evaluate_retrieval(*towers, batches(CONTEXTS, LABELS), VOCAB, ks=(1, 2, 3))
    # ranks 2, 1, 3
    assert got["top_1"] == pytest.approx(1 / 3)
    assert got["top_2"] == pytest.approx(2 / 3)
    assert got["top_3"] == pytest.approx(1.0)
    assert got["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)
    # NDCG@10 with one relevant item: 1 / log2(rank + 1).
    assert got["ndcg_10"] == pytest.approx((1 / math.log2(3) + 1 + 1 / math.log2(4)) / 3)
    assert got["label_tie_rate"] == pytest.approx(2 / 3)  # queries 2 and 3
    assert got["num_queries"] == 3
    assert all(isinstance(v, float) for k, v in got.items() if k != "num_queries")


def test_ndcg_cutoff():
    towers = hand_towers(QUERIES, CANDIDATES)
    got = evaluate.evaluate_retrieval(*towers, batches(CONTEXTS, LABELS), VOCAB, ndcg_k=2)
    # rank 3 is past the cut-off and gains nothing.
    assert got["ndcg_2"] == pytest.approx((1 / math.log2(3) + 1) / 3)
    assert "ndcg_10" not in got


def test_exclude_context():
    towers = hand_towers(QUERIES, CANDIDATES)
    got = evaluate.evaluate_retrieval(
        *towers, batches(CONTEXTS, LABELS), VOCAB, ks=(1, 2, 3), exclude_context=True
    )
    # context [1, 0, 0], label 1: the only context movie is the label itself,
    #   which is never excluded; pads are not movies -> rank 2 as before.
    # context [2, 3, 0], label 3: movie 2 (tied) leaves -> rank 1, no tie.
    # context [3, 2, 2], label 1: movie 3 (tied) and movie 2 (greater, listed
    #   twice but removed once) leave; movie 4 stays greater -> rank 2.
    assert got["top_1"] == pytest.approx(1 / 3)
    assert got["top_2"] == pytest.approx(1.0)
    assert got["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert got["label_tie_rate"] == 0.0


def test_popularity_baseline():
    # counts for movies 1..4: movies 2 and 4 tie at 5 -> vocabulary order puts
    # 2 first. Ranking: 3 (9), 2 (5), 4 (5), 1 (0).
    counts = [0, 5, 9, 5]
    got = evaluate.popularity_baseline(batches(CONTEXTS, LABELS), VOCAB, counts, ks=(1, 2, 3, 4))
    # labels 1, 3, 1 -> ranks 4, 1, 4
    assert got["top_1"] == pytest.approx(1 / 3)
    assert got["top_3"] == pytest.approx(1 / 3)
    assert got["top_4"] == pytest.approx(1.0)
    assert got["mrr"] == pytest.approx((1 / 4 + 1 + 1 / 4) / 3)
    assert got["ndcg_10"] == pytest.approx((2 / math.log2(5) + 1) / 3)
    assert got["label_tie_rate"] == 0.0
    # Same as a mapping id -> count (movie 1 missing counts 0).
    as_map = evaluate.popularity_baseline(
        batches(CONTEXTS, LABELS), VOCAB, {2: 5, 3: 9, 4: 5}, ks=(1, 2, 3, 4)
    )
    assert as_map == got
    # Vocabulary order decides ties: listing 4 before 2 swaps them.
    swapped = evaluate.popularity_baseline(
        batches([[1, 0, 0]], [2]), [1, 4, 2, 3], [0, 5, 5, 9], ks=(2, 3)
    )
    assert swapped["top_2"] == 0.0 and swapped["top_3"] == 1.0


def test_popularity_exclude_context():
    counts = [0, 5, 9, 5]  # ranking 3, 2, 4, 1
    got = evaluate.popularity_baseline(
        batches(CONTEXTS, LABELS), VOCAB, counts, ks=(1, 2, 3, 4), exclude_context=True
    )
    # context [1,0,0] label 1: nothing removed -> rank 4
    # context [2,3,0] label 3: 2 is below 3 -> rank 1
    # context [3,2,2] label 1: 3 and 2 (once) removed -> 4 above -> rank 2
    assert got["mrr"] == pytest.approx((1 / 4 + 1 + 1 / 2) / 3)
    assert got["top_2"] == pytest.approx(2 / 3)


def _factorized_top_k(query_emb, cand_emb, label_index, ks):
    """The tutorial's metric: FactorizedTopK over a streaming candidate dataset."""
    metric = tfrs.metrics.FactorizedTopK(
        candidates=tf.data.Dataset.from_tensor_slices(cand_emb).batch(16), ks=ks
    )
    for start in range(0, len(label_index), 64):
        rows = slice(start, start + 64)
        metric.update_state(
            tf.constant(query_emb[rows]), tf.constant(cand_emb[label_index[rows]])
        )
    return [float(r) for r in metric.result()]


@pytest.mark.parametrize("integer", [True, False], ids=["integer-ties", "gaussian"])
def test_agrees_with_factorized_top_k(integer):
    # 300 queries, 120 candidates. Integer-valued embeddings make dot products
    # exact (so both sides see the same numbers) and full of ties, which checks
    # the tie rule against tf.math.in_top_k; Gaussian ones have no ties.
    rng = np.random.default_rng(7)
    num_queries, vocab_size, dim = 300, 120, 4
    draw = (lambda s: rng.integers(-2, 3, s)) if integer else rng.standard_normal
    query_emb = draw((num_queries + 1, dim)).astype(np.float32)
    cand_emb = draw((vocab_size + 1, dim)).astype(np.float32)
    towers = hand_towers(query_emb, cand_emb)
    vocab = list(range(1, vocab_size + 1))
    labels = rng.integers(1, vocab_size + 1, num_queries)
    contexts = [[q, 0, 0] for q in range(1, num_queries + 1)]
    ks = (1, 5, 10, 50, 100)
    got = evaluate.evaluate_retrieval(*towers, batches(contexts, labels, 64), vocab, ks)
    want = _factorized_top_k(query_emb[1:], cand_emb[1:], labels - 1, ks)
    assert [got[f"top_{k}"] for k in ks] == pytest.approx(want, abs=1e-6)
    if integer:
        assert got["label_tie_rate"] > 0.3  # the tie rule was exercised
    else:
        assert got["label_tie_rate"] == 0.0


def _random_data(vocab, n=200, length=5, seed=3):
    rng = np.random.default_rng(seed)
    contexts = rng.choice(vocab, (n, length))
    contexts[:, 3:] = 0  # right padding
    return batches(contexts, rng.choice(vocab, n), 32)


def test_real_towers_under_mirrored_strategy():
    vocab = list(range(1, 60))
    data = _random_data(vocab)
    tf.keras.utils.set_random_seed(1)
    plain = evaluate.evaluate_retrieval(*model.build_towers(vocab, 5, tower_cfg(8)), data, vocab)
    tf.keras.utils.set_random_seed(1)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        towers = model.build_towers(vocab, 5, tower_cfg(8))
        inside = evaluate.evaluate_retrieval(*towers, data, vocab)
    outside = evaluate.evaluate_retrieval(*towers, data, vocab)
    assert inside == pytest.approx(plain, abs=1e-9)
    assert outside == pytest.approx(plain, abs=1e-9)
    assert 0.0 < plain["top_50"] < 1.0


def test_candidate_embeddings_not_cached():
    vocab = list(range(1, 60))
    data = _random_data(vocab)
    query_model, candidate_model = model.build_towers(vocab, 5, tower_cfg(8))
    before = evaluate.evaluate_retrieval(query_model, candidate_model, data, vocab)
    table = candidate_model.get_layer("candidate_embedding")
    table.set_weights([w[::-1] for w in table.get_weights()])  # reverse the rows
    after = evaluate.evaluate_retrieval(query_model, candidate_model, data, vocab)
    assert after != before


def test_non_finite_scores_are_misses():
    candidates = [[0, 0], [1, 0], [np.nan, 0], [0, 1]]
    queries = [[0, 0], [1, 1], [1, 1]]
    towers = hand_towers(queries, candidates)
    got = evaluate.evaluate_retrieval(*towers, batches([[1, 0, 0]], [1]), [1, 2, 3], ks=(1, 3))
    # Without the guard NaN compares False and movie 1 would rank first.
    assert got["top_3"] == 0.0 and got["mrr"] == 0.0 and got["ndcg_10"] == 0.0


def test_label_outside_vocabulary_is_an_error():
    towers = hand_towers(QUERIES, CANDIDATES)
    data = batches([[1, 0, 0]] * 3, [4, 2, 7], batch_size=3)
    with pytest.raises(ValueError, match=r"label_movie_id not in movie_ids.*\] \[4 7\]$"):
        evaluate.evaluate_retrieval(*towers, data, [1, 2, 3])


def test_column_labels_are_flattened():
    towers = hand_towers(QUERIES, CANDIDATES)
    data = tf.data.Dataset.from_tensor_slices(
        {
            schema.CONTEXT_MOVIE_ID: tf.constant(CONTEXTS, tf.int64),
            schema.LABEL_MOVIE_ID: tf.constant([[x] for x in LABELS], tf.int64),
        }
    ).batch(2)
    got = evaluate.evaluate_retrieval(*towers, data, VOCAB, ks=(1, 2, 3))
    assert got["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)


def test_two_labels_per_example_is_an_error():
    towers = hand_towers(QUERIES, CANDIDATES)
    data = tf.data.Dataset.from_tensor_slices(
        {
            schema.CONTEXT_MOVIE_ID: tf.constant(CONTEXTS, tf.int64),
            schema.LABEL_MOVIE_ID: tf.constant([[1, 2], [3, 4], [1, 2]], tf.int64),
        }
    ).batch(3)
    with pytest.raises(ValueError, match="must hold one id per example.*6.*3"):
        evaluate.evaluate_retrieval(*towers, data, VOCAB)


def test_bad_arguments():
    towers = hand_towers(QUERIES, CANDIDATES)
    data = batches(CONTEXTS, LABELS)
    with pytest.raises(ValueError, match="duplicate"):
        evaluate.evaluate_retrieval(*towers, data, [1, 2, 2, 3])
    with pytest.raises(ValueError, match="empty"):
        evaluate.evaluate_retrieval(*towers, data.take(0), VOCAB)
    with pytest.raises(ValueError, match="counts has 3 entries"):
        evaluate.popularity_baseline(data, VOCAB, [1, 2, 3])


def test_later_calls_reuse_the_trace_and_read_current_weights():
    # Tracing, not arithmetic, dominated evaluation time (bench/train.py), so
    # the traced function is reused across calls; it must still see new
    # weights of BOTH towers and work on another dataset of the same spec.
    vocab = list(range(1, 60))
    query_model, candidate_model = model.build_towers(vocab, 5, tower_cfg(8))
    first = evaluate.evaluate_retrieval(query_model, candidate_model, _random_data(vocab), vocab)
    (run,) = [f for k, f in evaluate._TRACED.items() if k[0] == id(query_model)]
    assert run.experimental_get_tracing_count() == 1
    gru = query_model.get_layer("query_gru")
    gru.set_weights([w * 3.0 for w in gru.get_weights()])
    after_query = evaluate.evaluate_retrieval(
        query_model, candidate_model, _random_data(vocab), vocab)
    other_data = evaluate.evaluate_retrieval(
        query_model, candidate_model, _random_data(vocab, seed=4), vocab)
    assert run.experimental_get_tracing_count() == 1
    assert after_query != first and other_data != after_query
    # The cached function gives what a fresh trace of the same weights gives.
    evaluate._TRACED.clear()
    assert evaluate.evaluate_retrieval(
        query_model, candidate_model, _random_data(vocab), vocab) == after_query
