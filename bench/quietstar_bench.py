"""Phase 3b on a profile (default `tiny`), on CPU: the quietstar job timed against issue #9's target (tiny:
baking + RL in <= 5 minutes on 2 cores), with what it reports.

    .venv/bin/python bench/quietstar_bench.py [--profile tiny] [--upstream DIR] [--out FILE]

Its inputs are the real upstream of the pipeline: the datasets, cognate, evomerge and reasoning_data jobs of
the same profile, run first (cognate dominates: ~13 minutes on tiny). `--upstream DIR` keeps them in DIR
(a LocalStore plus inputs.json) and reuses them when DIR already holds them.

Reports the job's stages from its progress events' timestamps — loading and the champion's GSM8K (Phase 2's
number), baking (every epoch with its validation, the mitigation when it ran), the baked model's
measurement, RL (every step and anti-theater check), the final evaluation and publishing — the sum that
the target is about (baking + RL), and the metrics the job reports. Appends to bench/RESULTS.md (or --out).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine_line, offline_env, run_phase_job  # noqa: E402 - bench/ is not a package

STAGES = ("baking", "measuring the baked model", "RL", "final evaluation", "publishing")


def upstream(profile, root: Path):
    """(store, input refs): the profile's datasets, reasoning_data, cognate and evomerge outputs in `root`."""
    from shared.storage import LocalStore
    from shared.storage.manifest import ArtifactRef

    store = LocalStore(root / "store")
    saved = root / "inputs.json"
    if saved.is_file():
        return store, tuple(ArtifactRef.from_dict(d) for d in json.loads(saved.read_text()))

    def run(phase, inputs, spec):
        job, _, seconds = run_phase_job(store, profile, phase, inputs, spec, f"bench-{phase}")
        print(f"upstream {phase}: {seconds:.0f} s", flush=True)
        return job.artifacts

    mirror = (Path(__file__).resolve().parents[1] / profile.phases.datasets.mirror_dir).resolve()
    d = run("datasets", (), profile.phases.datasets.model_copy(update={"mirror_dir": str(mirror)}))
    rd = run("reasoning_data", d, profile.phases.reasoning_data)
    c = run("cognate", d, profile.phases.cognate)
    e = run("evomerge", d + c, profile.phases.evomerge)
    inputs = (*e, *rd, *d)
    saved.write_text(json.dumps([r.to_dict() for r in inputs]))
    return store, inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--upstream", default=None, help="keep (or reuse) the upstream jobs' outputs in this folder")
    ap.add_argument("--out", default=None, help="write the section here instead of appending to bench/RESULTS.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    offline_env()
    import torch

    from shared.config import load_profile

    profile = load_profile(args.profile)
    with tempfile.TemporaryDirectory(prefix="quietstar-bench-") as tmp:
        root = Path(args.upstream) if args.upstream else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        store, inputs = upstream(profile, root)
        t0 = time.time()
        job, events, total = run_phase_job(store, profile, "quietstar", inputs, profile.phases.quietstar,
                                           f"bench-quietstar-{int(t0)}")
    first = {}
    for e in events:
        first.setdefault(e.stage, e.time)
    marks = [("start", t0), *[(s, first[s]) for s in STAGES], ("end", events[-1].time)]
    durations = {a: b_t - a_t for (a, a_t), (_, b_t) in zip(marks, marks[1:])}
    durations["start"] = first["baking"] - t0
    bake_rl = durations["baking"] + durations["RL"]
    spec = profile.phases.quietstar
    m = job.metrics
    epochs = sum(1 for e in events if e.stage.startswith("baking epoch"))
    lines = [
        f"## quietstar_bench — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        machine_line(),
        f"- torch {torch.__version__}, {torch.get_num_threads()} threads; profile `{args.profile}`: baking "
        f"{spec.baking_epochs} epochs ({spec.baking_objective}, lr {spec.baking_optimizer.muon_lr:g}), RL "
        f"{spec.rl_steps} steps × batch {spec.rl_batch_size} × {spec.rl_seq_len} tokens, {spec.num_thoughts} thoughts "
        f"of {spec.thought_length} tokens, {spec.lookahead_tokens} true tokens, check every "
        f"{spec.anti_theater_every}",
        "",
        "| stage | seconds |",
        "|---|---:|",
        f"| loading, the champion's GSM8K, tokens | {durations['start']:.1f} |",
        f"| baking ({epochs} epochs run, incl. per-epoch validation) | {durations['baking']:.1f} |",
        f"| the baked model measured (GSM8K, token usage) | {durations['measuring the baked model']:.1f} |",
        f"| RL ({spec.rl_steps} steps, anti-theater checks) | {durations['RL']:.1f} |",
        f"| final evaluation | {durations['final evaluation']:.1f} |",
        f"| publishing | {durations['publishing']:.1f} |",
        f"| **baking + RL** (target ≤ 300 s on tiny) | **{bake_rl:.1f}** |",
        f"| whole job | {total:.1f} |",
        "",
        "Reported: " + ", ".join(f"{k.removeprefix('quietstar/')} {v:.4g}" for k, v in sorted(m.items())
                                 if k.startswith("quietstar/")),
        "",
    ]
    emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
