"""Work units and cost budgets as a scale-out worker sees them, whatever the transport.

A phase that scales out (reasoning_data) plans its work as units, and any number of workers lease, heartbeat
and complete them (services/coordinator/core/work_units.py holds the rules). Three implementations of one
`UnitService` protocol:
  - the coordinator's own pool and SQLite budgets, in process (embedded mode: `make run`),
  - a gRPC client of the coordinator (services mode: `AGENTFORGE_COORDINATOR_ADDR` is set),
  - a process-local in-memory pool for a job that belongs to no run (a bare Submit, tests).

`Budget` is a phase's shared cost limit: reserve a call's worst case before sending, settle with what it
cost. One reservation never lets spent + reserved exceed the limit, across all workers that share it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class LeasedUnit:
    run_id: str
    phase: str
    unit_id: str
    payload: dict[str, Any]
    token: int
    attempts: int


@dataclass(frozen=True)
class UnitStatus:
    unit_id: str
    state: str                      # pending | leased | done
    attempts: int
    artifact: dict[str, Any] | None  # the ArtifactRef dict a done unit was completed with
    payload: dict[str, Any]


@runtime_checkable
class Budget(Protocol):
    def reserve(self, amount_usd: float) -> str | None:
        """A reservation id, or None when spent + reserved + amount would exceed the limit."""

    def settle(self, reservation_id: str, actual_usd: float) -> None:
        """Replace the reservation by what the call cost."""

    def release(self, reservation_id: str) -> None:
        """Drop a reservation for a call that was never billed."""

    def snapshot(self) -> dict[str, float]:
        """{limit_usd, spent_usd, reserved_usd, refused}."""


class UnitService(Protocol):
    def plan(self, run_id: str, phase: str, units: list[tuple[str, dict]]) -> int: ...

    def lease(self, run_id: str, phase: str, worker: str) -> LeasedUnit | None:
        """run_id "" = a pending unit of `phase` from any running run."""

    def heartbeat(self, unit: LeasedUnit) -> None:
        """StaleLeaseError when the unit is no longer this lease's."""

    def complete(self, unit: LeasedUnit, artifact: dict[str, Any]) -> bool: ...

    def list_units(self, run_id: str, phase: str) -> list[UnitStatus]: ...

    def budget(self, run_id: str, phase: str, limit_usd: float) -> Budget: ...


_local_lock = threading.Lock()
_local: UnitService | None = None


def set_local_unit_service(service: UnitService | None) -> None:
    """Embedded mode: the in-process coordinator offers its pool to the phase runners of this process."""
    global _local
    with _local_lock:
        _local = service


def local_unit_service() -> UnitService | None:
    with _local_lock:
        return _local
