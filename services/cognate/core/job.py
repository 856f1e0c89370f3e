"""The Cognate phase as a job: train (runner.TrainingSession: warm-up, then the variants), check that the
variants specialised as intended (diversity.specialisation_problems; if not, the checklist's mitigation:
retrain them once with more aggressive config differences, runner.more_different), evaluate, measure
diversity, publish four models.

Artifacts: "ancestor" and "model_reasoning" / "model_memory" / "model_speed", each a saved TRMTitansMAG
(safetensors + config.json) with the data's tokenizer under tokenizer/. Gate metrics (profile gate table):
  cognate/val_nll_gain_vs_unigram  the smallest gain over a unigram model among the three variants
  cognate/gsm8k_acc                the reasoning model's GSM8K exact match (profile subset)
  cognate/halting_diversity        max − min mean executed halting steps (steps)
  cognate/memory_diversity         relative spread of ltm_usage
  cognate/compute_diversity        relative spread of executed FLOPs per token (the proxy for speed)
Per-model metrics are reported as cognate/<model>/<name>; the loss barrier between each pair of variants
as cognate/barrier/<a>-<b>.

Progress series (the run report's plots). Training events carry the model's own schedule step, so the
variants' curves continue the warm-up's ("warmup" is the ancestor): cognate/<model>/train_loss at up to
LOSS_SERIES_POINTS evenly spaced steps and at each epoch's end; at an epoch's end also
cognate/<model>/epoch_val_loss, …/epoch_halting_steps and the halting-step histogram …/halting_hist/<k>
(validation positions that executed k supervision steps, k = 1 … n_sup). After evaluation, one event per
point t_i of the straight line between each pair of variants (step i): cognate/barrier_path/t = t_i and
cognate/barrier_path/<a>-<b> = the validation NLL there.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from services.cognate.core import diversity as div
from services.cognate.core import model_metrics as mm
from services.cognate.core.data import load_cognate_data
from services.cognate.core.runner import (TrainingSession, more_different, schedule, validate,
                                          validation_batches)
from shared.data.tokenizer import save_tokenizer
from shared.evaluation import evaluate_arc, evaluate_gsm8k
from shared.model import save_model
from shared.runtime import JobResult
from shared.telemetry import metric_names as names
from shared.telemetry.wandb_run import Telemetry

log = logging.getLogger(__name__)
VARIANTS = ("reasoning", "memory", "speed")
LOSS_SERIES_POINTS = 200      # train-loss progress events per model at most, about evenly spaced
WANDB_PROJECT = "agent-forge-v2"


def task_metrics(model, tokenizer, data, evaluation: dict) -> dict[str, float]:
    out = {}
    gsm = data.test.get("GSM8K", [])
    if gsm:
        r = evaluate_gsm8k(model, tokenizer, gsm, max_new_tokens=evaluation["max_new_tokens"],
                           limit=evaluation["gsm8k_limit"] or None)
        out["gsm8k_acc"] = r["exact_match"]
    arc = data.test.get("ARC-Easy", []) + data.test.get("ARC-Challenge", [])
    if arc:
        out["arc_acc"] = evaluate_arc(model, tokenizer, arc, limit=evaluation["multiple_choice_limit"] or None)["accuracy"]
    return out


def halting_histogram(steps: torch.Tensor, n_sup: int) -> dict[str, float]:
    """{"val/halting_hist/<k>": positions that executed k supervision steps} for k = 1 … max(n_sup, the most
    executed), zeros included, so every model's histogram has the same bins."""
    counts = torch.bincount(steps.flatten().round().long().cpu(), minlength=n_sup + 1)
    return {f"val/halting_hist/{k}": float(counts[k]) for k in range(1, max(n_sup + 1, len(counts)))}


