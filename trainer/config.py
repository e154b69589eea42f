"""Typed configuration of a training run, saved as model_dir/config.json.

Every option is declared ONCE, as a `TrainConfig` field made with `option(...)`:
its name, type, default, help text and validation. The absl flags
(`define_flags`), the validation errors that name flags, config.json (round
trip) and the launchers' local checks of trainer flags (infra/) all derive from
that declaration. Flags are parsed only at entry points (`config_from_flags`);
everything below receives a `TrainConfig`. Vocabulary and data sizes are NOT
configuration: they come from data_dir (vocab.tsv, metadata.json), so a run
cannot disagree with its data.

This module needs only the standard library, absl and beam_jobs.schema (never TensorFlow): the
launchers import it on machines without TensorFlow.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from collections.abc import Callable, Mapping
from typing import Any

from absl import flags, logging

from beam_jobs import schema

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
# The query tower's sequence encoder: the TFRS recipe's GRU, or SASRec-style
# causal self-attention (trainer/transformer.py).
QUERY_TOWERS = ("gru", "transformer")

# auto: validation when the data_dir has that split (data_dirs written before it
# existed, and --split=random ones, have only test).
EVAL_SPLITS = ("auto", "validation", "test")

CONFIG_FILE = "config.json"

# Vertex AI custom training sets these (from the job's baseOutputDirectory); the
# trainer uses them where the matching flag is not given (see config_from_flags).
AIP_MODEL_DIR = "AIP_MODEL_DIR"
AIP_CHECKPOINT_DIR = "AIP_CHECKPOINT_DIR"
AIP_TENSORBOARD_LOG_DIR = "AIP_TENSORBOARD_LOG_DIR"


class ConfigError(ValueError):
    """Flag values that cannot work (the message names the flag)."""


# --- Declaring an option ----------------------------------------------------
# A check is (predicate, what the value must be); the error reads
# "--NAME must be >= 1, got 0".
Check = tuple[Callable[[Any], bool], str]


def at_least(n: float) -> Check:
    return (lambda v: v >= n), f"must be >= {n}"


def positive() -> Check:
    return (lambda v: v > 0), "must be > 0"


def fraction_below_one() -> Check:
    return (lambda v: 0 <= v < 1), "must be in [0, 1)"


def option(default: Any = dataclasses.MISSING, help: str = "", *,  # noqa: A002
           choices: tuple[str, ...] | None = None, check: Check | None = None,
           shape: bool | str = False, before: Any = dataclasses.MISSING) -> Any:
    """A config field: the one place an option is declared.

    Args:
      default: the default (none: the option is required).
      help: the flag's help text.
      choices: allowed values of a string option (an enum flag).
      check: (predicate, requirement) validated on every TrainConfig.
      shape: the value fixes the shape of the model's variables or optimizer
        slots: a checkpoint written with another value cannot be restored. A
        --query_tower name: it does so only in that tower (the other ignores it).
      before: for shape options added after runs were saved: the value those
        runs had (their config.json lacks the key), so resuming them is checked.
    """
    if choices is not None:
        check = (lambda v: v in choices), f"must be one of {choices}"
    meta = {"help": help, "choices": choices, "check": check, "shape": shape, "before": before}
    return dataclasses.field(default=default, metadata=meta)


def _validate(part) -> None:
    """Checks every option of a config part against its declaration."""
    for f in dataclasses.fields(part):
        if f.name in PARTS:  # a part of TrainConfig, validated when it was made
            continue
        check, value = f.metadata["check"], getattr(part, f.name)
        if f.default is dataclasses.MISSING and not value:
            raise ConfigError(f"--{f.name} is required")
        if check and not check[0](value):
            raise ConfigError(f"--{f.name} {check[1]}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The two towers (trainer/model.py `build_towers` reads this)."""

    embedding_dim: int = option(64, "Embedding width (query output).", check=at_least(1),
                                shape=True)
    query_tower: str = option(
        "gru", "Sequence encoder of the query tower: gru (the TFRS recipe) or transformer "
        "(SASRec-style causal self-attention over the context, read at the last real movie).",
        choices=QUERY_TOWERS, shape=True, before="gru")
    transformer_blocks: int = option(
        2, "Self-attention blocks of --query_tower=transformer.", check=at_least(1),
        shape="transformer")
    transformer_heads: int = option(
        2, "Attention heads of --query_tower=transformer (each ceil(embedding_dim / heads) "
        "wide).", check=at_least(1), shape="transformer")
    transformer_dropout: float = option(
        0.2, "Dropout of --query_tower=transformer (embeddings, attention weights, block "
        "outputs; training only).", check=fraction_below_one())
    gru_units: int = option(
        32, "GRU width (--query_tower=gru) (0: --embedding_dim); other than the embedding width, a linear map "
        "projects the last GRU state to it.", check=at_least(0), shape="gru", before=0)
    gru_layers: int = option(1, "Stacked GRU layers.", check=at_least(1), shape="gru", before=1)
    dropout: float = option(0.0, "Dropout in the GRU query tower (training only; the "
                            "transformer's is --transformer_dropout).",
                            check=fraction_below_one())
    share_embeddings: bool = option(
        False, "One embedding table for context movies and candidates (weight tying).",
        shape=True, before=False)
    normalize: bool = option(
        False, "L2-normalise both towers' outputs (cosine scores; use a low temperature).")
    last_movies: int = option(
        0, "The query output also sees the last K context movies' embeddings directly "
        "(a skip past the GRU; 0: off).", check=at_least(0), shape=True, before=0)
    mask_padding: bool = option(
        True, "Mask padded context steps (--nomask_padding: like the tutorial).")
    popularity_prior: float = option(
        1.0, "Weight b of b * log(label share) added to every score at inference "
        "(evaluation, export); 0: off.", check=at_least(0))
    markov_weight: float = option(
        1.0, "Blend counted successors into the model's ranking at inference (evaluation, "
        "export): log(softmax(scores) + W * counted share of each movie after the last 3 "
        "context movies) (trainer/markov.py; counted from the train split at start); 0: off.",
        check=at_least(0))
    movie_features: bool = option(
        False, "Add each movie's content to its embedding in both towers: learned genre "
        "vectors (averaged over its genres) and a release-year bucket vector, read from "
        "vocab.tsv by id (the examples' context_movie_genre/_year are the same values), so "
        "serving still takes ids only.", shape=True, before=False)
    dtype_policy: str = option(
        "float32", "Keras dtype policy of the towers: mixed_bfloat16 / mixed_float16 compute "
        "in 16 bits (GPU tensor cores; bfloat16 also on CPUs with AVX512-BF16).",
        # mixed_float16 wraps the optimizer in a LossScaleOptimizer (other checkpoint
        # keys): any change is refused rather than half-restored.
        choices=DTYPE_POLICIES, shape=True, before="float32")

    def __post_init__(self):
        _validate(self)
        if self.query_tower == "transformer":
            # Refused rather than ignored: these two are the GRU tower's.
            if not self.mask_padding:
                raise ConfigError("--nomask_padding is for --query_tower=gru: the transformer "
                                  "always masks padding, got --query_tower=transformer")
            if self.dropout:
                raise ConfigError(f"--dropout is for --query_tower=gru (use "
                                  f"--transformer_dropout), got {self.dropout!r}")

    @property
    def query_units(self) -> int:
        """Width of the GRU layers (gru_units, 0 meaning embedding_dim)."""
        return self.gru_units or self.embedding_dim


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The retrieval task: in-batch softmax over the batch's labels as candidates."""

    temperature: float = option(1.0, "Softmax temperature (scores / T).", check=positive())
    negatives: str = option(
        "global", "In-batch negatives from the global batch (all replicas) or per replica.",
        choices=NEGATIVES)
    logq_correction: float = option(
        0.0, "Weight of the sampling-bias correction -w*log(q) (0: off, 1: full).",
        check=at_least(0))
    remove_accidental_hits: bool = option(
        False, "The label's movie elsewhere in the batch is not a negative.")
    uniform_negatives: int = option(
        0, "Also score each query against N movies drawn uniformly per step (mixed negative "
        "sampling; 0: in-batch negatives only). Drawn by TF's seeded RNG, which a checkpoint "
        "does not hold: a resumed run draws other negatives than an uninterrupted one.",
        check=at_least(0))
    history_negatives: bool = option(
        False, "Each example's own context movies are also negatives in its softmax (never "
        "its label: MovieLens users do not re-rate a movie), so the query learns not to "
        "recommend what the user has just watched.")
    candidate_softmax_weight: float = option(
        0.0, "Weight of a second in-batch softmax: each label movie's over the batch's "
        "queries (the direction the TFRS tutorial's [B, 1] labels train; 0: off, 1: both "
        "directions equally).", check=at_least(0))

    def __post_init__(self):
        _validate(self)
        if self.uniform_negatives and (self.logq_correction or self.remove_accidental_hits):
            raise ConfigError("--uniform_negatives cannot be combined with --logq_correction "
                              f"or --remove_accidental_hits, got {self.uniform_negatives!r}")
        # Both extend the blocked loss (trainer/losses.py); accidental-hit
        # removal runs TFRS's own dense loss instead.
        for name in ("history_negatives", "candidate_softmax_weight"):
            if getattr(self, name) and self.remove_accidental_hits:
                raise ConfigError(f"--{name} cannot be combined with --remove_accidental_hits, "
                                  f"got --{name}={getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer and its learning-rate schedule."""

    optimizer: str = option("adam", "Optimizer.", choices=OPTIMIZERS, shape=True)
    learning_rate: float = option(
        0.02, "Learning rate (of the per-example MEAN loss; --optimizer=sgd needs a rate "
        "~batch times the tutorial's summed-loss rate).", check=positive())
    lr_schedule: str = option("cosine", "Learning-rate decay after the warmup.",
                              choices=LR_SCHEDULES)
    warmup_fraction: float = option(0.05, "Fraction of all steps with a linear warmup.",
                                    check=fraction_below_one())

    __post_init__ = _validate


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """The loop: batches, distribution, checkpoints, evaluation, export."""

    epochs: int = option(6, "Total epochs (a resumed run trains what is left).",
                         check=at_least(1))
    global_batch_size: int = option(1024, "Examples per step, all replicas (per replica: "
                                    "global / replicas).", check=at_least(1))
    seed: int = option(42, "Seed of weight init and per-epoch shuffles.")
    shuffle_buffer: int = option(10_000, "Shuffle buffer (examples).", check=at_least(1))
    strategy: str = option("auto", "Distribution strategy.", choices=STRATEGIES)
    virtual_cpu_devices: int = option(
        0, "Split the CPU into N logical devices (replicas) before TF starts.",
        check=at_least(0))
    checkpoint_every_steps: int = option(
        100, "Checkpoint every N steps as well as at each epoch end (0: epochs only).",
        check=at_least(0))
    keep_checkpoints: int = option(3, "Checkpoints to keep.", check=at_least(1))
    eval_batch_size: int = option(2048, "Evaluation batch size.", check=at_least(1))
    eval_every_epoch: bool = option(True, "Evaluate after every epoch.")
    eval_exclude_context: bool = option(
        False, "Evaluation does not rank the movies of the query's own context.")
    eval_exclude_seen: bool = option(
        False, "Evaluation does not rank any movie the user rated before the label (the "
        "examples' seen_movie_id; covers the context). Right when nobody consumes an item "
        "twice (MovieLens: no movie is rated twice).")
    eval_split: str = option(
        "auto", "The split evaluated after every epoch (TensorBoard eval/, metrics.json while "
        "training): validation (each user's second-to-last example), test (the last), or auto "
        "(validation when the data_dir has one). Choose flags on validation; the run's end "
        "also evaluates test, once.", choices=EVAL_SPLITS)
    export: bool = option(True, "Export a SavedModel at the end (see --export_dir).")
    export_k: int = option(100, "Recommendations per query in the export's signatures (at "
                           "most the vocabulary).", check=at_least(1))
    export_versions: bool = option(
        True, "Write each export to EXPORT_DIR/<version>/ (1, 2, ...: TF Serving's layout) and "
        "EXPORT_DIR/LATEST; --noexport_versions writes the SavedModel into EXPORT_DIR itself "
        f"(Vertex AI's convention for ${AIP_MODEL_DIR}: the default when it gives --export_dir).")

    __post_init__ = _validate


# The parts of a TrainConfig, by attribute name.
PARTS = {"model": ModelConfig, "loss": LossConfig, "optim": OptimizerConfig,
         "trainer": TrainerConfig}


@dataclasses.dataclass(frozen=True, init=False)
class TrainConfig:
    """One training run: where it reads and writes, and its parts (`PARTS`).

    Field defaults are the trainer's defaults, chosen with bench/quality.py
    (bench/README_quality.md has how, with the numbers); `TUTORIAL` holds the
    TFRS tutorial's values. Each option's help text is its contract, and its
    name is its flag's name: options are unique across parts, so a config is
    also addressed flat, `TrainConfig(data_dir=..., model_dir=...,
    embedding_dim=64)` or `cfg.replace(epochs=5)`, and read as
    `cfg.model.embedding_dim`.
    """

    data_dir: str = option(help="Beam job output (local path or gs://).")
    model_dir: str = option(
        help="Where config.json, metrics.json and (unless the *_dir flags below say "
        "otherwise) checkpoints/, TensorBoard events and export/ go. Default on Vertex AI: "
        f"the parent of ${AIP_MODEL_DIR} (the job's baseOutputDirectory).")
    checkpoint_dir: str = option(
        "", f"Checkpoints (default: ${AIP_CHECKPOINT_DIR} if set, else MODEL_DIR/checkpoints).")
    tensorboard_dir: str = option(
        "", f"TensorBoard events, in train/ and eval/ beneath it (default: "
        f"${AIP_TENSORBOARD_LOG_DIR} if set, else MODEL_DIR).")
    export_dir: str = option(
        "", f"The SavedModel (default: ${AIP_MODEL_DIR} if set, else MODEL_DIR/export).")
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)

    def __init__(self, data_dir: str | None = None, model_dir: str | None = None, **kwargs):
        """Takes the directories, parts (model=ModelConfig(...), ...) and/or any
        option by its flat name; a flat option overrides its part's value."""
        top = {"data_dir": data_dir, "model_dir": model_dir, "checkpoint_dir": "",
               "tensorboard_dir": "", "export_dir": ""}
        parts = {name: kwargs.pop(name, None) or cls() for name, cls in PARTS.items()}
        for name, value in kwargs.items():
            if name not in OPTIONS:
                raise TypeError(f"TrainConfig has no option {name!r}")
            part = OPTIONS[name][0]
            if part is None:
                top[name] = value
            else:
                parts[part] = dataclasses.replace(parts[part], **{name: value})
        for name, value in {**top, **parts}.items():
            object.__setattr__(self, name, value)
        _validate(self)

    def flat(self) -> dict[str, Any]:
        """Every option by its flag name."""
        out = {name: getattr(self, name) for name, (part, _) in OPTIONS.items() if part is None}
        for name in PARTS:
            out.update(dataclasses.asdict(getattr(self, name)))
        return out

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Builds a config from config.json's dict (nested, or the flat layout of runs
        saved before the parts existed), ignoring keys this version does not know."""
        flat = flatten(d)
        return cls(**{k: v for k, v in flat.items() if k in OPTIONS})

    def replace(self, **changes) -> TrainConfig:
        """A copy with options changed, by flat name (or whole parts)."""
        return TrainConfig(**{**self.flat(), **changes})

    @property
    def checkpoints_uri(self) -> str:
        return self.checkpoint_dir or schema.join(self.model_dir, "checkpoints")

    @property
    def tensorboard_uri(self) -> str:
        return self.tensorboard_dir or self.model_dir

    @property
    def export_uri(self) -> str:
        return self.export_dir or schema.join(self.model_dir, "export")


def flatten(d: Mapping[str, Any]) -> dict[str, Any]:
    """config.json's nested dict -> {flag name: value} (a flat dict is returned as is)."""
    out = {}
    for key, value in d.items():
        if key in PARTS and isinstance(value, Mapping):
            out.update(value)
        else:
            out[key] = value
    return out


