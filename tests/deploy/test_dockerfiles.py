"""The seven service Dockerfiles, checked statically (no Docker engine here, so no image is built): hadolint,
then the properties the deployment depends on, each against shared/deploy/topology.py:

- the final stage derives from the CUDA base (GPU services) or the slim CPU base, over the shared `os` stage,
  and the stages above the last are identical across Dockerfiles of a kind (one shared set of layers);
- every RUN that installs Python packages goes through scripts/install.sh, with the torch build of its kind;
- the command is exactly topology's `agentforge serve <name>`; the HEALTHCHECK is `agentforge health`;
- the last USER is uid 10001, not root; no ENV/ARG names a secret;
- the caches (and the coordinator's state) are on volumes, with the same paths compose and k8s are given;
- the BitNet kernel is built in a build stage that has g++, and only its output reaches the final stage;
- .dockerignore lets every COPY source through and keeps .env, .venv and .git out.
Each check is also shown to catch a deliberately broken copy. scripts/install.sh's image options and
`make images` run against fakes of python and docker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared.deploy import topology
from shared.deploy.topology import SERVICES
from tests.deploy.dockerfile_checks import (KERNEL_SO, KERNEL_STAMP, ROOT, check_dockerfile, dockerignore_problems,
                                           shared_stage_problems)


# -- the real files ---------------------------------------------------------------------------------------
DOCKERFILES = {s.name: ROOT / s.dockerfile for s in SERVICES}


def _hadolint() -> str:
    found = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert found, "hadolint is missing: install the test tools (scripts/install.sh --dev, requirements-dev.txt)"
    return found


def hadolint(path: Path, tmp_home: Path) -> subprocess.CompletedProcess:
    # A clean HOME so a personal hadolint config cannot loosen the check; run from the repo root, where a
    # .hadolint.yaml would apply (there is none: no rule is ignored).
    env = {**os.environ, "HOME": str(tmp_home), "XDG_CONFIG_HOME": str(tmp_home)}
    return subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "info", str(path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)


def test_every_service_has_a_dockerfile_and_nothing_else_does():
    assert all(p.is_file() for p in DOCKERFILES.values()), [str(p) for p in DOCKERFILES.values() if not p.is_file()]
    assert sorted(ROOT.glob("services/*/Dockerfile")) == sorted(DOCKERFILES.values())


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name, tmp_path):
    result = hadolint(DOCKERFILES[name], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("broken, rule", [
    (("FROM python:3.11.14-slim-bookworm AS os", "FROM python AS os"), "DL3006"),   # unpinned base image
    (("USER 10001:10001", "USER root"), "DL3002"),                                   # root at the end
    (("libgomp1=12.2.0-14+deb12u1", "libgomp1"), "DL3008"),                          # unpinned apt package
    (("EXPOSE 50051", "EXPOS 50051"), "unexpected"),                                 # not an instruction
])
def test_hadolint_catches_a_broken_copy(broken, rule, tmp_path):
    old, new = broken
    text = DOCKERFILES["bitnet"].read_text()
    assert old in text
    bad = tmp_path / "Dockerfile"
    bad.write_text(text.replace(old, new))
    result = hadolint(bad, tmp_path)
    assert result.returncode != 0 and rule in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize("svc", SERVICES, ids=lambda s: s.name)
def test_dockerfile_properties(svc):
    assert check_dockerfile(DOCKERFILES[svc.name], svc) == []


def test_shared_stages_are_identical():
    assert shared_stage_problems(list(DOCKERFILES.values())) == []


def test_dockerignore_passes_every_copy_source_and_keeps_secrets_out():
    assert dockerignore_problems(ROOT / ".dockerignore", list(DOCKERFILES.values())) == []


BROKEN = [  # (service, text in the real file, replacement, what the check must say)
    ("cognate", "FROM app AS cognate", "FROM os AS cognate", "must derive from 'cuda-base'"),
    ("dataset", "FROM cpu-base AS app", "FROM os AS app", "must derive from 'cpu-base'"),
    ("dataset", "--torch cpu --deps-only", "--torch cuda --deps-only", "needs --torch cpu"),
    ("bitnet", "USER 10001:10001", "USER root", "non-root"),
    ("bitnet", "USER 10001:10001", "USER 10001:10001\nUSER 0", "non-root"),
    ("bitnet", "USER 10001:10001", "USER agentforge", "numeric uid"),
    ("quietstar", 'CMD ["agentforge", "serve", "quietstar"]', 'CMD ["agentforge", "serve", "bitnet"]',
     "must be CMD"),
    ("evomerge", 'CMD ["agentforge"', 'ENTRYPOINT ["/bin/sh", "-c"]\nCMD ["agentforge"', "ENTRYPOINT"),
    ("reasoning-data", 'CMD ["agentforge", "health", "--timeout", "5"]', 'CMD ["python", "-c", "1"]',
     "HEALTHCHECK must be"),
    ("coordinator", "USER 10001:10001", "RUN pip install requests==2.32.3\nUSER 10001:10001",
     "without scripts/install.sh"),
    ("dataset", "USER 10001:10001", "RUN python -m pip install --no-cache-dir x==1\nUSER 10001:10001",
     "without scripts/install.sh"),
    ("cognate", "USER 10001:10001", "ENV HF_TOKEN=hf_abc\nUSER 10001:10001", "looks like a secret"),
    ("cognate", "USER 10001:10001", "ARG AWS_SECRET_ACCESS_KEY\nUSER 10001:10001", "looks like a secret"),
    ("cognate", "USER 10001:10001", "COPY .env .env\nUSER 10001:10001", "copies .env"),
    ("cognate", "TMPDIR=/cache/tmp", "TMPDIR=/tmp", "topology.common_env says /cache/tmp"),
    ("evomerge", 'VOLUME ["/cache"]', "", "VOLUME ['/cache'] missing"),
    ("coordinator", 'VOLUME ["/cache", "/var/lib/agentforge"]', 'VOLUME ["/cache"]', "/var/lib/agentforge"),
    ("bitnet", "--from=kernel", "--from=app", "must COPY --from=kernel"),
    ("bitnet", "python -m services.bitnet.core.kernel build", "python -m services.bitnet.core.kernel --help",
     "no build stage runs"),
    ("bitnet", "USER 10001:10001", "RUN apt-get install -y --no-install-recommends g++=4:12.2.0-3\n"
     "USER 10001:10001", "installs a compiler"),
]


@pytest.mark.parametrize("name, old, new, says", BROKEN, ids=[f"{b[0]}-{i}" for i, b in enumerate(BROKEN)])
def test_checks_catch_a_broken_copy(name, old, new, says, tmp_path):
    text = DOCKERFILES[name].read_text()
    assert old in text, f"the broken-copy test no longer matches {DOCKERFILES[name]}; update it"
    bad = tmp_path / "Dockerfile"
    bad.write_text(text.replace(old, new, 1))
    problems = check_dockerfile(bad, topology.service(name))
    assert any(says in p for p in problems), problems


def test_shared_stage_check_catches_drift(tmp_path):
    paths = []
    for svc in SERVICES:
        text = DOCKERFILES[svc.name].read_text()
        if svc.name == "quietstar":                   # one GPU Dockerfile's base stage drifts
            text = text.replace("NVIDIA_DRIVER_CAPABILITIES=compute,utility", "NVIDIA_DRIVER_CAPABILITIES=all")
        if svc.name == "dataset":                     # one CPU Dockerfile's `os` stage drifts
            text = text.replace("PYTHONUNBUFFERED=1", "PYTHONUNBUFFERED=0")
        paths.append(tmp_path / svc.name)
        paths[-1].write_text(text)
    problems = shared_stage_problems(paths)
    assert any("quietstar: its shared stages" in p for p in problems), problems
    assert any("dataset: its first stage differs" in p for p in problems), problems


@pytest.mark.parametrize("edit, says", [
    (lambda t: t.replace("!shared/\n", ""), "COPY shared"),
    (lambda t: t.replace("*\n", "", 1), "lets .env into"),
    (lambda t: t + "!.env\n", "lets .env into"),
])
def test_dockerignore_check_catches_a_broken_copy(edit, says, tmp_path):
    bad = tmp_path / ".dockerignore"
    bad.write_text(edit((ROOT / ".dockerignore").read_text()))
    problems = dockerignore_problems(bad, list(DOCKERFILES.values()))
    assert any(says in p for p in problems), problems


def test_kernel_file_names_match_kernel_module():
    src = (ROOT / "services/bitnet/core/kernel.py").read_text()
    assert f'_EXT_NAME = "{KERNEL_SO[:-3]}"' in src and f'_STAMP = "{KERNEL_STAMP}"' in src


# -- scripts/install.sh's image options, against a fake interpreter that records its calls -----------------
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; fi
exit 0
"""


