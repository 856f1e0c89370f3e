"""Accelerator leases: who may use an accelerator slot now, and the proof of it (DESIGN.md §4, §8).

The coordinator lends each of `capacity` slots to one holder (a GPU job) at a time. A lease lives `ttl_s`
seconds on the coordinator's monotonic clock and is kept alive by heartbeats (`renew`). A holder that stops
renewing (crashed, partitioned, paused) loses its slot once the deadline passes, and the slot is granted
again.

Every grant carries a fencing token (Kleppmann, "How to do distributed locking", 2016): a number from a
persisted counter that grows with each grant. A holder presents it on report, heartbeat and publish, and
only the token of a live lease is accepted. So a holder whose lease expired while it was paused cannot
make its output visible after a newer holder got the slot (§8).

Deadlines are monotonic and live only in memory. Wall clocks jump, and monotonic clocks do not survive a
restart, so `restore` gives every journaled lease a fresh full TTL. A holder that is gone simply stops
renewing and expires one TTL later.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from shared.errors import AlreadyExistsError, InvalidSpecError, StaleLeaseError
from services.coordinator.core.state import LeaseRecord  # the one persisted record

log = logging.getLogger(__name__)

# How many ended leases we remember. This lets a late release be told apart from a forged one, and
# lets refusals say *why* a token is stale. Leases are per GPU job, so this covers far more than a run.
_ENDED_MEMORY = 4096
_RELEASED = "was released"
_EXPIRED = "expired and was reclaimed"


class LeaseJournal(Protocol):
    """The persistence AcceleratorLeases needs (a subset of the coordinator's StateStore)."""

    def next_fencing_token(self) -> int:
        """A token strictly greater than every token handed out before, across restarts."""
        ...

    def save_lease(self, record: LeaseRecord) -> None: ...

    def delete_lease(self, lease_id: str) -> None: ...

    def load_leases(self) -> list[LeaseRecord]: ...


class InMemoryLeaseJournal:
    """A LeaseJournal held in a dict: for tests and single-process use. To simulate a coordinator
    restart, hand the same instance to a new AcceleratorLeases."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_token = 0
        self._leases: dict[str, LeaseRecord] = {}

    def next_fencing_token(self) -> int:
        with self._lock:
            self._last_token += 1
            return self._last_token

    def save_lease(self, record: LeaseRecord) -> None:
        with self._lock:
            self._leases[record.lease_id] = record

    def delete_lease(self, lease_id: str) -> None:
        with self._lock:
            self._leases.pop(lease_id, None)

    def load_leases(self) -> list[LeaseRecord]:
        with self._lock:
            return list(self._leases.values())


@dataclass(frozen=True)
class Lease:
    """A granted slot: present `token` with every report, heartbeat and publish."""

    lease_id: str
    holder: str
    token: int
    run_id: str
    phase: str
    expires_at: float
    """Deadline on the coordinator's monotonic clock. It means nothing to any other process."""

    @property
    def record(self) -> LeaseRecord:
        return LeaseRecord(self.lease_id, self.holder, self.token, self.run_id, self.phase)


def _require_name(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidSpecError(f"must be a non-empty string, got {value!r}", field=field)
    return value


class AcceleratorLeases:
    """`capacity` accelerator slots, each lent to one holder at a time under a TTL and a fencing token.

    Thread-safe: every method runs under one lock, and the journal is written while that lock is held,
    so the journal's order of grants and deletions is the order the slots changed hands. The journal's
    leases are loaded on construction, so a restarted coordinator can never grant beyond capacity, even
    if `restore` is not called.
    """

    def __init__(self, journal: LeaseJournal, *, capacity: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise InvalidSpecError(f"must be an integer >= 1 (the number of accelerator slots), got {capacity!r}",
                                   field="capacity")
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not (math.isfinite(ttl_s) and ttl_s > 0):
            raise InvalidSpecError(f"must be a finite number of seconds > 0, got {ttl_s!r}", field="ttl_s")
        self._journal = journal
        self._capacity = capacity
        self._ttl_s = float(ttl_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._live: dict[str, Lease] = {}
        self._ended: OrderedDict[str, tuple[int, str]] = OrderedDict()  # lease_id -> (token, how it ended)
        self._max_token = 0  # the journal promises growth; we check it, since fencing rests on it
        self.restore()

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    def acquire(self, holder: str, *, run_id: str = "", phase: str = "") -> Lease | None:
        """Grant a free slot to `holder`, or return None when all `capacity` slots are held.

        Idempotent: a holder that already holds a live lease gets that same lease back (same token,
        same deadline), so a retried Acquire never takes two slots. Asking again for a different
        run/phase while holding one is a conflict, not a second grant.
        """
        _require_name(holder, "holder")
        with self._lock:
            self._reap_locked()
            mine = next((lease for lease in self._live.values() if lease.holder == holder), None)
            if mine is not None:
                if (mine.run_id, mine.phase) != (run_id, phase):
                    raise AlreadyExistsError(
                        f"holder {holder!r} already holds lease {mine.lease_id} for run {mine.run_id!r} "
                        f"phase {mine.phase!r}; release it before acquiring for run {run_id!r} phase {phase!r}")
                return mine
            if len(self._live) >= self._capacity:
                return None
            token = self._next_token_locked()
            lease = Lease(lease_id=f"lease-{token}", holder=holder, token=token, run_id=run_id, phase=phase,
                          expires_at=self._clock() + self._ttl_s)
            # Journal first: if the write fails the slot stays free and the token is merely skipped.
            self._journal.save_lease(lease.record)
            self._live[lease.lease_id] = lease
            log.info("lease %s granted to %s (token %d, run %r, phase %r)",
                     lease.lease_id, holder, token, run_id, phase)
            return lease

    def renew(self, lease_id: str, token: int) -> Lease:
        """Heartbeat: push the deadline to now + ttl. Refuses an unknown, expired or superseded lease."""
        with self._lock:
            lease = self._live_or_expire_locked(lease_id)
            if lease is None:
                raise StaleLeaseError(self._gone_message(lease_id, token))
            if lease.token != token:
                raise StaleLeaseError(f"lease {lease_id}: token {token} is not current (the lease's token is "
                                      f"{lease.token}); this holder must stop using the accelerator")
            renewed = replace(lease, expires_at=self._clock() + self._ttl_s)
            self._live[lease_id] = renewed
            return renewed

    def release(self, lease_id: str, token: int) -> bool:
        """Free the slot. True if this call freed it; False if the lease had already been released, had
        expired, or is unknown (a retried Release is harmless). A token known never to have held
        `lease_id` is refused."""
        with self._lock:
            lease = self._live.get(lease_id)
            if lease is not None:
                if lease.token != token:
                    raise StaleLeaseError(f"lease {lease_id}: token {token} never held this lease (its token is "
                                          f"{lease.token}); refusing to release it")
                if self._clock() >= lease.expires_at:
                    self._expire_locked([lease])
                    return False
                self._journal.delete_lease(lease_id)
                del self._live[lease_id]
                self._remember_locked(lease, _RELEASED)
                log.info("lease %s released by %s (token %d)", lease_id, lease.holder, token)
                return True
            ended = self._ended.get(lease_id)
            if ended is None:
                # Unknown here: most likely it ended before the coordinator restarted (the memory of ended
                # leases is not journaled). Releasing nothing is harmless, so a retried Release is a no-op.
                log.info("release of unknown lease %s (token %d): nothing to free", lease_id, token)
                return False
            if ended[0] != token:
                raise StaleLeaseError(self._gone_message(lease_id, token))
            return False

    def check(self, token: int) -> Lease:
        """The live lease that `token` belongs to. Call it before accepting a report or publishing."""
        with self._lock:
            lease = next((lease for lease in self._live.values() if lease.token == token), None)
            if lease is not None and self._clock() >= lease.expires_at:
                self._expire_locked([lease])
                lease = None
            if lease is None:
                raise StaleLeaseError(self._token_message(token))
            return lease

    def is_current(self, token: int) -> bool:
        try:
            self.check(token)
        except StaleLeaseError:
            return False
        return True

    def reap(self) -> list[Lease]:
        """Expire every lease past its deadline, delete it from the journal and return it."""
        with self._lock:
            return self._reap_locked()

    def restore(self) -> list[Lease]:
        """Adopt the journal's leases that this object does not yet know, each with a deadline of now + ttl.

        Called on construction. Calling it again only adopts leases that other code wrote to the journal
        since then. It returns the leases it adopted.
        """
        with self._lock:
            now = self._clock()
            adopted = []
            for record in self._journal.load_leases():
                self._max_token = max(self._max_token, record.token)
                if record.lease_id in self._live:
                    continue
                # A store may hand back NULL for "no run"; "" is what acquire() compares against.
                lease = Lease(lease_id=record.lease_id, holder=record.holder, token=record.token,
                              run_id=record.run_id or "", phase=record.phase or "", expires_at=now + self._ttl_s)
                self._live[lease.lease_id] = lease
                adopted.append(lease)
            if adopted:
                log.info("restored %d lease(s) from the journal with fresh %.1fs deadlines", len(adopted),
                         self._ttl_s)
            if len(self._live) > self._capacity:
                # They were granted under a larger capacity. Revoking them would strand running jobs;
                # they drain as their holders release or expire, and no new grant happens until then.
                log.warning("%d leases restored but capacity is %d; no grants until they drain",
                            len(self._live), self._capacity)
            return adopted

    def held(self) -> list[Lease]:
        """The live leases, oldest grant first."""
        with self._lock:
            self._reap_locked()
            return sorted(self._live.values(), key=lambda lease: lease.token)

    def free_slots(self) -> int:
        with self._lock:
            self._reap_locked()
            return max(0, self._capacity - len(self._live))

    # -- internals (call with the lock held) ----------------------------------------------------------

    def _next_token_locked(self) -> int:
        token = int(self._journal.next_fencing_token())
        if token <= self._max_token:
            # A repeated token would let an old holder pass for the new one. This is a journal bug, and
            # granting anyway would break the guarantee this class exists for.
            raise RuntimeError(f"journal returned fencing token {token}, not above the last one "
                               f"{self._max_token}; refusing to grant")
        self._max_token = token
        return token

    def _live_or_expire_locked(self, lease_id: str) -> Lease | None:
        lease = self._live.get(lease_id)
        if lease is not None and self._clock() >= lease.expires_at:
            self._expire_locked([lease])
            return None
        return lease

    def _reap_locked(self) -> list[Lease]:
        now = self._clock()
        expired = [lease for lease in self._live.values() if now >= lease.expires_at]
        self._expire_locked(expired)
        return expired

    def _expire_locked(self, leases: list[Lease]) -> None:
        for lease in leases:
            self._journal.delete_lease(lease.lease_id)
            del self._live[lease.lease_id]
            self._remember_locked(lease, _EXPIRED)
            log.warning("lease %s of %s (token %d) expired without a heartbeat; slot reclaimed",
                        lease.lease_id, lease.holder, lease.token)

    def _remember_locked(self, lease: Lease, how: str) -> None:
        self._ended[lease.lease_id] = (lease.token, how)
        while len(self._ended) > _ENDED_MEMORY:
            self._ended.popitem(last=False)

    def _gone_message(self, lease_id: str, token: int) -> str:
        ended = self._ended.get(lease_id)
        if ended is None:
            return (f"lease {lease_id} is unknown (never granted, or it ended before the coordinator restarted); "
                    f"token {token} is not current; acquire a new lease")
        old_token, how = ended
        return (f"lease {lease_id} (token {old_token}) {how}; token {token} is not current; "
                f"acquire a new lease")

    def _token_message(self, token: int) -> str:
        for lease_id, (old_token, how) in self._ended.items():
            if old_token == token:
                return f"token {token} is stale: lease {lease_id} {how}"
        return f"token {token} belongs to no live lease"
