"""TRMTitansMAG vs a plain causal transformer of (nearly) equal parameter count, trained on the same batches:
held-out NLL at equal training compute and at equal training steps, side by side in one run.

    .venv/bin/python bench/quality_bench.py [--trm-steps 250] [--batch 8] [--seq 128] [--val-batches 16]
                                           [--variant ancestor|reasoning|memory|speed]
                                           [--plain-optimizer adamw|muongrokfast] [--seed S] [--out FILE]

Data: the `tiny` profile's datasets phase run here (prepare_datasets from the local mirror ../shared/datasets,
then its ByteLevel BPE trained on the train splits), loaded as the Cognate phase loads it. Training batches:
one Phase1Dataset stream over every train record (all stages, the default category mix, seed S), the same
batches in the same order for both models. Held-out: the first --val-batches packed batches of the val
records (never trained on); NLL in nats per target token (Phase1Dataset's labels: prompts are not targets).

TRMTitansMAG (the profile's model; the ancestor's full memory capacity unless --variant names one) trains
as Phase 1 trains it: deep supervision, N_sup supervision steps per batch, each with its own backward and
MuonGrokfast step (the profile's optimizer section and grad_clip); held-out NLL in eval mode, ACT halting.
The plain transformer (bench/plain_gpt.py) trains with AdamW at the profile's adamw_lr and weight decay,
the same betas and gradient clip (or --plain-optimizer muongrokfast: its matrices tagged for Muon).

Equal compute: FLOPs of one training step of each model (forward + backward, optimizer excluded; counted by
torch.utils.flop_counter), and the plain model gets round(trm_steps × TRM FLOP/step ÷ its FLOP/step) steps.
Its held-out NLL is also taken at trm_steps during the same run (equal steps = equal tokens). Also reported:
the add-one unigram NLL of the val targets under the training tokens' counts. Appends to bench/RESULTS.md
(or --out). Skips, saying so, when the local mirror is absent.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine_line  # noqa: E402 - bench/ is not a package

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from shared.model.flops import TotalFlops  # noqa: E402
from plain_gpt import PlainGPT, matched  # noqa: E402

IGNORE_INDEX = -100


def prepare(spec, workdir: Path):
    """The datasets phase's two outputs (curriculum files + trained BPE), loaded as the Cognate phase does."""
    from services.cognate.core.data import load_cognate_data_from
    from services.dataset.core.prepare import prepare_datasets
    from services.dataset.core.runner import training_texts
    from shared.data.tokenizer import save_tokenizer, train_bpe_tokenizer

    prepared = prepare_datasets(spec, workdir / "data", seed=0)
    tokenizer = train_bpe_tokenizer(training_texts(prepared.records), spec.tokenizer.vocab_size)
    save_tokenizer(tokenizer, workdir / "tokenizer")
    return load_cognate_data_from(prepared.directory, workdir / "tokenizer")


def train_stream(records, tokenizer, *, seq: int, batch: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, labels) batches of every train record, epoch after epoch (each its own shuffled plan)."""
    from shared.data.curriculum import Phase1Dataset

    epoch = 0
    while True:
        ds = Phase1Dataset(records, tokenizer, seq_len=seq, seed=seed, epoch=epoch)
        for b in ds.batches(batch, drop_last=True):
            yield b["input_ids"], b["labels"]
        epoch += 1


def plain_logits(model: PlainGPT, ids: torch.Tensor) -> torch.Tensor:
    """PlainGPT's forward up to the logits (its forward() returns only its own shifted loss over every
    token; here both models score the same already-shifted, prompt-masked labels)."""
    x = model.embed(ids)
    for blk in model.blocks:
        x = blk(x)
    return model.norm(x) @ model.embed.weight.t()


def init_like_trm(model: PlainGPT) -> None:
    """TRMTitansMAG's initialisation (Linear and Embedding weights ~ N(0, 0.02)); PlainGPT keeps torch's
    defaults, whose N(0, 1) tied embedding starts the loss near 100 nats."""
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(module.weight, std=0.02)


def tag_plain_roles(model: PlainGPT) -> None:
    """Optimizer roles for MuonGrokfast (shared.optim.roles): Linear weights to Muon, the rest to AdamW."""
    from shared.model.modeling import tag

    for name, p in model.named_parameters():
        tag(p, "embedding" if name.startswith("embed.") else "norm" if p.ndim == 1 else "muon")


def trm_step(model, opt, ids, labels, n_sup: int) -> float:
    """Deep supervision as services/cognate/core/trainer.py does it (micro-batch = batch): N_sup supervision
    steps, each its own forward, backward and optimizer step, (y, z) carried detached. Returns the last LM loss."""
    from services.cognate.core.trainer import supervision_losses

    y = z = None
    for _ in range(n_sup):
        lm, halt, y, z = supervision_losses(model, ids, labels, y, z)
        (lm + halt).backward()
        y, z = y.detach(), z.detach()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
    return lm.item()


def plain_step(model, opt, ids, labels, clip: float | None) -> float:
    from services.cognate.core.trainer import criterion

    loss = criterion(plain_logits(model, ids), labels)
    loss.backward()
    if opt is not None:
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return loss.item()


def step_flops(step, model, ids, labels) -> int:
    """FLOPs of one training step's forward + backward, on a copy (the model being trained is untouched)."""
    probe = copy.deepcopy(model)
    probe.train()
    with TotalFlops() as counter:
        step(probe, None, ids, labels)
    return counter.get_total_flops()


