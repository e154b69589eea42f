"""Data and source preparation for bench/quality.py: stdlib only (no TensorFlow).

* snapshot: a frozen copy of the packages under test, named by a hash of their files;
* prepare_ml100k / prepare_synthetic: raw ratings through beam_jobs.pipeline (its
  defaults, or the reference generator's timelines) from that copy, cached in the work
  dir under a hash of beam_jobs;
* tutorial_input: a data_dir's train split as the tutorial's one uncompressed file.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

from beam_jobs import schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("beam_jobs", "trainer", "bench")
_SNAPSHOTS: dict[str, str] = {}  # work dir -> this process's snapshot


def _tree_hash(root: str, packages=PACKAGES) -> str:
    """SHA-256 (16 hex) of the packages' files under root, by relative path and bytes."""
    paths = []
    for pkg in packages:
        for d, dirs, files in os.walk(os.path.join(root, pkg)):
            # Bytecode is written when the code runs (in the snapshot too): never hashed.
            dirs[:] = [x for x in dirs if x != "__pycache__"]
            paths += [os.path.relpath(os.path.join(d, name), root) for name in files]
    digest = hashlib.sha256()
    for rel in sorted(paths):
        with open(os.path.join(root, rel), "rb") as f:
            digest.update(rel.encode() + b"\0" + hashlib.sha256(f.read()).digest())
    return digest.hexdigest()[:16]


def snapshot(work: str) -> str:
    """Copies the packages under test into work/src-<hash of their files>; rows run there.

    A benchmark runs for many minutes; if a source file changes meanwhile
    (another checkout step, an editor), autograph can no longer read the
    source of a function it is about to convert, falls back to running it
    unconverted, and a tf.function looping over a dataset then never ends.
    Running from a frozen copy also pins the code that the table measures; the
    hash in the name means a reused work_dir never runs yesterday's code. Made
    once per process and work dir: every row of one call runs the same copy.
    """
    if work in _SNAPSHOTS:
        return _SNAPSHOTS[work]
    src = os.path.join(work, f"src-{_tree_hash(ROOT)}")
    if not os.path.exists(src):
        tmp = tempfile.mkdtemp(prefix="src-tmp-", dir=work)
        for pkg in PACKAGES:
            shutil.copytree(os.path.join(ROOT, pkg), os.path.join(tmp, pkg),
                            ignore=shutil.ignore_patterns("__pycache__"))
        os.replace(tmp, src)
    _SNAPSHOTS[work] = src
    return src


def _train_shards(data_dir: str) -> list[str]:
    """The train split's shard paths in shard order (the manifest's, else a glob)."""
    with open(os.path.join(data_dir, schema.METADATA_FILE)) as f:
        manifest = json.load(f).get(schema.MANIFEST)
    if isinstance(manifest, dict) and schema.TRAIN in manifest:
        return [os.path.join(data_dir, schema.TRAIN, e["name"]) for e in manifest[schema.TRAIN]]
    return sorted(glob.glob(os.path.join(data_dir, schema.TRAIN, schema.SHARD_GLOB)))


def tutorial_input(data_dir: str, work: str) -> str:
    """data_dir's train split as ONE uncompressed TFRecord file (the tutorial's input),
    made once: work/tutorial-input/<hash of metadata.json>.tfrecord. TFRecord files
    concatenate; gzip shards are decompressed (every member). tutorial_run checks
    the record count against metadata.json."""
    with open(os.path.join(data_dir, schema.METADATA_FILE), "rb") as f:
        key = hashlib.sha256(f.read()).hexdigest()[:16]
    target = os.path.join(work, "tutorial-input", f"{key}.tfrecord")
    if not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}.tmp-{os.getpid()}"
        with open(tmp, "wb") as out:
            for shard in _train_shards(data_dir):
                with (gzip.open if shard.endswith(".gz") else open)(shard, "rb") as f:
                    shutil.copyfileobj(f, out, 8 << 20)
        os.replace(tmp, target)
    return target


def _module(src: str, module: str, *args: str) -> None:
    """A data-preparation step from the snapshot; its output is shown only on failure."""
    cmd = [sys.executable, "-m", module, *args]
    proc = subprocess.run(cmd, cwd=src, env=dict(os.environ, PYTHONPATH=src),
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
                         f"{(proc.stdout + proc.stderr)[-3000:]}")


# The job's flags for the timelines of the TFRS tutorial's reference generator (ratings
# below --min_rating dropped), on which the tutorial's rows train.
REFERENCE_FLAGS = ("--nolow_ratings_in_context",)


def _prepared(work: str, name: str, make_raw, reference: bool = False) -> str:
    """work/data-<beam_jobs hash>/<name>: raw ratings made by make_raw(src, raw_dir)
    (into a temporary directory, then renamed), then beam_jobs.pipeline with its
    defaults (reference: with REFERENCE_FLAGS, into <name>-reference). Reused while its
    _SUCCESS exists."""
    src = snapshot(work)
    base = os.path.join(work, f"data-{_tree_hash(src, ('beam_jobs',))}")
    raw = os.path.join(base, f"{name}-raw")
    data_dir = os.path.join(base, f"{name}-reference" if reference else name)
    if not os.path.exists(os.path.join(data_dir, schema.SUCCESS_FILE)):
        if not os.path.isdir(raw):
            os.makedirs(base, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=f"{name}-raw-tmp-", dir=base)
            make_raw(src, tmp)
            os.replace(tmp, raw)
        print(f"preparing {data_dir} ...", file=sys.stderr, flush=True)
        _module(src, "beam_jobs.pipeline", f"--input_dir={raw}", f"--output_dir={data_dir}",
                "--overwrite", *(REFERENCE_FLAGS if reference else ()))
    return data_dir


def prepare_ml100k(work: str, reference: bool = False) -> str:
    """Real MovieLens 100K through the Beam job (defaults, or REFERENCE_FLAGS); its
    data_dir."""
    return _prepared(work, "ml100k", lambda src, raw: _module(
        src, "bench.movielens100k", f"--output_dir={raw}"), reference)


def prepare_synthetic(work: str, name: str = "ml1m-synthetic", flags=(),
                      reference: bool = False) -> str:
    """beam_jobs.synthetic (defaults: the ML-1M shape; `flags` change it) through the
    Beam job (defaults, or REFERENCE_FLAGS); its data_dir."""
    return _prepared(work, name, lambda src, raw: _module(
        src, "beam_jobs.synthetic", f"--output_dir={raw}", *flags), reference)
