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
LR_SCHEDULES = ("constant", "cosine", "linear")
# global: each replica's softmax sees the candidates of the whole global batch
#   (all_gather), so the loss and gradients equal one device's on that batch.
# per_replica: TFRS's own behaviour under MirroredStrategy (local batch only).
NEGATIVES = ("global", "per_replica")
# Keras dtype policies: float32 everywhere, or float32 variables with 16-bit
# arithmetic (bfloat16: no loss scaling needed; float16: loss-scaled).
DTYPE_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")

CONFIG_FILE = "config.json"

# Fields that fix the shape of the model's variables (or of the optimizer's
# slots): a checkpoint written with other values cannot be restored. The value
# is the flag that sets it, for error messages.
SHAPE_FIELDS = {"embedding_dim": "--embedding_dim", "optimizer": "--optimizer",
                "gru_units": "--gru_units", "gru_layers": "--gru_layers",
                "share_embeddings": "--share_embeddings", "last_movies": "--last_movies",
                # mixed_float16 wraps the optimizer in a LossScaleOptimizer (other
                # checkpoint keys); any change is refused rather than half-restored.
                "dtype_policy": "--dtype_policy"}
# The value a shape field had in runs saved before the field existed (their
# config.json lacks it), so resuming such a run is checked too.
SHAPE_FIELDS_BEFORE = {"gru_units": 0, "gru_layers": 1, "share_embeddings": False,
                       "last_movies": 0, "dtype_policy": "float32"}