def _install(tmp_path: Path, *args: str) -> tuple[int, list[str], str]:
    fake, log = tmp_path / "python3.11", tmp_path / "calls.log"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log.touch()
    before = len(log.read_text().splitlines())
    result = subprocess.run(["bash", str(ROOT / "scripts/install.sh"), "--venv", str(tmp_path / "venv"), *args],
                            env={**os.environ, "PYTHON": str(fake), "FAKE_LOG": str(log)},
                            capture_output=True, text=True, timeout=60)
    pip = [ln for ln in log.read_text().splitlines()[before:] if ln.startswith("-m pip")]
    return result.returncode, pip, result.stderr


def test_install_default_is_unchanged(tmp_path):
    rc, pip, err = _install(tmp_path)
    assert rc == 0, err
    assert pip == ["-m pip install --quiet --upgrade pip", "-m pip install --quiet torch==2.13.0",
                   f"-m pip install --quiet -r {ROOT}/requirements.txt", f"-m pip install --quiet --no-deps -e {ROOT}"]
    assert _install(tmp_path)[1] == []                # the stamp: a second call installs nothing


@pytest.mark.parametrize("torch, index", [("cuda", "cu128"), ("cpu", "cpu"), ("cu126", "cu126")])
def test_install_torch_index_and_deps_only(torch, index, tmp_path):
    rc, pip, err = _install(tmp_path, "--torch", torch, "--deps-only")
    assert rc == 0, err
    assert f"-m pip install --quiet --index-url https://download.pytorch.org/whl/{index} torch==2.13.0" in pip
    assert not any(" -e " in p for p in pip)          # deps only: the project comes in a later layer
    rc, pip, err = _install(tmp_path, "--torch", torch)   # the full install after it is not skipped
    assert rc == 0 and pip[-1] == f"-m pip install --quiet --no-deps -e {ROOT}", err


@pytest.mark.parametrize("args", [("--torch", "rocm"), ("--torch", "cu12x"), ("--torch",)])
def test_install_refuses_an_unknown_torch_build(args, tmp_path):
    rc, pip, err = _install(tmp_path, *args)
    assert rc == 2 and "--torch" in err and pip == []


# -- make images, against a fake docker --------------------------------------------------------------------
def test_make_images_builds_every_service_as_topology_names_it(tmp_path):
    if shutil.which("make") is None:
        pytest.fail("make is missing; the Makefile is how this project is built")
    log = tmp_path / "docker.log"
    fake = tmp_path / "docker"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    result = subprocess.run(["make", "-s", "images"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == [f"build -f {s.dockerfile} -t {s.image} ." for s in SERVICES]
