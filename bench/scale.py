"""How the Beam job and training grow with the data: 1M, 5M and 25M synthetic ratings.

    python -m bench.scale [--work_dir=/tmp/seqrec-scale] [--scales=1m,5m,25m] [--steps=100]

For each scale: generate MovieLens-format input (beam_jobs.synthetic; not timed
in the table), run the Beam job (DirectRunner, defaults: GZIP shards), then
train in a fresh process with trainer.train's input pipeline and step
(default strategy, batch 12800, dim 32). Each run is a subprocess; wall s and
peak RSS (largest polled sum over the process tree) come from bench.prep.measure.

Training at 1M runs one full epoch. At 5M/25M a full epoch would take 5-30 min
on 2 shared cores, so it runs --steps steps and the per-epoch time is
EXTRAPOLATED: (wall - start-up) / steps * steps_per_epoch + start-up, where
start-up (imports, model build, first traced step) is measured in the same run.
Peak RSS is measured, not extrapolated: the pipeline streams shards through a
fixed shuffle buffer, so memory should not grow with the data set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# name -> synthetic.py flags (5M: ML-1M's ratings per user; 25M: ML-25M's users and movies).
SCALES = {
    "1m": [],
    "5m": ["--num_users=30200", "--num_movies=10000", "--format=csv"],
    "25m": ["--num_users=162000", "--num_movies=62000", "--format=csv"],
}


def train_steps(data_dir: str, steps: int, batch: int, dim: int, out: str) -> None:
    """Child process: `steps` steps (0: one epoch) of trainer.train's step; writes JSON to out."""
    t_start = time.perf_counter()
    from trainer import data, distribute, task
    from trainer.config import TrainConfig

    info = data.load_data_dir(data_dir)
    per_epoch = data.steps_per_epoch(info, batch)
    steps = steps or per_epoch
    cfg = TrainConfig(data_dir=data_dir, model_dir="-", global_batch_size=batch,
                      embedding_dim=dim, epochs=1, strategy="default")
    strategy = distribute.make_strategy("default")
    retrieval = task.RetrievalTask(info, cfg)
    model, optimizer = retrieval.build_model(strategy)
    it = iter(retrieval.build_inputs(strategy))
    step = retrieval.train_step(model, optimizer, strategy)
    float(step(next(it)))  # trace + first step: part of start-up
    startup = time.perf_counter() - t_start
    t = time.perf_counter()
    for _ in range(steps - 1):
        float(step(next(it)))
    loop = time.perf_counter() - t
    per_step = loop / max(steps - 1, 1)
    with open(out, "w") as f:
        json.dump({"steps": steps, "steps_per_epoch": per_epoch, "startup_s": startup,
                   "per_step_s": per_step, "train_examples": info.num_examples["train"],
                   "vocab": len(info.movie_ids),
                   "epoch_s": startup + per_step * (per_epoch - 1)}, f)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work_dir", default="/tmp/seqrec-scale")
    p.add_argument("--scales", default="1m,5m,25m")
    p.add_argument("--stages", default="beam,train",
                   help="train alone reuses the data_dirs of an earlier beam stage")
    p.add_argument("--steps", type=int, default=100, help="training steps at 5M/25M")
    p.add_argument("--batch", type=int, default=12800)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--train_child", nargs=2, metavar=("DATA_DIR", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--child_steps", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.train_child:
        train_steps(a.train_child[0], a.child_steps, a.batch, a.dim, a.train_child[1])
        return 0

    from bench.prep import measure

    py = sys.executable
    rows = []
    for name in a.scales.split(","):
        in_dir = os.path.join(a.work_dir, f"in_{name}")
        data_dir = os.path.join(a.work_dir, f"data_{name}")
        if not os.path.exists(in_dir):
            measure([py, "-m", "beam_jobs.synthetic", f"--output_dir={in_dir}", *SCALES[name]],
                    os.path.join(a.work_dir, f"gen_{name}.log"))
        if "beam" in a.stages:
            wall, rss, cpu = measure(
                [py, "-m", "beam_jobs.pipeline", f"--input_dir={in_dir}",
                 f"--output_dir={data_dir}", "--overwrite"],
                os.path.join(a.work_dir, f"beam_{name}.log"))
            with open(os.path.join(data_dir, "metadata.json")) as f:
                counts = json.load(f)["counts"]
            rows.append((name, "beam job", wall, rss, cpu, counts["kept_ratings"],
                         counts["train_examples"] + counts.get("validation_examples", 0)
                         + counts["test_examples"], "measured"))
            print(rows[-1], flush=True)
        if "train" not in a.stages:
            continue
        out = os.path.join(a.work_dir, f"train_{name}.json")
        steps = 0 if name == "1m" else a.steps
        wall, rss, cpu = measure(
            [py, "-m", "bench.scale", "--train_child", data_dir, out, f"--child_steps={steps}",
             f"--batch={a.batch}", f"--dim={a.dim}"], os.path.join(a.work_dir, f"train_{name}.log"))
        with open(out) as f:
            t = json.load(f)
        label = ("measured" if t["steps"] == t["steps_per_epoch"] else
                 f"EXTRAPOLATED from {t['steps']} of {t['steps_per_epoch']} steps")
        rows.append((name, f"train 1 epoch (vocab {t['vocab']})", t["epoch_s"], rss, cpu,
                     t["train_examples"], t["steps_per_epoch"] * a.batch,
                     f"{label}; {t['per_step_s']:.2f} s/step, {a.batch / t['per_step_s']:,.0f} ex/s,"
                     f" start-up {t['startup_s']:.0f} s"))
        print(rows[-1], flush=True)

    print(f"\nbatch {a.batch}, dim {a.dim}, default strategy, {os.cpu_count()} CPUs, "
          f"load avg {os.getloadavg()[0]:.1f}")
    print("| scale | stage | wall s | peak RSS MB | CPU s | input | examples | note |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name, stage, wall, rss, cpu, inp, ex, note in rows:
        print(f"| {name} | {stage} | {wall:.1f} | {rss / 2**20:.0f} | {cpu:.1f} | {inp:,} | {ex:,} "
              f"| {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
