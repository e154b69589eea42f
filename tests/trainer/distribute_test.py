"""Loss scaling under MirroredStrategy over the 2 logical CPUs conftest.py creates."""
import numpy as np
import pytest
import tensorflow as tf

from beam_jobs import schema
from tests.trainer.towers import tower_cfg
from trainer import distribute, model, task
from trainer.config import LossConfig

B, L, D, LR = 16, 5, 8, 0.5
MOVIES = list(range(101, 131))  # 30 raw ids


def _features(seed=0):
    rng = np.random.default_rng(seed)
    context = rng.choice(MOVIES, size=(B, L))
    context[:, 3:] = rng.integers(0, 2, size=(B, 2)) * context[:, 3:]  # some right padding
    return {
        schema.CONTEXT_MOVIE_ID: tf.constant(context, tf.int64),
        schema.LABEL_MOVIE_ID: tf.constant(rng.choice(MOVIES, size=B, replace=False), tf.int64),
    }


def _half(features, r):
    return {k: v[r * B // 2:(r + 1) * B // 2] for k, v in features.items()}


def _build(global_batch):
    q, c = model.build_towers(MOVIES, L, tower_cfg(D))
    # Per-replica negatives (TFRS's own behaviour): each half is its own
    # softmax. negatives_test.py covers the global mode.
    m = model.SequentialRetrievalModel(q, c, global_batch, loss=LossConfig(negatives="per_replica"))
    m({k: v[:1] for k, v in _features().items()})
    return m


def test_two_replicas_apply_the_mean_of_the_halves_gradients():
    strategy = distribute.make_strategy("mirrored")  # over the 2 logical CPUs
    assert strategy.num_replicas_in_sync == 2
    features = _features()
    with strategy.scope():
        tf.keras.utils.set_random_seed(1)
        replicated = _build(global_batch=B)
        optimizer = tf.keras.optimizers.SGD(LR)
        optimizer.build(replicated.trainable_variables)
    initial = [v.numpy() for v in replicated.trainable_variables]

    # Reference, one device: each half of the batch is its own batch of B/2
    # (so its in-batch negatives are the same B/2 candidates a replica sees).
    single = _build(global_batch=B // 2)
    single.set_weights(replicated.get_weights())
    losses, grads = [], []
    for r in range(2):
        with tf.GradientTape() as tape:
            scaled, mean = single.compute_losses(_half(features, r))
        losses.append(mean.numpy())
        grads.append([tf.convert_to_tensor(g).numpy()
                      for g in tape.gradient(scaled, single.trainable_variables)])

    # Replica r receives half r.
    inputs = strategy.experimental_distribute_values_from_function(
        lambda ctx: _half(features, ctx.replica_id_in_sync_group))
    replica_step = task.make_replica_step(replicated, optimizer)
    per_replica = tf.function(lambda x: strategy.run(replica_step, args=(x,)))(inputs)
    replica_losses = [t.numpy() for t in strategy.experimental_local_results(per_replica)]

    # Each replica's per-example loss is the single-device loss on its half.
    np.testing.assert_allclose(replica_losses, losses, rtol=1e-5)
    # Hand arithmetic: replica r differentiates sum_r / B = (sum_r / (B/2)) / 2,
    # i.e. half of the single-device half-batch loss, so its gradient is g_r / 2.
    # MirroredStrategy SUMs gradients over replicas: g_0/2 + g_1/2 = mean(g_0, g_1).
    # SGD then applies w - LR * mean(g_0, g_1). (Dividing by the local batch B/2
    # instead would apply g_0 + g_1: twice the step, growing with replica count.)
    for v, w0, g0, g1 in zip(replicated.trainable_variables, initial, *grads, strict=True):
        expected = w0 - LR * (g0 + g1) / 2
        for local in strategy.experimental_local_results(v):
            np.testing.assert_allclose(local.numpy(), expected, rtol=1e-4, atol=1e-6,
                                       err_msg=v.name)
    assert any(np.abs(g0).max() > 0 for g0 in grads[0])  # the step moved something


@pytest.mark.parametrize("name, replicas", [("auto", 2), ("mirrored", 2), ("default", 1)])
def test_make_strategy_on_logical_cpus(name, replicas):
    strategy = distribute.make_strategy(name)
    assert strategy.num_replicas_in_sync == replicas
    assert distribute.task_of(strategy).is_chief
    assert f"with {replicas} replica(s)" in distribute.describe(strategy)


def test_virtual_cpus_cannot_change_after_tf_started():
    distribute.configure_virtual_cpus(2)  # what conftest set up: fine
    with pytest.raises(RuntimeError, match="--virtual_cpu_devices=3"):
        distribute.configure_virtual_cpus(3)
