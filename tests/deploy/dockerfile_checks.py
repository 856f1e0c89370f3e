"""Static checks of the service Dockerfiles against shared/deploy/topology.py (no Docker engine needed): a small
Dockerfile parser, the property checks, the shared-stage check and Docker's .dockerignore rule. Each check
returns problems, each naming the file and what to do; tests/deploy/test_dockerfiles.py runs them on the
real files and on broken copies."""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from shared.deploy import topology
from shared.deploy.topology import Service

ROOT = Path(__file__).resolve().parents[2]
KERNEL_SO = "agentforge_bitnet_ternary.so"       # services/bitnet/core/kernel.py: _EXT_NAME + ".so"
KERNEL_STAMP = "source.sha256"                    # services/bitnet/core/kernel.py: _STAMP
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|KEY", re.I)
PY_INSTALL = re.compile(r"\b(pip3?|uv|conda|mamba|micromamba|poetry|pipx|easy_install)\b\s+(\S+\s+)*?"
                        r"(install|add|sync)\b|setup\.py\s+(install|develop)")
COMPILERS = re.compile(r"(?<![\w-])(g\+\+|gcc|clang|build-essential|ninja-build)(-\d+)?(?=[\s=:]|$)")


# -- a small Dockerfile parser ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Instruction:
    keyword: str          # upper case
    args: str             # continuation lines joined
    line: int


@dataclass
class Stage:
    image: str            # what FROM names: an image or an earlier stage
    name: str
    instructions: list[Instruction] = field(default_factory=list)


def parse(text: str) -> list[Instruction]:
    out, buf, start = [], [], 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue                      # comments and parser directives, also inside continuations
        if not buf:
            start = number
        buf.append(line[:-1].rstrip() if line.endswith("\\") else line)
        if not line.endswith("\\"):
            keyword, _, args = " ".join(buf).partition(" ")
            out.append(Instruction(keyword.upper(), args.strip(), start))
            buf = []
    return out


def stages(instructions: list[Instruction]) -> list[Stage]:
    result: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(result))
            result.append(Stage(words[0], name))
        elif result:
            result[-1].instructions.append(ins)
    return result


def chain(all_stages: list[Stage], stage: Stage) -> list[Stage]:
    """The stage and the stages it derives from, nearest first."""
    by_name = {s.name: s for s in all_stages}
    out = [stage]
    while out[-1].image in by_name:
        out.append(by_name[out[-1].image])
    return out


def env_of(stage_chain: list[Stage]) -> dict[str, str]:
    env: dict[str, str] = {}
    for stage in reversed(stage_chain):
        for ins in stage.instructions:
            if ins.keyword == "ENV":
                env.update(_env_pairs(ins.args))
    return env


def _env_pairs(args: str) -> dict[str, str]:
    words = shlex.split(args)
    if words and "=" not in words[0]:                 # legacy `ENV KEY value`
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words)


def _last(stage_chain: list[Stage], keyword: str) -> Instruction | None:
    for stage in stage_chain:
        for ins in reversed(stage.instructions):
            if ins.keyword == keyword:
                return ins
    return None


def _exec_form(args: str) -> list[str] | None:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


