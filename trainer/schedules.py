"""Learning-rate schedules: linear warmup, then constant, cosine or linear decay."""
from __future__ import annotations

import math

import tensorflow as tf


class WarmupDecay(tf.keras.optimizers.schedules.LearningRateSchedule):
    """rate(step), step = optimizer.iterations (0-based, restored with checkpoints).

    step < warmup:  lr * (step + 1) / warmup   (reaches lr at the last warmup step)
    afterwards, with p = (step - warmup) / (total - warmup) clipped to [0, 1]:
      decay None:      lr
      decay "cosine":  lr * (1 + cos(pi * p)) / 2
      decay "linear":  lr * (1 - p)
    """

    def __init__(self, lr: float, warmup: int, total: int, decay: str | None):
        if decay not in (None, "cosine", "linear"):
            raise ValueError(f"decay must be None, 'cosine' or 'linear', got {decay!r}")
        self.lr, self.warmup, self.total, self.decay = float(lr), int(warmup), int(total), decay

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = tf.minimum(1.0, (step + 1.0) / max(self.warmup, 1))
        p = tf.clip_by_value((step - self.warmup) / max(self.total - self.warmup, 1), 0.0, 1.0)
        if self.decay == "cosine":
            factor = 0.5 * (1.0 + tf.cos(math.pi * p))
        elif self.decay == "linear":
            factor = 1.0 - p
        else:
            factor = tf.ones_like(p)
        return self.lr * tf.where(step < self.warmup, warm, factor)

    def get_config(self) -> dict:
        return {"lr": self.lr, "warmup": self.warmup, "total": self.total, "decay": self.decay}
