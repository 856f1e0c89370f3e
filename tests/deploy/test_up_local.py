"""The local-process mode (`agentforge up-local`, shared/deploy/local.py): the deployed shape as processes.

One cluster is started for the module (seven `agentforge serve` processes and SeaweedFS) and every property
is read from the real processes: /proc/<pid>/cmdline and environ, the gRPC health service, RPCs with and
without the token. The last cluster test stops it and checks that nothing is left. The CLI gets its own
cluster, stopped with SIGINT the way a user stops it.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import yaml

from agentforge.v1 import coordinator_pb2, coordinator_pb2_grpc, job_pb2
from shared.deploy import topology
from shared.deploy.local import LOCAL_ONLY_ENV, LocalCluster, LocalClusterError, _port_in_use
from shared.deploy.seaweed import SKIP_REASON, find_weed
from shared.rpc.auth import with_token
from shared.runtime.phase import get_phase

REPO = Path(__file__).resolve().parents[2]
DEPLOY_PREFIXES = ("AGENTFORGE_", "AWS_")
needs_weed = pytest.mark.skipif(find_weed() is None, reason=SKIP_REASON)
STRAY_ENV = {"OPENAI_API_KEY": "sk-local-test-key", "AGENTFORGE_STORE": "/not/this/store", "AWS_PROFILE": "nope"}


def proc_cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")


def proc_environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().rstrip(b"\0").decode().split("\0")
    return dict(p.split("=", 1) for p in pairs)


OPTIONAL_SECRETS = {name for names in topology.OPTIONAL_SECRET_ENV.values() for name in names}


def deploy_names(env: dict[str, str]) -> set[str]:
    """The names a deployment sets: AGENTFORGE_*, AWS_*, common_env's cache/W&B names, optional secrets."""
    return {k for k in env if k.startswith(DEPLOY_PREFIXES) or k in topology.common_env() or k in OPTIONAL_SECRETS}


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def coordinator_stub(cluster: LocalCluster, token: str | None):
    channel = with_token(grpc.insecure_channel(cluster.address("coordinator")), token)
    return coordinator_pb2_grpc.CoordinatorServiceStub(channel)


# -- topology against the code (no processes) -------------------------------------------------------------
def test_address_variables_are_the_ones_the_code_reads():
    from services.coordinator.app import address_env
    from shared.rpc.unit_client import ADDRESS_ENV

    for s in topology.SERVICES:
        if s.phase is not None:
            assert s.address_env == address_env(get_phase(s.phase).service), s.name
    assert topology.COORDINATOR_ADDR_ENV == ADDRESS_ENV
    coordinator = topology.service_env(topology.service("coordinator"))
    assert {k for k in coordinator if k.endswith("_ADDR")} == {s.address_env for s in topology.SERVICES if s.phase}
    for name in topology.COORDINATOR_CLIENTS:
        assert topology.service_env(topology.service(name))[ADDRESS_ENV] == f"coordinator:{topology.GRPC_PORT}"


def test_s3_server_reexports_the_shared_seaweedfs_helper():
    import shared.deploy.seaweed as shared_seaweed
    import tests.s3_server as s3_server

    for name in ("SeaweedServer", "find_weed", "free_ports", "SKIP_REASON"):
        assert getattr(s3_server, name) is getattr(shared_seaweed, name), name
    assert set(s3_server.__all__) == {"SeaweedServer", "find_weed", "free_ports", "SKIP_REASON"}


def test_bad_arguments_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="token"):
        LocalCluster(tmp_path, token="short")
    with pytest.raises(ValueError, match="services"):
        LocalCluster(tmp_path, services=["coordinator", "nope"])
    with pytest.raises(ValueError, match="base_port"):
        LocalCluster(tmp_path, base_port=80)


@needs_weed
def test_secrets_are_generated_once_and_kept_with_the_directory(tmp_path):
    LocalCluster(tmp_path)._prepare()   # the secrets step of start(), without processes
    token, creds = (tmp_path / "token").read_text(), (tmp_path / "s3-credentials.json").read_text()
    assert len(token.strip()) >= 32
    again = LocalCluster(tmp_path)
    again._prepare()
    assert again.token == token.strip() and (tmp_path / "s3-credentials.json").read_text() == creds
    given = LocalCluster(tmp_path, token="t" * 20)
    given._prepare()
    assert (tmp_path / "token").read_text().strip() == "t" * 20
    (tmp_path / "token").write_text("short\n")
    with pytest.raises(ValueError, match="shorter than 16"):
        LocalCluster(tmp_path)._prepare()


