"""Phase 3a's offline backend on CPU: the datasets job (profile `tiny`, the local mirror), then the
reasoning_data job asked for --target examples (default 2,500), timed against issue #8's target (≥ 2,000
validated examples across all 10 strategies in under 2 minutes on 2 cores, 100% verification for math).

    .venv/bin/python bench/reasoning_data_bench.py [--profile tiny] [--target 2500] [--workers 1] [--out FILE]

The job runs as it does in the pipeline: units planned, leased and worked (with --workers > 1, extra unit
workers in this process lease beside the job's own), merged, re-validated, split and published. Reports the
job's wall time, examples per strategy, the verification rates, rejections by reason and the train/val split.
Appends to bench/RESULTS.md (or --out).
"""

from __future__ import annotations

import argparse
import logging
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
    ap.add_argument("--target", type=int, default=2500)
    ap.add_argument("--workers", type=int, default=1, help="unit workers besides the job's own")
    ap.add_argument("--out", default=None, help="write the section here instead of appending to bench/RESULTS.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    offline_env()

    from services.coordinator.core.unit_service import memory_unit_service
    from services.reasoning_data.core.job import UnitWorker, validate_reasoning_data
    from shared.config import load_profile
    from shared.runtime import JobRegistry, JobRequest, JobState, get_phase
    from shared.storage import LocalStore

    profile = load_profile(args.profile)
    spec = profile.phases.reasoning_data.model_copy(update={"target_examples": args.target})
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "store")
        data = JobRegistry(get_phase("datasets"), store)
        dj = data.submit(JobRequest(request_id="d", phase="datasets", seed=profile.seed), profile.phases.datasets)
        dj.done.wait()
        if dj.state is not JobState.SUCCEEDED:
            raise SystemExit(f"datasets failed: {dj.error}")
        reg = JobRegistry(get_phase("reasoning_data"), store)
        extra = [UnitWorker(store, memory_unit_service(), name=f"bench-worker-{i}", idle_s=0.05).start()
                 for i in range(args.workers)]
        t0 = time.perf_counter()
        job = reg.submit(JobRequest(request_id="r", phase="reasoning_data", seed=profile.seed, inputs=dj.artifacts),
                         spec)
        job.done.wait()
        seconds = time.perf_counter() - t0
        for w in extra:
            w.stop()
        if job.state is not JobState.SUCCEEDED:
            raise SystemExit(f"reasoning_data failed: {job.error}")
        merged = store.load_json(job.artifacts[0], "reasoning_data.json")
        problems = validate_reasoning_data(merged, target=2000)
        m = job.metrics
    strategies = spec.strategies
    lines = [f"## reasoning_data_bench — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "", machine_line(),
             f"- profile `{args.profile}` datasets (local mirror, max {profile.phases.datasets.max_examples_per_dataset} "
             f"per dataset and split); backend offline; target {args.target}; {1 + args.workers} unit worker(s) "
             f"in one process; units of {spec.items_per_unit} problems × 1 strategy", "",
             f"reasoning_data job: **{seconds:.1f} s** (target < 120 s for ≥ 2,000 validated examples); "
             f"the checklist's validation at 2,000: {'passes' if not problems else f'fails: {problems[:3]}'}", "",
             "| figure | value |", "|---|---:|",
             f"| examples (after merge) | {m['reasoning_data/total_examples']:,.0f} |",
             f"| train / val (split by source problem) | {m['reasoning_data/train_examples']:,.0f} / "
             f"{m['reasoning_data/val_examples']:,.0f} |",
             f"| source problems | {m['reasoning_data/source_items']:,.0f} |",
             f"| strategies covered | {m['reasoning_data/strategies_covered']:.0f} |",
             f"| valid fraction (re-checked at merge) | {m['reasoning_data/valid_fraction']:.3f} |",
             f"| math answer verification | {m.get('reasoning_data/math_verification_rate', float('nan')):.3f} |",
             f"| answer verification (all with a gold) | {m.get('reasoning_data/answer_verification_rate', float('nan')):.3f} |",
             f"| strategy balance (min share / max share) | {m.get('reasoning_data/strategy_balance', 0):.2f} |",
             f"| work units (redone) | {m['reasoning_data/units']:.0f} ({m['reasoning_data/units_redone']:.0f}) |",
             "", "per strategy: " + ", ".join(f"{s} {m[f'reasoning_data/strategy/{s}']:.0f}" for s in strategies), "",
             "rejections: " + (", ".join(f"{k.rsplit('/', 1)[1]} {v:.0f}" for k, v in sorted(m.items())
                                         if k.startswith("reasoning_data/rejected/")) or "none"), ""]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
