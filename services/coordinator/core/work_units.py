"""Work-unit leases: how scalable reasoning-data workers share a planned batch of work (DESIGN.md §4, §8).

A phase plans its work as units (an id and a JSON payload). Any number of workers lease a unit, heartbeat
while they work on it, and complete it with the ArtifactRef of what they wrote. Each hand-out takes a new
fencing token, and every state change is a compare-and-set on the journal against the state the pool
last read. So:
- a unit is never held by two workers at once: the CAS out of 'pending' has exactly one winner, even
  between two coordinator processes on one database;
- a worker that stops heartbeating loses its unit after `ttl_s`. The unit goes back to 'pending' and
  is handed out again;
- a stale worker's late completion is refused. Its token is no longer the unit's, so its artifact is
  never recorded (§8: a stale holder's output never becomes visible);
- completion is idempotent for the lease that owns it, so a retried Complete is safe.

States: pending -> leased -> done, and leased -> pending on expiry; 'done' is final. A lease is valid
while its deadline has not passed: once it has, the token is refused even if nobody else has taken the
unit yet. That is the same rule as the accelerator lease (leases.py). Deadlines are monotonic and in
memory; state, worker, token and attempts persist in the journal.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from shared.canonical import dumps_canonical
from shared.errors import AlreadyExistsError, InvalidSpecError, NotFoundError, StaleLeaseError
from services.coordinator.core.state import UnitRecord  # the one persisted record

log = logging.getLogger(__name__)

PENDING, LEASED, DONE = "pending", "leased", "done"
UnitKey = tuple[str, str, str]  # (run_id, phase, unit_id)


class UnitJournal(Protocol):
    """The persistence WorkUnitPool needs (a subset of the coordinator's StateStore)."""

    def next_fencing_token(self) -> int:
        """A token strictly greater than every token handed out before, across restarts."""
        ...

    def plan_units(self, run_id: str, phase: str, units: list[tuple[str, dict]]) -> int:
        """Insert the units that do not exist yet as 'pending'; return how many were inserted."""
        ...

    def get_unit(self, run_id: str, phase: str, unit_id: str) -> UnitRecord:
        """The unit, or NotFoundError."""
        ...

    def list_units(self, run_id: str, phase: str, state: str | None = None) -> list[UnitRecord]: ...

    def compare_and_set_unit(self, run_id: str, phase: str, unit_id: str, expect: dict, **fields) -> bool:
        """Atomically: if every `expect` field equals the stored one, set `fields` and return True."""
        ...


class InMemoryUnitJournal:
    """A UnitJournal held in a dict: for tests and single-process use. To simulate a coordinator
    restart, hand the same instance to a new WorkUnitPool."""

    _FIELDS = frozenset({"state", "worker", "token", "attempts", "artifact"})

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_token = 0
        self._units: dict[UnitKey, UnitRecord] = {}

    def next_fencing_token(self) -> int:
        with self._lock:
            self._last_token += 1
            return self._last_token

    def plan_units(self, run_id: str, phase: str, units: list[tuple[str, dict]]) -> int:
        with self._lock:
            inserted = 0
            for unit_id, payload in units:
                key = (run_id, phase, unit_id)
                if key not in self._units:
                    # Copy, as a database would, so a caller mutating its dict cannot change stored work.
                    self._units[key] = UnitRecord(run_id, phase, unit_id, copy.deepcopy(payload), PENDING,
                                                  "", 0, 0, None)
                    inserted += 1
            return inserted

    def get_unit(self, run_id: str, phase: str, unit_id: str) -> UnitRecord:
        with self._lock:
            record = self._units.get((run_id, phase, unit_id))
        if record is None:
            raise NotFoundError(f"no work unit {unit_id!r} in run {run_id!r} phase {phase!r}")
        return record

    def list_units(self, run_id: str, phase: str, state: str | None = None) -> list[UnitRecord]:
        with self._lock:
            return [u for u in self._units.values()
                    if u.run_id == run_id and u.phase == phase and (state is None or u.state == state)]

    def compare_and_set_unit(self, run_id: str, phase: str, unit_id: str, expect: dict, **fields) -> bool:
        unknown = set(fields) - self._FIELDS
        assert not unknown, f"not updatable unit fields: {sorted(unknown)}"
        with self._lock:
            key = (run_id, phase, unit_id)
            record = self._units.get(key)
            if record is None:
                raise NotFoundError(f"no work unit {unit_id!r} in run {run_id!r} phase {phase!r}")
            if any(getattr(record, name) != value for name, value in expect.items()):
                return False
            if fields.get("artifact") is not None:
                fields["artifact"] = copy.deepcopy(fields["artifact"])
            self._units[key] = replace(record, **fields)
            return True


@dataclass(frozen=True)
class UnitLease:
    """A unit handed to a worker: present `token` on heartbeat and complete."""

    run_id: str
    phase: str
    unit_id: str
    payload: dict
    worker: str
    token: int
    attempts: int
    """How many times this unit has been handed out, this time included."""
    expires_at: float
    """Deadline on the coordinator's monotonic clock. It means nothing to any other process."""


def _require_name(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidSpecError(f"must be a non-empty string, got {value!r}", field=field)
    return value


def _check_artifact(artifact: object) -> None:
    if not isinstance(artifact, dict):
        raise InvalidSpecError(f"must be an ArtifactRef dict (uri, sha256, size), got {type(artifact).__name__}",
                               field="artifact")
    for key in ("uri", "sha256"):
        if not isinstance(artifact.get(key), str) or not artifact[key]:
            raise InvalidSpecError(f"must be a non-empty string, got {artifact.get(key)!r}", field=f"artifact.{key}")


class WorkUnitPool:
    """Hands planned work units to workers under a TTL and a fencing token. Thread-safe: one lock.

    After a coordinator restart, each (run, phase) is adopted the first time any method touches it: its
    leased units get deadlines of now + ttl. `restore(run_id, phase)` does the same eagerly. The pool
    adopts per (run, phase) because the journal cannot list the units of all runs at once.

    `accepts_work(run_id, phase)` says whether that run may hand out work now; the coordinator answers
    "only while the run is running", so a cancelled or failed run's pending units are never leased, even
    by a worker that names the run. Without it every planned unit may be leased.
    """

    def __init__(self, journal: UnitJournal, *, ttl_s: float, clock: Callable[[], float] = time.monotonic,
                 accepts_work: Callable[[str, str], bool] | None = None):
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not (math.isfinite(ttl_s) and ttl_s > 0):
            raise InvalidSpecError(f"must be a finite number of seconds > 0, got {ttl_s!r}", field="ttl_s")
        self._journal = journal
        self._ttl_s = float(ttl_s)
        self._clock = clock
        self._accepts_work = accepts_work
        self._lock = threading.Lock()
        self._deadlines: dict[UnitKey, tuple[int, float]] = {}  # leased unit -> (its token, its deadline)
        self._adopted: set[tuple[str, str]] = set()
        self._max_token = 0

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    def plan(self, run_id: str, phase: str, units: list[tuple[str, dict]]) -> int:
        """Add `units` as pending and return how many were new. Planning the same units again adds none.
        Re-planning a unit id with a different payload is a conflict: its result may already exist."""
        _require_name(run_id, "run_id")
        _require_name(phase, "phase")
        seen: set[str] = set()
        for i, item in enumerate(units):
            if not (isinstance(item, tuple | list) and len(item) == 2):
                raise InvalidSpecError(f"must be a (unit_id, payload) pair, got {item!r}", field=f"units[{i}]")
            unit_id, payload = item
            _require_name(unit_id, f"units[{i}].unit_id")
            if not isinstance(payload, dict):
                raise InvalidSpecError(f"must be a dict, got {type(payload).__name__}", field=f"units[{i}].payload")
            dumps_canonical(payload)  # the journal stores JSON: refuse what it could not store, here
            if unit_id in seen:
                raise InvalidSpecError(f"unit id {unit_id!r} appears twice", field=f"units[{i}].unit_id")
            seen.add(unit_id)
        with self._lock:
            self._adopt_locked(run_id, phase)
            existing = {u.unit_id: u for u in self._journal.list_units(run_id, phase)}
            for unit_id, payload in units:
                # Compare as canonical JSON: the stored copy came back through JSON (lists, not tuples).
                if unit_id in existing and dumps_canonical(existing[unit_id].payload) != dumps_canonical(payload):
                    raise AlreadyExistsError(
                        f"unit {unit_id!r} of run {run_id!r} phase {phase!r} was planned with a different payload; "
                        f"use a new unit id for new work")
            return self._journal.plan_units(run_id, phase, [(unit_id, dict(payload)) for unit_id, payload in units])

    def lease(self, run_id: str, phase: str, worker: str) -> UnitLease | None:
        """Hand a pending unit (expired leases are reaped first) to `worker` with a new token, or None (also
        when `accepts_work` refuses the run)."""
        _require_name(run_id, "run_id")
        _require_name(phase, "phase")
        _require_name(worker, "worker")
        if self._accepts_work is not None and not self._accepts_work(run_id, phase):
            log.debug("no unit of run %s phase %s for %s: the run takes no work now", run_id, phase, worker)
            return None
        with self._lock:
            self._adopt_locked(run_id, phase)
            self._reap_locked()
            token = None
            for unit in self._journal.list_units(run_id, phase, state=PENDING):
                if token is None:
                    token = self._next_token_locked()
                # Every hand-out bumps attempts, so (pending, attempts) names one version of the unit;
                # matching on it (not on a maybe-NULL token) makes the CAS lose if anyone took it since.
                attempts = unit.attempts + 1
                if self._journal.compare_and_set_unit(run_id, phase, unit.unit_id,
                                                      {"state": PENDING, "attempts": unit.attempts},
                                                      state=LEASED, worker=worker, token=token, attempts=attempts):
                    expires_at = self._clock() + self._ttl_s
                    self._deadlines[(run_id, phase, unit.unit_id)] = (token, expires_at)
                    log.debug("unit %s/%s/%s leased to %s (token %d, attempt %d)",
                              run_id, phase, unit.unit_id, worker, token, attempts)
                    return UnitLease(run_id, phase, unit.unit_id, unit.payload, worker, token, attempts, expires_at)
                # Another writer on the journal won this unit. The token was never recorded, so it is
                # still unused and can go to the next unit.
            return None

    def heartbeat(self, run_id: str, phase: str, unit_id: str, token: int) -> UnitLease:
        """Push the unit's deadline to now + ttl. Refuses a token that is not the unit's live lease."""
        with self._lock:
            self._adopt_locked(run_id, phase)
            unit = self._get_locked(run_id, phase, unit_id)
            self._require_live_locked(unit, token)
            expires_at = self._clock() + self._ttl_s
            self._deadlines[(run_id, phase, unit_id)] = (token, expires_at)
            return UnitLease(run_id, phase, unit_id, unit.payload, unit.worker, token, unit.attempts, expires_at)

    def complete(self, run_id: str, phase: str, unit_id: str, token: int, artifact: dict) -> bool:
        """Mark the unit done with `artifact`. True if this call did it; False if the same lease had
        already completed it with the same artifact. A stale token is refused and records nothing."""
        _check_artifact(artifact)
        with self._lock:
            self._adopt_locked(run_id, phase)
            unit = self._get_locked(run_id, phase, unit_id)
            if unit.state == DONE and unit.token == token:
                if unit.artifact is not None and dumps_canonical(unit.artifact) == dumps_canonical(artifact):
                    return False
                raise AlreadyExistsError(f"unit {unit_id!r} of run {run_id!r} phase {phase!r} was already completed "
                                         f"by token {token} with a different artifact ({unit.artifact!r})")
            self._require_live_locked(unit, token)
            if not self._journal.compare_and_set_unit(run_id, phase, unit_id, {"state": LEASED, "token": token},
                                                      state=DONE, artifact=dict(artifact)):
                raise StaleLeaseError(f"unit {unit_id!r} of run {run_id!r} phase {phase!r} changed while completing; "
                                      f"token {token} is no longer current")
            self._deadlines.pop((run_id, phase, unit_id), None)
            log.debug("unit %s/%s/%s done by %s (token %d)", run_id, phase, unit_id, unit.worker, token)
            return True

    def reap(self) -> list[UnitKey]:
        """Put every leased unit past its deadline back to 'pending'; return their keys."""
        with self._lock:
            return self._reap_locked()

    def restore(self, run_id: str | None = None, phase: str | None = None) -> int:
        """Give leased units that this pool has no deadline for a deadline of now + ttl (after a restart,
        all of them), and return how many. Units that are done stay done.

        With a run and phase, that (run, phase) is adopted now. Without them, every (run, phase) is
        adopted again: now if this pool has seen it, otherwise the first time it is touched. The journal
        cannot list all runs, so a freshly started pool relies on the touch.
        """
        if (run_id is None) != (phase is None):
            missing = "run_id" if run_id is None else "phase"
            raise InvalidSpecError("give both run_id and phase, or neither", field=missing)
        with self._lock:
            keys = [(run_id, phase)] if run_id is not None else sorted(self._adopted)
            self._adopted.difference_update(keys)
            return sum(self._adopt_locked(r, p) for r, p in keys)

    def units(self, run_id: str, phase: str) -> list[UnitRecord]:
        """Every unit of (run, phase) in planning order, after reaping expired leases."""
        with self._lock:
            self._adopt_locked(run_id, phase)
            self._reap_locked()
            return self._journal.list_units(run_id, phase)

    def progress(self, run_id: str, phase: str) -> dict[str, int]:
        """Counts by state, after reaping: {pending, leased, done, total}."""
        units = self.units(run_id, phase)
        counts = {PENDING: 0, LEASED: 0, DONE: 0}
        for unit in units:
            counts[unit.state] = counts.get(unit.state, 0) + 1
        return {"pending": counts[PENDING], "leased": counts[LEASED], "done": counts[DONE], "total": len(units)}

    # -- internals (call with the lock held) ----------------------------------------------------------

    def _next_token_locked(self) -> int:
        token = int(self._journal.next_fencing_token())
        if token <= self._max_token:
            # A repeated token would let a stale worker pass for the new one. That is a journal bug.
            raise RuntimeError(f"journal returned fencing token {token}, not above the last one "
                               f"{self._max_token}; refusing to hand out work")
        self._max_token = token
        return token

    def _get_locked(self, run_id: str, phase: str, unit_id: str) -> UnitRecord:
        unit = self._journal.get_unit(run_id, phase, unit_id)
        if unit is None:  # a store may answer None rather than raise; the caller gets one error either way
            raise NotFoundError(f"no work unit {unit_id!r} in run {run_id!r} phase {phase!r}")
        return unit

    def _adopt_locked(self, run_id: str, phase: str) -> int:
        if (run_id, phase) in self._adopted:
            return 0
        now = self._clock()
        adopted = 0
        for unit in self._journal.list_units(run_id, phase, state=LEASED):
            self._max_token = max(self._max_token, unit.token or 0)
            key = (run_id, phase, unit.unit_id)
            if key not in self._deadlines:
                self._deadlines[key] = (unit.token, now + self._ttl_s)
                adopted += 1
        self._adopted.add((run_id, phase))
        if adopted:
            log.info("adopted %d leased unit(s) of run %r phase %r with fresh %.1fs deadlines",
                     adopted, run_id, phase, self._ttl_s)
        return adopted

    def _require_live_locked(self, unit: UnitRecord, token: int) -> None:
        where = f"unit {unit.unit_id!r} of run {unit.run_id!r} phase {unit.phase!r}"
        if unit.state == DONE:
            raise StaleLeaseError(f"{where} is already done (token {unit.token}); token {token} is stale, "
                                  f"so drop this result")
        if unit.state != LEASED or unit.token != token:
            raise StaleLeaseError(f"{where}: token {token} is not current (unit is {unit.state}, token "
                                  f"{unit.token}); it expired and was returned to the pool or reassigned, so "
                                  f"drop this result and lease a new unit")
        key = (unit.run_id, unit.phase, unit.unit_id)
        entry = self._deadlines.get(key)
        if entry is None or entry[0] != token:
            # Leased through the journal by another pool process: track it from now.
            entry = self._deadlines[key] = (token, self._clock() + self._ttl_s)
        if self._clock() >= entry[1]:
            self._expire_locked(key, token)
            raise StaleLeaseError(f"{where}: the lease of token {token} expired without a heartbeat and the "
                                  f"unit went back to the pool; drop this result and lease a new unit")

    def _reap_locked(self) -> list[UnitKey]:
        now = self._clock()
        expired = [(key, token) for key, (token, deadline) in self._deadlines.items() if now >= deadline]
        return [key for key, token in expired if self._expire_locked(key, token)]

    def _expire_locked(self, key: UnitKey, token: int) -> bool:
        self._deadlines.pop(key, None)
        run_id, phase, unit_id = key
        # Keep the old token on the pending unit: it is no longer 'leased', so it is refused, and the
        # next hand-out replaces it with a larger one.
        returned = self._journal.compare_and_set_unit(run_id, phase, unit_id, {"state": LEASED, "token": token},
                                                      state=PENDING, worker="")
        if returned:
            log.warning("unit %s/%s/%s (token %d) expired without a heartbeat; back to pending",
                        run_id, phase, unit_id, token)
        return returned