def _options() -> dict[str, tuple[str | None, dataclasses.Field]]:
    """{option name: (its part's attribute or None for TrainConfig's own, field)}."""
    out: dict[str, tuple[str | None, dataclasses.Field]] = {}
    owners = [(None, TrainConfig)] + list(PARTS.items())
    for part, cls in owners:
        for f in dataclasses.fields(cls):
            if f.name in PARTS:
                continue
            assert f.name not in out, f"option {f.name} declared twice"
            out[f.name] = (part, f)
    return out


# Every option, in declaration order: what the flags, defaults and checks iterate.
OPTIONS = _options()


def defaults() -> dict[str, Any]:
    """Every option with a default, by name: what a run gets when a flag is not given."""
    return {name: f.default for name, (_, f) in OPTIONS.items()
            if f.default is not dataclasses.MISSING}


# Options that fix the shape of the model's variables (or of the optimizer's
# slots), and the value each had in runs saved before it existed.
SHAPE_FIELDS = tuple(name for name, (_, f) in OPTIONS.items() if f.metadata["shape"])
SHAPE_FIELDS_BEFORE = {name: f.metadata["before"] for name, (_, f) in OPTIONS.items()
                       if f.metadata["before"] is not dataclasses.MISSING}
# Shape options of one query tower only, and that tower.
SHAPE_FIELDS_TOWER = {name: f.metadata["shape"] for name, (_, f) in OPTIONS.items()
                      if isinstance(f.metadata["shape"], str)}


