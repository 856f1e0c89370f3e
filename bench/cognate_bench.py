"""Phase 1 on the `tiny` profile, on CPU: prepare the curriculum, then the whole cognate job (warm-up +
three variants + evaluation), timed against the target of ≤ 6 minutes for the training on 2 cores.

    .venv/bin/python bench/cognate_bench.py [--profile tiny] [--out FILE] [--verbose]

Reports the wall time of training and of evaluation, each model's held-out NLL against the unigram model of
the same data (the models should end well below it), and each model's inference time with the checklist's
speed_diversity in ms. Appends to bench/RESULTS.md.
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


def inference_times(store, data_refs, model_refs, tmp: Path, seq_len: int) -> list[str]:
    """The checklist's inference_time and speed_diversity in ms (bench only; gates use the FLOP proxy):
    model_metrics.measure_inference_time per model on 8 packed validation batches of 4 × seq_len."""
    from services.cognate.core.data import load_cognate_data_from
    from services.cognate.core.model_metrics import measure_inference_time
    from services.cognate.core.runner import validation_batches
    from shared.model import load_model

    refs = {r.name: r for r in (*data_refs, *model_refs)}
    data_dir = store.fetch(refs["datasets"], tmp / "bench-datasets") / "data"
    data = load_cognate_data_from(data_dir, store.fetch(refs["tokenizer"], tmp / "bench-tok") / "tokenizer")
    batches = validation_batches(data, data.tokenizer, seq_len)
    tokens = sum(b["input_ids"].numel() for b in batches)
    ms = {}
    for name in ("reasoning", "memory", "speed"):
        model = load_model(store.fetch(refs[f"model_{name}"], tmp / f"bench-{name}"))
        ms[name] = measure_inference_time(model, batches) * tokens * 1000 / len(batches)
    cells = ", ".join(f"{n} {v:.1f} ms" for n, v in ms.items())
    return ["", f"inference time per batch of 4 × {seq_len} (median of 3 passes, ACT halting): {cells}; "
                f"speed_diversity (max − min) {max(ms.values()) - min(ms.values()):.1f} ms"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--out", default=None, help="write the section here instead of appending to bench/RESULTS.md")
    ap.add_argument("--verbose", action="store_true", help="log the job's progress (evaluation times per model)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.verbose:
        logging.getLogger("services.cognate").setLevel(logging.INFO)
    offline_env()
    import torch

    from shared.config import load_profile
    from shared.runtime import JobRegistry, JobRequest, get_phase
    from shared.storage import LocalStore

    torch.set_num_threads(1)
    profile = load_profile(args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("WANDB_DIR", tmp)
        store = LocalStore(Path(tmp) / "store")
        data = JobRegistry(get_phase("datasets"), store)
        dj = data.submit(JobRequest(request_id="bench-d", phase="datasets", seed=profile.seed), profile.phases.datasets)
        dj.done.wait()
        cog = JobRegistry(get_phase("cognate"), store)
        t0 = time.perf_counter()
        job = cog.submit(JobRequest(request_id="bench-c", phase="cognate", seed=profile.seed, inputs=dj.artifacts,
                                    evaluation=profile.evaluation.model_dump()), profile.phases.cognate)
        job.done.wait()
        total = time.perf_counter() - t0
        events = list(cog.watch(job.job_id))
        trained_at = next((e.time for e in events if e.stage == "evaluating"), events[-1].time)
        started_at = next(e.time for e in events if e.stage == "loading data")
        train_s = trained_at - started_at
        m = job.metrics
        lines = [f"## cognate_bench — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "", machine_line(),
                 f"- torch {torch.__version__}; torch threads 1; profile `{args.profile}`; job state "
                 f"{job.state.value}{(': ' + job.error) if job.error else ''}", "",
                 f"training (warm-up + 3 variants): **{train_s:.0f} s** (target ≤ 360 s); evaluation and publishing: "
                 f"{total - train_s:.0f} s; whole job {total:.0f} s", "",
                 "| model | val NLL | unigram NLL − val NLL | halting steps | GSM8K | ARC |",
                 "|---|---:|---:|---:|---:|---:|"]
        for name in ("ancestor", "reasoning", "memory", "speed"):
            g = lambda k: m.get(f"cognate/{name}/{k}")  # noqa: E731
            fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
            lines.append(f"| {name} | {fmt(g('val_loss'))} | {fmt(g('val_nll_gain_vs_unigram'))} | "
                         f"{fmt(g('halting_steps'))} | {fmt(g('gsm8k_acc'))} | {fmt(g('arc_acc'))} |")
        lines += inference_times(store, dj.artifacts, job.artifacts, Path(tmp), profile.phases.cognate.model.max_seq_len)
        lines += ["", f"learning-rate halvings (roll-backs): {m.get('cognate/ancestor/lr_halvings', 0):.0f}",
                  "", "diversity: " + ", ".join(f"{k.split('/')[-1]} {m[k]:.3f}" for k in
                                               ("cognate/halting_diversity", "cognate/memory_diversity",
                                                "cognate/compute_diversity") if k in m), ""]
        emit("\n".join(lines), args.out)
        data.shutdown()
        cog.shutdown()


if __name__ == "__main__":
    main()
