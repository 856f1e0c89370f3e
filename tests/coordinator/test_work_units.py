"""Work-unit leases: every unit is done exactly once, a killed worker's unit is redone, and its late
output is never recorded."""

from __future__ import annotations

import hashlib
import threading

import pytest

from tests.coordinator.clock import FakeClock

from services.coordinator.core.work_units import InMemoryUnitJournal, WorkUnitPool
from shared.errors import AlreadyExistsError, InvalidSpecError, NotFoundError, StaleLeaseError

TTL = 30.0
RUN, PHASE = "run-1", "reasoning_data"


def make(journal: InMemoryUnitJournal | None = None, clock: FakeClock | None = None):
    journal = journal or InMemoryUnitJournal()
    clock = clock or FakeClock()
    return WorkUnitPool(journal, ttl_s=TTL, clock=clock), journal, clock


def units(n: int) -> list[tuple[str, dict]]:
    return [(f"u{i:02d}", {"source": "gsm8k", "items": [i * 10, i * 10 + 9]}) for i in range(n)]


def artifact_for(unit_id: str, worker: str, token: int) -> dict:
    # The key is scoped by job and token, as DESIGN.md §4 asks of workers.
    uri = f"mem://staging/{RUN}/{unit_id}/{token}/part.jsonl"
    return {"uri": uri, "sha256": hashlib.sha256(f"{worker}:{uri}".encode()).hexdigest(), "size": 100,
            "name": f"{unit_id}.jsonl"}


