"""deploy/Dockerfile, checked without a container engine: a small linter (pinned bases, a non-root user and a
health check in every service image, apt-get hygiene, no build tools in the final stages, COPY sources that
exist in the build context) plus the facts the images must agree on with the code (modules, ports, members)."""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from contracts.runtime.config import ENV_VARS
from hub_deploy.services import SERVICES

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
SERVICE_NAMES = [name for name, _module in SERVICES]
BUILD_TOOLS = ("gcc", "g++", "make", "build-essential", "uv ", "pip install", "cargo", "rustc")


@dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int


@dataclass
class Stage:
    name: str
    base: str  # image reference or the name of an earlier stage
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: dict[str, Stage]

    def resolve(self, text: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.global_args.get(m.group(1), m.group(0)), text)

    def chain(self, name: str) -> list[Stage]:
        """The stage and the stages it is built on, the stage itself first."""
        found = [self.stages[name]]
        while found[-1].base in self.stages:
            found.append(self.stages[found[-1].base])
        return found

    def effective(self, name: str, keyword: str) -> Instruction | None:
        """The instruction of `keyword` in force in a stage (the last one along its chain)."""
        for stage in self.chain(name):
            if stage.all(keyword):
                return stage.all(keyword)[-1]
        return None


def parse(text: str) -> Dockerfile:
    """Instructions with their continuation lines joined; comments and blank lines dropped."""
    instructions: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        start = start if pending else number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = ""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = instruction.arguments.split()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else f"stage-{len(stages)}"
            current = Stage(name=name, base=words[0])
            stages[name] = current
        elif current is None and instruction.keyword == "ARG":
            key, _, default = instruction.arguments.partition("=")
            global_args[key.strip()] = default.strip()
        elif current is not None:
            current.instructions.append(instruction)
    return Dockerfile(global_args=global_args, stages=stages)


def dockerignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    for pattern in patterns:
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, pattern.removeprefix("**/")):
                return True
    return False


def lint(dockerfile: Dockerfile, targets: list[str], context: Path, ignore: list[str]) -> list[str]:
    """Everything wrong with the Dockerfile, one line each (empty: fine)."""
    problems: list[str] = []
    for stage in dockerfile.stages.values():
        base = dockerfile.resolve(stage.base)
        if base not in dockerfile.stages:
            tag = base.rsplit("/", 1)[-1].partition(":")[2]  # after a registry's host:port, if any
            if "$" in base or ("@" not in base and tag in ("", "latest")):
                problems.append(f"stage {stage.name}: base image {base!r} is not pinned to a tag or digest")
        for run in stage.all("RUN"):
            for command in re.split(r"&&|;", run.arguments):
                if re.search(r"\bapt-get\s+install\b", command) and "--no-install-recommends" not in command:
                    problems.append(f"line {run.line}: apt-get install without --no-install-recommends")
            if "apt-get install" in run.arguments and "rm -rf /var/lib/apt/lists" not in run.arguments:
                problems.append(f"line {run.line}: apt-get install without removing /var/lib/apt/lists in that RUN")
        for copy in stage.all("COPY") + stage.all("ADD"):
            words = shlex.split(copy.arguments)
            if any(w.startswith("--from") for w in words):
                continue
            for source in [w for w in words if not w.startswith("--")][:-1]:
                if not list(context.glob(source)):
                    problems.append(f"line {copy.line}: COPY source {source!r} does not exist in the build context")
                elif ignored(source, ignore):
                    problems.append(f"line {copy.line}: COPY source {source!r} is excluded by .dockerignore")
    for target in targets:
        if target not in dockerfile.stages:
            problems.append(f"target {target!r} is missing")
            continue
        user = dockerfile.effective(target, "USER")
        if user is None or user.arguments.split(":")[0] in ("root", "0"):
            problems.append(f"target {target}: runs as root (add USER with an unprivileged user)")
        if dockerfile.effective(target, "HEALTHCHECK") is None:
            problems.append(f"target {target}: no HEALTHCHECK")
        if dockerfile.effective(target, "CMD") is None and dockerfile.effective(target, "ENTRYPOINT") is None:
            problems.append(f"target {target}: no CMD or ENTRYPOINT")
        for stage in dockerfile.chain(target):
            for instruction in stage.all("RUN") + stage.all("COPY"):
                if any(tool in instruction.arguments + " " for tool in BUILD_TOOLS):
                    problems.append(f"target {target}: build tool in the final image (line {instruction.line})")
    return problems


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse(DOCKERFILE.read_text())


