"""The coordinator's work-unit pool and cost budgets behind shared.runtime.units.UnitService, in process.

`coordinator_unit_service()` is what embedded mode hands to phase runners (the same pool and SQLite
budgets the gRPC servicer exposes); `memory_unit_service()` is a self-contained in-memory pool (budgets:
reasoning_data's LocalBudget) for a job that belongs to no run.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from services.coordinator.core.work_units import InMemoryUnitJournal, WorkUnitPool
from shared.runtime.units import LeasedUnit, UnitStatus


def _leased(got) -> LeasedUnit | None:
    if got is None:
        return None
    return LeasedUnit(got.run_id, got.phase, got.unit_id, dict(got.payload), got.token, got.attempts)


class StateBudget:
    """A phase's budget in the coordinator's SQLite file (StateStore.budget_*)."""

    def __init__(self, state, run_id: str, phase: str, limit_usd: float):
        self._state, self.run_id, self.phase, self.limit_usd = state, run_id, phase, float(limit_usd)

    def reserve(self, amount_usd: float) -> str | None:
        rid = uuid.uuid4().hex
        granted, _ = self._state.budget_reserve(self.run_id, self.phase, self.limit_usd, float(amount_usd), rid)
        return rid if granted else None

    def settle(self, reservation_id: str, actual_usd: float) -> None:
        self._state.budget_settle(self.run_id, self.phase, reservation_id, float(actual_usd))

    def release(self, reservation_id: str) -> None:
        self._state.budget_settle(self.run_id, self.phase, reservation_id, None)

    def snapshot(self) -> dict[str, float]:
        return self._state.budget_snapshot(self.run_id, self.phase)


class PoolUnitService:
    """UnitService over a WorkUnitPool. With a coordinator, leasing 'any run' asks it which runs are live,
    and budgets live in its state file; without one, budgets are in memory (one per run and phase)."""

    def __init__(self, pool: WorkUnitPool, *, coordinator=None):
        self.pool = pool
        self._coordinator = coordinator
        self._lock = threading.Lock()
        self._budgets: dict[tuple[str, str], Any] = {}
        self._planned: set[tuple[str, str]] = set()

    def plan(self, run_id: str, phase: str, units: list[tuple[str, dict]]) -> int:
        with self._lock:
            self._planned.add((run_id, phase))
        return self.pool.plan(run_id, phase, units)

    def lease(self, run_id: str, phase: str, worker: str) -> LeasedUnit | None:
        if run_id:
            return _leased(self.pool.lease(run_id, phase, worker))
        if self._coordinator is not None:
            return _leased(self._coordinator.lease_any_unit(phase, worker))
        with self._lock:
            keys = [k for k in self._planned if k[1] == phase]
        for rid, ph in sorted(keys):
            got = self.pool.lease(rid, ph, worker)
            if got is not None:
                return _leased(got)
        return None

    def heartbeat(self, unit: LeasedUnit) -> None:
        self.pool.heartbeat(unit.run_id, unit.phase, unit.unit_id, unit.token)

    def complete(self, unit: LeasedUnit, artifact: dict[str, Any]) -> bool:
        return self.pool.complete(unit.run_id, unit.phase, unit.unit_id, unit.token, artifact)

    def list_units(self, run_id: str, phase: str) -> list[UnitStatus]:
        return [UnitStatus(u.unit_id, u.state, u.attempts, u.artifact, dict(u.payload))
                for u in self.pool.units(run_id, phase)]

    def budget(self, run_id: str, phase: str, limit_usd: float):
        if self._coordinator is not None:
            return StateBudget(self._coordinator.state, run_id, phase, limit_usd)
        from services.reasoning_data.core.budget import LocalBudget

        with self._lock:
            b = self._budgets.get((run_id, phase))
            if b is None:
                b = self._budgets[(run_id, phase)] = LocalBudget(limit_usd)
            return b


def coordinator_unit_service(coordinator) -> PoolUnitService:
    return PoolUnitService(coordinator.units, coordinator=coordinator)


_memory_lock = threading.Lock()
_memory: PoolUnitService | None = None


def memory_unit_service(ttl_s: float = 60.0) -> PoolUnitService:
    """The process's in-memory pool (one per process, so every worker thread of the process shares it)."""
    global _memory
    with _memory_lock:
        if _memory is None:
            _memory = PoolUnitService(WorkUnitPool(InMemoryUnitJournal(), ttl_s=ttl_s))
        return _memory
