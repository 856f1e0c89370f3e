"""StateStore: durable across reopen, atomic under threads, versioned schema, strict about bad files."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from services.coordinator.core import state as state_mod
from services.coordinator.core.state import LeaseRecord, StateStore
from shared.errors import (AlreadyExistsError, FailedPreconditionError, InvalidSpecError, NotFoundError,
                           StorageError)

PHASES = [{"phase": "datasets", "state": "pending", "config_hash": "c0"},
          {"phase": "cognate", "state": "pending", "config_hash": "c1"}]


def make_run(store: StateStore, run_id: str = "r1", request_id: str = "q1", config_hash: str = "h1", **kw):
    args = dict(run_id=run_id, request_id=request_id, profile="tiny", config={"seed": 1, "name": "ü"},
                config_hash=config_hash, start_phase=None, inputs=[{"uri": "file:///x", "sha256": "ab"}],
                reuse=True, phases=PHASES)
    return store.create_run(**{**args, **kw})


def hammer(n_threads: int, fn) -> list:
    """Run fn(thread_index) in n threads started together; return their results in thread order."""
    results: list = [None] * n_threads
    barrier = threading.Barrier(n_threads)

    def work(i: int) -> None:
        barrier.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.fixture
def store(tmp_path):
    with StateStore(tmp_path / "state.db") as s:
        yield s


# --- the file --------------------------------------------------------------------------------------------

def test_new_file_is_wal_at_current_schema(tmp_path):
    path = tmp_path / "sub" / "state.db"  # a missing folder is created
    with StateStore(path) as s:
        assert s.schema_version == state_mod.SCHEMA_VERSION == 2
        assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        s.next_fencing_token()  # commits with FULL, then must put NORMAL back
        assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_empty_file_gets_the_full_schema(tmp_path):
    path = tmp_path / "state.db"
    path.touch()
    with StateStore(path) as s:
        assert s.schema_version == 2
        assert make_run(s).run_id == "r1"


def test_reopen_preserves_everything(tmp_path):
    path = tmp_path / "state.db"
    with StateStore(path) as s:
        tokens = [s.next_fencing_token() for _ in range(3)]
        make_run(s)
        s.update_run("r1", state="blocked", error="gate failed")
        s.update_phase("r1", "cognate", state="succeeded", attempt=2, job_id="j", fencing_token=tokens[-1],
                       metrics={"loss": 2.5}, artifacts=[{"uri": "u"}], gate={"passed": False},
                       progress={"step": 3}, input_hashes=["a", "b"], finished_at=5.0)
        s.append_event("r1", "phase_started", phase="cognate", payload={"n": 1})
        s.record_approval("r1", "cognate", "ana", "known-noisy metric", {"passed": False})
        s.plan_units("r1", "cognate", [("u1", {"prompt": "x"}), ("u2", {})])
        s.update_unit("r1", "cognate", "u1", state="done", worker="w", token=7, attempts=1, artifact={"k": 1})
        s.save_lease(LeaseRecord("L1", "cognate-0", tokens[-1], "r1", "cognate"))
        s.save_lease(LeaseRecord("L2", "bitnet-0", 99))
        assert s.delete_lease("L2") and not s.delete_lease("L2")
        before = (s.get_run("r1"), s.list_phases("r1"), s.events("r1"), s.approvals("r1"),
                  s.list_units("r1", "cognate"), s.load_leases())
    with StateStore(path) as s:
        assert (s.get_run("r1"), s.list_phases("r1"), s.events("r1"), s.approvals("r1"),
                s.list_units("r1", "cognate"), s.load_leases()) == before
        assert s.next_fencing_token() > tokens[-1]
    run, phases, events, approvals, units, leases = before
    assert (run.state, run.error, run.config, run.reuse) == ("blocked", "gate failed", {"seed": 1, "name": "ü"}, True)
    assert [p.phase for p in phases] == ["datasets", "cognate"]
    assert phases[1].metrics == {"loss": 2.5} and phases[1].gate == {"passed": False}
    assert [e.seq for e in events] == [1, 2] and events[0].kind == "run_created"
    assert approvals[0]["who"] == "ana" and approvals[0]["gate"] == {"passed": False}
    assert units[0].artifact == {"k": 1} and (units[1].state, units[1].worker, units[1].token) == ("pending", "", 0)
    assert leases == [LeaseRecord("L1", "cognate-0", tokens[-1], "r1", "cognate")]


def test_json_columns_are_canonical_json(store):
    make_run(store)
    raw = store._conn.execute("SELECT config_json FROM runs").fetchone()[0]
    assert raw == '{"name":"ü","seed":1}'
    with pytest.raises(InvalidSpecError, match="NaN"):
        store.update_phase("r1", "cognate", metrics={"loss": float("nan")})


def test_fencing_tokens_unique_and_increasing_across_threads(tmp_path):
    path = tmp_path / "state.db"
    with StateStore(path) as s:
        per_thread = hammer(4, lambda i: [s.next_fencing_token() for _ in range(50)])
    all_tokens = [t for ts in per_thread for t in ts]
    assert sorted(all_tokens) == list(range(1, 201))
    assert all(ts == sorted(ts) for ts in per_thread)
    with StateStore(path) as s:
        assert s.next_fencing_token() == 201


def test_two_stores_on_one_file_share_the_counter(tmp_path):
    # two connections (as after an unclean handover): BEGIN IMMEDIATE keeps the increment atomic
    a, b = StateStore(tmp_path / "s.db"), StateStore(tmp_path / "s.db")
    try:
        tokens = hammer(4, lambda i: [(a if i % 2 else b).next_fencing_token() for _ in range(25)])
    finally:
        a.close()
        b.close()
    assert sorted(t for ts in tokens for t in ts) == list(range(1, 101))


# --- schema versions -------------------------------------------------------------------------------------

def test_newer_schema_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_meta(key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO schema_meta VALUES ('schema_version', '3')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(FailedPreconditionError) as err:
        StateStore(path)
    assert path.read_bytes() == before
    assert f"state file {path} has schema version 3, this coordinator supports up to 2; upgrade" in str(err.value)


def test_older_file_is_migrated_once(tmp_path, monkeypatch):
    path = tmp_path / "state.db"
    with StateStore(path) as s:
        make_run(s)
    # v3 adds a column and a table; ALTER TABLE fails if run twice, so a clean reopen proves it ran once
    monkeypatch.setattr(state_mod, "MIGRATIONS", [*state_mod.MIGRATIONS,
                                                  (3, "ALTER TABLE runs ADD COLUMN note TEXT DEFAULT 'a;b';"
                                                      "CREATE TABLE extra(x INTEGER)")])
    monkeypatch.setattr(state_mod, "SCHEMA_VERSION", 3)
    for _ in range(2):
        with StateStore(path) as s:
            assert s.schema_version == 3
            assert s._conn.execute("SELECT note FROM runs").fetchone()[0] == "a;b"
            assert s.get_run("r1").request_id == "q1"
    monkeypatch.setattr(state_mod, "SCHEMA_VERSION", 2)
    with pytest.raises(FailedPreconditionError):
        StateStore(path)


def test_failed_migration_rolls_back_whole_step(tmp_path, monkeypatch):
    path = tmp_path / "state.db"
    StateStore(path).close()
    monkeypatch.setattr(state_mod, "MIGRATIONS", [*state_mod.MIGRATIONS,
                                                  (3, "CREATE TABLE extra(x INTEGER); SELECT no_such_function()")])
    monkeypatch.setattr(state_mod, "SCHEMA_VERSION", 3)
    with pytest.raises(StorageError, match="schema version 3 failed"):
        StateStore(path)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM schema_meta").fetchone()[0] == "2"
    assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'extra'").fetchone() is None
    conn.close()


def test_non_sqlite_file_is_a_storage_error(tmp_path):
    path = tmp_path / "state.db"
    path.write_bytes(b"this is a text file, not a database" * 100)
    with pytest.raises(StorageError, match=str(path)):
        StateStore(path)


def test_foreign_sqlite_file_is_a_storage_error(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE runs(x)")
    conn.close()
    with pytest.raises(StorageError, match="not a coordinator state file"):
        StateStore(path)


# --- runs and phases -------------------------------------------------------------------------------------

def test_create_run_is_idempotent_on_request_id(store):
    first = make_run(store)
    again = make_run(store, run_id="r-other")  # a retry mints a fresh run id; the stored run wins
    assert again == first
    assert [r.run_id for r in store.list_runs()] == ["r1"]
    assert len(store.events("r1")) == 1
    with pytest.raises(AlreadyExistsError, match="request id 'q1'"):
        make_run(store, run_id="r2", config_hash="h2")
    with pytest.raises(AlreadyExistsError, match="run id 'r1'"):
        make_run(store, request_id="q2")


def test_create_run_is_atomic(store):
    with pytest.raises(InvalidSpecError, match="listed twice"):
        make_run(store, phases=[PHASES[0], PHASES[0]])
    with pytest.raises(InvalidSpecError, match="NaN"):
        make_run(store, config={"lr": float("inf")})
    assert store.list_runs() == []


def test_unknown_ids_are_not_found(store):
    make_run(store)
    with pytest.raises(NotFoundError, match="unknown run id 'nope'"):
        store.get_run("nope")
    with pytest.raises(NotFoundError, match="'bitnet'.*'r1'"):
        store.get_phase("r1", "bitnet")
    with pytest.raises(NotFoundError, match="unknown run id 'nope'"):
        store.get_phase("nope", "cognate")
    for call in (lambda: store.update_run("nope", state="failed"), lambda: store.events("nope"),
                 lambda: store.update_phase("r1", "bitnet", state="x"), lambda: store.append_event("nope", "k"),
                 lambda: store.get_unit("r1", "cognate", "u9"), lambda: store.plan_units("r1", "bitnet", [])):
        with pytest.raises(NotFoundError):
            call()


@pytest.mark.parametrize("call, field", [
    (lambda s: s.get_run(""), "run_id"),
    (lambda s: s.get_phase("r1", None), "phase"),
    (lambda s: s.append_event("r1", ""), "kind"),
    (lambda s: s.plan_units("r1", "cognate", [("", {})]), "units[0].unit_id"),
    (lambda s: s.update_run("r1", profile="x"), "profile"),
    (lambda s: s.update_phase("r1", "cognate", depends_on=["x"]), "depends_on"),
    (lambda s: s.compare_and_set_unit("r1", "cognate", "u", {"bogus": 1}, state="x"), "expect.bogus"),
])
def test_bad_arguments_name_the_field(store, call, field):
    make_run(store)
    store.plan_units("r1", "cognate", [("u", {})])
    with pytest.raises(InvalidSpecError) as err:
        call(store)
    assert err.value.field == field


def test_list_runs_newest_first_and_filtered(tmp_path):
    clock = iter(range(100)).__next__
    with StateStore(tmp_path / "s.db", clock=lambda: float(clock())) as s:
        for i in range(3):
            make_run(s, run_id=f"r{i}", request_id=f"q{i}")
        s.update_run("r1", state="failed")
        assert [r.run_id for r in s.list_runs()] == ["r2", "r1", "r0"]
        assert [r.run_id for r in s.list_runs(["failed"])] == ["r1"]
        assert [r.run_id for r in s.list_runs("running")] == ["r2", "r0"]
        assert [r.run_id for r in s.list_runs("running", oldest_first=True)] == ["r0", "r2"]
        assert s.list_runs([]) == []
        assert s.get_run("r1").updated_at > s.get_run("r1").created_at


def test_find_finished_phase_needs_equal_hashes_and_success(store):
    make_run(store, run_id="old", request_id="q-old")
    make_run(store, run_id="new", request_id="q-new")
    store.update_phase("old", "cognate", state="succeeded", input_hashes=["i1", "i2"], finished_at=1.0)
    store.update_phase("new", "cognate", state="failed", input_hashes=["i1", "i2"], finished_at=2.0)
    found = store.find_finished_phase("cognate", "c1", ["i1", "i2"])
    assert found is not None and found.run_id == "old"
    assert store.find_finished_phase("cognate", "other", ["i1", "i2"]) is None
    assert store.find_finished_phase("cognate", "c1", ["i1"]) is None
    assert store.find_finished_phase("cognate", "c1", ["i2", "i1"]) is None  # inputs are positional
    assert store.find_finished_phase("datasets", "c1", ["i1", "i2"]) is None
    store.update_phase("new", "cognate", state="succeeded")
    assert store.find_finished_phase("cognate", "c1", ["i1", "i2"]).run_id == "new"  # the latest wins


# --- events ----------------------------------------------------------------------------------------------

def test_event_seqs_are_gapless_under_concurrent_appends(store):
    make_run(store)
    make_run(store, run_id="r2", request_id="q2")
    hammer(4, lambda i: [store.append_event("r1" if i < 3 else "r2", "progress", payload={"t": i, "k": k})
                         for k in range(40)])
    assert [e.seq for e in store.events("r1")] == list(range(1, 122))
    assert [e.seq for e in store.events("r2")] == list(range(1, 42))
    tail = store.events("r1", after_seq=100, limit=5)
    assert [e.seq for e in tail] == [101, 102, 103, 104, 105]


# --- work units ------------------------------------------------------------------------------------------

def test_plan_units_is_idempotent(store):
    make_run(store)
    assert store.plan_units("r1", "cognate", [("a", {"n": 1}), ("b", {"n": 2})]) == 2
    store.update_unit("r1", "cognate", "a", state="leased", worker="w1", token=3, attempts=1)
    assert store.plan_units("r1", "cognate", [("a", {"n": 99}), ("b", {}), ("c", {"n": 3})]) == 1
    units = store.list_units("r1", "cognate")
    assert [u.unit_id for u in units] == ["a", "b", "c"]
    assert (units[0].state, units[0].payload, units[0].worker) == ("leased", {"n": 1}, "w1")
    assert [u.unit_id for u in store.list_units("r1", "cognate", state="pending")] == ["b", "c"]
    assert store.list_units("r1", "datasets") == []


def test_compare_and_set_lets_one_racer_win(store):
    make_run(store)
    store.plan_units("r1", "cognate", [(f"u{i}", {}) for i in range(20)])
    for i in range(20):
        won = hammer(2, lambda w: store.compare_and_set_unit(
            "r1", "cognate", f"u{i}", {"state": "pending", "attempts": 0},
            state="leased", worker=f"w{w}", token=10 + w, attempts=1))
        assert sorted(won) == [False, True]
        unit = store.get_unit("r1", "cognate", f"u{i}")
        assert unit.worker == f"w{won.index(True)}" and unit.attempts == 1


def test_compare_and_set_matches_none_and_json(store):
    make_run(store)
    store.plan_units("r1", "cognate", [("u", {})])
    assert store.compare_and_set_unit("r1", "cognate", "u", {"artifact": None}, state="done", artifact={"a": [1]})
    assert not store.compare_and_set_unit("r1", "cognate", "u", {"artifact": None}, state="pending")
    assert store.compare_and_set_unit("r1", "cognate", "u", {"artifact": {"a": [1]}}, worker="")
    with pytest.raises(NotFoundError, match="'missing'"):
        store.compare_and_set_unit("r1", "cognate", "missing", {}, state="x")


def test_closed_store_refuses_calls(tmp_path):
    s = StateStore(Path(tmp_path) / "s.db")
    s.close()
    s.close()
    with pytest.raises(FailedPreconditionError, match="closed"):
        s.next_fencing_token()