def epoch_validation(model, batches) -> dict[str, float]:
    """val/loss, val/accuracy, the mean executed halting steps and their histogram (halting_histogram) on a
    few validation batches, in eval mode (ACT halting, no dropout; no random numbers drawn, so a resumed job's
    curve is unchanged); the model's training mode is restored."""
    was_training = model.training
    device = next(model.parameters()).device
    try:
        nll, accuracy = validate(model, [{k: t.to(device) for k, t in b.items()} for b in batches])
        with torch.no_grad():
            steps = torch.cat([model(b["input_ids"].to(device)).halting_steps.flatten() for b in batches])
        return {names.VAL_LOSS: nll, names.VAL_ACCURACY: accuracy, "val/halting_steps": float(steps.mean()),
                **halting_histogram(steps, int(model.config.n_sup))}
    finally:
        model.train(was_training)


class CognateRunner:
    def validate(self, spec) -> list[str]:
        return []   # the schema checks the spec; data-dependent checks run before training starts

    def run(self, ctx):
        evaluation = ctx.request.evaluation or {"gsm8k_limit": 20, "multiple_choice_limit": 20,
                                                "max_new_tokens": 32, "perplexity_seq_len": 64}
        with tempfile.TemporaryDirectory(prefix="agentforge-cognate-") as tmp, \
                Telemetry().start(WANDB_PROJECT, f"phase1-cognate-{ctx.request.request_id}",
                                  ctx.spec.model_dump(mode="json"), group=ctx.request.run_id or None,
                                  job_type="cognate", dir=os.environ.get("WANDB_DIR")) as tel:
            work = Path(tmp)
            ctx.progress("loading data", fraction=0.01)
            data = load_cognate_data(ctx, work)
            total = sum(schedule(ctx.spec)[1].values())
            every = max(1, max(schedule(ctx.spec)[1].values()) // LOSS_SERIES_POINTS)
            done = [0]

            val_batches = validation_batches(data, data.tokenizer, ctx.spec.model.max_seq_len, limit=2)

            def on_step(info):
                done[0] += 1
                name, loss = info.segment.name, info.loss
                logged = {f"{name}/train/tokens_per_s": info.tokens_per_s, f"{name}/train/memory_mb": info.memory_mb}
                if loss is not None:      # None: a batch of prompt tokens only, which has no loss
                    logged.update({f"{name}/{names.TRAIN_LOSS}": loss,
                                   f"{name}/{names.TRAIN_PERPLEXITY}": math.exp(min(loss, 30))})
                tel.log(logged, step=done[0])
                step = info.step + 1      # the model's own schedule step (1-based): it continues across a resume
                series = ({f"cognate/{name}/train_loss": loss}
                          if loss is not None and (step % every == 0 or info.epoch_end) else {})
                if info.epoch_end:
                    val = epoch_validation(info.model, val_batches)
                    tel.log({f"{name}/{k}": v for k, v in val.items()}, step=done[0])
                    series.update({f"cognate/{name}/epoch_val_loss": val[names.VAL_LOSS],
                                   f"cognate/{name}/epoch_halting_steps": val["val/halting_steps"],
                                   **{f"cognate/{name}/{k.removeprefix('val/')}": v for k, v in val.items()
                                      if k.startswith("val/halting_hist/")}})
                if series:
                    ctx.progress(f"training {name}", fraction=min(0.8, 0.8 * done[0] / max(1, total)), step=step,
                                 total_steps=info.segment.last_step, metrics=series)

            session = TrainingSession(ctx.spec, data, ctx=ctx, on_step=on_step)
            ancestor = session.warmup()
            models, metrics = session.variants(ancestor, ctx.spec.variants)
            batches = validation_batches(data, data.tokenizer, ctx.spec.model.max_seq_len)
            profiles = {name: mm.profile_model(m, batches) for name, m in models.items()}   # H, C, U, NLL
            problems = div.specialisation_problems(profiles)
            if problems:   # the checklist's mitigation, once: retrain with more aggressive config differences
                log.warning("Phase-1 variants not specialised (%s): retraining with more different configs",
                            "; ".join(problems))
                ctx.progress("retraining the variants", fraction=0.5,
                             message="not specialised: " + "; ".join(problems) + "; retraining with more "
                                     "different configs (reasoning thinks longer, speed halts earlier with "
                                     "less memory, memory gets the full capacity)")
                models, metrics = session.variants(
                    ancestor, more_different(ctx.spec.variants, ctx.spec.model.ltm_slots), attempt=1)
                profiles = {name: mm.profile_model(m, batches) for name, m in models.items()}
            ctx.progress("evaluating", fraction=0.85)
            for name, model in models.items():
                t0 = time.perf_counter()
                if name != "ancestor":   # task scores are for the three models; the ancestor is a merge base
                    metrics[name].update(task_metrics(model, data.tokenizer, data, evaluation))
                metrics[name]["compute_per_token"] = profiles[name].compute_per_token
                metrics[name]["ltm_usage"] = profiles[name].ltm_usage
                log.info("evaluated %s: tasks %.1f s", name, time.perf_counter() - t0)
            flat = {f"cognate/{m}/{k}": float(v) for m, d in metrics.items() for k, v in d.items()}
            flat["cognate/retrained_variants"] = float(bool(problems))
            figures = div.diversity_figures([profiles[v] for v in VARIANTS])
            flat.update({
                "cognate/val_nll_gain_vs_unigram": min(metrics[v]["val_nll_gain_vs_unigram"] for v in VARIANTS),
                **{f"cognate/{k}": v for k, v in figures.items()},
            })
            if "gsm8k_acc" in metrics["reasoning"]:
                flat["cognate/gsm8k_acc"] = metrics["reasoning"]["gsm8k_acc"]
            t0 = time.perf_counter()
            paths = {}
            for a, b in itertools.combinations(VARIANTS, 2):
                paths[f"{a}-{b}"] = div.loss_barrier(models[a], models[b], batches,
                                                     endpoint_losses=(profiles[a].nll, profiles[b].nll))
                flat[f"cognate/barrier/{a}-{b}"] = paths[f"{a}-{b}"]["barrier"]
            log.info("loss barriers: %.1f s", time.perf_counter() - t0)
            points = next(iter(paths.values()))["t"]      # every pair is measured at the same t
            for i, t in enumerate(points):
                ctx.progress("loss barriers", fraction=0.9, step=i, total_steps=len(points), metrics={
                    "cognate/barrier_path/t": t,
                    **{f"cognate/barrier_path/{pair}": path["losses"][i] for pair, path in paths.items()}})
            flat = {k: v for k, v in flat.items() if math.isfinite(v)}   # never report a non-number
            for name in ("ancestor", *VARIANTS):
                tel.log({f"{name}/{names.VAL_LOSS}": metrics[name]["val_loss"],
                         f"{name}/{names.VAL_ACCURACY}": metrics[name]["val_accuracy"]})
            tel.table("diversity/model_comparison", *div.diversity_table({v: models[v] for v in VARIANTS}, batches,
                                                                          profiles))
            tel.summary(flat)
            ctx.progress("publishing", fraction=0.95, metrics=flat)
            tok_dir = work / "tokenizer"
            save_tokenizer(data.tokenizer, tok_dir)
            refs = []
            parents = list(ctx.request.inputs)
            for name in ("ancestor", *VARIANTS):
                out = work / "models" / name
                save_model(models[name], out)
                artifact = "ancestor" if name == "ancestor" else f"model_{name}"
                with ctx.open_artifact(artifact, kind="model", tokenizer="tokenizer", parents=parents,
                                       config=models[name].config.to_dict()) as w:
                    for f in sorted(out.iterdir()):
                        w.add_file(f.name, f)
                    w.add_dir("tokenizer", tok_dir)
                    w.set_metrics({k: float(v) for k, v in metrics[name].items() if math.isfinite(v)})
                refs.append(w.ref)
                if name == "ancestor":
                    parents = [w.ref]
        return JobResult(artifacts=tuple(refs), metrics=flat)
