"""The evaluation protocol on the Beam job's real output: a validation split
evaluated every epoch, test once at the end, both in metrics.json;
--eval_split; --eval_exclude_seen; data_dirs without validation still train."""
import json
import os

import pytest
import tensorflow as tf

from beam_jobs import synthetic
from tests.beam_jobs import util as beam_util
from tests.trainer import cli
from trainer import data, evaluate, loop
from trainer.config import TrainConfig

KEYS = {"top_1", "top_5", "top_10", "top_50", "top_100", "ndcg_10", "mrr", "num_queries"}
# Small and quick: 2 epochs of a few steps.
# markov_weight=0: these tests check the protocol against the towers' own scores.
FLAGS = dict(epochs=2, global_batch_size=256, embedding_dim=16, checkpoint_every_steps=0,
             export=False, markov_weight=0.0)


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    """{"validation": the job's default output, "novalidation": --novalidation's}."""
    base = tmp_path_factory.mktemp("protocol")
    # The generator and the Beam job in this process (the command lines have their own
    # tests): no interpreter start or Beam import per data_dir.
    synthetic.generate(synthetic.Config(num_users=300, num_movies=200), str(base / "raw"))
    out = {}
    for name, extra in (("validation", []), ("novalidation", ["--novalidation"])):
        out[name] = str(base / name)
        beam_util.run_job(base / "raw", out[name], "--num_shards=2", *extra)
    return out


def _events(directory: str) -> list[tuple[int, str]]:
    out = []
    for path in tf.io.gfile.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            out += [(event.step, v.tag) for v in event.summary.value]
    return out


def test_validation_every_epoch_test_once(data_dirs, tmp_path):
    cfg = TrainConfig(data_dir=data_dirs["validation"], model_dir=str(tmp_path), **FLAGS)
    results = loop.run(cfg)
    with open(tmp_path / "metrics.json") as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(results))
    assert saved["eval_split"] == "validation"
    for block in ("validation", "test", "popularity", "popularity_validation"):
        assert KEYS <= set(saved[block]), block
    info = data.load_data_dir(data_dirs["validation"])
    assert saved["validation"]["num_queries"] == info.num_examples["validation"] > 0
    assert saved["test"]["num_queries"] == info.num_examples["test"] > 0
    steps = {tag: sorted(s for s, t in _events(str(tmp_path / "eval")) if t == tag)
             for tag in ("validation/top_10", "test/top_10", "popularity/top_10",
                         "popularity_validation/top_10")}
    last = saved["step"]
    assert steps["validation/top_10"] == [last // 2, last]  # every epoch
    assert steps["test/top_10"] == [last]  # once, at the end
    assert steps["popularity/top_10"] == [last] and len(steps["popularity_validation/top_10"]) == 1

    # A rerun finds the final evaluation done: nothing is trained or evaluated again.
    again = loop.run(cfg)
    assert again == saved


def test_eval_split_test_and_exclude_seen(data_dirs, tmp_path):
    cfg = TrainConfig(data_dir=data_dirs["validation"], model_dir=str(tmp_path),
                      eval_split="test", eval_exclude_seen=True, **FLAGS)
    results = loop.run(cfg)
    assert results["eval_split"] == "test"
    steps = sorted(s for s, t in _events(str(tmp_path / "eval")) if t == "test/top_10")
    assert steps == [results["step"] // 2, results["step"]]
    # The numbers are the seen-excluded ones, and excluding can only raise them.
    # Rebuild the trained towers from the checkpoint through a fresh run object.
    info = data.load_data_dir(data_dirs["validation"])
    from trainer.task import RetrievalTask
    task = RetrievalTask(info, cfg)
    model, optimizer = task.build_model(tf.distribute.get_strategy())
    tf.train.Checkpoint(model=model, optimizer=optimizer).restore(
        tf.train.latest_checkpoint(cfg.checkpoints_uri)).expect_partial()
    for split in ("validation", "test"):
        ds = data.make_eval_dataset(info, 128, split, seen=True)
        seen = evaluate.evaluate_retrieval(model.query_model, model.candidate_model, ds,
                                           info.movie_ids, exclude_seen=True)
        plain = evaluate.evaluate_retrieval(model.query_model, model.candidate_model, ds,
                                            info.movie_ids)
        assert seen["top_10"] == pytest.approx(results[split]["top_10"])
        assert seen["mrr"] > plain["mrr"]


def test_data_dir_without_validation(data_dirs, tmp_path):
    old = data_dirs["novalidation"]
    results = loop.run(TrainConfig(data_dir=old, model_dir=str(tmp_path / "auto"), **FLAGS))
    assert results["eval_split"] == "test" and "validation" not in results
    for flag, message in (("--eval_split=validation", "has no validation split"),
                          ("--eval_exclude_seen", "have no seen_movie_id")):
        proc = cli.run(f"--data_dir={old}", f"--model_dir={tmp_path / flag[2:12]}", flag)
        assert proc.returncode == 2, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert message in last and flag.split("=")[0] in last, last
