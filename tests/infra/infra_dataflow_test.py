"""The Dataflow launch, offline: DataflowRunner builds the real job with --dry_run=True,
and the package Beam stages for the workers (built from --setup_file) holds every module
the workers need: its own files alone import, and unpickle every DoFn of the job."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

import pytest
from infra_paths import ROOT, load

dataflow_launch = load("infra/dataflow/launch.py", "infra_dataflow_launch")

STEPS = {"ReadMovies", "ReadRatings", "ResolveLines", "BuildShards", "AllErrors",
         "WriteErrors", "WriteVocab", "InputFiles", "Sha256", "Finalize"}


@pytest.fixture(scope="module")
def dry_run():
    """The launcher's own argv, run through beam_jobs.pipeline.run in this process so the
    job Beam built can be inspected (a dry run submits nothing and writes nothing)."""
    from apache_beam.portability.api import beam_runner_api_pb2

    from beam_jobs import pipeline

    args, extra = dataflow_launch.parse_args([
        "--project=seqrec-test", "--region=us-central1", "--bucket=seqrec-test-bucket",
        "--job_name=seqrec-dry-run", "--dry_run", "--",
        f"--input_dir={os.path.join(ROOT, 'data', 'sample')}", "--num_shards=4"])
    # Beam builds the staged sdist in a subprocess writing to fd 2: keep what it says.
    with tempfile.TemporaryFile() as err:
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            result = pipeline.run(dataflow_launch.pipeline_argv(args, extra))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    staged = {}
    for env in result.job.proto_pipeline.components.environments.values():
        for dep in env.dependencies:
            path = beam_runner_api_pb2.ArtifactFilePayload.FromString(dep.type_payload).path
            name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
                dep.role_payload).staged_name
            staged[name] = path
    yield result, staged, stderr
    # Beam leaves its staging temp dir behind after a dry run.
    for path in staged.values():
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


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


def _tracked(package: str) -> set[str]:
    out = subprocess.run(["git", "ls-files", f"{package}/*.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split()
    return set(out)


def test_staged_package_holds_every_module(dry_run):
    _, staged, _ = dry_run
    # workflow.tar.gz is the sdist Beam built from --setup_file; workers pip-install it.
    with tarfile.open(staged["workflow.tar.gz"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for package in ("beam_jobs", "trainer"):
        tracked = _tracked(package)
        assert tracked, package
        assert tracked <= names, tracked - names


# Runs in a fresh process whose only copy of the project is the staged sdist: imports
# every beam_jobs module and unpickles every DoFn of the job, as a worker would.
_WORKER = r"""
import json, os, sys
src = sys.argv[1]
sys.path.insert(0, src)
import importlib
modules = json.load(open(sys.argv[2]))
for name in modules:
    importlib.import_module(name)
from apache_beam.internal import pickler
pickler.set_library(sys.argv[4])
payloads = json.load(open(sys.argv[3]))
for p in payloads:
    pickler.loads(p.encode("latin-1"))
ours = {n: m.__file__ for n, m in sys.modules.items()
        if n.split(".")[0] in ("beam_jobs", "trainer") and getattr(m, "__file__", None)}
outside = {n: f for n, f in ours.items() if not f.startswith(src)}
print(json.dumps({"loaded": len(payloads), "modules": sorted(ours), "outside": outside}))
"""


def test_staged_package_alone_imports_and_unpickles_every_dofn(dry_run, tmp_path):
    from apache_beam.options.pipeline_options import SetupOptions
    from apache_beam.portability import common_urns, python_urns
    from apache_beam.portability.api import beam_runner_api_pb2

    result, staged, _ = dry_run
    with tarfile.open(staged["workflow.tar.gz"]) as tar:
        tar.extractall(tmp_path, filter="data")
    (src,) = [str(p) for p in tmp_path.iterdir() if p.is_dir()]
    modules = sorted(f[:-3].replace("/", ".") for f in _tracked("beam_jobs"))
    payloads = []
    for t in result.job.proto_pipeline.components.transforms.values():
        if t.spec.urn == common_urns.primitives.PAR_DO.urn:
            do_fn = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).do_fn
            # Only pickled DoFns carry code; Beam's own URN-coded DoFns (e.g.
            # python_key_with_none inside CombineGlobally) have an empty payload.
            if do_fn.urn == python_urns.PICKLED_DOFN_INFO:
                payloads.append(do_fn.payload.decode("latin-1"))
    assert len(payloads) >= 10
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "payloads.json").write_text(json.dumps(payloads))
    library = result.job.options.view_as(SetupOptions).pickle_library
    work = tmp_path / "cwd"
    work.mkdir()  # not the repository: nothing importable by accident
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", _WORKER, src, str(tmp_path / "modules.json"),
         str(tmp_path / "payloads.json"), library if library != "default" else "cloudpickle"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["loaded"] == len(payloads)
    assert set(modules) <= set(report["modules"])
    assert report["outside"] == {}, "imported from outside the staged package"
