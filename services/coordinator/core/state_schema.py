"""The coordinator's SQLite schema, its migrations and the records read from it (see state.py)."""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 10_000

_SCHEMA_V1 = """
CREATE TABLE schema_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO counters(name, value) VALUES ('fencing_token', 0);
CREATE TABLE runs(
    run_id TEXT PRIMARY KEY, request_id TEXT NOT NULL UNIQUE, profile TEXT NOT NULL,
    config_json TEXT NOT NULL, config_hash TEXT NOT NULL, state TEXT NOT NULL, start_phase TEXT,
    inputs_json TEXT NOT NULL, reuse INTEGER NOT NULL, error TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE INDEX runs_by_created ON runs(created_at);
CREATE TABLE phases(
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, phase TEXT NOT NULL,
    state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, job_id TEXT, request_id TEXT,
    fencing_token INTEGER, lease_id TEXT, config_hash TEXT NOT NULL,
    input_hashes_json TEXT NOT NULL DEFAULT '[]', metrics_json TEXT NOT NULL DEFAULT '{}',
    artifacts_json TEXT NOT NULL DEFAULT '[]', gate_json TEXT, error TEXT, progress_json TEXT,
    reused_from TEXT, started_at REAL, finished_at REAL,
    PRIMARY KEY(run_id, phase));
CREATE INDEX phases_for_reuse ON phases(phase, config_hash, state);
CREATE TABLE events(
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, seq INTEGER NOT NULL,
    kind TEXT NOT NULL, phase TEXT, payload_json TEXT NOT NULL, time REAL NOT NULL,
    PRIMARY KEY(run_id, seq));
CREATE TABLE approvals(
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, phase TEXT NOT NULL,
    who TEXT NOT NULL, why TEXT NOT NULL, gate_json TEXT NOT NULL, time REAL NOT NULL);
CREATE INDEX approvals_by_run ON approvals(run_id);
CREATE TABLE leases(lease_id TEXT PRIMARY KEY, holder TEXT NOT NULL, token INTEGER NOT NULL,
    run_id TEXT, phase TEXT);
CREATE TABLE units(
    run_id TEXT NOT NULL, phase TEXT NOT NULL, unit_id TEXT NOT NULL, payload_json TEXT NOT NULL,
    state TEXT NOT NULL, worker TEXT DEFAULT '', token INTEGER DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    artifact_json TEXT,
    PRIMARY KEY(run_id, phase, unit_id),
    FOREIGN KEY(run_id, phase) REFERENCES phases(run_id, phase) ON DELETE CASCADE);
CREATE INDEX units_by_state ON units(run_id, phase, state);
"""

# (version, sql): each brings a file from version-1 to version, in its own transaction. Version 0 is an
# empty file. Append new steps; never edit a released one (files in the field have already run it).
# v2: cost budgets shared by a phase's scale-out workers (the API backend of reasoning_data). A reservation
# holds a call's worst-case cost until the worker settles it with the reported usage; one that is never
# settled (its worker died) stays reserved, so the limit can be undershot, never exceeded.
_SCHEMA_V2 = """
CREATE TABLE budgets(
    run_id TEXT NOT NULL, phase TEXT NOT NULL, limit_usd REAL NOT NULL, spent_usd REAL NOT NULL DEFAULT 0,
    reserved_usd REAL NOT NULL DEFAULT 0, refused INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(run_id, phase),
    FOREIGN KEY(run_id, phase) REFERENCES phases(run_id, phase) ON DELETE CASCADE);
CREATE TABLE budget_reservations(
    reservation_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, phase TEXT NOT NULL, amount_usd REAL NOT NULL,
    FOREIGN KEY(run_id, phase) REFERENCES budgets(run_id, phase) ON DELETE CASCADE);
"""

MIGRATIONS: list[tuple[int, str]] = [(1, _SCHEMA_V1), (2, _SCHEMA_V2)]


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    request_id: str
    profile: str
    config: dict
    config_hash: str
    state: str
    start_phase: str | None
    inputs: list[dict]
    reuse: bool
    error: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class PhaseRecord:
    run_id: str
    phase: str
    state: str
    attempt: int
    job_id: str | None
    request_id: str | None
    fencing_token: int | None
    lease_id: str | None
    config_hash: str
    input_hashes: list[str]
    metrics: dict[str, float]
    artifacts: list[dict]
    gate: dict | None
    error: str | None
    progress: dict | None
    reused_from: str | None
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True)
class EventRecord:
    run_id: str
    seq: int
    kind: str
    phase: str | None
    payload: dict
    time: float


@dataclass(frozen=True)
class UnitRecord:
    """A work unit; one never leased has worker '' and token 0 (proto3's "unset"), so CAS can match them."""

    run_id: str
    phase: str
    unit_id: str
    payload: dict
    state: str
    worker: str | None
    token: int | None
    attempts: int
    artifact: dict | None


@dataclass(frozen=True)
class LeaseRecord:
    lease_id: str
    holder: str
    token: int
    run_id: str | None = None
    phase: str | None = None


# Updatable fields -> column; JSON fields are encoded on write and decoded on read.
_RUN_FIELDS = {"state": "state", "error": "error"}
_PHASE_JSON = {"input_hashes": "input_hashes_json", "metrics": "metrics_json", "artifacts": "artifacts_json",
               "gate": "gate_json", "progress": "progress_json"}
_PHASE_FIELDS = {**{f: f for f in ("state", "attempt", "job_id", "request_id", "fencing_token", "lease_id",
                                   "config_hash", "error", "reused_from", "started_at", "finished_at")},
                 **_PHASE_JSON}
_UNIT_JSON = {"artifact": "artifact_json"}
_UNIT_FIELDS = {"state": "state", "worker": "worker", "token": "token", "attempts": "attempts", **_UNIT_JSON}
