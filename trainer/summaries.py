"""Run outputs: TensorBoard summaries and the JSON files of a model_dir.

Every writer goes through tf.io.gfile (local paths and gs://), always inside
`with` (a GFile left to its destructor uploads there and swallows errors).
"""
from __future__ import annotations

import json

import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2

from trainer.config import TrainConfig

METRICS_FILE = "metrics.json"


def scalar(name: str, value, step: int) -> None:
    """tf.summary.scalar without needing the tensorboard package (TF 2.21 no
    longer depends on it): the same event record, written by the core op."""
    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
    tf.summary.write(name, tf.constant(float(value), tf.float32), step=step, metadata=metadata)


def hparams(cfg: TrainConfig) -> None:
    """Writes the run's options to TensorBoard's HPARAMS tab (into the default
    writer). Needs the tensorboard package (the trainer extra has it); without
    it, config.json alone records them."""
    try:
        from tensorboard.plugins.hparams import api as hp
    except ImportError:
        logging.info("tensorboard is not installed: no hparams summary (config.json has them)")
        return
    hp.hparams({k: v for k, v in cfg.flat().items() if isinstance(v, bool | int | float | str)})


def current_lr(optimizer) -> float:
    """The learning rate the last step used (tf.keras keeps it in a variable that
    apply_gradients updates from the schedule)."""
    lr = optimizer.learning_rate  # a (Mirrored)Variable, a tensor or a float
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


def write_json(path: str, obj) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str):
    with tf.io.gfile.GFile(path) as f:
        return json.loads(f.read())


def fmt(metrics: dict) -> str:
    """'top_1=0.1000 top_5=...' for a log line."""
    keys = ("top_1", "top_5", "top_10", "top_50", "top_100", "ndcg_10", "mrr")
    return " ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)
