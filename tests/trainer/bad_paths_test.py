"""Fail fast: a data_dir or model_dir the trainer cannot use stops it before any
training, with one line naming the flag or the file (exit status 2 from the CLI;
trainer/train.py maps these errors to it)."""
import json
import os

import pytest
import tensorflow as tf

from beam_jobs import schema
from tests.trainer import cli, datadir
from trainer import checkpoints, data, loop
from trainer.config import TrainConfig


def _config(data_dir, model_dir, **kw) -> TrainConfig:
    base = dict(data_dir=str(data_dir), model_dir=str(model_dir), epochs=1,
                global_batch_size=20, embedding_dim=8, eval_every_epoch=False, export=False)
    return TrainConfig(**{**base, **kw})


def test_empty_train_split_says_so_not_lower_the_batch(tmp_path):
    # Two ratings a user: each user's one example is its test example.
    datadir.write_data_dir(str(tmp_path / "d"), num_users=20, timeline_length=2)
    with pytest.raises(data.DataError) as raised:
        loop.run(_config(tmp_path / "d", tmp_path / "m"))
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'd'}: the train split holds no examples "
                              "(metadata.json counts 0 train_examples)"), message
    assert "batch" not in message
    assert not os.path.exists(tmp_path / "m")  # refused before anything was written


def test_empty_test_split_is_refused_before_training(tmp_path):
    path = str(tmp_path / "d")
    datadir.write_data_dir(path, num_users=20)
    shard = os.path.join(path, "test", schema.shard_name(0, 1))
    with tf.io.TFRecordWriter(shard, "GZIP"):
        pass  # no records
    datadir.refresh_manifest(path, examples={schema.shard_name(0, 1): 0})
    with pytest.raises(data.DataError, match=f"{path}: the test split holds no examples"):
        loop.run(_config(path, tmp_path / "m"))
    assert not os.path.exists(tmp_path / "m")


def _directory_instead(path: str, name: str) -> str:
    target = os.path.join(path, name)
    os.remove(target)
    os.mkdir(target)
    return target


@pytest.mark.parametrize("damage, expected", [
    (lambda p: _directory_instead(p, schema.VOCAB_FILE), "{}: a directory, not a file"),
    (lambda p: _directory_instead(p, schema.METADATA_FILE), "{}: a directory, not a file"),
    (lambda p: _directory_instead(p, schema.SUCCESS_FILE), "{}: a directory, not a file"),
    (lambda p: _directory_instead(p, os.path.join("train", schema.shard_name(0, 3))),
     "{}: a directory, not a shard file"),
], ids=["vocab", "metadata", "success", "shard"])
def test_a_directory_where_a_file_belongs(tmp_path, damage, expected):
    path = str(tmp_path / "d")
    datadir.write_data_dir(path, num_users=20)
    target = damage(path)
    with pytest.raises(data.DataError, match=expected.format(target)):
        loop.run(_config(path, tmp_path / "m"))


def test_a_directory_named_like_a_shard_without_a_manifest(tmp_path):
    path = str(tmp_path / "d")
    datadir.write_data_dir(path, num_users=20, manifest=False)
    target = _directory_instead(path, os.path.join("train", schema.shard_name(0, 3)))
    with pytest.raises(data.DataError, match=f"{target}: unreadable shard"):
        loop.run(_config(path, tmp_path / "m"))


def test_vocab_that_is_not_utf8(tmp_path):
    path = str(tmp_path / "d")
    datadir.write_data_dir(path, num_users=20)
    with open(os.path.join(path, schema.VOCAB_FILE), "wb") as f:
        f.write("\t".join(schema.VOCAB_COLUMNS).encode() + b"\n1\t1\t1999\tCaf\xe9\tDrama\n")
    with pytest.raises(data.DataError, match=f"{path}/vocab.tsv: not UTF-8 text"):
        loop.run(_config(path, tmp_path / "m"))


def test_unreadable_config_json_beside_a_checkpoint(tmp_path):
    path = str(tmp_path / "d")
    datadir.write_data_dir(path, num_users=20)
    model_dir = tmp_path / "m"
    # Any checkpoint: config.json is read (to compare shapes) only when one exists.
    ckpt = tf.train.Checkpoint(v=tf.Variable(1.0))
    tf.train.CheckpointManager(ckpt, checkpoints.checkpoint_dir(str(model_dir)), 1).save()
    (model_dir / "config.json").write_text("{not json")
    with pytest.raises(checkpoints.ModelDirError, match=f"{model_dir}/config.json: unreadable"):
        loop.run(_config(path, model_dir))
    (model_dir / "config.json").write_text(json.dumps([1]))
    with pytest.raises(checkpoints.ModelDirError, match="config.json: unreadable .not a JSON obj"):
        loop.run(_config(path, model_dir))


@pytest.mark.slow
@pytest.mark.parametrize("which", ["data_dir", "model_dir"])
def test_cli_a_file_given_as_a_directory(tmp_path, which):
    datadir.write_data_dir(str(tmp_path / "d"), num_users=20)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    flags = {"data_dir": tmp_path / "d", "model_dir": tmp_path / "m", which: a_file}
    run = cli.run(*(f"--{k}={v}" for k, v in flags.items()), "--global_batch_size=20")
    assert run.returncode == 2, run.stderr[-3000:]
    expected = {
        "data_dir": f"error: --data_dir={a_file} is a file, not a directory: give the directory "
                    "the Beam job wrote (its --output_dir)",
        "model_dir": f"error: --model_dir={a_file}: cannot use '{a_file}' as a directory: a "
                     "file is in the way",
    }[which]
    assert run.stderr.splitlines()[-1] == expected, run.stderr
    assert "Traceback" not in run.stderr


def test_missing_data_dir_names_the_flag(tmp_path):
    with pytest.raises(data.DataError, match=f"--data_dir={tmp_path}/nope does not exist"):
        loop.run(_config(tmp_path / "nope", tmp_path / "m"))
