"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 train together."""
import json
import os
import subprocess

import pytest
import tensorflow as tf

from tests.trainer import cli, datadir

pytestmark = pytest.mark.slow


def test_two_workers_train_and_only_the_chief_writes(tmp_path):
    data_dir = str(tmp_path / "data")
    # One train shard: FILE auto-sharding would fail here; DATA sharding works.
    datadir.write_data_dir(data_dir, num_users=40, train_shards=1)  # 400 train examples
    model_dir = str(tmp_path / "model")
    workers = [f"127.0.0.1:{p}" for p in cli.free_ports(2)]
    flags = (f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--strategy=multi_worker",
             "--epochs=1", "--global_batch_size=40", "--embedding_dim=8",
             "--checkpoint_every_steps=5", "--noexport")
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(subprocess.Popen(
            # `timeout -k`: a worker waits forever for a missing peer, and
            # then never reaches a step boundary to act on SIGTERM.
            cli.command(*flags, timeout_s=150), cwd=cli.ROOT,
            env=cli.env(TF_CONFIG=json.dumps(tf_config)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=180)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for index, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"worker {index}:\n{out[-4000:]}"
        assert "MultiWorkerMirroredStrategy with 2 replica(s)" in out
        assert "Epoch 1 done: step 10" in out  # 400 examples // 40 per step

    ckpts = os.path.join(model_dir, "checkpoints")
    assert tf.train.latest_checkpoint(ckpts).endswith("ckpt-10")
    with open(os.path.join(model_dir, "metrics.json")) as f:
        assert json.load(f)["step"] == 10
    # The non-chief saved into its own temp dir (and removed it): model_dir holds
    # one checkpoint series, written by the chief.
    names = sorted(n for n in os.listdir(ckpts) if n.endswith(".index"))
    assert names == ["ckpt-10.index", "ckpt-5.index"]
