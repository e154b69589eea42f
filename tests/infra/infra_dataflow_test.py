"""The Dataflow launch, offline: DataflowRunner builds the real job with --dry_run=True,
and the package Beam stages for the workers (built from --setup_file) holds every module
the workers need: its own files alone import, and unpickle every DoFn of the job."""
from __future__ import annotations

import importlib.util
import os

import pytest
import staged as staging
from infra_paths import ROOT, load

dataflow_launch = load("infra/dataflow/launch.py", "infra_dataflow_launch")

STEPS = {"ReadMovies", "ReadRatings", "ResolveLines", "BuildShards", "AllErrors",
         "WriteErrors", "WriteVocab", "InputFiles", "Sha256", "Finalize"}


@pytest.fixture(scope="module")
def dry_run():
    """The launcher's own argv, run through beam_jobs.pipeline.run in this process so the
    job Beam built can be inspected (a dry run submits nothing and writes nothing)."""
    from beam_jobs import pipeline

    args, extra = dataflow_launch.parse_args([
        "--project=seqrec-test", "--region=us-central1", "--bucket=seqrec-test-bucket",
        "--job_name=seqrec-dry-run", "--dry_run", "--",
        f"--input_dir={os.path.join(ROOT, 'data', 'sample')}", "--num_shards=4"])
    # Beam builds the staged sdist in a subprocess writing to fd 2: keep what it says.
    with staging.fd2_captured() as err:
        result = pipeline.run(dataflow_launch.pipeline_argv(args, extra))
    staged = staging.staged_files(result)
    yield result, staged, err[0]
    staging.remove_staging_dirs(staged)


def test_dry_run_builds_the_dataflow_job(dry_run):
    result, _, _ = dry_run
    job = result.job
    assert job.proto.name == "seqrec-dry-run"
    assert job.options.get_all_options()["runner"] == "DataflowRunner"
    transforms = job.proto_pipeline.components.transforms.values()
    top_level = {t.unique_name.split("/")[0] for t in transforms}
    assert STEPS <= top_level, STEPS - top_level


def test_staged_sdist_is_built_by_build_not_the_deprecated_fallback(dry_run):
    """Beam's stager builds the --setup_file sdist with `python -m build` when the `build`
    package is installed, else prints `No module named build` and falls back to the
    deprecated `setup.py sdist`. The launching Python must have it."""
    _, staged, stderr = dry_run
    assert importlib.util.find_spec("build"), (
        "the `build` package is missing: Beam falls back to `setup.py sdist` (it belongs in "
        "setup.py's gcp extra, with the Dataflow runner)")
    assert "No module named build" not in stderr
    assert "Building sdist" in stderr  # build's own progress line
    assert "workflow.tar.gz" in staged


def test_staged_package_holds_every_module(dry_run):
    _, staged, _ = dry_run
    names = staging.sdist_names(staged)
    for package in ("beam_jobs", "trainer"):
        tracked = staging.tracked(package)
        assert tracked, package
        assert tracked <= names, tracked - names


def test_staged_package_alone_imports_and_unpickles_every_dofn(dry_run, tmp_path):
    result, staged, _ = dry_run
    report, dofns = staging.run_staged_package_alone(result, staged, tmp_path)
    assert dofns >= 10
    assert report["loaded"] == dofns
    assert report["outside"] == {}, "imported from outside the staged package"
