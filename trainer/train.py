r"""Trains the sequential retrieval model on a data_dir; writes model_dir.

    python -m trainer.train --data_dir=out/sample/data --model_dir=out/sample/model \
        --virtual_cpu_devices=2 --epochs=3

model_dir receives: checkpoints/ (every --checkpoint_every_steps and each
epoch end; a rerun with the same model_dir resumes from the latest), train/ and
eval/ TensorBoard events, config.json, metrics.json (test-split retrieval
metrics and the popularity baseline) and export/ (SavedModel).

The loop is deliberately one readable function (`run`): build, restore, then
for each step: next batch -> one distributed step -> checkpoint/evaluate when due.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time

from absl import app, flags, logging

from trainer import console

# TensorFlow is imported inside functions: the entry point must split the CPU
# into virtual devices before TF starts.

FLAGS = flags.FLAGS


def learning_rate(cfg, total_steps: int):
    """The rate, or a schedule of the step: linear warmup over
    warmup_fraction * total_steps, then constant or decaying to 0 at total_steps."""
    warmup = int(cfg.warmup_fraction * total_steps)
    if cfg.lr_schedule == "constant" and not warmup:
        return cfg.learning_rate
    if total_steps < 1:
        raise ValueError(f"--lr_schedule={cfg.lr_schedule} with --warmup_fraction="
                         f"{cfg.warmup_fraction} needs the run's total steps")
    decay = {"constant": None, "cosine": "cosine", "linear": "linear"}[cfg.lr_schedule]
    from trainer.schedules import WarmupDecay

    return WarmupDecay(cfg.learning_rate, warmup, max(total_steps, warmup + 1), decay)


def make_optimizer(cfg, total_steps: int = 0):
    import tensorflow as tf

    lr = learning_rate(cfg, total_steps)
    if cfg.optimizer == "adagrad":
        # The tutorial's Adagrad(0.1) differentiates the SUM over the batch; we
        # differentiate the mean (sum / B), whose gradients are B times smaller.
        # Adagrad's step lr * g / sqrt(acc0 + sum g^2) is scale-free except for
        # the initial accumulator acc0 (0.1 by default), which would then
        # dominate and shrink the steps ~B-fold (the loss did not move at all).
        # acc0 = 0.1 / B^2 gives exactly the tutorial's steps for the mean loss.
        optimizer = tf.keras.optimizers.Adagrad(
            learning_rate=lr,
            initial_accumulator_value=0.1 / cfg.global_batch_size**2)
    else:
        cls = {"adam": tf.keras.optimizers.Adam, "sgd": tf.keras.optimizers.SGD}[cfg.optimizer]
        optimizer = cls(learning_rate=lr)
    if cfg.dtype_policy == "mixed_float16":
        # float16 gradients underflow without it; bfloat16 has float32's range.
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def build(info, cfg, strategy):
    """Model + optimizer with every variable (and optimizer slot) created, so a
    checkpoint restores at once and a shape mismatch surfaces immediately."""
    import tensorflow as tf

    from beam_jobs import schema
    from trainer import data
    from trainer import model as model_lib

    with strategy.scope():
        tf.keras.utils.set_random_seed(cfg.seed)
        query_model, candidate_model = model_lib.build_towers(
            info.movie_ids, cfg.embedding_dim, info.context_length, gru_units=cfg.gru_units,
            gru_layers=cfg.gru_layers, dropout=cfg.dropout, mask_padding=cfg.mask_padding,
            share_embeddings=cfg.share_embeddings, normalize=cfg.normalize,
            last_movies=cfg.last_movies,
            dtype_policy=cfg.dtype_policy,
            log_prior=(model_lib.popularity_log_prior(
                info.counts, cfg.popularity_prior * cfg.temperature)
                if cfg.popularity_prior else None))
        probability = (model_lib.sampling_probabilities(info.counts, cfg.logq_correction)
                       if cfg.logq_correction else None)
        model = model_lib.SequentialRetrievalModel(
            query_model, candidate_model, cfg.global_batch_size, negatives=cfg.negatives,
            temperature=cfg.temperature, remove_accidental_hits=cfg.remove_accidental_hits,
            movie_ids=info.movie_ids, sampling_probability=probability,
            uniform_negatives=cfg.uniform_negatives)
        model({schema.CONTEXT_MOVIE_ID: tf.zeros([1, info.context_length], tf.int64),
               schema.LABEL_MOVIE_ID: tf.zeros([1], tf.int64)})
        optimizer = make_optimizer(
            cfg, cfg.epochs * data.steps_per_epoch(info, cfg.global_batch_size))
        optimizer.build(model.trainable_variables)
    return model, optimizer


def make_replica_step(model, optimizer):
    """One replica's step: features (per-replica batch) -> its per-example loss.

    Call through `strategy.run`. apply_gradients in a replica context
    all-reduces (SUMs) the gradients across replicas; the loss being
    differentiated is divided by the GLOBAL batch for exactly that reason
    (see SequentialRetrievalModel.compute_losses).
    """
    import tensorflow as tf

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


def make_train_step(model, optimizer, strategy):
    """A tf.function running one step on every replica.

    Returns:
      step(distributed_batch) -> per-example loss of the global batch (scalar):
      the MEAN of the replicas' per-example losses, exact because every
      replica holds an equal (full) batch.
    """
    import tensorflow as tf

    replica_step = make_replica_step(model, optimizer)

    @tf.function
    def step(batch):
        per_replica = strategy.run(replica_step, args=(batch,))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    return step


class _Evaluator:
    """Calls trainer.evaluate (and trainer.export) when those modules exist."""

    def __init__(self, info, cfg):
        from trainer import data

        self.info, self.cfg, self._popularity = info, cfg, None
        self.popularity_plotted = False
        self.dataset = data.make_eval_dataset(info, cfg.eval_batch_size)
        try:
            from trainer import evaluate
        except ImportError:  # written in parallel by another change; absent => skip
            evaluate = None
            logging.warning("trainer.evaluate not found: no evaluation")
        self.evaluate = evaluate

    def __call__(self, model) -> dict | None:
        if self.evaluate is None:
            return None
        if self._popularity is None:  # the same every epoch
            self._popularity = self.evaluate.popularity_baseline(
                self.dataset, self.info.movie_ids, self.info.counts,
                exclude_context=self.cfg.eval_exclude_context)
        test = self.evaluate.evaluate_retrieval(
            model.query_model, model.candidate_model, self.dataset, self.info.movie_ids,
            exclude_context=self.cfg.eval_exclude_context)
        return {"test": test, "popularity": self._popularity}


def _export(model, info, cfg, task) -> None:
    from beam_jobs import schema

    try:
        from trainer import export
    except ImportError:
        logging.warning("trainer.export not found: no SavedModel written")
        return
    # Every worker exports (saving may take part in collectives); only the
    # chief into model_dir.
    target = (cfg.export_uri if task.is_chief
              else tempfile.mkdtemp(prefix="seqrec-worker-export-"))
    export.export_model(model.query_model, model.candidate_model, info.movie_ids, target,
                        schema.join(info.data_dir, schema.VOCAB_FILE))
    if not task.is_chief:
        shutil.rmtree(target, ignore_errors=True)


def _scalar(name: str, value, step: int) -> None:
    """tf.summary.scalar without the tensorboard package (TF 2.21 no longer
    depends on it): the same event record, written by the core summary op."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
    tf.summary.write(name, tf.constant(float(value), tf.float32), step=step, metadata=metadata)