class ConfigError(ValueError):
    """Flag values that cannot work (the message names the flag)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults: chosen by bench/quality.py (see TUTORIAL for the tutorial's).

    Why these defaults (bench/README_quality.md has the numbers; ML-1M-scale
    synthetic data, leave-last-out split, 3 epochs for every row, top-10 on
    the test split, +-0.006 noise at 6,040 queries): the goal is 1.3x the
    tutorial setup's top-10 (0.360) in no more training time. Pad masked,
    Adam 0.01 with a 5% warmup and cosine decay, global negatives (the
    result does not depend on the replica count). The round of 2026-11-28
    (helper h7) found that width was the wrong lever: 96/128/192-d models
    reached 0.456/0.463/0.4685, and at 192-d (2x the 96-d step cost) every
    other change (temperature 0.5, batch 512, lr 0.02, tied embeddings,
    256-d) stayed at 0.467-0.470. What the models got wrong was popularity:
    in-batch negatives are other examples' labels, drawn in proportion to
    their popularity q, so the softmax learns log p(y|x) - log q(y) and
    demotes popular movies (their top-10s held movies with 2/3 the train
    count of a count-based next-movie model's, which scored 0.49).
    popularity_prior=1 adds log q back at inference only (evaluation,
    export): top-10 +0.013 on the same weights (0.4666 -> 0.4798: 128-d,
    64-unit GRU, last_movies=2, batch 1024),
    no training cost, and 1 is the theoretical weight (0.5..1.2 measured
    0.477..0.480 on that model). The tower is then made cheap: a 64-unit
    GRU (the GRU dominates the step: ~30 u (e + u) MACs per example) with
    a skip connection from the last 2 context movies' embeddings to the
    output (last_movies=2: a 64-unit state alone would cap the query
    at rank 64; +0.005 over none at 96-d). At 128-d, 64 units: 0.4773 and
    0.4793 (seeds 42, 1); batch 1024 0.4798/0.4801 but ~15% slower steps;
    48 GRU units 0.4757, 96-d 0.4752. Timed bench/quality.py calls
    (16:00-16:08 UTC, after the blocked softmax loss and the unrolled CPU
    GRU), each with its own tutorial row: 128-d/64 units 80 s vs 67 s;
    96-d 72 s, 48 units 71 s, 96-d/48 units 63 s (top-10 0.4738) vs 68 s;
    96-d/48 units again 71 s vs 70 s; 96-d/32 units 58 s vs 68 s at top-10
    0.4732. So the defaults are 96-d with a 32-unit GRU: the quality of the
    wider towers within noise, in ~0.85x the tutorial setup's time (the
    clean table run is in bench/README_quality.md).
    Tried and left off by default: logq_correction 0.5 (the same
    correction applied in training: 0.4760), 512 uniform_negatives (0.4735
    alone, 0.4765 with the prior), normalize + temperature 0.1 (0.4707
    alone, 0.4747 with the prior), share_embeddings (no gain: 0.4672 vs
    0.4695 at 192-d), dropout (known not to help in 3 epochs), removing
    accidental hits (no change).

    Attributes:
      data_dir: URI of a finished Beam job output (see beam_jobs/schema.py).
      model_dir: URI for checkpoints, summaries, config.json, metrics.json, export/.
      epochs: total epochs; a resumed run trains only what is left.
      global_batch_size: examples per step over all replicas (per replica =
        global / replicas).
      learning_rate: optimizer learning rate.
      embedding_dim: d, the width of the movie embeddings and of the query
        tower's output.
      gru_units: width of each GRU layer (0: embedding_dim). Other than d, a
        linear projection maps the last layer's state to d.
      gru_layers: stacked GRU layers in the query tower.
      dropout: dropout rate on the query tower's embeddings and GRU outputs
        (training only).
      share_embeddings: one embedding table for the context movies and the
        candidates (weight tying) instead of two.
      normalize: L2-normalise both towers' outputs (scores are cosines).
      last_movies: K > 0: the query output is a linear map of [GRU state,
        embeddings of the last K context movies] (a skip connection past the
        GRU; 0: off).
      mask_padding: mask the pad id so the GRU skips padded steps. False
        embeds the pad as a movie, like the TFRS tutorial.
      temperature: the in-batch softmax divides scores by this (1: none).
      negatives: one of NEGATIVES (see there).
      logq_correction: weight a of the sampling-bias correction: each in-batch
        candidate's logit is lowered by a * log(q), q = its share of the train
        labels (0: off, 1: the full logQ correction).
      uniform_negatives: N > 0: every step also scores each query against N
        movies drawn uniformly from the vocabulary (mixed negative sampling).
      popularity_prior: weight b of a popularity prior added to every score at
        inference only (evaluation, export): b * log q, q = the movie's smoothed
        share of the train labels (0: off; 1: undoes the in-batch softmax's
        demotion of popular movies, see model.popularity_log_prior).
      remove_accidental_hits: the label's movie appearing elsewhere in the
        batch is not a negative for that query.
      optimizer: one of OPTIMIZERS.
      dtype_policy: one of DTYPE_POLICIES, for the towers' layers (variables
        stay float32; scores, loss and evaluation are float32 either way).
      lr_schedule: one of LR_SCHEDULES: after the warmup, keep the rate, or
        decay it to 0 at the last step (cosine or linear).
      warmup_fraction: fraction of all steps with a linear warmup from 0.
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
      eval_exclude_context: evaluation does not rank the movies of a query's
        own context (the label itself always stays a candidate).
      export: write the SavedModel to model_dir/export/ at the end.
    """

    data_dir: str
    model_dir: str
    epochs: int = 3
    global_batch_size: int = 2048
    learning_rate: float = 0.01
    embedding_dim: int = 96
    gru_units: int = 32
    gru_layers: int = 1
    dropout: float = 0.0
    share_embeddings: bool = False
    normalize: bool = False
    last_movies: int = 2
    mask_padding: bool = True
    temperature: float = 1.0
    negatives: str = "global"
    logq_correction: float = 0.0
    remove_accidental_hits: bool = False
    uniform_negatives: int = 0
    popularity_prior: float = 1.0
    optimizer: str = "adam"
    dtype_policy: str = "float32"
    lr_schedule: str = "cosine"
    warmup_fraction: float = 0.05
    strategy: str = "auto"
    virtual_cpu_devices: int = 0
    checkpoint_every_steps: int = 100
    keep_checkpoints: int = 3
    seed: int = 42
    shuffle_buffer: int = 10_000
    eval_batch_size: int = 2048
    eval_every_epoch: bool = True
    eval_exclude_context: bool = False
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
        need(self.gru_units >= 0, "gru_units", "must be >= 0")
        need(self.gru_layers >= 1, "gru_layers", "must be >= 1")
        need(self.last_movies >= 0, "last_movies", "must be >= 0")
        need(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        need(self.temperature > 0, "temperature", "must be > 0")
        need(self.negatives in NEGATIVES, "negatives", f"must be one of {NEGATIVES}")
        need(self.logq_correction >= 0, "logq_correction", "must be >= 0")
        need(self.uniform_negatives >= 0, "uniform_negatives", "must be >= 0")
        need(self.popularity_prior >= 0, "popularity_prior", "must be >= 0")
        need(not (self.uniform_negatives and (self.logq_correction or self.remove_accidental_hits)),
             "uniform_negatives", "cannot be combined with --logq_correction or "
             "--remove_accidental_hits")
        need(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {OPTIMIZERS}")
        need(self.dtype_policy in DTYPE_POLICIES, "dtype_policy",
             f"must be one of {DTYPE_POLICIES}")
        need(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {LR_SCHEDULES}")
        need(0 <= self.warmup_fraction < 1, "warmup_fraction", "must be in [0, 1)")
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

    @property
    def query_units(self) -> int:
        """Width of the GRU layers (gru_units, 0 meaning embedding_dim)."""
        return self.gru_units or self.embedding_dim


# The TFRS sequential retrieval tutorial, exactly: Adagrad(0.1) on batches of
# 12800 for 3 epochs, 32-d embeddings, one GRU, pad embedded as a movie (no
# mask), plain in-batch softmax. `TrainConfig(data_dir=..., model_dir=...,
# **TUTORIAL)`; on one device, or with negatives="per_replica" on several.
TUTORIAL = {
    "epochs": 3, "global_batch_size": 12800, "learning_rate": 0.1, "embedding_dim": 32,
    "gru_units": 0, "gru_layers": 1, "dropout": 0.0, "share_embeddings": False,
    "normalize": False, "last_movies": 0, "mask_padding": False,
    "temperature": 1.0, "negatives": "per_replica", "logq_correction": 0.0,
    "remove_accidental_hits": False, "uniform_negatives": 0, "popularity_prior": 0.0,
    "optimizer": "adagrad",
    "lr_schedule": "constant",
    "warmup_fraction": 0.0,
}
PRESETS = {"tutorial": TUTORIAL}


def shape_mismatches(saved: Mapping[str, Any], current: TrainConfig) -> list[str]:
    """Human-readable differences in SHAPE_FIELDS between a saved config and this run."""
    out = []
    for field, flag in SHAPE_FIELDS.items():
        if field not in saved and field not in SHAPE_FIELDS_BEFORE:
            continue
        value = saved.get(field, SHAPE_FIELDS_BEFORE.get(field))
        if value != getattr(current, field):
            out.append(f"{flag}={value} there, {flag}={getattr(current, field)} now")
    return out
