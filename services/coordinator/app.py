"""Composition root of the coordinator: embedded (in-process phase runners, what `make run` uses) or
services (gRPC clients to the phase services), with the same state machine either way."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import grpc

from services.coordinator.core.engine import Coordinator
from services.coordinator.core.executors import InProcessExecutor
from services.coordinator.core.state import StateStore
from services.coordinator.remote import GrpcExecutor
from shared.errors import InvalidSpecError
from shared.rpc.auth import token_from_env, with_token
from shared.rpc.server import channel_options
from shared.runtime.phase import discover_phases
from shared.runtime.registry import JobRegistry
from shared.storage import ArtifactStore

log = logging.getLogger(__name__)


def embedded_coordinator(state_path: str | Path, store: ArtifactStore, *, accelerators: int, lease_ttl_s: float,
                         unit_ttl_s: float) -> tuple[Coordinator, dict[str, JobRegistry]]:
    phases = discover_phases()
    registries = {name: JobRegistry(d, store) for name, d in phases.items()}
    executors = {name: InProcessExecutor(r) for name, r in registries.items()}
    coordinator = Coordinator(StateStore(state_path), store, phases, executors, accelerators=accelerators,
                              lease_ttl_s=lease_ttl_s, unit_ttl_s=unit_ttl_s)
    # Phase runners of this process that scale out (reasoning_data) use this coordinator's pool and budgets.
    from services.coordinator.core.unit_service import coordinator_unit_service
    from shared.runtime.units import set_local_unit_service

    set_local_unit_service(coordinator_unit_service(coordinator))
    return coordinator, registries


def address_env(service: str) -> str:
    return f"AGENTFORGE_{service.upper()}_ADDR"


def remote_coordinator(state_path: str | Path, store: ArtifactStore, env=os.environ) -> Coordinator:
    """Phase services at AGENTFORGE_<SERVICE>_ADDR (e.g. AGENTFORGE_COGNATE_ADDR=cognate:50051)."""
    phases = discover_phases()
    token = token_from_env(env)
    executors = {}
    for name, d in phases.items():
        addr = env.get(address_env(d.service), "")
        if not addr:
            raise InvalidSpecError(f"address of the {d.service} service is not set", field=address_env(d.service))
        channel = with_token(grpc.insecure_channel(addr, options=channel_options()), token)
        executors[name] = GrpcExecutor(d, channel)

    def number(name: str, default: str, cast):
        raw = env.get(name, default)
        try:
            value = cast(raw)
        except ValueError:
            raise InvalidSpecError(f"must be a number, got {raw!r}", field=name) from None
        if value <= 0:
            raise InvalidSpecError(f"must be > 0, got {raw!r}", field=name)
        return value

    return Coordinator(StateStore(state_path), store, phases, executors,
                       accelerators=number("AGENTFORGE_ACCELERATORS", "1", int),
                       lease_ttl_s=number("AGENTFORGE_LEASE_TTL_S", "30", float),
                       unit_ttl_s=number("AGENTFORGE_UNIT_TTL_S", "60", float))


DEFAULT_STATE = ".agentforge/coordinator.sqlite"


def start_coordinator_server(*, host: str = "127.0.0.1", port: int = 0, state_path: str | None = None,
                             store_uri: str | None = None, env=os.environ, poll_interval_s: float = 0.5):
    """Start the gRPC coordinator (services mode) and its scheduling loop; returns (server, coordinator)."""
    from agentforge.v1 import coordinator_pb2_grpc
    from services.coordinator.servicer import CoordinatorServicer
    from shared.rpc.serve import DEFAULT_STORE, env_flag
    from shared.rpc.server import ServiceBinding, build_server, max_message_bytes
    from shared.storage.factory import store_from_uri

    store = store_from_uri(store_uri or env.get("AGENTFORGE_STORE") or DEFAULT_STORE, env=env)
    path = Path(state_path or env.get("AGENTFORGE_STATE") or DEFAULT_STATE)
    path.parent.mkdir(parents=True, exist_ok=True)
    coordinator = remote_coordinator(path, store, env)
    binding = ServiceBinding(coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server,
                             CoordinatorServicer(coordinator), "agentforge.v1.CoordinatorService")
    server = build_server([binding], host=host, port=port, token=token_from_env(env),
                          require_auth=env_flag("AGENTFORGE_REQUIRE_AUTH", env), max_message=max_message_bytes(env))
    coordinator.start(poll_interval_s)
    return server, coordinator