def test_the_dockerfile_passes_the_lint(dockerfile: Dockerfile) -> None:
    assert lint(dockerfile, SERVICE_NAMES, REPO_ROOT, dockerignore_patterns()) == []


def test_the_lint_finds_what_it_looks_for(tmp_path: Path) -> None:
    bad = parse(
        "ARG BASE=python:3.11-slim\n"
        "FROM python:latest AS build\n"
        "RUN apt-get update && apt-get install -y gcc\n"
        "FROM ${BASE} AS registry\n"
        "COPY --from=build /x /x\n"
        "COPY missing/ /app/\n"
        "RUN pip install uv\n"
        'CMD ["python"]\n'
        "FROM debian AS prompt\n"
        "USER root\n"
    )
    problems = "\n".join(lint(bad, ["registry", "prompt", "stats"], tmp_path, []))
    for expected in (
        "base image 'python:latest' is not pinned",
        "base image 'debian' is not pinned",
        "apt-get install without --no-install-recommends",
        "without removing /var/lib/apt/lists",
        "COPY source 'missing/' does not exist",
        "target registry: runs as root",
        "target registry: no HEALTHCHECK",
        "target registry: build tool in the final image",
        "target prompt: runs as root",
        "target prompt: no CMD",
        "target 'stats' is missing",
    ):
        assert expected in problems, f"{expected!r} not reported:\n{problems}"
    assert "python:3.11-slim" not in problems  # a pinned ARG default resolves and passes


@pytest.mark.parametrize(("service", "module"), SERVICES)
def test_each_service_image_runs_its_module_and_probes_its_own_health(
    dockerfile: Dockerfile, service: str, module: str
) -> None:
    cmd = dockerfile.effective(service, "CMD")
    assert cmd is not None and cmd.arguments == f'["python", "-m", "{module}"]'
    health = dockerfile.effective(service, "HEALTHCHECK")
    assert health is not None and f'CMD ["python", "-m", "hub_deploy", "probe", "{service}"]' in health.arguments
    assert re.search(r"--timeout=(\d+)s", health.arguments), "the probe needs a timeout"
    env = " ".join(i.arguments for stage in dockerfile.chain(service) for i in stage.all("ENV"))
    assert "HUB_DATA_DIR=/data" in env
    volume = dockerfile.effective(service, "VOLUME")
    assert volume is not None and "/data" in volume.arguments


@pytest.mark.parametrize("service", ["gateway", "ui"])
def test_the_http_services_listen_on_all_interfaces_and_expose_their_port(dockerfile: Dockerfile, service: str) -> None:
    stage = dockerfile.stages[service]
    env = " ".join(i.arguments for i in stage.all("ENV"))
    port = ENV_VARS[f"HUB_{service.upper()}_PORT"][0]
    assert f"HUB_{service.upper()}_HOST=0.0.0.0" in env and f"HUB_{service.upper()}_PORT={port}" in env
    assert [i.arguments for i in stage.all("EXPOSE")] == [port]


def test_the_builder_installs_every_workspace_member_from_the_lock(dockerfile: Dockerfile) -> None:
    members = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["uv"]["workspace"]["members"]
    builder = dockerfile.stages["builder"]
    copied = {shlex.split(i.arguments)[0] for i in builder.all("COPY") if "--from" not in i.arguments}
    for member in members:
        assert f"{member}/pyproject.toml" in copied and f"{member}/src" in copied, member
    assert {"pyproject.toml", "uv.lock"} <= set(shlex.split(builder.all("COPY")[1].arguments)[:-1])
    syncs = [i.arguments for i in builder.all("RUN") if "uv sync" in i.arguments]
    assert syncs and all("--locked" in s and "--no-dev" in s for s in syncs)
    assert "--no-editable" in syncs[-1]  # the final images need no /src
    runtime = dockerfile.stages["runtime"]
    assert [i.arguments for i in runtime.all("COPY")] == ["--from=builder /opt/hub/venv /opt/hub/venv"]
