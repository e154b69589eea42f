"""The trainer verifies what it reads (issue #13), and names the shard at fault.

A data_dir with a manifest (tests/trainer/datadir.py writes one, as the Beam job
does) is checked before anything trains: _SUCCESS commits to metadata.json, each
split directory holds exactly the listed shards, each of the listed size and
SHA-256. A data_dir written before manifests still trains, with one warning; a
shard of it cut short is found while reading (the example-count checks in
trainer/data.py, the gzip end-marker check in find_bad_shard).
"""
import gzip
import json
import logging
import os
import re
import shutil

import pytest
import tensorflow as tf

from beam_jobs import schema
from tests.trainer import cli, datadir
from trainer import data, loop
from trainer.config import TrainConfig

TRAIN_SHARD = schema.shard_name(0, 2)  # the train shard these tests damage
TEST_SHARD = schema.shard_name(0, 1)


def _config(data_dir, model_dir, **kw) -> TrainConfig:
    base = dict(data_dir=str(data_dir), model_dir=str(model_dir), epochs=1,
                global_batch_size=20, embedding_dim=8, eval_every_epoch=False, export=False,
                shuffle_buffer=1000, checkpoint_every_steps=0)
    return TrainConfig(**{**base, **kw})


def _write(path, **kw) -> str:
    datadir.write_data_dir(str(path), num_users=40, train_shards=2, **kw)
    return str(path)


def _records(shard: str) -> list[bytes]:
    return [r.numpy() for r in tf.data.TFRecordDataset(shard, "GZIP")]


def _tf_reads_clean(shard: str) -> bool:
    """Whether TensorFlow reads the file to an end without any error."""
    try:
        _records(shard)
        return True
    except tf.errors.OpError:
        return False


