"""The images run as a fixed non-root uid: each Dockerfile is parsed the way Docker reads it
(continuation lines, comments, stages, ARG defaults) and its final stage's user checked."""
from __future__ import annotations

import dataclasses
import os
import re

import pytest
from infra_paths import ROOT

DOCKERFILES = ["infra/trainer/Dockerfile", "infra/dataflow/flex_template/Dockerfile"]
FLEX = "infra/dataflow/flex_template/Dockerfile"


@dataclasses.dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]]  # (KEYWORD, arguments)


def _logical_lines(text: str) -> list[str]:
    """Instructions as Docker sees them: comment lines dropped (also inside a continued
    instruction), `\\`-continued lines joined."""
    out, current = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            out.append(current.strip())
        current = ""
    if current.strip():
        out.append(current.strip())
    return out


def _substitute(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


# The instructions Docker substitutes ARG and ENV values into (RUN leaves it to the shell).
SUBSTITUTED = {"ADD", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER", "VOLUME",
               "WORKDIR"}


def stages(text: str) -> list[Stage]:
    """The build stages of a Dockerfile. ARGs before the first FROM are in scope for FROM
    lines and, redeclared without a value, inside a stage; ARG and ENV values are
    substituted where Docker substitutes them."""
    global_args: dict[str, str] = {}
    out: list[Stage] = []
    env: dict[str, str] = {}
    for line in _logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            out.append(Stage(_substitute(words[0], global_args), name, []))
            env = {}
            continue
        if keyword == "ARG":
            key, eq, default = args.partition("=")
            if not out:
                global_args[key] = default
            else:
                env[key] = default if eq else global_args.get(key, "")
            continue
        if not out:
            continue
        if keyword == "ENV":
            for key, value in re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", args):
                env[key] = value.strip('"')
        if keyword in SUBSTITUTED:
            args = _substitute(args, env)
        out[-1].instructions.append((keyword, args))
    return out


def final_user(text: str) -> str | None:
    """The user the final stage runs as: its last USER, or, if it has none, that of the
    stage it builds FROM (None: the base image's, which this file does not say)."""
    all_stages = stages(text)
    stage = all_stages[-1]
    while True:
        users = [args for keyword, args in stage.instructions if keyword == "USER"]
        if users:
            return users[-1]
        parents = [s for s in all_stages if s.name and s.name == stage.base]
        if not parents:
            return None
        stage = parents[-1]


def non_root_uid(user: str | None) -> int | None:
    """The uid of `user` if it is a fixed number other than 0, else None."""
    if user is None:
        return None
    uid = user.split(":")[0]
    return int(uid) if uid.isdigit() and int(uid) != 0 else None


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_runs_as_a_fixed_non_root_uid(dockerfile):
    """A numeric uid: a name could be root on another base image, and Kubernetes'
    runAsNonRoot can only verify numbers."""
    with open(os.path.join(ROOT, dockerfile), encoding="utf-8") as f:
        user = final_user(f.read())
    assert non_root_uid(user), f"{dockerfile}: the final stage runs as {user or 'the base image user'}"


def test_final_user_reads_docker_semantics():
    """The check can fail: each of these images runs as root, or as an unknown user."""
    root_cases = {
        "no USER": "FROM python:3.11\nRUN true\n",
        "root by name": "FROM python:3.11\nUSER root\n",
        "uid 0 with a group": "FROM python:3.11\nUSER 0:10001\n",
        "back to root last": "FROM python:3.11\nUSER 10001\nRUN true\nUSER root\n",
        "USER only in an earlier stage": "FROM python:3.11 AS build\nUSER 10001\n"
                                         "FROM python:3.11\nCOPY --from=build /a /a\n",
        "a name, not a uid": "FROM python:3.11\nUSER seqrec\n",
        "root from an ARG": "ARG UID=0\nFROM python:3.11\nARG UID\nUSER ${UID}\n",
        "USER in a comment": "FROM python:3.11\n# USER 10001\n",
        "USER inside a continued RUN": "FROM python:3.11\nRUN echo \\\n  USER 10001\n",
    }
    for case, text in root_cases.items():
        assert non_root_uid(final_user(text)) is None, case
    ok_cases = {
        "plain": "FROM python:3.11\nUSER 10001\n",
        "inherited from the stage it builds on": "FROM python:3.11 AS base\nUSER 10001\n"
                                                 "FROM base\nRUN true\n",
        "from an ARG": "ARG UID=10001\nFROM python:3.11\nARG UID\nUSER ${UID}:${UID}\n",
    }
    for case, text in ok_cases.items():
        assert non_root_uid(final_user(text)) == 10001, case


def _flex_stage() -> tuple[Stage, int]:
    with open(os.path.join(ROOT, FLEX), encoding="utf-8") as f:
        text = f.read()
    return stages(text)[-1], non_root_uid(final_user(text))


def test_flex_template_image_gives_its_user_the_directories_its_programs_write():
    """The launcher writes /var/log/dataflow/template_launcher/runner-json.log (it fails as
    a user who cannot: GoogleCloudPlatform/python-docs-samples#13213); boot creates a venv
    per worker under /opt/apache/beam-venv (apache/beam sdks/python/container/boot.go). The
    image creates both, owned by its uid, as root, before switching to it."""
    stage, uid = _flex_stage()
    keywords = [keyword for keyword, _ in stage.instructions]
    switch = len(keywords) - 1 - keywords[::-1].index("USER")
    as_root = " ".join(args for keyword, args in stage.instructions[:switch] if keyword == "RUN")
    made = re.search(rf"install -d -o {uid} -g {uid} ([^&]+)", as_root)
    assert made, "the directories are not created owned by the image's user"
    assert set(made.group(1).split()) == {"/var/log/dataflow/template_launcher",
                                          "/opt/apache/beam-venv"}
    assert f"useradd --no-log-init --create-home --uid {uid}" in as_root


def test_flex_template_image_checks_its_entry_points_as_its_user_at_build_time():
    """The build itself fails if, as the image's user, the launcher or boot cannot run,
    their directories are not writable, or main.py cannot import the project."""
    stage, _ = _flex_stage()
    keywords = [keyword for keyword, _ in stage.instructions]
    switch = len(keywords) - 1 - keywords[::-1].index("USER")
    checks = " ".join(args for keyword, args in stage.instructions[switch:] if keyword == "RUN")
    for check in ("test -x /opt/google/dataflow/python_template_launcher",
                  "test -x /opt/apache/beam/boot",
                  "test -w /var/log/dataflow/template_launcher",
                  "python -m venv --system-site-packages /opt/apache/beam-venv/",
                  'python "${FLEX_TEMPLATE_PYTHON_PY_FILE}" --help'):
        assert check in checks, check
    entrypoint = [args for keyword, args in stage.instructions if keyword == "ENTRYPOINT"]
    assert entrypoint == ['["/opt/apache/beam/boot"]']
