"""Accelerator leases: capacity is never exceeded, tokens only grow, and a stale holder is always refused."""

from __future__ import annotations

import threading

import pytest

from tests.coordinator.clock import FakeClock

from services.coordinator.core.leases import AcceleratorLeases, InMemoryLeaseJournal, LeaseRecord
from shared.errors import AlreadyExistsError, InvalidSpecError, StaleLeaseError

TTL = 10.0


def make(capacity: int = 1, journal: InMemoryLeaseJournal | None = None, clock: FakeClock | None = None):
    journal = journal or InMemoryLeaseJournal()
    clock = clock or FakeClock()
    return AcceleratorLeases(journal, capacity=capacity, ttl_s=TTL, clock=clock), journal, clock


def test_capacity_one_serializes_two_holders_until_release():
    leases, _, _ = make(capacity=1)
    a = leases.acquire("job-a", run_id="r1", phase="cognate")
    assert a is not None and a.holder == "job-a"
    assert leases.acquire("job-b") is None
    assert leases.free_slots() == 0
    assert leases.release(a.lease_id, a.token) is True
    b = leases.acquire("job-b")
    assert b is not None and b.token > a.token
    assert [lease.holder for lease in leases.held()] == ["job-b"]


def test_capacity_two_allows_exactly_two():
    leases, _, _ = make(capacity=2)
    a, b = leases.acquire("a"), leases.acquire("b")
    assert a is not None and b is not None and a.token != b.token
    assert leases.acquire("c") is None
    assert leases.free_slots() == 0 and leases.capacity == 2


def test_reacquire_by_the_same_holder_is_idempotent():
    leases, journal, _ = make(capacity=2)
    first = leases.acquire("job-a", run_id="r1", phase="bitnet")
    again = leases.acquire("job-a", run_id="r1", phase="bitnet")
    assert again == first
    assert len(journal.load_leases()) == 1 and leases.free_slots() == 1
    with pytest.raises(AlreadyExistsError, match="job-a"):
        leases.acquire("job-a", run_id="r2", phase="bitnet")


def test_grants_are_journaled_and_releases_removed():
    leases, journal, _ = make(capacity=2)
    a = leases.acquire("a", run_id="r", phase="p")
    assert journal.load_leases() == [LeaseRecord(a.lease_id, "a", a.token, "r", "p")]
    leases.release(a.lease_id, a.token)
    assert journal.load_leases() == []


def test_tokens_strictly_increase_across_grants_and_a_restart():
    journal = InMemoryLeaseJournal()
    leases, _, clock = make(capacity=1, journal=journal)
    tokens = []
    for i in range(5):
        lease = leases.acquire(f"job-{i}")
        tokens.append(lease.token)
        leases.release(lease.lease_id, lease.token)
    survivor = leases.acquire("survivor")
    tokens.append(survivor.token)

    # The coordinator restarts: new object, same journal, a fresh monotonic clock with another origin.
    restarted, _, clock2 = make(capacity=1, journal=journal, clock=FakeClock(start=5.0))
    restarted.restore()
    assert [lease.lease_id for lease in restarted.held()] == [survivor.lease_id]
    assert restarted.acquire("newcomer") is None  # the restored lease still takes the only slot
    assert restarted.check(survivor.token).holder == "survivor"

    assert restarted.release(survivor.lease_id, survivor.token) is True
    after = restarted.acquire("newcomer")
    tokens.append(after.token)
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


def test_restored_lease_gets_a_fresh_ttl_and_expires_if_nobody_renews():
    journal = InMemoryLeaseJournal()
    leases, _, _ = make(capacity=1, journal=journal)
    old = leases.acquire("gone-job")
    clock = FakeClock(start=0.0)
    restarted, _, _ = make(capacity=1, journal=journal, clock=clock)
    (restored,) = restarted.held()
    assert restored.expires_at == pytest.approx(clock.now + TTL)
    clock.advance(TTL - 0.1)
    assert restarted.acquire("other") is None
    clock.advance(0.2)
    other = restarted.acquire("other")
    assert other is not None and other.token > old.token
    assert journal.load_leases() == [other.record]


def test_crashed_holder_expires_and_its_token_is_refused_everywhere():
    leases, journal, clock = make(capacity=1)
    crashed = leases.acquire("crashed", run_id="r1", phase="cognate")
    clock.advance(TTL + 0.001)  # the holder died: no renew

    successor = leases.acquire("successor", run_id="r1", phase="cognate")
    assert successor is not None and successor.token > crashed.token
    assert [record.lease_id for record in journal.load_leases()] == [successor.lease_id]

    with pytest.raises(StaleLeaseError, match=rf"{crashed.lease_id}.*expired"):
        leases.renew(crashed.lease_id, crashed.token)
    with pytest.raises(StaleLeaseError, match=rf"token {crashed.token} is stale"):
        leases.check(crashed.token)
    assert not leases.is_current(crashed.token)
    assert leases.release(crashed.lease_id, crashed.token) is False  # late release: harmless no-op
    assert leases.is_current(successor.token)  # and it did not disturb the new holder


