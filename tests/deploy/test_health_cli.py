"""`agentforge health` (the images' HEALTHCHECK) against a real in-process gRPC server: exit 0 only when
the server answers SERVING; 1 for NOT_SERVING, an unknown service or an unreachable address (never 2, which
Docker reserves); no token needed even when the server requires one."""

from __future__ import annotations

import socket
import time

import pytest

from shared.cli import build_parser, main
from shared.health_cli import default_address
from shared.rpc.server import build_server

TOKEN = "t" * 32


@pytest.fixture
def server():
    running = build_server([], token=TOKEN, require_auth=True)
    yield running
    running.stop(grace=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serving_server_exits_0_without_a_token(server, capsys, monkeypatch):
    monkeypatch.delenv("AGENTFORGE_TOKEN", raising=False)     # the probe carries no secret
    assert main(["health", "--address", server.address]) == 0
    assert "SERVING" in capsys.readouterr().out


def test_not_serving_exits_1(server, capsys):
    server.set_serving(False)
    assert main(["health", "--address", server.address]) == 1
    assert "NOT_SERVING" in capsys.readouterr().err


def test_unknown_service_exits_1(server, capsys):
    assert main(["health", "--address", server.address, "--service", "agentforge.v1.Nope"]) == 1
    assert "unknown service 'agentforge.v1.Nope'" in capsys.readouterr().err


def test_unreachable_exits_1_within_the_timeout(capsys):
    started = time.monotonic()
    assert main(["health", "--address", f"127.0.0.1:{_free_port()}", "--timeout", "2"]) == 1
    assert time.monotonic() - started < 5
    assert "unreachable" in capsys.readouterr().err


def test_bad_timeout_is_refused(server, capsys):
    assert main(["health", "--address", server.address, "--timeout", "0"]) == 1
    assert "--timeout" in capsys.readouterr().err


def test_default_address_follows_agentforge_port(monkeypatch):
    monkeypatch.setenv("AGENTFORGE_PORT", "50123")
    assert build_parser().parse_args(["health"]).address == "127.0.0.1:50123"
    assert default_address({}) == "127.0.0.1:50051"
