"""StateStore: the coordinator's durable state (runs, phases, events, approvals, leases, work units) in SQLite.

Restart safety rests on this file: everything the coordinator must not forget lives here, so a restarted
coordinator reloads runs, re-adopts jobs and keeps fencing tokens increasing. One connection is shared by
the coordinator's threads behind an RLock; every write is one `BEGIN IMMEDIATE` transaction, which also
makes read-modify-write steps (counters, event seqs, compare-and-set) atomic against a second process on
the same file. WAL lets readers run beside the writer; synchronous=NORMAL survives a process crash, and
a power loss can only drop the last commits, which restart recovery redoes. The one exception is the
fencing-token counter, committed with synchronous=FULL (see next_fencing_token). JSON columns hold
canonical JSON, never pickle.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shared.canonical import dumps_canonical, loads_strict
from shared.errors import (AlreadyExistsError, FailedPreconditionError, InvalidSpecError, NotFoundError,
                           StorageError)

log = logging.getLogger(__name__)

from services.coordinator.core.state_schema import (  # noqa: F401 - records re-exported
    SCHEMA_VERSION,
    BUSY_TIMEOUT_MS,
    MIGRATIONS,
    RunRecord,
    PhaseRecord,
    EventRecord,
    UnitRecord,
    LeaseRecord,
    _RUN_FIELDS,
    _PHASE_JSON,
    _PHASE_FIELDS,
    _UNIT_JSON,
    _UNIT_FIELDS,
)


def _require_id(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidSpecError(f"must be a non-empty string, got {value!r}", field=name)
    return value


def _require_ids(**ids: Any) -> None:
    for name, value in ids.items():
        _require_id(name, value)


def _json(value: Any) -> str | None:
    return None if value is None else dumps_canonical(value)


def _load(text: str | None, name: str) -> Any:
    return None if text is None else loads_strict(text, name=name)


def _statements(sql: str) -> Iterator[str]:
    """Split a migration script into statements; sqlite3.complete_statement keeps `;` inside literals intact.

    The script is run statement by statement because executescript() would COMMIT our open transaction.
    """
    buf = ""
    for piece in sql.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \t\r\n;"):
                yield buf.strip()
            buf = ""


def _record(cls: type, row: sqlite3.Row) -> Any:
    """A record from a row: a field `x` reads column `x`, or `x_json` decoded; bools come back from 0/1."""
    keys, values = row.keys(), {}
    for f in dataclasses.fields(cls):
        if f.name in keys:
            values[f.name] = bool(row[f.name]) if f.type == "bool" else row[f.name]
        else:
            values[f.name] = _load(row[f"{f.name}_json"], f"{cls.__name__}.{f.name}")
    return cls(**values)


def _assignments(changes: dict[str, Any], allowed: dict[str, str], json_cols: dict[str, str],
                 what: str) -> tuple[str, list[Any]]:
    """`col = ?, ...` and encoded values for an UPDATE; an unknown field is a caller bug named in the error."""
    if not changes:
        raise InvalidSpecError(f"no {what} fields given to update")
    cols, values = [], []
    for name, value in changes.items():
        if name not in allowed:
            raise InvalidSpecError(f"cannot update {what} field '{name}' (allowed: {', '.join(sorted(allowed))})",
                                   field=name)
        if name == "state":
            _require_id("state", value)
        cols.append(f"{allowed[name]} = ?")
        values.append(_json(value) if name in json_cols else value)
    return ", ".join(cols), values


class StateStore:
    """The coordinator's state in one SQLite file; safe to call from several threads."""

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time):
        self.path = str(path)
        self._clock = clock
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so DDL in migrations is transactional too
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=BUSY_TIMEOUT_MS / 1000)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open state file {self.path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            # Check the version before anything writes: switching to WAL rewrites the header of a file
            # a newer coordinator owns, and we must leave such a file exactly as it was.
            version = self._read_version(conn)
            if version > SCHEMA_VERSION:
                raise FailedPreconditionError(
                    f"state file {self.path} has schema version {version}, this coordinator supports up to "
                    f"{SCHEMA_VERSION}; upgrade the coordinator")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal" and self.path != ":memory:":
                log.warning("state file %s: journal mode is %s, not WAL (filesystem without shared memory?)",
                            self.path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
            self._conn = conn
            self._migrate()
        except sqlite3.Error as exc:
            conn.close()
            self._conn = None
            raise StorageError(f"cannot open state file {self.path}: {exc} (is it a coordinator state file?)") \
                from exc
        except BaseException:
            conn.close()
            self._conn = None
            raise

    def __repr__(self) -> str:
        return f"StateStore({self.path!r})"

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- plumbing ------------------------------------------------------------------------------------------

    def _read_version(self, conn: sqlite3.Connection) -> int:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_meta" not in tables:
            if tables:
                raise StorageError(f"{self.path} is a SQLite database but not a coordinator state file "
                                   f"(no schema_meta table; it has {', '.join(sorted(tables))})")
            return 0
        row = conn.execute("SELECT value FROM schema_meta WHERE key = 'schema_version'").fetchone()
        try:
            return int(row[0])
        except (TypeError, ValueError) as exc:
            raise StorageError(f"state file {self.path} has no valid schema_version in schema_meta") from exc

    def _migrate(self) -> None:
        for version, sql in sorted(MIGRATIONS):
            with self._tx() as conn:
                # re-read inside the write lock: another process may have migrated the file meanwhile
                if self._read_version(conn) >= version:
                    continue
                try:
                    for stmt in _statements(sql):
                        conn.execute(stmt)
                    conn.execute("INSERT INTO schema_meta(key, value) VALUES ('schema_version', ?) "
                                 "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(version),))
                except sqlite3.Error as exc:
                    raise StorageError(f"migrating state file {self.path} to schema version {version} "
                                       f"failed: {exc}; it stays at version {version - 1}") from exc
            log.info("state file %s: migrated to schema version %d", self.path, version)

    def _tx_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise FailedPreconditionError(f"state store {self.path} is closed")
        return self._conn

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """Hold the lock; for a write, one BEGIN IMMEDIATE transaction committed on success, else rolled back."""
        with self._lock:
            conn = self._tx_conn()
            try:
                if write:
                    with conn:  # commits on success, rolls back on any exception
                        conn.execute("BEGIN IMMEDIATE")
                        yield conn
                else:
                    yield conn
            except sqlite3.IntegrityError as exc:
                raise InvalidSpecError(f"state file {self.path}: constraint failed: {exc}") from exc
            except sqlite3.Error as exc:
                raise StorageError(f"state file {self.path}: {exc}") from exc

    def _require_run(self, conn: sqlite3.Connection, run_id: str) -> None:
        if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
            raise NotFoundError(f"unknown run id '{run_id}'")

    def _require_phase(self, conn: sqlite3.Connection, run_id: str, phase: str) -> None:
        found = conn.execute("SELECT 1 FROM phases WHERE run_id = ? AND phase = ?", (run_id, phase)).fetchone()
        if found is None:
            self._require_run(conn, run_id)
            raise NotFoundError(f"unknown phase '{phase}' in run '{run_id}'")

    @property
    def schema_version(self) -> int:
        with self._tx(write=False) as conn:
            return self._read_version(conn)

    # --- counters ------------------------------------------------------------------------------------------

    def next_fencing_token(self) -> int:
        """The next fencing token; persisted, so tokens keep increasing across restarts.

        Committed with synchronous=FULL: under NORMAL a power loss could roll the counter back and hand an
        already-issued token out again, letting a stale holder look current. Tokens are rare (one per lease
        or job), so the extra fsync is cheap. The lock keeps other threads off the connection meanwhile.
        """
        with self._lock:
            self._tx_conn().execute("PRAGMA synchronous = FULL")
            try:
                with self._tx() as conn:
                    return conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'fencing_token' "
                                        "RETURNING value").fetchone()[0]
            finally:
                self._tx_conn().execute("PRAGMA synchronous = NORMAL")

    # --- runs ----------------------------------------------------------------------------------------------

    def create_run(self, *, run_id: str, request_id: str, profile: str, config: dict, config_hash: str,
                   start_phase: str | None, inputs: list[dict], reuse: bool, phases: list[dict],
                   state: str = "running") -> RunRecord:
        """The run, its phase rows (attempt 0) and a run_created event, in one transaction.

        Idempotent on request_id: a retried CreateRun with the same config hash gets the existing run back.
        """
        _require_ids(run_id=run_id, request_id=request_id, profile=profile, config_hash=config_hash, state=state)
        if start_phase is not None:
            _require_id("start_phase", start_phase)
        if not isinstance(config, dict):
            raise InvalidSpecError(f"must be a mapping, got {type(config).__name__}", field="config")
        if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
            raise InvalidSpecError("must be a list of mappings", field="inputs")
        rows: list[tuple[str, ...]] = []
        for i, spec in enumerate(phases):
            if not isinstance(spec, dict) or set(spec) != {"phase", "state", "config_hash"}:
                raise InvalidSpecError("needs exactly the keys phase, state, config_hash", field=f"phases[{i}]")
            if any(spec["phase"] == r[1] for r in rows):
                raise InvalidSpecError(f"phase {spec['phase']!r} is listed twice", field=f"phases[{i}].phase")
            rows.append((run_id, *(_require_id(f"phases[{i}].{k}", spec[k]) for k in ("phase", "state",
                                                                                      "config_hash"))))
        now = self._clock()
        with self._tx() as conn:
            row = conn.execute("SELECT * FROM runs WHERE request_id = ?", (request_id,)).fetchone()
            if row is not None:
                if row["config_hash"] == config_hash:
                    log.info("request id %s repeated: returning existing run %s", request_id, row["run_id"])
                    return _record(RunRecord, row)
                raise AlreadyExistsError(
                    f"request id '{request_id}' was already used for run '{row['run_id']}' with a different "
                    f"config (hash {row['config_hash']}, now {config_hash}); use a new request id")
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None:
                raise AlreadyExistsError(f"run id '{run_id}' already exists")
            row = conn.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?) RETURNING *",
                               (run_id, request_id, profile, _json(config), config_hash, state, start_phase,
                                _json(inputs), int(bool(reuse)), now, now)).fetchone()
            conn.executemany("INSERT INTO phases(run_id, phase, state, config_hash) VALUES (?, ?, ?, ?)", rows)
            self._append_event(conn, run_id, "run_created", None, {"request_id": request_id, "profile": profile,
                               "config_hash": config_hash, "start_phase": start_phase}, now)
            return _record(RunRecord, row)

    def get_run(self, run_id: str) -> RunRecord:
        _require_id("run_id", run_id)
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"unknown run id '{run_id}'")
        return _record(RunRecord, row)

    def list_runs(self, states: Iterable[str] | None = None, *, oldest_first: bool = False) -> list[RunRecord]:
        """Runs, newest first (oldest first with `oldest_first`); `states` keeps only runs in one of those states."""
        sql, params = "SELECT * FROM runs", []
        if states is not None:
            params = [states] if isinstance(states, str) else list(states)
            sql += f" WHERE state IN ({', '.join('?' * len(params))})" if params else " WHERE 0"
        order = "ASC" if oldest_first else "DESC"
        with self._tx(write=False) as conn:
            rows = conn.execute(sql + f" ORDER BY created_at {order}, rowid {order}", params).fetchall()
        return [_record(RunRecord, r) for r in rows]

    def update_run(self, run_id: str, **changes: Any) -> RunRecord:
        """Set state and/or error; updated_at follows the clock."""
        _require_id("run_id", run_id)
        sets, values = _assignments(changes, _RUN_FIELDS, {}, "run")
        with self._tx() as conn:
            row = conn.execute(f"UPDATE runs SET {sets}, updated_at = ? WHERE run_id = ? RETURNING *",
                               (*values, self._clock(), run_id)).fetchone()
            if row is None:
                raise NotFoundError(f"unknown run id '{run_id}'")
            return _record(RunRecord, row)

    # --- phases --------------------------------------------------------------------------------------------

    def get_phase(self, run_id: str, phase: str) -> PhaseRecord:
        _require_ids(run_id=run_id, phase=phase)
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT * FROM phases WHERE run_id = ? AND phase = ?", (run_id, phase)).fetchone()
            if row is None:
                self._require_phase(conn, run_id, phase)
        return _record(PhaseRecord, row)

    def list_phases(self, run_id: str) -> list[PhaseRecord]:
        """A run's phases in the order create_run listed them."""
        _require_id("run_id", run_id)
        with self._tx(write=False) as conn:
            self._require_run(conn, run_id)
            rows = conn.execute("SELECT * FROM phases WHERE run_id = ? ORDER BY rowid", (run_id,)).fetchall()
        return [_record(PhaseRecord, r) for r in rows]

    def update_phase(self, run_id: str, phase: str, **changes: Any) -> PhaseRecord:
        """Set any PhaseRecord field but the keys; dict/list fields are stored as canonical JSON."""
        _require_ids(run_id=run_id, phase=phase)
        sets, values = _assignments(changes, _PHASE_FIELDS, _PHASE_JSON, "phase")
        with self._tx() as conn:
            row = conn.execute(f"UPDATE phases SET {sets} WHERE run_id = ? AND phase = ? RETURNING *",
                               (*values, run_id, phase)).fetchone()
            if row is None:
                self._require_phase(conn, run_id, phase)
            return _record(PhaseRecord, row)

    def find_finished_phase(self, phase: str, config_hash: str, input_hashes: list[str]) -> PhaseRecord | None:
        """The latest succeeded row of `phase` with this config hash and these input hashes, in this order.

        Order counts because a phase's inputs are positional (EvoMerge's parents); a caller that treats its
        inputs as a set sorts them both when it stores and when it asks.
        """
        _require_ids(phase=phase, config_hash=config_hash)
        with self._tx(write=False) as conn:
            row = conn.execute(
                "SELECT * FROM phases WHERE phase = ? AND config_hash = ? AND state = 'succeeded' "
                "AND input_hashes_json = ? ORDER BY finished_at DESC, rowid DESC LIMIT 1",
                (phase, config_hash, _json(list(input_hashes)))).fetchone()
        return None if row is None else _record(PhaseRecord, row)

    # --- events and approvals ------------------------------------------------------------------------------

    def _append_event(self, conn: sqlite3.Connection, run_id: str, kind: str, phase: str | None,
                      payload: dict, now: float) -> EventRecord:
        # inside the caller's BEGIN IMMEDIATE, so MAX+1 cannot race: seqs per run are unique and gapless
        seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE run_id = ?", (run_id,)).fetchone()[0]
        conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", (run_id, seq, kind, phase, _json(payload), now))
        return EventRecord(run_id=run_id, seq=seq, kind=kind, phase=phase, payload=payload, time=now)

    def append_event(self, run_id: str, kind: str, phase: str | None = None,
                     payload: dict | None = None) -> EventRecord:
        _require_ids(run_id=run_id, kind=kind)
        if phase is not None:
            _require_id("phase", phase)
        payload = {} if payload is None else payload
        if not isinstance(payload, dict):
            raise InvalidSpecError(f"must be a mapping, got {type(payload).__name__}", field="payload")
        with self._tx() as conn:
            self._require_run(conn, run_id)
            return self._append_event(conn, run_id, kind, phase, payload, self._clock())

    def append_events(self, run_id: str, events: list[tuple[str, str | None, dict]]) -> list[EventRecord]:
        """Append (kind, phase, payload) events in one transaction: all of them or none, seqs consecutive."""
        _require_id("run_id", run_id)
        for i, (kind, phase, payload) in enumerate(events):
            _require_id(f"events[{i}].kind", kind)
            if phase is not None:
                _require_id(f"events[{i}].phase", phase)
            if not isinstance(payload, dict):
                raise InvalidSpecError(f"must be a mapping, got {type(payload).__name__}", field=f"events[{i}].payload")
        now = self._clock()
        with self._tx() as conn:
            self._require_run(conn, run_id)
            return [self._append_event(conn, run_id, kind, phase, payload, now) for kind, phase, payload in events]

    def last_event(self, run_id: str, kind: str, phase: str | None = None) -> EventRecord | None:
        """A run's newest event of `kind` (of `phase`, when given), or None."""
        _require_ids(run_id=run_id, kind=kind)
        sql, params = "SELECT * FROM events WHERE run_id = ? AND kind = ?", [run_id, kind]
        if phase is not None:
            sql, params = sql + " AND phase = ?", [*params, phase]
        with self._tx(write=False) as conn:
            self._require_run(conn, run_id)
            row = conn.execute(sql + " ORDER BY seq DESC LIMIT 1", params).fetchone()
        return None if row is None else _record(EventRecord, row)

    def events(self, run_id: str, after_seq: int = 0, limit: int | None = None) -> list[EventRecord]:
        """A run's events with seq > after_seq, oldest first (WatchRun resumes from the last seq it sent)."""
        _require_id("run_id", run_id)
        with self._tx(write=False) as conn:
            self._require_run(conn, run_id)
            rows = conn.execute("SELECT * FROM events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                                (run_id, after_seq, -1 if limit is None else limit)).fetchall()
        return [_record(EventRecord, r) for r in rows]

    def record_approval(self, run_id: str, phase: str, who: str, why: str, gate: dict) -> None:
        """Record a gate override: who approved, why, and the gate result they overrode."""
        _require_ids(run_id=run_id, phase=phase, who=who)
        if not isinstance(why, str):
            raise InvalidSpecError(f"must be a string, got {type(why).__name__}", field="why")
        with self._tx() as conn:
            self._require_phase(conn, run_id, phase)
            conn.execute("INSERT INTO approvals VALUES (?, ?, ?, ?, ?, ?)",
                         (run_id, phase, who, why, _json(gate), self._clock()))

    def approvals(self, run_id: str) -> list[dict]:
        """A run's approvals, oldest first, as {run_id, phase, who, why, gate, time}."""
        _require_id("run_id", run_id)
        with self._tx(write=False) as conn:
            rows = conn.execute("SELECT * FROM approvals WHERE run_id = ? ORDER BY rowid", (run_id,)).fetchall()
        return [{**{k: r[k] for k in ("run_id", "phase", "who", "why", "time")},
                 "gate": _load(r["gate_json"], "approvals.gate_json")} for r in rows]

    # --- accelerator leases --------------------------------------------------------------------------------

    def save_lease(self, lease: LeaseRecord) -> None:
        """Insert or replace a lease by lease_id (a renewal or a re-grant with a new token)."""
        _require_ids(lease_id=lease.lease_id, holder=lease.holder)
        if not isinstance(lease.token, int):
            raise InvalidSpecError(f"must be an integer, got {lease.token!r}", field="token")
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?)",
                         (lease.lease_id, lease.holder, lease.token, lease.run_id, lease.phase))

    def delete_lease(self, lease_id: str) -> bool:
        """Forget a lease; returns whether it existed, so releasing twice is harmless."""
        _require_id("lease_id", lease_id)
        with self._tx() as conn:
            return conn.execute("DELETE FROM leases WHERE lease_id = ?", (lease_id,)).rowcount > 0

    def load_leases(self) -> list[LeaseRecord]:
        with self._tx(write=False) as conn:
            rows = conn.execute("SELECT * FROM leases ORDER BY token").fetchall()
        return [_record(LeaseRecord, r) for r in rows]

    # --- cost budgets (v2) ----------------------------------------------------------------------------------

    def _budget_row(self, conn: sqlite3.Connection, run_id: str, phase: str, limit_usd: float | None) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM budgets WHERE run_id = ? AND phase = ?", (run_id, phase)).fetchone()
        if row is None:
            if limit_usd is None:
                self._require_phase(conn, run_id, phase)
                raise NotFoundError(f"run '{run_id}' phase '{phase}' has no budget yet (reserve opens it)")
            self._require_phase(conn, run_id, phase)
            conn.execute("INSERT INTO budgets(run_id, phase, limit_usd) VALUES (?, ?, ?)", (run_id, phase, limit_usd))
            row = conn.execute("SELECT * FROM budgets WHERE run_id = ? AND phase = ?", (run_id, phase)).fetchone()
        elif limit_usd is not None and abs(row["limit_usd"] - limit_usd) > 1e-12:
            raise FailedPreconditionError(
                f"the budget of run '{run_id}' phase '{phase}' was opened with limit {row['limit_usd']} USD, "
                f"not {limit_usd}; one phase has one limit")
        return row

    @staticmethod
    def _budget_dict(row: sqlite3.Row) -> dict[str, float]:
        return {"limit_usd": row["limit_usd"], "spent_usd": row["spent_usd"], "reserved_usd": row["reserved_usd"],
                "refused": row["refused"]}

    def budget_reserve(self, run_id: str, phase: str, limit_usd: float, amount_usd: float,
                       reservation_id: str) -> tuple[bool, dict[str, float]]:
        """Reserve `amount_usd` if spent + reserved + amount stays within the limit (one transaction, so
        workers in any number of processes never overshoot together). Returns (granted, snapshot)."""
        _require_ids(run_id=run_id, phase=phase, reservation_id=reservation_id)
        for name, value in (("limit_usd", limit_usd), ("amount_usd", amount_usd)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise InvalidSpecError(f"must be a finite number >= 0, got {value!r}", field=name)
        with self._tx() as conn:
            row = self._budget_row(conn, run_id, phase, float(limit_usd))
            if conn.execute("SELECT 1 FROM budget_reservations WHERE reservation_id = ?",
                            (reservation_id,)).fetchone() is not None:
                return True, self._budget_dict(row)  # a retried Reserve: already held
            if row["spent_usd"] + row["reserved_usd"] + amount_usd > row["limit_usd"]:
                conn.execute("UPDATE budgets SET refused = refused + 1 WHERE run_id = ? AND phase = ?", (run_id, phase))
                granted = False
            else:
                conn.execute("INSERT INTO budget_reservations(reservation_id, run_id, phase, amount_usd) "
                             "VALUES (?, ?, ?, ?)", (reservation_id, run_id, phase, amount_usd))
                conn.execute("UPDATE budgets SET reserved_usd = reserved_usd + ? WHERE run_id = ? AND phase = ?",
                             (amount_usd, run_id, phase))
                granted = True
            row = self._budget_row(conn, run_id, phase, None)
            return granted, self._budget_dict(row)

    def budget_settle(self, run_id: str, phase: str, reservation_id: str, actual_usd: float | None) -> dict[str, float]:
        """Replace a reservation by what the call cost (`actual_usd`), or drop it unbilled (None). Settling a
        reservation twice is a no-op, so a retried Settle never double-counts."""
        _require_ids(run_id=run_id, phase=phase, reservation_id=reservation_id)
        if actual_usd is not None and not (math.isfinite(actual_usd) and actual_usd >= 0):
            raise InvalidSpecError(f"must be a finite number >= 0, got {actual_usd!r}", field="actual_usd")
        with self._tx() as conn:
            self._budget_row(conn, run_id, phase, None)
            held = conn.execute("DELETE FROM budget_reservations WHERE reservation_id = ? AND run_id = ? AND phase = ? "
                                "RETURNING amount_usd", (reservation_id, run_id, phase)).fetchone()
            if held is not None:
                conn.execute("UPDATE budgets SET reserved_usd = max(0, reserved_usd - ?), spent_usd = spent_usd + ? "
                             "WHERE run_id = ? AND phase = ?", (held[0], actual_usd or 0.0, run_id, phase))
            return self._budget_dict(self._budget_row(conn, run_id, phase, None))

    def budget_snapshot(self, run_id: str, phase: str) -> dict[str, float]:
        _require_ids(run_id=run_id, phase=phase)
        with self._tx(write=False) as conn:
            return self._budget_dict(self._budget_row(conn, run_id, phase, None))

    # --- work units ----------------------------------------------------------------------------------------

    def plan_units(self, run_id: str, phase: str, units: list[tuple[str, dict]]) -> int:
        """Add units as 'pending'; a unit id already planned is left as it is. Returns how many were added."""
        _require_ids(run_id=run_id, phase=phase)
        rows = []
        for i, (unit_id, payload) in enumerate(units):
            _require_id(f"units[{i}].unit_id", unit_id)
            if not isinstance(payload, dict):
                raise InvalidSpecError(f"must be a mapping, got {type(payload).__name__}", field=f"units[{i}].payload")
            rows.append((run_id, phase, unit_id, _json(payload)))
        with self._tx() as conn:
            self._require_phase(conn, run_id, phase)
            return conn.executemany(
                "INSERT INTO units(run_id, phase, unit_id, payload_json, state) VALUES (?, ?, ?, ?, 'pending') "
                "ON CONFLICT(run_id, phase, unit_id) DO NOTHING", rows).rowcount

    def _unit_missing(self, conn: sqlite3.Connection, run_id: str, phase: str, unit_id: str) -> NotFoundError:
        self._require_phase(conn, run_id, phase)
        return NotFoundError(f"unknown unit '{unit_id}' in run '{run_id}' phase '{phase}'")

    def get_unit(self, run_id: str, phase: str, unit_id: str) -> UnitRecord:
        _require_ids(run_id=run_id, phase=phase, unit_id=unit_id)
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT * FROM units WHERE run_id = ? AND phase = ? AND unit_id = ?",
                               (run_id, phase, unit_id)).fetchone()
            if row is None:
                raise self._unit_missing(conn, run_id, phase, unit_id)
        return _record(UnitRecord, row)

    def list_units(self, run_id: str, phase: str, state: str | None = None) -> list[UnitRecord]:
        """A phase's units in planning order, optionally only those in `state`."""
        _require_ids(run_id=run_id, phase=phase)
        sql, params = "SELECT * FROM units WHERE run_id = ? AND phase = ?", [run_id, phase]
        if state is not None:
            sql, params = sql + " AND state = ?", [*params, state]
        with self._tx(write=False) as conn:
            self._require_phase(conn, run_id, phase)
            rows = conn.execute(sql + " ORDER BY rowid", params).fetchall()
        return [_record(UnitRecord, r) for r in rows]

    def update_unit(self, run_id: str, phase: str, unit_id: str, **changes: Any) -> UnitRecord:
        """Unconditionally set state, worker, token, attempts and/or artifact."""
        updated = self._set_unit(run_id, phase, unit_id, {}, changes)
        assert updated is not None  # no conditions: a missing unit raised NotFoundError
        return updated

    def compare_and_set_unit(self, run_id: str, phase: str, unit_id: str, expect: dict[str, Any],
                             **changes: Any) -> bool:
        """Apply `changes` only if every `expect` field still holds (None matches NULL); True if applied.

        Two workers racing to lease (or complete) one unit both saw 'pending'; the conditional UPDATE runs
        in one transaction, so exactly one of them still matches and wins.
        """
        return self._set_unit(run_id, phase, unit_id, expect, changes) is not None

    def _set_unit(self, run_id: str, phase: str, unit_id: str, expect: dict[str, Any],
                  changes: dict[str, Any]) -> UnitRecord | None:
        _require_ids(run_id=run_id, phase=phase, unit_id=unit_id)
        sets, values = _assignments(changes, _UNIT_FIELDS, _UNIT_JSON, "unit")
        where, params = "run_id = ? AND phase = ? AND unit_id = ?", [run_id, phase, unit_id]
        for name, value in expect.items():
            if name not in _UNIT_FIELDS:
                raise InvalidSpecError(f"cannot compare unit field '{name}'", field=f"expect.{name}")
            where += f" AND {_UNIT_FIELDS[name]} IS ?"  # IS: equality that also matches NULL to None
            params.append(_json(value) if name in _UNIT_JSON else value)
        with self._tx() as conn:
            row = conn.execute(f"UPDATE units SET {sets} WHERE {where} RETURNING *", (*values, *params)).fetchone()
            if row is not None:
                return _record(UnitRecord, row)
            if conn.execute("SELECT 1 FROM units WHERE run_id = ? AND phase = ? AND unit_id = ?",
                            (run_id, phase, unit_id)).fetchone() is None:
                raise self._unit_missing(conn, run_id, phase, unit_id)
            return None
