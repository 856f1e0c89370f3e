"""`agentforge serve <name>` as a real process: comes up, answers health, refuses without a token when
auth is required, and stops cleanly on SIGTERM."""

import os
import signal
import socket
import subprocess
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp_path, *args, env_extra=None):
    port = free_port()
    env = {**os.environ, "AGENTFORGE_STORE": str(tmp_path / "store"), **(env_extra or {})}
    proc = subprocess.Popen([sys.executable, "-m", "services.evomerge.main", "--port", str(port), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, port


def test_serve_answers_health_and_stops_on_sigterm(tmp_path):
    proc, port = start(tmp_path, env_extra={"AGENTFORGE_TOKEN": "x" * 24, "AGENTFORGE_REQUIRE_AUTH": "1"})
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=60)
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="agentforge.v1.EvoMergeService"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_to_start_without_a_token_when_auth_is_required(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "AGENTFORGE_TOKEN"}
    env.update({"AGENTFORGE_REQUIRE_AUTH": "1", "AGENTFORGE_STORE": str(tmp_path / "s")})
    result = subprocess.run([sys.executable, "-m", "shared.cli", "serve", "evomerge", "--port", "0"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "AGENTFORGE_TOKEN" in result.stderr and "no token" in result.stderr