# The TFRS sequential retrieval tutorial, exactly: Adagrad(0.1) on batches of
# 12800 for 3 epochs, 32-d embeddings, one GRU, pad embedded as a movie (no
# mask), plain in-batch softmax. `TrainConfig(data_dir=..., model_dir=...,
# **TUTORIAL)`; on one device, or with negatives="per_replica" on several.
TUTORIAL = {
    "epochs": 3, "global_batch_size": 12800, "learning_rate": 0.1, "embedding_dim": 32,
    "query_tower": "gru", "gru_units": 0, "gru_layers": 1, "dropout": 0.0, "share_embeddings": False,
    "normalize": False, "last_movies": 0, "mask_padding": False,
    "temperature": 1.0, "negatives": "per_replica", "logq_correction": 0.0,
    "remove_accidental_hits": False, "uniform_negatives": 0, "popularity_prior": 0.0,
    "markov_weight": 0.0, "optimizer": "adagrad",
    "lr_schedule": "constant",
    "warmup_fraction": 0.0,
}
PRESETS = {"tutorial": TUTORIAL}


def shape_mismatches(saved: Mapping[str, Any], current: TrainConfig) -> list[str]:
    """Human-readable differences in SHAPE_FIELDS between a saved config (config.json's
    dict, nested or flat) and this run. An option of the other query tower is not one
    (a --query_tower change is reported itself)."""
    saved, now = flatten(saved), current.flat()
    out = []
    for field in SHAPE_FIELDS:
        if field not in saved and field not in SHAPE_FIELDS_BEFORE:
            continue
        if SHAPE_FIELDS_TOWER.get(field, now["query_tower"]) != now["query_tower"]:
            continue
        value = saved.get(field, SHAPE_FIELDS_BEFORE.get(field))
        if value != now[field]:
            out.append(f"--{field}={value} there, --{field}={now[field]} now")
    return out


