"""model_dir checks, checkpoint writing and resumption.

Layout of model_dir: checkpoints/ (tf.train.CheckpointManager), train/ and
eval/ (TensorBoard events), config.json, metrics.json, export/.

Only the chief writes model_dir. Under MultiWorkerMirroredStrategy every worker
must still call save (saving takes part in collectives), so other workers save
into a private temporary directory that is deleted afterwards.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import tensorflow as tf

from beam_jobs import schema
from trainer import config as config_lib

CHECKPOINT_SUBDIR = "checkpoints"


class ModelDirError(ValueError):
    """A model_dir this run cannot use."""


def probe_writable(model_dir: str) -> None:
    """Creates model_dir and writes/deletes a probe file, so an unwritable
    model_dir fails now rather than after the first hour of training."""
    probe = schema.join(model_dir, f".write_probe_{os.getpid()}")
    try:
        tf.io.gfile.makedirs(model_dir)
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("ok")
        tf.io.gfile.remove(probe)
    except (tf.errors.OpError, OSError) as e:
        msg = getattr(e, "message", None) or str(e)
        raise ModelDirError(f"--model_dir={model_dir}: not writable ({msg.splitlines()[0]})") from None


def checkpoint_dir(model_dir: str) -> str:
    return schema.join(model_dir, CHECKPOINT_SUBDIR)


def latest(model_dir: str) -> str | None:
    return tf.train.latest_checkpoint(checkpoint_dir(model_dir))


def check_compatible(model_dir: str, cfg: config_lib.TrainConfig) -> None:
    """Refuses a model_dir whose checkpoint was written with another model shape.

    Compares the saved config.json with this run, naming the flag, before any
    variable is built. (A different vocabulary, i.e. another --data_dir, is
    caught at restore; see `restore`.)
    """
    if latest(model_dir) is None:
        return
    path = schema.join(model_dir, config_lib.CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path, "r") as f:
        saved = json.loads(f.read())
    diffs = config_lib.shape_mismatches(saved, cfg)
    if diffs:
        raise ModelDirError(
            f"--model_dir={model_dir} holds a checkpoint of a different model "
            f"({'; '.join(diffs)}). Use the same flag value to resume, or another --model_dir "
            "to start afresh."
        )


def restore(checkpoint: tf.train.Checkpoint, model_dir: str) -> str | None:
    """Restores the latest checkpoint of model_dir into already-built variables.

    Returns:
      the checkpoint path, or None if model_dir has none.
    Raises:
      ModelDirError when the checkpoint does not fit the model (e.g. a
      vocabulary of another size: another --data_dir).
    """
    path = latest(model_dir)
    if path is None:
        return None
    try:
        checkpoint.restore(path).assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as e:
        first = (getattr(e, "message", None) or str(e)).splitlines()[0]
        raise ModelDirError(
            f"--model_dir={model_dir}: checkpoint {path} does not fit this model ({first}). "
            "Was it trained with another --data_dir (vocabulary), --embedding_dim or "
            "--optimizer? Use the same flags to resume, or another --model_dir."
        ) from None
    return path


class Writer:
    """CheckpointManager for the chief; a throwaway one for other workers."""

    def __init__(self, checkpoint: tf.train.Checkpoint, model_dir: str, is_chief: bool,
                 keep: int):
        self._tmp = None
        if is_chief:
            directory = checkpoint_dir(model_dir)
        else:
            self._tmp = tempfile.mkdtemp(prefix="seqrec-worker-ckpt-")
            directory = self._tmp
        self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=keep)

    def save(self, step: int) -> str:
        return self.manager.save(checkpoint_number=step)

    def close(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
