"""Runs `python -m trainer.train` in a subprocess for the end-to-end tests."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def env(**extra) -> dict:
    e = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("TF_CONFIG", None)
    e.update(extra)
    return e


def command(*flags: str, timeout_s: int | None = None) -> list[str]:
    """The trainer command; with timeout_s, under `timeout -k` (a process that has
    started a multi-worker strategy ignores SIGTERM, so SIGKILL follows)."""
    cmd = [sys.executable, "-m", "trainer.train", *flags]
    if timeout_s:
        cmd = ["timeout", "-k", "5", str(timeout_s), *cmd]
    return cmd


def run(*flags: str, timeout_s: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(command(*flags, timeout_s=timeout_s), cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=timeout_s + 30)
