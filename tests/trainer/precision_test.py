"""--dtype_policy (mixed precision) and the CPU-unrolled GRU.

Mixed precision is the GPU lever (tensor cores); bfloat16 is also real
arithmetic on this CPU, so these tests train in 16 bits for real.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.trainer import datadir
from tests.trainer.towers import tower_cfg
from trainer import checkpoints, loop, model, task
from trainer.config import ConfigError, TrainConfig

MOVIES = list(range(1, 41))


def _contexts(n=32, length=6, seed=0):
    """Right-padded contexts [n, length] of 1..length movies (oldest first)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, length), np.int64)
    for i, k in enumerate(rng.integers(1, length + 1, n)):
        out[i, :k] = rng.choice(MOVIES, k)
    return tf.constant(out)


def _same_weights(src, dst):
    dst.set_weights(src.get_weights())  # same variables in the same order


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_towers_compute_in_16_bits_and_output_float32(policy):
    tf.keras.utils.set_random_seed(0)
    q32, c32 = model.build_towers(MOVIES, 6, tower_cfg(16))
    q16, c16 = model.build_towers(MOVIES, 6, tower_cfg(16, dtype_policy=policy))
    _same_weights(q32, q16)
    _same_weights(c32, c16)
    gru = q16.get_layer("query_gru")
    assert gru.compute_dtype == policy.split("_")[1] and gru.variable_dtype == "float32"
    assert all(v.dtype == tf.float32 for v in q16.weights + c16.weights)
    context, ids = _contexts(), tf.constant(MOVIES, tf.int64)
    for m32, m16, x in ((q32, q16, context), (c32, c16, ids)):
        want, got = m32(x).numpy(), m16(x).numpy()
        assert got.dtype == np.float32
        # 16-bit arithmetic really happened (float32 would match exactly) ...
        assert not np.array_equal(got, want)
        # ... and stays within its precision (bfloat16: 8 bits of mantissa).
        np.testing.assert_allclose(got, want, atol=0.02, rtol=0.02)


def test_float32_towers_have_no_extra_output_layer():
    q, c = model.build_towers(MOVIES, 6, tower_cfg(8))
    names = {layer.name for layer in q.layers + c.layers}
    assert not names & {"query_output", "candidate_output"}


def test_gru_unrolled_on_cpu_equals_the_loop():
    # No GPU here: the default unrolls; the loop (cuDNN-swappable) is the same math.
    tf.keras.utils.set_random_seed(1)
    unrolled, _ = model.build_towers(MOVIES, 6, tower_cfg(16))
    loop, _ = model.build_towers(MOVIES, 6, tower_cfg(16), unroll_gru=False)
    assert unrolled.get_layer("query_gru").unroll is True
    assert loop.get_layer("query_gru").unroll is False
    _same_weights(unrolled, loop)
    context = _contexts(seed=2)  # right-padded: the mask must stop at the last real step
    np.testing.assert_allclose(unrolled(context).numpy(), loop(context).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_float16_optimizer_is_loss_scaled():
    cfg = TrainConfig(data_dir="d", model_dir="m", dtype_policy="mixed_float16",
                      lr_schedule="constant", warmup_fraction=0.0)
    assert isinstance(task.make_optimizer(cfg), tf.keras.mixed_precision.LossScaleOptimizer)
    assert not isinstance(task.make_optimizer(cfg.replace(dtype_policy="mixed_bfloat16")),
                          tf.keras.mixed_precision.LossScaleOptimizer)


def test_unknown_policy_names_the_flag():
    with pytest.raises(ConfigError, match="--dtype_policy must be one of"):
        TrainConfig(data_dir="d", model_dir="m", dtype_policy="float16")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data"))
    datadir.write_data_dir(path, num_movies=40, num_users=120, timeline_length=12)
    return path


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_trains_in_16_bits_on_two_replicas(data_dir, tmp_path, policy):
    # The successor-permutation data is learnable: 16-bit training must still learn it.
    cfg = TrainConfig(data_dir=data_dir, model_dir=str(tmp_path), epochs=3,
                      global_batch_size=60, learning_rate=0.05, embedding_dim=16,
                      dtype_policy=policy, strategy="auto", eval_batch_size=64,
                      eval_every_epoch=False, checkpoint_every_steps=0)
    metrics = loop.run(cfg)
    assert metrics["test"]["top_10"] > metrics["popularity"]["top_10"] + 0.2
    with open(os.path.join(str(tmp_path), "config.json")) as f:
        assert json.load(f)["model"]["dtype_policy"] == policy
    # The export serves float32 scores.
    loaded = tf.saved_model.load(os.path.join(str(tmp_path), "export", "1"))
    out = loaded.signatures["serving_default"](context_movie_id=_contexts(4, 10))
    assert out["scores"].dtype == tf.float32
    with pytest.raises(checkpoints.ModelDirError,
                       match=f"--dtype_policy={policy} there, --dtype_policy=float32 now"):
        loop.run(cfg.replace(dtype_policy="float32", epochs=4))
