"""What the data_dir integrity checks cost (issue #13), on 1,000,209 synthetic ratings.

    python -m bench.integrity [--baseline_dir=DIR] [--repeats=3] [--work_dir=DIR]

Rows:

  job                     python -m beam_jobs.pipeline of this checkout (hashes every file
                          as written, reads every file back twice in finalize)
  job, baseline           the same job from --baseline_dir, a directory holding another
                          version's beam_jobs/ (e.g. `git archive <commit> beam_jobs | tar
                          -x -C DIR` for the commit before the manifest): runs interleaved
                          with the rows above, same input and flags
  finalize read-back      outputs.mismatches on the finished output, in this process: one
                          of finalize's two passes (list, then SHA-256 of every file)
  SHA-256 of the shards   hashlib over the shards' bytes already in memory: what
                          tfrecord.TFRecordWriter adds on its I/O thread as it writes

Job rows: median wall and CPU seconds (user + sys of the process) of --repeats runs, each a
subprocess (bench/prep.py's measure). In-process rows: median of --repeats.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from bench import prep


def _job_argv(code_dir: str | None, input_dir: str, output_dir: str) -> list[str]:
    if code_dir is None:
        return [sys.executable, "-m", "beam_jobs.pipeline", f"--input_dir={input_dir}",
                f"--output_dir={output_dir}"]
    # That checkout's beam_jobs, first on the path (this one is installed editable).
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "from beam_jobs import pipeline; sys.exit(pipeline.main())")
    return [sys.executable, "-c", code, os.path.abspath(code_dir), f"--input_dir={input_dir}",
            f"--output_dir={output_dir}"]


def _median_time(fn, repeats: int) -> float:
    walls = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
    return statistics.median(walls)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline_dir", default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work_dir", default=None,
                   help="Input and outputs go here (default: a fresh temp dir, removed after).")
    p.add_argument("--num_users", type=int, default=6040)
    p.add_argument("--num_movies", type=int, default=3883)
    p.add_argument("--ratings_per_user", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    keep = args.work_dir is not None
    args.work_dir = os.path.abspath(args.work_dir or tempfile.mkdtemp(prefix="seqrec-bench-"))
    os.makedirs(args.work_dir, exist_ok=True)
    input_dir = os.path.join(args.work_dir, "input")
    prep.generate_input(args, input_dir)

    from beam_jobs import outputs, schema

    jobs = {"job": None}
    if args.baseline_dir:
        jobs["job, baseline"] = args.baseline_dir
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in jobs}
    for rep in range(args.repeats):
        for name, code_dir in jobs.items():  # interleaved: load drifts hit both rows
            out = os.path.join(args.work_dir, "out", name.replace(", ", "_"))
            shutil.rmtree(out, ignore_errors=True)
            wall, _, cpu = prep.measure(_job_argv(code_dir, input_dir, out),
                                        os.path.join(args.work_dir, f"{rep}.log"))
            runs[name].append((wall, cpu))
            print(f"{name} run {rep + 1}/{args.repeats}: {wall:.2f} s wall, {cpu:.2f} s CPU",
                  flush=True)
    out = os.path.join(args.work_dir, "out", "job")
    with open(os.path.join(out, schema.METADATA_FILE)) as f:
        metadata = json.load(f)
    assert outputs.mismatches(out, metadata) == []
    shards = [open(os.path.join(out, path), "rb").read()
              for path in schema.listed_files(metadata)
              if path.split("/")[0] in schema.example_splits(metadata)]
    read_back = _median_time(lambda: outputs.mismatches(out, metadata), args.repeats)
    hashing = _median_time(lambda: [hashlib.sha256(s).digest() for s in shards], args.repeats)

    size = sum(len(s) for s in shards)
    print(f"\n{metadata['counts']['lines']:,} rating lines, {len(shards)} shards, "
          f"{size / 2**20:.1f} MB of shards; medians of {args.repeats}")
    head = f"{'what':<28} {'wall s':>8} {'CPU s':>7}"
    print(head)
    print("-" * len(head))
    for name, values in runs.items():
        print(f"{name:<28} {statistics.median(w for w, _ in values):>8.2f} "
              f"{statistics.median(c for _, c in values):>7.2f}")
    print(f"{'finalize read-back (1 of 2)':<28} {read_back:>8.3f} {'':>7}")
    print(f"{'SHA-256 of the shards':<28} {hashing:>8.3f} {'':>7}")
    if not keep:
        shutil.rmtree(args.work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