def _two_members(shard: str, tmp_path) -> int:
    """Rewrites a gzip shard as two gzip members, each half of its records (what
    `cat a.gz b.gz` makes; gzip and TensorFlow read it as one stream). Returns
    the offset where the second member starts."""
    records = _records(shard)
    members = []
    for part in (records[:len(records) // 2], records[len(records) // 2:]):
        plain = str(tmp_path / "plain.tfrecord")
        with tf.io.TFRecordWriter(plain) as w:
            for r in part:
                w.write(r)
        with open(plain, "rb") as f:
            members.append(gzip.compress(f.read(), mtime=0))
    with open(shard, "wb") as f:
        f.write(b"".join(members))
    assert len(_records(shard)) == len(records)
    return len(members[0])


def _cut(shard: str, offset: int) -> None:
    with open(shard, "r+b") as f:
        f.truncate(offset)


def _clean_cut(shard: str) -> int:
    """Cuts the shard at the first offset past its middle where TensorFlow reads
    fewer records and no error (about 1 offset in 5 of a one-member shard);
    returns the offset."""
    with open(shard, "rb") as f:
        raw = f.read()
    whole = len(_records(shard))
    for offset in range(len(raw) // 2, len(raw) - 8):
        _cut(shard, offset)
        try:
            if len(_records(shard)) < whole:
                return offset
        except tf.errors.OpError:
            pass
        with open(shard, "wb") as f:
            f.write(raw)
    raise AssertionError("no offset where TensorFlow reads a clean end of file")


# --- Verified before training ----------------------------------------------

def test_every_shard_is_checked_against_the_manifest(tmp_path, caplog):
    path = _write(tmp_path)
    caplog.set_level(logging.INFO, logger="absl")
    info = data.load_data_dir(path)
    assert info.verified
    assert f"Verified 3 shards (0.0 MB) against {path}/metadata.json" in caplog.text
    for split in schema.SPLITS:
        assert sum(info.shard_examples[f] for f in info.files[split]) == info.num_examples[split]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_data_dir_without_a_manifest_loads_with_one_warning(tmp_path, caplog):
    path = _write(tmp_path, manifest=False)
    caplog.set_level(logging.INFO, logger="absl")
    info = data.load_data_dir(path)
    assert not info.verified and info.shard_examples == {}
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "its shards were not verified" in warnings[0], warnings


def test_metadata_of_another_run_is_refused(tmp_path):
    path = _write(tmp_path)
    metadata = datadir.read_metadata(path)
    metadata["flags"]["seed"] = 7  # same files, another run's metadata.json
    with open(os.path.join(path, schema.METADATA_FILE), "w") as f:
        json.dump(metadata, f)
    with pytest.raises(schema.SchemaError,
                       match=f"{path}/_SUCCESS: metadata.json is not the one _SUCCESS was "):
        data.load_data_dir(path)


def test_empty_success_beside_a_manifest_is_refused(tmp_path):
    path = _write(tmp_path)
    open(os.path.join(path, schema.SUCCESS_FILE), "w").close()
    with pytest.raises(schema.SchemaError, match="_SUCCESS is empty, but .*metadata.json has a "
                                                 "manifest"):
        data.load_data_dir(path)


def test_a_shard_of_another_run_is_refused(tmp_path):
    path = _write(tmp_path)
    # What two runs with other shard counts leave in one output_dir.
    stray = os.path.join(path, "train", schema.shard_name(3, 4))
    shutil.copy(os.path.join(path, "train", TRAIN_SHARD), stray)
    with pytest.raises(data.DataError, match=f"{re.escape(stray)}: a shard .* does not list"):
        data.load_data_dir(path)


def test_writer_leftovers_not_named_like_shards_are_ignored(tmp_path):
    path = _write(tmp_path)
    listed = data.load_data_dir(path).files
    # beam_jobs/tfrecord.py writes each shard as ".tmp-<hex>-<name>" and renames
    # it when complete; a crashed attempt leaves that name behind. The trainer
    # reads only names matching schema.SHARD_GLOB, so this can never be read.
    with open(os.path.join(path, "train", f".tmp-0a1b2c-{TRAIN_SHARD}"), "wb") as f:
        f.write(b"half a shard")
    assert data.load_data_dir(path).files == listed


def test_same_size_other_bytes_is_refused(tmp_path):
    path = _write(tmp_path)
    shard = os.path.join(path, "train", TRAIN_SHARD)
    with open(shard, "r+b") as f:
        f.seek(os.path.getsize(shard) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(data.DataError, match=f"{re.escape(shard)}: SHA-256 .* lists"):
        data.load_data_dir(path)


@pytest.mark.parametrize("entry, why", [
    ({"sha256": "abc"}, "not"),
    ({"bytes": -1}, "not"),
    ({"name": "../test/part-00000-of-00001.tfrecord.gz"}, "not"),
    ({"name": "vocab.tsv"}, "not"),
    ({"examples": 10_000}, "lists 10[0-9]+ train examples, its counts say"),
])
def test_malformed_manifest_is_refused(tmp_path, entry, why):
    path = _write(tmp_path)
    metadata = datadir.read_metadata(path)
    metadata[schema.MANIFEST]["train"][0].update(entry)
    datadir.write_metadata(path, metadata)
    with pytest.raises(schema.SchemaError, match=f"{path}/metadata.json: .*{why}"):
        data.load_data_dir(path)


# Cuts of a two-member gzip shard, one per class of offset. "clean": TensorFlow
# reads the cut file to an end with no error (fewer records, or all of them when
# only the trailer is gone); only the size and SHA-256 checks catch those.
CUTS = {
    "inside the header": (lambda boundary, size: 5, True),
    "mid-member": (lambda boundary, size: boundary // 2, None),  # depends on the byte
    "at the member boundary": (lambda boundary, size: boundary, True),
    "inside the second header": (lambda boundary, size: boundary + 5, True),
    "one byte short": (lambda boundary, size: size - 1, True),
}


@pytest.mark.parametrize("where", list(CUTS))
def test_cut_shard_is_refused_before_training(tmp_path, where):
    path = _write(tmp_path / "d")
    shard = os.path.join(path, "train", TRAIN_SHARD)
    boundary = _two_members(shard, tmp_path)
    datadir.refresh_manifest(path)
    size = os.path.getsize(shard)
    offset_of, clean = CUTS[where]
    offset = offset_of(boundary, size)
    _cut(shard, offset)
    if clean is not None:
        assert _tf_reads_clean(shard) == clean
    with pytest.raises(data.DataError,
                       match=f"{re.escape(shard)}: {offset} bytes, but .* lists {size}: trunc"):
        loop.run(_config(path, tmp_path / "m"))
    assert not os.path.exists(tmp_path / "m")  # refused before anything was written


@pytest.mark.slow
def test_cli_exits_2_naming_the_cut_shard(tmp_path):
    path = _write(tmp_path / "d")
    shard = os.path.join(path, "train", TRAIN_SHARD)
    boundary = _two_members(shard, tmp_path)
    datadir.refresh_manifest(path)
    size = os.path.getsize(shard)
    _cut(shard, boundary)
    run = cli.run(f"--data_dir={path}", f"--model_dir={tmp_path / 'm'}",
                  "--global_batch_size=20")
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.splitlines()[-1].startswith(
        f"error: {shard}: {boundary} bytes, but {path}/metadata.json lists {size}: "), run.stderr
    assert "Traceback" not in run.stderr


# --- Found while reading: a shard cut after the check, or never checked ------

def test_shard_cut_after_the_check_fails_the_epoch_and_is_named(tmp_path):
    path = _write(tmp_path)
    info = data.load_data_dir(path)
    train, test = (os.path.join(path, "train", TRAIN_SHARD),
                   os.path.join(path, "test", TEST_SHARD))
    train_records, test_records = len(_records(train)), len(_records(test))
    _clean_cut(train)
    _clean_cut(test)
    # An epoch's stream must hold every train example (it does not simply run
    # on into the next epoch), the test split every test example.
    for split, ds, shard, whole in (
            (schema.TRAIN, data.make_train_dataset(info, 20, 2, 0, 1000), train, train_records),
            (schema.TEST, data.make_eval_dataset(info, 20), test, test_records)):
        with pytest.raises(tf.errors.FailedPreconditionError) as raised:
            for _ in ds:
                pass
        error = data.reading_failed(info, split, raised.value, "stopped")
        assert isinstance(error, data.DataError)
        assert re.fullmatch(rf"{re.escape(shard)}: \d+ records, but metadata.json's manifest "
                            rf"lists {whole}: truncated or replaced; stopped", str(error)), error


@pytest.mark.parametrize("split,name,markov_weight,stopped", [
    # The default --markov_weight counts the train split before the first step.
    ("train", TRAIN_SHARD, 2.0, "counting successors .--markov_weight. stopped before "
     "training, the last checkpoint is kept"),
    ("train", TRAIN_SHARD, 0.0, "training stopped at step 0, the last checkpoint is kept"),
    ("test", TEST_SHARD, 2.0, "evaluation at step 20 stopped"),  # 400 examples // 20
])
def test_unverified_shard_cut_where_gzip_reads_clean_stops_naming_it(tmp_path, split, name,
                                                                   markov_weight, stopped):
    path = _write(tmp_path / "d", manifest=False)
    shard = os.path.join(path, split, name)
    _clean_cut(shard)
    with pytest.raises(data.DataError, match=(
            f"{re.escape(shard)}: [0-9]+ records, then the gzip stream ends before its end "
            f"marker: truncated; {stopped}")):
        loop.run(_config(path, tmp_path / "m", markov_weight=markov_weight))


def test_unverified_shard_cut_between_members_names_the_split(tmp_path):
    # Complete gzip members, no manifest: nothing says which shard lost records;
    # the count in metadata.json still shows that the split is short.
    path = _write(tmp_path, manifest=False)
    shard = os.path.join(path, "train", TRAIN_SHARD)
    _cut(shard, _two_members(shard, tmp_path))
    info = data.load_data_dir(path)
    with pytest.raises(tf.errors.FailedPreconditionError) as raised:
        for _ in data.make_train_dataset(info, 20, 1, 0, 1000):
            pass
    error = data.reading_failed(info, schema.TRAIN, raised.value, "stopped")
    assert str(error).startswith(f"{path}/train: the train split held only 300 examples, not "
                                 "the 400 examples metadata.json counts, yet each shard reads "
                                 "whole"), error


def test_a_vocabulary_of_another_run_is_refused(tmp_path):
    # The Beam job's own output (its metadata.json lists vocab.tsv's size and SHA-256):
    # a vocab.tsv from another run would renumber every movie without any error.
    from beam_jobs import pipeline

    out = str(tmp_path / "data")
    pipeline.run([f"--input_dir={os.path.join(cli.ROOT, 'data', 'sample')}",
                  f"--output_dir={out}", "--num_shards=2"])
    assert data.load_data_dir(out).verified
    vocab = os.path.join(out, schema.VOCAB_FILE)
    with open(vocab, "rb") as f:
        lines = f.read().split(b"\n")
    lines[1], lines[2] = lines[2], lines[1]  # same bytes, another order
    with open(vocab, "wb") as f:
        f.write(b"\n".join(lines))
    with pytest.raises(data.DataError, match=r"vocab.tsv: not the vocab.tsv .*metadata.json"):
        data.load_data_dir(out)
