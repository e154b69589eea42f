"""model_dir checks, checkpoint writing and resumption.

Layout of model_dir: checkpoints/ (tf.train.CheckpointManager), train/ and
eval/ (TensorBoard events), config.json, metrics.json, export/.

Only the chief writes model_dir. Under MultiWorkerMirroredStrategy every worker
must still call save (saving takes part in collectives), so other workers save
into a private temporary directory that is deleted afterwards.

A failed save STOPS training (`CheckpointSaveError`, exit status 2) instead of
training on without checkpoints. Why: by the time TF's own retries
(GCS_RETRY_CONFIG_*: 10 retries with backoff up to 32 s by default) give up,
storage is not having a blip, and training on would silently widen the window of
work a later crash loses, and end in an export that fails the same way. A failed
save never touches the previous checkpoint (TF writes `ckpt-N_temp/` and only
then publishes `ckpt-N` and the `checkpoint` state file), so rerunning the same
command (or the job orchestrator's restart) resumes from the last complete
checkpoint, losing at most one --checkpoint_every_steps interval. What the failed
save left behind (temp objects) is deleted by the next run's chief
(`remove_stale_temp`); until then it is ignored, as nothing refers to it.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time

import tensorflow as tf
from absl import logging

from beam_jobs import schema
from trainer import config as config_lib

CHECKPOINT_SUBDIR = "checkpoints"


class ModelDirError(ValueError):
    """A model_dir this run cannot use."""


class CheckpointSaveError(ModelDirError):
    """A checkpoint could not be written (after TF's own retries); training stops."""

# What an interrupted save leaves in the checkpoint directory, none of it referred
# to by the `checkpoint` state file: TF's per-save staging directory
# (`ckpt-N_temp/`, merged into `ckpt-N.*` at the end of a save), the bundle
# writer's `*.tempstate<random>` files (renamed into place when complete) and
# `checkpoint.tmp<hex>` from the state file's atomic write.
STALE_PATTERNS = ("*_temp", "*_temp/*", "*.tempstate*", "checkpoint.tmp*")


def checkpoint_dir(model_dir: str) -> str:
    """The default checkpoint directory of a model_dir (see --checkpoint_dir)."""
    return schema.join(model_dir, CHECKPOINT_SUBDIR)


def latest(directory: str) -> str | None:
    """The newest complete checkpoint in a checkpoint directory, or None."""
    return tf.train.latest_checkpoint(directory)


def check_compatible(cfg: config_lib.TrainConfig) -> None:
    """Refuses a run whose checkpoint was written with another model shape.

    Compares the saved config.json with this run, naming the flag, before any
    variable is built. (A different vocabulary, i.e. another --data_dir, is
    caught at restore; see `restore`.)
    """
    model_dir = cfg.model_dir
    if latest(cfg.checkpoints_uri) is None:
        return
    path = schema.join(model_dir, config_lib.CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        return
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            saved = json.loads(f.read())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (ValueError, tf.errors.OpError) as e:  # JSONDecodeError is a ValueError
        first = (getattr(e, "message", None) or str(e)).splitlines()[0]
        raise ModelDirError(
            f"{path}: unreadable ({first}); it records the model shape of the checkpoints in "
            f"{cfg.checkpoints_uri}. Restore it, or use another --model_dir to start afresh."
        ) from None
    diffs = config_lib.shape_mismatches(saved, cfg)
    if diffs:
        raise ModelDirError(
            f"--model_dir={model_dir} holds a checkpoint of a different model "
            f"({'; '.join(diffs)}). Use the same flag value to resume, or another --model_dir "
            "to start afresh."
        )


def restore(checkpoint: tf.train.Checkpoint, directory: str) -> str | None:
    """Restores the latest checkpoint of a checkpoint directory into already-built
    variables.

    Returns:
      the checkpoint path, or None if the directory has none.
    Raises:
      ModelDirError when the checkpoint does not fit the model (e.g. a
      vocabulary of another size: another --data_dir).
    """
    path = latest(directory)
    if path is None:
        return None
    try:
        checkpoint.restore(path).assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as e:
        first = (getattr(e, "message", None) or str(e)).splitlines()[0]
        raise ModelDirError(
            f"checkpoint {path} does not fit this model ({first}). "
            "Was it trained with another --data_dir (vocabulary), --embedding_dim or "
            "--optimizer? Use the same flags to resume, or another --model_dir / --checkpoint_dir."
        ) from None
    return path


def remove_stale_temp(directory: str) -> list[str]:
    """Deletes what interrupted saves left in a checkpoint directory (see
    STALE_PATTERNS); returns the deleted paths. Complete checkpoints, the state
    file and anything else are never matched. Call it from the chief only, before
    its first save (a save in progress has such files too)."""
    removed = []
    for pattern in STALE_PATTERNS:
        for path in tf.io.gfile.glob(schema.join(directory, pattern)):
            if not tf.io.gfile.exists(path):  # inside a *_temp already removed
                continue
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            else:
                tf.io.gfile.remove(path)
            removed.append(path)
    return removed


class Writer:
    """CheckpointManager for the chief; a throwaway one for other workers.

    The chief first deletes leftovers of interrupted saves (`remove_stale_temp`).
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, is_chief: bool,
                 keep: int):
        self._tmp = None
        self.target = directory  # what the chief writes, whichever worker this is
        if is_chief:
            if tf.io.gfile.isdir(directory):
                removed = remove_stale_temp(directory)
                if removed:
                    logging.info("Removed %d leftover(s) of interrupted checkpoint saves: %s",
                                 len(removed), ", ".join(removed))
        else:
            self._tmp = tempfile.mkdtemp(prefix="seqrec-worker-ckpt-")
            directory = self._tmp
        self.directory = directory
        self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=keep)

    def save(self, step: int) -> str:
        """Saves checkpoint `step`; returns its path.

        Raises:
          CheckpointSaveError: the save failed (after TF's retries); names the
            last complete checkpoint, from which a rerun resumes.
        """
        started = time.monotonic()
        try:
            return self.manager.save(checkpoint_number=step)
        except tf.errors.OpError as e:
            first = (e.message or str(e)).strip().splitlines()[0]
            latest_path = tf.train.latest_checkpoint(self.directory) if self._tmp is None else None
            raise CheckpointSaveError(
                f"saving checkpoint {step} to {self.directory} failed after "
                f"{time.monotonic() - started:.1f} s ({type(e).__name__}: {first}). Training "
                f"stopped at step {step}; the last complete checkpoint is "
                f"{latest_path or 'none'}: rerun the same command to resume from it."
            ) from None

    def chief_path(self, step: int) -> str:
        """The path of checkpoint `step` as the chief saves it (in `target`)."""
        return schema.join(self.target, f"ckpt-{step}")

    def close(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
