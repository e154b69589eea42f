"""Training-step throughput (examples/s) of trainer.train's step on this host.

    python bench/train_step.py [--virtual_cpu_devices=2] [--global_batch_size=12800]

Writes a synthetic MovieLens-shaped data_dir (3706 movies, like ML-1M) once under
--work_dir, then times steps of the real input pipeline + distributed train
step (after warm-up). Prints a one-row table; run once per device setting.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--virtual_cpu_devices", type=int, default=0)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--global_batch_size", type=int, default=12800)
    p.add_argument("--embedding_dim", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--work_dir", default="/tmp/seqrec-bench-train-step")
    a = p.parse_args()

    from trainer import distribute

    distribute.configure_virtual_cpus(a.virtual_cpu_devices)
    from tests.trainer import datadir  # test helper: contract-shaped synthetic data
    from trainer import data, train
    from trainer.config import TrainConfig

    data_dir = os.path.join(a.work_dir, "data")
    if not os.path.exists(os.path.join(data_dir, "_SUCCESS")):
        datadir.write_data_dir(data_dir, num_movies=3706, num_users=12000, timeline_length=12,
                               train_shards=4)
    cfg = TrainConfig(data_dir=data_dir, model_dir=os.path.join(a.work_dir, "model"),
                      global_batch_size=a.global_batch_size, embedding_dim=a.embedding_dim,
                      epochs=100, strategy=a.strategy)
    info = data.load_data_dir(data_dir)
    strategy = distribute.make_strategy(a.strategy)
    model, optimizer = train.build(info, cfg, strategy)
    ds = strategy.distribute_datasets_from_function(
        lambda ctx: data.make_train_dataset(info, cfg.global_batch_size, cfg.epochs, cfg.seed,
                                            cfg.shuffle_buffer, ctx))
    it = iter(ds)
    step = train.make_train_step(model, optimizer, strategy)
    for _ in range(a.warmup):
        float(step(next(it)))
    t = time.perf_counter()
    for _ in range(a.steps):
        float(step(next(it)))
    dt = (time.perf_counter() - t) / a.steps
    print("| strategy | replicas | global batch | dim | s/step | examples/s |")
    print(f"| {distribute.describe(strategy).split(' ')[0]} | {strategy.num_replicas_in_sync} | "
          f"{a.global_batch_size} | {a.embedding_dim} | {dt:.3f} | {a.global_batch_size / dt:,.0f} |")


if __name__ == "__main__":
    main()
