"""--query_tower=transformer: causal self-attention read at the last real movie
(trainer/transformer.py, trainer/model.py), trained, resumed and exported."""
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.trainer import datadir
from tests.trainer.towers import tower_cfg
from trainer import checkpoints, config, data, loop, model, task, transformer
from trainer.config import ConfigError, TrainConfig

MOVIES = [3, 10, 17, 24, 31]


def _cfg(d=8, **options):
    return tower_cfg(d, query_tower="transformer", **options)


def _ids(rows):
    return tf.constant(rows, tf.int64)


def test_flag_changes_the_model():
    tf.keras.utils.set_random_seed(0)
    gru, _ = model.build_towers(MOVIES, 4, tower_cfg(8))
    tf.keras.utils.set_random_seed(0)
    att, _ = model.build_towers(MOVIES, 4, _cfg())
    names = lambda m: {v.name.split("/")[0] for v in m.trainable_variables}  # noqa: E731
    assert "query_gru" in names(gru) and "query_gru" not in names(att)
    assert {"query_position_embedding", "query_block_0_attention", "query_block_1_attention",
            "query_final_norm"} <= names(att)
    x = _ids([[3, 10, 0, 0], [17, 24, 31, 3]])
    assert att(x).shape == gru(x).shape == (2, 8)
    assert not np.allclose(att(x), gru(x))
    # Blocks and heads are the flags' numbers.
    three, _ = model.build_towers(MOVIES, 4, _cfg(transformer_blocks=3, transformer_heads=4))
    attention = three.get_layer("query_block_2_attention")
    assert attention.get_config()["num_heads"] == 4 and attention.get_config()["key_dim"] == 2


