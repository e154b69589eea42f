"""The retrieval task: what to train on, what to train, and one training step.

Shaped like tensorflow/models' `Task` (build_inputs / build_model / train_step):
the loop (trainer/loop.py) asks the task for these and knows nothing of towers,
losses or optimizers.
"""
from __future__ import annotations

import tensorflow as tf

from beam_jobs import schema
from trainer import data
from trainer import model as model_lib
from trainer.config import OptimizerConfig, TrainConfig
from trainer.content import MovieContent
from trainer.schedules import WarmupDecay


def learning_rate(optim: OptimizerConfig, total_steps: int):
    """The rate, or a schedule of the step: linear warmup over
    warmup_fraction * total_steps, then constant or decaying to 0 at total_steps."""
    warmup = int(optim.warmup_fraction * total_steps)
    if optim.lr_schedule == "constant" and not warmup:
        return optim.learning_rate
    if total_steps < 1:
        raise ValueError(f"--lr_schedule={optim.lr_schedule} with --warmup_fraction="
                         f"{optim.warmup_fraction} needs the run's total steps")
    decay = {"constant": None, "cosine": "cosine", "linear": "linear"}[optim.lr_schedule]
    return WarmupDecay(optim.learning_rate, warmup, max(total_steps, warmup + 1), decay)


def make_optimizer(cfg: TrainConfig, total_steps: int = 0) -> tf.keras.optimizers.Optimizer:
    """cfg.optim's optimizer (loss-scaled under --dtype_policy=mixed_float16)."""
    lr = learning_rate(cfg.optim, total_steps)
    if cfg.optim.optimizer == "adagrad":
        # The tutorial's Adagrad(0.1) differentiates the SUM over the batch; we
        # differentiate the mean (sum / B), whose gradients are B times smaller.
        # Adagrad's step lr * g / sqrt(acc0 + sum g^2) is scale-free except for
        # the initial accumulator acc0 (0.1 by default), which would then
        # dominate and shrink the steps ~B-fold (the loss did not move at all).
        # acc0 = 0.1 / B^2 gives exactly the tutorial's steps for the mean loss.
        optimizer = tf.keras.optimizers.Adagrad(
            learning_rate=lr,
            initial_accumulator_value=0.1 / cfg.trainer.global_batch_size**2)
    else:
        cls = {"adam": tf.keras.optimizers.Adam,
               "sgd": tf.keras.optimizers.SGD}[cfg.optim.optimizer]
        optimizer = cls(learning_rate=lr)
    if cfg.model.dtype_policy == "mixed_float16":
        # float16 gradients underflow without it; bfloat16 has float32's range.
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


class RetrievalTask:
    """Next-movie retrieval on one data_dir, configured by a TrainConfig."""

    def __init__(self, info: data.DataInfo, cfg: TrainConfig):
        self.info, self.cfg = info, cfg
        self.steps_per_epoch = data.steps_per_epoch(info, cfg.trainer.global_batch_size)
        self.total_steps = cfg.trainer.epochs * self.steps_per_epoch

    def build_inputs(self, strategy: tf.distribute.Strategy, start_step: int = 0):
        """The train split as a distributed dataset of per-replica batches,
        positioned at `start_step` (a resumed run continues where it stopped)."""
        t = self.cfg.trainer
        return strategy.distribute_datasets_from_function(
            lambda ctx: data.make_train_dataset(
                self.info, t.global_batch_size, t.epochs, t.seed, t.shuffle_buffer, ctx,
                start_step=start_step))

    def build_model(self, strategy: tf.distribute.Strategy):
        """(model, optimizer) with every variable and optimizer slot created, so a
        checkpoint restores at once and a shape mismatch surfaces immediately."""
        cfg, info = self.cfg, self.info
        with strategy.scope():
            tf.keras.utils.set_random_seed(cfg.trainer.seed)
            prior = cfg.model.popularity_prior
            query_model, candidate_model = model_lib.build_towers(
                info.movie_ids, info.context_length, cfg.model,
                log_prior=(model_lib.popularity_log_prior(
                    info.counts, prior * cfg.loss.temperature) if prior else None),
                content=(MovieContent.from_vocab(info.years, info.genres)
                         if cfg.model.movie_features else None))
            probability = (
                model_lib.sampling_probabilities(info.counts, cfg.loss.logq_correction)
                if cfg.loss.logq_correction else None)
            model = model_lib.SequentialRetrievalModel(
                query_model, candidate_model, cfg.trainer.global_batch_size, cfg.loss,
                movie_ids=info.movie_ids, sampling_probability=probability,
                label_counts=info.counts)
            model({schema.CONTEXT_MOVIE_ID: tf.zeros([1, info.context_length], tf.int64),
                   schema.LABEL_MOVIE_ID: tf.zeros([1], tf.int64)})
            optimizer = make_optimizer(cfg, self.total_steps)
            optimizer.build(model.trainable_variables)
        return model, optimizer

    def train_step(self, model, optimizer, strategy: tf.distribute.Strategy):
        """A tf.function running one step on every replica.

        Returns:
          step(distributed_batch) -> per-example loss of the global batch (scalar):
          the MEAN of the replicas' per-example losses, exact because every
          replica holds an equal (full) batch.
        """
        replica_step = make_replica_step(model, optimizer)

        @tf.function
        def step(batch):
            per_replica = strategy.run(replica_step, args=(batch,))
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

        return step


def make_replica_step(model, optimizer):
    """One replica's step: features (per-replica batch) -> its per-example loss.

    Call through `strategy.run`. apply_gradients in a replica context
    all-reduces (SUMs) the gradients across replicas; the loss being
    differentiated is divided by the GLOBAL batch for exactly that reason
    (see SequentialRetrievalModel.compute_losses).
    """
    loss_scaled = isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)

    def replica_step(features):
        with tf.GradientTape() as tape:
            scaled, mean = model.compute_losses(features, training=True)
            if loss_scaled:
                scaled = optimizer.get_scaled_loss(scaled)
        variables = model.trainable_variables
        grads = tape.gradient(scaled, variables)
        if loss_scaled:
            grads = optimizer.get_unscaled_gradients(grads)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return mean

    return replica_step
