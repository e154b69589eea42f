"""Data-prep benchmark: the Beam job vs a straightforward script vs a vectorised floor.

    python bench/prep.py [--work_dir=DIR --repeats=3 --num_users=6040 ...]

All implementations read the same synthetic MovieLens-1M-shaped input (1,000,209 ratings by
default, made by beam_jobs.synthetic) and write the same data contract with default flags
(min_rating 2, min_timeline_length 3, context 10, genres 10, split=last, gzip):

  beam         python -m beam_jobs.pipeline on the DirectRunner (the job as shipped)
  beam_mp2     the same with --direct_running_mode=multi_processing --direct_num_workers=2
  reference    bench/reference_prep.py: pandas + Python loops + tf.train.Example, in the
               style of the TF Lite example generator the TFRS tutorial uses
  floor        bench/floor_prep.py: whole-array numpy/pyarrow, one process

Each run is its own subprocess; wall time is measured around it, CPU time (user + sys, median)
from getrusage(RUSAGE_CHILDREN) (useful on a shared machine), and peak RSS is the largest
sum of resident memory over the process and all its descendants, polled every 50 ms from
/proc (so Beam's worker processes count). The table quotes the median wall time of
--repeats runs. Afterwards every implementation's output is parsed back and fingerprinted
(bench/compare.py): the examples must agree as multisets, split by split.

Goals (printed beside): Beam <= 0.5x the straightforward script, <= 2x the floor, RSS < 2 GB.
Speed goals live here, never in timed test asserts.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.sysconf("SC_PAGE_SIZE")

# The Beam rows write the reference's two splits (--novalidation) and timelines
# (--nolow_ratings_in_context): the reference and the floor have no validation split and
# drop the ratings below --min_rating, and the examples are compared split by split.
REFERENCE_LAYOUT = ["--novalidation", "--nolow_ratings_in_context"]
IMPLS = {
    "beam": ["-m", "beam_jobs.pipeline", "--overwrite", *REFERENCE_LAYOUT],
    "beam_mp2": ["-m", "beam_jobs.pipeline", "--overwrite", *REFERENCE_LAYOUT,
                 "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    "reference": ["-m", "bench.reference_prep"],
    "floor": ["-m", "bench.floor_prep"],
}
GOALS = "Beam <= 0.5x reference, <= 2x floor, peak RSS < 2048 MB"


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(name))
    return kids


def _tree_rss(pid: int) -> int:
    """Resident bytes of pid and all its descendants."""
    kids, total, todo = _children(), 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
        todo.extend(kids.get(p, []))
    return total


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def measure(argv: list[str], log_path: str) -> tuple[float, int, float]:
    """Runs argv; returns (wall s, peak tree RSS bytes, CPU s of it and the descendants it
    waited for). Raises on failure."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    peak = [0]
    cpu = _children_cpu()
    with open(log_path, "w") as log:
        t = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        done = threading.Event()

        def poll():
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss(proc.pid))
                done.wait(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        rc = proc.wait()
        wall = time.perf_counter() - t
        done.set()
        poller.join()
    cpu = _children_cpu() - cpu
    if rc != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{' '.join(argv)} exited with {rc}; log {log_path}:\n{tail}")
    return wall, peak[0], cpu


def generate_input(args, input_dir: str) -> None:
    """Makes the synthetic input once per work_dir and flags (a stamp records the command)."""
    cmd = ["-m", "beam_jobs.synthetic", f"--output_dir={input_dir}",
           f"--num_users={args.num_users}", f"--num_movies={args.num_movies}",
           f"--seed={args.seed}"]
    if args.ratings_per_user:
        cmd.append(f"--ratings_per_user={args.ratings_per_user}")
    stamp = os.path.join(input_dir, ".command")
    if os.path.exists(stamp) and open(stamp).read() == " ".join(cmd):
        return
    shutil.rmtree(input_dir, ignore_errors=True)
    wall, rss, _ = measure([sys.executable, *cmd], os.path.join(args.work_dir, "synthetic.log"))
    print(f"generated input in {wall:.1f} s (peak RSS {rss / 2**20:.0f} MB): {input_dir}")
    with open(stamp, "w") as f:
        f.write(" ".join(cmd))


def fingerprints(dirs: dict[str, str], work_dir: str) -> dict[str, dict]:
    log = os.path.join(work_dir, "compare.log")
    measure([sys.executable, "-m", "bench.compare", *dirs.values()], log)
    by_dir = {}
    with open(log) as f:
        for line in f:
            if line.startswith("{"):
                d = json.loads(line)
                by_dir[d.pop("data_dir")] = d
    return {name: by_dir[d] for name, d in dirs.items()}


def _same_file(a: str, b: str) -> bool:
    if not os.path.exists(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def table(results: dict, prints: dict) -> str:
    def ratio(name, base):
        if base not in results:
            return "-"
        return f"{results[name]['median'] / results[base]['median']:.2f}x"

    head = (f"{'impl':<10} {'wall s (median)':>16} {'min..max':>14} {'CPU s':>7} {'peak RSS MB':>12} "
            f"{'examples':>10} {'vs reference':>13} {'vs floor':>9}")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        ex = prints[name]["train"]["examples"] + prints[name]["test"]["examples"]
        lines.append(f"{name:<10} {r['median']:>16.2f} {min(r['walls']):>6.2f}..{max(r['walls']):<6.2f} "
                     f"{r['cpu']:>7.2f} {max(r['rss']) / 2**20:>12.0f} {ex:>10} {ratio(name, 'reference'):>13} "
                     f"{ratio(name, 'floor'):>9}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work_dir", default=None,
                   help="Input and outputs go here (default: a fresh temp dir, removed after).")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--impls", default=",".join(IMPLS), help=f"Comma list of {list(IMPLS)}.")
    p.add_argument("--num_users", type=int, default=6040)
    p.add_argument("--num_movies", type=int, default=3883)
    p.add_argument("--ratings_per_user", type=float, default=None,
                   help="Default: the generator's (1,000,209 ratings for 6,040 users).")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    keep = args.work_dir is not None
    args.work_dir = os.path.abspath(args.work_dir or tempfile.mkdtemp(prefix="seqrec-bench-"))
    os.makedirs(args.work_dir, exist_ok=True)
    input_dir = os.path.join(args.work_dir, "input")
    generate_input(args, input_dir)

    impls = [i for i in args.impls.split(",") if i]
    if not os.path.exists(os.path.join(ROOT, "beam_jobs", "pipeline.py")):
        print("beam_jobs/pipeline.py not found: skipping the Beam rows")
        impls = [i for i in impls if not i.startswith("beam")]
    results, dirs = {}, {}
    for name in impls:
        out = os.path.join(args.work_dir, "out", name)
        dirs[name] = out
        walls, rss, cpus = [], [], []
        for rep in range(args.repeats):
            shutil.rmtree(out, ignore_errors=True)
            argv = [sys.executable, *IMPLS[name], f"--input_dir={input_dir}", f"--output_dir={out}"]
            wall, peak, cpu = measure(argv, os.path.join(args.work_dir, f"{name}.{rep}.log"))
            walls.append(wall)
            cpus.append(cpu)
            rss.append(peak)
            print(f"{name} run {rep + 1}/{args.repeats}: {wall:.2f} s wall, {cpu:.2f} s CPU, "
                  f"peak RSS {peak / 2**20:.0f} MB", flush=True)
        results[name] = {"walls": walls, "rss": rss, "median": statistics.median(walls),
                         "cpu": statistics.median(cpus)}

    prints = fingerprints(dirs, args.work_dir)
    print()
    print(table(results, prints))
    print(f"goals: {GOALS}")
    for name in results:
        if not name.startswith("beam"):
            continue
        r = results[name]
        checks = [f"rss {max(r['rss']) / 2**20:.0f} MB {'<' if max(r['rss']) < 2**31 else '>='} 2048"]
        for base, goal in (("reference", 0.5), ("floor", 2.0)):
            if base in results:
                x = r["median"] / results[base]["median"]
                checks.append(f"{x:.2f}x {base} {'met' if x <= goal else 'MISSED'} (<= {goal}x)")
        print(f"  {name}: " + "; ".join(checks))
    keys = {n: (f["train"], f["test"]) for n, f in prints.items()}
    agree = len(set(json.dumps(k, sort_keys=True) for k in keys.values())) == 1
    vocab_agree = len({f["vocab_sha256"] for f in prints.values()}) == 1
    print(f"examples agree (sorted parsed rows, per split): {'yes' if agree else 'NO'}; "
          f"vocab.tsv identical: {'yes' if vocab_agree else 'NO'}")
    for name, f in prints.items():
        print(f"  {name}: train {f['train']['examples']} {f['train']['sha256'][:12]}  "
              f"test {f['test']['examples']} {f['test']['sha256'][:12]}")
    if "beam" in dirs and "floor" in dirs:
        # Not part of the contract (shard order and gzip level are the job's choice), but
        # when it holds it is the strongest agreement there is.
        same = all(_same_file(os.path.join(dirs["beam"], split, f), os.path.join(dirs["floor"], split, f))
                   for split in ("train", "test") for f in os.listdir(os.path.join(dirs["beam"], split)))
        print(f"floor shards byte-identical to the Beam job's: {'yes' if same else 'no'}")
    if not keep:
        shutil.rmtree(args.work_dir, ignore_errors=True)
    return 0 if agree and vocab_agree else 1


if __name__ == "__main__":
    sys.exit(main())
