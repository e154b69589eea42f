"""trainer.losses.in_batch_softmax_loss equals tfrs.tasks.Retrieval's loss and gradients."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tests.trainer.towers import tower_cfg
from trainer import losses
from trainer.config import LossConfig


def _loss_and_grads(fn, query, candidate):
    q, c = tf.Variable(query), tf.Variable(candidate)
    with tf.GradientTape() as tape:
        loss = fn(q, c)
    return [loss.numpy(), *(g.numpy() for g in tape.gradient(loss, [q, c]))]


# block_elements 20 with 7 queries and 7-10 candidates: 2-2 rows a block, so 4
# blocks and a ragged last one; None: the device default (one block here).
@pytest.mark.parametrize("block_elements", [None, 20, 1])
@pytest.mark.parametrize("temperature", [None, 0.5])
@pytest.mark.parametrize("extra_negatives", [0, 3])
@pytest.mark.parametrize("probability", [False, True])
def test_matches_tfrs_retrieval(temperature, extra_negatives, probability, block_elements):
    rng = np.random.default_rng(0)
    b, d = 7, 4
    query = rng.standard_normal((b, d)).astype(np.float32)
    candidate = rng.standard_normal((b + extra_negatives, d)).astype(np.float32)
    prob = (tf.constant(rng.uniform(0.0, 0.5, b + extra_negatives), tf.float32)
            if probability else None)
    task = tfrs.tasks.Retrieval(temperature=temperature)
    want = _loss_and_grads(
        lambda q, c: task(q, c, compute_metrics=False, candidate_sampling_probability=prob),
        query, candidate)
    got = _loss_and_grads(
        lambda q, c: losses.in_batch_softmax_loss(q, c, temperature, prob, block_elements),
        query, candidate)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_blocked_equals_reference_in_a_tf_function():
    # 300 queries x 300 candidates in blocks of 7 rows (43 blocks, the last of 6),
    # traced once: the path model.fit and the custom loop take.
    rng = np.random.default_rng(5)
    query = rng.standard_normal((300, 16)).astype(np.float32)
    candidate = rng.standard_normal((300, 16)).astype(np.float32)

    @tf.function
    def blocked(q, c):
        return losses.in_batch_softmax_loss(q, c, 0.7, block_elements=7 * 300)

    want = _loss_and_grads(lambda q, c: losses.reference_in_batch_softmax_loss(q, c, 0.7),
                           query, candidate)
    got = _loss_and_grads(blocked, query, candidate)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-5)


def test_large_scores_stay_finite():
    # Scores of ~1e4: a softmax without the max subtraction overflows to inf/nan.
    q = tf.constant([[100.0, 0.0], [0.0, 100.0], [70.0, 70.0]])
    got = _loss_and_grads(lambda a, b: losses.in_batch_softmax_loss(a, b, block_elements=2),
                          q.numpy(), q.numpy())
    want = _loss_and_grads(losses.reference_in_batch_softmax_loss, q.numpy(), q.numpy())
    for w, g in zip(want, got, strict=True):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-3)


def test_empty_batch():
    # A replica can be handed an empty final batch: zero loss, zero gradients.
    empty = np.zeros((0, 3), np.float32)
    loss, grad_q, grad_c = _loss_and_grads(losses.in_batch_softmax_loss, empty, empty)
    assert loss == 0.0 and grad_q.shape == (0, 3) and grad_c.shape == (0, 3)


def test_hand_computed():
    # Two queries, two candidates: scores [[1, 0], [0, 2]] (q = c = diag(1, sqrt 2)).
    # loss = -log(e^1 / (e^1 + e^0)) - log(e^2 / (e^0 + e^2)) = log(1 + e^-1) + log(1 + e^-2)
    q = tf.constant([[1.0, 0.0], [0.0, 2.0**0.5]])
    want = np.log1p(np.exp(-1.0)) + np.log1p(np.exp(-2.0))
    assert float(losses.in_batch_softmax_loss(q, q)) == pytest.approx(want, rel=1e-6)
    assert float(losses.in_batch_softmax_loss(q, q, block_elements=1)) == pytest.approx(
        want, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_model_losses_same_with_sparse_or_tfrs_loss(temperature):
    from beam_jobs import schema
    from trainer import model

    vocab = list(range(1, 30))
    rng = np.random.default_rng(1)
    features = {schema.CONTEXT_MOVIE_ID: tf.constant(rng.choice(vocab, (16, 5)), tf.int64),
                schema.LABEL_MOVIE_ID: tf.constant(rng.choice(vocab, 16), tf.int64)}
    tf.keras.utils.set_random_seed(3)
    towers = model.build_towers(vocab, 5, tower_cfg(8))
    got = {}
    for sparse in (True, False):
        m = model.SequentialRetrievalModel(*towers, 16, sparse_loss=sparse, loss=LossConfig(temperature=temperature))
        with tf.GradientTape() as tape:
            scaled, mean = m.compute_losses(features, training=True)
        grads = tape.gradient(scaled, m.trainable_variables)
        got[sparse] = [scaled.numpy(), mean.numpy(),
                       *(tf.convert_to_tensor(g).numpy() for g in grads)]
    for a, b in zip(got[True], got[False], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
