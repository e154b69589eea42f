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
from tests.trainer.towers import tower_cfg
from trainer import checkpoints, config, data, evaluate, loop, model, schedules, task
from trainer.config import ConfigError, LossConfig, TrainConfig

MOVIES = [3, 10, 17, 24, 31]


def _zero_scores_model(labels, movie_ids=None, sampling_probability=None, **loss):
    q, c = model.build_towers(MOVIES, 3, tower_cfg(8))
    m = model.SequentialRetrievalModel(q, c, len(labels), LossConfig(**loss), movie_ids=movie_ids,
                                       sampling_probability=sampling_probability)
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
    q, c = model.build_towers(MOVIES, 3, tower_cfg(8))
    m = model.SequentialRetrievalModel(q, c, global_batch_size=3, loss=LossConfig(temperature=0.25))
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
    q4, _ = model.build_towers(MOVIES, 4, tower_cfg(8, mask_padding=False))
    q2, _ = model.build_towers(MOVIES, 2, tower_cfg(8, mask_padding=False))
    q2.set_weights(q4.get_weights())
    padded = q4(tf.constant([[3, 10, 0, 0]], tf.int64))
    assert not np.allclose(padded, q2(tf.constant([[3, 10]], tf.int64)), atol=1e-4)


def test_stacked_gru_projection_and_dropout():
    q, _ = model.build_towers(MOVIES, 4, tower_cfg(8, gru_units=12, gru_layers=2, dropout=0.5))
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
    assert task.learning_rate(cfg.optim, 100) == cfg.optim.learning_rate
    cfg = cfg.replace(lr_schedule="linear", warmup_fraction=0.1, learning_rate=0.5)
    lr = task.learning_rate(cfg.optim, 100)
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
                      gru_layers=2, dropout=0.1, share_embeddings=True, last_movies=2,
                      negatives="global", logq_correction=1.0,
                      remove_accidental_hits=True, temperature=0.5, lr_schedule="cosine",
                      warmup_fraction=0.1, checkpoint_every_steps=0, eval_every_epoch=False,
                      export=False, shuffle_buffer=500, strategy="auto")
    results = loop.run(cfg)
    assert results["test"]["top_10"] > results["popularity"]["top_10"] + 0.2, results


