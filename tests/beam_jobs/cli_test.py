"""The job's command lines as a user meets them: beam_jobs.pipeline and beam_jobs.synthetic
run as `python -m ...` in a plain environment and through console-script wrappers, plus
in-process main() calls for the many refusal cases (same code, no process start).

What is checked: nothing typed is silently ignored (unknown, misspelled or abbreviated
flags, job or Beam); bad values and bad paths fail in one line, exit 2, before any
pipeline; a default run logs a short, useful stderr, -v brings Beam's lines back, and the
logging changes no output byte.
"""
import logging
import os
import re
import subprocess
import sys

import pytest

from beam_jobs import pipeline, schema, synthetic
from tests.beam_jobs import util

PY = "python"  # found on the plain environment's PATH: the venv's interpreter


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _main(capsys, *argv):
    rc = pipeline.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------ unknown flags


def test_misspelled_flag_stops_the_command(tmp_path):
    # Before: Beam warned "Discarding unparseable args" and ran with --min_rating=2, exit 0.
    out = tmp_path / "out"
    r = util.run_command([PY, "-m", "beam_jobs.pipeline", "--input_dir=data/sample",
                          f"--output_dir={out}", "--min_ratng=4"], home=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    line = _one_error_line(r.stderr)
    assert "--min_ratng" in line and "did you mean --min_rating?" in line
    assert "python -m beam_jobs.pipeline --help" in line
    assert not out.exists()


@pytest.mark.parametrize("argv,named,closest", [
    (["--num_shard=2"], "--num_shard", "--num_shards"),  # an abbreviation of a job flag
    (["--run=DirectRunner"], "--run", "--runner"),  # ... of a Beam option
    (["--direct_num_worker=2"], "--direct_num_worker", "--direct_num_workers"),
    (["--min_ratng", "4"], "--min_ratng", "--min_rating"),  # value as the next argument
    (["--no_such_thing"], "--no_such_thing", None),
])
def test_unknown_flags_are_refused_with_the_closest_flag(tmp_path, capsys, argv, named,
                                                         closest):
    rc, out, err = _main(capsys, f"--input_dir={util.SAMPLE}",
                         f"--output_dir={tmp_path / 'out'}", *argv)
    line = _one_error_line(err)
    assert rc == 2 and out == "" and f"unknown flag {named}" in line
    if closest:
        assert f"did you mean {closest}?" in line
    assert not (tmp_path / "out").exists()


def test_a_stray_argument_is_refused(tmp_path, capsys):
    rc, _, err = _main(capsys, "--input_dir", util.SAMPLE, "--output_dir", tmp_path / "o",
                       "data/sample")
    assert rc == 2 and "unexpected argument 'data/sample'" in _one_error_line(err)


def test_beam_options_pass_through_in_order():
    from beam_jobs import options

    beam = ["--runner=DataflowRunner", "--project", "my-proj", "--no_use_public_ips",
            "--direct_num_workers=2", "--temp_location=gs://b/tmp", "--setup_file=./setup.py",
            "--experiments=a", "--experiments=b"]
    cmd = options.parse_command_line(["--input_dir=in", "--output_dir=out", "-v", *beam,
                                      "--read_chunk_bytes=0"])
    assert cmd.beam_args == beam and cmd.verbosity == 1
    assert (cmd.config.input_dir, cmd.config.read_chunk_bytes) == ("in", 0)
    assert options.parse_args(["--input_dir=in", "--output_dir=out"])[1] == []


# ------------------------------------------------------------ bad values


def test_bad_value_is_one_line_before_any_pipeline(tmp_path):
    r = util.run_command([PY, "-m", "beam_jobs.pipeline", "--input_dir=data/sample",
                          f"--output_dir={tmp_path / 'out'}", "--num_shards=0"], home=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (
        2, "", "error: --num_shards: must be >= 1, got 0\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv,expected", [
    (["--num_shards=x"], "error: --num_shards: expected an integer, got 'x'"),
    (["--split=lsat"], "error: --split: invalid choice: 'lsat' (choose from 'last', 'random')"),
    (["--train_fraction=2"], "error: --train_fraction: must be in [0, 1], got 2.0"),
    (["--overwrite=maybe"], "error: --overwrite: expected true/false, got 'maybe'"),
    (["--verbosity=5"], "error: -v/--verbosity: invalid choice: 5 (choose from 0, 1, 2)"),
    (["--direct_num_workers=two"], "error: --direct_num_workers: invalid int value: 'two'"),
])
def test_bad_values_name_the_flag(tmp_path, capsys, argv, expected):
    rc, _, err = _main(capsys, f"--input_dir={util.SAMPLE}",
                       f"--output_dir={tmp_path / 'out'}", *argv)
    assert rc == 2 and _one_error_line(err) == expected


def test_missing_required_flags(tmp_path, capsys):
    rc, _, err = _main(capsys, f"--input_dir={util.SAMPLE}")
    assert rc == 2 and _one_error_line(err) == (
        "error: the following arguments are required: --output_dir")
    rc, _, err = _main(capsys, f"--output_dir={tmp_path}")
    assert rc == 2 and "--input_dir is required" in _one_error_line(err)


def test_help_still_works(capsys):
    rc, out, err = _main(capsys, "--help")
    assert rc == 0 and err == ""
    assert out.startswith("usage: python -m beam_jobs.pipeline")
    assert "--num_shards" in out and "--verbosity" in out


# ------------------------------------------------------------ bad paths


def _file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x\n")
    return path


def _dir_named(tmp_path, name):
    d = tmp_path / "in"
    util.write_input(d, util.GOLDEN_RATINGS, util.GOLDEN_MOVIES)
    os.remove(d / name)
    (d / name).mkdir()
    return d, d / name


@pytest.mark.parametrize("case", ["output_file", "output_under_file", "input_file",
                                  "ratings_dir", "movies_dir"])
def test_bad_paths_fail_in_one_line(tmp_path, capsys, case, golden_input):
    good = golden_input
    out = tmp_path / "out"
    if case == "output_file":
        out = named = _file(tmp_path)
        expected = "is a file, not a directory"
    elif case == "output_under_file":
        out = named = _file(tmp_path) / "out"
        expected = "cannot write there: Not a directory"
    elif case == "input_file":
        good = named = _file(tmp_path)
        expected = "is a file, not a directory"
    else:
        good, named = _dir_named(tmp_path, f"{case.split('_')[0]}.dat")
        expected = "is a directory, not a file"
    rc, _, err = _main(capsys, f"--input_dir={good}", f"--output_dir={out}")
    line = _one_error_line(err)
    assert rc == 2 and str(named) in line and expected in line, line
    if case.startswith("output"):
        assert "--output_dir" in line
    elif case == "input_file":
        assert "--input_dir" in line
    assert not os.path.exists(os.path.join(out, schema.TRAIN))


@pytest.mark.parametrize("fmt", ["dat", "csv"])
def test_blank_ratings_file_is_empty_input(tmp_path, capsys, fmt):
    # Over 4 KB of blank lines (and the csv header): before, the job ran and failed late
    # on the bad-line fraction (exit 1).
    header = ["userId,movieId,rating,timestamp"] if fmt == "csv" else []
    movies = (["movieId,title,genres", "1,A (1995),Drama"] if fmt == "csv"
              else util.GOLDEN_MOVIES)
    d = util.write_input(tmp_path / "in", header + [" ", "", "\t"] * 2000, movies, fmt=fmt,
                         encoding="utf-8")
    assert os.path.getsize(os.path.join(d, f"ratings.{fmt}")) > 4096
    rc, _, err = _main(capsys, f"--input_dir={d}", f"--output_dir={tmp_path / 'out'}")
    line = _one_error_line(err)
    assert rc == 2 and "empty input" in line and os.path.join(d, f"ratings.{fmt}") in line
    assert not (tmp_path / "out").exists()


def _read_only_dir(tmp_path):
    """(command prefix, directory) where the command cannot write under the directory.

    chmod 555 for an ordinary user. Root ignores permissions, so as root the command runs
    in its own mount namespace with a read-only tmpfs over the directory (unshare), or the
    test is skipped where that is not allowed."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        return [], ro
    prefix = ["unshare", "--mount", "sh", "-c",
              'mount -t tmpfs -o ro tmpfs "$1" && shift && exec "$@"', "sh", str(ro)]
    try:
        probe = subprocess.run(prefix + ["sh", "-c", f"! touch {ro}/probe 2>/dev/null"],
                               capture_output=True, timeout=30)
    except FileNotFoundError:
        probe = None
    if probe is None or probe.returncode != 0:
        pytest.skip("running as root, where chmod does not stop writes, and a read-only "
                    "mount (unshare --mount) is not allowed here")
    return prefix, ro


def test_output_dir_under_read_only_dir(tmp_path):
    prefix, ro = _read_only_dir(tmp_path)
    out = ro / "out"
    try:
        r = util.run_command(prefix + [PY, "-m", "beam_jobs.pipeline", "--input_dir=data/sample",
                                       f"--output_dir={out}"], home=tmp_path)
    finally:
        ro.chmod(0o755)
    line = _one_error_line(r.stderr)
    assert r.returncode == 2, r.stderr
    assert line.startswith(f"error: --output_dir {out}: cannot write there: ")
    assert "Read-only file system" in line or "Permission denied" in line


# ------------------------------------------------------------ logs


_LOG_LINE = re.compile(r"\d\d:\d\d:\d\d (INFO|WARNING|ERROR) ")


def test_default_run_logs_a_short_useful_stderr(tmp_path, monkeypatch):
    out = tmp_path / "cli"
    r = util.run_command([PY, "-m", "beam_jobs.pipeline", "--input_dir=data/sample",
                          f"--output_dir={out}"], home=tmp_path)
    assert r.returncode == 0 and r.stdout == "", r.stderr
    lines = r.stderr.splitlines()
    # Before: 1 line (the summary), silent until the end. Now 15: input, output, runner,
    # movies, ratings totals, 8 shards, finished, summary.
    assert 10 <= len(lines) <= 20, r.stderr
    assert all(_LOG_LINE.match(line) for line in lines[:-1]), r.stderr
    assert lines[-1].startswith(
        f"{out}: 30352 train / 300 validation / 300 test examples from 300 users")
    for noise in ("Traceback", "Warning", "WARNING", "ERROR", "apache_beam", "Prism",
                  "Discarding"):
        assert noise not in r.stderr, noise
    text = r.stderr
    assert re.search(r"reading data/sample/ratings\.dat \(724\.8 KB\) and "
                     r"data/sample/movies\.dat \(15\.3 KB\)", text)
    assert f"writing {out}: 8 shards per split (gzip)" in text
    assert "running on DirectRunner" in text
    assert "read data/sample/ratings.dat: 33000 lines: 31233 ratings kept" in text
    assert [n for n in range(1, 9) if f"built shard {n}/8: " in text] == list(range(1, 9))
    # The same flags through pipeline.run (no logging set up) write the same bytes.
    monkeypatch.chdir(util.ROOT)
    pipeline.run(["--input_dir=data/sample", f"--output_dir={tmp_path / 'run'}"])
    assert util.output_files(out) == util.output_files(tmp_path / "run")


def test_verbosity_brings_back_beam_lines_and_logging_is_restored(tmp_path, capsys,
                                                                   golden_input):
    d = golden_input
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    rc, _, quiet = _main(capsys, f"--input_dir={d}", f"--output_dir={tmp_path / 'a'}")
    assert rc == 0 and "built shard 8/8" in quiet and "apache_beam" not in quiet
    assert (root.level, root.handlers) == before
    rc, _, verbose = _main(capsys, f"--input_dir={d}", f"--output_dir={tmp_path / 'b'}", "-v")
    assert rc == 0 and "built shard 8/8" in verbose
    assert "INFO apache_beam.runners." in verbose and len(verbose.splitlines()) > len(
        quiet.splitlines())
    assert (root.level, root.handlers) == before


@pytest.mark.slow
def test_worker_processes_report_plain_lines(tmp_path):
    """multi_processing: the workers' progress lines come back as plain lines, not Beam's
    proto dumps of them, and a failure of ours ends with its one error line. (A worker
    process also prints the failure's traceback to its own stderr, outside logging.)"""
    from tests.beam_jobs import pipeline_test

    d = util.write_input(tmp_path / "in", pipeline_test.BAD_RATINGS, util.GOLDEN_MOVIES)
    r = util.run_command([PY, "-m", "beam_jobs.pipeline", f"--input_dir={d}",
                          f"--output_dir={tmp_path / 'out'}", "--num_shards=2",
                          "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
                         home=tmp_path, timeout=180)
    assert r.returncode == 1, r.stderr
    assert re.search(r"^\S+ INFO built shard 2/2: \d+ users", r.stderr, re.M), r.stderr
    assert re.search(r"^\S+ INFO read \S+/ratings.dat: 11 lines: ", r.stderr, re.M), r.stderr
    assert "Worker:" not in r.stderr and " ERROR " not in r.stderr
    assert r.stderr.splitlines()[-1].startswith(
        f"error: {d}/ratings.dat: 5 of 11 rating lines are malformed")


# ------------------------------------------------------------ console scripts

# What pip writes for a console_scripts entry point `NAME = MODULE:FUNC`.
_WRAPPER = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from {module} import {func}
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit({func}())
"""


def _console_script(tmp_path, name):
    """NAME's wrapper as pip writes it from setup.py's entry point."""
    with open(os.path.join(util.ROOT, "setup.py")) as f:
        module, func = re.search(rf'"{name} = ([\w.]+):(\w+)"', f.read()).groups()
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(_WRAPPER.format(python=sys.executable, module=module, func=func))
    path.chmod(0o755)
    return path


def test_console_scripts_read_argv_and_return_the_exit_status(tmp_path):
    prep = _console_script(tmp_path, "seqrec-prep")
    gen = _console_script(tmp_path, "seqrec-synthetic")
    r = util.run_command([prep, "--help"], home=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("usage: seqrec-prep "), r.stderr
    r = util.run_command([prep, "--input_dir=data/sample", f"--output_dir={tmp_path / 'o'}",
                          "--num_shards=0"], home=tmp_path)
    assert (r.returncode, r.stderr) == (2, "error: --num_shards: must be >= 1, got 0\n")
    r = util.run_command([gen, "--output_dir", tmp_path / "g", "--num_user=3"], home=tmp_path)
    assert r.returncode == 2 and _one_error_line(r.stderr) == (
        "error: unknown flag --num_user; did you mean --num_users? "
        "(see seqrec-synthetic --help)")
    r = util.run_command([gen, f"--output_dir={tmp_path / 'g'}", "--num_users=30",
                          "--num_movies=100"], home=tmp_path)
    assert r.returncode == 0 and '"ratings": ' in r.stdout and r.stderr == "", r.stderr


# ------------------------------------------------------------ synthetic


@pytest.mark.parametrize("argv,expected", [
    (["--num_user=3"], "error: unknown flag --num_user; did you mean --num_users? "
                       "(see python -m beam_jobs.synthetic --help)"),
    (["--for=csv"], "error: unknown flag --for; did you mean --format? "
                    "(see python -m beam_jobs.synthetic --help)"),
    (["--num_users=0"], "error: --num_users: must be >= 1, got 0"),
    (["--format=tsv"], "error: --format: invalid choice: 'tsv' (choose from 'dat', 'csv')"),
])
def test_synthetic_is_strict(tmp_path, capsys, argv, expected):
    assert synthetic.main([f"--output_dir={tmp_path / 'g'}", *argv]) == 2
    assert _one_error_line(capsys.readouterr().err) == expected
    assert not (tmp_path / "g").exists()


def test_synthetic_output_dir_that_is_a_file(tmp_path, capsys):
    path = _file(tmp_path)
    assert synthetic.main([f"--output_dir={path}"]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: --output_dir {path}: is a file, not a directory")
    assert synthetic.main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: python -m beam_jobs.synthetic")
