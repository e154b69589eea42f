"""The trainer as a user runs it: a plain shell (only PATH and HOME), the installed
console scripts, Vertex AI's environment variables, and what lands on the console
and in TensorBoard."""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

from tests.trainer import cli, datadir
from trainer import config

BIN = os.path.dirname(sys.executable)
HISTORY: list[int] = []  # three movies of the data_dir fixture's vocabulary

# TensorFlow's chatter that a default run must not show (each seen in `make run`
# before this was fixed).
NOISE = re.compile(r"absl::InitializeLog|oneDNN|cudart_stub|cuInit|cross_device_ops"
                   r"|functional_saver|untraced functions|table_handle|fingerprint")


def plain_env(**extra: str) -> dict:
    """What `env -i PATH=.venv/bin:/usr/bin:/bin HOME=$HOME` leaves."""
    return {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), **extra}


def run(*argv: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), cwd=cli.ROOT, env=env or plain_env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data"))
    info = datadir.write_data_dir(path, num_users=100, timeline_length=12)  # 1,000 examples
    assert info["train_examples"] == 1000
    HISTORY.extend(info["movie_ids"][:3])
    return path


def test_import_and_help_in_a_plain_shell():
    proc = run("python", "-c", "import trainer.model, trainer.train, trainer.recommend; "
               "import tensorflow as tf; print(tf.keras.__name__)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tf_keras" in proc.stdout  # Keras 2, which TFRS needs
    for argv in (["python", "-m", "trainer.train", "--helpshort"], ["seqrec-train", "--helpshort"]):
        proc = run(*argv)
        listed = set(re.findall(r"^  --(?:\[no\])?(\w+):", proc.stdout, re.M))
        assert listed == set(config.OPTIONS) | {"preset"}, argv
        assert "(default: '2048')" in proc.stdout  # --global_batch_size's, from TrainConfig
    for script in ("seqrec-prep", "seqrec-synthetic", "seqrec-train", "seqrec-recommend"):
        assert os.access(os.path.join(BIN, script), os.X_OK), script


@pytest.mark.parametrize("flag,message", [
    ("--epochs=0", "error: --epochs must be >= 1, got 0"),
    ("--embeding_dim=64", "error: Unknown command line flag 'embeding_dim'. Did you mean: "
                          "embedding_dim ?"),
    ("--global_batch_size=x", "error: flag --global_batch_size=x: invalid literal"),
    ("--strategy=mirored", "error: flag --strategy=mirored: value should be one of"),
])
def test_a_bad_flag_fails_in_one_line_before_tensorflow_starts(tmp_path, flag, message):
    proc = run("python", "-m", "trainer.train", f"--data_dir={tmp_path}",
               f"--model_dir={tmp_path / 'm'}", flag)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
    assert not os.path.exists(tmp_path / "m")


def _events(directory: str) -> list[tuple[int, str, object]]:
    out = []
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                out.append((event.step, v.tag, v))
    return out


@pytest.mark.slow
def test_vertex_run_in_a_plain_shell_is_quiet_and_lands_where_vertex_says(data_dir, tmp_path):
    base = tmp_path / "base"  # Vertex AI's baseOutputDirectory
    env = plain_env(AIP_MODEL_DIR=f"{base}/model/", AIP_CHECKPOINT_DIR=f"{base}/checkpoints/",
                    AIP_TENSORBOARD_LOG_DIR=f"{base}/logs/")
    proc = run("seqrec-train", f"--data_dir={data_dir}", "--epochs=2", "--global_batch_size=100",
               "--embedding_dim=8", "--virtual_cpu_devices=2", "--checkpoint_every_steps=0",
               "--warmup_fraction=0.2", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    # Where each output went, and the log saying why.
    assert os.path.exists(base / "config.json") and os.path.exists(base / "metrics.json")
    assert tf.train.latest_checkpoint(str(base / "checkpoints"))
    assert os.path.exists(base / "model" / "saved_model.pb")
    assert not os.path.exists(base / "export")
    assert f"--model_dir={base} (the parent of $AIP_MODEL_DIR)" in log
    assert "(from $AIP_CHECKPOINT_DIR)" in log and "(from $AIP_TENSORBOARD_LOG_DIR)" in log
    # Quiet: the project's lines only, one line per progress update, no bar.
    assert not NOISE.search(log), [line for line in log.splitlines() if NOISE.search(line)]
    assert "\r" not in log and "\b" not in log
    assert re.search(r"epoch 1/2: step \d+/10, loss \d", log)
    assert "Epoch 2 done: step 20" in log and "Popularity baseline" in log
    assert len(log.splitlines()) < 40, log

    # TensorBoard: the learning rate per step (a warmup then a cosine decay), the
    # config as hparams, evaluation per epoch, the popularity baseline once.
    train = _events(str(base / "logs" / "train"))
    lrs = [float(tf.make_ndarray(v.tensor)) for _, tag, v in train if tag == "learning_rate"]
    peak = config.defaults()["learning_rate"]
    assert len(lrs) == 20 and lrs[0] < lrs[1] < lrs[2] < lrs[3] == max(lrs) == pytest.approx(peak)
    assert lrs[-1] < max(lrs) / 10
    assert sum(tag == "examples_per_second" for _, tag, _ in train) == 2
    evals = _events(str(base / "logs" / "eval"))
    assert sorted(step for step, tag, _ in evals if tag == "test/top_10") == [10, 20]
    assert [step for step, tag, _ in evals if tag == "popularity/top_10"] == [10]
    assert not [tag for _, tag, _ in evals if tag.endswith("num_queries")]
    hparams = [v for _, tag, v in _events(str(base / "logs")) if tag.startswith("_hparams_")]
    assert hparams and b"embedding_dim" in hparams[0].metadata.plugin_data.content

    # recommend finds the export through the run's config.json (it is not MODEL_DIR/export).
    proc = run("seqrec-recommend", f"--model_dir={base}", "--history=" + ",".join(map(str, HISTORY)), "--k=3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Top 3 recommendations" in proc.stdout


@pytest.mark.slow
def test_verbosity_brings_tensorflow_lines_back(data_dir, tmp_path):
    proc = run("python", "-m", "trainer.train", f"--data_dir={data_dir}",
               f"--model_dir={tmp_path}", "--epochs=1", "--global_batch_size=10",
               "--embedding_dim=8", "--virtual_cpu_devices=2", "--noexport", "-v", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert NOISE.search(proc.stderr)
