"""Two Beam jobs writing the same output_dirs at the same time, try after try: the
concurrency stress tests' driver (tests/beam_jobs/integrity_test.py, and
tests/gcs/concurrent_jobs_gcs_test.py against the GCS emulator).

Each job runs in its own worker process (this module's main), which imports Beam once and
then runs beam_jobs.pipeline.main for every try, in lockstep with the other worker: try i
starts when the driver creates CONTROL/go-<i> (after a per-try delay, so the two jobs meet
at different stages), writes into OUTPUT_ROOT/<i>, and ends with CONTROL/done-<i>-<name>
holding the exit status (3: an exception main did not turn into one).

    python -m tests.beam_jobs.concurrent_jobs --name=a --input_dir=DIR --control=DIR
        --output_root=URI --tries=N --delays=0,0.2,... [job flags]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def worker(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    for flag in ("--name", "--input_dir", "--control", "--output_root", "--delays"):
        p.add_argument(flag, required=True)
    p.add_argument("--tries", type=int, required=True)
    args, job_flags = p.parse_known_args(argv)
    from beam_jobs import pipeline, schema

    delays = [float(d) for d in args.delays.split(",")]
    for i in range(args.tries):
        while not os.path.exists(os.path.join(args.control, f"go-{i}")):
            time.sleep(0.005)
        time.sleep(delays[i % len(delays)])
        try:
            rc = pipeline.main([f"--input_dir={args.input_dir}",
                                f"--output_dir={schema.join(args.output_root, str(i))}",
                                *job_flags])
        except Exception:
            traceback.print_exc()
            rc = 3
        done = os.path.join(args.control, f"done-{i}-{args.name}")
        with open(done + ".tmp", "w") as f:
            f.write(str(rc))
        os.replace(done + ".tmp", done)
    return 0


def run(inputs: dict[str, str], output_root: str, control: str, tries: int,
        delays: dict[str, list[float]], job_flags: list[str], env: dict[str, str] | None = None,
        timeout_s: float = 120) -> Iterator[tuple[int, dict[str, int]]]:
    """Starts one worker per name of `inputs` and releases them try by try; yields
    (try, {name: exit status}) once every job of that try has ended. The workers' output
    goes to CONTROL/<name>.log."""
    os.makedirs(control, exist_ok=True)
    procs = {}
    for name, input_dir in inputs.items():
        log = open(os.path.join(control, f"{name}.log"), "w")  # closed in the finally below
        procs[name] = (subprocess.Popen(
            [sys.executable, "-m", "tests.beam_jobs.concurrent_jobs", f"--name={name}",
             f"--input_dir={input_dir}", f"--control={control}",
             f"--output_root={output_root}", f"--tries={tries}",
             "--delays=" + ",".join(map(str, delays[name])), *job_flags],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    try:
        for i in range(tries):
            open(os.path.join(control, f"go-{i}"), "w").close()
            deadline = time.monotonic() + timeout_s
            status = {}
            while len(status) < len(procs):
                for name, (proc, _) in procs.items():
                    done = os.path.join(control, f"done-{i}-{name}")
                    if name not in status and os.path.exists(done):
                        with open(done) as f:
                            status[name] = int(f.read())
                    elif name not in status and proc.poll() is not None:
                        raise RuntimeError(f"worker {name} exited ({proc.returncode}) in try "
                                           f"{i}; see {control}/{name}.log")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"try {i} did not end in {timeout_s} s; see {control}")
                time.sleep(0.01)
            yield i, status
    finally:
        for proc, log in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            log.close()


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))
