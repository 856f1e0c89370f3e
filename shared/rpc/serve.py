"""Running one phase service as a process: `agentforge serve <name>` (the same command containers run).

Settings come from the environment, so compose/k8s and local processes configure services the same way:
  AGENTFORGE_STORE          artifact store URI (file:///path, a plain path or s3://bucket; default .agentforge/store)
  AGENTFORGE_TOKEN          bearer token (required when AGENTFORGE_REQUIRE_AUTH=1)
  AGENTFORGE_REQUIRE_AUTH   1 to refuse to start without a token (compose and k8s set it)
  AGENTFORGE_MAX_MESSAGE_BYTES  gRPC message size limit (default 16 MiB)
  AGENTFORGE_TORCH_THREADS  torch intra-op threads (default 1)
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from shared.errors import InvalidSpecError
from shared.rpc.auth import token_from_env
from shared.rpc.job_servicer import binding_for
from shared.rpc.server import RunningServer, build_server, max_message_bytes
from shared.runtime.phase import PhaseDefinition, get_phase
from shared.runtime.registry import JobRegistry
from shared.storage.factory import store_from_uri

log = logging.getLogger(__name__)

DEFAULT_STORE = ".agentforge/store"   # a plain path: relative to the working directory


def env_flag(name: str, env=os.environ) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise InvalidSpecError(f"must be 1/0, true/false, yes/no or on/off, got {raw!r}", field=name)


def torch_threads_from_env(env=os.environ) -> int:
    raw = env.get("AGENTFORGE_TORCH_THREADS", "1")
    try:
        threads = int(raw)
    except ValueError:
        raise InvalidSpecError(f"must be an integer, got {raw!r}", field="AGENTFORGE_TORCH_THREADS") from None
    if threads < 1:
        raise InvalidSpecError(f"must be >= 1, got {threads}", field="AGENTFORGE_TORCH_THREADS")
    return threads


def start_phase_server(definition: PhaseDefinition, *, host: str = "127.0.0.1", port: int = 0,
                       store_uri: str | None = None, env=os.environ) -> tuple[RunningServer, JobRegistry]:
    """Start the service for one phase (used by `serve` and by in-process tests)."""
    store = store_from_uri(store_uri or env.get("AGENTFORGE_STORE") or DEFAULT_STORE, env=env)
    registry = JobRegistry(definition, store)
    server = build_server([binding_for(registry)], host=host, port=port, token=token_from_env(env),
                          require_auth=env_flag("AGENTFORGE_REQUIRE_AUTH", env),
                          max_message=max_message_bytes(env))
    return server, registry


def serve(name: str, *, host: str, port: int, store_uri: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT; then report NOT_SERVING, cancel jobs and stop gracefully."""
    import torch

    torch.set_num_threads(torch_threads_from_env())
    if name == "coordinator":
        from services.coordinator.app import start_coordinator_server

        server, coordinator = start_coordinator_server(host=host, port=port, store_uri=store_uri)
        shutdown = coordinator.stop
    else:
        definition = get_phase(name)
        server, registry = start_phase_server(definition, host=host, port=port, store_uri=store_uri)
        if not definition.available:
            log.warning("%s is not implemented yet (issue #%d): Validate works, Submit is refused",
                        definition.phase, definition.issue)

        background = definition.background_factory(registry.store) if definition.background_factory else None

        def shutdown() -> None:
            if background is not None:
                background.stop()
            registry.shutdown(cancel_running=True, wait=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"{name} listening on {host}:{server.port}", flush=True)
    stop.wait()
    log.info("shutting down %s", name)
    server.set_serving(False)
    shutdown()
    server.stop(grace=5.0)


def main_for_service(name: str, argv: list[str] | None = None) -> int:
    """Entry point used by services/<name>/main.py."""
    from shared.cli import main as cli_main

    return cli_main(["serve", name, *(sys.argv[1:] if argv is None else argv)])
