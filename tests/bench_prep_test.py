"""Keeps bench/prep.py honest: its implementations must write the same examples.

The straightforward reference script, the vectorised floor and (when present) the Beam job
run on a tiny synthetic input; their outputs are parsed back with tf.io.parse_example and
compared as sorted rows, split by split, plus vocab.tsv byte for byte.
"""
import os
import subprocess
import sys

import pytest

from bench import compare, floor_prep, prep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_PIPELINE = os.path.exists(os.path.join(ROOT, "beam_jobs", "pipeline.py"))

CASES = {
    # Default contract flags on ML-1M .dat input.
    "dat_defaults": (["--num_users=40", "--num_movies=60", "--ratings_per_user=30"], [],
                     (10, 10)),
    # ML-20M .csv input (half stars, quoted titles) with flags that make padding, genre
    # truncation, the rating filter and the short-timeline drop all matter.
    "csv_flags": (["--num_users=40", "--num_movies=60", "--ratings_per_user=26", "--format=csv"],
                  ["--min_rating=3.5", "--min_timeline_length=12", "--max_context_length=4",
                   "--max_context_movie_genre_length=7"], (4, 7)),
}


def _run(module, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_implementations_write_the_same_examples(case, tmp_path):
    gen_flags, job_flags, lengths = CASES[case]
    data = str(tmp_path / "input")
    _run("beam_jobs.synthetic", f"--output_dir={data}", "--seed=5", *gen_flags)
    outs = {"reference": str(tmp_path / "reference"), "floor": str(tmp_path / "floor")}
    _run("bench.reference_prep", f"--input_dir={data}", f"--output_dir={outs['reference']}",
         *job_flags)
    floor_prep.main([f"--input_dir={data}", f"--output_dir={outs['floor']}", *job_flags])
    if HAS_PIPELINE:
        outs["beam"] = str(tmp_path / "beam")
        # The reference writes two splits (train, test), no validation, and drops the
        # ratings below --min_rating from the timelines.
        _run("beam_jobs.pipeline", f"--input_dir={data}", f"--output_dir={outs['beam']}",
             *prep.REFERENCE_LAYOUT, *job_flags)

    rows = {name: {s: compare.canonical_rows(d, s, *lengths) for s in ("train", "test")}
            for name, d in outs.items()}
    expected = rows["reference"]
    assert len(expected["test"]) > 0 and len(expected["train"]) > len(expected["test"])
    if case == "csv_flags":
        # The flags really bite: some users fell under min_timeline_length (40 users made).
        assert len(expected["test"]) < 40
    for name, r in rows.items():
        for split in ("train", "test"):
            assert len(r[split]) == len(expected[split]), (name, split)
            assert r[split] == expected[split], (name, split)
        with open(os.path.join(outs[name], "vocab.tsv"), "rb") as a, \
                open(os.path.join(outs["reference"], "vocab.tsv"), "rb") as b:
            assert a.read() == b.read(), name
