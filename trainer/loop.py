"""The training loop: `run(cfg)`, read top to bottom.

Phases: check inputs and outputs -> strategy -> build and restore -> (already
done? return) -> for each step: next batch, one distributed step, summaries,
checkpoint when due (or on SIGTERM/SIGINT: checkpoint, exit 75; see
preemption.py), evaluate at epoch ends -> export.

Precondition: TensorFlow's devices are configured (the entry point calls
distribute.configure_virtual_cpus before anything initialises TensorFlow).
"""
from __future__ import annotations

import contextlib
import json
import time

import tensorflow as tf
from absl import logging

from beam_jobs import schema
from trainer import (
    checkpoints,
    console,
    data,
    distribute,
    export,
    hooks,
    preemption,
    storage,
    summaries,
)
from trainer.config import CONFIG_FILE, ConfigError, TrainConfig
from trainer.task import RetrievalTask


def run(cfg: TrainConfig) -> dict:
    """Trains (or resumes) per `cfg`; returns what metrics.json holds: {"step": N,
    "eval_split": ..., "test": ..., "popularity": ...} plus "validation" and
    "popularity_validation" when the data_dir has a validation split.

    Raises:
      preemption.Preempted (a SystemExit of status 75) after SIGTERM or SIGINT,
      once the step in flight is checkpointed; see trainer/preemption.py.
    """
    t = cfg.trainer
    # Check inputs and outputs before building anything. Only tf.io.gfile here:
    # MultiWorkerMirroredStrategy must exist before anything starts TF's runtime.
    info = prepare(cfg)
    strategy = distribute.make_strategy(t.strategy)
    # From here SIGTERM/SIGINT request a stop at the next step boundary. Entered
    # after the strategy: its runtime may install a SIGTERM handler of its own.
    with preemption.StopSignals() as signals, contextlib.ExitStack() as cleanup:
        data.check_first_records(info)
        distribute.log_strategy(strategy)
        is_chief = distribute.task_of(strategy).is_chief
        if t.global_batch_size % strategy.num_replicas_in_sync:
            raise ConfigError(f"--global_batch_size={t.global_batch_size} is not divisible by "
                              f"the {strategy.num_replicas_in_sync} replicas")

        # Build every variable, then restore the latest checkpoint into them.
        task = RetrievalTask(info, cfg)
        model, optimizer = task.build_model(strategy)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        restored = checkpoints.restore(checkpoint, cfg.checkpoints_uri)
        step = int(optimizer.iterations.numpy())  # int() of a MirroredVariable fails
        per_epoch, total = task.steps_per_epoch, task.total_steps
        if restored:
            logging.info("Resumed from checkpoint %s at step %d (epoch %d of %d)",
                         restored, step, min(step // per_epoch + 1, t.epochs), t.epochs)
        if is_chief:
            summaries.write_json(schema.join(cfg.model_dir, CONFIG_FILE),
                                 json.loads(cfg.to_json()))
        results = _metrics(cfg)
        if _already_done(cfg, step, total, results, restored, info):
            return results

        # Outputs of the loop: checkpoints, summaries, evaluation; and the vote
        # that makes every worker stop at the same step.
        writer = checkpoints.Writer(checkpoint, cfg.checkpoints_uri, is_chief,
                                    t.keep_checkpoints)
        train_log, eval_log = _summary_writers(cfg, is_chief)
        # --markov_weight: successors counted once, before any step (the same on every
        # worker), where something uses them: the chief's evaluation, or any export.
        successors = (hooks.count_successors(info)
                      if cfg.model.markov_weight and (is_chief or t.export) else None)
        evaluator = hooks.Evaluator(info, cfg, eval_log, successors) if is_chief else None
        # The run's one iterator (data.py); released off this thread when run ends.
        batches = cleanup.enter_context(data.Batches(task.build_inputs(strategy, step)))
        train_step = task.train_step(model, optimizer, strategy)
        any_worker = distribute.any_worker(strategy)
        logging.info("Training steps %d..%d: %d epoch(s) x %d steps of %d examples (%d per "
                     "replica)", step, total, t.epochs, per_epoch, t.global_batch_size,
                     t.global_batch_size // strategy.num_replicas_in_sync)

        progress, t0, t0_step = None, None, step
        while step < total:
            epoch, in_epoch = divmod(step, per_epoch)
            progress = progress or console.Progress(epoch + 1, t.epochs, per_epoch, in_epoch)
            loss = _step(train_step, batches, info, step)
            step += 1
            if t0 is None:  # the first step traces the step function: time from after it
                t0, t0_step = time.time(), step
            progress.update(in_epoch + 1, loss)
            with train_log.as_default():
                summaries.scalar("loss_per_example", loss, step)
                summaries.scalar("learning_rate", summaries.current_lr(optimizer), step)
            # A stop requested on any worker: all save this step together, then exit 75.
            stop = any_worker(signals.requested)
            epoch_end = step % per_epoch == 0
            if stop or epoch_end or (t.checkpoint_every_steps
                                     and step % t.checkpoint_every_steps == 0):
                logging.info("Saved checkpoint %s", writer.save(step))
            if stop:
                raise _stopped(signals, step, strategy, writer, (train_log, eval_log))
            if not epoch_end:
                continue
            # Epoch end: throughput, mean loss, evaluation.
            progress = None
            _log_epoch(model, train_log, step, per_epoch,
                       _rate(step - t0_step, t.global_batch_size, t0))
            if evaluator and (t.eval_every_epoch or step == total):
                results = evaluator(model, step, final=step == total)
            t0, t0_step = time.time(), step

        # The end: evaluate every evaluation split if not done at this step (resumed
        # exactly at the end), then export. (A signal from here on lets them
        # finish: all training is checkpointed.)
        if evaluator and not _evaluated(results, step, info):
            results = evaluator(model, step, final=True)
        if "popularity" in results:
            logging.info("Popularity baseline %s", summaries.fmt(results["popularity"]))
        if t.export:
            hooks.export_savedmodel(model, info, cfg, is_chief, successors)
        distribute.barrier(strategy)
        writer.close()
        train_log.flush()
        eval_log.flush()
        return results


def _already_done(cfg: TrainConfig, step: int, total: int, results: dict,
                  restored: str | None, info: data.DataInfo) -> bool:
    """Trained to the end, metrics.json is of this step's final evaluation and the
    export holds its weights (a run stopped in its final evaluation or export does
    them again)."""
    t = cfg.trainer
    if not (step >= total and _evaluated(results, step, info)
            and (not t.export or _exported_after(cfg, restored))):
        return False
    logging.info("Already trained: step %d >= %d (--epochs=%d); not training again", step,
                 total, t.epochs)
    return True


def _log_epoch(model, train_log, step: int, per_epoch: int, rate: float | None) -> None:
    """The epoch's throughput (TensorBoard, when timed) and mean loss (the log)."""
    if rate:
        with train_log.as_default():
            summaries.scalar("examples_per_second", rate, step)
    logging.info("Epoch %d done: step %d, mean loss %.4f, %.0f examples/s", step // per_epoch,
                 step, model.loss_tracker.result().numpy(), rate or float("nan"))
    model.loss_tracker.reset_state()


def prepare(cfg: TrainConfig) -> data.DataInfo:
    """Checks the data_dir and every output location, before any worker or
    replica starts; returns the data's DataInfo. gs:// is checked with bounded
    timeouts first: TF's own gs:// filesystem spins on a missing bucket."""
    if cfg.data_dir.startswith(storage.GCS_SCHEME):
        storage.preflight(cfg.data_dir, need_write=False, flag="data_dir")
    info = data.load_data_dir(cfg.data_dir)
    data.check_sizes(info, cfg.trainer.global_batch_size)
    data.eval_split(info, cfg.trainer.eval_split)
    if cfg.trainer.eval_exclude_seen:
        data.check_seen(info)
    for flag in ("model_dir", "checkpoint_dir", "tensorboard_dir", "export_dir"):
        if flag == "model_dir" or getattr(cfg, flag):  # the others default beneath it
            storage.preflight(getattr(cfg, flag), need_write=True, flag=flag)
    checkpoints.check_compatible(cfg)
    return info


def _step(train_step, batches: data.Batches, info: data.DataInfo, step: int) -> float:
    """One training step; a shard that cannot be read, or a train split that
    holds fewer (or more) examples than metadata.json counts, stops training
    naming the shard."""
    try:
        return float(train_step(next(batches)))
    except data.READ_ERRORS as e:
        raise data.reading_failed(info, schema.TRAIN, e, f"training stopped at step {step}, "
                                  "the last checkpoint is kept") from None


def _evaluated(results: dict, step: int, info: data.DataInfo) -> bool:
    """Whether metrics.json holds the final evaluation of `step`: every evaluation
    split the data_dir has (after the last epoch), not just the per-epoch one."""
    return results["step"] == step and all(s in results for s in data.eval_splits(info))


def _stopped(signals: preemption.StopSignals, step: int, strategy, writer: checkpoints.Writer,
             logs) -> preemption.Preempted:
    """After the checkpoint of `step` is saved on a stop request: every worker
    leaves together (a worker exiting early looks crashed to its peers); returns
    the Preempted to raise."""
    distribute.barrier(strategy)
    writer.close()
    for log in logs:
        log.flush()
    stopped = preemption.Preempted(signals.signal_name or "another worker's signal", step,
                                   writer.chief_path(step))
    logging.warning("%s", stopped)
    return stopped


def _metrics(cfg: TrainConfig) -> dict:
    """metrics.json of model_dir, or {"step": None} when there is none yet."""
    path = schema.join(cfg.model_dir, summaries.METRICS_FILE)
    return summaries.read_json(path) if tf.io.gfile.exists(path) else {"step": None}


def _exported_after(cfg: TrainConfig, checkpoint: str) -> bool:
    """Whether the newest export was written after `checkpoint` (so it holds
    those weights, not an earlier run's). A SavedModel's saved_model.pb is
    written last, atomically (tf.saved_model.save; export.py moves it last)."""
    version = export.latest(cfg.export_uri)
    saved_model = version and schema.join(version, "saved_model.pb")
    if not saved_model or not tf.io.gfile.exists(saved_model):
        return False
    written = tf.io.gfile.stat(saved_model).mtime_nsec
    return written >= tf.io.gfile.stat(checkpoint + ".index").mtime_nsec


def _rate(steps: int, batch: int, since: float | None) -> float | None:
    """Examples per second over `steps` steps since `since` (None: nothing timed)."""
    return steps * batch / (time.time() - since) if steps and since else None


def _summary_writers(cfg: TrainConfig, is_chief: bool):
    """(train, eval) TensorBoard writers; the chief also records the hparams."""
    if not is_chief:
        noop = tf.summary.create_noop_writer()
        return noop, noop
    with tf.summary.create_file_writer(cfg.tensorboard_uri).as_default():
        summaries.hparams(cfg)
    return (tf.summary.create_file_writer(schema.join(cfg.tensorboard_uri, "train")),
            tf.summary.create_file_writer(schema.join(cfg.tensorboard_uri, "eval")))
