"""The BitNet phase as a job (Phase 4): the Quiet-STaR model in, a 1.58-bit packed model out.

Inputs: the quietstar phase's "model" (model, tokenizer with the thinking tokens, mixing head), the
reasoning-data phase's "reasoning_data" and the datasets phase's "datasets" (GSM8K/ARC/PIQA test splits for
the benchmark suite).

Data (deterministic): the reasoning data in the baking format (`{prompt}\n{reasoning}\nAnswer: …<eos>`), one
example per row from position 0, right-padded (example_batches; padding never a target): the val examples'
first 4·EVAL_BATCHES (in order, batches of 4) are the likelihood metric's held-out text; the train examples
together with the Phase-3 model's own greedy continuation of each distinct training prompt that holds its
format (teacher_rows: what greedy decoding of that model writes, so distillation covers the path the student
will decode along)
(shuffled with the profile's seed, batches of 8) are the QAT set, cycled for the λ warm-up, and its first
⌈calibration_samples / 8⌉ batches the calibration and recovery set. Why this text and not the general
validation split: it is what the Phase-3 model was made for, and on general text a small baked model may
have no gain over uniform at all (measured on tiny: held-out NLL above log V, so no drop could be defined).

The likelihood metric: NLL = mean next-token NLL of the held-out examples' tokens (eval mode, ACT halting as at
inference); its gain = log V − NLL (over the uniform predictor). Accuracy drop = 1 − gain_q / gain_fp (the
share of the full-precision model's gain lost), defined only when gain_fp ≥ GAIN_FLOOR nats — below that
the model knows too little for a drop to mean anything, nll_gain_retained is not reported and its gate fails.

Stages (the checklist's, quantization-aware):
1. calibrate_quantization: every BitLinear's γ, ternary sparsity and relative weight error, and the mean
   per-token absmax of its input on the calibration set (reported, W&B table).
2. Layer-by-layer staging (quantize_layer): block by block, λ rises 0 → 1 over that block's share of
   `lambda_warmup_steps` while the whole model trains (AdamW at recovery_lr, straight-through estimator) to
   match the Phase-3 model's next-token distributions (distillation_loss: KL to the frozen input model);
   then its cost: held-out NLL at λ = 1 minus NLL of the same weights at λ = 0 (the warm-up also trains, so
   the NLL before the stage would mix training into it), as a share of the input model's gain; a block that
   costs more than max_layer_drop is reverted (weights and λ back as before the stage: full precision).
3. Recovery (fine_tune_compressed): when the drop is > 5%, `recovery_epochs` passes over the recovery set
   (the same distillation loss).
4. When the drop is still > 10%: start again from the Phase-3 model with get_conservative_compression_config.
5. Freeze (ternary codes → packed; reverted blocks become plain Linear again), embeddings and the tied head
   per row to `embedding_bits`, the memory's initial fast weights to `memory_init_bits`; final NLL on the
   frozen integer path; save, reload, logits checked equal.

Checkpoints (services.bitnet.core.checkpoint): after calibration, after each block's stage (its revert decision
made) and after each recovery epoch — weights, optimizer and RNG state, everything measured so far. A job
resubmitted with the same request_id continues after the latest one, reports the restored stages again, and
ends with the uninterrupted job's metrics and artifact bytes (tests/bitnet/test_bitnet_resume.py): a killed
worker loses at most the stage it was in. Freezing, packing and the benchmarks (step 5: no training, but with
the default profile's full GSM8K split the longest) are the last stage and run again after a restart.

Reported (gate metrics first):
  bitnet/compression_ratio         whole artifact: fp32 bytes of the input model / bytes of packed.safetensors
  bitnet/nll_gain_retained         gain_q / gain_fp (absent when gain_fp < GAIN_FLOOR)
  bitnet/ternary_fraction          share of the quantizable weights that ended ternary
  bitnet/bytes_per_token_reduction weight bytes a decode step reads, fp32 / packed (every linear weight and the
                                   head once, one embedding row)
  bitnet/bitlinear_compression_ratio, bitnet/accuracy_drop, bitnet/sparsity, bitnet/model_size_mb,
  bitnet/nll_fp, bitnet/nll_compressed, bitnet/quantization_nll_cost (NLL at the final λ minus the same
  latent weights in full precision: negative when QAT fitted them to their ternary form),
  bitnet/reverted_blocks, bitnet/recovery_ran, bitnet/conservative,
  bitnet/reload_logits_max_abs_diff (0 when the reloaded model equals the in-memory one),
  bitnet/thinking_tokens_present ("What is 2+2?" answered with [thinking] … [/endthinking], the checklist's
  post-Phase-4 test), bitnet/short_question_format_rate (the share of baking_eval.SHORT_QUESTIONS, 2+2 and
  eleven more short sums, whose greedy output passes that same test), bitnet/gsm8k_acc, bitnet/arc_acc,
  bitnet/piqa_acc (the benchmark suite; speed lives in bench/)
Progress series (the run report's): after calibration bitnet/weight_error/<layer> (each BitLinear's relative
ternarization error); after each block's stage (step = block index + 1) bitnet/block, /block_nll (λ = 1),
/block_nll_fp (the same weights at λ = 0), /block_nll_cost (their difference, nats), /block_cost (that as a
share of the input model's gain, when defined) and /block_reverted.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from services.bitnet.core import checkpoint
from services.bitnet.core.packed import PACKED, load_packed, save_packed
from services.bitnet.core.quant import (
    QUANTIZABLE, BitLinear, bitlinear_modules, convert_to_bitlinear, get_compression_config,
    get_conservative_compression_config, measure_sparsity, memory_init_parameters, quantize_memory_inits,
    quantize_rows, set_lambda, ternary_codes, weight_scale,
)
from services.quietstar.core.artifact import load_quietstar
from shared.data.prepared import load_split, verify_prepared
from shared.errors import FailedPreconditionError, InvalidSpecError
from shared.model.modeling import IGNORE_INDEX
from shared.runtime import JobResult
from shared.telemetry.wandb_run import Telemetry
from shared.utils import get_model_size

log = logging.getLogger(__name__)
WANDB_PROJECT = "agent-forge-v2"
EVAL_BATCHES = 4
TRAIN_BATCH = 8
GAIN_FLOOR = 0.1          # nats over the uniform predictor
RECOVERY_ABOVE = 0.05
CONSERVATIVE_ABOVE = 0.10
DEFAULT_EVALUATION = {"gsm8k_limit": 20, "multiple_choice_limit": 20, "max_new_tokens": 32}
M = "bitnet/"


# -- data and the likelihood metric -------------------------------------------------------------------------

def load_data(ctx, work: Path, tokenizer, seq_len: int, spec, teacher=None):
    """(held-out batches, QAT batches, recovery batches, benchmark test splits); see the module docstring.
    With `teacher` (the Phase-3 model) the QAT set also holds its own greedy continuations (teacher_rows)."""
    from services.quietstar.core.baking import split_by_field
    from services.reasoning_data.core.job import load_reasoning_data

    root = ctx.store.fetch(ctx.request.input("datasets"), work / "datasets")
    manifest = verify_prepared(root / "data")
    test = {n: load_split(root / "data", n, "test") for n in ("GSM8K", "ARC-Easy", "ARC-Challenge", "PIQA")
            if n in manifest["datasets"]}
    train, val = split_by_field(load_reasoning_data(ctx.store, ctx.request.input("reasoning_data"))["examples"])
    evaluation = example_batches(tokenizer, val, seq_len, batch_size=4, seed=None)[:EVAL_BATCHES]
    if not evaluation:
        raise FailedPreconditionError(f"no held-out reasoning example fits max_seq_len {seq_len}")
    extra = teacher_rows(teacher, tokenizer, train, seq_len) if teacher is not None else []
    n_recovery = max(1, math.ceil(spec.calibration_samples / TRAIN_BATCH))
    samples = max(n_recovery, min(spec.lambda_warmup_steps, 256)) * TRAIN_BATCH
    training = load_calibration_data(train, tokenizer, samples, seq_len=seq_len, seed=spec.seed, extra_rows=extra)
    return evaluation, training, training[:n_recovery], test


def teacher_rows(teacher, tokenizer, examples, seq_len: int, *, in_format_only: bool = True) -> list[list[int]]:
    """The Phase-3 model's own greedy continuation of each distinct training prompt (`{prompt}\\n`, its last
    seq_len // 2 tokens), as a row from position 0: prompt + continuation (+ eos when it stopped), in prompt
    order. Distillation on the data's text alone teaches the student the teacher's next-token distributions
    on text the teacher does not write; its own continuations are the path greedy decoding follows, so on them
    the student learns to leave the prompt the way the teacher does (sequence-level distillation, Kim & Rush
    2016). in_format_only: only continuations holding one `[thinking] … [/endthinking]` (parse_output's
    has_wrapper) — the path worth keeping; a teacher that never learned the format gives none (measured on
    the ci fixture, an untrained champion baked for a few epochs: distilling its other continuations made a
    block cost more than max_layer_drop, reverted, and the run failed its ternary gate)."""
    from services.quietstar.core.baking import encode_prompt
    from services.quietstar.core.baking_eval import parse_output, sample_outputs

    eos = tokenizer.eos_token_id
    prompts = sorted({tuple(encode_prompt(tokenizer, ex)[-(seq_len // 2):]) for ex in examples})
    if not prompts:
        return []
    room = seq_len - seq_len // 2
    outs = sample_outputs(teacher, tokenizer, prompts, max_new_tokens=room, temperature=0.0, batch_size=32)
    rows = []
    for prompt, out in zip(prompts, outs):
        if in_format_only and not parse_output(tokenizer.decode(out, skip_special_tokens=False)).has_wrapper:
            continue
        row = [*prompt, *out]
        if eos is not None and len(out) < room:
            row.append(int(eos))         # it stopped: eos was its next token
        rows.append(row)
    return rows


def example_batches(tokenizer, examples, seq_len: int, *, batch_size: int, seed: int | None,
                    extra_rows=()) -> list[dict]:
    """Reasoning-data examples in the baking format, each alone from position 0 as the model meets a prompt
    (baking.encode_example: the prompt cut from the left to fit `seq_len`, an example that cannot fit
    dropped), then `extra_rows` (token ids, e.g. teacher_rows), shuffled together with `seed` (None: in
    order), in batches right-padded to their longest row: {"input_ids", "labels"} with IGNORE_INDEX on the
    padding. Not packed: measured on tiny, the Phase-3 model's NLL on rows packed from several examples was
    7.8 nats (uniform: 8.3), text it never saw, so training or measuring on them says little about the
    model's own format."""
    from services.quietstar.core.baking import encode_example

    rows = [e.input_ids for e in (encode_example(tokenizer, ex, seq_len) for ex in examples) if e is not None]
    rows += [list(r) for r in extra_rows if r]
    if seed is not None:
        random.Random(seed).shuffle(rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width), int(pad), dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        for i, row in enumerate(chunk):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            labels[i, :len(row)] = ids[i, :len(row)]
        batches.append({"input_ids": ids, "labels": labels})
    return batches


