"""The commands infra/README.md and docs/gcs.md print: the `offline` ones run exactly as
printed in a plain shell and do what the docs say; the others use real launcher flags."""
from __future__ import annotations

import os
import re
import shlex

import pytest
from infra_paths import INFRA, ROOT, load

from tests import docs_util

trainer_launch = load("infra/trainer/launch.py", "infra_trainer_launch")
dataflow_launch = load("infra/dataflow/launch.py", "infra_dataflow_launch")
recommend_launch = load("infra/dataflow/launch_recommend.py", "infra_launch_recommend")
la = trainer_launch.la  # infra/launcher_args.py, the module both launchers import

DOCS = [os.path.join(INFRA, "README.md"), os.path.join(ROOT, "docs", "gcs.md")]
OFFLINE = [cmd for path in DOCS for cmd in docs_util.commands(path)]


def test_the_docs_mark_every_kind_of_offline_command():
    """Each kind of offline command is in the docs (a removed marker fails here, not
    silently), and failing launches are shown too."""
    text = {path: [c.command for c in docs_util.commands(path)] for path in DOCS}
    readme, gcs = ("\n".join(text[p]) for p in DOCS)
    for promised in ("infra/gcs/setup_bucket.sh --dry_run", "infra/dataflow/launch.py",
                     "--dry_run", "infra/trainer/launch.py vertex", "infra/trainer/launch.py k8s",
                     "--print_tf_config", "infra/dataflow/launch_recommend.py"):
        assert promised in readme, promised
    for promised in ("infra/gcs/setup_bucket.sh --dry_run", "infra/dataflow/launch.py",
                     "infra/trainer/launch.py vertex"):
        assert promised in gcs, promised
    assert {c.exit_code for c in OFFLINE} == {0, 2}
    assert all(c.expect for c in OFFLINE), [c.source for c in OFFLINE if not c.expect]


@pytest.mark.parametrize("cmd", OFFLINE, ids=[c.source for c in OFFLINE])
def test_offline_command_runs_as_printed_in_a_plain_shell(cmd):
    result = docs_util.run(cmd, timeout=300)
    assert docs_util.problems(cmd, result) == [], cmd.script()


def test_docs_util_checks_what_the_doc_promises(tmp_path):
    """The extraction and the checks can fail: a doc whose promises are false."""
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\n```sh offline\nA=1 B=two\necho $A \\\n  $B\n# => 1 two\n"
                   "# prose\nfalse\n# => exit 1\n```\n\n    echo not marked\n\n"
                   "## Other\n\n```sh offline\necho $B\n# => three\n# => exit 0\n```\n")
    first, second, third = docs_util.commands(str(doc))
    assert first.setup == ("A=1 B=two",) and first.command == "echo $A \\\n  $B"
    assert (first.expect, second.exit_code) == (("1 two",), 1)
    assert docs_util.problems(first, docs_util.run(first)) == []
    assert docs_util.problems(second, docs_util.run(second)) == []
    broken = docs_util.problems(third, docs_util.run(third))
    assert broken[0] == "no 'three' in its output"
    # One heading's blocks only; a promise before any command is a mistake in the doc.
    assert [c.command for c in docs_util.commands(str(doc), section="Other")] == ["echo $B"]
    doc.write_text("```sh offline\n# => 1\n```\n")
    with pytest.raises(ValueError, match="before any command"):
        docs_util.commands(str(doc))
    # The environment is a plain shell's: PATH and HOME only (no PYTHONPATH, no TF_*).
    (env,) = docs_util.commands(str(_write(tmp_path, "```sh offline\nenv | sort\n```\n")))
    names = [line.split("=")[0] for line in docs_util.run(env).stdout.splitlines()]
    assert set(names) <= {"HOME", "PATH", "PWD", "SHLVL", "_", "OLDPWD"}, names


def _write(tmp_path, text: str):
    path = tmp_path / "env.md"
    path.write_text(text)
    return path


VALUES = {"PROJECT": "my-project", "REGION": "us-central1", "BUCKET": "my-seqrec-bucket",
          "IMAGE": "us-central1-docker.pkg.dev/my-project/seqrec/trainer:v1"}


def _argv(command: str) -> list[str]:
    """A printed launch command as an argv list: continuation lines joined, a trailing
    comment dropped, [optional] flags included, shell variables filled in."""
    line = re.sub(r"\s#\s.*$", "", command.replace("\\\n", " ").strip())
    line = line.replace("[", "").replace("]", "")
    line = re.sub(r"\$(\w+)", lambda m: VALUES[m.group(1)], line)
    return shlex.split(line)[1:]


def launch_commands(path: str) -> list[list[str]]:
    """Every `python infra/.../launch.py` command of `path`, marked or not."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().replace("\\\n", " ").splitlines()
    return [_argv(line) for line in lines if line.strip().startswith("python infra/")]


@pytest.mark.parametrize("path", DOCS, ids=["infra/README.md", "docs/gcs.md"])
def test_every_launch_command_of_the_docs_uses_real_flags(path):
    """The launches that need credentials too: parsed and checked by the launchers (their
    job flags by the jobs' own parsers), nothing submitted. Only the refusals an offline
    block shows (and checks, by running it) may be refused."""
    commands = launch_commands(path)
    assert len(commands) >= 3, commands
    refusals = [_argv(c.command) for c in docs_util.commands(path) if c.exit_code]
    for script, *argv in commands:
        refused = None
        try:
            if script == "infra/trainer/launch.py":
                assert trainer_launch.render(trainer_launch.prepare(argv))
            else:
                launcher = {"infra/dataflow/launch.py": dataflow_launch,
                            "infra/dataflow/launch_recommend.py": recommend_launch}[script]
                args, job_flags = launcher.parse_args(argv)
                assert launcher.command(args, job_flags)
        except la.UsageError as e:
            refused = e
        assert (refused is not None) == ([script, *argv] in refusals), (argv, refused)