# -- one cluster for the module -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if find_weed() is None:
        pytest.skip(SKIP_REASON)
    c = LocalCluster(tmp_path_factory.mktemp("up-local"), ready_timeout_s=90)
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:   # a shell's settings: only the optional secret gets through
        for name, value in STRAY_ENV.items():
            mp.setenv(name, value)
        c.start()
    print(f"\nlocal cluster SERVING in {time.monotonic() - started:.1f} s")
    yield c
    c.stop()


@pytest.mark.s3
def test_every_service_answers_serving(cluster):
    assert cluster.services == [s.name for s in topology.SERVICES]
    assert len({cluster.address(s) for s in cluster.services}) == len(topology.SERVICES)
    for name in cluster.services:
        assert cluster.serving(name), name


@pytest.mark.s3
def test_rpcs_need_the_token(cluster):
    with pytest.raises(grpc.RpcError) as no_token:
        coordinator_stub(cluster, None).ListRuns(coordinator_pb2.ListRunsRequest(), timeout=10)
    assert no_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as wrong:
        coordinator_stub(cluster, "x" * 43).ListRuns(coordinator_pb2.ListRunsRequest(), timeout=10)
    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert list(coordinator_stub(cluster, cluster.token).ListRuns(coordinator_pb2.ListRunsRequest(),
                                                                   timeout=10).runs) == []
    for s in topology.SERVICES:   # every phase service: refused without the token, answered with it
        if s.phase is None:
            continue
        method = f"/{get_phase(s.phase).grpc_service}/Get"
        for token, code in ((None, grpc.StatusCode.UNAUTHENTICATED), (cluster.token, grpc.StatusCode.NOT_FOUND)):
            get = with_token(grpc.insecure_channel(cluster.address(s.name)), token).unary_unary(
                method, request_serializer=job_pb2.JobRef.SerializeToString,
                response_deserializer=job_pb2.JobStatus.FromString)
            with pytest.raises(grpc.RpcError) as err:
                get(job_pb2.JobRef(job_id="no-such-job"), timeout=10)
            assert err.value.code() == code, (s.name, token is not None)


@pytest.mark.s3
def test_each_child_runs_the_container_command(cluster):
    for s in topology.SERVICES:
        argv = proc_cmdline(cluster.pid(s.name))
        # the `agentforge` script runs through its shebang: [python, .../agentforge, serve, <name>]
        tail = argv[-len(s.command):]
        assert Path(tail[0]).name == s.command[0] and tail[1:] == s.command[1:], argv


@pytest.mark.s3
def test_each_child_gets_the_deployment_env_names(cluster):
    for s in topology.SERVICES:
        env = proc_environ(cluster.pid(s.name))
        expected = {*topology.common_env(), *topology.SECRET_ENV, *topology.service_env(s), *LOCAL_ONLY_ENV,
                    *topology.OPTIONAL_SECRET_ENV.get(s.name, ())}
        assert deploy_names(env) == expected, s.name
        assert env["AGENTFORGE_HOST"] == "127.0.0.1" and cluster.address(s.name).endswith(":" + env["AGENTFORGE_PORT"])
        assert env["AGENTFORGE_S3_ENDPOINT"] == cluster.s3_endpoint
        assert env["AGENTFORGE_REQUIRE_AUTH"] == "1" and env["AGENTFORGE_TOKEN"] == cluster.token
        assert env["AGENTFORGE_STORE"] == topology.STORE_URI
        for name, value in topology.common_env().items():   # container paths rebased under DIR
            if value.startswith("/"):
                assert Path(env[name]).is_relative_to(cluster.dir), name
        for target in (t for src, t, _ in topology.CONNECTIONS if src == s.name and t != topology.MINIO):
            key = topology.service(target).address_env or topology.COORDINATOR_ADDR_ENV
            assert env[key] == cluster.address(target), (s.name, key)
    assert Path(proc_environ(cluster.pid("coordinator"))["AGENTFORGE_STATE"]).is_relative_to(cluster.dir)
    # the teacher API key reaches reasoning-data only (as in compose); the shell's AWS_PROFILE reaches nobody
    assert proc_environ(cluster.pid("reasoning-data"))["OPENAI_API_KEY"] == STRAY_ENV["OPENAI_API_KEY"]


@pytest.mark.s3
def test_env_names_equal_compose(cluster):
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    for s in topology.SERVICES:
        local = deploy_names(proc_environ(cluster.pid(s.name))) - set(LOCAL_ONLY_ENV)
        assert local == set(compose[s.name]["environment"]), s.name


@pytest.mark.s3
def test_secrets_are_private_files_and_the_env_file_reaches_the_cluster(cluster):
    assert cluster.dir.stat().st_mode & 0o777 == 0o700
    for name in ("token", "s3-credentials.json", "env"):
        assert (cluster.dir / name).stat().st_mode & 0o777 == 0o600, name
    assert (cluster.dir / "token").read_text().strip() == cluster.token
    sourced = subprocess.run(["bash", "-c", f"source {cluster.env_path} && env -0"], capture_output=True,
                             check=True, env={"PATH": os.environ["PATH"]}).stdout.decode()
    env = dict(p.split("=", 1) for p in sourced.rstrip("\0").split("\0"))
    assert {k: env[k] for k in cluster.env_for_client()} == cluster.env_for_client()


