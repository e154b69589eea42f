"""Devices and tf.distribute strategies.

`configure_virtual_cpus` must run before TensorFlow initialises its runtime
(before the first op or device query that creates a context), so the entry point
calls it first. Splitting the CPU into logical devices lets a laptop, CI and the
tests run real multi-replica MirroredStrategy training.
"""
from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf
from absl import logging


def configure_virtual_cpus(n: int) -> None:
    """Splits the first CPU into `n` logical devices (n <= 1: leaves it alone).

    Raises:
      RuntimeError: TensorFlow already started with another device count.
    """
    if n <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * n
        )
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have != n:
            raise RuntimeError(
                f"--virtual_cpu_devices={n}: TensorFlow already started with {have} CPU "
                "device(s); the split must happen before anything initialises TensorFlow"
            ) from None


_strategies_made = 0


def _mirrored(devices: list[str]) -> tf.distribute.MirroredStrategy:
    """MirroredStrategy with collective keys of its own.

    Every MirroredStrategy numbers its collective ops from the same start, and
    the runtime caches each op's shape by that number: a second strategy in the
    same process (a notebook calling run() twice, a test session) that
    all-reduces other shapes then fails with "Shape mismatch in the collective
    instance". TF's own tests avoid that by moving the class's key base
    (a private attribute); we give each strategy made here its own range and
    leave the attribute as we found it.
    """
    global _strategies_made
    _strategies_made += 1
    cls = tf.distribute.MirroredStrategy
    saved = cls._collective_key_base  # noqa: SLF001
    cls._collective_key_base = 10_000_000 * _strategies_made  # noqa: SLF001
    try:
        return cls(devices)
    finally:
        cls._collective_key_base = saved  # noqa: SLF001


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy for --strategy.

    auto: MirroredStrategy over every GPU; with no GPU, MirroredStrategy over
      the logical CPUs if there are several (--virtual_cpu_devices), else the
      default (single-device) strategy.
    mirrored: MirroredStrategy over every GPU, else over every logical CPU.
    multi_worker: MultiWorkerMirroredStrategy, cluster from TF_CONFIG.
    default: the default strategy (one device, no distribution).
    """
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "default":
        return tf.distribute.get_strategy()
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    if name == "mirrored":
        return _mirrored(gpus or cpus)
    if name == "auto":
        if gpus:
            return _mirrored(gpus)
        if len(cpus) > 1:
            return _mirrored(cpus)
        return tf.distribute.get_strategy()
    raise ValueError(f"--strategy={name!r}: unknown")


@dataclasses.dataclass(frozen=True)
class Task:
    """This process's place in the cluster (chief = the one that writes)."""

    task_type: str
    task_id: int
    is_chief: bool


def is_chief_from_env() -> bool:
    """Whether TF_CONFIG (if any) makes this process the chief; readable before
    any strategy exists (MultiWorkerMirroredStrategy must come first in TF)."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None
    task = config.get("task") or {}
    task_type, index = task.get("type", "worker"), int(task.get("index", 0))
    has_chief = "chief" in (config.get("cluster") or {})
    return task_type == "chief" or (task_type == "worker" and index == 0 and not has_chief)


def task_of(strategy: tf.distribute.Strategy) -> Task:
    """Chief is task "chief", or worker 0 when the cluster has no chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return Task("worker", 0, True)
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
    return Task(task_type, task_id, is_chief)


def describe(strategy: tf.distribute.Strategy) -> str:
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy has none to list
        devices = [d.name for d in tf.config.list_logical_devices()[:1]]
    name = type(strategy).__name__
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        name = "MultiWorkerMirroredStrategy"  # its class is CollectiveAllReduceStrategy
    return f"{name} with {strategy.num_replicas_in_sync} replica(s) {list(devices)}"


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Returns once every worker got here (an all-reduce of a constant).

    Used before exiting: a worker that exits while the chief still evaluates or
    exports makes the coordination service report it as crashed.
    """
    if strategy.extended._in_multi_worker_mode():  # noqa: SLF001 (no public equivalent)
        tf.function(lambda: strategy.reduce(
            tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None))()


def any_worker(strategy: tf.distribute.Strategy):
    """A function flag -> whether `flag` is True on ANY worker (the same answer on all).

    Under MultiWorkerMirroredStrategy each call is a collective (a SUM all-reduce
    of one 0/1 scalar per replica): every worker must call it at the same point, in the same
    order as its other collectives. With one worker it returns `flag` (no op).
    Make it once per run (one trace), call it as often as needed.
    """
    if not strategy.extended._in_multi_worker_mode():  # noqa: SLF001 (as in barrier)
        return bool

    @tf.function
    def count(value):
        per_replica = strategy.run(tf.identity, args=(value,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return lambda flag: bool(count(tf.constant(1.0 if flag else 0.0)).numpy() > 0)


def log_strategy(strategy: tf.distribute.Strategy) -> None:
    logging.info("Distribution: %s", describe(strategy))