def test_positions_and_attention_mask_by_hand():
    # Rows of [a, b, c, pad] and [a, pad, pad, pad]: positions count back from the
    # last real movie; query column i sees key j iff j <= i and j is real.
    rows = _ids([[5, 6, 7, 0], [5, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(transformer.RecencyPositions()(rows),
                                  [[2, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(transformer.real_lengths(rows), [3, 1, 0])
    mask = transformer.AttentionMask()(rows).numpy().astype(int)
    np.testing.assert_array_equal(mask[0], [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0],
                                            [1, 1, 1, 0]])
    np.testing.assert_array_equal(mask[1], [[1, 0, 0, 0]] * 4)
    assert not mask[2].any()


def test_encoder_is_causal():
    # Fixed rows (so positions and masks stay put), embeddings changed at column 2:
    # columns 0-1 must not move, columns 2-3 must.
    L, cfg = 4, _cfg()
    embedded = tf.keras.Input((L, 8))
    rows = tf.keras.Input((L,), dtype=tf.int64)
    encoder = tf.keras.Model([embedded, rows], transformer.causal_encoder(
        embedded, rows, L, cfg, tf.keras.mixed_precision.Policy("float32")))
    x = np.random.default_rng(0).normal(size=(1, L, 8)).astype(np.float32)
    later = x.copy()
    later[0, 2] = np.arange(8)  # not a constant shift: layer norm would remove that
    r = _ids([[2, 3, 4, 5]])
    a, b = encoder([x, r]).numpy(), encoder([later, r]).numpy()
    np.testing.assert_allclose(a[0, :2], b[0, :2], rtol=1e-6, atol=1e-6)
    assert not np.allclose(a[0, 2], b[0, 2]) and not np.allclose(a[0, 3], b[0, 3])


def test_query_is_the_output_at_the_last_real_movie():
    tf.keras.utils.set_random_seed(1)
    q4, _ = model.build_towers(MOVIES, 4, _cfg())  # no skip, no projection: query = output
    x = _ids([[3, 10, 0, 0], [17, 0, 0, 0], [24, 31, 3, 10]])
    sequence = tf.keras.Model(q4.input, q4.get_layer("query_final_norm").output)(x).numpy()
    np.testing.assert_allclose(q4(x), sequence[[0, 1, 2], [1, 0, 3]], rtol=1e-6)
    # A right-padded short history is that history: [a, b, 0, 0] with L = 4 gives
    # what [a, b] gives with L = 2 and the same weights (positions 0, 1 of the table).
    q2, _ = model.build_towers(MOVIES, 2, _cfg())
    q2.set_weights([w[:2] if w.shape == (4, 8) else w for w in q4.get_weights()])
    np.testing.assert_allclose(q4(_ids([[3, 10, 0, 0]])), q2(_ids([[3, 10]])), rtol=1e-5,
                               atol=1e-6)
    # A movie in the first padded column becomes the last real one: the query moves;
    # so does reordering the history.
    assert not np.allclose(q4(_ids([[3, 10, 17, 0]])), q4(_ids([[3, 10, 0, 0]])))
    assert not np.allclose(q4(_ids([[10, 3, 0, 0]])), q4(_ids([[3, 10, 0, 0]])))


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_all_padding_gives_a_finite_query(policy):
    # Serving with every id unknown hands the tower a context of padding only.
    q, _ = model.build_towers(MOVIES, 4, _cfg(last_movies=2, dtype_policy=policy),
                              log_prior=np.zeros(len(MOVIES), np.float32))
    out = q(_ids([[0, 0, 0, 0], [3, 10, 0, 0]]))
    assert out.dtype == tf.float32 and out.shape == (2, 9)
    assert np.isfinite(out.numpy()).all()
    if policy != "float32":
        assert q.get_layer("query_block_0_attention").compute_dtype == policy.split("_")[1]


def test_dropout_in_training_only():
    q, _ = model.build_towers(MOVIES, 4, _cfg(transformer_dropout=0.5))
    x = _ids([[3, 10, 0, 0], [17, 24, 31, 3]])
    np.testing.assert_array_equal(q(x), q(x))
    assert not np.allclose(q(x, training=True), q(x))


def test_gru_only_options_are_refused_with_the_transformer():
    with pytest.raises(ConfigError, match="--nomask_padding is for --query_tower=gru"):
        _cfg(mask_padding=False)
    with pytest.raises(ConfigError, match="--dropout is for --query_tower=gru"):
        _cfg(dropout=0.1)
    with pytest.raises(ConfigError, match="--query_tower must be one of"):
        tower_cfg(8, query_tower="lstm")
    assert config.TUTORIAL["query_tower"] == "gru"
    # Runs saved before the flag existed had a GRU.
    cfg = TrainConfig(data_dir="-", model_dir="-", query_tower="transformer", gru_units=0,
                      last_movies=0)
    assert config.shape_mismatches({}, cfg) == [
        "--query_tower=gru there, --query_tower=transformer now"]
    assert config.shape_mismatches({}, cfg.replace(query_tower="gru")) == []


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data"))
    datadir.write_data_dir(path, num_movies=40, num_users=120, timeline_length=12)
    return path


def test_trains_resumes_and_exports(data_dir, tmp_path):
    cfg = TrainConfig(data_dir=data_dir, model_dir=str(tmp_path), query_tower="transformer",
                      epochs=2, global_batch_size=60, learning_rate=0.01, embedding_dim=16,
                      eval_batch_size=64, eval_every_epoch=False, checkpoint_every_steps=0,
                      shuffle_buffer=500, strategy="auto",
                      markov_weight=0.0)  # the export against the towers' own scores
    # Only the resumed run exports (an export costs seconds; serving_test covers the
    # version numbering).
    first = loop.run(cfg.replace(export=False))
    # The successor-permutation data is learnable from the last movie.
    assert first["test"]["top_10"] > first["popularity"]["top_10"] + 0.2, first
    resumed = loop.run(cfg.replace(epochs=3))
    assert resumed["step"] == first["step"] * 3 // 2
    assert resumed["test"]["top_10"] > first["popularity"]["top_10"] + 0.2, resumed

    # The export serves what the in-memory towers score, for short and
    # all-unknown histories (padded, and stripped of unknown ids, inside the model).
    info = data.load_data_dir(data_dir)
    m, _ = task.RetrievalTask(info, cfg).build_model(tf.distribute.get_strategy())
    tf.train.Checkpoint(model=m).restore(checkpoints.latest(cfg.checkpoints_uri)).expect_partial()
    a, b, c = info.movie_ids[:3]
    served = tf.saved_model.load(os.path.join(cfg.model_dir, "export", "1")).signatures[
        "serving_default"](context_movie_id=_ids([[a, b, c], [a, 99999, 0], [99999, 0, 0]]))
    context = np.zeros((3, info.context_length), np.int64)
    context[0, :3], context[1, :1] = [a, b, c], [a]
    query = m.query_model(tf.constant(context)).numpy()
    ids = tf.constant(info.movie_ids, tf.int64)
    scores = query @ m.candidate_model(ids).numpy().T
    np.testing.assert_array_equal(served["unknown_ids"], [0, 1, 1])
    assert np.isfinite(served["scores"]).all()
    for row in range(3):
        want = np.argsort(-scores[row], kind="stable")[:5]
        np.testing.assert_array_equal(served["movie_ids"][row, :5], np.asarray(info.movie_ids)[want])
        np.testing.assert_allclose(served["scores"][row, :5], scores[row][want], rtol=1e-4,
                                   atol=1e-5)
    with pytest.raises(checkpoints.ModelDirError,
                       match="--query_tower=transformer there, --query_tower=gru now"):
        loop.run(cfg.replace(query_tower="gru", epochs=4))
