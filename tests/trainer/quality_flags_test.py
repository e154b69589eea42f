"""The quality options: logQ correction, accidental hits, temperature, tower
shapes, learning-rate schedules, presets and --eval_exclude_context.

Loss tests zero the candidate embeddings, so every score is 0 and the softmax
arithmetic can be done by hand (tfrs tasks/retrieval_test.py style).
"""
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs import schema
from tests.trainer import cli, datadir
from trainer import data, evaluate, model, schedules, train
from trainer.config import TrainConfig

MOVIES = [3, 10, 17, 24, 31]


def _zero_scores_model(labels, **kw):
    q, c = model.build_towers(MOVIES, 8, 3)
    m = model.SequentialRetrievalModel(q, c, global_batch_size=len(labels), **kw)
    features = {
        schema.CONTEXT_MOVIE_ID: tf.constant([[3, 0, 0]] * len(labels), tf.int64),
        schema.LABEL_MOVIE_ID: tf.constant(labels, tf.int64),
    }
    m(features)
    emb = m.candidate_model.get_layer("candidate_embedding")
    emb.set_weights([np.zeros_like(emb.get_weights()[0])])
    return m, features


def test_sampling_probabilities():
    # counts 4, 2, 1, 1, 0 of 8 labels: q = .5, .25, .125, .125, 0.
    np.testing.assert_allclose(model.sampling_probabilities([4, 2, 1, 1, 0]),
                               [0.5, 0.25, 0.125, 0.125, 0.0])
    # power 0.5: sqrt(q).
    np.testing.assert_allclose(model.sampling_probabilities([4, 2, 1, 1, 0], 0.5)[:2],
                               [math.sqrt(0.5), 0.5], rtol=1e-6)
    with pytest.raises(ValueError, match="positive sum"):
        model.sampling_probabilities([0, 0])


def test_logq_correction_by_hand():
    # Labels 3 and 10 with q = 0.5 and 0.25; all raw scores 0, so the corrected
    # logits of both rows are [-log .5, -log .25] = [log 2, log 4]. Row 0 (label
    # 3): log(2 + 4) - log 2 = log 3. Row 1 (label 10): log 6 - log 4 = log 1.5.
    # Mean = (log 3 + log 1.5) / 2 = log(4.5) / 2. Without the correction each
    # row is log 2 (uniform over 2 candidates).
    q = model.sampling_probabilities([4, 2, 1, 1, 0])
    m, features = _zero_scores_model([3, 10], movie_ids=MOVIES, sampling_probability=q)
    _, mean = m.compute_losses(features)
    assert math.isclose(float(mean), math.log(4.5) / 2, rel_tol=1e-6)
    plain, features = _zero_scores_model([3, 10])
    assert math.isclose(float(plain.compute_losses(features)[1]), math.log(2), rel_tol=1e-6)


def test_remove_accidental_hits_by_hand():
    # Labels [3, 3, 10], all scores 0. Plain: every row is a softmax over 3
    # equal logits, loss log 3 each. With removal, rows 0 and 1 drop the other
    # "3" (it is their own movie, not a negative): softmax over 2, loss log 2;
    # row 2 keeps all 3: log 3. Mean = (2 log 2 + log 3) / 3 = log(12) / 3.
    m, features = _zero_scores_model([3, 3, 10], remove_accidental_hits=True)
    assert math.isclose(float(m.compute_losses(features)[1]), math.log(12) / 3, rel_tol=1e-6)
    m, features = _zero_scores_model([3, 3, 10])
    assert math.isclose(float(m.compute_losses(features)[1]), math.log(3), rel_tol=1e-6)


def test_temperature_divides_the_scores():
    # loss_i = logsumexp_j(s_ij / T) - s_ii / T with s = query @ candidate^T.
    tf.keras.utils.set_random_seed(3)
    q, c = model.build_towers(MOVIES, 8, 3)
    m = model.SequentialRetrievalModel(q, c, global_batch_size=3, temperature=0.25)
    features = {schema.CONTEXT_MOVIE_ID: tf.constant([[3, 0, 0], [10, 3, 0], [24, 0, 0]], tf.int64),
                schema.LABEL_MOVIE_ID: tf.constant([10, 17, 31], tf.int64)}
    query, cand = (t.numpy().astype(np.float64) for t in m(features))
    s = query @ cand.T / 0.25
    expected = np.mean(np.log(np.exp(s).sum(1)) - np.diag(s))
    assert math.isclose(float(m.compute_losses(features)[1]), expected, rel_tol=1e-5)


