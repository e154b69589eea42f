"""trainer/model.py: tower shapes, padding mask, unknown ids, loss values."""
import math

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs import schema
from tests.trainer.towers import tower_cfg
from trainer import model

MOVIES = [3, 10, 17, 24, 31]


def test_tower_shapes_and_dtypes():
    q, c = model.build_towers(MOVIES, 4, tower_cfg(8))
    out = q(tf.constant([[3, 10, 0, 0], [17, 0, 0, 0]], tf.int64))
    assert out.shape == (2, 8) and out.dtype == tf.float32
    out = c(tf.constant([3, 31, 24], tf.int64))
    assert out.shape == (3, 8) and out.dtype == tf.float32


def test_padding_is_masked():
    # A context [a, b, 0, 0] must give the GRU state after b, i.e. what a model
    # with context length 2 and the same weights gives for [a, b].
    tf.keras.utils.set_random_seed(0)
    q4, _ = model.build_towers(MOVIES, 4, tower_cfg(8))
    q2, _ = model.build_towers(MOVIES, 2, tower_cfg(8))
    q2.set_weights(q4.get_weights())
    padded = q4(tf.constant([[3, 10, 0, 0]], tf.int64))
    np.testing.assert_allclose(padded, q2(tf.constant([[3, 10]], tf.int64)), rtol=1e-6)
    # ... and differs from treating the pads as movies.
    assert not np.allclose(padded, q4(tf.constant([[3, 10, 3, 3]], tf.int64)))


def test_unknown_ids_share_the_oov_row():
    _, c = model.build_towers(MOVIES, 4, tower_cfg(8))
    a, b, known = c(tf.constant([999, 12345, 3], tf.int64)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, known)


def test_pad_id_cannot_be_a_movie():
    with pytest.raises(ValueError, match="pad id"):
        model.build_towers([0, 1, 2], 3, tower_cfg(4))


def test_untrained_loss_is_log_batch_and_scaled_by_global_batch():
    # With all-zero candidate embeddings every score is 0: the in-batch softmax
    # over B candidates gives each example loss log(B). B = 4 here, and the
    # model is told the global batch is 8 (two replicas of 4): the scaled loss
    # is sum / 8 = 4 log 4 / 8, the per-example mean stays log 4.
    q, c = model.build_towers(MOVIES, 3, tower_cfg(8))
    m = model.SequentialRetrievalModel(q, c, global_batch_size=8)
    features = {
        schema.CONTEXT_MOVIE_ID: tf.constant([[3, 0, 0], [10, 3, 0], [17, 0, 0], [24, 31, 3]], tf.int64),
        schema.LABEL_MOVIE_ID: tf.constant([10, 17, 24, 31], tf.int64),
    }
    m(features)
    emb = m.candidate_model.get_layer("candidate_embedding")
    emb.set_weights([np.zeros_like(emb.get_weights()[0])])
    scaled, mean = m.compute_losses(features)
    assert math.isclose(float(mean), math.log(4), rel_tol=1e-6)
    assert math.isclose(float(scaled), 4 * math.log(4) / 8, rel_tol=1e-6)
    assert math.isclose(float(m.loss_tracker.result()), math.log(4), rel_tol=1e-6)