def _write_json(path: str, obj) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _preflight_gcs(cfg) -> None:
    """Bounded gs:// checks (trainer/storage.py): TF's own gs:// filesystem spins
    forever on a missing bucket. Local paths are checked by data/checkpoints."""
    from trainer import storage

    for uri, need_write in ((cfg.data_dir, False), (cfg.model_dir, True)):
        if uri.startswith(storage.GCS_SCHEME):
            storage.preflight(uri, need_write=need_write)


def _hparams(cfg) -> None:
    """The run's configuration on TensorBoard's HPARAMS tab (needs the tensorboard
    package: `pip install seqrec[tensorboard]`; without it, config.json only)."""
    try:
        from tensorboard.plugins.hparams import api as hp
    except ImportError:
        logging.info("tensorboard is not installed: no hparams summary (config.json has them)")
        return
    hp.hparams({k: v for k, v in json.loads(cfg.to_json()).items()
                if isinstance(v, bool | int | float | str)})


def _current_lr(optimizer) -> float:
    """The learning rate the last step used (tf.keras keeps it in a variable that
    apply_gradients updates from the schedule)."""
    lr = optimizer.learning_rate  # a (Mirrored)Variable, a tensor or a float
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


def run(cfg) -> dict:
    """Trains (or resumes) per `cfg`; returns {"step": N, "test": ..., "popularity": ...}.

    Precondition: TensorFlow's devices are configured (the entry point calls
    distribute.configure_virtual_cpus first).
    """
    import tensorflow as tf

    from beam_jobs import schema
    from trainer import checkpoints, data, distribute
    from trainer import config as config_lib

    # --- Check inputs and outputs before building anything. These use only
    # tf.io.gfile: MultiWorkerMirroredStrategy must be created before anything
    # initialises the TF runtime (tf.data, ops). ---
    _preflight_gcs(cfg)
    info = data.load_data_dir(cfg.data_dir)
    if distribute.is_chief_from_env():  # only the chief writes model_dir
        for flag in ("model_dir", "checkpoint_dir", "tensorboard_dir"):
            if flag == "model_dir" or getattr(cfg, flag):  # others default beneath model_dir
                checkpoints.probe_writable(getattr(cfg, flag), flag)
    checkpoints.check_compatible(cfg)
    steps_per_epoch = data.steps_per_epoch(info, cfg.global_batch_size)
    total_steps = cfg.epochs * steps_per_epoch

    strategy = distribute.make_strategy(cfg.strategy)
    data.check_first_records(info)
    distribute.log_strategy(strategy)
    task = distribute.task_of(strategy)
    if cfg.global_batch_size % strategy.num_replicas_in_sync:
        raise config_lib.ConfigError(
            f"--global_batch_size={cfg.global_batch_size} is not divisible by the "
            f"{strategy.num_replicas_in_sync} replicas")

    model, optimizer = build(info, cfg, strategy)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    restored = checkpoints.restore(checkpoint, cfg.checkpoints_uri)
    step = int(optimizer.iterations.numpy())  # int() of a MirroredVariable fails
    if restored:
        logging.info("Resumed from checkpoint %s at step %d (epoch %d of %d)",
                     restored, step, min(step // steps_per_epoch + 1, cfg.epochs), cfg.epochs)
    metrics_path = schema.join(cfg.model_dir, "metrics.json")
    if task.is_chief:
        _write_json(schema.join(cfg.model_dir, config_lib.CONFIG_FILE), json.loads(cfg.to_json()))
    if step >= total_steps and tf.io.gfile.exists(metrics_path):
        logging.info("Already trained: step %d >= %d (--epochs=%d x %d steps); not training "
                     "again", step, total_steps, cfg.epochs, steps_per_epoch)
        with tf.io.gfile.GFile(metrics_path) as f:
            return json.loads(f.read())

    writer = checkpoints.Writer(checkpoint, cfg.checkpoints_uri, task.is_chief,
                                cfg.keep_checkpoints)
    if task.is_chief:
        train_log = tf.summary.create_file_writer(schema.join(cfg.tensorboard_uri, "train"))
        eval_log = tf.summary.create_file_writer(schema.join(cfg.tensorboard_uri, "eval"))
        with tf.summary.create_file_writer(cfg.tensorboard_uri).as_default():
            _hparams(cfg)
    else:
        train_log = eval_log = tf.summary.create_noop_writer()
    evaluator = _Evaluator(info, cfg)

    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: data.make_train_dataset(
            info, cfg.global_batch_size, cfg.epochs, cfg.seed, cfg.shuffle_buffer, ctx,
            start_step=step))
    iterator = iter(dataset)  # one iterator for the whole run (see data.py)
    train_step = make_train_step(model, optimizer, strategy)
    logging.info("Training steps %d..%d: %d epoch(s) x %d steps of %d examples (%d per replica)",
                 step, total_steps, cfg.epochs, steps_per_epoch, cfg.global_batch_size,
                 cfg.global_batch_size // strategy.num_replicas_in_sync)

    results = {"step": step}
    progress, t0, t0_step = None, None, step
    while step < total_steps:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        if progress is None:
            progress = console.Progress(epoch + 1, cfg.epochs, steps_per_epoch, in_epoch)
        try:
            loss = float(train_step(next(iterator)))
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            bad = data.find_bad_shard(info, splits=(schema.TRAIN,))
            if bad:
                raise data.DataError(f"{bad[0]}: unreadable shard ({bad[1]}); training stopped at "
                                     f"step {step}, the last checkpoint is kept") from None
            raise e
        except (tf.errors.OutOfRangeError, StopIteration):
            raise data.DataError(
                f"{info.data_dir}: the train split ended at step {step}, before the "
                f"{info.num_examples[schema.TRAIN]} examples metadata.json counts") from None
        step += 1
        if t0 is None:  # the first step traces the step function: time from after it
            t0, t0_step = time.time(), step
        progress.update(in_epoch + 1, loss)
        with train_log.as_default():
            _scalar("loss_per_example", loss, step)
            _scalar("learning_rate", _current_lr(optimizer), step)
        epoch_end = step % steps_per_epoch == 0
        if epoch_end or (cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0):
            path = writer.save(step)
            logging.info("Saved checkpoint %s", path)
        if epoch_end:
            progress = None
            rate = ((step - t0_step) * cfg.global_batch_size / (time.time() - t0)
                    if step > t0_step else float("nan"))
            with train_log.as_default():
                if step > t0_step:
                    _scalar("examples_per_second", rate, step)
            logging.info("Epoch %d done: step %d, mean loss %.4f, %.0f examples/s",
                         step // steps_per_epoch, step, model.loss_tracker.result().numpy(), rate)
            model.loss_tracker.reset_state()
            if task.is_chief and (cfg.eval_every_epoch or step == total_steps):
                results = _evaluate(evaluator, model, step, metrics_path, eval_log)
            t0, t0_step = time.time(), step
    if results.get("step") != step and task.is_chief:  # resumed exactly at the end
        results = _evaluate(evaluator, model, step, metrics_path, eval_log)
    if "popularity" in results:
        logging.info("Popularity baseline %s", _fmt(results["popularity"]))
    if cfg.export:
        _export(model, info, cfg, task)
    distribute.barrier(strategy)
    writer.close()
    train_log.flush()
    eval_log.flush()
    return results


# Constant over a run: not plotted per epoch (metrics.json keeps them).
_NOT_PLOTTED = ("num_queries",)


def _evaluate(evaluator, model, step: int, metrics_path: str, eval_log) -> dict:
    """Evaluates, writes metrics.json and the eval/ summaries; returns the results.
    The popularity baseline does not change while training: plotted once."""
    metrics = evaluator(model)
    if not metrics:
        return {"step": step}
    _write_json(metrics_path, {"step": step, **metrics})
    with eval_log.as_default():
        for split, values in metrics.items():
            if split == "popularity" and evaluator.popularity_plotted:
                continue
            for k, v in values.items():
                if k not in _NOT_PLOTTED:
                    _scalar(f"{split}/{k}", v, step)
    evaluator.popularity_plotted = True
    logging.info("Step %d test %s", step, _fmt(metrics["test"]))
    return {"step": step, **metrics}


def _fmt(metrics: dict) -> str:
    keys = ("top_1", "top_5", "top_10", "top_50", "top_100", "ndcg_10", "mrr")
    return " ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a flag error in one line and exit status 2 (absl's own
    prints a FATAL line and a hint, and exits 1)."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _main(argv) -> int:
    from trainer.config import ConfigError, config_from_flags

    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]} (flags are --name=value)",
              file=sys.stderr)
        return 2
    try:
        cfg = config_from_flags(FLAGS)
    except ConfigError as e:  # a flag value TrainConfig rejects; the message names it
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not console.verbose():
        console.quiet_tensorflow()
    from trainer import distribute  # imports TensorFlow: after flag checks

    # Before anything initialises TensorFlow.
    distribute.configure_virtual_cpus(cfg.virtual_cpu_devices)
    from beam_jobs import schema
    from trainer import checkpoints, data, storage

    errors = (data.DataError, schema.SchemaError, checkpoints.ModelDirError, storage.StorageError,
              ConfigError)
    try:
        run(cfg)
    except errors as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


def main() -> None:
    """`python -m trainer.train` and the `seqrec-train` console script."""
    from trainer.config import define_flags

    # Key flags of the main program (sys.argv[0]: trainer/train.py or the console
    # script), so --helpshort lists them although trainer.config defines them.
    for name in define_flags(FLAGS):
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
    app.run(_main, flags_parser=_parse_flags)


if __name__ == "__main__":
    main()