def load_calibration_data(examples, tokenizer, samples: int, *, seq_len: int, seed: int,
                          extra_rows=()) -> list[dict]:
    """The checklist's load_calibration_data: up to `samples` reasoning-data examples in the baking format
    (and `extra_rows`), shuffled with `seed` (example_batches), in batches of TRAIN_BATCH (at least one
    batch; fewer when the examples run out)."""
    batches = example_batches(tokenizer, examples, seq_len, batch_size=TRAIN_BATCH, seed=seed, extra_rows=extra_rows)
    if not batches:
        raise FailedPreconditionError(f"no reasoning example fits max_seq_len {seq_len}")
    n = max(1, min(samples, sum(len(b["input_ids"]) for b in batches)) // TRAIN_BATCH)
    return batches[:n]


@torch.no_grad()
def heldout_nll(model, batches) -> float:
    was = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for b in batches:
            ids = b["input_ids"]
            target = b.get("labels", ids)[:, 1:]
            logits = model(ids).logits[:, :-1].float()
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                           ignore_index=IGNORE_INDEX, reduction="sum"))
            count += int((target != IGNORE_INDEX).sum())
    finally:
        model.train(was)
    return total / count


def gain(nll: float, vocab: int) -> float:
    return math.log(vocab) - nll


def evaluate_accuracy(model, batches, vocab: int) -> float:
    """The checklist's evaluate_accuracy, on a likelihood metric (DESIGN.md §7: never a ratio to a near-zero
    accuracy): the held-out NLL gain over the uniform predictor, log V − NLL, in nats."""
    return gain(heldout_nll(model, batches), vocab)


