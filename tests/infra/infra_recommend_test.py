"""infra/dataflow/launch_recommend.py: beam_jobs.recommend_all on Dataflow, offline.

Its command line (the job's flags checked by the job's own parser, the bucket layout's
locations, nothing else), its workers' TensorFlow (setup.py's `recommend` extra as a
requirements file, or a worker image; never the prep job's workers), and a DataflowRunner
`--dry_run=True` build of the real job on a real data_dir and export, whose staged package
alone imports the job and unpickles every DoFn."""
from __future__ import annotations

import os
import runpy
import subprocess
import sys
from unittest import mock

import pytest
import staged as staging
from infra_paths import INFRA, ROOT, load

from beam_jobs import recommend_all, schema
from tests.docs_util import plain_env

launch_recommend = load("infra/dataflow/launch_recommend.py", "infra_launch_recommend")
dataflow_launch = load("infra/dataflow/launch.py", "infra_dataflow_launch")
la = launch_recommend.la

IMAGE = "us-central1-docker.pkg.dev/my-proj/seqrec/dataflow:v1"
BASE = ["--project=my-proj", "--region=us-central1", "--bucket=my-bucket", "--run_name=r1",
        "--job_name=recs-1"]
STEPS = {"UsersShards", "ReadUsers", "Recommend", "ByShard", "GroupByShard", "WriteParquet",
         "FinalizeTrigger", "WriteMetadataAndSuccess"}