# -- the property checks: each returns problems, each naming the file and what to do ------------------------
def check_dockerfile(path: Path, svc: Service) -> list[str]:
    text = path.read_text()
    instructions = parse(text)
    all_stages = stages(instructions)
    if not all_stages:
        return [f"{path}: no FROM instruction"]
    final = all_stages[-1]
    line = chain(all_stages, final)
    problems: list[str] = []

    # base: final -> ... -> <kind>-base -> os -> python:3.11.x-slim
    base = "cuda-base" if svc.gpu else "cpu-base"
    names = [s.name for s in line]
    if base not in names or line[-1].name != "os":
        problems.append(f"{path}: final stage '{final.name}' derives from {' -> '.join(names[1:])} -> "
                        f"{line[-1].image}; a {'GPU' if svc.gpu else 'CPU'} service must derive from "
                        f"'{base}' over 'os'")
    if not re.fullmatch(r"python:3\.11\.\d+-slim-\w+", line[-1].image):
        problems.append(f"{path}: the base stage starts FROM {line[-1].image}; use a pinned "
                        f"python:3.11.<patch>-slim-<debian> (the Python CI runs)")
    flavour = "cuda" if svc.gpu else "cpu"
    stage_args: dict[str, str] = {}       # ARG defaults in scope: an ARG lives until the next FROM
    for ins in instructions:
        if ins.keyword == "FROM":
            stage_args = {}
        if ins.keyword == "ARG" and "=" in ins.args:
            key, _, default = ins.args.partition("=")
            stage_args[key.strip()] = default.strip().strip('"')
        if ins.keyword == "RUN" and "scripts/install.sh" in ins.args:
            words = ins.args.split()
            torch = words[words.index("--torch") + 1] if "--torch" in words else None
            # --torch "$TORCH": the default of the stage's ARG (compose.cpu.yaml overrides it for -cpu images)
            ref = re.fullmatch(r'"?\$\{?(\w+)\}?"?', torch or "")
            torch = stage_args.get(ref.group(1)) if ref else torch
            if torch != flavour:
                problems.append(f"{path}:{ins.line}: install.sh gets --torch {torch}; a "
                                f"{'GPU' if svc.gpu else 'CPU'} image needs --torch {flavour}")
        if ins.keyword == "RUN" and PY_INSTALL.search(ins.args) and "scripts/install.sh" not in ins.args:
            problems.append(f"{path}:{ins.line}: installs Python packages without scripts/install.sh "
                            f"(the script CI runs): {ins.args[:80]}")
        if ins.keyword in ("ENV", "ARG"):
            keys = _env_pairs(ins.args) if ins.keyword == "ENV" else [ins.args.split("=")[0]]
            for key in keys:
                if SECRET_NAME.search(key):
                    problems.append(f"{path}:{ins.line}: {ins.keyword} {key} looks like a secret; secrets "
                                    f"come from .env / a Secret at run time, never the image")
        if ins.keyword in ("COPY", "ADD") and re.search(r"(^|\s|/)\.env(\s|$)", ins.args):
            problems.append(f"{path}:{ins.line}: copies .env into the image; never ship credentials")

    # user
    user = _last(line, "USER")
    if user is None or user.args.split(":")[0] in ("root", "0"):
        problems.append(f"{path}: the final stage must end as a non-root user (USER 10001:10001), "
                        f"got {user.args if user else 'no USER'}")
    elif user.args.split(":")[0] != "10001":
        problems.append(f"{path}: USER {user.args}: use the numeric uid 10001 (k8s runAsNonRoot checks it)")

    # command: exactly topology's, as an exec-form CMD; an ENTRYPOINT would prefix it (and k8s `command:`
    # would replace that ENTRYPOINT, so compose and k8s would run different things)
    entry, cmd = _last(line, "ENTRYPOINT"), _last(line, "CMD")
    argv = (_exec_form(cmd.args) or [cmd.args]) if cmd else []
    if entry is not None or argv != svc.command:
        problems.append(f"{path}: the container command is CMD {argv}, ENTRYPOINT "
                        f"{entry.args if entry else 'none'}; it must be CMD {json.dumps(svc.command)} "
                        f"with no ENTRYPOINT, as shared/deploy/topology.py says")

    # healthcheck
    hc = _last(line, "HEALTHCHECK")
    m = re.fullmatch(r"(?:--\S+\s+)*CMD\s+(.*)", hc.args) if hc else None
    probe = _exec_form(m.group(1)) if m else None
    if not probe or probe[:2] != ["agentforge", "health"]:
        problems.append(f"{path}: HEALTHCHECK must be CMD [\"agentforge\", \"health\", ...] (the gRPC health "
                        f"service), got {hc.args if hc else 'none'}")

    # runtime environment and volumes, as compose and k8s set them
    env, want = env_of(line), topology.common_env()
    for key in ("TORCH_EXTENSIONS_DIR", "HF_HOME", "WANDB_DIR", "TMPDIR", "AGENTFORGE_KERNEL_DIR"):
        if key not in env:
            problems.append(f"{path}: ENV {key} is not set; set it to {want[key]} (topology.common_env)")
    for key in sorted(env.keys() & want.keys()):
        if env[key] != want[key]:
            problems.append(f"{path}: ENV {key}={env[key]} but topology.common_env says {want[key]}")
    if not env.get("HOME", "").startswith(topology.CACHE_DIR + "/"):
        problems.append(f"{path}: ENV HOME={env.get('HOME')}: put it under {topology.CACHE_DIR} (writable)")
    volumes = {v for s in line for ins in s.instructions if ins.keyword == "VOLUME"
               for v in (_exec_form(ins.args) or ins.args.split())}
    need = {topology.CACHE_DIR} | ({topology.STATE_DIR} if svc.name == "coordinator" else set())
    if need - volumes:
        problems.append(f"{path}: VOLUME {sorted(need - volumes)} missing (the root filesystem is read-only)")
    if svc.name == "coordinator" and not env.get("AGENTFORGE_STATE", "").startswith(topology.STATE_DIR + "/"):
        problems.append(f"{path}: ENV AGENTFORGE_STATE must be a file under {topology.STATE_DIR}")

    # the kernel: built where g++ is, copied into the final stage, no compiler in the final stage's line
    builders = [s for s in all_stages[:-1] if any(
        i.keyword == "RUN" and f"python -m services.bitnet.core.kernel build {topology.KERNEL_DIR}" in i.args
        for i in s.instructions)]
    if not builders:
        problems.append(f"{path}: no build stage runs `python -m services.bitnet.core.kernel build "
                        f"{topology.KERNEL_DIR}`")
    copies = [i.args for i in final.instructions if i.keyword == "COPY" and "--from=" in i.args]
    for b in builders:
        if not any(i.keyword == "RUN" and re.search(r"\bg\+\+", i.args) for s in chain(all_stages, b)
                   for i in s.instructions):
            problems.append(f"{path}: stage '{b.name}' builds the kernel without installing g++")
        if not any(f"--from={b.name}" in c and f"{topology.KERNEL_DIR}/{KERNEL_SO}" in c
                   and f"{topology.KERNEL_DIR}/{KERNEL_STAMP}" in c for c in copies):
            problems.append(f"{path}: the final stage must COPY --from={b.name} {KERNEL_SO} and {KERNEL_STAMP} "
                            f"into {topology.KERNEL_DIR}/")
    for s in line:
        for ins in s.instructions:
            if ins.keyword == "RUN" and COMPILERS.search(ins.args):
                problems.append(f"{path}:{ins.line}: stage '{s.name}' (part of the final image) installs a "
                                f"compiler; build in a separate stage and COPY --from it")
    return problems


