"""The Cognate phase: one initialisation, a shared warm-up stored as the ancestor, then three variants.

Schedule (DESIGN.md §5): each variant's whole schedule is `epochs × max_steps_per_epoch` steps; the first
`warmup_fraction` of the shortest schedule is trained once, jointly, from `init_seed` with the default
category weights — the ancestor. Each variant then continues from the ancestor with its own seed (data order
and dropout), category mix, memory capacity (`ltm_slots`, the rest of the shared width masked) and halting
threshold. Epochs map to the three curriculum stages over each variant's own schedule.

This module trains and computes the held-out figures (NLL, perplexity, next-token accuracy, gain over a
unigram model, mean executed halting steps); job.py adds task scores, diversity and publishing.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import Counter

import torch

from services.cognate.core.data import CognateData
from services.cognate.core.trainer import Segment, Trainer, criterion
from shared.data.curriculum import DEFAULT_WEIGHTS, Phase1Dataset
from shared.errors import FailedPreconditionError, InvalidSpecError
from shared.evaluation import unigram_nll
from shared.model import TRMTitansMAG, TRMTitansMAGConfig
from shared.optim import MuonGrokfast
from shared.utils import calculate_safe_batch_size

log = logging.getLogger(__name__)


def schedule(spec) -> tuple[int, dict[str, int]]:
    totals = {v.name: v.epochs * spec.max_steps_per_epoch for v in spec.variants}
    warmup = max(1, round(spec.warmup_fraction * min(totals.values())))
    return warmup, totals


def check_mixes(spec, data: CognateData) -> None:
    """Every variant's mix must give weight to a category the prepared data has (else it trains nothing)."""
    present = {r.category for records in data.train.values() for r in records[:1]}
    for i, v in enumerate(spec.variants):
        if not any(getattr(v.mix, c) > 0 for c in present):
            raise InvalidSpecError(f"variant {v.name} weights only categories with no data; present: "
                                   f"{sorted(present)}", field=f"spec.variants[{i}].mix")


def set_capacity(model: TRMTitansMAG, active_slots: int, act_threshold: float) -> None:
    """A variant's memory capacity (masking the units beyond it) and halting threshold."""
    for layer in model.net.layers:
        layer.memory.set_active_slots(active_slots)
    model.config.active_ltm_slots = active_slots
    model.config.act_threshold = act_threshold


def validation_batches(data: CognateData, tokenizer, seq_len: int, limit: int = 8):
    ds = Phase1Dataset(data.val, tokenizer, seq_len=seq_len, seed=0, split="val")
    return list(ds.batches(4, drop_last=False))[:limit]


def evaluate(model: TRMTitansMAG, batches, unigram: float) -> dict[str, float]:
    nll, accuracy = validate(model, batches)
    model.eval()
    with torch.no_grad():
        steps = torch.cat([model(b["input_ids"]).halting_steps.flatten() for b in batches]).mean().item()
    return {"val_loss": nll, "val_accuracy": accuracy, "perplexity": math.exp(min(nll, 30)),
            "val_nll_gain_vs_unigram": unigram - nll, "halting_steps": steps}


def validate(model: TRMTitansMAG, batches) -> tuple[float, float]:
    """The checklist's validate: (val loss, val accuracy) = mean next-token NLL and next-token accuracy over
    the packed validation batches (labels already shifted, -100 ignored), with ACT halting as at inference."""
    model.eval()
    total, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for b in batches:
            logits = model(b["input_ids"]).logits
            valid = b["labels"] != -100
            total += criterion(logits, b["labels"]).item() * int(valid.sum())
            correct += int(((logits.argmax(-1) == b["labels"]) & valid).sum())
            count += int(valid.sum())
    if count == 0:
        raise FailedPreconditionError("the validation split has no target tokens")
    return total / count, correct / count


def unigram_reference(data: CognateData, tokenizer, batches) -> float:
    counts: Counter[int] = Counter()
    for b in Phase1Dataset(data.train, tokenizer, seq_len=64, seed=0).batches(16):
        counts.update(b["input_ids"].flatten().tolist())
        if sum(counts.values()) > 200_000:
            break
    targets = [t for b in batches for t in b["labels"].flatten().tolist() if t != -100]
    return unigram_nll(counts, targets, vocab_size=len(tokenizer))


