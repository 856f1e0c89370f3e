"""Why every job runs on a thread of its own that ends with it (shared/runtime/registry.py, issue #12).

    .venv/bin/python bench/omp_teams_bench.py [--profile tiny] [--threads 2] [--teams 1,3] [--out FILE]

A thread that ran a torch op on more than one thread keeps an OpenMP team (libgomp) for as long as the thread
lives. With more OpenMP threads in the process than cores, libgomp stops spinning at its barriers and puts
waiting threads to sleep, so every parallel region pays a wake-up. In one embedded run (`make run`) each
phase used to run on its registry's pool thread, which outlived the phase with its team: later phases ran
2–3× slower than alone. Side by side in one process: a fresh thread evaluating a model of the profile's
shape (forward passes, no gradient) alone, then while N other threads that once ran torch wait idle, then
after those threads ended. Appends to bench/RESULTS.md (or --out).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine_line  # noqa: E402 - bench/ is not a package


def timed_in_fresh_thread(fn, repeats: int) -> float:
    """Seconds per call of fn, measured on a new thread (its own OpenMP team), after one warm-up call."""
    out = {}

    def body():
        fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        out["s"] = (time.perf_counter() - t0) / repeats

    t = threading.Thread(target=body)
    t.start()
    t.join()
    return out["s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--teams", default="1,3", help="numbers of idle teams to try")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    from shared.config import load_profile
    from shared.model import TRMTitansMAG, TRMTitansMAGConfig

    torch.set_num_threads(args.threads)
    cog = load_profile(args.profile).phases.cognate.model
    torch.manual_seed(0)
    model = TRMTitansMAG(TRMTitansMAGConfig(**cog.model_dump())).eval()
    batch = torch.randint(0, cog.vocab_size, (8, cog.max_seq_len))

    def evaluate():
        with torch.no_grad():
            model(batch)

    rows = [("alone", timed_in_fresh_thread(evaluate, args.repeats))]
    for n in (int(x) for x in args.teams.split(",")):
        stop = threading.Event()

        def idle_team():
            a = torch.randn(256, 256)
            (a @ a).sum()             # one parallel op: this thread now owns an OpenMP team
            stop.wait()

        idle = [threading.Thread(target=idle_team, daemon=True) for _ in range(n)]
        for t in idle:
            t.start()
        time.sleep(0.5)
        rows.append((f"beside {n} idle thread(s) that ran torch", timed_in_fresh_thread(evaluate, args.repeats)))
        stop.set()
        for t in idle:
            t.join()
        rows.append((f"after those {n} thread(s) ended", timed_in_fresh_thread(evaluate, args.repeats)))
    base = rows[0][1]
    lines = [f"## omp_teams_bench — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "", machine_line(),
             f"- torch {torch.__version__}, {args.threads} intra-op threads; one forward (eval, no gradient) of a "
             f"`{args.profile}` cognate model on 8 × {cog.max_seq_len} tokens, mean of {args.repeats} after a "
             f"warm-up, each timing on a fresh thread", "",
             "| the evaluating thread runs … | s per forward | × alone |", "|---|---:|---:|"]
    lines += [f"| {label} | {s:.4f} | {s / base:.2f} |" for label, s in rows]
    lines.append("")
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
