"""Cost budgets shared by a phase's workers, and work units leased from 'any run': the StateStore rules,
the gRPC contract and the GrpcUnitService client (issue #8's scale-out)."""

import sqlite3
import threading

import grpc
import pytest

from agentforge.v1 import coordinator_pb2
from services.coordinator.core import state as state_mod
from services.coordinator.core.state import StateStore
from shared.errors import FailedPreconditionError, InvalidSpecError, NotFoundError, StaleLeaseError
from shared.rpc.auth import with_token
from shared.rpc.unit_client import GrpcUnitService
from tests.coordinator.cluster import TOKEN
from tests.coordinator.test_state import make_run


@pytest.fixture
def store(tmp_path):
    with StateStore(tmp_path / "state.db") as s:
        make_run(s)
        yield s


def test_reservations_never_let_spent_plus_reserved_exceed_the_limit(store):
    ok, snap = store.budget_reserve("r1", "cognate", 1.0, 0.4, "a")
    assert ok and snap["reserved_usd"] == pytest.approx(0.4)
    assert store.budget_reserve("r1", "cognate", 1.0, 0.4, "b")[0]
    ok, snap = store.budget_reserve("r1", "cognate", 1.0, 0.4, "c")  # 1.2 > 1.0
    assert not ok and snap["refused"] == 1
    snap = store.budget_settle("r1", "cognate", "a", 0.1)  # actual below the worst case frees the rest
    assert snap["spent_usd"] == pytest.approx(0.1) and snap["reserved_usd"] == pytest.approx(0.4)
    assert store.budget_reserve("r1", "cognate", 1.0, 0.4, "c")[0]
    # settling twice, or a retried reserve with the same id, never double-counts
    assert store.budget_settle("r1", "cognate", "a", 0.1)["spent_usd"] == pytest.approx(0.1)
    assert store.budget_reserve("r1", "cognate", 1.0, 0.4, "c")[1]["reserved_usd"] == pytest.approx(0.8)
    snap = store.budget_settle("r1", "cognate", "b", None)  # unbilled: dropped, nothing spent
    assert snap["spent_usd"] == pytest.approx(0.1) and snap["reserved_usd"] == pytest.approx(0.4)


def test_bad_budget_input_names_the_field(store):
    with pytest.raises(InvalidSpecError, match="amount_usd"):
        store.budget_reserve("r1", "cognate", 1.0, -0.1, "x")
    with pytest.raises(InvalidSpecError, match="limit_usd"):
        store.budget_reserve("r1", "cognate", float("nan"), 0.1, "x")
    with pytest.raises(NotFoundError, match="r9"):
        store.budget_reserve("r9", "cognate", 1.0, 0.1, "x")
    store.budget_reserve("r1", "cognate", 1.0, 0.1, "x")
    with pytest.raises(FailedPreconditionError, match="one phase has one limit"):
        store.budget_reserve("r1", "cognate", 2.0, 0.1, "y")


def test_concurrent_reservations_from_two_processes_stay_within_the_limit(tmp_path):
    """Two StateStore connections (as two coordinator processes would hold) racing from 8 threads."""
    path = tmp_path / "state.db"
    with StateStore(path) as s:
        make_run(s)
    a, b = StateStore(path), StateStore(path)
    granted = []
    lock = threading.Lock()

    def hammer(i):
        for j in range(25):
            ok, _ = (a if i % 2 else b).budget_reserve("r1", "cognate", 1.0, 0.03, f"{i}-{j}")
            if ok:
                with lock:
                    granted.append(0.03)
    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) <= 1.0 + 1e-9 and len(granted) == 33  # floor(1.0 / 0.03)
    assert a.budget_snapshot("r1", "cognate")["refused"] == 200 - 33
    a.close()
    b.close()


def test_a_version_1_file_is_migrated_to_budgets(tmp_path, monkeypatch):
    path = tmp_path / "state.db"
    monkeypatch.setattr(state_mod, "MIGRATIONS", state_mod.MIGRATIONS[:1])
    monkeypatch.setattr(state_mod, "SCHEMA_VERSION", 1)
    with StateStore(path) as s:
        make_run(s)
    monkeypatch.undo()
    with StateStore(path) as s:
        assert s.schema_version == 2
        assert s.budget_reserve("r1", "cognate", 1.0, 0.5, "a")[0]
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM budget_reservations").fetchone()[0] == 1
    conn.close()


# -- over gRPC ---------------------------------------------------------------------------------------------

def _client(cluster) -> GrpcUnitService:
    return GrpcUnitService(with_token(grpc.insecure_channel(cluster.server.address), TOKEN), retry_for_s=2)


def test_budget_rpcs_and_the_grpc_budget_client(cluster):
    hold = threading.Event()
    cluster.behaviour["reasoning_data"].hold = hold
    run_id = cluster.create()
    budget = _client(cluster).budget(run_id, "reasoning_data", 1.0)
    rid = budget.reserve(0.6)
    assert rid is not None and budget.reserve(0.6) is None
    budget.settle(rid, 0.25)
    assert budget.snapshot() == {"limit_usd": 1.0, "spent_usd": 0.25, "reserved_usd": 0.0, "refused": 1}
    other = budget.reserve(0.7)
    budget.release(other)
    assert budget.snapshot()["reserved_usd"] == 0.0
    with pytest.raises(grpc.RpcError) as err:
        cluster.stub.ReserveBudget(coordinator_pb2.ReserveBudgetRequest(
            run_id=run_id, phase="reasoning_data", limit_usd=1.0, amount_usd=-1, reservation_id="z"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "amount_usd" in err.value.details()
    hold.set()


def test_a_replica_leases_units_of_any_running_run_and_list_units_shows_what_completed(cluster):
    hold = threading.Event()
    cluster.behaviour["reasoning_data"].hold = hold
    run_id = cluster.create()
    cluster.wait(lambda: cluster.phase(run_id, "reasoning_data").state == "running", what="reasoning_data running")
    client = _client(cluster)
    assert client.plan(run_id, "reasoning_data", [(f"u{i}", {"items": ["a", "b"], "n": "x"}) for i in range(3)]) == 3
    got = []
    while (unit := client.lease("", "reasoning_data", "replica-1")) is not None:
        assert unit.run_id == run_id and unit.payload == {"items": ["a", "b"], "n": "x"}
        client.heartbeat(unit)
        ref = {"uri": f"file:///{unit.unit_id}", "sha256": "0" * 64, "size": 1, "name": unit.unit_id}
        assert client.complete(unit, ref)
        got.append(unit.unit_id)
        with pytest.raises(StaleLeaseError):  # a completed unit's lease is over
            client.heartbeat(unit)
    assert sorted(got) == ["u0", "u1", "u2"]
    listed = client.list_units(run_id, "reasoning_data")
    assert [(u.unit_id, u.state) for u in listed] == [("u0", "done"), ("u1", "done"), ("u2", "done")]
    assert all(u.artifact["uri"] == f"file:///{u.unit_id}" for u in listed)
    # a phase that is not running hands out nothing, whatever its units
    assert client.lease("", "quietstar", "replica-1") is None
    hold.set()
