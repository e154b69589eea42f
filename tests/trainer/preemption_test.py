"""Preemption (trainer/preemption.py): a real SIGTERM or SIGINT mid-epoch makes the
trainer finish the step in flight, checkpoint it and exit 75 within the grace
period; the rerun resumes from exactly that step, and no step is trained twice
or skipped. On 2 replicas (MirroredStrategy over 2 virtual CPUs), on a local and
a gs:// model_dir, and with two MultiWorkerMirroredStrategy workers of which
only one is signalled."""
import json
import os
import re
import signal
import time

import pytest
import tensorflow as tf

from tests.gcs import util as gcs_util
from tests.trainer import cli, datadir
from trainer import preemption

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.gcs.fixtures"]

STEPS_PER_EPOCH = 100  # 100 users x 10 train examples // batch 10
TOTAL = 2 * STEPS_PER_EPOCH
GRACE_S = 30  # Google Cloud's preemption notice and Kubernetes' default grace period
# Progress logs each quarter of an epoch; the signal goes out at the first one.
QUARTER = r"epoch 1/2: step 25/100"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data"))
    datadir.write_data_dir(path, num_users=100, timeline_length=12)
    return path


def _flags(data_dir, model_dir, *extra):
    # No periodic checkpoints: the one at the stop is the signal's doing.
    return (f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--epochs=2",
            "--global_batch_size=10", "--embedding_dim=8", "--checkpoint_every_steps=0",
            "--noeval_every_epoch", "--noexport", *extra)


def _stopped_at(output: str, signal_name: str) -> tuple[int, str]:
    """(step, checkpoint) from the trainer's own line about the stop."""
    found = re.search(rf"stopped by {signal_name} after step (\d+): checkpoint (\S+) saved; "
                      r"rerun the same command to resume from it \(exit status 75\)", output)
    assert found, output[-4000:]
    return int(found.group(1)), found.group(2)


def _iterations(checkpoint: str) -> int:
    """The optimizer's step counter as saved in a checkpoint (local or gs://)."""
    reader = tf.train.load_checkpoint(checkpoint)
    return int(reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"))


def _logged_steps(model_dir: str) -> list[int]:
    """Every step with a loss in the train/ TensorBoard events, over all runs."""
    steps = []
    for f in tf.io.gfile.glob(os.path.join(model_dir, "train", "events.*")):
        for event in tf.compat.v1.train.summary_iterator(f):
            steps += [event.step for v in event.summary.value if v.tag == "loss_per_example"]
    return sorted(steps)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_epoch_checkpoints_the_step_reached_and_the_rerun_resumes(
        data_dir, tmp_path, sig):
    model_dir = str(tmp_path / "model")
    ckpts = os.path.join(model_dir, "checkpoints")
    with cli.Watched(cli.command(*_flags(data_dir, model_dir, "--virtual_cpu_devices=2")),
                     cli.env()) as run:
        run.wait_for(QUARTER)
        sent = run.signal(sig)
        returncode = run.wait(timeout_s=GRACE_S + 30)
        took = time.monotonic() - sent
    output = run.output
    assert returncode == preemption.EXIT_PREEMPTED, output[-4000:]
    assert took < GRACE_S, took
    assert "MirroredStrategy with 2 replica(s)" in output
    step, checkpoint = _stopped_at(output, sig.name)
    # At or past the signal, and before the end (normally mid-epoch 1; a loaded
    # machine may take the signal a few steps later).
    assert 25 <= step < TOTAL
    # The checkpoint is the step reached: its name, the optimizer's counter in
    # it, the latest one, and the last step with a logged loss.
    assert checkpoint == os.path.join(ckpts, f"ckpt-{step}")
    assert tf.train.latest_checkpoint(ckpts) == checkpoint
    assert _iterations(checkpoint) == step
    assert _logged_steps(model_dir) == list(range(1, step + 1))
    if sig == signal.SIGINT:
        return  # the same path as SIGTERM from here; the rerun is checked once

    rerun = cli.run(*_flags(data_dir, model_dir, "--virtual_cpu_devices=2"))
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert (f"Resumed from checkpoint {checkpoint} at step {step} "
            f"(epoch {step // STEPS_PER_EPOCH + 1} of 2)") in rerun.stderr
    with open(os.path.join(model_dir, "metrics.json")) as f:
        assert json.load(f)["step"] == TOTAL
    assert tf.train.latest_checkpoint(ckpts).endswith(f"ckpt-{TOTAL}")
    # Nothing lost, nothing trained twice: the two runs logged each step once.
    assert _logged_steps(model_dir) == list(range(1, TOTAL + 1))


def test_two_workers_stop_at_the_same_step_when_one_is_signalled(data_dir, tmp_path):
    model_dir = str(tmp_path / "model")
    ckpts = os.path.join(model_dir, "checkpoints")
    workers = [f"127.0.0.1:{p}" for p in cli.free_ports(2)]
    runs = []
    try:
        for index in range(2):
            tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker",
                                                                  "index": index}}
            runs.append(cli.Watched(
                # `timeout -k`: a worker waits forever for a missing peer.
                cli.command(*_flags(data_dir, model_dir, "--strategy=multi_worker"),
                            timeout_s=150),
                cli.env(TF_CONFIG=json.dumps(tf_config))))
        # Only the non-chief is signalled, as when a node drain hits one worker.
        runs[1].wait_for(QUARTER)
        sent = runs[1].signal(signal.SIGTERM)
        codes = [run.wait(timeout_s=GRACE_S + 30) for run in runs]
        took = time.monotonic() - sent
    finally:
        for run in runs:
            run.__exit__()
    outputs = [run.output for run in runs]
    assert codes == [preemption.EXIT_PREEMPTED] * 2, "\n".join(o[-3000:] for o in outputs)
    assert took < GRACE_S, took
    assert "MultiWorkerMirroredStrategy with 2 replica(s)" in outputs[0]
    (chief_step, checkpoint), (step, _) = (_stopped_at(outputs[0], "another worker's signal"),
                                           _stopped_at(outputs[1], "SIGTERM"))
    assert chief_step == step and 25 <= step < TOTAL
    # The chief wrote the one checkpoint series, at the agreed step.
    assert checkpoint == os.path.join(ckpts, f"ckpt-{step}")
    assert tf.train.latest_checkpoint(ckpts) == checkpoint
    assert _iterations(checkpoint) == step
    assert _logged_steps(model_dir) == list(range(1, step + 1))


