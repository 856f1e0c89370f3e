"""Phase 4 on a profile (default `tiny`), on CPU: the bitnet job timed against issue #10's target (tiny:
<= 2 minutes on 2 cores), with what it reports.

    .venv/bin/python bench/bitnet_phase_bench.py [--profile tiny] [--upstream DIR] [--out FILE]

Its input is the real upstream: the profile's datasets, cognate, evomerge, reasoning_data and quietstar jobs
(bench/quietstar_bench.py's `upstream`, plus the quietstar job), kept in `--upstream DIR` and reused when
there. Reports the job's stages from its progress events (loading and the full-precision NLL, each block's
λ warm-up and check, recovery, freezing/packing with the reload check, the benchmark suite), the whole
job's time, and every metric it reports. Appends to bench/RESULTS.md (or --out).
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


def quietstar_model(profile, root: Path):
    from quietstar_bench import upstream

    from shared.storage.manifest import ArtifactRef

    store, inputs = upstream(profile, root)
    saved = root / "quietstar.json"
    if saved.is_file():
        return store, tuple(ArtifactRef.from_dict(d) for d in json.loads(saved.read_text()))
    job, _, _ = run_phase_job(store, profile, "quietstar", inputs, profile.phases.quietstar,
                              "bench-quietstar-upstream")
    refs = (*job.artifacts, *(r for r in inputs if r.name in ("reasoning_data", "datasets", "tokenizer")))
    saved.write_text(json.dumps([r.to_dict() for r in refs]))
    return store, refs


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
    with tempfile.TemporaryDirectory(prefix="bitnet-bench-") as tmp:
        root = Path(args.upstream) if args.upstream else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        store, inputs = quietstar_model(profile, root)
        t0 = time.time()
        job, events, total = run_phase_job(store, profile, "bitnet", inputs, profile.phases.bitnet,
                                           f"bench-bitnet-{int(t0)}")
    marks: list[tuple[str, float]] = [("start", t0)]
    for e in events:
        if e.stage and (not marks or marks[-1][0] != e.stage):
            marks.append((e.stage, e.time))
    marks.append(("end", t0 + total))
    spec = profile.phases.bitnet
    rows = [f"| {a} | {b_t - a_t:.1f} |" for (a, a_t), (_, b_t) in zip(marks, marks[1:])]
    m = job.metrics
    lines = [
        f"## bitnet_phase_bench — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        machine_line(),
        f"- torch {torch.__version__}, {torch.get_num_threads()} threads; profile `{args.profile}`: "
        f"{spec.pack_format} codes, int{spec.embedding_bits} embeddings, λ warm-up {spec.lambda_warmup_steps} steps, "
        f"{spec.calibration_samples} calibration sequences, recovery {spec.recovery_epochs} epochs at "
        f"{spec.recovery_lr:g}, revert above {spec.max_layer_drop:.0%}",
        "",
        "| from the start of this stage to the next | seconds |",
        "|---|---:|",
        *rows,
        f"| **whole job** (target ≤ 120 s on tiny) | **{total:.1f}** |",
        "",
        "Reported: " + ", ".join(f"{k.removeprefix('bitnet/')} {v:.4g}" for k, v in sorted(m.items())
                                 if k.startswith("bitnet/")),
        "",
    ]
    emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
