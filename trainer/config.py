"""Typed configuration of a training run, saved as model_dir/config.json.

Flags are parsed only in the entry point (trainer/train.py); everything below it
receives a `TrainConfig`. Vocabulary and data sizes are NOT configuration: they
come from data_dir (vocab.tsv, metadata.json), so a run cannot disagree with its
data.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

STRATEGIES = ("auto", "mirrored", "multi_worker", "default")
OPTIMIZERS = ("adagrad", "adam", "sgd")

CONFIG_FILE = "config.json"

# Fields that fix the shape of the model's variables (or of the optimizer's
# slots): a checkpoint written with other values cannot be restored. The value
# is the flag that sets it, for error messages.
SHAPE_FIELDS = {"embedding_dim": "--embedding_dim", "optimizer": "--optimizer"}


class ConfigError(ValueError):
    """Flag values that cannot work (the message names the flag)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults are the TFRS sequential retrieval tutorial's.

    Attributes:
      data_dir: URI of a finished Beam job output (see beam_jobs/schema.py).
      model_dir: URI for checkpoints, summaries, config.json, metrics.json, export/.
      epochs: total epochs; a resumed run trains only what is left.
      global_batch_size: examples per step over all replicas (per replica =
        global / replicas).
      learning_rate: optimizer learning rate.
      embedding_dim: width of the movie embeddings and of the GRU state.
      optimizer: one of OPTIMIZERS.
      strategy: one of STRATEGIES.
      virtual_cpu_devices: split the host CPU into this many logical devices
        before TF starts (0: leave it alone).
      checkpoint_every_steps: also checkpoint every N steps (0: only at epoch ends).
      keep_checkpoints: how many checkpoints CheckpointManager keeps.
      seed: seeds weights init and the per-epoch shuffle.
      shuffle_buffer: examples in the shuffle buffer per input pipeline.
      eval_batch_size: batch size of the (single-device) evaluation pass.
      eval_every_epoch: evaluate on the test split after every epoch, not only
        at the end.
      export: write the SavedModel to model_dir/export/ at the end.
    """

    data_dir: str
    model_dir: str
    epochs: int = 3
    global_batch_size: int = 12800
    learning_rate: float = 0.1
    embedding_dim: int = 32
    optimizer: str = "adagrad"
    strategy: str = "auto"
    virtual_cpu_devices: int = 0
    checkpoint_every_steps: int = 100
    keep_checkpoints: int = 3
    seed: int = 42
    shuffle_buffer: int = 10_000
    eval_batch_size: int = 2048
    eval_every_epoch: bool = True
    export: bool = True

    def __post_init__(self):
        def need(ok: bool, flag: str, what: str):
            if not ok:
                raise ConfigError(f"--{flag} {what}, got {getattr(self, flag)!r}")

        need(bool(self.data_dir), "data_dir", "is required")
        need(bool(self.model_dir), "model_dir", "is required")
        need(self.epochs >= 1, "epochs", "must be >= 1")
        need(self.global_batch_size >= 1, "global_batch_size", "must be >= 1")
        need(self.learning_rate > 0, "learning_rate", "must be > 0")
        need(self.embedding_dim >= 1, "embedding_dim", "must be >= 1")
        need(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {OPTIMIZERS}")
        need(self.strategy in STRATEGIES, "strategy", f"must be one of {STRATEGIES}")
        need(self.virtual_cpu_devices >= 0, "virtual_cpu_devices", "must be >= 0")
        need(self.checkpoint_every_steps >= 0, "checkpoint_every_steps", "must be >= 0")
        need(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        need(self.shuffle_buffer >= 1, "shuffle_buffer", "must be >= 1")
        need(self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Builds a config from a dict, ignoring keys this version does not know."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def shape_mismatches(saved: Mapping[str, Any], current: TrainConfig) -> list[str]:
    """Human-readable differences in SHAPE_FIELDS between a saved config and this run."""
    out = []
    for field, flag in SHAPE_FIELDS.items():
        if field in saved and saved[field] != getattr(current, field):
            out.append(f"{flag}={saved[field]} there, {flag}={getattr(current, field)} now")
    return out