def cli(*argv: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """`python infra/dataflow/launch_recommend.py ARGV` from the repository root in a
    plain shell's environment."""
    return subprocess.run([sys.executable, os.path.join(INFRA, "dataflow",
                                                        "launch_recommend.py"), *argv],
                          cwd=ROOT, env=plain_env(), capture_output=True, text=True,
                          timeout=timeout)


def job_command(argv: list[str]):
    """(RecommendConfig, Beam options) of the launcher's command, parsed by the job."""
    args, job_flags = launch_recommend.parse_args(argv)
    cmd = launch_recommend.command(args, job_flags)
    assert cmd[:3] == [sys.executable, "-m", "beam_jobs.recommend_all"]
    cfg, beam_args, _ = recommend_all.parse_command_line(cmd[3:])
    return cfg, beam_args


def setup_py_extras() -> dict[str, list[str]]:
    """setup.py's extras_require, as setuptools.setup receives them."""
    with mock.patch("setuptools.setup") as setup:
        runpy.run_path(os.path.join(ROOT, "setup.py"))
    return setup.call_args.kwargs["extras_require"]


def requirement_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def test_launcher_passes_the_bucket_layout_and_no_other_job_flag():
    cfg, _ = job_command(BASE)
    assert cfg == recommend_all.RecommendConfig(data_dir="gs://my-bucket/data/ml-1m",
                                                model_dir="gs://my-bucket/runs/r1",
                                                output_dir="gs://my-bucket/recs/r1")
    # The user's flags arrive, and theirs win; --export_dir replaces the default model.
    cfg, _ = job_command(BASE + ["--", "--k=100", "--exclude_seen",
                                 "--data_dir=gs://my-bucket/data/ml-20m",
                                 "--export_dir=gs://my-bucket/runs/r1/model"])
    assert (cfg.k, cfg.exclude_seen, cfg.data_dir) == (100, True, "gs://my-bucket/data/ml-20m")
    assert (cfg.model_dir, cfg.export_dir) == (None, "gs://my-bucket/runs/r1/model")
    assert cfg.output_dir == "gs://my-bucket/recs/r1"


def test_workers_get_tensorflow_from_the_recommend_extra_and_the_prep_job_never():
    extras = setup_py_extras()
    required = requirement_lines(launch_recommend.REQUIREMENTS_FILE)
    assert required == extras["recommend"]
    assert any(r.startswith("tensorflow>=") for r in required)
    _, beam_args = job_command(BASE)
    assert f"--requirements_file={launch_recommend.REQUIREMENTS_FILE}" in beam_args
    assert "--requirements_cache=skip" in beam_args  # the launch downloads nothing
    assert f"--setup_file={os.path.join(ROOT, 'setup.py')}" in beam_args
    # A worker image brings TensorFlow itself: no requirements file then.
    _, beam_args = job_command(BASE + [f"--worker_image={IMAGE}"])
    assert f"--sdk_container_image={IMAGE}" in beam_args
    assert not [a for a in beam_args if a.startswith("--requirements")]
    # The prep job's launch installs only the base install (no TensorFlow in it).
    args, job_flags = dataflow_launch.parse_args(BASE[:3])
    assert not [a for a in dataflow_launch.command(args, job_flags)
                if a.startswith("--requirements")]
    with mock.patch("setuptools.setup") as setup:
        runpy.run_path(os.path.join(ROOT, "setup.py"))
    assert not [r for r in setup.call_args.kwargs["install_requires"]
                if r.startswith(("tensorflow", "tf-keras"))]


@pytest.mark.parametrize("argv, says", [
    (BASE + ["--print", "--", "--exclude"],
     ["beam_jobs.recommend_all: ", "--exclude", "did you mean --exclude_seen?"]),
    (BASE + ["--print", "--", "--k=0"], ["beam_jobs.recommend_all: --k"]),
    (BASE + ["--print", "--k=5"], ["--k is a beam_jobs.recommend_all flag: give it after `--`"]),
    (BASE + ["--print", "--", "--data_dir=data/sample"],
     ["--data_dir=data/sample: Dataflow workers cannot reach local files"]),
    # Both model flags: the job's own rule (given --export_dir, the launcher adds no
    # --model_dir, so only the user can give both).
    (BASE + ["--print", "--", "--model_dir=gs://my-bucket/runs/r1",
             "--export_dir=gs://my-bucket/runs/r1/model"], ["--model_dir", "--export_dir"]),
    (BASE[:3] + ["--run_name=R_1", "--print"], ["--run_name='R_1' is not a run name"]),
    (BASE + ["--print", "--", "--no_such_beam_option=1"], ["--no_such_beam_option"]),
])
def test_launcher_refuses_in_one_line_before_anything_runs(argv, says):
    result = cli(*argv)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("launch_recommend.py: error: "), line
    for text in says:
        assert text in line, line


def test_launcher_cli_prints_the_command():
    result = cli(*BASE, "--print")
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert words[1:3] == ["-m", "beam_jobs.recommend_all"]
    assert "--runner=DataflowRunner" in words and "--job_name=recs-1" in words
    assert launch_recommend.make_parser().allow_abbrev is False
    assert launch_recommend.la is dataflow_launch.la  # one shared launcher module


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(data_dir, model_dir): data/sample through the real prep job, and an export of
    untrained towers (trainer.export.export_version)."""
    from tests.beam_jobs import util
    from tests.trainer.towers import tower_cfg
    from trainer import export, model

    tmp = tmp_path_factory.mktemp("recommend_dataflow")
    data_dir, model_dir = str(tmp / "data"), str(tmp / "model")
    util.run_job(os.path.join(ROOT, "data", "sample"), data_dir, "--num_shards=2")
    vocab = os.path.join(data_dir, schema.VOCAB_FILE)
    with open(vocab, encoding="utf-8") as f:
        ids = [r["movie_id"] for r in schema.parse_vocab(f.read(), vocab)]
    towers = model.build_towers(ids, 10, tower_cfg(8))
    export.export_version(os.path.join(model_dir, "export"), *towers, ids, vocab, 10)
    return data_dir, model_dir


@pytest.fixture(scope="module")
def dry_run(inputs):
    """The launcher's argv (without a worker image) built by recommend_all in this
    process, so the job Beam built can be inspected; nothing is submitted or written."""
    data_dir, model_dir = inputs
    args, job_flags = launch_recommend.parse_args(
        BASE + ["--dry_run", "--", f"--data_dir={data_dir}", f"--model_dir={model_dir}"])
    job = recommend_all.prepare(launch_recommend.recommend_argv(args, job_flags))
    assert job.dry_run
    with staging.fd2_captured():
        result = recommend_all.execute(job)
    staged = staging.staged_files(result)
    yield result, staged
    staging.remove_staging_dirs(staged)


def test_dry_run_builds_the_dataflow_job_with_the_workers_requirements(dry_run, inputs):
    result, staged = dry_run
    job = result.job
    assert job.proto.name == "recs-1"
    assert job.options.get_all_options()["runner"] == "DataflowRunner"
    transforms = job.proto_pipeline.components.transforms.values()
    top_level = {t.unique_name.split("/")[0] for t in transforms}
    assert STEPS <= top_level, STEPS - top_level
    # TensorFlow reaches the workers as a requirements file and nothing else: no wheel
    # was downloaded and staged.
    assert staged["requirements.txt"] == launch_recommend.REQUIREMENTS_FILE
    assert not [n for n in staged if n.endswith((".whl", ".tar.gz")) and n != "workflow.tar.gz"]
    # The project itself: the sdist of setup.py, holding every module.
    assert staging.tracked("beam_jobs") <= staging.sdist_names(staged)
    # Nothing was written: the output is gs:// and a dry run prepares no output_dir.
    assert not os.path.exists(os.path.join(inputs[0], "recs"))


def test_staged_package_alone_imports_the_job_and_unpickles_every_dofn(dry_run, tmp_path):
    result, staged = dry_run
    report, dofns = staging.run_staged_package_alone(result, staged, tmp_path)
    assert dofns >= 6 and report["loaded"] == dofns
    assert "beam_jobs.recommend_all" in report["modules"]
    assert report["outside"] == {}, "imported from outside the staged package"


@pytest.mark.slow
def test_dry_run_through_the_cli(inputs):
    """As a user types it: `python -m beam_jobs.recommend_all` (the module runs as
    __main__) under DataflowRunner, built offline, with a worker image this time."""
    data_dir, model_dir = inputs
    result = cli(*BASE, f"--worker_image={IMAGE}", "--dry_run", "--",
                 f"--data_dir={data_dir}", f"--model_dir={model_dir}", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert lines[-1] == "dry run: the Dataflow job was built offline; nothing was submitted"
    assert any(line.endswith("INFO dry run: the job was built, nothing ran") for line in lines)
    assert f"--sdk_container_image={IMAGE}" in lines[0]
