"""Faults with gs:// storage: a failed checkpoint save, a killed trainer, leftovers of
an interrupted save, and a Beam job whose output bucket vanishes mid-write.

Faults are injected by the test proxy (`FrontServer.refuse`), not by stopping the
emulator: the refusal hits exactly the requests chosen (e.g. the publishing of one
checkpoint), at a deterministic point of the run, while everything written before
stays in the emulator's memory backend for the restart to find. Killing the
emulator would need its filesystem backend, which drops the directory marker
objects TF writes, and its timing would race with the trainer.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest

from beam_jobs import pipeline, schema
from tests.beam_jobs import util as beam_util
from tests.gcs import util
from tests.gcs.emulator import ROOT
from tests.trainer import cli, datadir

pytest_plugins = ["tests.gcs.fixtures"]

WRITES = ("POST", "PUT", "PATCH", "DELETE")


@pytest.fixture(scope="module")
def data_uri(gcs_emulator, tmp_path_factory):
    local = str(tmp_path_factory.mktemp("data"))
    datadir.write_data_dir(local, num_users=40, timeline_length=12)
    return util.upload_dir(gcs_emulator, local, gcs_emulator.create_bucket("data"), "data")


def _publishes_ckpt_20(request) -> bool:
    """Requests that publish checkpoint 20 (merge of ckpt-20_temp/ into ckpt-20.*)."""
    return request.method in WRITES and bool(
        re.search(r"ckpt-20\.(index|data)", util.object_name(request)))


@pytest.mark.slow
def test_failed_save_stops_and_rerun_resumes_from_last_complete_checkpoint(
        gcs_emulator, gcs_bucket, data_uri):
    model_dir = f"gs://{gcs_bucket}/m"
    ckpts = f"{model_dir}/checkpoints"
    gcs_emulator.front.refuse(_publishes_ckpt_20)
    try:
        failed = util.run_trainer(gcs_emulator, util.train_flags(data_uri, model_dir))
    finally:
        gcs_emulator.front.refuse(None)
    assert failed.returncode == 2, failed.stderr[-4000:]
    match = re.search(
        rf"error: saving checkpoint 20 to {ckpts} failed after ([\d.]+) s \(.*\)\. Training "
        rf"stopped at step 20; the last complete checkpoint is {ckpts}/ckpt-10: rerun",
        failed.stderr)
    assert match, failed.stderr[-4000:]
    print(f"failed save reported after {match.group(1)} s (GCS_RETRY_CONFIG_* of the fixture)")
    assert any(_publishes_ckpt_20(r) for r in gcs_emulator.front.refused)

    def stale():
        return [n for n in util.names(gcs_emulator, gcs_bucket, "m/checkpoints/")
                if "_temp" in n or ".tempstate" in n or "checkpoint.tmp" in n]

    # The failed merge left the staged shards of checkpoint 20 behind.
    left = stale()
    print(f"left by the failed save: {left}")
    assert any(n.startswith("m/checkpoints/ckpt-20_temp/") for n in left), left
    # Plus one of each other kind TF can leave (a bundle's .tempstate file, the state
    # file's atomic-write temp).
    bucket = gcs_emulator.client().bucket(gcs_bucket)
    for name in ("ckpt-30.data-00000-of-00001.tempstate8513", "checkpoint.tmp5f1e"):
        bucket.blob(f"m/checkpoints/{name}").upload_from_string(b"partial")

    second = util.run_trainer(gcs_emulator, util.train_flags(data_uri, model_dir, "--noexport"))
    assert second.returncode == 0, second.stderr[-4000:]
    assert f"Resumed from checkpoint {ckpts}/ckpt-10 at step 10" in second.stderr
    assert "leftover(s) of interrupted checkpoint saves" in second.stderr
    assert stale() == []
    assert f"m/checkpoints/ckpt-{util.STEPS_PER_EPOCH}.index" in util.names(
        gcs_emulator, gcs_bucket, "m/checkpoints/")


def _latest_step(emulator, bucket: str) -> int | None:
    """Step of the `checkpoint` state file's latest checkpoint (None: no state yet)."""
    blob = emulator.client().bucket(bucket).blob("k/checkpoints/checkpoint")
    if not blob.exists():
        return None
    text = blob.download_as_bytes().decode()
    return int(re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', text, re.M).group(1))


@pytest.mark.slow
def test_killed_trainer_resumes_from_the_bucket(gcs_emulator, gcs_bucket, data_uri):
    model_dir = f"gs://{gcs_bucket}/k"
    flags = util.train_flags(data_uri, model_dir, "--epochs=2", "--noexport")
    # Not under `timeout`: a SIGKILL must reach the trainer itself (timeout cannot
    # pass on a KILL; its child would train on).
    proc = subprocess.Popen([sys.executable, "-m", "trainer.train", *flags], cwd=ROOT,
                            env=gcs_emulator.subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    returncode = cli.kill_when(
        proc, lambda: (_latest_step(gcs_emulator, gcs_bucket) or 0) >= 2 * util.CHECKPOINT_EVERY,
        timeout_s=150, poll_s=0.05)
    assert returncode == -signal.SIGKILL, "the run ended before it could be interrupted"
    step = _latest_step(gcs_emulator, gcs_bucket)
    assert 2 * util.CHECKPOINT_EVERY <= step < 2 * util.STEPS_PER_EPOCH

    second = util.run_trainer(gcs_emulator, flags)
    assert second.returncode == 0, second.stderr[-4000:]
    assert f"Resumed from checkpoint {model_dir}/checkpoints/ckpt-{step} at step {step}" in (
        second.stderr)
    assert f"Training steps {step}..{2 * util.STEPS_PER_EPOCH}" in second.stderr
    print(f"killed after checkpoint {step}; resumed at step {step}")


# ------------------------------------------------------------------------------ Beam
@pytest.fixture
def beam_gcs(gcs_python_env):
    from apache_beam.internal.gcp import auth

    auth._Credentials._credentials_init = False
    return gcs_python_env


def test_beam_job_fails_without_success_when_the_bucket_vanishes(beam_gcs, gcs_bucket):
    """After the first few objects are written every request on the bucket answers 404
    (bucket not found), as when it is deleted mid-job: the job fails, no _SUCCESS."""
    input_uri = util.upload_dir(beam_gcs, beam_util.SAMPLE, gcs_bucket, "input")
    output_uri = f"gs://{gcs_bucket}/out"
    front = beam_gcs.front
    uploads_before = sum(1 for r in front.requests if r.path.startswith("/upload/"))
    allowed = 3

    def vanished(request) -> bool:
        uploads = [r for r in front.requests[:] if r.path.startswith("/upload/")]
        return gcs_bucket in request.path and len(uploads) - uploads_before > allowed

    front.refuse(vanished, status=404)
    try:
        with pytest.raises(Exception) as info:
            pipeline.run([f"--input_dir={input_uri}", f"--output_dir={output_uri}",
                          "--num_shards=4"])
    finally:
        front.refuse(None)
    assert front.refused, "the fault never triggered"
    print(f"job failed with: {str(info.value).splitlines()[0][:300]}")
    names = util.names(beam_gcs, gcs_bucket, "out/")
    assert f"out/{schema.SUCCESS_FILE}" not in names and f"out/{schema.METADATA_FILE}" not in names
