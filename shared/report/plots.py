"""The run report's plots: which series each one draws, from which phase's events at which job stage.

Each phase documents the progress series it reports (its job module's docstring); a plot here names the
phase, the stage its events carry (a regular expression on the job's stage text) and the metric names.
A plot whose every series is empty is not drawn; `missing_reason` says why, from the phase's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from shared.report.data import Point, RunData, Series, latest_family, series_by


@dataclass(frozen=True)
class Plot:
    id: str                  # also the PNG's file name
    title: str
    phase: str
    what: str                # the metric names, as a person reads them
    xlabel: str
    ylabel: str
    kind: str                # "line": x → y per series; "bars": grouped bars at each x; "categories": bars by label
    build: Callable[[RunData], list[Series]]
    expected: tuple[str, ...] = ()        # labels that should each have a series (a missing one is named)
    hlines: Callable[[RunData], list[tuple[float, str]]] = field(default=lambda data: [])


def _evomerge_reinject(data: RunData) -> list[tuple[float, str]]:
    section = (data.run.config or {}).get("phases", {}).get("evomerge", {})
    value = section.get("diversity_reinject_below")
    return [] if value is None else [(float(value), f"re-injection below {value:g}")]


def _layers(data: RunData) -> list[Series]:
    """The latest calibration's relative ternarization error of each BitLinear: one series (one bar) per
    layer, in name order."""
    events = data.metric_events("bitnet", r"calibrated$")
    if not events:
        return []
    last, prefix = events[-1], "bitnet/weight_error/"
    values = sorted((n.removeprefix(prefix), v) for n, v in last.payload.get("metrics", {}).items()
                    if n.startswith(prefix))
    return [Series(name, (Point(float(i), float(v), last.seq),), prefix + name) for i, (name, v) in enumerate(values)]


PLOTS: tuple[Plot, ...] = (
    Plot("cognate_loss", "Phase 1: training loss per model", "cognate", "cognate/<model>/train_loss",
         "schedule step (the variants continue the warm-up)", "next-token loss (nats)", "line",
         lambda d: series_by(d, "cognate", r"cognate/(?P<label>[^/]+)/train_loss", stage=r"training "),
         expected=("warmup", "reasoning", "memory", "speed")),
    Plot("cognate_halting", "Phase 1: halting steps at the last validation of each model", "cognate",
         "cognate/<model>/halting_hist/<k>", "supervision steps executed", "validation positions", "bars",
         lambda d: latest_family(d, "cognate", r"cognate/(?P<label>[^/]+)/halting_hist/(?P<x>\d+)",
                                 stage=r"training "),
         expected=("warmup", "reasoning", "memory", "speed")),
    Plot("cognate_barrier", "Phase 1: loss on the straight line between parents", "cognate",
         "cognate/barrier_path/<a>-<b> at cognate/barrier_path/t", "t  (θ = (1 − t)·θ_a + t·θ_b)",
         "validation NLL (nats)", "line",
         lambda d: series_by(d, "cognate", r"cognate/barrier_path/(?P<label>.+-.+)", stage=r"loss barriers$",
                             x="cognate/barrier_path/t"),
         expected=("reasoning-memory", "reasoning-speed", "memory-speed")),
    Plot("evomerge_fitness", "Phase 2: fitness per generation", "evomerge",
         "evomerge/best_fitness, /mean_fitness, /worst_fitness", "generation", "fitness", "line",
         lambda d: series_by(d, "evomerge", r"evomerge/(?P<label>best_fitness|mean_fitness|worst_fitness)",
                             stage=r"generation \d+"),
         expected=("best_fitness", "mean_fitness", "worst_fitness")),
    Plot("evomerge_diversity", "Phase 2: population diversity per generation", "evomerge",
         "evomerge/diversity (mean pairwise weight distance / generation 0's)", "generation", "diversity", "line",
         lambda d: series_by(d, "evomerge", r"evomerge/(?P<label>diversity)", stage=r"generation \d+"),
         expected=("diversity",), hlines=_evomerge_reinject),
    Plot("baking_accuracy", "Phase 3b: baking answer accuracy per strategy", "quietstar",
         "baking/accuracy_<strategy> (held-out items, after each epoch)", "baking epoch", "answer accuracy", "line",
         lambda d: series_by(d, "quietstar", r"baking/accuracy_(?P<label>[a-z]+)", stage=r"baking epoch ")),
    Plot("baking_format", "Phase 3b: baking format adherence per strategy", "quietstar",
         "baking/format_adherence_<strategy> and overall", "baking epoch", "format adherence", "line",
         lambda d: series_by(d, "quietstar", r"baking/format_adherence(?:_(?P<label>[a-z]+))?",
                             stage=r"baking epoch ")),
    Plot("rl_reward", "Phase 3b: Quiet-STaR RL reward", "quietstar", "rl/reward (mean log p of a true future "
         "token after a thought)", "RL step", "reward", "line",
         lambda d: series_by(d, "quietstar", r"rl/(?P<label>reward)", stage=r"RL step "), expected=("reward",)),
    Plot("rl_thoughts", "Phase 3b: thought coherence and mixing weight", "quietstar",
         "rl/coherence, rl/mixing_weight", "RL step", "value", "line",
         lambda d: series_by(d, "quietstar", r"rl/(?P<label>coherence|mixing_weight)", stage=r"RL step "),
         expected=("coherence", "mixing_weight")),
    Plot("anti_theater", "Phase 3b: anti-theater checks", "quietstar",
         "anti_theater/divergence, /ablation, /correlation at each check", "RL step", "value", "line",
         lambda d: series_by(d, "quietstar", r"anti_theater/(?P<label>divergence|ablation|correlation)",
                             stage=r"anti-theater check"),
         expected=("divergence", "ablation", "correlation")),
    Plot("bitnet_blocks", "Phase 4: quantization cost per block", "bitnet",
         "bitnet/block_nll_cost (held-out NLL at λ = 1 minus the same weights at λ = 0) by bitnet/block",
         "block", "NLL cost (nats)", "bars",
         lambda d: series_by(d, "bitnet", r"bitnet/(?P<label>block_nll_cost)", stage=r"block \d+ quantized",
                             x="bitnet/block"),
         expected=("block_nll_cost",)),
    Plot("bitnet_layers", "Phase 4: ternarization error per layer", "bitnet",
         "bitnet/weight_error/<layer> (‖W − γ·Q(W)‖ / ‖W‖ at calibration)", "layer",
         "relative weight error",
         "categories", _layers),
)


def missing_reason(data: RunData, phase: str) -> str:
    """Why a phase's events hold no values for a plot, from the phase's record."""
    ph = data.phases.get(phase)
    if ph is None:
        return f"the run has no phase {phase}"
    if ph.state == "skipped":
        return f"phase {phase} was skipped (the run started at {data.run.start_phase}; its input came from elsewhere)"
    if ph.state == "reused":
        return f"phase {phase} reused the result of run {ph.reused_from}; its series are in that run's report"
    if ph.state in ("pending", "waiting"):
        return f"phase {phase} has not started ({ph.state})"
    if ph.state == "running":
        return f"phase {phase} is still running and has not reported these yet"
    if ph.state in ("failed", "cancelled"):
        return f"phase {phase} {ph.state}" + (f": {ph.error}" if ph.error else "")
    return (f"phase {phase} finished ({ph.state}) without reporting them (a job older than these series, or a "
            f"profile too small to produce them)")
