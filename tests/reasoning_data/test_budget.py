"""The cost ledger: prices, reserve/settle/release, the limit as an invariant under many threads."""

from __future__ import annotations

import logging
import random
import threading

import pytest

from services.reasoning_data.core.budget import Budget, LocalBudget, Price
from shared.errors import FailedPreconditionError, InvalidSpecError


def test_price_is_per_million_tokens():
    p = Price(input_per_mtok=0.15, output_per_mtok=0.60)
    assert p.cost(1_000_000, 0) == pytest.approx(0.15)
    assert p.cost(0, 1_000_000) == pytest.approx(0.60)
    assert p.cost(2000, 500) == pytest.approx(2000 * 0.15e-6 + 500 * 0.60e-6)
    assert p.cost(0, 0) == 0


@pytest.mark.parametrize("bad", [-0.01, float("nan"), float("inf"), "1", True])
def test_bad_prices_name_the_field(bad):
    with pytest.raises(InvalidSpecError) as err:
        Price(input_per_mtok=bad, output_per_mtok=1.0)
    assert err.value.field == "price.input_per_mtok"
    with pytest.raises(InvalidSpecError) as err:
        Price(input_per_mtok=1.0, output_per_mtok=bad)
    assert err.value.field == "price.output_per_mtok"


@pytest.mark.parametrize("bad", [-1, -1e-9, float("nan"), float("inf"), None])
def test_negative_or_bad_limit_names_cost_limit_usd(bad):
    with pytest.raises(InvalidSpecError) as err:
        LocalBudget(bad)
    assert err.value.field == "cost_limit_usd"
    assert "cost_limit_usd" in str(err.value)


def test_local_budget_implements_the_protocol_and_snapshot_keys():
    b = LocalBudget(1.0)
    assert isinstance(b, Budget)
    assert set(b.snapshot()) == {"limit_usd", "spent_usd", "reserved_usd", "refused"}


def test_reserve_refuses_what_would_cross_the_limit_and_counts_it():
    b = LocalBudget(1.0)
    r1 = b.reserve(0.6)
    assert r1 is not None
    assert b.reserve(0.5) is None                       # 0.6 + 0.5 > 1.0
    r2 = b.reserve(0.4)                                 # exactly at the limit is allowed
    assert r2 is not None
    assert b.snapshot() == {"limit_usd": 1.0, "spent_usd": 0.0, "reserved_usd": pytest.approx(1.0),
                            "refused": 1}
    assert b.reserve(1e-9) is None
    assert b.snapshot()["refused"] == 2


def test_settle_replaces_the_reservation_and_release_frees_it():
    b = LocalBudget(1.0)
    r1, r2 = b.reserve(0.5), b.reserve(0.5)
    assert b.reserve(0.1) is None
    b.settle(r1, 0.2)                                   # the call cost less than its worst case
    s = b.snapshot()
    assert s["spent_usd"] == pytest.approx(0.2) and s["reserved_usd"] == pytest.approx(0.5)
    b.release(r2)                                       # never billed: nothing spent
    s = b.snapshot()
    assert s["spent_usd"] == pytest.approx(0.2) and s["reserved_usd"] == 0
    assert b.reserve(0.8) is not None                   # the freed room is usable again
    assert b.reserve(0.01) is None


def test_each_reservation_closes_once():
    b = LocalBudget(1.0)
    r = b.reserve(0.1)
    b.settle(r, 0.1)
    with pytest.raises(FailedPreconditionError):
        b.settle(r, 0.1)
    with pytest.raises(FailedPreconditionError):
        b.release(r)
    with pytest.raises(FailedPreconditionError):
        b.release("no-such-id")
    assert b.snapshot()["spent_usd"] == pytest.approx(0.1)


def test_actual_above_reservation_is_recorded_as_is_with_a_warning(caplog):
    b = LocalBudget(1.0)
    r = b.reserve(0.1)
    with caplog.at_level(logging.WARNING, logger="services.reasoning_data.core.budget"):
        b.settle(r, 1.5)
    assert b.snapshot()["spent_usd"] == pytest.approx(1.5)   # the ledger tells the truth
    assert any("more than" in rec.message and rec.levelno == logging.WARNING for rec in caplog.records)
    assert b.reserve(0.0) is None                           # over the limit: nothing more starts


def test_negative_amounts_are_refused():
    b = LocalBudget(1.0)
    with pytest.raises(InvalidSpecError):
        b.reserve(-0.1)
    r = b.reserve(0.1)
    with pytest.raises(InvalidSpecError):
        b.settle(r, -0.1)


def test_zero_limit_refuses_any_positive_cost():
    b = LocalBudget(0)
    assert b.reserve(1e-12) is None
    assert b.snapshot()["refused"] == 1


def test_sums_are_exact_whatever_the_order():
    # 0.1 + 0.2 != 0.3 in floats; ten thousand tiny settles in two orders must still agree to the pico-dollar.
    amounts = [random.Random(0).uniform(0, 1e-4) for _ in range(10_000)]
    spent = []
    for order in (amounts, list(reversed(amounts))):
        b = LocalBudget(10.0)
        for a in order:
            b.settle(b.reserve(a), a)
        spent.append(b.snapshot()["spent_usd"])
    assert spent[0] == spent[1]
    assert spent[0] == pytest.approx(sum(amounts), abs=1e-12 * len(amounts))


def test_many_threads_never_cross_the_limit():
    limit = 5.0
    b = LocalBudget(limit)
    violations: list[dict] = []
    settled: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def watcher():
        while not stop.is_set():
            s = b.snapshot()
            if s["spent_usd"] + s["reserved_usd"] > limit + 1e-12:
                violations.append(s)

    def worker(seed: int):
        rng = random.Random(seed)
        mine = 0.0
        for _ in range(500):
            worst = rng.uniform(0.001, 0.05)
            rid = b.reserve(worst)
            if rid is None:
                continue
            if rng.random() < 0.2:
                b.release(rid)
            else:
                actual = worst * rng.random()
                b.settle(rid, actual)
                mine += actual
        with lock:
            settled.append(mine)

    watch = threading.Thread(target=watcher)
    watch.start()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watch.join()
    s = b.snapshot()
    assert not violations
    assert s["reserved_usd"] == 0
    assert s["spent_usd"] <= limit
    assert s["spent_usd"] == pytest.approx(sum(settled), abs=1e-9)
    assert s["refused"] > 0                       # the limit was actually reached
