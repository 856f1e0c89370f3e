"""Is a merged model usable (is_valid_model, the checklist's check before its linear fallback), and which model is
it (model_hash, the key of the fitness cache)."""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from services.evomerge.core.combos import SHARED_FIELDS, model_state
from services.evomerge.core.merge import identity_plan
from shared.canonical import dumps_canonical
from shared.errors import InvalidSpecError
from shared.model import TRMTitansMAG, load_model, save_model
from shared.model.modeling import IGNORE_INDEX

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Validity:
    """is_valid_model's answer; truthy when valid, so `if not is_valid_model(m)` reads as the checklist's."""

    ok: bool
    reason: str
    loss: float | None = None
    checks: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok


def _probe_ids(model: TRMTitansMAG) -> torch.Tensor:
    length = min(16, model.config.max_seq_len)
    return ((torch.arange(length) * 7 + 1) % model.config.vocab_size).unsqueeze(0).to(model.device)


def mean_lm_loss(model: TRMTitansMAG, batches: Sequence[dict]) -> float:
    """Token-weighted mean next-token NLL (nats) at inference (eval, ACT halting). A batch is
    {"input_ids": (B, L), "labels": (B, L)} with labels already shifted — labels[b, t] is the target of
    position t, -100 where nothing is scored (the Phase-1 batches' form); without "labels" the targets are
    input_ids shifted by one."""
    total, count = 0.0, 0
    for i, batch in enumerate(batches):
        ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
        if ids is None or ids.dim() != 2:
            raise InvalidSpecError("each batch needs 'input_ids' of shape (B, L)", field=f"batches[{i}]")
        logits = model(ids.to(model.device)).logits
        if "labels" in batch:
            targets = batch["labels"].to(model.device)
        else:
            targets = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], IGNORE_INDEX)], dim=1).to(model.device)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), targets.reshape(-1),
                                 ignore_index=IGNORE_INDEX, reduction="sum").item()
        count += int((targets != IGNORE_INDEX).sum())
    if count == 0:
        raise InvalidSpecError("the batches have no target tokens", field="batches")
    return total / count


def is_valid_model(model, batches: Sequence[dict] | None = None, *, max_loss: float | None = None) -> Validity:
    """The checklist's check, in order, stopping at the first failure: a TRMTitansMAG; every parameter and
    buffer finite; a forward on a fixed probe runs with finite logits; a save/load round trip (safetensors,
    to a temporary directory) gives back the same tensors and layer plan; with `batches`, the mean LM loss
    (mean_lm_loss) is finite and <= max_loss (default ln(vocab_size) + 1: not much worse than a uniform
    guess). Returns Validity(ok, reason, loss, checks passed). A failing save/load or forward is an answer
    (ok False, the exception in the reason), not an exception; bad batches still raise InvalidSpecError."""
    checks: list[str] = []
    if not isinstance(model, TRMTitansMAG):
        return Validity(False, f"not a TRMTitansMAG but a {type(model).__name__}")
    state = model_state(model)
    for name, t in state.items():
        if not bool(torch.isfinite(t).all()):
            return Validity(False, f"tensor '{name}' has non-finite values", checks=checks)
    checks.append("finite")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                logits = model(_probe_ids(model)).logits
            except Exception as exc:  # noqa: BLE001 — an invalid model is an answer, not a crash
                log.warning("forward failed on a merged model", exc_info=True)
                return Validity(False, f"forward failed: {type(exc).__name__}: {exc}", checks=checks)
            if not bool(torch.isfinite(logits).all()):
                return Validity(False, "forward gives non-finite logits", checks=checks)
            checks.append("forward")
            try:
                with tempfile.TemporaryDirectory(prefix="evomerge-valid-") as tmp:
                    save_model(model, tmp)
                    again = load_model(tmp)
            except Exception as exc:  # noqa: BLE001
                log.warning("save/load round trip failed on a merged model", exc_info=True)
                return Validity(False, f"save/load failed: {type(exc).__name__}: {exc}", checks=checks)
            loaded = model_state(again)
            if loaded.keys() != state.keys() or any(not torch.equal(loaded[k].cpu(), state[k].cpu()) for k in state):
                return Validity(False, "a save/load round trip changed the tensors", checks=checks)
            if again.config.layer_plan != model.config.layer_plan:
                return Validity(False, "a save/load round trip changed the layer plan", checks=checks)
            checks.append("save_load")
            if batches is None:
                return Validity(True, "ok", checks=checks)
            limit = math.log(model.config.vocab_size) + 1 if max_loss is None else float(max_loss)
            loss = mean_lm_loss(model, batches)
            if not math.isfinite(loss):
                return Validity(False, f"the LM loss is not finite ({loss})", loss=loss, checks=checks)
            if loss > limit:
                return Validity(False, f"the LM loss {loss:.4f} exceeds {limit:.4f}", loss=loss, checks=checks)
            checks.append("loss")
            return Validity(True, "ok", loss=loss, checks=checks)
    finally:
        model.train(was_training)


def model_hash(model: TRMTitansMAG) -> str:
    """sha256 over the state (sorted names; each name, dtype, shape and raw bytes) and the canonical JSON
    (shared.canonical) of what else decides the model's function: the effective layer plan (None written as
    the identity plan, so both hash alike), act_threshold and the shared config fields. Not the merge
    recipe: two recipes that give the same model give the same hash (what a fitness cache wants)."""
    h = hashlib.sha256()
    state = model_state(model)
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    cfg = model.config
    plan = cfg.layer_plan if cfg.layer_plan is not None else identity_plan(cfg.num_layers)
    meta = {"layer_plan": plan, "act_threshold": float(cfg.act_threshold),
            **{name: getattr(cfg, name) for name in SHARED_FIELDS}}
    h.update(dumps_canonical(meta).encode("utf-8"))
    return h.hexdigest()
