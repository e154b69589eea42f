"""trainer.losses.in_batch_softmax_loss equals tfrs.tasks.Retrieval's loss and gradients."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer import losses


def _loss_and_grads(fn, query, candidate):
    q, c = tf.Variable(query), tf.Variable(candidate)
    with tf.GradientTape() as tape:
        loss = fn(q, c)
    return [loss.numpy(), *(g.numpy() for g in tape.gradient(loss, [q, c]))]


@pytest.mark.parametrize("temperature", [None, 0.5])
@pytest.mark.parametrize("extra_negatives", [0, 3])
@pytest.mark.parametrize("probability", [False, True])
def test_matches_tfrs_retrieval(temperature, extra_negatives, probability):
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
        lambda q, c: losses.in_batch_softmax_loss(q, c, temperature, prob), query, candidate)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_hand_computed():
    # Two queries, two candidates: scores [[1, 0], [0, 2]] (q = c = diag(1, sqrt 2)).
    # loss = -log(e^1 / (e^1 + e^0)) - log(e^2 / (e^0 + e^2)) = log(1 + e^-1) + log(1 + e^-2)
    q = tf.constant([[1.0, 0.0], [0.0, 2.0**0.5]])
    got = float(losses.in_batch_softmax_loss(q, q))
    assert got == pytest.approx(np.log1p(np.exp(-1.0)) + np.log1p(np.exp(-2.0)), rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_model_losses_same_with_sparse_or_tfrs_loss(temperature):
    from beam_jobs import schema
    from trainer import model

    vocab = list(range(1, 30))
    rng = np.random.default_rng(1)
    features = {schema.CONTEXT_MOVIE_ID: tf.constant(rng.choice(vocab, (16, 5)), tf.int64),
                schema.LABEL_MOVIE_ID: tf.constant(rng.choice(vocab, 16), tf.int64)}
    tf.keras.utils.set_random_seed(3)
    towers = model.build_towers(vocab, 8, 5)
    got = {}
    for sparse in (True, False):
        m = model.SequentialRetrievalModel(*towers, 16, temperature=temperature, sparse_loss=sparse)
        with tf.GradientTape() as tape:
            scaled, mean = m.compute_losses(features, training=True)
        grads = tape.gradient(scaled, m.trainable_variables)
        got[sparse] = [scaled.numpy(), mean.numpy(),
                       *(tf.convert_to_tensor(g).numpy() for g in grads)]
    for a, b in zip(got[True], got[False], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