def test_expired_lease_is_refused_even_before_anyone_reaps_it():
    leases, _, clock = make(capacity=1)
    lease = leases.acquire("a")
    clock.advance(TTL)
    with pytest.raises(StaleLeaseError, match="expired"):
        leases.renew(lease.lease_id, lease.token)
    assert leases.free_slots() == 1


def test_renew_extends_the_deadline():
    leases, _, clock = make(capacity=1)
    lease = leases.acquire("a")
    clock.advance(TTL * 0.8)
    renewed = leases.renew(lease.lease_id, lease.token)
    assert renewed.token == lease.token and renewed.expires_at == pytest.approx(clock.now + TTL)
    clock.advance(TTL * 0.8)  # past the original deadline, inside the renewed one
    assert leases.check(lease.token).lease_id == lease.lease_id
    assert leases.acquire("b") is None
    clock.advance(TTL * 0.2 + 0.001)
    assert not leases.is_current(lease.token)
    assert leases.acquire("b") is not None


def test_wrong_tokens_are_refused_with_an_actionable_message():
    leases, _, _ = make(capacity=1)
    lease = leases.acquire("a")
    forged = lease.token + 100
    with pytest.raises(StaleLeaseError, match=rf"{lease.lease_id}: token {forged} is not current.*{lease.token}"):
        leases.renew(lease.lease_id, forged)
    with pytest.raises(StaleLeaseError, match=rf"token {forged}"):
        leases.release(lease.lease_id, forged)
    with pytest.raises(StaleLeaseError, match="unknown"):
        leases.renew("lease-nope", lease.token)
    with pytest.raises(StaleLeaseError, match="no live lease"):
        leases.check(forged)
    assert leases.is_current(lease.token)  # refusals changed nothing

    assert leases.release(lease.lease_id, lease.token) is True
    assert leases.release(lease.lease_id, lease.token) is False  # released twice: no error
    with pytest.raises(StaleLeaseError, match="was released"):
        leases.release(lease.lease_id, forged)
    with pytest.raises(StaleLeaseError, match="was released"):
        leases.renew(lease.lease_id, lease.token)
    assert leases.release("lease-from-before-a-restart", 3) is False  # unknown: nothing to free


def test_reap_returns_and_forgets_only_expired_leases():
    leases, journal, clock = make(capacity=3)
    early = leases.acquire("early")
    clock.advance(TTL / 2)
    late = leases.acquire("late")
    clock.advance(TTL / 2)
    assert leases.reap() == [early]
    assert [record.lease_id for record in journal.load_leases()] == [late.lease_id]
    assert leases.reap() == []


@pytest.mark.parametrize("kwargs, field", [
    ({"capacity": 0, "ttl_s": 1.0}, "capacity"),
    ({"capacity": True, "ttl_s": 1.0}, "capacity"),
    ({"capacity": 1, "ttl_s": 0}, "ttl_s"),
    ({"capacity": 1, "ttl_s": float("nan")}, "ttl_s"),
])
def test_bad_settings_name_the_argument(kwargs, field):
    with pytest.raises(InvalidSpecError) as info:
        AcceleratorLeases(InMemoryLeaseJournal(), **kwargs)
    assert info.value.field == field


@pytest.mark.parametrize("holder", ["", "  ", None])
def test_empty_holder_is_refused(holder):
    leases, _, _ = make()
    with pytest.raises(InvalidSpecError) as info:
        leases.acquire(holder)
    assert info.value.field == "holder"


class _ReusingJournal(InMemoryLeaseJournal):
    def next_fencing_token(self) -> int:
        return 1


def test_a_journal_that_repeats_a_token_stops_grants():
    leases = AcceleratorLeases(_ReusingJournal(), capacity=2, ttl_s=TTL, clock=FakeClock())
    leases.acquire("a")
    with pytest.raises(RuntimeError, match="fencing token 1"):
        leases.acquire("b")


@pytest.mark.parametrize("capacity", [1, 2])
def test_threads_never_hold_more_than_capacity(capacity):
    leases, _, _ = make(capacity=capacity)
    guard = threading.Lock()
    holding = 0
    peak = 0
    grants: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(name: str) -> None:
        nonlocal holding, peak
        try:
            start.wait()
            for _ in range(200):
                lease = leases.acquire(name)
                if lease is None:
                    continue
                with guard:
                    holding += 1
                    peak = max(peak, holding)
                    grants.append(lease.token)
                leases.renew(lease.lease_id, lease.token)
                # Count down before releasing, so the count never trails a slot that is already free.
                with guard:
                    holding -= 1
                assert leases.release(lease.lease_id, lease.token) is True
        except BaseException as exc:  # noqa: BLE001 - surfaced by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"holder-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert 1 <= peak <= capacity
    assert len(grants) == len(set(grants))  # every grant had its own token
    assert leases.held() == [] and leases.free_slots() == capacity