def shared_stage_problems(paths: list[Path]) -> list[str]:
    """Stages above the last must be identical across Dockerfiles of a kind, and `os` across all."""
    parsed = {p: stages(parse(p.read_text())) for p in paths}
    problems = []
    groups: dict[str, list[Path]] = {}
    for p, st in parsed.items():
        groups.setdefault(" ".join(s.name for s in st[:-1]), []).append(p)
    for key, group in groups.items():
        first = [(s.image, s.name, [(i.keyword, i.args) for i in s.instructions]) for s in parsed[group[0]][:-1]]
        for p in group[1:]:
            other = [(s.image, s.name, [(i.keyword, i.args) for i in s.instructions]) for s in parsed[p][:-1]]
            if other != first:
                problems.append(f"{p}: its shared stages ({key}) differ from {group[0]}'s; keep them identical "
                                f"so the images share their layers")
    os_stages = {p: [(i.keyword, i.args) for i in st[0].instructions] + [(st[0].image, st[0].name)]
                 for p, st in parsed.items()}
    reference = next(iter(os_stages.values()))
    problems += [f"{p}: its first stage differs from {paths[0]}'s; `os` is the one base of every image"
                 for p, v in os_stages.items() if v != reference]
    return problems


def ignored(patterns: list[str], path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = os.path.normpath(pattern.lstrip("!").strip("/"))
        rx = "".join(".*" if tok == "**" else "[^/]*" if tok == "*" else "[^/]" if tok == "?" else re.escape(tok)
                     for tok in re.split(r"(\*\*|\*|\?)", glob))
        if any(re.fullmatch(rx, c) for c in candidates):
            verdict = not negate
    return verdict


def dockerignore_problems(ignore_file: Path, dockerfiles: list[Path]) -> list[str]:
    patterns = [ln.strip() for ln in ignore_file.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    problems = [f"{ignore_file}: lets {p} into the build context; it must stay out"
                for p in (".env", ".venv/bin/python", ".git/config", "tests/conftest.py", ".agentforge/x")
                if not ignored(patterns, p)]
    for df in dockerfiles:
        for ins in parse(df.read_text()):
            if ins.keyword != "COPY" or "--from=" in ins.args:
                continue
            for src in shlex.split(ins.args)[:-1]:
                files = [src] if (ROOT / src).is_file() else [
                    str(f.relative_to(ROOT)) for f in (ROOT / src).rglob("*") if f.is_file()
                    and "__pycache__" not in f.parts and f.name != "Dockerfile"]   # not needed inside
                let_through = [f for f in files if not ignored(patterns, f)]
                if not files or len(let_through) != len(files):
                    problems.append(f"{df}:{ins.line}: COPY {src}: {ignore_file.name} keeps it out of the "
                                    f"build context (or it does not exist); the build would fail")
    return problems
