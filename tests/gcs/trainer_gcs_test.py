"""The trainer on gs:// end to end, against the emulator through TF's own GCS filesystem.

data_dir is streamed by tf.data from the bucket; model_dir in the bucket receives
checkpoints, TensorBoard events, config.json, metrics.json and the SavedModel; a
second run resumes from the bucket's checkpoint; trainer.recommend serves from it.
A missing bucket is refused by the preflight, in seconds (TF alone spins forever).
"""
from __future__ import annotations

import json
import re

import pytest

from tests.gcs import util
from tests.trainer import datadir

pytest_plugins = ["tests.gcs.fixtures"]


@pytest.fixture(scope="module")
def data_uri(gcs_emulator, tmp_path_factory):
    """A 40-user data_dir (see tests/trainer/datadir.py) in its own bucket."""
    local = str(tmp_path_factory.mktemp("data"))
    datadir.write_data_dir(local, num_users=40, timeline_length=12)
    return util.upload_dir(gcs_emulator, local, gcs_emulator.create_bucket("data"), "data")


@pytest.mark.slow
def test_train_resume_and_recommend_on_gcs(gcs_emulator, gcs_bucket, data_uri):
    model_dir = f"gs://{gcs_bucket}/runs/1"
    first = util.run_trainer(gcs_emulator, util.train_flags(data_uri, model_dir))
    assert first.returncode == 0, first.stderr[-4000:]
    names = util.names(gcs_emulator, gcs_bucket, "runs/1/")
    last = f"runs/1/checkpoints/ckpt-{util.STEPS_PER_EPOCH}"
    for expected in (f"{last}.index", "runs/1/checkpoints/checkpoint", "runs/1/config.json",
                     "runs/1/metrics.json", "runs/1/export/1/saved_model.pb",
                     "runs/1/export/1/assets/vocab.tsv", "runs/1/export/LATEST"):
        assert expected in names, names
    assert not [n for n in names if n.startswith("runs/1/export/.tmp-")], names
    assert any(n.startswith("runs/1/train/events.out.tfevents.") for n in names), names
    assert any(n.startswith("runs/1/eval/events.out.tfevents.") for n in names), names
    metrics = json.loads(util.read(gcs_emulator, gcs_bucket, "runs/1/metrics.json"))
    assert metrics["step"] == util.STEPS_PER_EPOCH and 0 <= metrics["test"]["top_10"] <= 1
    config = json.loads(util.read(gcs_emulator, gcs_bucket, "runs/1/config.json"))
    assert config["data_dir"] == data_uri and config["model_dir"] == model_dir
    # The shards were streamed by TF's own gs:// client (TLS through the proxy).
    data_bucket = data_uri.split("/")[2]
    tf_reads = [r for r in gcs_emulator.front.requests
                if r.host == "storage.googleapis.com" and data_bucket in r.path
                and "train/part-" in util.object_name(r)]
    assert tf_reads, "tf.data did not read the train shards from the bucket"

    # A second run with one more epoch resumes from the bucket's checkpoint.
    second = util.run_trainer(gcs_emulator, util.train_flags(
        data_uri, model_dir, "--epochs=2", "--noexport"))
    assert second.returncode == 0, second.stderr[-4000:]
    assert (f"Resumed from checkpoint {model_dir}/checkpoints/ckpt-{util.STEPS_PER_EPOCH} "
            f"at step {util.STEPS_PER_EPOCH} (epoch 2 of 2)") in second.stderr
    assert f"runs/1/checkpoints/ckpt-{2 * util.STEPS_PER_EPOCH}.index" in util.names(
        gcs_emulator, gcs_bucket, "runs/1/checkpoints/")

    # The export is loaded from the bucket (movie ids are 7 i + 3, see datadir.py).
    rec = util.run_module(gcs_emulator, "trainer.recommend", f"--model_dir={model_dir}",
                          "--history=3,10,17", "--k=5")
    assert rec.returncode == 0, rec.stderr[-4000:]
    assert "Top 5 recommendations:" in rec.stdout
    ranked = re.findall(r"^\s+\d+\s+(\d+)\s+1999\s", rec.stdout.split("Top 5")[1], re.M)
    assert len(ranked) == 5 and not {"3", "10", "17"} & set(ranked), rec.stdout


@pytest.mark.slow
@pytest.mark.parametrize("which", ["model_dir", "data_dir"])
def test_missing_bucket_is_refused_before_any_tf_gcs_call(gcs_emulator, gcs_bucket, data_uri,
                                                          which):
    missing = "gs://seqrec-no-such-bucket/x"
    data_dir, model_dir = (data_uri, missing) if which == "model_dir" else (
        missing, f"gs://{gcs_bucket}/m")
    before = len(gcs_emulator.front.requests)
    # TF's makedirs/CheckpointManager.save would spin forever here (storage.py):
    # the subprocess timeout is the bound.
    proc = util.run_trainer(gcs_emulator, util.train_flags(data_dir, model_dir), timeout=90)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert (f"error: --{which}={missing}: cannot list {missing}: "
            "bucket gs://seqrec-no-such-bucket does not exist") in proc.stderr
    # No TF (TLS) request ever named the missing bucket: the preflight came first.
    tf_calls = [r for r in gcs_emulator.front.requests[before:]
                if r.host != "plain" and "seqrec-no-such-bucket" in r.path]
    assert tf_calls == []
