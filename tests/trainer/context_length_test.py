"""A longer history end to end: the Beam job's --max_context_length=20 through the
trainer, the export and trainer.recommend."""
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs import synthetic
from tests.beam_jobs import util as beam_util
from tests.trainer import cli
from trainer import data, export, loop
from trainer.config import TrainConfig

L = 20


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("long")
    # In this process: no interpreter start or Beam import (the command lines have their
    # own tests).
    synthetic.generate(synthetic.Config(num_users=200, num_movies=150), str(base / "raw"))
    beam_util.run_job(base / "raw", base / "data", f"--max_context_length={L}",
                      "--num_shards=2")
    return str(base / "data")


# The transformer: its positions and attention masks are the parts sized by L (the GRU
# path reads any L the same way; model_test and the walkthrough cover it at L = 10).
@pytest.mark.parametrize("tower", ["transformer"])
def test_longer_histories_train_export_and_serve(data_dir, tmp_path, tower):
    info = data.load_data_dir(data_dir)
    assert info.context_length == L
    cfg = TrainConfig(data_dir=data_dir, model_dir=str(tmp_path), epochs=1,
                      global_batch_size=256, embedding_dim=16, query_tower=tower,
                      checkpoint_every_steps=0, export_k=5)
    results = loop.run(cfg)
    assert results["validation"]["num_queries"] == info.num_examples["validation"]
    loaded = tf.saved_model.load(export.latest(cfg.export_uri))
    assert int(loaded.context_length.numpy()) == L
    # A history of 25 known movies: the query reads its last 20.
    history = list(info.movie_ids[:25])
    serve = loaded.signatures["serving_default"]
    full = serve(context_movie_id=tf.constant([history], tf.int64))
    last = serve(context_movie_id=tf.constant([history[-L:]], tf.int64))
    np.testing.assert_array_equal(full["movie_ids"], last["movie_ids"])
    embed = loaded.signatures["query_embedding"]
    query = {n: embed(context_movie_id=tf.constant([h], tf.int64))["embedding"].numpy()
             for n, h in (("full", history), ("last", history[-L:]), ("19", history[-L + 1:]))}
    np.testing.assert_array_equal(query["full"], query["last"])
    assert not np.array_equal(query["full"], query["19"])  # the 20th movie back counts

    proc = subprocess.run(
        [sys.executable, "-m", "trainer.recommend", f"--model_dir={tmp_path}",
         "--history=" + ",".join(map(str, history)), "--k=3"],
        cwd=cli.ROOT, env=cli.env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"the model reads the last {L}" in proc.stdout
