"""A run report's content, before any drawing: the figures with their series (PLOTS), the tables (phases,
final benchmarks, dataset sources) and what is missing and why.

Figures and the benchmark table come from the run's events only; the phase table from the phase records
(states, gates, approvals); the dataset table from the datasets artifact's manifest in the store (which
source each dataset came from is text, not a metric, so no event carries it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.errors import AgentForgeError
from shared.report.data import RunData, Series, latest_values
from shared.report.plots import PLOTS, Plot, missing_reason

# Benchmark accuracies wherever a phase measured them, and Phase 4's headline figures.
BENCHMARK = re.compile(r".*(?:gsm8k|arc|piqa|hellaswag|boolq|commonsense_?qa)_acc.*"
                       r"|bitnet/(?:compression_ratio|bitlinear_compression_ratio|nll_gain_retained|ternary_fraction"
                       r"|bytes_per_token_reduction|sparsity|model_size_mb|thinking_tokens_present"
                       r"|short_question_format_rate)")
MANIFEST_FILE = "data/datasets_manifest.json"


@dataclass(frozen=True)
class Figure:
    plot: Plot
    series: tuple[Series, ...]              # every one non-empty: what is drawn
    absent: tuple[str, ...]                 # expected labels with no value in any event
    hlines: tuple[tuple[float, str], ...]

    @property
    def file(self) -> str:
        return f"{self.plot.id}.png"

    @property
    def seqs(self) -> list[int]:
        """The run events (kind "metrics") every drawn value was read from."""
        return sorted({p.seq for s in self.series for p in s.points})


@dataclass(frozen=True)
class Table:
    id: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    source: str


@dataclass(frozen=True)
class Report:
    data: RunData
    figures: tuple[Figure, ...]
    tables: tuple[Table, ...]
    missing: tuple[tuple[str, str], ...]    # (what, why)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def build_figures(data: RunData) -> tuple[list[Figure], list[tuple[str, str]]]:
    figures, missing = [], []
    for plot in PLOTS:
        series = [s for s in plot.build(data) if s.points]
        if not series:
            missing.append((f"{plot.title} ({plot.what})", missing_reason(data, plot.phase)))
            continue
        have = {s.label for s in series}
        figures.append(Figure(plot, tuple(series), tuple(e for e in plot.expected if e not in have),
                              tuple(plot.hlines(data))))
    return figures, missing


def phase_table(data: RunData) -> Table:
    approved = {a["phase"]: a for a in data.approvals}
    rows = []
    for name, ph in data.phases.items():
        took = f"{ph.finished_at - ph.started_at:.1f}" if ph.finished_at and ph.started_at else ""
        outcomes = (ph.gate or {}).get("outcomes", [])
        failed = [o for o in outcomes if not o["passed"]]
        gates = "; ".join(f"{o['metric']} {'= ' + _fmt(o['value']) if o['measured'] else 'not reported'}, "
                          f"needs {o['op']} {o['threshold']:g}" for o in failed) or (
            f"{len(outcomes)} passed" if outcomes else "")
        note = ph.error or ""
        if name in approved:
            note = f"approved by {approved[name]['who']}: {approved[name]['why']}"
        elif ph.reused_from:
            note = f"reused from {ph.reused_from}"
        rows.append((name, ph.state, str(ph.attempt), took, gates, note))
    return Table("phases", "Phases", ("phase", "state", "attempt", "seconds", "failed gates", "note"), tuple(rows),
                 "the coordinator's phase records (states, gate outcomes, approvals)")


def benchmark_table(data: RunData) -> Table | None:
    rows, seqs = [], []
    for name in data.phases:
        for metric, point in sorted(latest_values(data, name, BENCHMARK.pattern).items()):
            rows.append((name, metric, _fmt(point.y), f"#{point.seq}"))
            seqs.append(point.seq)
    if not rows:
        return None
    return Table("benchmarks", "Final benchmarks", ("phase", "metric", "value", "run event"), tuple(rows),
                 f"the latest value of each benchmark metric in the phases' metrics events ({len(set(seqs))} events)")


def dataset_table(data: RunData, store) -> tuple[Table | None, str]:
    """The datasets artifact's manifest as a table, or (None, why not)."""
    from shared.storage import ArtifactRef

    ph = data.phases.get("datasets")
    refs = [ArtifactRef.from_dict(a) for a in (ph.artifacts if ph is not None else []) if a.get("name") == "datasets"]
    if not refs:
        return None, missing_reason(data, "datasets") if ph is None or ph.state not in ("succeeded", "approved") \
            else "the datasets phase published no artifact named 'datasets'"
    if store is None:
        return None, "no artifact store was given (--store or AGENTFORGE_STORE)"
    try:
        manifest = store.load_json(refs[0], MANIFEST_FILE)
    except AgentForgeError as exc:
        return None, f"cannot read {MANIFEST_FILE} of {refs[0].uri}: {exc}"
    rows = []
    for name, info in sorted(manifest["datasets"].items()):
        counts = {s: str(f["count"]) for s, f in info.get("files", {}).items()}
        rows.append((name, info["source"], "yes" if info.get("synthetic") else "no",
                     ", ".join(info.get("derived", [])) or "-", info.get("license", ""),
                     counts.get("train", "0"), counts.get("val", "0"), counts.get("test", "0"),
                     str(info.get("skipped", 0))))
    fills = manifest.get("fills_absent_optional", {})
    for name, why in sorted(manifest.get("absent_optional", {}).items()):
        rows.append((name, "absent (optional)" + (f"; {fills[name]} fills its share" if name in fills else ""),
                     "-", "-", "", "0", "0", "0", why))
    return Table("datasets", "Dataset sources", ("dataset", "source", "synthetic", "derived splits", "license",
                                                 "train", "val", "test", "skipped lines / why absent"),
                 tuple(rows), f"{MANIFEST_FILE} of {refs[0].uri}"), ""


def build_report(data: RunData, store=None) -> Report:
    figures, missing = build_figures(data)
    tables = [phase_table(data)]
    bench = benchmark_table(data)
    if bench is not None:
        tables.append(bench)
    else:
        missing.append(("Final benchmarks (gsm8k/arc/piqa accuracies, Phase 4's compression figures)",
                        missing_reason(data, "bitnet")))
    sources, why = dataset_table(data, store)
    if sources is not None:
        tables.append(sources)
    else:
        missing.append(("Dataset sources (the datasets manifest)", why))
    return Report(data, tuple(figures), tuple(tables), tuple(missing))