def test_killed_worker_unit_is_redone_and_its_late_output_refused():
    pool, journal, clock = make()
    assert pool.plan(RUN, PHASE, units(10)) == 10

    guard = threading.Lock()
    in_hand: dict[str, str] = {}       # unit -> live worker holding it now
    completions: dict[str, list[int]] = {}  # unit -> tokens whose complete() returned True
    violations: list[str] = []
    errors: list[BaseException] = []
    killed: list = []

    def killed_worker() -> None:
        killed.append(pool.lease(RUN, PHASE, "w-killed"))  # ...and then it dies: no heartbeat, no complete

    def live_worker(name: str, start: threading.Barrier) -> None:
        try:
            start.wait()
            while (lease := pool.lease(RUN, PHASE, name)) is not None:
                with guard:
                    if lease.unit_id in in_hand:
                        violations.append(f"{lease.unit_id} given to {name} while {in_hand[lease.unit_id]} held it")
                    in_hand[lease.unit_id] = name
                pool.heartbeat(RUN, PHASE, lease.unit_id, lease.token)
                with guard:
                    del in_hand[lease.unit_id]
                art = artifact_for(lease.unit_id, name, lease.token)
                if pool.complete(RUN, PHASE, lease.unit_id, lease.token, art):
                    with guard:
                        completions.setdefault(lease.unit_id, []).append(lease.token)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the main thread
            errors.append(exc)

    def run_live_workers() -> None:
        start = threading.Barrier(2)
        threads = [threading.Thread(target=live_worker, args=(f"w-{i}", start)) for i in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    thread = threading.Thread(target=killed_worker)
    thread.start()
    thread.join()
    (dead,) = killed
    assert dead is not None and dead.attempts == 1

    run_live_workers()
    assert pool.progress(RUN, PHASE) == {"pending": 0, "leased": 1, "done": 9, "total": 10}

    clock.advance(TTL + 1)  # the dead worker's lease runs out
    run_live_workers()

    assert errors == [] and violations == []
    assert pool.progress(RUN, PHASE) == {"pending": 0, "leased": 0, "done": 10, "total": 10}
    assert sorted(completions) == [unit_id for unit_id, _ in units(10)]
    assert all(len(tokens) == 1 for tokens in completions.values())  # each unit completed exactly once
    redone = journal.get_unit(RUN, PHASE, dead.unit_id)
    assert redone.worker in {"w-1", "w-2"} and redone.attempts == 2 and redone.token > dead.token

    late = artifact_for(dead.unit_id, "w-killed", dead.token)
    with pytest.raises(StaleLeaseError, match=rf"token {dead.token}"):
        pool.complete(RUN, PHASE, dead.unit_id, dead.token, late)
    with pytest.raises(StaleLeaseError):
        pool.heartbeat(RUN, PHASE, dead.unit_id, dead.token)
    assert journal.get_unit(RUN, PHASE, dead.unit_id).artifact == artifact_for(dead.unit_id, redone.worker,
                                                                                redone.token)


def test_two_pools_on_one_journal_never_hand_out_a_unit_twice():
    # Two coordinator processes racing on one database: only the journal's compare-and-set separates them.
    journal = InMemoryUnitJournal()
    clock = FakeClock()
    pools = [WorkUnitPool(journal, ttl_s=TTL, clock=clock) for _ in range(2)]
    pools[0].plan(RUN, PHASE, units(60))
    got: list[tuple[str, int]] = []
    guard = threading.Lock()
    start = threading.Barrier(8)

    def worker(pool: WorkUnitPool, name: str) -> None:
        start.wait()
        while (lease := pool.lease(RUN, PHASE, name)) is not None:
            with guard:
                got.append((lease.unit_id, lease.token))

    threads = [threading.Thread(target=worker, args=(pools[i % 2], f"w{i}")) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    unit_ids = [unit_id for unit_id, _ in got]
    assert sorted(unit_ids) == [unit_id for unit_id, _ in units(60)]  # each handed out exactly once
    assert len({token for _, token in got}) == 60


def test_complete_is_idempotent_for_its_own_lease():
    pool, journal, _ = make()
    pool.plan(RUN, PHASE, units(1))
    lease = pool.lease(RUN, PHASE, "w")
    art = artifact_for(lease.unit_id, "w", lease.token)
    assert pool.complete(RUN, PHASE, lease.unit_id, lease.token, art) is True
    assert pool.complete(RUN, PHASE, lease.unit_id, lease.token, dict(art)) is False
    with pytest.raises(AlreadyExistsError, match="different artifact"):
        pool.complete(RUN, PHASE, lease.unit_id, lease.token, {**art, "sha256": "0" * 64})
    with pytest.raises(StaleLeaseError, match="already done"):
        pool.heartbeat(RUN, PHASE, lease.unit_id, lease.token)
    assert journal.get_unit(RUN, PHASE, lease.unit_id).artifact == art
    assert pool.lease(RUN, PHASE, "w2") is None  # done is never handed out again


def test_expired_unit_is_refused_even_if_nobody_took_it_yet():
    pool, journal, clock = make()
    pool.plan(RUN, PHASE, units(1))
    lease = pool.lease(RUN, PHASE, "w")
    clock.advance(TTL)
    with pytest.raises(StaleLeaseError, match="expired"):
        pool.complete(RUN, PHASE, lease.unit_id, lease.token, artifact_for(lease.unit_id, "w", lease.token))
    unit = journal.get_unit(RUN, PHASE, lease.unit_id)
    assert unit.state == "pending" and unit.artifact is None


def test_heartbeat_extends_and_reap_returns_only_silent_units():
    pool, _, clock = make()
    pool.plan(RUN, PHASE, units(2))
    kept, dropped = pool.lease(RUN, PHASE, "alive"), pool.lease(RUN, PHASE, "silent")
    clock.advance(TTL * 0.9)
    beat = pool.heartbeat(RUN, PHASE, kept.unit_id, kept.token)
    assert beat.expires_at == pytest.approx(clock.now + TTL)
    clock.advance(TTL * 0.2)
    assert pool.reap() == [(RUN, PHASE, dropped.unit_id)]
    assert pool.progress(RUN, PHASE) == {"pending": 1, "leased": 1, "done": 0, "total": 2}
    again = pool.lease(RUN, PHASE, "next")
    assert again.unit_id == dropped.unit_id and again.token > kept.token and again.attempts == 2


def test_plan_is_idempotent_and_refuses_a_changed_payload():
    pool, _, _ = make()
    assert pool.plan(RUN, PHASE, units(3)) == 3
    assert pool.plan(RUN, PHASE, units(5)) == 2
    assert pool.progress(RUN, PHASE)["total"] == 5
    with pytest.raises(AlreadyExistsError, match="u01"):
        pool.plan(RUN, PHASE, [("u01", {"source": "other"})])
    assert pool.progress("run-2", PHASE)["total"] == 0  # runs do not share units
    # Payloads are compared as JSON, the form a store keeps: a tuple and a list are the same payload.
    assert pool.plan("run-2", PHASE, [("t", {"items": (1, 2)})]) == 1
    assert pool.plan("run-2", PHASE, [("t", {"items": [1, 2]})]) == 0


def test_restart_keeps_done_units_done_and_leased_units_alive_for_one_ttl():
    journal = InMemoryUnitJournal()
    pool, _, _ = make(journal)
    pool.plan(RUN, PHASE, units(3))
    done = pool.lease(RUN, PHASE, "w-done")
    pool.complete(RUN, PHASE, done.unit_id, done.token, artifact_for(done.unit_id, "w-done", done.token))
    working = pool.lease(RUN, PHASE, "w-working")

    clock = FakeClock(start=3.0)  # a new process: the monotonic clock has another origin
    restarted = WorkUnitPool(journal, ttl_s=TTL, clock=clock)
    assert restarted.restore(RUN, PHASE) == 1
    assert restarted.progress(RUN, PHASE) == {"pending": 1, "leased": 1, "done": 1, "total": 3}
    assert restarted.heartbeat(RUN, PHASE, working.unit_id, working.token).worker == "w-working"

    fresh = restarted.lease(RUN, PHASE, "w-new")
    assert fresh.unit_id not in {done.unit_id, working.unit_id} and fresh.token > working.token
    assert restarted.lease(RUN, PHASE, "w-new") is None
    clock.advance(TTL + 1)  # w-working died with the old process and never beat again
    assert sorted(restarted.reap()) == sorted([(RUN, PHASE, working.unit_id), (RUN, PHASE, fresh.unit_id)])
    assert journal.get_unit(RUN, PHASE, done.unit_id).state == "done"
    assert restarted.lease(RUN, PHASE, "w-new").unit_id in {working.unit_id, fresh.unit_id}


def test_restart_without_restore_still_reclaims_units_of_a_touched_run():
    journal = InMemoryUnitJournal()
    pool, _, _ = make(journal)
    pool.plan(RUN, PHASE, units(1))
    orphan = pool.lease(RUN, PHASE, "w")
    clock = FakeClock(start=0.0)
    restarted = WorkUnitPool(journal, ttl_s=TTL, clock=clock)
    assert restarted.restore() == 0  # what the engine calls at start: it knows no run yet
    assert restarted.lease(RUN, PHASE, "w2") is None  # adopted with a fresh ttl, not yet reclaimable
    clock.advance(TTL)
    again = restarted.lease(RUN, PHASE, "w2")
    assert again.unit_id == orphan.unit_id and again.token > orphan.token


def test_bad_requests_name_the_field():
    pool, _, _ = make()
    with pytest.raises(InvalidSpecError) as info:
        pool.plan(RUN, PHASE, [("a", {}), ("a", {})])
    assert info.value.field == "units[1].unit_id"
    with pytest.raises(InvalidSpecError) as info:
        pool.plan(RUN, PHASE, [("a", "not a dict")])
    assert info.value.field == "units[0].payload"
    with pytest.raises(InvalidSpecError) as info:
        pool.lease(RUN, PHASE, "")
    assert info.value.field == "worker"
    pool.plan(RUN, PHASE, units(1))
    lease = pool.lease(RUN, PHASE, "w")
    with pytest.raises(InvalidSpecError) as info:
        pool.complete(RUN, PHASE, lease.unit_id, lease.token, {"uri": "mem://x"})
    assert info.value.field == "artifact.sha256"
    with pytest.raises(NotFoundError):
        pool.heartbeat(RUN, PHASE, "no-such-unit", lease.token)
    with pytest.raises(InvalidSpecError) as info:
        WorkUnitPool(InMemoryUnitJournal(), ttl_s=-1)
    assert info.value.field == "ttl_s"


def test_a_pool_hands_out_nothing_of_a_run_it_is_told_is_not_running():
    stopped = {"run-stopped"}
    pool = WorkUnitPool(InMemoryUnitJournal(), ttl_s=TTL, clock=FakeClock(),
                        accepts_work=lambda run_id, phase: run_id not in stopped)
    pool.plan("run-stopped", PHASE, units(2))
    pool.plan(RUN, PHASE, units(1))
    assert pool.lease("run-stopped", PHASE, "w1") is None
    assert [u.state for u in pool.units("run-stopped", PHASE)] == ["pending", "pending"]
    assert pool.lease(RUN, PHASE, "w1").unit_id == "u00"
