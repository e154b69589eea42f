"""End to end through the CLI: a SIGKILLed run resumes from its checkpoint."""
import json
import os
import signal
import subprocess

import pytest
import tensorflow as tf

from tests.trainer import cli, datadir

pytestmark = pytest.mark.slow

STEPS = 2 * (100 * 10 // 10)  # 2 epochs x 100 steps (100 users x 10 train examples, batch 10)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data"))
    datadir.write_data_dir(path, num_users=100, timeline_length=12)
    return path


def _flags(data_dir, model_dir):
    return (f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--epochs=2",
            "--global_batch_size=10", "--embedding_dim=8", "--checkpoint_every_steps=10",
            "--virtual_cpu_devices=2", "--noeval_every_epoch", "--noexport", "--optimizer=adam",
            "--learning_rate=0.01")


def test_killed_run_resumes_from_its_last_checkpoint(data_dir, tmp_path):
    model_dir = str(tmp_path / "model")
    ckpts = os.path.join(model_dir, "checkpoints")
    proc = subprocess.Popen(cli.command(*_flags(data_dir, model_dir)), cwd=cli.ROOT,
                            env=cli.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    returncode = cli.kill_when(proc, lambda: bool(tf.train.latest_checkpoint(ckpts)))
    assert returncode == -signal.SIGKILL, "the run ended before it could be interrupted"
    killed_at = tf.train.latest_checkpoint(ckpts)
    step = int(killed_at.rsplit("-", 1)[1])
    assert 10 <= step < STEPS

    second = cli.run(*_flags(data_dir, model_dir))
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Resumed from checkpoint {killed_at} at step {step}" in second.stderr
    assert tf.train.latest_checkpoint(ckpts).endswith(f"ckpt-{STEPS}")
    with open(os.path.join(model_dir, "metrics.json")) as f:
        assert json.load(f)["step"] == STEPS

    # (That a finished run is not trained again is checked in-process in
    # train_test.py: a third process start would cost ~6 s here.)


def test_cli_bad_input_exits_with_the_message(tmp_path):
    datadir.write_data_dir(str(tmp_path / "d"), num_users=5, success=False)
    bad = cli.run(f"--data_dir={tmp_path / 'd'}", f"--model_dir={tmp_path / 'm'}")
    assert bad.returncode == 2
    assert f"error: {tmp_path / 'd'}: no _SUCCESS marker" in bad.stderr


def test_cli_rejects_a_bad_flag_value_naming_it(tmp_path):
    bad = cli.run(f"--data_dir={tmp_path}", f"--model_dir={tmp_path}", "--epochs=0")
    assert bad.returncode != 0
    assert "--epochs must be >= 1" in bad.stderr
