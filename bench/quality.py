r"""Retrieval quality side by side: popularity, the TFRS tutorial's setup, our defaults.

    python -m beam_jobs.synthetic --output_dir=/tmp/q/raw
    python -m beam_jobs.pipeline --input_dir=/tmp/q/raw --output_dir=/tmp/q/last
    python -m beam_jobs.pipeline --input_dir=/tmp/q/raw --output_dir=/tmp/q/random --split=random
    python bench/quality.py --last_dir=/tmp/q/last --random_dir=/tmp/q/random \
        [--markdown=bench/README_quality.md]
    python bench/quality.py --ml100k      # real MovieLens 100K (bench/movielens100k.py)

Every row is one `python -m trainer.train` run in a fresh process (same
machine, one device, no evaluation between epochs, no export), evaluated on the
test split by full ranking over the whole vocabulary (trainer/evaluate.py).
"train s" is the time of the training steps only (from the trainer's per-epoch
examples/s log lines); "wall s" is the whole process (start-up, input
pipeline warm-up, final evaluation). `--row NAME=FLAGS` adds or replaces rows
(for trying configurations); `--only` runs just the named rows.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("top_1", "top_5", "top_10", "top_50", "top_100", "ndcg_10", "mrr")
EPOCH_LINE = re.compile(r"Epoch \d+ done: step (\d+), mean loss [\d.naif]+, (\d+) examples/s")

# name -> (split, flags). The tutorial row is its exact setup (trainer.config.TUTORIAL).
ROWS = {
    "tutorial": ("last", ["--preset=tutorial"]),
    "defaults": ("last", []),
    "tutorial, random split": ("random", ["--preset=tutorial"]),
}


def snapshot(work: str) -> str:
    """Copies the packages under test into work/src; rows run from there.

    A benchmark runs for many minutes; if a source file changes meanwhile
    (another checkout step, an editor), autograph can no longer read the
    source of a function it is about to convert, falls back to running it
    unconverted, and a tf.function looping over a dataset then never ends.
    Running from a frozen copy also pins the code that the table measures.
    """
    src = os.path.join(work, "src")
    if not os.path.exists(src):
        for pkg in ("beam_jobs", "trainer"):
            shutil.copytree(os.path.join(ROOT, pkg), os.path.join(src, pkg),
                            ignore=shutil.ignore_patterns("__pycache__"))
    return src


def run_row(data_dir: str, flags: list[str], work: str) -> dict:
    """Trains one configuration; returns its metrics.json plus timings."""
    model_dir = tempfile.mkdtemp(prefix="model-", dir=work)
    src = snapshot(work)
    cmd = [sys.executable, "-m", "trainer.train", f"--data_dir={data_dir}",
           f"--model_dir={model_dir}", "--noeval_every_epoch", "--noexport",
           "--checkpoint_every_steps=0", *flags]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=src)
    t = time.time()
    proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
    wall = time.time() - t
    with open(os.path.join(model_dir, "train.log"), "w") as f:
        f.write(proc.stderr)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    # Each epoch line gives its steps' throughput; train time = examples / rate.
    # The best epoch's rate is the figure least disturbed by other load on a
    # shared machine.
    train_s, last_step, best = 0.0, 0, 0
    for step, rate in EPOCH_LINE.findall(proc.stderr):
        train_s += (int(step) - last_step) * config["trainer"]["global_batch_size"] / int(rate)
        last_step, best = int(step), max(best, int(rate))
    return {"metrics": metrics, "train_s": train_s, "wall_s": wall, "best_rate": best,
            "config": config}


def prepare_ml100k(work: str) -> str:
    """Real MovieLens 100K through the Beam job (defaults: --split=last); its data_dir."""
    raw, data_dir = os.path.join(work, "ml100k"), os.path.join(work, "ml100k-data")
    if not os.path.exists(os.path.join(data_dir, "_SUCCESS")):
        subprocess.run([sys.executable, "-m", "bench.movielens100k", f"--output_dir={raw}"],
                       cwd=ROOT, check=True)
        subprocess.run([sys.executable, "-m", "beam_jobs.pipeline", f"--input_dir={raw}",
                        f"--output_dir={data_dir}", "--overwrite"], cwd=ROOT, check=True)
    return data_dir


def table(rows: list[tuple]) -> str:
    """rows: (name, split, flags, metrics, train s, wall s, best epoch examples/s)."""
    head = ["model", "split", "flags", *KEYS, "train s", "wall s", "best epoch ex/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, split, flags, m, train_s, wall_s, rate in rows:
        cells = [name, split, f"`{flags}`" if flags else "", *(f"{m[k]:.4f}" for k in KEYS),
                 f"{train_s:.0f}" if train_s is not None else "-",
                 f"{wall_s:.0f}" if wall_s is not None else "-",
                 f"{rate:,}" if rate else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--last_dir", help="data_dir made with --split=last")
    p.add_argument("--ml100k", action="store_true",
                   help="instead of --last_dir: real MovieLens 100K (recbole 1.2.1's copy, "
                   "fetched into a cache, never committed), converted and prepared by the Beam "
                   "job with its defaults in the work dir")
    p.add_argument("--random_dir", help="data_dir made with --split=random (optional row)")
    p.add_argument("--row", action="append", default=[],
                   help='extra row "NAME=FLAG FLAG ..." on the last split')
    p.add_argument("--only", action="append", default=[], help="run only these rows")
    p.add_argument("--markdown", help="also write the table to this file")
    p.add_argument("--work_dir", default=None)
    a = p.parse_args()

    rows = dict(ROWS)
    for spec in a.row:
        name, _, flags = spec.partition("=")
        rows[name] = ("last", flags.split())
    if a.only:
        rows = {k: v for k, v in rows.items() if k in a.only}
    if not a.random_dir:
        rows = {k: v for k, v in rows.items() if v[0] != "random"}
    work = a.work_dir or tempfile.mkdtemp(prefix="seqrec-quality-")
    if a.ml100k:
        a.last_dir = prepare_ml100k(work)
    elif not a.last_dir:
        p.error("give --last_dir or --ml100k")
    out, popularity = [], {}
    for name, (split, flags) in rows.items():
        data_dir = a.last_dir if split == "last" else a.random_dir
        r = run_row(data_dir, flags, work)
        popularity.setdefault(split, r["metrics"]["popularity"])
        out.append((name, split, " ".join(flags), r["metrics"]["test"], r["train_s"], r["wall_s"],
                    r["best_rate"]))
        print(f"{name}: top_10={r['metrics']['test']['top_10']:.4f} "
              f"train {r['train_s']:.0f}s wall {r['wall_s']:.0f}s", file=sys.stderr, flush=True)
    for split, m in reversed(popularity.items()):
        out.insert(0, ("popularity", split, "", m, None, None, None))
    text = table(out)
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
