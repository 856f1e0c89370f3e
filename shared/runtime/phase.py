"""A phase as the runtime sees it, and discovery of the phases under services/.

Each phase service folder has a `phase.py` exporting `PHASE = PhaseDefinition(...)`: its config section,
its proto service and spec messages, the phases it depends on, and a factory for its runner (None until
the phase is implemented). Nothing else lists phases, so adding one means adding a folder under
services/, a proto file and its profile entries.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from pydantic import BaseModel

from shared.errors import NotFoundError, UnavailablePhaseError


class PhaseRunner(Protocol):
    """The core of a phase: pure domain code (torch, never grpc)."""

    def validate(self, spec: Any) -> list[str]:
        """Deeper checks than the schema (e.g. files exist); return warnings or raise InvalidSpecError."""

    def run(self, ctx: Any) -> Any:
        """Do the work; return a shared.runtime.JobResult."""


@dataclass(frozen=True)
class PhaseDefinition:
    phase: str                        # config section and graph node name, e.g. "reasoning_data"
    service: str                      # folder under services/ and `agentforge serve` name
    title: str
    config_model: type[BaseModel]     # the pydantic section class
    grpc_service: str                 # full proto service name, e.g. "agentforge.v1.CognateService"
    spec_message: type                # proto class of the typed spec
    submit_message: type              # proto class {context, spec}
    add_servicer: Callable[[Any, Any], None]
    depends_on: tuple[str, ...]
    issue: int                        # the issue that implements it
    runner_factory: Callable[[], PhaseRunner] | None = None
    # Services mode only: something the service runs beside its job server (a scale-out worker), given the
    # artifact store; returns an object with stop(), or None when there is nothing to run.
    background_factory: Callable[[Any], Any] | None = None

    @property
    def available(self) -> bool:
        return self.runner_factory is not None

    def make_runner(self) -> PhaseRunner:
        if self.runner_factory is None:
            raise UnavailablePhaseError(self.phase, self.issue)
        return self.runner_factory()


def discover_phases() -> dict[str, PhaseDefinition]:
    """Import services/*/phase.py and return {phase name: definition} in dependency order."""
    import services

    found: dict[str, PhaseDefinition] = {}
    for info in sorted(pkgutil.iter_modules(services.__path__), key=lambda m: m.name):
        if not info.ispkg:
            continue
        try:
            module = importlib.import_module(f"services.{info.name}.phase")
        except ModuleNotFoundError as exc:
            if exc.name == f"services.{info.name}.phase":
                continue  # a service that is not a phase (e.g. the coordinator)
            raise
        definition: PhaseDefinition = module.PHASE
        found[definition.phase] = definition
    return {name: found[name] for name in _topological(found)}


def _topological(defs: dict[str, PhaseDefinition]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise ValueError(f"phase dependency cycle through '{name}'")
        state[name] = 1
        for dep in defs[name].depends_on:
            if dep not in defs:
                raise ValueError(f"phase '{name}' depends on unknown phase '{dep}'")
            visit(dep)
        state[name] = 2
        order.append(name)

    for name in defs:
        visit(name)
    return order


def get_phase(name: str) -> PhaseDefinition:
    """A phase by phase name or service name."""
    phases = discover_phases()
    name = name.replace("-", "_")
    if name in phases:
        return phases[name]
    for d in phases.values():
        if d.service == name:
            return d
    raise NotFoundError(f"unknown phase or service '{name}'; known: "
                        f"{', '.join(d.service for d in phases.values())}")