# --- Flags: derived from the declaration above --------------------------------
_DEFINE = {int: flags.DEFINE_integer, float: flags.DEFINE_float, bool: flags.DEFINE_bool,
           str: flags.DEFINE_string}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """Defines one flag per TrainConfig field (same name, type, default, help), plus
    --preset, in `flag_values`; returns their names. Required fields get a None
    default: the missing value is reported by TrainConfig, in one line, like every
    other bad value."""
    for part, f in OPTIONS.values():
        types = typing.get_type_hints(PARTS[part] if part else TrainConfig)
        default = None if f.default is dataclasses.MISSING else f.default
        if f.metadata["choices"]:
            flags.DEFINE_enum(f.name, default, f.metadata["choices"], f.metadata["help"],
                              flag_values=flag_values)
        else:
            _DEFINE[types[f.name]](f.name, default, f.metadata["help"], flag_values=flag_values)
    flags.DEFINE_enum("preset", None, sorted(PRESETS),
                      "Start from a preset (tutorial: the TFRS tutorial's exact setup); flags "
                      "given explicitly override it.", flag_values=flag_values)
    return list(OPTIONS) + ["preset"]


# Where a flag is not given, Vertex AI's variable supplies the value.
_FROM_ENVIRONMENT = {"checkpoint_dir": AIP_CHECKPOINT_DIR,
                     "tensorboard_dir": AIP_TENSORBOARD_LOG_DIR,
                     "export_dir": AIP_MODEL_DIR}


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS,
                      environ: Mapping[str, str] | None = None) -> TrainConfig:
    """The run's config from parsed flags: a --preset supplies defaults, a flag given
    on the command line wins, and Vertex AI's AIP_* variables fill the output
    directories that no flag names (each choice is logged).

    Raises:
      ConfigError: a value TrainConfig refuses (the message names the flag).
    """
    environ = os.environ if environ is None else environ
    values = dict(PRESETS[flag_values["preset"].value]) if flag_values["preset"].value else {}
    for name in OPTIONS:
        if name not in values or flag_values[name].present:
            values[name] = flag_values[name].value
    for name, var in _FROM_ENVIRONMENT.items():
        if not flag_values[name].present and environ.get(var):
            values[name] = environ[var]
            logging.info("--%s=%s (from $%s)", name, values[name], var)
            if name == "export_dir" and not flag_values["export_versions"].present:
                values["export_versions"] = False  # Vertex reads the SavedModel right there
    if not values["model_dir"] and environ.get(AIP_MODEL_DIR):
        # Vertex sets AIP_MODEL_DIR to BASE/model; BASE is the run's directory.
        values["model_dir"] = environ[AIP_MODEL_DIR].rstrip("/").rsplit("/", 1)[0]
        logging.info("--model_dir=%s (the parent of $%s)", values["model_dir"], AIP_MODEL_DIR)
    return TrainConfig(**values)
