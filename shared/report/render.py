"""Drawing a Report: one PNG per figure (matplotlib's Agg canvas, no display, no pyplot state) and one HTML
page that links nothing outside its folder — no scripts, no fonts, no style sheets, no URLs — so it opens
the same offline, from an archive or a CI artifact."""

from __future__ import annotations

import html
import os
import time
from pathlib import Path

from shared.report.build import Figure, Report, Table

CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption, .source { font-size: 0.85em; color: #555; } .missing li { margin: 0.3em 0; }
"""


def draw(figure: Figure, path: Path) -> None:
    """One figure as a PNG: lines (x → y per series), grouped bars at each x, or one bar per category."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    plot = figure.plot
    fig = MplFigure(figsize=(8, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if plot.kind == "line":
        for s in figure.series:
            xs, ys = [p.x for p in s.points], [p.y for p in s.points]
            ax.plot(xs, ys, marker="o" if len(xs) <= 40 else None, markersize=3, label=s.label)
    elif plot.kind == "bars":
        n = len(figure.series)
        width = 0.8 / n
        for i, s in enumerate(figure.series):
            ax.bar([p.x - 0.4 + width * (i + 0.5) for p in s.points], [p.y for p in s.points], width, label=s.label)
        ax.set_xticks(sorted({p.x for s in figure.series for p in s.points}))
    elif plot.kind == "categories":
        xs = range(len(figure.series))
        ax.bar(xs, [s.points[-1].y for s in figure.series])
        ax.set_xticks(list(xs), [s.label for s in figure.series], rotation=60, ha="right", fontsize=7)
    else:
        raise ValueError(f"unknown plot kind {plot.kind!r}")
    if plot.kind == "line" and all(p.x == int(p.x) for s in figure.series for p in s.points):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))    # steps, epochs, generations
    for y, label in figure.hlines:
        ax.axhline(y, linestyle="--", color="grey", linewidth=1, label=label)
    ax.set_title(plot.title)
    ax.set_xlabel(plot.xlabel)
    ax.set_ylabel(plot.ylabel)
    ax.grid(True, alpha=0.3)
    if plot.kind != "categories":
        ax.legend(fontsize=8)
    fig.savefig(path, format="png")


def _ranges(seqs: list[int]) -> str:
    """[3, 4, 5, 9] -> "#3–5, #9"."""
    out, start = [], None
    for i, s in enumerate(seqs):
        if start is None:
            start = s
        if i + 1 == len(seqs) or seqs[i + 1] != s + 1:
            out.append(f"#{start}" if start == s else f"#{start}–{s}")
            start = None
    return ", ".join(out)


def _table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = []
    for row in t.rows:
        cells = "".join(f'<td class="num">{html.escape(v)}</td>' if _numeric(v) else f"<td>{html.escape(v)}</td>"
                        for v in row)
        body.append(f"<tr>{cells}</tr>")
    return (f'<h2 id="{t.id}">{html.escape(t.title)}</h2>\n<table><tr>{head}</tr>\n' + "\n".join(body) +
            f'</table>\n<p class="source">From {html.escape(t.source)}.</p>')


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _figure(f: Figure) -> str:
    n = len(f.seqs)
    caption = (f"{html.escape(f.plot.what)}. From {n} metrics event{'s' if n != 1 else ''} "
               f"of phase {html.escape(f.plot.phase)} (run events {_ranges(f.seqs)}); series: "
               f"{html.escape(', '.join(s.label for s in f.series))}.")
    if f.absent:
        caption += f" Not drawn, no value in any event: {html.escape(', '.join(f.absent))}."
    return (f'<figure id="{f.plot.id}"><img src="{f.file}" alt="{html.escape(f.plot.title)}">\n'
            f"<figcaption>{caption}</figcaption></figure>")


def page(report: Report) -> str:
    run = report.data.run
    created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(run.created_at))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Agent Forge run {html.escape(run.run_id)}</title>", f"<style>{CSS}</style></head><body>",
        f"<h1>Agent Forge run {html.escape(run.run_id)}</h1>",
        f"<p>Profile <b>{html.escape(run.profile)}</b> (config hash {html.escape(run.config_hash[:12])}), "
        f"created {created}, state <b>{html.escape(run.state)}</b>"
        + (f": {html.escape(run.error)}" if run.error else "") + ".</p>",
    ]
    tables = {t.id: t for t in report.tables}
    parts.append(_table(tables["phases"]))
    parts.append('<h2 id="plots">Plots</h2>')
    parts.extend(_figure(f) for f in report.figures)
    parts.extend(_table(t) for t in report.tables if t.id != "phases")
    parts.append('<h2 id="missing">Missing data</h2>')
    if report.missing:
        parts.append('<ul class="missing">' + "".join(
            f"<li><b>{html.escape(what)}</b>: {html.escape(why)}</li>" for what, why in report.missing) + "</ul>")
    else:
        parts.append("<p>None: every plot and table has data.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(report: Report, out_dir: str | os.PathLike[str]) -> Path:
    """Write index.html and one PNG per figure into `out_dir` (created); a PNG of a plot not drawn this time
    is removed, so the folder holds exactly what the page shows. Returns the page's path."""
    from shared.report.plots import PLOTS

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    drawn = {f.file for f in report.figures}
    for plot in PLOTS:
        stale = out / f"{plot.id}.png"
        if stale.name not in drawn and stale.exists():
            stale.unlink()
    for f in report.figures:
        draw(f, out / f.file)
    index = out / "index.html"
    tmp = out / "index.html.partial"
    tmp.write_text(page(report), encoding="utf-8")
    tmp.replace(index)
    return index
