"""One W&B run per phase job, behind a small wrapper that validates what it logs and remembers it.

Why a wrapper: (1) the mode is decided in one place (offline unless a key is configured, so a laptop or
CI run never blocks on a login); (2) bad values are dropped with a warning instead of reaching a chart
as a silent gap (W&B accepts NaN) or being coerced; (3) everything accepted is kept in `history`, so
tests and the phase's own gates read back exactly what the dashboard shows.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from shared.errors import FailedPreconditionError, InvalidSpecError

log = logging.getLogger(__name__)

MODES = ("online", "offline", "disabled")
_MODE_ALIASES = {"dryrun": "offline", "run": "online"}


def resolve_mode(mode: str | None = None) -> str:
    """The argument, else WANDB_MODE, else "online" with WANDB_API_KEY set and "offline" without."""
    chosen = mode if mode is not None else os.environ.get("WANDB_MODE")
    if not chosen:
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    chosen = _MODE_ALIASES.get(chosen.lower(), chosen.lower())
    if chosen not in MODES:
        raise InvalidSpecError(f"unknown W&B mode {chosen!r}; use one of {', '.join(MODES)}", field="mode")
    return chosen


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[Any, Any]]:
    """Nested dicts become path names: {"final/": {"gsm8k_acc": x}} → "final/gsm8k_acc" (the checklist
    logs its final metrics that way), {"val": {"loss": x}} → "val/loss"."""
    for key, value in metrics.items():
        name = key
        if prefix and isinstance(key, str):
            name = prefix + key if prefix.endswith("/") else f"{prefix}/{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, name if isinstance(name, str) else str(name))
        else:
            yield name, value


def _is_wandb_value(value: Any) -> bool:
    try:
        from wandb.sdk.data_types.base_types.wb_value import WBValue
    except ImportError:  # pragma: no cover - wandb is a pinned dependency
        return False
    return isinstance(value, WBValue)


def _check_name(name: Any) -> str | None:
    """Why a metric name is unusable, or None."""
    if not isinstance(name, str) or not name.strip():
        return f"metric name {name!r} is not a non-empty string"
    if name != name.strip():
        return f"metric name {name!r} has surrounding whitespace"
    if name.startswith("_"):
        return f"metric name {name!r} starts with '_', which W&B reserves for its own keys"
    return None


def _as_number(value: Any) -> tuple[Any, str | None]:
    """(value, None) for a finite real number, else (None, why). 0-d tensors/arrays are read with .item(),
    which keeps the value; nothing else is converted."""
    if hasattr(value, "item") and hasattr(value, "ndim") and getattr(value, "ndim") == 0:
        value = value.item()
    if isinstance(value, bool):
        return value, None
    if isinstance(value, numbers.Real):
        if not math.isfinite(float(value)):
            return None, f"value {value!r} is not finite"
        return value, None
    return None, f"value of type {type(value).__name__} is not a number"


class Telemetry:
    """A W&B run plus an in-memory record of what was logged. Use as a context manager:

        with Telemetry().start("agent-forge-v2", "phase1-cognate-model1", config) as tel:
            tel.log({TRAIN_LOSS: 2.31}, step=120)
    """

    def __init__(self) -> None:
        self.run: Any = None
        self.mode: str | None = None
        self.history: list[dict[str, Any]] = []  # one dict per accepted log call: "_step" + metrics
        self.tables: dict[str, dict[str, list]] = {}
        self.summary_values: dict[str, Any] = {}
        self._last_step: int | None = None
        self._finished = False

    # lifecycle -------------------------------------------------------------------------------------
    def start(self, project: str, name: str, config: Mapping[str, Any] | Any = None, group: str | None = None,
              job_type: str | None = None, dir: str | Path | None = None, mode: str | None = None) -> "Telemetry":
        """Open the run (mode: argument > WANDB_MODE > online with WANDB_API_KEY, else offline)."""
        if self.run is not None or self._finished:
            raise FailedPreconditionError("this Telemetry was already started; make a new one per run")
        for field, value in (("project", project), ("name", name)):
            if not isinstance(value, str) or not value.strip():
                raise InvalidSpecError(f"must be a non-empty string, got {value!r}", field=field)
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            config = dataclasses.asdict(config)
        if config is not None and not isinstance(config, Mapping):
            raise InvalidSpecError(f"must be a mapping or a dataclass, got {type(config).__name__}",
                                   field="config")
        self.mode = resolve_mode(mode)
        if dir is not None:
            Path(dir).mkdir(parents=True, exist_ok=True)
        import wandb  # deferred: ~0.4 s, and only runs that log need it

        self.run = wandb.init(project=project, name=name, config=dict(config or {}), group=group,
                              job_type=job_type, dir=str(dir) if dir is not None else None, mode=self.mode,
                              reinit="create_new")
        log.info("W&B run %s started (%s mode, project %s)", name, self.mode, project)
        return self

    def finish(self, exit_code: int | None = None) -> None:
        """Close the run (idempotent)."""
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
            self._finished = True

    def __enter__(self) -> "Telemetry":
        if self.run is None:
            raise FailedPreconditionError("call start(...) before entering the Telemetry context")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=1 if exc_type is not None else 0)

    @property
    def run_dir(self) -> Path | None:
        """Directory of the run's files (None when disabled or not started)."""
        if self.run is None or self.mode == "disabled":
            return None
        return Path(self.run.dir)

    def _require_run(self, what: str) -> None:
        if self.run is None:
            state = "finished" if self._finished else "not started"
            raise FailedPreconditionError(f"cannot {what}: the W&B run is {state}")

    # logging ---------------------------------------------------------------------------------------
    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> dict[str, Any]:
        """Log the valid entries of `metrics`; return them. Invalid names or values (non-finite, not a
        number, not a W&B media object) are dropped with a warning naming the key. A step lower than one
        already logged is dropped whole, with a warning, as W&B itself would drop it."""
        self._require_run("log")
        if not isinstance(metrics, Mapping):
            raise InvalidSpecError(f"metrics must be a mapping, got {type(metrics).__name__}", field="metrics")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise InvalidSpecError(f"must be an integer >= 0, got {step!r}", field="step")
            if self._last_step is not None and step < self._last_step:
                log.warning("dropping metrics %s at step %d: step %d was already logged (W&B steps only increase)",
                            sorted(map(str, metrics)), step, self._last_step)
                return {}
        accepted: dict[str, Any] = {}
        for name, value in _flatten(metrics):
            problem = _check_name(name)
            if problem is None and not _is_wandb_value(value):
                value, problem = _as_number(value)
            if problem is not None:
                log.warning("dropping metric %r: %s", name, problem)
                continue
            accepted[name] = value
        if not accepted:
            return accepted
        if step is not None:
            self._last_step = step
            self.run.log(accepted, step=step)
        else:
            self.run.log(accepted)
        self.history.append({"_step": step, **accepted})
        return accepted

    def series(self, name: str) -> list[tuple[int | None, Any]]:
        """(step, value) for every accepted value of metric `name`, in logging order."""
        return [(row["_step"], row[name]) for row in self.history if name in row]

    def table(self, name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Log a wandb.Table under `name` (e.g. diversity/model_comparison); rows must match columns."""
        self._require_run("log a table")
        problem = _check_name(name)
        if problem is not None:
            raise InvalidSpecError(problem, field="name")
        columns = list(columns)
        if not columns or not all(isinstance(c, str) and c for c in columns):
            raise InvalidSpecError(f"must be a non-empty list of column names, got {columns!r}", field="columns")
        data = [list(r) for r in rows]
        for i, row in enumerate(data):
            if len(row) != len(columns):
                raise InvalidSpecError(f"row {i} has {len(row)} values for {len(columns)} columns",
                                       field="rows")
        import wandb

        self.run.log({name: wandb.Table(columns=columns, data=data)})
        self.tables[name] = {"columns": columns, "rows": data}

    def summary(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Set run summary values (finite numbers, booleans or strings); invalid entries are dropped
        with a warning. Returns the accepted entries."""
        self._require_run("set the summary")
        accepted: dict[str, Any] = {}
        for name, value in _flatten(values):
            problem = _check_name(name)
            if problem is None and not isinstance(value, str):
                value, problem = _as_number(value)
            if problem is not None:
                log.warning("dropping summary value %r: %s", name, problem)
                continue
            accepted[name] = value
        if accepted:
            self.run.summary.update(accepted)
            self.summary_values.update(accepted)
        return accepted