@torch.no_grad()
def measure_speedup(reference, compressed, input_ids, *, new_tokens: int = 16, repeats: int = 3) -> float:
    """The checklist's measure_speedup: tokens/s of greedy decoding, compressed / reference (best of
    `repeats`). A wall-clock figure for benches and reports — never a gate (DESIGN.md §7)."""
    import time

    def rate(model) -> float:
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            ids = input_ids
            for _ in range(new_tokens):
                ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
            best = min(best, time.perf_counter() - t)
        return new_tokens * input_ids.shape[0] / best

    was = reference.training, compressed.training
    reference.eval()
    compressed.eval()
    try:
        return rate(compressed) / rate(reference)
    finally:
        reference.train(was[0])
        compressed.train(was[1])


# -- the checklist's steps -----------------------------------------------------------------------------------

@torch.no_grad()
def calibrate_quantization(model, batches) -> dict[str, dict[str, float]]:
    """Per BitLinear: γ (mean |W|), the share of its weights RoundClip sends to 0, the relative weight error
    ‖W − γ·Q(W)‖ / ‖W‖, and the mean per-token absmax of its normalised input over `batches` (the activation
    scale the int8 quantizer will see), measured with forward hooks in eval mode."""
    layers = bitlinear_modules(model)
    act: dict[str, list[float]] = {n: [] for n in layers}
    hooks = []
    for name, m in layers.items():
        def hook(mod, inputs, _out, name=name):
            xn, _ = mod._normed(inputs[0].detach())
            act[name].append(float(xn.abs().amax(-1).mean()))
        hooks.append(m.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        for b in batches:
            model(b["input_ids"])
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    out = {}
    for name, m in layers.items():
        w = m.weight.detach().float()
        g = weight_scale(w)
        q = ternary_codes(w, g)
        out[name] = {"weight_scale": float(g), "zero_fraction": float((q == 0).float().mean()),
                     "weight_error": float((w - q.float() * g).norm() / w.norm().clamp(min=1e-12)),
                     "act_absmax": sum(act[name]) / max(1, len(act[name]))}
    return out


def blocks_of(model) -> list[dict[str, BitLinear]]:
    """The BitLinear layers of each block (model.net.layers[i]), in order."""
    layers = bitlinear_modules(model)
    return [{n: m for n, m in layers.items() if n.startswith(f"net.layers.{i}.")}
            for i in range(len(model.net.layers))]


def distillation_loss(out, teacher, ids, labels) -> torch.Tensor:
    """KL(teacher ‖ student) of the next-token distributions, averaged over every position, plus the student's
    halting loss: the student learns to predict what the full-precision model predicts, not the text — so
    QAT keeps what Phase 3 taught (measured on tiny, 2026-11-26: trained on the text itself, the QAT model
    dropped `[/endthinking]` and answered "What is 2+2?" with "[thinking]nswer: 100", while the Phase-3
    model it came from wrote "[thinking] <step> … [/endthinking]"). The teacher runs as at inference (eval
    mode, ACT halting, no gradient). Only positions whose next token is a real one (labels not IGNORE_INDEX)."""
    with torch.no_grad():
        target = teacher(ids).logits.float()
    valid = labels[:, 1:] != IGNORE_INDEX
    kl = F.kl_div(F.log_softmax(out.logits[:, :-1][valid].float(), dim=-1),
                  F.log_softmax(target[:, :-1][valid], dim=-1), log_target=True, reduction="batchmean")
    return kl + out.halt_loss


def train_steps(model, batches, steps: int, optimizer, *, on_step=None, lam_of=None, teacher=None) -> list[float]:
    """`steps` steps over `batches` (cycled): the model's own train-mode loss (shifted LM + halting), or with
    `teacher` (a frozen full-precision model in eval mode) distillation_loss; lam_of(step) sets λ before each
    step when given."""
    model.train()
    losses = []
    for i in range(steps):
        if lam_of is not None:
            lam_of(i + 1)
        ids = batches[i % len(batches)]["input_ids"]
        labels = batches[i % len(batches)].get("labels", ids)
        out = model(ids, labels=labels)
        loss = out.loss if teacher is None else distillation_loss(out, teacher, ids, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(losses[-1])
    model.eval()
    return losses


def quantize_layer(model, block: dict[str, BitLinear], batches, steps: int, optimizer, **kw) -> list[float]:
    """The checklist's quantize_layer: λ of one block's BitLinears from 0 to 1 over `steps` training steps
    (λ = step / steps), the whole model training with the straight-through estimator; λ = 1 after it."""
    if steps < 1:
        set_lambda(block, 1.0)
        return []
    return train_steps(model, batches, steps, optimizer, lam_of=lambda s: set_lambda(block, s / steps), **kw)


def fine_tune_compressed(model, batches, *, epochs: int, lr: float, on_step=None, optimizer=None,
                         start_epoch: int = 0, on_epoch=None, teacher=None) -> list[float]:
    """The checklist's fine_tune_compressed: `epochs` passes over `batches` at λ = 1 (AdamW at `lr`).
    on_epoch(epoch, optimizer) runs after each pass (epoch from 1: the job's checkpoint); `optimizer` (its
    state restored) and `start_epoch` (passes already done) continue an interrupted run exactly."""
    opt = optimizer if optimizer is not None else make_optimizer(model, lr)
    losses = []
    for epoch in range(start_epoch, epochs):
        losses += train_steps(model, batches, len(batches), opt, on_step=on_step, teacher=teacher)
        if on_epoch is not None:
            on_epoch(epoch + 1, opt)
    return losses


def make_optimizer(model, lr: float) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)


# -- sizes ---------------------------------------------------------------------------------------------------

def fp32_bytes(model) -> int:
    return 4 * get_model_size(model)["params"]


def bitlinear_ratio(model) -> float:
    layers = bitlinear_modules(model)
    fp = sum(4 * m.out_features * m.in_features for m in layers.values())
    packed = sum(m.packed.numel() + 4 for m in layers.values())
    return fp / packed


def bytes_per_token(model, *, packed: bool, embedding_bits: int, memory_init_bits: int = 32) -> float:
    """Weight bytes one decode step reads: every linear weight (ternary packed or fp32), the tied head once at
    its storage width, one embedding row, the memory's initial fast weights at their storage width, the
    norms/biases/gains at fp32."""
    layers = bitlinear_modules(model) if packed else {}
    inits = memory_init_parameters(model)
    total = 0.0
    for name, p in model.named_parameters():
        if name in inits:
            total += p.numel() * ((memory_init_bits / 8) if packed else 4)
        elif name.startswith("embed."):
            v, d = p.shape
            width = (embedding_bits / 8) if packed else 4
            total += v * d * width + d * width            # the head reads all rows; the lookup reads one
        elif any(name == f"{n}.weight" for n in layers):
            continue
        else:
            total += 4 * p.numel()
    for m in layers.values():
        total += m.packed.numel() + 4
    return total


# -- the runner ---------------------------------------------------------------------------------------------

class BitNetRunner:
    def validate(self, spec) -> list[str]:
        return []

    def run(self, ctx):
        spec = ctx.spec
        evaluation = {**DEFAULT_EVALUATION, **(ctx.request.evaluation or {})}
        torch.manual_seed(spec.seed)
        with tempfile.TemporaryDirectory(prefix="agentforge-bitnet-") as tmp, \
                Telemetry().start(WANDB_PROJECT, f"phase4-bitnet-{ctx.request.request_id}",
                                  spec.model_dump(mode="json"), group=ctx.request.run_id or None,
                                  job_type="bitnet", dir=os.environ.get("WANDB_DIR")) as tel:
            work = Path(tmp)
            restored = checkpoint.read(ctx)       # refused before any work when foreign, corrupt or of other inputs
            ctx.progress("loading the Phase-3 model", fraction=0.01)
            src_ref = ctx.request.input("model")
            src = ctx.store.fetch(src_ref, work / "phase3")
            phase3 = load_quietstar(src)
            from shared.model import TRMTitansMAG

            if not isinstance(phase3.model, TRMTitansMAG):
                raise FailedPreconditionError(f"Phase 4 compresses TRMTitansMAG models, got "
                                              f"{type(phase3.model).__name__}")
            original = phase3.model.float().eval()
            tokenizer = phase3.tokenizer
            vocab = original.get_output_embeddings().weight.shape[0]
            seq_len = int(original.config.max_seq_len)
            size = get_model_size(original)
            category = size["size_category"] if spec.size_category == "auto" else spec.size_category
            print(f"Input: {size['params']:,} params ({size['size_mb']:.1f} MB)\nCategory: {category}")
            evaluation_batches, training, recovery, test = load_data(ctx, work, tokenizer, seq_len, spec,
                                                                       teacher=original)
            nll_fp = heldout_nll(original, evaluation_batches)
            gain_fp = gain(nll_fp, vocab)
            ctx.progress("compressing", fraction=0.05, metrics={M + "nll_fp": nll_fp})

            # attempt 0 with the category's config; attempt 1 (the conservative restart) when its drop is > 10%.
            # A restored checkpoint names its attempt, and compress continues after its stage.
            attempt = restored.attempt if restored is not None else 0
            config = (get_conservative_compression_config if attempt else get_compression_config)(category)
            model, report = self.compress(ctx, tel, original, config, training, recovery, evaluation_batches,
                                          spec, gain_fp, vocab, attempt=attempt, restored=restored)
            if report["drop"] is None:
                log.warning("the input model's held-out NLL %.3f gives %.3f nats over uniform (< %.2f): the drop "
                            "is undefined, so no block is reverted and no recovery runs", nll_fp, gain_fp, GAIN_FLOOR)
            elif attempt == 0 and report["drop"] > CONSERVATIVE_ABOVE:
                print(f"❌ Accuracy drop too high: {report['drop']:.1%} > 10%: starting again with the "
                      f"conservative config")
                config = get_conservative_compression_config(category)
                model, report = self.compress(ctx, tel, original, config, training, recovery, evaluation_batches,
                                              spec, gain_fp, vocab, attempt=1)
            ctx.progress("freezing and packing", fraction=0.8)
            metrics = self.finish(ctx, tel, work, src, original, model, report, config, spec, evaluation_batches,
                                  test, tokenizer, gain_fp, nll_fp, vocab, evaluation)
            ctx.progress("publishing", fraction=0.97, metrics=metrics)
            with ctx.open_artifact("model", kind="model", tokenizer="tokenizer", parents=[src_ref],
                                   config={**model.config.to_dict(), "bitnet": report["config"]}) as w:
                for f in sorted((work / "packed").iterdir()):
                    w.add_dir(f.name, f) if f.is_dir() else w.add_file(f.name, f)
                w.set_metrics({k.removeprefix(M): v for k, v in metrics.items()
                               if k in (M + "compression_ratio", M + "nll_compressed", M + "model_size_mb")})
        return JobResult(artifacts=(w.ref,), metrics=metrics)

    def compress(self, ctx, tel, original, config, training, recovery, evaluation, spec, gain_fp, vocab, *,
                 attempt: int = 0, restored: checkpoint.Restored | None = None):
        """One compression attempt (calibration, layer-by-layer staging, recovery), checkpointed after every
        stage; with `restored` (a checkpoint of this attempt) it continues after that checkpoint's stage."""
        model = copy.deepcopy(original)
        converted = convert_to_bitlinear(model, exclude=tuple(config["preserve_layers"]))
        opt = make_optimizer(model, spec.recovery_lr)
        blocks = [b for b in blocks_of(model) if b]
        per_block = spec.lambda_warmup_steps // max(1, len(blocks))
        recovery_opt = None

        def state(stage: str, **extra) -> dict:
            return {"attempt": attempt, "config": config, "converted": converted, "stage": stage,
                    "calibration": calibration, "base_nll": base_nll, "stages": stages, "reverted": reverted,
                    **extra}

        if restored is None:
            calibration = calibrate_quantization(model, recovery)
            base_nll = heldout_nll(model, evaluation)
            stages, reverted = [], []
            checkpoint.save(ctx, checkpoint.calibrated_step(attempt), model, opt, state("calibrated"))
            self.report_calibration(ctx, tel, calibration)
        else:
            saved = restored.state
            made_for = [saved["attempt"], saved["config"], saved["converted"]]
            if made_for != checkpoint.as_json([attempt, config, converted]) or len(saved["stages"]) > len(blocks):
                raise FailedPreconditionError(
                    f"checkpoint step {restored.step} was written for another compression (attempt "
                    f"{saved['attempt']}, {len(saved['converted'])} converted layers, {len(saved['stages'])} blocks "
                    f"staged); this job's attempt {attempt} converts {len(converted)} layers in {len(blocks)} blocks")
            calibration, base_nll = saved["calibration"], saved["base_nll"]
            stages, reverted = list(saved["stages"]), list(saved["reverted"])
            if restored.stage == "recovery":
                recovery_opt = make_optimizer(model, spec.recovery_lr)
            restored.load_into(model, recovery_opt if recovery_opt is not None else opt)
            ctx.resumed_from_step = restored.step
            log.info("resuming compression attempt %d after its %s stage (checkpoint step %d)", attempt,
                     restored.stage, restored.step)
            # the stages done before the restart report again (same stage, step and values), so the job's
            # metrics and progress series are those of an uninterrupted job; the message says where they came from
            note = f"restored from checkpoint step {restored.step}"
            self.report_calibration(ctx, tel, calibration, message=note)
            for record in stages:
                self.report_block(ctx, tel, record, len(blocks), message=note)

        for i in range(len(stages), len(blocks)):
            block = blocks[i]
            saved_model = copy.deepcopy(model.state_dict())
            saved_opt = copy.deepcopy(opt.state_dict())
            quantize_layer(model, block, training, per_block, opt, teacher=original,
                           on_step=lambda loss: tel.log({"bitnet/qat_loss": loss}))
            nll = heldout_nll(model, evaluation)
            # a block's cost: what quantizing it costs on the weights it has now — NLL at λ = 1 minus NLL with
            # the same weights at λ = 0 — as a share of the input model's gain (the warm-up also trains, so
            # comparing with the NLL before the stage would mix training into it); undefined (None: never
            # reverted) when the input model has no gain worth the name
            set_lambda(block, 0.0)
            nll_latent = heldout_nll(model, evaluation)
            set_lambda(block, 1.0)
            cost = (nll - nll_latent) / gain_fp if gain_fp >= GAIN_FLOOR else None
            record = {"block": i, "nll_before": base_nll, "nll_after": nll, "nll_same_weights_fp": nll_latent,
                      "cost": cost, "reverted": False}
            if cost is not None and cost > spec.max_layer_drop:
                print(f"⚠️ Block {i} cost {cost:.1%} of the NLL gain, reverting it")
                model.load_state_dict(saved_model)
                opt.load_state_dict(saved_opt)
                set_lambda(block, 0.0)
                record["reverted"] = True
                reverted.append(i)
            else:
                print(f"✅ Block {i}: " + (f"{cost:.1%} of the gain" if cost is not None else
                                           f"NLL {nll_latent:.3f} → {nll:.3f} (no gain to measure a cost against)"))
                base_nll = nll
            stages.append(record)
            checkpoint.save(ctx, checkpoint.block_step(attempt, i), model, opt, state("block"))
            self.report_block(ctx, tel, record, len(blocks))

        if restored is not None and restored.stage == "recovery":
            drop, start = restored.state["drop_before_recovery"], int(restored.state["recovery_epoch"])
        else:
            drop, start = self.drop(model, evaluation, gain_fp, vocab), 0
        recovery_ran = False
        if drop is not None and drop > RECOVERY_ABOVE and spec.recovery_epochs > 0:
            drop_before = drop

            def on_epoch(epoch: int, optimizer) -> None:
                checkpoint.save(ctx, checkpoint.recovery_step(attempt, len(blocks), epoch), model, optimizer,
                                state("recovery", drop_before_recovery=drop_before, recovery_epoch=epoch))
                ctx.progress(f"recovery epoch {epoch}", step=epoch, total_steps=spec.recovery_epochs,
                             fraction=0.6 + 0.15 * epoch / spec.recovery_epochs)

            if start == 0:
                print(f"Fine-tuning to recover from {drop:.1%} drop")
            fine_tune_compressed(model, recovery, epochs=spec.recovery_epochs, lr=spec.recovery_lr,
                                 on_step=lambda loss: tel.log({"bitnet/recovery_loss": loss}),
                                 optimizer=recovery_opt, start_epoch=start, on_epoch=on_epoch, teacher=original)
            drop = self.drop(model, evaluation, gain_fp, vocab)
            print(f"After fine-tuning: {drop:.1%} drop")
            recovery_ran = True
        # what quantization itself costs on the final weights: every converted layer at its λ vs all at 0
        layers = bitlinear_modules(model)
        lams = {n: float(m.lam) for n, m in layers.items()}
        nll_q = heldout_nll(model, evaluation)
        set_lambda(layers, 0.0)
        nll_latent = heldout_nll(model, evaluation)
        for n, m in layers.items():
            m.lam.fill_(lams[n])
        return model, {"converted": converted, "calibration": calibration, "stages": stages, "reverted": reverted,
                       "drop": drop, "recovery_ran": recovery_ran, "config": config,
                       "quantization_nll_cost": nll_q - nll_latent}

    @staticmethod
    def drop(model, evaluation, gain_fp: float, vocab: int) -> float | None:
        """The share of the input model's NLL gain lost; None when that gain is under GAIN_FLOOR."""
        return 1 - gain(heldout_nll(model, evaluation), vocab) / gain_fp if gain_fp >= GAIN_FLOOR else None

    @staticmethod
    def report_calibration(ctx, tel, calibration, *, message: str = "") -> None:
        ctx.progress("calibrated", fraction=0.08, message=message,
                     metrics={f"{M}weight_error/{n}": c["weight_error"] for n, c in calibration.items()})
        tel.table("bitnet/calibration", ["layer", "weight_scale", "zero_fraction", "weight_error", "act_absmax"],
                  [[n, c["weight_scale"], c["zero_fraction"], c["weight_error"], c["act_absmax"]]
                   for n, c in calibration.items()])

    @staticmethod
    def report_block(ctx, tel, record, n_blocks: int, *, message: str = "") -> None:
        i, nll, nll_latent, cost = record["block"], record["nll_after"], record["nll_same_weights_fp"], record["cost"]
        tel.log({"bitnet/stage_block": i, "bitnet/stage_nll": nll, "bitnet/stage_reverted": float(record["reverted"]),
                 **({"bitnet/stage_cost": cost} if cost is not None else {})})
        ctx.progress(f"block {i} quantized" + (" (reverted)" if record["reverted"] else ""), message=message,
                     step=i + 1, total_steps=n_blocks, fraction=0.1 + 0.5 * (i + 1) / n_blocks,
                     metrics={M + "block": float(i), M + "block_nll": nll, M + "block_nll_fp": nll_latent,
                              M + "block_nll_cost": nll - nll_latent, M + "block_reverted": float(record["reverted"]),
                              **({M + "block_cost": cost} if cost is not None else {})})

    def finish(self, ctx, tel, work, src, original, model, report, config, spec, evaluation, test, tokenizer,
               gain_fp, nll_fp, vocab, ev) -> dict[str, float]:
        # reverted blocks (λ = 0) become plain Linear again; the rest freeze to ternary codes
        for name, m in list(bitlinear_modules(model).items()):
            if float(m.lam) < 1.0:
                lin = torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
                with torch.no_grad():
                    lin.weight.copy_(m.weight * m.gain)      # the gain folded in; λ = 0 is exactly this Linear
                    if m.bias is not None:
                        lin.bias.copy_(m.bias)
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, lin)
            else:
                m.freeze(spec.pack_format)
        ternary = sum(m.out_features * m.in_features for m in bitlinear_modules(model).values())
        quantizable = sum(p.numel() for n, p in original.named_parameters()
                          if n.endswith(".weight") and any(n[:-len(".weight")].endswith("." + s) for s in QUANTIZABLE))
        # the conservative config keeps embeddings and memory inits at 8 bits at least
        floor = 8 if config.get("conservative") else 0
        bits = max(int(spec.embedding_bits), floor)
        init_bits = max(int(spec.memory_init_bits), floor)
        embedding = {"bits": bits}
        if bits != 16:
            codes, scale = quantize_rows(model.embed.weight, bits)
            with torch.no_grad():
                model.embed.weight.copy_(codes.float() * scale[:, None])
            embedding.update(codes=codes, scale=scale)
        memory_init = quantize_memory_inits(model, init_bits)
        model.eval()
        nll_q = heldout_nll(model, evaluation)
        if not bitlinear_modules(model):
            log.warning("every block was reverted to full precision: nothing is ternary")
        out_dir = save_packed(model, work / "packed", embedding=embedding, pack_format=spec.pack_format,
                              memory_init_bits=init_bits, memory_init=memory_init,
                              carry_from=src, extra={"size_category": config["size_category"],
                                                     "conservative": bool(config.get("conservative", False))})
        reloaded = load_packed(out_dir)
        probe = evaluation[0]["input_ids"][:2]
        with torch.no_grad():
            diff = float((model(probe).logits - reloaded(probe).logits).abs().max())
        if diff != 0.0:
            raise FailedPreconditionError(f"the reloaded packed model's logits differ from the in-memory "
                                          f"model's by {diff:g}")
        packed_bytes = (out_dir / PACKED).stat().st_size
        gain_q = gain(nll_q, vocab)
        metrics = {
            M + "compression_ratio": fp32_bytes(original) / packed_bytes,
            M + "ternary_fraction": ternary / max(1, quantizable),
            M + "bytes_per_token_reduction": bytes_per_token(original, packed=False, embedding_bits=bits)
            / bytes_per_token(model, packed=True, embedding_bits=bits, memory_init_bits=init_bits),
            M + "model_size_mb": packed_bytes / 2 ** 20,
            M + "nll_fp": nll_fp,
            M + "nll_compressed": nll_q,
            M + "reverted_blocks": float(len(report["reverted"])),
            M + "recovery_ran": float(report["recovery_ran"]),
            M + "conservative": float(bool(config.get("conservative", False))),
            M + "reload_logits_max_abs_diff": diff,
            # NLL at the final λ minus the same latent weights in full precision. QAT also trains, so
            # nll_compressed − nll_fp mixes training into the drop; this does not — it is negative when
            # QAT fitted the latent weights to their ternary form
            M + "quantization_nll_cost": report["quantization_nll_cost"],
        }
        if bitlinear_modules(model):      # undefined when every block was reverted: absent, not 0
            metrics[M + "bitlinear_compression_ratio"] = bitlinear_ratio(model)
            metrics[M + "sparsity"] = measure_sparsity(model)
        if gain_fp >= GAIN_FLOOR:
            metrics[M + "nll_gain_retained"] = gain_q / gain_fp
            metrics[M + "accuracy_drop"] = 1 - gain_q / gain_fp
        else:
            log.warning("the input model's NLL gain over uniform is %.3f nats (< %.2f): the accuracy drop is not "
                        "defined and nll_gain_retained is not reported", gain_fp, GAIN_FLOOR)
        ctx.progress("benchmarks", fraction=0.9)
        metrics.update(self.benchmarks(reloaded, tokenizer, test, ev))
        tel.summary(metrics)
        return metrics

    def benchmarks(self, model, tokenizer, test, ev) -> dict[str, float]:
        from services.quietstar.core.baking_eval import SHORT_QUESTIONS, checklist_passed, short_question_outputs
        from services.quietstar.core.job import gsm8k_plain
        from shared.evaluation import evaluate_arc, evaluate_piqa
        from shared.evaluation.subset import first_n

        out = {}
        texts = short_question_outputs(model, tokenizer, SHORT_QUESTIONS)   # the checklist's "What is 2+2?" first
        print(f"Input: {SHORT_QUESTIONS[0]}\nOutput: {texts[0]}")
        out[M + "thinking_tokens_present"] = float(checklist_passed(texts[0]))
        out[M + "short_question_format_rate"] = sum(map(checklist_passed, texts)) / len(texts)
        if test.get("GSM8K"):
            gsm = first_n(test["GSM8K"], ev["gsm8k_limit"] or None)
            # the reasoning format needs room for the wrapper: half the context (at least the profile's budget)
            budget = max(ev["max_new_tokens"], model.config.max_seq_len // 2)
            out[M + "gsm8k_acc"] = gsm8k_plain(model, tokenizer, gsm, budget)["exact_match"]
        arc = test.get("ARC-Easy", []) + test.get("ARC-Challenge", [])
        limit = ev["multiple_choice_limit"] or None
        for name, records, fn in (("arc_acc", arc, evaluate_arc), ("piqa_acc", test.get("PIQA", []), evaluate_piqa)):
            if not records:
                continue
            try:
                out[M + name] = fn(model, tokenizer, records, limit=limit)["accuracy"]
            except InvalidSpecError as exc:     # e.g. items longer than a small profile's context: not measured
                log.warning("benchmark %s not measured: %s", name, exc)
        return out
