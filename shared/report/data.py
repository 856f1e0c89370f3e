"""What a run report is made of: a run's phases and events read from the coordinator's state file, and the
series its plots draw, every point traced to the run event it came from.

The series come from run events of kind "metrics": the coordinator stores each progress event of a job that
carried metrics, in order (services/coordinator/core/engine.py, _collect_metrics), with the job's stage,
step and metric values. A series is one metric (or one family of metrics, one series per name) over the
events of one phase whose stage matches, x = the event's step (or another metric of the same event). A step
reported again — a job resumed from its checkpoint redoes the steps after it — keeps its latest value, the
one of the job whose output was published.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from shared.errors import NotFoundError


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    seq: int                 # the run event (kind "metrics") the value was read from


@dataclass(frozen=True)
class Series:
    label: str
    points: tuple[Point, ...]
    metric: str = ""         # the metric name the values are, when one name (else a family: see Plot.what)


@dataclass(frozen=True)
class RunData:
    """A run as its state file holds it: the run record, its phases by name (graph order), its events."""

    run: object              # services.coordinator.core.state.RunRecord
    phases: dict[str, object]
    events: tuple[object, ...]
    approvals: tuple[dict, ...] = ()

    def metric_events(self, phase: str, stage: str | None = None) -> list:
        """The phase's "metrics" events, oldest first; `stage`: only those whose job stage matches (re.match)."""
        rx = re.compile(stage) if stage is not None else None
        return [e for e in self.events if e.kind == "metrics" and e.phase == phase
                and (rx is None or rx.match(e.payload.get("stage", "")))]


def load_run(state_path: str | Path, run_id: str) -> RunData:
    """Read a run from a coordinator state file (embedded `agentforge run`'s, or a coordinator's
    AGENTFORGE_STATE). A missing file is NotFoundError: opening it would create an empty one."""
    from services.coordinator.core.state import StateStore

    path = Path(state_path)
    if not path.is_file():
        raise NotFoundError(f"no coordinator state file at {path} (give --state, or set AGENTFORGE_STATE)")
    with StateStore(path) as state:
        run = state.get_run(run_id)
        phases = {p.phase: p for p in state.list_phases(run_id)}
        return RunData(run=run, phases=phases, events=tuple(state.events(run_id)),
                       approvals=tuple(state.approvals(run_id)))


def series_by(data: RunData, phase: str, metric: str, *, stage: str, x: str | None = None) -> list[Series]:
    """One series per metric name matching `metric` (re.fullmatch), labelled by its `label` group (the whole
    name when it has none), over the phase's metric events at `stage`: x = the event's step, or the value of
    metric `x` in the same event (events without it are skipped). Series in first-seen order, points by x."""
    rx = re.compile(metric)
    found: dict[str, dict[float, Point]] = {}
    names: dict[str, str] = {}
    for ev in data.metric_events(phase, stage):
        values = ev.payload.get("metrics", {})
        if x is not None and x not in values:
            continue
        at = float(values[x]) if x is not None else float(ev.payload.get("step", 0))
        for name, value in values.items():
            m = rx.fullmatch(name)
            if m is None or name == x:
                continue
            label = m.groupdict().get("label") or name
            found.setdefault(label, {})[at] = Point(at, float(value), ev.seq)   # a repeated x: the latest wins
            names[label] = name
    return [Series(label, tuple(sorted(points.values(), key=lambda p: p.x)), names[label])
            for label, points in found.items()]


def latest_family(data: RunData, phase: str, metric: str, *, stage: str) -> list[Series]:
    """For each `label` of `metric` (re.fullmatch with groups `label` and `x`), the latest event holding that
    label's metrics, as one series x = the `x` group (a number) → value. E.g. a histogram per model:
    cognate/<label>/halting_hist/<x>."""
    rx = re.compile(metric)
    latest: dict[str, Series] = {}
    for ev in data.metric_events(phase, stage):
        points: dict[str, list[Point]] = {}
        for name, value in ev.payload.get("metrics", {}).items():
            m = rx.fullmatch(name)
            if m is not None:
                points.setdefault(m["label"], []).append(Point(float(m["x"]), float(value), ev.seq))
        for label, pts in points.items():
            latest[label] = Series(label, tuple(sorted(pts, key=lambda p: p.x)))
    return list(latest.values())


def latest_values(data: RunData, phase: str, metric: str, *, stage: str | None = None) -> dict[str, Point]:
    """The latest value of every metric matching `metric` (re.fullmatch) in the phase's metric events: name ->
    Point(x = the event's step, y = the value, seq = the event)."""
    rx = re.compile(metric)
    out: dict[str, Point] = {}
    for ev in data.metric_events(phase, stage):
        for name, value in ev.payload.get("metrics", {}).items():
            if rx.fullmatch(name):
                out[name] = Point(float(ev.payload.get("step", 0)), float(value), ev.seq)
    return out
