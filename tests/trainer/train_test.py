"""trainer.train.run in-process, on MirroredStrategy over the 2 logical CPUs."""
import json
import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs import schema
from tests.trainer import datadir
from trainer import checkpoints, data, loop, storage, task
from trainer.config import TUTORIAL, ConfigError, TrainConfig

KEYS = {"top_1", "top_5", "top_10", "top_50", "top_100", "ndcg_10", "mrr"}
STEPS_PER_EPOCH = 20  # 120 users x 10 train examples // 60


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data"))
    datadir.write_data_dir(path, num_movies=40, num_users=120, timeline_length=12)
    return path


def _config(data_dir, model_dir, **kw):
    base = dict(data_dir=data_dir, model_dir=str(model_dir), epochs=3, global_batch_size=60,
                learning_rate=0.05, optimizer="adam", embedding_dim=16,
                checkpoint_every_steps=5, keep_checkpoints=20, shuffle_buffer=500,
                eval_batch_size=64, strategy="auto")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("model")
    cfg = _config(data_dir, model_dir)
    return cfg, loop.run(cfg)


def _losses(model_dir):
    out = {}
    for f in tf.io.gfile.glob(os.path.join(model_dir, "train", "events.*")):
        for event in tf.compat.v1.train.summary_iterator(f):
            for v in event.summary.value:
                if v.tag == "loss_per_example":
                    out[event.step] = float(tf.make_ndarray(v.tensor))
    return [out[s] for s in sorted(out)]


def _variables(path):
    reader = tf.train.load_checkpoint(path)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith("model/")}