def last10(losses: list[float]) -> float:
    return sum(losses[-10:]) / len(losses[-10:])


@torch.no_grad()
def heldout(logits_fn, batches) -> float:
    """Mean next-token NLL (nats) over the targets of the held-out batches (labels already shifted)."""
    total, count = 0.0, 0
    for ids, labels in batches:
        logits = logits_fn(ids)
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                       ignore_index=IGNORE_INDEX, reduction="sum"))
        count += int((labels != IGNORE_INDEX).sum())
    return total / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trm-steps", type=int, default=250, help="TRMTitansMAG training batches (its budget)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--val-batches", type=int, default=16, help="held-out batches of --batch sequences")
    ap.add_argument("--variant", default="ancestor",
                    help="TRMTitansMAG capacity: ancestor (full memory, as the shared warm-up trains) or a "
                         "variant of the profile (its ltm_slots and act_threshold)")
    ap.add_argument("--plain-optimizer", default="adamw", choices=["adamw", "muongrokfast"])
    ap.add_argument("--seed", type=int, default=None, help="model init and data order (default: init_seed)")
    ap.add_argument("--out", default=None, help="write the section here instead of bench/RESULTS.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")

    from services.cognate.core.runner import set_capacity
    from shared.config import load_profile
    from shared.config.load import resolve_path
    from shared.data.curriculum import Phase1Dataset
    from shared.evaluation import unigram_nll
    from shared.model import TRMTitansMAG, TRMTitansMAGConfig
    from shared.optim import MuonGrokfast

    torch.set_num_threads(1)
    profile = load_profile("tiny")
    dspec, cspec = profile.phases.datasets, profile.phases.cognate
    mirror = resolve_path(dspec.mirror_dir)
    if not mirror.is_dir():
        print(f"quality_bench: skipped: the local dataset mirror {mirror} is absent", file=sys.stderr)
        return
    seed = cspec.init_seed if args.seed is None else args.seed
    t_start = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="quality-bench-") as tmp:
        data = prepare(dspec, Path(tmp))
    tok = data.tokenizer
    val = [(b["input_ids"], b["labels"]) for b in islice(
        Phase1Dataset(data.val, tok, seq_len=args.seq, seed=0, split="val").batches(args.batch, drop_last=True),
        args.val_batches)]

    # TRMTitansMAG as Phase 1 builds it (runner.train_all), optionally narrowed to a variant's capacity.
    torch.manual_seed(seed)
    cfg = TRMTitansMAGConfig.from_profile(cspec.model, active_ltm_slots=cspec.model.ltm_slots)
    trm = TRMTitansMAG(cfg)
    if args.variant != "ancestor":
        v = next(v for v in cspec.variants if v.name == args.variant)
        set_capacity(trm, v.ltm_slots, v.act_threshold)
    n_trm = sum(p.numel() for p in trm.parameters())
    torch.manual_seed(seed)
    plain = matched(cfg.vocab_size, cfg.hidden_dim, cfg.num_heads, n_trm)
    init_like_trm(plain)
    n_plain = sum(p.numel() for p in plain.parameters())

    def trm_train(model, opt, ids, labels):
        return trm_step(model, opt, ids, labels, cfg.n_sup)

    def plain_train(model, opt, ids, labels):
        return plain_step(model, opt, ids, labels, cspec.grad_clip if args.plain_optimizer == "adamw" else None)

    stream = train_stream(data.train, tok, seq=args.seq, batch=args.batch, seed=seed)
    first = next(stream)
    f_trm, f_plain = step_flops(trm_train, trm, *first), step_flops(plain_train, plain, *first)
    eq_compute = round(args.trm_steps * f_trm / f_plain)
    batches = [first, *islice(stream, max(eq_compute, args.trm_steps) - 1)]
    counts = torch.bincount(torch.cat([ids.flatten() for ids, _ in batches]), minlength=len(tok))
    targets = torch.cat([labels[labels != IGNORE_INDEX] for _, labels in val])
    unigram = unigram_nll(counts, targets, vocab_size=len(tok))

    # TRMTitansMAG: deep supervision with MuonGrokfast.
    opt = MuonGrokfast.from_config(trm.named_parameters(), cspec.optimizer, qk_modules=trm.qk_clip_modules(),
                                   max_grad_norm=cspec.grad_clip)
    torch.manual_seed(seed)
    trm.train()
    t0 = time.perf_counter()
    trm_losses = [trm_train(trm, opt, ids, labels) for ids, labels in batches[:args.trm_steps]]
    trm_s = time.perf_counter() - t0
    trm.eval()
    trm_nll = heldout(lambda ids: trm(ids).logits, val)
    with torch.no_grad():
        halting = torch.cat([trm(ids).halting_steps.flatten() for ids, _ in val]).mean().item()

    # The plain transformer: one run, held-out NLL at both checkpoints.
    if args.plain_optimizer == "adamw":
        popt = torch.optim.AdamW(plain.parameters(), lr=cspec.optimizer.adamw_lr,
                                 weight_decay=cspec.optimizer.weight_decay, betas=(0.9, 0.95))
    else:
        tag_plain_roles(plain)
        popt = MuonGrokfast.from_config(plain.named_parameters(), cspec.optimizer, max_grad_norm=cspec.grad_clip)
    torch.manual_seed(seed)
    checkpoints = {args.trm_steps: None, eq_compute: None}
    plain_losses, plain_s = [], 0.0
    for step, (ids, labels) in enumerate(batches, start=1):
        plain.train()
        t0 = time.perf_counter()
        plain_losses.append(plain_train(plain, popt, ids, labels))
        plain_s += time.perf_counter() - t0
        if step in checkpoints:
            plain.eval()
            checkpoints[step] = (heldout(lambda x: plain_logits(plain, x), val), plain_s, last10(plain_losses))
    total_s = time.perf_counter() - t_start

    tokens = args.batch * args.seq
    val_targets = int(targets.numel())
    plain_opt = ("AdamW (lr {0}, weight decay {1}, betas 0.9/0.95, clip {2})" if args.plain_optimizer == "adamw"
                 else "MuonGrokfast (Linear weights on Muon; lr {0}, weight decay {1}, clip {2})").format(
        cspec.optimizer.adamw_lr, cspec.optimizer.weight_decay, cspec.grad_clip)
    capacity = (f"full memory capacity ({cfg.ltm_slots} slots, act_threshold {cfg.act_threshold})"
                if args.variant == "ancestor" else
                f"variant {args.variant} ({trm.config.active_ltm_slots} of {cfg.ltm_slots} slots, act_threshold "
                f"{trm.config.act_threshold})")
    lines = [f"## quality_bench — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "", machine_line(),
             f"- torch {torch.__version__}; torch threads 1; profile `tiny` data (datasets phase from the local "
             f"mirror, BPE {len(tok)}); one train stream of all stages (default mix, seed {seed}), batch "
             f"{args.batch} × seq {args.seq}, the same batches in the same order for both; held-out: "
             f"{len(val)} val batches ({val_targets:,} target tokens); whole bench {total_s:.0f} s",
             f"- TRMTitansMAG: tiny model, {capacity}; deep supervision N_sup {cfg.n_sup} (a backward + "
             f"MuonGrokfast step each, profile optimizer, clip {cspec.grad_clip}); eval with ACT halting "
             f"(mean {halting:.2f} supervision steps). Plain transformer: {len(plain.blocks)} layers, "
             f"TRMTitansMAG's init (N(0, 0.02) weights), {plain_opt}. Training FLOPs = steps × FLOP/step "
             f"of forward + backward (torch.utils.flop_counter, optimizer excluded): TRMTitansMAG "
             f"{f_trm / 1e9:.1f}, plain {f_plain / 1e9:.1f} GFLOP/step",
             f"- last-10-step mean training loss: TRMTitansMAG {last10(trm_losses):.3f}; plain "
             f"{checkpoints[eq_compute][2]:.3f} (equal compute), {checkpoints[args.trm_steps][2]:.3f} (equal "
             f"steps); unigram NLL of the held-out targets (add-one, counts of the training tokens): "
             f"{unigram:.3f}", "",
             "| model | params | training steps | tokens | training GFLOP | s | held-out NLL | gain vs unigram |",
             "|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| TRMTitansMAG | {n_trm:,} | {args.trm_steps:,} | {args.trm_steps * tokens:,} | "
             f"{args.trm_steps * f_trm / 1e9:,.0f} | {trm_s:.0f} | {trm_nll:.3f} | {unigram - trm_nll:.3f} |"]
    for label, steps in (("equal compute", eq_compute), ("equal steps", args.trm_steps)):
        nll, s, _ = checkpoints[steps]
        lines.append(f"| plain transformer ({label}) | {n_plain:,} | {steps:,} | {steps * tokens:,} | "
                     f"{steps * f_plain / 1e9:,.0f} | {s:.0f} | {nll:.3f} | {unigram - nll:.3f} |")
    section = "\n".join(lines + [""])
    emit(section, args.out)


if __name__ == "__main__":
    main()
