"""What a DataflowRunner `--dry_run=True` build stages for its workers, and a check that the
staged package alone runs the job's code: shared by the Dataflow launcher tests (the prep
job's, infra_dataflow_test.py, and the batch recommendations', infra_recommend_test.py)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

from infra_paths import ROOT


@contextlib.contextmanager
def fd2_captured():
    """Yields a list that holds, on exit, what was written to file descriptor 2 inside
    (Beam builds the staged sdist in a subprocess that writes there)."""
    out: list[str] = []
    with tempfile.TemporaryFile() as err:
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            err.seek(0)
            out.append(err.read().decode(errors="replace"))


def staged_files(result) -> dict[str, str]:
    """{staged name: local path} of every file a dry run's job stages for its workers."""
    from apache_beam.portability.api import beam_runner_api_pb2

    staged = {}
    for env in result.job.proto_pipeline.components.environments.values():
        for dep in env.dependencies:
            path = beam_runner_api_pb2.ArtifactFilePayload.FromString(dep.type_payload).path
            name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
                dep.role_payload).staged_name
            staged[name] = path
    return staged


def remove_staging_dirs(staged: dict[str, str]) -> None:
    """Beam leaves its temporary staging directory (where it built workflow.tar.gz and
    wrote the session and environment files) behind after a dry run. Only that one: a
    staged file of the checkout (a requirements file) stays where it is."""
    shutil.rmtree(os.path.dirname(staged["workflow.tar.gz"]), ignore_errors=True)


def tracked(package: str) -> set[str]:
    """The package's .py files in git (what the sdist must hold)."""
    out = subprocess.run(["git", "ls-files", f"{package}/*.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split()
    return set(out)


def sdist_names(staged: dict[str, str]) -> set[str]:
    """Paths inside workflow.tar.gz (the sdist Beam built from --setup_file; workers
    pip-install it), without the top-level directory."""
    with tarfile.open(staged["workflow.tar.gz"]) as tar:
        return {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}


# Runs in a fresh process whose only copy of the project is the staged sdist: imports
# every module listed and unpickles every DoFn of the job, as a worker would.
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


def run_staged_package_alone(result, staged: dict[str, str], tmp_path) -> tuple[dict, int]:
    """Extracts the staged sdist into tmp_path and, in a fresh process started outside the
    repository (nothing importable by accident), imports every tracked beam_jobs module
    from it and unpickles every pickled DoFn of the job. Returns (the worker's report:
    {"loaded", "modules", "outside"}, the number of DoFns)."""
    from apache_beam.options.pipeline_options import SetupOptions
    from apache_beam.portability import common_urns, python_urns
    from apache_beam.portability.api import beam_runner_api_pb2

    with tarfile.open(staged["workflow.tar.gz"]) as tar:
        tar.extractall(tmp_path, filter="data")
    (src,) = [str(p) for p in tmp_path.iterdir() if p.is_dir()]
    modules = sorted(f[:-3].replace("/", ".") for f in tracked("beam_jobs"))
    payloads = []
    for t in result.job.proto_pipeline.components.transforms.values():
        if t.spec.urn == common_urns.primitives.PAR_DO.urn:
            do_fn = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).do_fn
            # Only pickled DoFns carry code; Beam's own URN-coded DoFns (e.g.
            # python_key_with_none inside CombineGlobally) have an empty payload.
            if do_fn.urn == python_urns.PICKLED_DOFN_INFO:
                payloads.append(do_fn.payload.decode("latin-1"))
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "payloads.json").write_text(json.dumps(payloads))
    library = result.job.options.view_as(SetupOptions).pickle_library
    work = tmp_path / "cwd"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", _WORKER, src, str(tmp_path / "modules.json"),
         str(tmp_path / "payloads.json"), library if library != "default" else "cloudpickle"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(modules) <= set(report["modules"])
    return report, len(payloads)