def test_unmasked_padding_is_embedded_like_a_movie():
    # mask_padding=False (the tutorial): the pads are GRU steps, so [a, b, 0, 0]
    # is NOT the 2-step context [a, b] (with the mask it is: model_test.py).
    tf.keras.utils.set_random_seed(0)
    q4, _ = model.build_towers(MOVIES, 8, 4, mask_padding=False)
    q2, _ = model.build_towers(MOVIES, 8, 2, mask_padding=False)
    q2.set_weights(q4.get_weights())
    padded = q4(tf.constant([[3, 10, 0, 0]], tf.int64))
    assert not np.allclose(padded, q2(tf.constant([[3, 10]], tf.int64)), atol=1e-4)


def test_stacked_gru_projection_and_dropout():
    q, _ = model.build_towers(MOVIES, 8, 4, gru_units=12, gru_layers=2, dropout=0.5)
    x = tf.constant([[3, 10, 0, 0], [17, 24, 31, 3]], tf.int64)
    assert q(x).shape == (2, 8)  # 12-unit GRUs projected to d = 8
    assert [w.shape for w in q.get_layer("query_projection").get_weights()] == [(12, 8), (8,)]
    assert {"query_gru_0", "query_gru_1"} <= {layer.name for layer in q.layers}
    np.testing.assert_array_equal(q(x), q(x))  # inference: no dropout
    assert not np.allclose(q(x, training=True), q(x))


def test_warmup_then_cosine_and_linear_decay():
    # lr 1, warmup 2 steps, total 6: steps 0, 1 ramp (1/2, 2/2); after that
    # p = (step - 2) / 4. cosine: (1 + cos(pi p)) / 2; linear: 1 - p.
    cos = schedules.WarmupDecay(1.0, 2, 6, "cosine")
    lin = schedules.WarmupDecay(1.0, 2, 6, "linear")
    steps = [0, 1, 2, 4, 5, 6, 9]
    np.testing.assert_allclose([float(cos(s)) for s in steps],
                               [0.5, 1.0, 1.0, 0.5, (1 + math.cos(0.75 * math.pi)) / 2, 0.0, 0.0],
                               atol=1e-6)
    np.testing.assert_allclose([float(lin(s)) for s in steps],
                               [0.5, 1.0, 1.0, 0.5, 0.25, 0.0, 0.0], atol=1e-6)
    # The tutorial's constant rate stays a plain float (exact-tutorial Adagrad).
    cfg = TrainConfig(data_dir="-", model_dir="-", lr_schedule="constant", warmup_fraction=0.0)
    assert train.learning_rate(cfg, 100) == cfg.learning_rate
    cfg = cfg.replace(lr_schedule="linear", warmup_fraction=0.1, learning_rate=0.5)
    lr = train.learning_rate(cfg, 100)
    assert (lr.warmup, lr.total, lr.decay) == (10, 100, "linear")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data"))
    datadir.write_data_dir(path, num_movies=40, num_users=120, timeline_length=12)
    return path


def test_quality_options_train_on_two_replicas(data_dir, tmp_path):
    # Global negatives over the 2 logical CPUs with every option on: it learns
    # the successor structure (well above popularity).
    cfg = TrainConfig(data_dir=data_dir, model_dir=str(tmp_path), epochs=3, global_batch_size=60,
                      learning_rate=0.05, optimizer="adam", embedding_dim=16, gru_units=24,
                      gru_layers=2, dropout=0.1, negatives="global", logq_correction=1.0,
                      remove_accidental_hits=True, temperature=0.5, lr_schedule="cosine",
                      warmup_fraction=0.1, checkpoint_every_steps=0, eval_every_epoch=False,
                      export=False, shuffle_buffer=500, strategy="auto")
    results = train.run(cfg)
    assert results["test"]["top_10"] > results["popularity"]["top_10"] + 0.2, results


def test_cli_preset_overrides_and_eval_exclude_context(data_dir, tmp_path):
    model_dir = str(tmp_path / "m")
    proc = cli.run(f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--preset=tutorial",
                   "--global_batch_size=60", "--epochs=1", "--embedding_dim=8",
                   "--eval_exclude_context", "--noexport", "--checkpoint_every_steps=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(model_dir, "config.json")) as f:
        saved = json.load(f)
    # From the preset ...
    assert (saved["optimizer"], saved["learning_rate"], saved["mask_padding"],
            saved["negatives"]) == ("adagrad", 0.1, False, "per_replica")
    # ... unless given on the command line.
    assert (saved["global_batch_size"], saved["epochs"], saved["embedding_dim"],
            saved["eval_exclude_context"]) == (60, 1, 8, True)
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    info = data.load_data_dir(data_dir)
    ds = data.make_eval_dataset(info, 64)
    expected = evaluate.popularity_baseline(ds, info.movie_ids, info.counts, exclude_context=True)
    assert metrics["popularity"] == pytest.approx(expected)
    # Excluding the context changes the numbers here (contexts hold popular movies).
    assert expected != pytest.approx(
        evaluate.popularity_baseline(ds, info.movie_ids, info.counts))
