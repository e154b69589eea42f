"""Runs `python -m trainer.train` in a subprocess for the end-to-end tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def env(**extra) -> dict:
    # What a user's shell has: no TF_USE_LEGACY_KERAS or TF_CPP_MIN_LOG_LEVEL (the
    # package and the entry point arrange those). The tests' own process has them
    # (tests/conftest.py): drop them.
    e = {k: v for k, v in os.environ.items()
         if k not in ("TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL", "TF_CONFIG")}
    e["PYTHONUNBUFFERED"] = "1"
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    e.update(extra)
    return e


def command(*flags: str, timeout_s: int | None = None) -> list[str]:
    """The trainer command; with timeout_s, under `timeout -k`: timeout's SIGTERM
    stops training at a step boundary (exit 75, trainer/preemption.py), but a
    worker waiting in a collective for a missing peer never reaches one, so
    SIGKILL follows."""
    cmd = [sys.executable, "-m", "trainer.train", *flags]
    if timeout_s:
        cmd = ["timeout", "-k", "5", str(timeout_s), *cmd]
    return cmd


def run(*flags: str, timeout_s: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(command(*flags, timeout_s=timeout_s), cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=timeout_s + 30)


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout_s: float = 120,
              poll_s: float = 0.01) -> int | None:
    """SIGKILLs `proc` as soon as ready() holds (a checkpoint appeared, say), like a
    preempted machine; returns its exit status (-SIGKILL when it was interrupted).
    A process still running at the deadline is killed too, and a failure to exit
    raises, so a test never leaves a trainer behind."""
    try:
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(poll_s)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode


class Watched:
    """A trainer subprocess whose output (stdout and stderr together) is read as it
    comes, so a test can act on a line, e.g. signal it mid-epoch like a preempted
    machine. Always use it in `with`: the process is killed on the way out if it
    is still running."""

    def __init__(self, cmd: list[str], env: dict):
        import threading

        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._new = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._new:
                self.lines.append(line)
                self._new.notify_all()
        with self._new:
            self._new.notify_all()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout_s: float = 120):
        """The first match of the regex `pattern` in a line; raises if the process
        ends or the time runs out first."""
        import re

        deadline, seen = time.monotonic() + timeout_s, 0
        with self._new:
            while True:
                for line in self.lines[seen:]:
                    match = re.search(pattern, line)
                    if match:
                        return match
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r}:\n{self.output[-4000:]}")
                self._new.wait(min(left, 0.5))

    def signal(self, sig: int) -> float:
        """Sends `sig`; returns the monotonic time it was sent."""
        self.proc.send_signal(sig)
        return time.monotonic()

    def wait(self, timeout_s: float = 120) -> int:
        returncode = self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=10)
        return returncode

    def __enter__(self) -> Watched:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def free_ports(n: int) -> list[int]:
    """n ports free on 127.0.0.1 right now (for TF_CONFIG clusters of worker processes)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports
