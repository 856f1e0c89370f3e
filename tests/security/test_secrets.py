"""Secrets never appear in logs or in what clients get back (DESIGN §8). A phase service runs as a real
process, the way containers run it (`python -m services.bitnet.main`), with a bearer token and S3
credentials in its environment and DEBUG logging; it is driven through auth failures, a bad request, a
job whose input was tampered with, and a job whose input does not exist. Then its whole stdout and stderr
(what `docker logs` would show, including anything that bypasses the logging handler), every file it wrote
(the W&B offline run included) and every object in its bucket are searched for the secret values, and so is
every error message and event the clients received.

(tests/telemetry/test_secret_redaction.py checks the redacting filter itself; tests/rpc/test_job_protocol.py
checks an in-process server's log records with the filter added by the test.)
"""

from __future__ import annotations

import io
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentforge.v1 import common_pb2
from shared.rpc.auth import TOKEN_ENV, with_token
from shared.storage import ArtifactRef
from tests.security.helpers import PHASES, ci_spec, new_bucket, run_job, s3_env, s3_store, stub_for

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files_containing(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{path}: {needle.decode()[:6]}…" for needle in needles if needle in data]
    return found


@pytest.fixture
def served_process(seaweed, tmp_path):
    """The bitnet service as a process on its own bucket; yields (channel, store, token, log path)."""
    token = f"af-{secrets.token_hex(16)}"
    bucket = new_bucket()
    store = s3_store(seaweed, bucket)  # the test's own view of the bucket (creates it)
    port = _free_port()
    work = tmp_path / "work"       # the process's working directory: whatever it writes lands here
    (work / "wandb").mkdir(parents=True)
    env = {**os.environ, **s3_env(seaweed, bucket), TOKEN_ENV: token, "AGENTFORGE_REQUIRE_AUTH": "1",
           "AGENTFORGE_LOG_LEVEL": "DEBUG", "WANDB_MODE": "offline", "WANDB_DIR": str(work / "wandb"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    log_path = tmp_path / "service.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "services.bitnet.main", "--port", str(port)], cwd=work,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=60)
        yield channel, store, token, log_path, work, proc
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_served_phase_never_logs_or_returns_its_secrets(served_process, seaweed):
    channel, store, token, log_path, work, proc = served_process
    definition = PHASES["bitnet"]
    told: list[str] = []           # everything a client was told

    def refused(call) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as info:
            call()
        told.append(info.value.details() or "")
        return info.value.code()

    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    # auth failures: no token, a wrong one
    for ch in (channel, with_token(channel, f"af-{secrets.token_hex(16)}")):
        assert refused(lambda: stub_for(definition, ch).Validate(ci_spec(definition), timeout=5)) \
            == grpc.StatusCode.UNAUTHENTICATED
    authed = with_token(channel, token)
    stub = stub_for(definition, authed)
    # a bad request
    spec = ci_spec(definition)
    field = next(f for f in spec.DESCRIPTOR.fields if f.type == f.TYPE_INT32 and not f.is_repeated)
    setattr(spec, field.name, -5)
    assert refused(lambda: stub.Validate(spec, timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
    # a job whose input was replaced in S3, and one whose input does not exist
    with store.open_artifact("fixtures/model", kind="model", name="model") as w:
        w.add_tensors("model.safetensors", {"w": torch.ones(4, 4)}, None)
    seaweed.client().put_object(store.bucket, "fixtures/model/model.safetensors", io.BytesIO(b"x" * 16), 16)
    missing = ArtifactRef(uri=store.uri_for("fixtures/missing"), sha256="0" * 64, size=1, name="model")
    for request_id, ref, why in (("tampered", w.ref, "corrupt"), ("missing", missing, "no artifact")):
        status, events = run_job(definition, authed, request_id, [ref])
        assert status.state == common_pb2.JOB_STATE_FAILED and why in status.error
        told += [status.error, *(e.message for e in events)]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0

    log = log_path.read_text(errors="replace")
    # the log is real and complete enough to have leaked: startup, DEBUG lines, both job failures
    assert "listening on" in log and " DEBUG " in log and log.count("failed") >= 2
    secret_values = [token, seaweed.secret_key]
    for value in secret_values:
        assert value not in log, "a secret reached the service's output"
        assert not [t for t in told if value in t], "a secret reached a client"
    needles = [v.encode() for v in secret_values]
    assert _files_containing(work, needles) == []          # the W&B offline run and anything else it wrote
    assert any(work.rglob("*")), "the service wrote nothing to search (did the jobs run?)"
    leaked = [k for k in store.list() if any(n in store.get_bytes(k) for n in needles)]
    assert leaked == []