def test_sigterm_on_a_gcs_model_dir(gcs_emulator, gcs_bucket, tmp_path):
    # The data streams from one bucket, checkpoints and events go to another,
    # through TensorFlow's own gs:// filesystem (tests/gcs/). 40 users: 40 steps
    # an epoch, as every step's reads and the rerun's are slower there.
    datadir.write_data_dir(str(tmp_path / "data"), num_users=40, timeline_length=12)
    data_uri = gcs_util.upload_dir(gcs_emulator, str(tmp_path / "data"),
                                   gcs_emulator.create_bucket("data"), "data")
    model_dir = f"gs://{gcs_bucket}/run"
    env = gcs_emulator.subprocess_env({"PYTHONUNBUFFERED": "1"})
    with cli.Watched(cli.command(*_flags(data_uri, model_dir, "--virtual_cpu_devices=2")),
                     env) as run:
        run.wait_for(r"epoch 1/2: step 10/40")
        sent = run.signal(signal.SIGTERM)
        returncode = run.wait(timeout_s=GRACE_S + 30)
        took = time.monotonic() - sent
    assert returncode == preemption.EXIT_PREEMPTED, run.output[-4000:]
    assert took < GRACE_S, took
    step, checkpoint = _stopped_at(run.output, "SIGTERM")
    assert checkpoint == f"{model_dir}/checkpoints/ckpt-{step}"
    assert 10 <= step < 2 * 40
    state = gcs_util.read(gcs_emulator, gcs_bucket, "run/checkpoints/checkpoint").decode()
    assert f'model_checkpoint_path: "ckpt-{step}"' in state, state
    # This process's TensorFlow cannot reach the emulator: copy the objects here.
    local = tmp_path / "copy"
    for name in gcs_util.names(gcs_emulator, gcs_bucket, "run/"):
        if name.endswith("/"):  # a directory marker (TF's makedirs)
            continue
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(gcs_util.read(gcs_emulator, gcs_bucket, name))
    assert _iterations(str(local / f"run/checkpoints/ckpt-{step}")) == step
    assert _logged_steps(str(local / "run")) == list(range(1, step + 1))

    rerun = gcs_util.run_trainer(gcs_emulator, _flags(data_uri, model_dir,
                                                      "--virtual_cpu_devices=2"))
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert (f"Resumed from checkpoint {checkpoint} at step {step} "
            f"(epoch {step // 40 + 1} of 2)") in rerun.stderr
    metrics = json.loads(gcs_util.read(gcs_emulator, gcs_bucket, "run/metrics.json"))
    assert metrics["step"] == 2 * 40
