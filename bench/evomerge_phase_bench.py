"""Phase 2 on a profile (default `tiny`), on CPU: the datasets and cognate jobs to make its inputs, then the
evomerge job timed against issue #7's target (tiny: <= 3 minutes on 2 cores), with what it reports.

    .venv/bin/python bench/evomerge_phase_bench.py [--profile tiny] [--out FILE]

Reports the evomerge job's wall time (loading the parents and data, every generation, the unseen-split
report and publishing), its improvement whatever it is, the generations run, fitness evaluations, the
champion against the best parent on the unseen split, and whether the published champion loads and
generates. Appends to bench/RESULTS.md (or --out).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine_line, offline_env  # noqa: E402 - bench/ is not a package


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--out", default=None, help="write the section here instead of appending to bench/RESULTS.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    offline_env()
    import torch

    from shared.config import load_profile
    from shared.model import load_model
    from shared.runtime import JobRegistry, JobRequest, JobState, get_phase
    from shared.storage import LocalStore

    torch.set_num_threads(1)
    profile = load_profile(args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("WANDB_DIR", tmp)
        store = LocalStore(Path(tmp) / "store")
        regs = {p: JobRegistry(get_phase(p), store) for p in ("datasets", "cognate", "evomerge")}
        dj = regs["datasets"].submit(JobRequest(request_id="d", phase="datasets", seed=profile.seed),
                                     profile.phases.datasets)
        dj.done.wait()
        cj = regs["cognate"].submit(JobRequest(request_id="c", phase="cognate", seed=profile.seed, inputs=dj.artifacts,
                                               evaluation=profile.evaluation.model_dump()), profile.phases.cognate)
        cj.done.wait()
        if cj.state is not JobState.SUCCEEDED:
            raise SystemExit(f"cognate failed: {cj.error}")
        t0 = time.perf_counter()
        ej = regs["evomerge"].submit(JobRequest(request_id="e", phase="evomerge", seed=profile.seed,
                                                inputs=dj.artifacts + cj.artifacts), profile.phases.evomerge)
        ej.done.wait()
        seconds = time.perf_counter() - t0
        m = ej.metrics
        loads = "—"
        if ej.state is JobState.SUCCEEDED:
            model = load_model(store.fetch(ej.artifacts[0], Path(tmp) / "champion"))
            out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=8, do_sample=False)
            loads = f"yes (generated {out.shape[1] - 3} tokens)"
        spec = profile.phases.evomerge
        f = lambda k: f"{m[k]:.4f}" if k in m else "—"  # noqa: E731
        lines = [f"## evomerge_phase_bench — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "", machine_line(),
                 f"- torch {torch.__version__}; torch threads 1; profile `{args.profile}` (population "
                 f"{spec.population_size}, ≤ {spec.generations} generations, early stop at "
                 f"{spec.early_stop_improvement:.0%}); inputs from this run's datasets and cognate jobs; job state "
                 f"{ej.state.value}{(': ' + ej.error) if ej.error else ''}", "",
                 f"evomerge job: **{seconds:.0f} s** (target ≤ 180 s for `tiny`)", "",
                 "| figure | value |", "|---|---:|",
                 f"| improvement over the best generation-0 model | {f('evomerge/improvement')} |",
                 f"| best fitness / generation-0 best | {f('evomerge/best_fitness')} / "
                 f"{f('evomerge/generation0_best_fitness')} |",
                 f"| generations run (stopped early) | {m.get('evomerge/generations', float('nan')):.0f} "
                 f"({bool(m.get('evomerge/stopped_early'))}) |",
                 f"| fitness evaluations | {m.get('evomerge/evaluations', float('nan')):.0f} |",
                 f"| champion − best parent, unseen split | {f('evomerge/champion_vs_best_parent')} |",
                 f"| champion's weight distance to the nearest parent | {f('evomerge/distance_to_nearest_parent')} |",
                 f"| champion loads and generates | {loads} |", ""]
        section = "\n".join(lines)
        emit(section, args.out)
        for reg in regs.values():
            reg.shutdown()


if __name__ == "__main__":
    main()
