"""TRMTitansMAG vs a plain causal transformer of (nearly) equal parameter count, side by side in one run:
training tokens/s and achieved FLOP/s, FLOPs counted by torch.utils.flop_counter for both.

    .venv/bin/python bench/model_bench.py [--shapes tiny,default,default/memory] [--device cpu|cuda] [--dtype fp32|bf16]
                                         [--batch 4] [--seq 128] [--steps 3] [--memory-check] [--out FILE]

A training step = forward (train mode: N_sup − 1 refinement steps without grad, the last with grad, as the
model trains) + backward + AdamW step. Target (issue #5): achieved FLOP/s of TRMTitansMAG ≥ 0.7× the plain
transformer's. --memory-check (CUDA): calculate_safe_batch_size's estimate for a 6 GB budget vs
torch.cuda.max_memory_allocated of a real step at that batch. Appends to bench/RESULTS.md (or --out).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, emit, machine_line  # noqa: E402 - bench/ is not a package

import torch  # noqa: E402
import yaml  # noqa: E402
from plain_gpt import matched  # noqa: E402

from shared.model.config import TRMTitansMAGConfig  # noqa: E402
from shared.model.flops import TotalFlops  # noqa: E402
from shared.model.modeling import TRMTitansMAG  # noqa: E402


def trm_config(shape: str) -> TRMTitansMAGConfig:
    """From configs/<profile>.yaml without the pydantic layer (so the script also runs on a bare GPU image).
    `shape` is a profile name, optionally with a variant (`default/memory`); the variant sets the active
    memory capacity (the reasoning variant when none is named)."""
    profile, _, name = shape.partition("/")
    data = yaml.safe_load((REPO / "configs" / f"{profile}.yaml").read_text())["phases"]["cognate"]
    variant = next(v for v in data["variants"] if v["name"] == (name or "reasoning"))
    return TRMTitansMAGConfig(**data["model"], active_ltm_slots=variant["ltm_slots"],
                              act_threshold=variant["act_threshold"])


def step_fn(model, ids, trm: bool, opt):
    def step():
        out = model(ids, labels=ids)
        loss = out.loss if trm else out
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(model, ids, trm: bool, steps: int, device: str) -> dict:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step = step_fn(model, ids, trm, opt)
    step()  # warm-up (allocations, kernels)
    sync(device)
    with TotalFlops() as counter:
        step()
    flops = counter.get_total_flops()
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    return {"params": sum(p.numel() for p in model.parameters()), "s": s, "tok_s": ids.numel() / s,
            "gflop": flops / 1e9, "gflop_s": flops / 1e9 / s}


def memory_check(cfg, seq: int, dtype) -> list[str]:
    from shared.utils import calculate_safe_batch_size, estimate_training_memory

    model = TRMTitansMAG(cfg).to("cuda", dtype)
    batch, accum = calculate_safe_batch_size(model, 6, seq_len=seq, target_batch_size=32)
    est = estimate_training_memory(model, batch, seq)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device="cuda")
    step = step_fn(model, ids, True, opt)
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return ["", f"calculate_safe_batch_size(default, 6 GB, seq {seq}) = batch {batch} x {accum} accumulation; "
            f"estimate {est.total / 2**30:.2f} GiB vs measured peak (max_memory_allocated, 2nd step) "
            f"{peak / 2**30:.2f} GiB (ratio {est.total / peak:.2f})"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="tiny,default,default/memory",
                    help="profiles, each optionally /variant (capacity); the reasoning variant when none")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--memory-check", action="store_true")
    ap.add_argument("--out", default=None, help="write the section here instead of bench/RESULTS.md")
    args = ap.parse_args()
    torch.set_num_threads(1) if args.device == "cpu" else None
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    lines = [f"## model_bench — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "", machine_line(),
             f"- torch {torch.__version__}; device {args.device}"
             + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else "; torch threads 1")
             + f"; {args.dtype}; batch {args.batch} × seq {args.seq}; median of {args.steps} training steps "
               f"(forward + backward + AdamW); FLOPs by torch.utils.flop_counter", "",
             "| shape | model | params | active memory slots | s/step | tokens/s | GFLOP/step | achieved GFLOP/s "
             "| FLOP/s ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for shape in args.shapes.split(","):
        cfg = trm_config(shape)
        torch.manual_seed(0)
        trm = TRMTitansMAG(cfg).to(args.device, dtype)
        n = sum(p.numel() for p in trm.parameters())
        plain = matched(cfg.vocab_size, cfg.hidden_dim, cfg.num_heads, n).to(args.device, dtype)
        ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=args.device)
        a = measure(trm, ids, True, args.steps, args.device)
        b = measure(plain, ids, False, args.steps, args.device)
        for name, r, ratio in (("TRMTitansMAG", a, f"{a['gflop_s'] / b['gflop_s']:.2f}"), ("plain transformer", b, "")):
            slots = f"{cfg.active_ltm_slots:,} of {cfg.ltm_slots:,}" if name == "TRMTitansMAG" else ""
            lines.append(f"| {shape} | {name} | {r['params']:,} | {slots} | {r['s']:.3f} | {r['tok_s']:,.0f} | {r['gflop']:.1f} | "
                         f"{r['gflop_s']:,.1f} | {ratio} |")
        del trm, plain
    if args.memory_check and args.device == "cuda":
        lines += memory_check(trm_config("default"), 512, dtype)
    section = "\n".join(lines + [""])
    emit(section, args.out)


if __name__ == "__main__":
    main()
