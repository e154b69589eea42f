"""Global in-batch negatives on 2 replicas equal one device on the global batch.

MirroredStrategy over the 2 logical CPUs conftest.py creates. With
negatives="global" each replica scores its queries against the candidates of
both replicas (all_gather), so the loss and the update must be exactly those
of one device training on the whole batch. negatives="per_replica" (TFRS's own
behaviour) is covered by distribute_test.py.
"""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs import schema
from tests.trainer.towers import tower_cfg
from trainer import distribute, model, task
from trainer.config import LossConfig

B, L, D, LR = 16, 5, 8, 0.5
MOVIES = list(range(101, 131))  # 30 raw ids
COUNTS = list(range(30, 0, -1))  # train counts, for the logQ variant


def _features(seed=0):
    rng = np.random.default_rng(seed)
    context = rng.choice(MOVIES, size=(B, L))
    context[:, 3:] = rng.integers(0, 2, size=(B, 2)) * context[:, 3:]  # some right padding
    labels = rng.choice(MOVIES, size=B, replace=False)
    # The same movie in both halves: an accidental hit only the global batch sees.
    labels[B - 1] = labels[0]
    return {
        schema.CONTEXT_MOVIE_ID: tf.constant(context, tf.int64),
        schema.LABEL_MOVIE_ID: tf.constant(labels, tf.int64),
    }


def _half(features, r):
    return {k: v[r * B // 2:(r + 1) * B // 2] for k, v in features.items()}


VARIANTS = {
    "plain": {},
    "logq_hits_temperature": dict(
        loss=LossConfig(remove_accidental_hits=True, temperature=0.5), movie_ids=MOVIES,
        sampling_probability=model.sampling_probabilities(COUNTS)),
    # The second softmax spans every replica's queries; history negatives are per row.
    "history_candidate_softmax": dict(
        loss=LossConfig(history_negatives=True, candidate_softmax_weight=0.7, temperature=0.5,
                        logq_correction=1.0),
        movie_ids=MOVIES, label_counts=COUNTS,
        sampling_probability=model.sampling_probabilities(COUNTS)),
}


def _build(negatives, loss=None, **kw):
    q, c = model.build_towers(MOVIES, L, tower_cfg(D))
    loss = dataclasses.replace(loss or LossConfig(), negatives=negatives)
    m = model.SequentialRetrievalModel(q, c, B, loss, **kw)
    m({k: v[:1] for k, v in _features().items()})
    return m


def _step_on_two_replicas(negatives, features, weights, **kw):
    """One SGD step on 2 replicas (replica r gets half r).

    Returns (per-replica per-example losses, weights after the step on each replica)."""
    strategy = distribute.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        m = _build(negatives, **kw)
        m.set_weights(weights)
        optimizer = tf.keras.optimizers.SGD(LR)
        optimizer.build(m.trainable_variables)
    inputs = strategy.experimental_distribute_values_from_function(
        lambda ctx: _half(features, ctx.replica_id_in_sync_group))
    step = task.make_replica_step(m, optimizer)
    per_replica = tf.function(lambda x: strategy.run(step, args=(x,)))(inputs)
    losses = [float(t) for t in strategy.experimental_local_results(per_replica)]
    after = [[t.numpy() for t in strategy.experimental_local_results(v)]
             for v in m.trainable_variables]
    return losses, after


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_global_negatives_equal_one_device_on_the_global_batch(variant):
    kw = VARIANTS[variant]
    features = _features()
    tf.keras.utils.set_random_seed(1)
    single = _build("global", **kw)  # one device: the default replica context
    w0 = single.get_weights()
    with tf.GradientTape() as tape:
        scaled, mean = single.compute_losses(features)
    grads = [tf.convert_to_tensor(g).numpy()
             for g in tape.gradient(scaled, single.trainable_variables)]

    losses, after = _step_on_two_replicas("global", features, w0, **kw)
    # Replica r's per-example loss is the mean over its half of the rows of the
    # single-device [B, B] softmax; the two halves are equal in size, so their
    # mean is the single-device mean.
    np.testing.assert_allclose(np.mean(losses), float(mean), rtol=1e-5)
    # Gradients: replica r differentiates (sum of its rows) / B through the
    # gathered candidates; all_gather's gradient sums both replicas' upstream
    # gradients, MirroredStrategy sums the variable gradients, so the update is
    # w - LR * grad(sum of all B rows / B): the single-device SGD step.
    trainable = [v.name for v in single.trainable_variables]
    for name, w, g, local in zip(trainable, [v.numpy() for v in single.trainable_variables],
                                 grads, after, strict=True):
        for replica in local:
            np.testing.assert_allclose(replica, w - LR * g, rtol=1e-4, atol=1e-6, err_msg=name)
    assert max(np.abs(g).max() for g in grads) > 1e-4  # the step moved something


def test_per_replica_negatives_see_only_the_local_batch():
    # Contrast: with per-replica negatives the loss is NOT the global-batch one
    # (each softmax has B/2 candidates, not B), so the test above can fail.
    features = _features()
    tf.keras.utils.set_random_seed(1)
    single = _build("global")
    _, mean = single.compute_losses(features)
    losses, _ = _step_on_two_replicas("per_replica", features, single.get_weights())
    assert abs(np.mean(losses) - float(mean)) > 1e-3