@pytest.mark.s3
def test_kill_9_is_visible_and_restart_brings_the_service_back(cluster):
    old = cluster.pid("coordinator")
    cluster.kill("coordinator", signal.SIGKILL)
    assert cluster.pid("coordinator") is None and gone(old)
    assert cluster.exited()["coordinator"] == -signal.SIGKILL
    assert not cluster.serving("coordinator")
    new = cluster.restart("coordinator")
    assert new != old and cluster.pid("coordinator") == new and cluster.serving("coordinator")
    assert "coordinator" not in cluster.exited()
    assert proc_cmdline(new)[-2:] == ["serve", "coordinator"]
    coordinator_stub(cluster, cluster.token).ListRuns(coordinator_pb2.ListRunsRequest(), timeout=10)


@pytest.mark.s3
def test_logs_hold_no_secret(cluster):
    secret = cluster.env_for_client()["AWS_SECRET_ACCESS_KEY"]
    logs = [p for p in cluster.log_dir.rglob("*") if p.is_file()]
    assert {f"{s}.log" for s in cluster.services} <= {p.name for p in logs}
    assert any(p.is_relative_to(cluster.log_dir / "seaweedfs") for p in logs)
    for p in logs:
        text = p.read_bytes()
        for needle in (cluster.token, secret, STRAY_ENV["OPENAI_API_KEY"]):
            assert needle.encode() not in text, p


@pytest.mark.s3
def test_stop_leaves_no_process_and_frees_the_ports(cluster):   # last: it stops the module's cluster
    pids = [cluster.pid(s) for s in cluster.services]
    ports = [int(cluster.address(s).rsplit(":", 1)[1]) for s in cluster.services]
    s3_port = int(cluster.s3_endpoint.rsplit(":", 1)[1])
    cluster.stop()
    assert all(cluster.pid(s) is None for s in cluster.services)
    assert all(gone(pid) for pid in pids)
    for pid in pids:   # nothing left in their process groups either
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert not any(_port_in_use(p) for p in [*ports, s3_port])


# -- failures and the command line ------------------------------------------------------------------------
@needs_weed
@pytest.mark.s3
def test_a_service_dying_at_startup_stops_everything(tmp_path):
    c = LocalCluster(tmp_path, services=["dataset", "cognate"],
                     extra_env={"cognate": {"AGENTFORGE_TORCH_THREADS": "0"}})   # `serve` refuses 0 threads
    with pytest.raises(LocalClusterError) as err:
        c.start()
    assert "cognate exited with code 2" in str(err.value) and str(c.log_path("cognate")) in str(err.value)
    assert "AGENTFORGE_TORCH_THREADS" in str(err.value)   # the log tail says why
    assert c.pid("dataset") is None and set(c.exited()) == {"dataset", "cognate"}
    assert not _port_in_use(int(c.address("dataset").rsplit(":", 1)[1]))


@needs_weed
@pytest.mark.s3
def test_cli_up_local_prints_how_to_use_it_and_stops_on_sigint(tmp_path):
    d = tmp_path / "cluster"
    err = (tmp_path / "stderr").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "up-local", "--dir", str(d), "--base-port", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    out: list[str] = []
    try:
        while not out or not out[-1].startswith("Ctrl-C stops"):
            out.append(lines.get(timeout=90))
        addr = re.search(r"AGENTFORGE_COORDINATOR_ADDR=(\S+)", "".join(out)).group(1)
        pids = [int(p) for p in re.findall(r" pid (\d+) ", "".join(out))]
        assert len(pids) == len(topology.SERVICES)
        assert f"AGENTFORGE_TOKEN=$(cat {d}/token)" in "".join(out) and f"source {d}/env" in "".join(out)
        listed = subprocess.run(["bash", "-c", f"source {d}/env && {sys.executable} -m shared.cli runs list"],
                                cwd=REPO, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert f"AGENTFORGE_COORDINATOR_ADDR={addr}" in (d / "env").read_text()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.close()
    reader.join(timeout=10)
    while not lines.empty():
        out.append(lines.get_nowait())
    printed = "".join(out) + (tmp_path / "stderr").read_text()
    assert "stopped" in printed
    secret = (d / "s3-credentials.json").read_text()
    token = (d / "token").read_text().strip()
    assert token not in printed and re.search(r'"secret_key": "([^"]+)"', secret).group(1) not in printed
    assert all(gone(pid) for pid in pids)
