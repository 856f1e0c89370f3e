"""Loss-curve health checks: non-finite loss, divergence and plateau (the checklist's premortem checks).

`detect_training_issues` returns None for a healthy curve and raises one `TrainingIssue` subclass
otherwise, so a training loop can catch the class it has a mitigation for (halve the LR on divergence,
roll back on NaN, stop or re-inject on a plateau) and let the rest propagate.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np

from shared.errors import AgentForgeError, InvalidSpecError

log = logging.getLogger(__name__)


class TrainingIssue(AgentForgeError):
    """A loss curve that should stop or change the run. `step` is an index into the history."""

    def __init__(self, message: str, *, step: int):
        self.step = step
        super().__init__(message)


class NonFiniteLossError(TrainingIssue):
    """A NaN or infinite loss."""


class DivergenceError(TrainingIssue):
    """The loss moved away from its best level."""


class PlateauError(TrainingIssue):
    """The loss stopped improving."""


def _rolling_means(x: np.ndarray, window: int) -> np.ndarray:
    """m[i] = mean(x[i : i + window]); len(x) - window + 1 values."""
    c = np.concatenate(([0.0], np.cumsum(x, dtype=np.float64)))
    return (c[window:] - c[:-window]) / window


def _worse_than(value: float, reference: float, factor: float) -> bool:
    """value > factor × reference, written so that it also reads right for negative losses."""
    return value > reference + (factor - 1.0) * abs(reference)


def detect_training_issues(
    loss_history: Sequence[float],
    *,
    window: int = 50,
    divergence_factor: float = 1.5,
    trend_windows: int = 3,
    trend_tolerance: float = 0.02,
    plateau_window: int = 1000,
    plateau_tolerance: float = 0.01,
) -> None:
    """Raise if the loss curve is unhealthy; return None otherwise. Step i is loss_history[i].

    Definitions (checked in this order; n = len(loss_history)):

    - **Non-finite**: any NaN or ±inf among the last `window` losses → NonFiniteLossError naming the
      first such step. Checked at any length: a NaN is never healthy.
    - **Divergence** (needs n ≥ 2·window) → DivergenceError when either
      (a) the mean of the last `window` losses exceeds divergence_factor × the best (lowest) mean of any
          `window` consecutive steps that ended before the recent window began, or
      (b) a sustained upward trend: the means of the last `trend_windows` consecutive non-overlapping
          windows each exceed the one before by more than `trend_tolerance` (relative).
    - **Plateau** (needs n ≥ plateau_window) → PlateauError when the least-squares line through the
      last `plateau_window` losses falls, across those steps, by less than plateau_tolerance × |their
      mean|: no real progress for `plateau_window` steps. A fitted line uses every step, so per-batch
      noise of relative size σ moves it only by about σ·√(12 / plateau_window).

    Means over `window` steps keep single noisy batches from tripping the divergence checks. For
    negative losses (e.g. RL objectives) "× factor" and "relative" are taken relative to |reference|.
    A curriculum switch to harder data raises the loss legitimately: reset the history there.
    Shorter histories than a check needs skip that check, so a short finite history returns None.
    """
    _validate(window, divergence_factor, trend_windows, trend_tolerance, plateau_window, plateau_tolerance)
    losses = np.asarray(loss_history, dtype=np.float64).reshape(-1)
    n = losses.size
    if n == 0:
        return None

    start = max(0, n - window)
    bad = np.flatnonzero(~np.isfinite(losses[start:]))
    if bad.size:
        step = start + int(bad[0])
        raise NonFiniteLossError(
            f"loss is {losses[step]} at step {step} ({bad.size} non-finite value(s) in the last "
            f"{n - start} steps); roll back to the last good checkpoint and lower the learning rate",
            step=step)

    # Older non-finite values would poison the means: judge the finite stretch after the last one.
    offset = 0
    nonfinite = np.flatnonzero(~np.isfinite(losses))
    if nonfinite.size:
        offset = int(nonfinite[-1]) + 1
        losses = losses[offset:]
        n = losses.size
    if n >= 2 * window:
        _check_divergence(losses, offset, window, divergence_factor, trend_windows, trend_tolerance)
    if n >= plateau_window:
        _check_plateau(losses, offset, plateau_window, plateau_tolerance)
    return None


def _check_divergence(losses: np.ndarray, offset: int, window: int, factor: float, trend_windows: int,
                      tolerance: float) -> None:
    n = losses.size
    recent = float(losses[n - window:].mean())
    earlier = _rolling_means(losses[: n - window], window)
    best_idx = int(np.argmin(earlier))
    best = float(earlier[best_idx])
    if _worse_than(recent, best, factor):
        first, last = offset + best_idx, offset + best_idx + window - 1
        raise DivergenceError(
            f"loss diverged: mean {recent:.4g} over steps {offset + n - window}..{offset + n - 1} is more "
            f"than {factor:g}x the best mean {best:.4g} (steps {first}..{last}); "
            "halve the learning rate or roll back", step=offset + n - 1)

    if n >= trend_windows * window:
        tail = losses[n - trend_windows * window:].reshape(trend_windows, window).mean(axis=1)
        rising = all(_worse_than(float(tail[i + 1]), float(tail[i]), 1.0 + tolerance)
                     for i in range(trend_windows - 1))
        if rising:
            means = ", ".join(f"{m:.4g}" for m in tail)
            raise DivergenceError(
                f"loss has risen for {trend_windows} consecutive windows of {window} steps "
                f"(means {means}, each > {tolerance:.0%} above the last) up to step {offset + n - 1}; "
                "halve the learning rate or roll back", step=offset + n - 1)


def _check_plateau(losses: np.ndarray, offset: int, plateau_window: int, tolerance: float) -> None:
    recent = losses[-plateau_window:]
    t = np.arange(plateau_window, dtype=np.float64)
    slope = float(np.polyfit(t, recent, 1)[0])
    level = float(abs(recent.mean())) or 1.0
    improvement = -slope * (plateau_window - 1) / level  # drop of the fitted line across the window
    if improvement < tolerance:
        n = losses.size
        raise PlateauError(
            f"loss plateaued: over steps {offset + n - plateau_window}..{offset + n - 1} the fitted trend "
            f"changed it by {-improvement:+.2%} (need an improvement of {tolerance:.2%}); change the "
            "learning-rate schedule or stop", step=offset + n - 1)


def _validate(window: int, divergence_factor: float, trend_windows: int, trend_tolerance: float,
              plateau_window: int, plateau_tolerance: float) -> None:
    for name, value in (("window", window), ("plateau_window", plateau_window),
                        ("trend_windows", trend_windows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidSpecError(f"must be a positive integer, got {value!r}", field=name)
    if trend_windows < 2:
        raise InvalidSpecError(f"must be >= 2 to define a trend, got {trend_windows}", field="trend_windows")
    if not (math.isfinite(divergence_factor) and divergence_factor > 1):
        raise InvalidSpecError(f"must be > 1, got {divergence_factor!r}", field="divergence_factor")
    for name, value in (("trend_tolerance", trend_tolerance), ("plateau_tolerance", plateau_tolerance)):
        if not (math.isfinite(value) and value >= 0):
            raise InvalidSpecError(f"must be a finite number >= 0, got {value!r}", field=name)
