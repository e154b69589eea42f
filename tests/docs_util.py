"""Runs the commands a Markdown doc prints, exactly as printed, the way a user would.

Marking a block (the info string's first word stays the language, so it renders as shell):

    ```sh offline
    PROJECT=my-project BUCKET=my-seqrec-bucket      # assignments: kept for what follows
    python infra/dataflow/launch.py --project=$PROJECT --bucket=$BUCKET \
        --print                                      # a command; `\\` continues it
    # => --runner=DataflowRunner                     # its stdout or stderr contains this
    # => exit 2                                      # its exit status (default 0)
    ```

`commands(path, tag)` returns every command of the blocks tagged `tag` (optionally only
under one heading); `run(cmd)` runs it with bash from the repository root in a plain
shell's environment, `env -i PATH=<venv>/bin:/usr/bin:/bin HOME=$HOME`, after the
assignment lines that come before it in the file's tagged blocks (a reader runs them in
one shell); `problems(cmd, result)` lists how the result breaks the doc's promises.
Other comment lines are prose and are left alone.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The project's virtualenv (the one running the tests): its bin/ first on PATH, as after
# `make venv` or `source .venv/bin/activate`.
VENV_BIN = os.path.dirname(sys.executable)

_FENCE = re.compile(r"^(\s*)```\s*(\S*)\s*(.*?)\s*$")
_ASSIGNMENTS = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*=\S*\s*)+$")
_EXPECT = re.compile(r"^\s*#\s*=>\s?(.*)$")
_EXIT = re.compile(r"^exit (\d+)$")


@dataclasses.dataclass(frozen=True)
class DocCommand:
    """One command of a marked block, with what the doc promises about it."""

    source: str  # "infra/README.md:120", for messages
    setup: tuple[str, ...]  # the tagged blocks' assignment lines before the command
    command: str  # as printed (continuation lines included)
    exit_code: int = 0
    expect: tuple[str, ...] = ()  # texts its stdout or stderr contains

    def script(self) -> str:
        return "\n".join([*self.setup, self.command]) + "\n"


def _blocks(path: str, tag: str, section: str | None) -> list[list[tuple[int, str]]]:
    """The (line number, text) lines of every fenced block whose info string holds `tag`,
    under the heading `section` (until the next heading of its level or above) if given."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    blocks: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] | None = None  # inside a fenced block (any)
    inside, level = section is None, 0
    for number, line in enumerate(lines, 1):
        if current is not None:
            if line.strip() == "```":
                current = None
            else:
                current.append((number, line))
            continue
        heading = re.match(r"^(#+)\s+(.*?)\s*$", line)
        if heading and section is not None:
            if heading.group(2) == section:
                inside, level = True, len(heading.group(1))
            elif len(heading.group(1)) <= level:
                inside = False
        fence = _FENCE.match(line)
        if fence:
            current = []
            if inside and tag in fence.group(3).split():
                blocks.append(current)
    return blocks


def commands(path: str, tag: str = "offline", section: str | None = None) -> list[DocCommand]:
    """Every command of `path`'s blocks tagged `tag` (see the module docstring)."""
    rel = os.path.relpath(path, ROOT)
    out: list[DocCommand] = []
    setup: list[str] = []  # a reader runs the blocks in one shell: assignments carry on
    for block in _blocks(path, tag, section):
        pending: list[str] = []  # a command's lines while `\` continues it
        first = len(out)  # this block's commands are out[first:]
        start = 0
        for number, line in block:
            if pending:
                pending.append(line)
            elif (expect := _EXPECT.match(line)):
                if len(out) == first:
                    raise ValueError(f"{rel}:{number}: '# =>' before any command")
                text, last = expect.group(1), out[-1]
                code = _EXIT.match(text)
                out[-1] = (dataclasses.replace(last, exit_code=int(code.group(1))) if code else
                           dataclasses.replace(last, expect=(*last.expect, text)))
                continue
            elif not line.strip() or line.lstrip().startswith("#"):
                continue
            elif _ASSIGNMENTS.match(line):
                setup.append(line.strip())
                continue
            else:
                start, pending = number, [line]
            if not line.rstrip().endswith("\\"):
                out.append(DocCommand(f"{rel}:{start}", tuple(setup), "\n".join(pending)))
                pending = []
        if pending:
            raise ValueError(f"{rel}:{start}: the block ends inside a command")
    return out


def plain_env(**extra: str) -> dict[str, str]:
    """A plain shell's environment: PATH (the virtualenv's bin/ first) and HOME, no more."""
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    env.update(extra)
    return env


def run(cmd: DocCommand, timeout: float = 300, cwd: str = ROOT) -> subprocess.CompletedProcess:
    """Runs `cmd` (after its setup lines) with bash, from `cwd`, under `env -i` with
    plain_env() only."""
    env = [f"{k}={v}" for k, v in plain_env().items()]
    return subprocess.run(["env", "-i", *env, "bash", "-c", cmd.script()], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def problems(cmd: DocCommand, result: subprocess.CompletedProcess) -> list[str]:
    """How `result` breaks what the doc promises about `cmd` (empty: it keeps them)."""
    out = []
    if result.returncode != cmd.exit_code:
        out.append(f"exit status {result.returncode}, the doc says {cmd.exit_code}")
    output = result.stdout + result.stderr
    out += [f"no {text!r} in its output" for text in cmd.expect if text not in output]
    if out:
        out.append(f"stdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-2000:]}")
    return out
