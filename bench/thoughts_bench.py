"""Quiet-STaR thought generation: parallel (every position at once, shared/model/thoughts.py) vs the sequential
per-position baseline, in one run on the same model, input and random draws.

    .venv/bin/python bench/thoughts_bench.py [--profile tiny] [--seq 256] [--batch 1] [--repeats 3]
                                             [--device cpu|cuda] [--out FILE]

Model: the profile's cognate.model shape (the reasoning variant's memory capacity), random init, eval mode.
Thoughts: quietstar.num_thoughts (r) × quietstar.thought_length (k) tokens after [thinking] at every one of
the `--seq` positions (ids 1 and 2 stand for [thinking]/[/endthinking]; never sampled inside a thought).
Parallel = `sample_thoughts`: k stream forwards, each sampling token j at every position at once.
Sequential = `sequential_sample_thoughts`: for each position, the thought token by token, each token one
model run on the prefix + [thinking] + the thought so far (seq × k runs). Both draw the same Gumbel noise,
so they must produce the same thoughts: the token agreement is reported as the check. Target (issue #9):
parallel ≥ 10× faster at sequence length 256. Appends to bench/RESULTS.md (or --out).
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
from model_bench import trm_config  # noqa: E402

from shared.model.modeling import TRMTitansMAG  # noqa: E402
from shared.model.thoughts import sample_thoughts, sequential_sample_thoughts  # noqa: E402

START, END = 1, 2


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="parallel runs (median); the baseline runs once")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="write the section here instead of bench/RESULTS.md")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    quiet = yaml.safe_load((REPO / "configs" / f"{args.profile}.yaml").read_text())["phases"]["quietstar"]
    r, k = quiet["num_thoughts"], quiet["thought_length"]
    cfg = trm_config(args.profile)
    torch.manual_seed(0)
    model = TRMTitansMAG(cfg).to(args.device).eval()
    ids = torch.randint(3, cfg.vocab_size, (args.batch, args.seq), device=args.device)
    kw = dict(num_thoughts=r, length=k, start_id=START, end_id=END)

    def gen(seed: int) -> torch.Generator:
        return torch.Generator(device=args.device).manual_seed(seed)

    sample_thoughts(model, ids[:, :16], generator=gen(0), **kw)                      # warm-up
    runs = [timed(lambda: sample_thoughts(model, ids, generator=gen(1), **kw), args.device)
            for _ in range(args.repeats)]
    par, t_par = runs[0][0], statistics.median(t for _, t in runs)
    seq, t_seq = timed(lambda: sequential_sample_thoughts(model, ids, generator=gen(1), **kw), args.device)
    with torch.no_grad():
        _, t_plain = timed(lambda: model(ids, act_threshold=1.0), args.device)

    same = (par.tokens == seq.tokens).float().mean().item()
    both = par.tokens == seq.tokens
    dlogp = (par.logprobs - seq.logprobs)[both].abs().max().item() if both.any() else float("nan")
    n_tok = args.batch * r * args.seq * k
    lines = [f"## thoughts_bench — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "", machine_line(),
             f"- torch {torch.__version__}; device {args.device}"
             + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else "; torch threads 1")
             + f"; fp32; profile `{args.profile}` model shape ({cfg.num_layers} × {cfg.hidden_dim}, window "
               f"{cfg.window}, memory {cfg.active_ltm_slots} of {cfg.ltm_slots} slots, chunk "
               f"{cfg.memory_chunk_size}, n={cfg.n_latent_steps}, T={cfg.t_cycles}, N_sup={cfg.n_sup}), random "
               f"init, eval; batch {args.batch} × seq {args.seq}; r = {r} thoughts × k = {k} tokens at every "
               f"position ({n_tok:,} thought tokens)", "",
             "| generation | model runs | s | thought tokens/s | speedup |",
             "|---|---:|---:|---:|---:|",
             f"| parallel (`sample_thoughts`, median of {args.repeats}) | {k} stream forwards | {t_par:.2f} | "
             f"{n_tok / t_par:,.0f} | {t_seq / t_par:.1f}× |",
             f"| sequential per-position baseline | {args.seq * k:,} prefix forwards | {t_seq:.2f} | "
             f"{n_tok / t_seq:,.0f} | 1.0× |",
             "",
             f"check: the two give the same thoughts for {same:.1%} of tokens (same Gumbel noise); max |Δ log-prob| "
             f"where they agree {dlogp:.1e}. For scale: one plain forward of the {args.batch} × {args.seq} base "
             f"tokens (N_sup steps, no halting) takes {t_plain:.3f} s.", ""]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