def test_trains_on_two_replicas_and_writes_model_dir(trained):
    cfg, results = trained
    total = 3 * STEPS_PER_EPOCH
    assert results["step"] == total
    with open(os.path.join(cfg.model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["step"] == total
    assert KEYS <= set(metrics["test"]) and KEYS <= set(metrics["popularity"])
    with open(os.path.join(cfg.model_dir, "config.json")) as f:
        assert TrainConfig.from_dict(json.load(f)) == cfg
    assert tf.train.latest_checkpoint(checkpoints.checkpoint_dir(cfg.model_dir)).endswith(f"ckpt-{total}")
    # The first export: version 1, and the LATEST pointer.
    assert os.path.exists(os.path.join(cfg.model_dir, "export", "1", "saved_model.pb"))
    with open(os.path.join(cfg.model_dir, "export", "LATEST")) as f:
        assert f.read() == "1\n"

    losses = _losses(cfg.model_dir)
    assert len(losses) == total
    first, last = np.mean(losses[:STEPS_PER_EPOCH]), np.mean(losses[-STEPS_PER_EPOCH:])
    assert last < first - 0.1, (first, last)  # the successor structure is learnable
    # ... and learnt: better than recommending the most popular movies.
    assert metrics["test"]["top_10"] > metrics["popularity"]["top_10"] + 0.2


def test_resume_mid_epoch_reproduces_the_uninterrupted_run(trained, tmp_path):
    cfg, _ = trained
    # A model_dir holding only the checkpoint from step 25 (mid epoch 2), as if
    # the run had been killed there.
    src, dst = _copy_checkpoint(cfg, str(tmp_path), 25)
    resumed = cfg.replace(model_dir=str(tmp_path), export=False, eval_every_epoch=False)
    assert loop.run(resumed)["step"] == 60
    # Same data position (skipped batches, per-epoch seeds) and optimizer state:
    # the same weights as never stopping.
    a = _variables(os.path.join(src, "ckpt-60"))
    b = _variables(os.path.join(dst, "ckpt-60"))
    assert a.keys() == b.keys() and len(a) >= 5
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def _copy_checkpoint(cfg, model_dir: str, step: int) -> tuple[str, str]:
    """Gives model_dir only checkpoint `step` of the trained run, as if that run had
    stopped there; returns (the trained run's, model_dir's) checkpoint directories."""
    src = checkpoints.checkpoint_dir(cfg.model_dir)
    dst = checkpoints.checkpoint_dir(model_dir)
    os.makedirs(dst)
    for f in tf.io.gfile.glob(os.path.join(src, f"ckpt-{step}.*")):
        shutil.copy(f, dst)
    tf.compat.v1.train.update_checkpoint_state(dst, os.path.join(dst, f"ckpt-{step}"))
    return src, dst


def test_finished_run_is_not_trained_again(trained, caplog):
    cfg, results = trained
    before = sorted(os.listdir(checkpoints.checkpoint_dir(cfg.model_dir)))
    caplog.set_level(logging.INFO, logger="absl")
    assert loop.run(cfg) == results
    assert "Already trained: step 60 >= 60" in caplog.text
    assert sorted(os.listdir(checkpoints.checkpoint_dir(cfg.model_dir))) == before


@pytest.mark.parametrize("stopped_in", ["final evaluation", "export"])
def test_run_stopped_after_its_last_step_evaluates_and_exports_on_rerun(
        trained, tmp_path, caplog, stopped_in):
    # A model_dir as a run stopped (e.g. killed at the end of a preemption's
    # grace period) after its last checkpoint leaves it: in the final evaluation,
    # metrics.json is the previous epoch's; in the export, the only export is an
    # earlier run's (older than the last checkpoint).
    cfg, results = trained
    if stopped_in == "export":
        shutil.copytree(os.path.join(cfg.model_dir, "export"), tmp_path / "export")
        os.utime(tmp_path / "export" / "1" / "saved_model.pb", (1e9, 1e9))  # 2001
    _copy_checkpoint(cfg, str(tmp_path), 60)
    shutil.copy(os.path.join(cfg.model_dir, "config.json"), tmp_path)
    metrics = {**results, "step": 40} if stopped_in == "final evaluation" else results
    with open(tmp_path / "metrics.json", "w") as f:
        json.dump(metrics, f)
    caplog.set_level(logging.INFO, logger="absl")
    rerun = loop.run(cfg.replace(model_dir=str(tmp_path)))
    assert "Already trained" not in caplog.text
    assert "Training steps 60..60" in caplog.text  # nothing trained again
    assert rerun["step"] == 60 and rerun["test"] == pytest.approx(results["test"])
    newest = "2" if stopped_in == "export" else "1"
    assert os.path.exists(tmp_path / "export" / newest / "saved_model.pb")
    # ... and now it is done.
    caplog.clear()
    caplog.set_level(logging.INFO, logger="absl")  # the export leaves absl's logger at WARNING
    assert loop.run(cfg.replace(model_dir=str(tmp_path))) == rerun
    assert "Already trained: step 60 >= 60" in caplog.text


def test_checkpoint_of_another_embedding_dim(trained):
    cfg, _ = trained
    with pytest.raises(checkpoints.ModelDirError,
                       match="--embedding_dim=16 there, --embedding_dim=8 now"):
        loop.run(cfg.replace(embedding_dim=8))


def test_checkpoint_of_another_vocabulary(trained, tmp_path):
    cfg, _ = trained
    datadir.write_data_dir(str(tmp_path), num_movies=30, num_users=60)
    with pytest.raises(checkpoints.ModelDirError, match="does not fit this model.*--data_dir"):
        loop.run(cfg.replace(data_dir=str(tmp_path)))


def test_unwritable_model_dir(data_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(storage.StorageError,
                       match="--model_dir=.*/file/model: cannot create directory"):
        loop.run(_config(data_dir, tmp_path / "file" / "model"))


def test_data_dir_without_success(tmp_path):
    datadir.write_data_dir(str(tmp_path / "d"), num_users=5, success=False)
    with pytest.raises(data.DataError, match="no _SUCCESS"):
        loop.run(_config(str(tmp_path / "d"), tmp_path / "m"))
    assert not os.path.exists(tmp_path / "m")  # refused before touching model_dir


def test_damaged_shard_stops_training_naming_the_file(tmp_path):
    # A data_dir without a manifest: with one, the damage is refused before
    # training (integrity_test.py); without, it is found while training.
    data_dir = str(tmp_path / "d")
    datadir.write_data_dir(data_dir, num_users=120, train_shards=2, compression="none",
                           manifest=False)
    bad = os.path.join(data_dir, "train", schema.shard_name(1, 2, "none"))
    with open(bad, "r+b") as f:
        f.seek(os.path.getsize(bad) // 2)
        f.write(b"\xff" * 8)
    with pytest.raises(data.DataError, match=f"{bad}: unreadable shard"):
        loop.run(_config(data_dir, tmp_path / "m", eval_every_epoch=False, export=False))


def test_adagrad_on_the_mean_loss_steps_like_the_tutorial_on_the_sum():
    # The tutorial differentiates the batch SUM with Adagrad(0.1); we use the
    # mean (sum / B). make_optimizer's initial accumulator 0.1 / B^2 makes the
    # steps identical: acc_mean = acc_sum / B^2 and g_mean = g_sum / B, so
    # g_mean / sqrt(acc_mean) = g_sum / sqrt(acc_sum). (With the default 0.1
    # the sample's loss did not move in 5 epochs.)
    b = 64
    x = tf.constant(np.random.default_rng(0).random(b), tf.float32)
    w_sum, w_mean = tf.Variable([1.0, -2.0]), tf.Variable([1.0, -2.0])
    tutorial = tf.keras.optimizers.Adagrad(0.1)
    # The tutorial preset (Adagrad 0.1, constant rate), at batch b.
    ours = task.make_optimizer(TrainConfig(data_dir="-", model_dir="-",
                                            **{**TUTORIAL, "global_batch_size": b}))
    for _ in range(5):
        with tf.GradientTape(persistent=True) as tape:
            loss_sum = tf.reduce_sum((w_sum[0] * x + w_sum[1]) ** 2)
            loss_mean = tf.reduce_sum((w_mean[0] * x + w_mean[1]) ** 2) / b
        tutorial.apply_gradients([(tape.gradient(loss_sum, w_sum), w_sum)])
        ours.apply_gradients([(tape.gradient(loss_mean, w_mean), w_mean)])
    assert not np.allclose(w_sum.numpy(), [1.0, -2.0], atol=0.1)  # it moved
    np.testing.assert_allclose(w_mean.numpy(), w_sum.numpy(), rtol=1e-4)


def test_default_strategy_trains_on_one_device(data_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="absl")
    cfg = _config(data_dir, tmp_path, strategy="default", epochs=1, eval_every_epoch=False,
                  export=False)
    assert loop.run(cfg)["step"] == STEPS_PER_EPOCH
    assert "_DefaultDistributionStrategy with 1 replica(s)" in caplog.text


def test_global_batch_not_divisible_by_replicas(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="--global_batch_size=61 is not divisible by the 2"):
        loop.run(_config(data_dir, tmp_path, global_batch_size=61))
