"""The Quiet-STaR phase as a job (Phase 3b): the EvoMerge champion and the reasoning data in, a model that
writes `[thinking] … [/endthinking]` reasoning and thinks hidden thoughts before every token out.

Inputs: EvoMerge's "champion" (with its tokenizer), the reasoning-data phase's "reasoning_data", and the
datasets phase's "datasets" (GSM8K's test split, for the comparison with Phase 2).

Stages (each checkpointed, so a restarted job loses at most one checkpoint interval):
1. Phase 2's GSM8K exact match: the champion as Phase 2 published it, the standard harness
   (shared.evaluation.gsm8k: "Question: …\\nAnswer:", greedy, the profile's evaluation subset).
2. The 12 tokens (tokens.add_thinking_tokens; the parameter delta is printed and reported).
3. Baking (baking.bake: the profile's objective, epochs, optimizer, per-epoch validation on the held-out
   `val` items, the halve-LR + 3 epochs mitigation). Checkpoint after every epoch.
4. The baked model measured alone: GSM8K in the reasoning format (below), thinking-token usage.
   Checkpoint (the baked weights are the RL's KL reference and travel in every later checkpoint).
5. Quiet-STaR RL (rl.train_thoughts): thoughts at every position of packed reasoning spans (the train
   examples, each `{prompt}\\n{reasoning}\\nAnswer: {answer}<eos>`, shuffled with the seed, concatenated and
   cut into rows of `rl_seq_len` tokens), mixing head, REINFORCE + mixed NLL + KL to the baked model, an
   anti-theater check every `anti_theater_every` steps on val spans (rollback, KL ×2, threshold ×1.5 on
   failure). Checkpoint after every check.
6. Final measurement of the model that is published (anti-theater measured again on it, so the verdict is
   the published model's own), then publish `model` (artifact.save_quietstar's layout).

GSM8K in the reasoning format: the prompt is the question followed by "\\n" (how baking trained), greedy;
the answer is the number on the `Answer:` line (parse_output), else the last number of the output (the
harness's flexible match), compared with the gold as numbers. The final model is decoded the Quiet-STaR way
(generate.generate_with_thoughts: a hidden thought before every token, the mixed prediction); the baked
model and the final model "without thoughts" by plain greedy decoding.

Reported (gate metrics first):
  quietstar/format_adherence, quietstar/answer_accuracy   the final model on held-out items (baking_eval)
  quietstar/thinking_token_usage   share of greedy outputs after held-out prompts holding one
                                   `[thinking] … [/endthinking]` (no forced prefix)
  quietstar/short_question_format_rate   share of baking_eval.SHORT_QUESTIONS ("What is 2+2?" and more short
                                   sums) whose greedy output without thoughts passes the checklist's post-Phase-4
                                   test (bitnet/short_question_format_rate is the same on the compressed model)
  quietstar/coherence              mean score_coherence of the final model's thoughts on val spans
  quietstar/anti_theater_passed (+ _divergence, _ablation, _correlation) of the published model
  quietstar/gsm8k_acc              the final model with hidden thoughts, reasoning format
  quietstar/gsm8k_acc_phase2       the champion, standard harness;  quietstar/gsm8k_acc_gain = the difference
  quietstar/gsm8k_acc_baked        the baked model alone;  quietstar/gsm8k_acc_gain_over_baking
  quietstar/gsm8k_acc_no_thoughts  the final model decoded without thoughts
  quietstar/nll_with_thoughts, quietstar/nll_without_thoughts   nats per token on val spans
  quietstar/baking_format_adherence, quietstar/baking_epochs, quietstar/baking_mitigated, quietstar/baking_converged,
  quietstar/baking_best_epoch (the epoch whose weights baking returned: its best format adherence)
  quietstar/rl_steps, quietstar/rl_rollbacks, quietstar/rl_kl_coefficient, quietstar/rl_reward_threshold,
  quietstar/parameter_delta
Progress series (the run report's): after every baking epoch (step = epoch) baking/loss and every validation
figure, overall and per strategy (baking/accuracy_<strategy>, baking/format_adherence_<strategy>, …); RL
figures (rl/reward, rl/coherence, rl/mixing_weight, rl/kl, rl/nll) at up to RL_SERIES_POINTS steps; at every
anti-theater check (step = RL step) anti_theater/divergence, /ablation, /correlation (when computable),
/passed, /kl_coefficient, /reward_threshold.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch

from services.quietstar.core.artifact import head_state, save_quietstar, thought_tokens
from services.quietstar.core.baking import BakingCheckpoint, bake, encode_example, encode_prompt, split_by_field
from services.quietstar.core.baking_eval import (
    FORMAT_ADHERENCE, SHORT_QUESTIONS, checklist_passed, evaluate_baking, parse_output, sample_outputs,
    short_question_outputs,
)
from services.quietstar.core.rl import MixingHead, RLCheckpoint, anti_theater_check, measure_theater, train_thoughts
from services.reasoning_data.core.job import load_reasoning_data
from shared.data.prepared import load_split, verify_prepared
from shared.data.tokenizer import check_same_tokenizer, load_tokenizer, tokenizer_fingerprint
from shared.errors import FailedPreconditionError
from shared.evaluation import evaluate_gsm8k
from shared.evaluation.gsm8k import extract_final_number
from shared.evaluation.subset import first_n
from shared.model import load_model
from shared.optim import MuonGrokfast
from shared.runtime import JobResult
from shared.storage.formats import optimizer_state_from_tensors, optimizer_state_to_tensors
from shared.telemetry.metric_names import ANTI_THEATER_ABLATION, ANTI_THEATER_CORRELATION, ANTI_THEATER_DIVERGENCE
from shared.telemetry.wandb_run import Telemetry

log = logging.getLogger(__name__)
WANDB_PROJECT = "agent-forge-v2"
BAKED_STEP = 100_000          # checkpoint numbers: baking epochs 1, 2, …; the baked model; RL step s at BAKED_STEP + s
GRAD_CLIP = 1.0
THEATER_ROWS = 4              # val spans the anti-theater measures use (divergence: prompts from the first 4)
DEFAULT_EVALUATION = {"gsm8k_limit": 20, "max_new_tokens": 32}
M = "quietstar/"
RL_SERIES_POINTS = 200        # RL progress events (with rl/* metrics) per job at most, about evenly spaced


# -- inputs ---------------------------------------------------------------------------------------------

def load_gsm8k_test(ctx, work: Path, tokenizer) -> list:
    """GSM8K's prepared test split from the datasets input, whose tokenizer must be the champion's."""
    root = ctx.store.fetch(ctx.request.input("datasets"), work / "datasets")
    manifest = verify_prepared(root / "data")
    recorded = root / "tokenizer_fingerprint.json"
    if recorded.is_file():
        check_same_tokenizer(json.loads(recorded.read_text())["fingerprint"], tokenizer_fingerprint(tokenizer),
                             what="the datasets' tokenizer and the champion's")
    if "GSM8K" not in manifest["datasets"]:
        raise FailedPreconditionError("the datasets input has no GSM8K: the comparison with Phase 2 needs it")
    return load_split(root / "data", "GSM8K", "test")


def pack_rows(tokenizer, examples, seq_len: int, *, seed: int | None) -> torch.Tensor:
    """Examples in the baking format (eos after each), shuffled with `seed` (None: in order), concatenated
    and cut into (N, seq_len) rows; the remainder is dropped."""
    encoded = [encode_example(tokenizer, ex, 10 ** 9).input_ids for ex in examples]
    if seed is not None:
        random.Random(seed).shuffle(encoded)
    stream = [t for ids in encoded for t in ids]
    n = len(stream) // seq_len
    if n < 1:
        raise FailedPreconditionError(f"{len(examples)} examples give {len(stream)} tokens: not one RL span of "
                                      f"rl_seq_len={seq_len}")
    return torch.tensor(stream[:n * seq_len], dtype=torch.long).reshape(n, seq_len)


# -- GSM8K in the reasoning format ------------------------------------------------------------------------

def reasoning_prompts(model, tokenizer, records, max_new_tokens: int) -> list[list[int]]:
    room = max(1, int(model.config.max_seq_len) - max_new_tokens)
    return [encode_prompt(tokenizer, {"prompt": r.prompt})[-room:] for r in records]


def score_gsm8k(tokenizer, records, outputs: list[list[int]]) -> dict[str, float]:
    """Exact match of the `Answer:` line's number (else the output's last number) against the gold."""
    correct = answered = 0
    for record, out in zip(records, outputs, strict=True):
        text = tokenizer.decode(out, skip_special_tokens=False)
        parsed = parse_output(text)
        predicted = extract_final_number(parsed.answer if parsed.answer is not None else text)
        answered += predicted is not None
        correct += predicted is not None and predicted == extract_final_number(record.answer)
    n = len(records)
    return {"exact_match": correct / n, "answered": answered / n, "n": float(n)}


def gsm8k_plain(model, tokenizer, records, max_new_tokens: int) -> dict[str, float]:
    outs = sample_outputs(model, tokenizer, reasoning_prompts(model, tokenizer, records, max_new_tokens),
                          max_new_tokens=max_new_tokens, temperature=0.0)
    return score_gsm8k(tokenizer, records, outs)


def gsm8k_with_thoughts(model, head, tokenizer, records, max_new_tokens: int, thought_length: int,
                        seed: int) -> dict[str, float]:
    from services.quietstar.core.generate import generate_with_thoughts

    gens = generate_with_thoughts(model, head, reasoning_prompts(model, tokenizer, records, max_new_tokens),
                                  max_new_tokens=max_new_tokens, thought_length=thought_length,
                                  tokens=thought_tokens(tokenizer), eos_id=tokenizer.eos_token_id, seed=seed)
    return score_gsm8k(tokenizer, records, [g.tokens for g in gens])


def thinking_usage(model, tokenizer, val, limit: int, max_new_tokens: int) -> float:
    """Share of greedy outputs after the distinct held-out prompts (the first `limit` by id) holding one
    `[thinking] … [/endthinking]` (baking_eval.parse_output's has_wrapper)."""
    prompts: dict[str, list[int]] = {}
    room = max(1, int(model.config.max_seq_len) - max_new_tokens)
    for ex in sorted(val, key=lambda e: str(e["id"])):
        prompts.setdefault(str(ex["prompt"]).strip(), encode_prompt(tokenizer, ex)[-room:])
    chosen = list(prompts.values())[:limit]
    outs = sample_outputs(model, tokenizer, chosen, max_new_tokens=max_new_tokens, temperature=0.0)
    return sum(parse_output(tokenizer.decode(o, skip_special_tokens=False)).has_wrapper for o in outs) / len(outs)


def short_question_rate(model, tokenizer) -> float:
    """Share of baking_eval.SHORT_QUESTIONS (the checklist's "What is 2+2?" and more short sums) whose greedy
    output, without thoughts, passes the checklist's post-Phase-4 test: what Phase 4 has to keep."""
    texts = short_question_outputs(model, tokenizer, SHORT_QUESTIONS)
    return sum(map(checklist_passed, texts)) / len(texts)


# -- state ----------------------------------------------------------------------------------------------

def model_tensors(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def load_model_tensors(model, tensors: dict[str, torch.Tensor], what: str) -> None:
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
        raise FailedPreconditionError(f"{what} does not fit this model (missing {missing[:3]}, "
                                      f"unexpected {unexpected[:3]})")


def make_rl_optimizer(model, cfg) -> MuonGrokfast:
    """MuonGrokfast's RL preset with the profile's `rl_optimizer` values; QK-clip on the model's attention."""
    fields = ("muon_lr", "adamw_lr", "weight_decay", "grokfast_alpha", "grokfast_lambda", "qk_clip_threshold",
              "kl_coefficient")
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    qk = model.qk_clip_modules() if hasattr(model, "qk_clip_modules") else None
    return MuonGrokfast.rl(params, qk_modules=qk, max_grad_norm=GRAD_CLIP, **{f: getattr(cfg, f) for f in fields})


def frozen_copy(model):
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def pick_device(requested: str) -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        raise FailedPreconditionError("the job asks for device cuda, but no CUDA device is visible")
    return "cuda" if requested in ("cuda", "auto") and torch.cuda.is_available() else "cpu"


class QuietStarRunner:
    def validate(self, spec) -> list[str]:
        problems = []
        if spec.lookahead_tokens >= spec.rl_seq_len:
            problems.append(f"lookahead_tokens ({spec.lookahead_tokens}) must be < rl_seq_len ({spec.rl_seq_len})")
        return problems

    def run(self, ctx):
        spec = ctx.spec
        evaluation = {**DEFAULT_EVALUATION, **(ctx.request.evaluation or {})}
        device = pick_device(ctx.request.device or "cpu")
        with tempfile.TemporaryDirectory(prefix="agentforge-quietstar-") as tmp, \
                Telemetry().start(WANDB_PROJECT, f"phase3-quietstar-{ctx.request.request_id}",
                                  spec.model_dump(mode="json"), group=ctx.request.run_id or None,
                                  job_type="quietstar", dir=os.environ.get("WANDB_DIR")) as tel:
            work = Path(tmp)
            ctx.progress("loading the champion and the reasoning data", fraction=0.01)
            champion_ref, data_ref = ctx.request.input("champion"), ctx.request.input("reasoning_data")
            champion_dir = ctx.store.fetch(champion_ref, work / "champion")
            model = load_model(champion_dir).to(device)
            tokenizer = load_tokenizer(champion_dir / "tokenizer")
            gsm8k = first_n(load_gsm8k_test(ctx, work, tokenizer), evaluation["gsm8k_limit"] or None)
            if not gsm8k:
                raise FailedPreconditionError("GSM8K's test split is empty: the comparison with Phase 2 needs it")
            train, val = split_by_field(load_reasoning_data(ctx.store, data_ref)["examples"])
            if not train or not val:
                raise FailedPreconditionError(f"the reasoning data has {len(train)} train and {len(val)} val "
                                              f"examples; baking needs both")
            ckpt = ctx.latest_checkpoint()
            state: dict[str, Any] = dict(ckpt.state) if ckpt is not None else {}
            stage = state.get("stage")

            # 1. Phase 2's number, on the champion as published
            if "phase2" not in state:
                ctx.progress("measuring the champion on GSM8K", fraction=0.02)
                state["phase2"] = evaluate_gsm8k(model, tokenizer, gsm8k, max_new_tokens=evaluation["max_new_tokens"])
            # 2. the tokens (deterministic: a restarted job adds the same rows)
            report = add_tokens(model, tokenizer)
            state.setdefault("tokens", {k: v for k, v in report.items() if k != "token_ids"})
            tokens = thought_tokens(tokenizer)
            pre_baking = frozen_copy(model) if spec.baking_objective == "kl" else None

            # 3. baking
            if stage in (None, "baking"):
                resume = None
                if stage == "baking":
                    load_model_tensors(model, ctx.load_checkpoint_tensors(ckpt, "model"), f"checkpoint {ckpt.ref.uri}")
                    opt = optimizer_state_from_tensors(ctx.load_checkpoint_tensors(ckpt, "optimizer"),
                                                       state["optimizer_meta"])
                    progress = state["progress"]
                    best = (ctx.load_checkpoint_tensors(ckpt, "best")
                            if progress.get("best_epoch", progress["epoch"]) != progress["epoch"] else None)
                    resume = BakingCheckpoint(progress, opt, ctx.load_checkpoint_tensors(ckpt, "rng")["torch"], best)
                    ctx.resumed_from_step = ckpt.step
                ctx.progress("baking", fraction=0.04)
                baked = self.bake(ctx, tel, model, tokenizer, train, val, spec, state, resume, pre_baking)
                state = {"stage": "baked", "phase2": state["phase2"], "tokens": state["tokens"], "baking": baked}
                # 4. the baked model alone
                ctx.progress("measuring the baked model", fraction=0.45)
                state["baked_eval"] = {
                    "gsm8k": gsm8k_plain(model, tokenizer, gsm8k, spec.max_new_tokens),
                    "thinking_token_usage": thinking_usage(model, tokenizer, val, spec.eval_examples,
                                                           spec.max_new_tokens)}
                ctx.save_checkpoint(BAKED_STEP, tensors={"model": model_tensors(model)}, state=state)
                baked_tensors = model_tensors(model)
            else:
                baked_tensors = ctx.load_checkpoint_tensors(ckpt, "baked" if stage == "rl" else "model")
                load_model_tensors(model, baked_tensors, f"checkpoint {ckpt.ref.uri}")
                ctx.resumed_from_step = ckpt.step

            # 5. Quiet-STaR RL
            reference = frozen_copy(model)    # the baked model (weights as saved)
            head = MixingHead(model.config.hidden_dim).to(device)
            rl_resume = None
            if stage == "rl":
                load_model_tensors(model, ctx.load_checkpoint_tensors(ckpt, "model"), f"checkpoint {ckpt.ref.uri}")
                head.load_state_dict(ctx.load_checkpoint_tensors(ckpt, "head"), strict=True)
                rng = ctx.load_checkpoint_tensors(ckpt, "rng")
                rl_resume = RLCheckpoint(
                    state["rl"],
                    optimizer_state_from_tensors(ctx.load_checkpoint_tensors(ckpt, "optimizer"), state["optimizer_meta"]),
                    optimizer_state_from_tensors(ctx.load_checkpoint_tensors(ckpt, "head_optimizer"),
                                                 state["head_optimizer_meta"]),
                    rng["generator"], rng["torch"])
                log.info("resuming RL after step %d", state["rl"]["steps"])
            rl_state, val_rows = self.reinforce(ctx, tel, model, head, reference, baked_tensors, tokenizer, tokens, train, val,
                                      spec, state, rl_resume, device)

            # 6. the published model, measured
            ctx.progress("final evaluation", fraction=0.85)
            metrics = self.final_metrics(model, head, tokenizer, tokens, val, gsm8k, spec, state, rl_state, val_rows)
            tel.summary(metrics)
            ctx.progress("publishing", fraction=0.97, metrics=metrics)
            settings = {"thought_length": spec.thought_length, "num_thoughts": spec.num_thoughts,
                        "lookahead_tokens": spec.lookahead_tokens}
            out = save_quietstar(model.to("cpu"), head.to("cpu"), tokenizer, settings, work / "model")
            with ctx.open_artifact("model", kind="model", tokenizer="tokenizer", parents=[champion_ref, data_ref],
                                   config={**model.config.to_dict(), "quietstar": settings}) as w:
                for f in sorted(out.iterdir()):
                    if f.is_dir():
                        w.add_dir(f.name, f)
                    else:
                        w.add_file(f.name, f)
                w.set_metrics({k.removeprefix(M): v for k, v in metrics.items()
                               if k in (M + "format_adherence", M + "gsm8k_acc", M + "coherence")})
        return JobResult(artifacts=(w.ref,), metrics=metrics)

    # -- stages ---------------------------------------------------------------------------------------------

    def bake(self, ctx, tel, model, tokenizer, train, val, spec, state, resume, pre_baking) -> dict[str, Any]:
        total = spec.baking_epochs

        def on_epoch(record):
            scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and "/" in k}
            tel.log(scalars)
            # the epoch's loss and every validation figure, overall and per strategy (baking/accuracy_<s>, …)
            ctx.progress(f"baking epoch {record['epoch']} ({record['stage']})", step=record["epoch"],
                         total_steps=total, fraction=0.05 + 0.35 * min(1.0, record["epoch"] / (total + 3)),
                         metrics={"baking/loss": float(record["baking/loss"]),
                                  **{k: float(v) for k, v in record["metrics"].items()
                                     if k.startswith("baking/") and isinstance(v, (int, float))}})

        def on_checkpoint(c: BakingCheckpoint):
            tensors, meta = optimizer_state_to_tensors(c.optimizer_state)
            best = {} if c.best_weights is None else {
                "best": {k: v.detach().cpu().contiguous() for k, v in c.best_weights.items()}}
            ctx.save_checkpoint(int(c.progress["epoch"]), tensors={
                "model": model_tensors(model), "optimizer": tensors, "rng": {"torch": c.rng_state}, **best},
                state={"stage": "baking", "phase2": state["phase2"], "tokens": state["tokens"],
                       "progress": c.progress, "optimizer_meta": meta})

        def on_step(values):
            step = int(values["baking/step"])
            if step % 10 == 0:
                tel.log(values)

        result = bake(model, tokenizer, train, val, spec, epochs=spec.baking_epochs, seed=spec.seed,
                      objective=spec.baking_objective, eval_limit=spec.eval_examples,
                      max_new_tokens=spec.max_new_tokens, on_epoch=on_epoch, on_step=on_step,
                      on_checkpoint=on_checkpoint, resume=resume, teacher_model=pre_baking)
        per_strategy = sorted(k for k in result.final_metrics if k.startswith("baking/accuracy_"))
        tel.table("quietstar/baking_epochs", ["epoch", "stage", "loss", FORMAT_ADHERENCE, *per_strategy],
                  [[h["epoch"], h["stage"], h["loss"], h["metrics"][FORMAT_ADHERENCE],
                    *[h["metrics"].get(k) for k in per_strategy]] for h in result.history])
        return {"final_metrics": result.final_metrics, "initial_metrics": result.initial_metrics,
                "converged": result.converged, "mitigated": result.mitigated, "epochs_run": result.epochs_run,
                "best_epoch": result.best_epoch,
                "train_examples": result.train_examples, "dropped_too_long": result.dropped_too_long,
                "teacher_unchanged": result.teacher_unchanged}

    def reinforce(self, ctx, tel, model, head, reference, baked_tensors, tokenizer, tokens, train, val, spec,
                  state, resume, device) -> tuple[dict[str, Any], torch.Tensor]:
        rows = pack_rows(tokenizer, train, spec.rl_seq_len, seed=spec.seed).to(device)
        val_rows = pack_rows(tokenizer, val, spec.rl_seq_len, seed=None)[:max(THEATER_ROWS, spec.rl_batch_size)]
        val_rows = val_rows.to(device)
        n, b = rows.shape[0], spec.rl_batch_size

        def batch_at(step: int) -> torch.Tensor:
            idx = (torch.arange(b) + (step - 1) * b) % n
            return rows[idx.to(device)]

        every = max(1, spec.rl_steps // RL_SERIES_POINTS)

        def on_step(step, stats):
            tel.log({**stats, "rl/step": step})
            if step % every == 0 or step == spec.rl_steps:
                ctx.progress(f"RL step {step}", step=step, total_steps=spec.rl_steps,
                             fraction=0.5 + 0.33 * step / max(1, spec.rl_steps),
                             metrics={k: stats[k] for k in ("rl/reward", "rl/coherence", "rl/mixing_weight", "rl/kl",
                                                            "rl/nll")})

        def on_check(step, verdict, kl, threshold):
            values = {ANTI_THEATER_DIVERGENCE: verdict.divergence, ANTI_THEATER_ABLATION: verdict.ablation,
                      ANTI_THEATER_CORRELATION: verdict.correlation}
            checked = {**{k: v for k, v in values.items() if v is not None},
                       "anti_theater/passed": float(verdict.passed), "anti_theater/kl_coefficient": kl,
                       "anti_theater/reward_threshold": threshold}
            tel.log({**checked, "rl/step": step})
            if not verdict.passed:
                print(f"🚨 THEATER DETECTED at step {step}: {'; '.join(verdict.failures)}; rolled back, "
                      f"kl={kl:.4g}, reward_threshold={threshold:.4g}")
            ctx.progress(f"anti-theater check at RL step {step}", step=step, total_steps=spec.rl_steps,
                         fraction=0.5 + 0.33 * step / max(1, spec.rl_steps), metrics=checked)

        def on_checkpoint(c: RLCheckpoint):
            opt_t, opt_meta = optimizer_state_to_tensors(c.optimizer_state)
            head_t, head_meta = optimizer_state_to_tensors(c.head_optimizer_state)
            ctx.save_checkpoint(BAKED_STEP + int(c.result["steps"]), tensors={
                "model": model_tensors(model), "head": head_state(head), "baked": baked_tensors,
                "optimizer": opt_t, "head_optimizer": head_t,
                "rng": {"torch": c.rng_state, "generator": c.generator_state}},
                state={**{k: state[k] for k in ("phase2", "tokens", "baking", "baked_eval")}, "stage": "rl",
                       "rl": c.result, "optimizer_meta": opt_meta, "head_optimizer_meta": head_meta})

        optimizer = make_rl_optimizer(model, spec.rl_optimizer)
        ctx.progress("RL", fraction=0.5)
        result = train_thoughts(model, head, batch_at, val_rows, steps=spec.rl_steps, optimizer=optimizer,
                                num_thoughts=spec.num_thoughts, length=spec.thought_length,
                                n_future=spec.lookahead_tokens, tokens=tokens, reference=reference,
                                kl_coefficient=spec.rl_optimizer.kl_coefficient,
                                reward_threshold=spec.reward_threshold, check_every=spec.anti_theater_every,
                                seed=spec.seed, max_grad_norm=GRAD_CLIP, on_step=on_step, on_check=on_check,
                                on_checkpoint=on_checkpoint, resume=resume)
        return result.state(), val_rows

    def final_metrics(self, model, head, tokenizer, tokens, val, gsm8k, spec, state, rl_state,
                      val_rows) -> dict[str, float]:
        model.eval()
        head.eval()
        theater = measure_theater(model, head, val_rows, num_thoughts=spec.num_thoughts, length=spec.thought_length,
                                  n_future=spec.lookahead_tokens, tokens=tokens,
                                  generator=torch.Generator(device=val_rows.device).manual_seed(spec.seed + 2))
        verdict = anti_theater_check(theater["divergence"], theater["ablation"], theater["correlation"])
        if not verdict.passed:
            log.warning("the published model fails the anti-theater check: %s", "; ".join(verdict.failures))
        baking = evaluate_baking(model, tokenizer, val, limit=spec.eval_examples, max_new_tokens=spec.max_new_tokens)
        with_thoughts = gsm8k_with_thoughts(model, head, tokenizer, gsm8k, spec.max_new_tokens,
                                            spec.thought_length, spec.seed)
        no_thoughts = gsm8k_plain(model, tokenizer, gsm8k, spec.max_new_tokens)
        phase2 = state["phase2"]["exact_match"]
        baked = state["baked_eval"]["gsm8k"]["exact_match"]
        out = {
            M + "format_adherence": baking[FORMAT_ADHERENCE],
            M + "answer_accuracy": baking["baking/answer_accuracy"],
            M + "thinking_token_usage": thinking_usage(model, tokenizer, val, spec.eval_examples, spec.max_new_tokens),
            M + "short_question_format_rate": short_question_rate(model, tokenizer),
            **verdict.metrics(),
            M + "gsm8k_acc": with_thoughts["exact_match"],
            M + "gsm8k_acc_phase2": phase2,
            M + "gsm8k_acc_gain": with_thoughts["exact_match"] - phase2,
            M + "gsm8k_acc_baked": baked,
            M + "gsm8k_acc_gain_over_baking": with_thoughts["exact_match"] - baked,
            M + "gsm8k_acc_no_thoughts": no_thoughts["exact_match"],
            M + "gsm8k_items": with_thoughts["n"],
            M + "baked_thinking_token_usage": state["baked_eval"]["thinking_token_usage"],
            M + "baking_format_adherence": state["baking"]["final_metrics"][FORMAT_ADHERENCE],
            M + "baking_epochs": float(state["baking"]["epochs_run"]),
            M + "baking_best_epoch": float(state["baking"].get("best_epoch", state["baking"]["epochs_run"])),
            M + "baking_mitigated": float(state["baking"]["mitigated"]),
            M + "baking_converged": float(state["baking"]["converged"]),
            M + "rl_steps": float(rl_state["steps"]),
            M + "rl_rollbacks": float(rl_state["rollbacks"]),
            M + "rl_kl_coefficient": float(rl_state["kl_coefficient"]),
            M + "rl_reward_threshold": float(rl_state["reward_threshold"]),
            M + "parameter_delta": float(state["tokens"]["parameter_delta"]),
        }
        for name in ("coherence", "nll_with_thoughts", "nll_without_thoughts", "mixing_weight"):
            if theater.get(name) is not None:     # a measure that could not be computed is absent: its gate fails
                out[M + name] = float(theater[name])
        return out


def add_tokens(model, tokenizer) -> dict[str, Any]:
    from services.quietstar.core.tokens import add_thinking_tokens

    return add_thinking_tokens(model, tokenizer)