def pick_device(requested: str) -> str:
    """'cuda' when asked for (or 'auto') and present; 'cuda' asked for but absent is an error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise FailedPreconditionError("the profile asks for device cuda, but no CUDA device is visible")
    return "cuda" if requested in ("cuda", "auto") and torch.cuda.is_available() else "cpu"


def batch_plan(model, spec, device: str) -> tuple[int, int]:
    """(micro-batch, accumulation) for an effective batch of batch_size × grad_accumulation sequences: on a
    GPU from calculate_safe_batch_size (which counts the memory's fast-weight state through what autograd
    saves), on the CPU as the profile says."""
    target = spec.batch_size * spec.grad_accumulation
    if device != "cuda":
        return spec.batch_size, spec.grad_accumulation
    vram_gb = torch.cuda.get_device_properties(0).total_memory / 2**30
    batch, accumulation = calculate_safe_batch_size(model, vram_gb, seq_len=spec.model.max_seq_len,
                                                    target_batch_size=target, optimizer="muongrokfast")
    return batch, accumulation


def train_all(spec, data: CognateData, *, ctx=None, on_step=None) -> tuple[dict[str, TRMTitansMAG], dict]:
    """Warm-up then the three variants; returns {"ancestor", variant names...: model} and metrics."""
    session = TrainingSession(spec, data, ctx=ctx, on_step=on_step)
    ancestor = session.warmup()
    return session.variants(ancestor, spec.variants)


class TrainingSession:
    """The shared warm-up and the variants' training of one Cognate job, with what they need in common
    (device, schedule, segment bookkeeping for restarts, out-of-memory and learning-rate events)."""

    def __init__(self, spec, data: CognateData, *, ctx=None, on_step=None):
        check_mixes(spec, data)
        if spec.model.vocab_size < len(data.tokenizer):
            raise FailedPreconditionError(f"model vocab_size {spec.model.vocab_size} < tokenizer size "
                                          f"{len(data.tokenizer)}")
        self.spec, self.data, self.ctx, self.on_step = spec, data, ctx, on_step
        self.warmup_steps, self.totals = schedule(spec)
        self.device = pick_device(ctx.request.device if ctx is not None else "cpu")
        self.oom_events: list[dict] = []
        self.lr_halvings: list[dict] = []
        self.segments = 0

    def _train_segment(self, model, seg: Segment, key: str) -> None:
        """Train one segment, or load its result if this job finished it before a restart."""
        spec, ctx = self.spec, self.ctx
        index = self.segments
        self.segments += 1
        done_key = ctx.output_key(f"segment-{key}") if ctx is not None else None
        if done_key is not None and ctx.store.exists(f"{done_key}/manifest.json"):
            tensors, _ = ctx.store.load_tensors(ctx.store.ref_for(done_key), "model.safetensors")
            model.load_state_dict(tensors, strict=False)
            log.info("segment %s was finished before a restart: loaded", key)
            return
        opt = MuonGrokfast.from_config(model.named_parameters(), spec.optimizer,
                                       qk_modules=model.qk_clip_modules(), max_grad_norm=spec.grad_clip)
        batch, accumulation = batch_plan(model, spec, self.device)
        trainer = Trainer(model, opt, self.data.train, self.data.tokenizer, seq_len=spec.model.max_seq_len,
                          batch_size=batch, accumulation=accumulation, n_sup=spec.model.n_sup,
                          checkpoint_every=spec.checkpoint_every_steps, ctx=ctx,
                          checkpoint_offset=index * 1_000_000, on_step=self.on_step, device=self.device)
        trainer.run(seg)
        self.oom_events.extend({"segment": seg.name, **e} for e in trainer.oom_events)
        self.lr_halvings.extend(trainer.mitigations)
        if ctx is not None:
            with ctx.open_artifact(f"segment-{key}", kind="checkpoint", config={"segment": key}) as w:
                w.add_tensors("model.safetensors", {k: v.detach().contiguous()
                                                    for k, v in model.state_dict().items()}, None)

    def warmup(self) -> TRMTitansMAG:
        spec = self.spec
        torch.manual_seed(spec.init_seed)
        cfg = TRMTitansMAGConfig.from_profile(spec.model, active_ltm_slots=spec.model.ltm_slots)
        ancestor = TRMTitansMAG(cfg).to(self.device)
        longest = max(v.epochs for v in spec.variants)
        self._train_segment(ancestor, Segment("warmup", spec.init_seed, dict(DEFAULT_WEIGHTS), 0, self.warmup_steps,
                                              spec.max_steps_per_epoch, longest), "warmup")
        return ancestor

    def variants(self, ancestor: TRMTitansMAG, variants, *, attempt: int = 0
                 ) -> tuple[dict[str, TRMTitansMAG], dict]:
        """Each variant from a copy of the ancestor; `attempt` > 0 is a retraining (its segments are stored
        apart from the first attempt's). Returns the models (ancestor included) and their metrics."""
        spec = self.spec
        models = {"ancestor": ancestor}
        for v in variants:
            model = copy.deepcopy(ancestor).to(self.device)
            set_capacity(model, v.ltm_slots, v.act_threshold)
            torch.manual_seed(v.seed)
            key = v.name if attempt == 0 else f"{v.name}-retry{attempt}"
            self._train_segment(model, Segment(key, v.seed, v.mix.model_dump(), self.warmup_steps,
                                               self.totals[v.name], spec.max_steps_per_epoch, v.epochs), key)
            models[v.name] = model
        batches = validation_batches(self.data, self.data.tokenizer, spec.model.max_seq_len)
        unigram = unigram_reference(self.data, self.data.tokenizer, batches)
        metrics = {name: evaluate(m, [{k: t.to(self.device) for k, t in b.items()} for b in batches], unigram)
                   for name, m in models.items()}
        for m in models.values():
            m.to("cpu")
        metrics["ancestor"]["oom_events"] = float(len(self.oom_events))
        metrics["ancestor"]["lr_halvings"] = float(len(self.lr_halvings))   # roll-backs on a diverging loss
        return models, metrics


def more_different(variants, ltm_slots: int) -> list:
    """The checklist's mitigation for too-similar models ("retrain with more aggressive config
    differences"): reasoning thinks longer (threshold halfway to 1), speed halts earlier (threshold halved)
    with half the memory, memory gets the full capacity. Seeds, epochs and mixes are kept."""
    out = []
    for v in variants:
        if v.name == "reasoning":
            v = v.model_copy(update={"act_threshold": (1 + v.act_threshold) / 2})
        elif v.name == "speed":
            v = v.model_copy(update={"act_threshold": v.act_threshold / 2, "ltm_slots": max(1, v.ltm_slots // 2)})
        elif v.name == "memory":
            v = v.model_copy(update={"ltm_slots": ltm_slots})
        out.append(v)
    return out