def test_cli_preset_overrides_and_eval_exclude_context(data_dir, tmp_path):
    model_dir = str(tmp_path / "m")
    proc = cli.run(f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--preset=tutorial",
                   "--global_batch_size=60", "--epochs=1", "--embedding_dim=8",
                   "--eval_exclude_context", "--noexport", "--checkpoint_every_steps=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(model_dir, "config.json")) as f:
        saved = config.flatten(json.load(f))
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


def test_shared_embeddings_are_one_table_serving_both_towers():
    tf.keras.utils.set_random_seed(1)
    q, c = model.build_towers(MOVIES, 4, tower_cfg(8, share_embeddings=True))
    names = lambda m: sorted(v.name for v in m.trainable_variables)  # noqa: E731
    tables = [n for n in names(q) if "embedding" in n]
    assert tables == ["movie_embedding/embeddings:0"] == names(c)
    table = c.get_layer("movie_embedding")
    assert q.get_layer("movie_embedding") is table
    # Row r is the same movie in both towers: write a marker into movie 17's
    # row and the candidate tower returns it; the query tower changes too.
    before = q(tf.constant([[17, 0, 0, 0]], tf.int64)).numpy()
    w = table.get_weights()[0]
    w[model._lookup(MOVIES, "x")(tf.constant(17, tf.int64)).numpy()] = np.arange(8)
    table.set_weights([w])
    np.testing.assert_array_equal(c(tf.constant([17], tf.int64))[0], np.arange(8))
    assert not np.allclose(q(tf.constant([[17, 0, 0, 0]], tf.int64)), before)
    # The pad is still masked (explicit mask instead of mask_zero): [a, b, 0, 0]
    # is the 2-step context [a, b] ...
    q2, _ = model.build_towers(MOVIES, 2, tower_cfg(8, share_embeddings=True))
    q2.set_weights(q.get_weights())
    padded = q(tf.constant([[3, 10, 0, 0]], tf.int64))
    np.testing.assert_allclose(padded, q2(tf.constant([[3, 10]], tf.int64)), rtol=1e-6)
    # ... unless --nomask_padding.
    qu, _ = model.build_towers(MOVIES, 4, tower_cfg(8, share_embeddings=True, mask_padding=False))
    qu2, _ = model.build_towers(MOVIES, 2, tower_cfg(8, share_embeddings=True, mask_padding=False))
    qu2.set_weights(qu.get_weights())
    assert not np.allclose(qu(tf.constant([[3, 10, 0, 0]], tf.int64)),
                           qu2(tf.constant([[3, 10]], tf.int64)), atol=1e-4)
    # Separate tables (the flag off): two variables.
    q, c = model.build_towers(MOVIES, 4, tower_cfg(8))
    assert [n for n in names(q) if "embedding" in n] == ["query_embedding/embeddings:0"]
    assert names(c) == ["candidate_embedding/embeddings:0"]


def test_normalize_gives_unit_outputs():
    q, c = model.build_towers(MOVIES, 4, tower_cfg(8, gru_units=5, normalize=True))
    np.testing.assert_allclose(np.linalg.norm(q(tf.constant([[3, 10, 0, 0]], tf.int64)), axis=1),
                               1, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(c(tf.constant([3, 999], tf.int64)), axis=1),
                               1, rtol=1e-5)


def test_share_flag_is_a_shape_field():
    cfg = TrainConfig(data_dir="-", model_dir="-", share_embeddings=True, last_movies=0,
                      gru_units=0)
    assert config.shape_mismatches({"share_embeddings": True}, cfg) == []
    assert config.shape_mismatches({"share_embeddings": False}, cfg) == [
        "--share_embeddings=False there, --share_embeddings=True now"]
    # A config.json from before the flag existed had two tables.
    assert config.shape_mismatches({"embedding_dim": cfg.model.embedding_dim}, cfg) == [
        "--share_embeddings=False there, --share_embeddings=True now"]
    assert config.shape_mismatches({}, cfg.replace(share_embeddings=False)) == []
    assert config.shape_mismatches({}, cfg.replace(share_embeddings=False, last_movies=2)) == [
        "--last_movies=0 there, --last_movies=2 now"]
    # ... nor GRU units (then always d).
    assert config.shape_mismatches({}, cfg.replace(share_embeddings=False, gru_units=64)) == [
        "--gru_units=0 there, --gru_units=64 now"]


def test_shared_run_exports_the_prior_and_refuses_a_mismatched_resume(data_dir, tmp_path):
    cfg = TrainConfig(data_dir=data_dir, model_dir=str(tmp_path), epochs=1, global_batch_size=60,
                      embedding_dim=8, gru_units=4, share_embeddings=True, last_movies=2,
                      popularity_prior=1.0, checkpoint_every_steps=0, eval_every_epoch=False,
                      shuffle_buffer=500, strategy="auto", markov_weight=0.0)
    loop.run(cfg)
    # The export serves the shared table's rows as candidates, plus the prior:
    # score = query . row + log q(movie).
    info = data.load_data_dir(data_dir)
    m, _ = task.RetrievalTask(info, cfg).build_model(tf.distribute.get_strategy())
    tf.train.Checkpoint(model=m).restore(checkpoints.latest(cfg.checkpoints_uri)).expect_partial()
    context = tf.constant([[10, 17, 24] + [0] * (info.context_length - 3)], tf.int64)
    served = tf.saved_model.load(os.path.join(cfg.model_dir, "export", "1")).signatures[
        "serving_default"](context_movie_id=context)
    table = m.candidate_model.get_layer("movie_embedding").get_weights()[0]
    rows = model._lookup(info.movie_ids, "x")(tf.constant(served["movie_ids"][0])).numpy()
    query = m.query_model(context).numpy()[0]
    assert query.shape == (9,) and query[-1] == 1  # d + the prior's weight
    prior = model.popularity_log_prior(info.counts)[rows - 2]
    np.testing.assert_allclose(served["scores"][0], table[rows] @ query[:8] + prior,
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(checkpoints.ModelDirError,
                       match="--share_embeddings=True there, --share_embeddings=False now"):
        loop.run(cfg.replace(share_embeddings=False))


def test_popularity_log_prior_by_hand():
    # counts 3, 1, 0 (total 4, V 3): q = (c + 1) / 7 = 4/7, 2/7, 1/7.
    np.testing.assert_allclose(model.popularity_log_prior([3, 1, 0]),
                               np.log([4 / 7, 2 / 7, 1 / 7]), rtol=1e-6)
    np.testing.assert_allclose(model.popularity_log_prior([3, 1, 0], 0.5),
                               0.5 * np.log([4 / 7, 2 / 7, 1 / 7]), rtol=1e-6)
    with pytest.raises(ValueError, match="counts"):
        model.popularity_log_prior([1, -1])


def test_popularity_prior_changes_inference_scores_only():
    prior = model.popularity_log_prior([40, 0, 10, 5, 1])
    features = {schema.CONTEXT_MOVIE_ID: tf.constant([[3, 0, 0], [10, 3, 0], [24, 0, 0]], tf.int64),
                schema.LABEL_MOVIE_ID: tf.constant([10, 17, 31], tf.int64)}
    tf.keras.utils.set_random_seed(4)
    plain = model.SequentialRetrievalModel(*model.build_towers(MOVIES, 3, tower_cfg(8)), global_batch_size=3)
    plain(features)
    tf.keras.utils.set_random_seed(4)
    with_prior = model.SequentialRetrievalModel(
        *model.build_towers(MOVIES, 3, tower_cfg(8), log_prior=prior), global_batch_size=3)
    with_prior(features)
    with_prior.set_weights(plain.get_weights())  # the prior adds no variable
    # Training: the query's extra column is 0, so the loss is unchanged.
    a = float(plain.compute_losses(features, training=True)[1])
    assert math.isclose(float(with_prior.compute_losses(features, training=True)[1]), a,
                        rel_tol=1e-6)
    # Inference: every candidate's score gains its prior (unknown id 99: the lowest).
    ids = tf.constant(MOVIES + [99], tf.int64)
    context = features[schema.CONTEXT_MOVIE_ID]
    s0 = plain.query_model(context).numpy() @ plain.candidate_model(ids).numpy().T
    s1 = with_prior.query_model(context).numpy() @ with_prior.candidate_model(ids).numpy().T
    np.testing.assert_allclose(s1 - s0, np.tile([*prior, prior.min()], (3, 1)), rtol=1e-5,
                               atol=1e-5)
    assert with_prior.query_model(context, training=True).numpy()[:, -1].tolist() == [0, 0, 0]
def test_last_movies_skip_past_the_gru():
    # query = [GRU state, embeddings of the last 2 non-pad context movies
    # (latest first; zeros where the context is shorter)] @ W + b.
    tf.keras.utils.set_random_seed(2)
    q, c = model.build_towers(MOVIES, 4, tower_cfg(8, gru_units=5, last_movies=2, share_embeddings=True))
    x = tf.constant([[3, 10, 0, 0], [17, 24, 31, 3], [31, 0, 0, 0]], tf.int64)
    gru = tf.keras.Model(q.input, q.get_layer("query_gru").output)(x).numpy()
    e = lambda ids: c(tf.constant(ids, tf.int64)).numpy()  # noqa: E731 (shared table)
    last = np.concatenate([e([10, 3, 31]), e([3, 31, 31]) * [[1], [1], [0]]], axis=1)
    w, b = q.get_layer("query_projection").get_weights()
    assert w.shape == (5 + 2 * 8, 8)
    np.testing.assert_allclose(q(x), np.concatenate([gru, last], 1) @ w + b, rtol=1e-5,
                               atol=1e-6)
    # With separate tables the skip reads the query tower's table.
    q, _ = model.build_towers(MOVIES, 4, tower_cfg(8, last_movies=1))
    assert q.get_layer("query_projection").get_weights()[0].shape == (8 + 8, 8)


def test_uniform_negatives_add_columns_in_training_only():
    # All scores 0: the softmax is uniform over the 2 in-batch candidates plus
    # the 5 uniformly drawn movies in training (loss log 7), over 2 otherwise.
    m, features = _zero_scores_model([3, 10], movie_ids=MOVIES, uniform_negatives=5)
    assert math.isclose(float(m.compute_losses(features, training=True)[1]), math.log(7),
                        rel_tol=1e-6)
    assert math.isclose(float(m.compute_losses(features)[1]), math.log(2), rel_tol=1e-6)
    # The drawn movies are real negatives: with a trained-looking candidate
    # table the loss depends on which movies they are (different draws).
    emb = m.candidate_model.get_layer("candidate_embedding")
    emb.set_weights([np.random.default_rng(0).normal(size=emb.get_weights()[0].shape)])
    draws = {round(float(m.compute_losses(features, training=True)[1]), 6) for _ in range(8)}
    assert len(draws) > 1
    with pytest.raises(ConfigError, match="--uniform_negatives"):
        TrainConfig(data_dir="-", model_dir="-", uniform_negatives=8, logq_correction=1.0)
