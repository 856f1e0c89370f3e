"""MuonGrokfast: Grokfast-filtered gradients, Muon for hidden matrices, AdamW for the rest, then QK-clip.

DESIGN.md §5. One step is

    (backward) → Grokfast-EMA on the raw gradients (shared.optim.grokfast)
               → clip_grad_norm_ over all parameters (when max_grad_norm is set)
               → Muon on role "muon", AdamW on every other role (shared.optim.roles)
               → QK-clip on the attached attention modules (shared.optim.qk_clip)

Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/) is torch.optim.Muon: Nesterov
momentum 0.95, the quintic Newton–Schulz iteration (3.4445, −4.7750, 2.0315) × 5 steps on the momentum
normalised by its Frobenius norm (run on the wide orientation, in bfloat16), decoupled weight decay
θ ← θ(1 − lr·wd). Its update is scaled by Moonlight's RMS-matched factor 0.2·√max(rows, cols) (Liu et al.
2025, "Muon is Scalable for LLM Training", arXiv:2502.16982; `adjust_lr_fn="match_rms_adamw"`), which
gives the update the RMS of a typical AdamW update, so the checklist's AdamW-sized lr ≈ 1e-3 fits; Keller
Jordan's √max(1, rows/cols) is tuned for lr ≈ 0.02. AdamW is torch.optim.AdamW (bias correction,
decoupled weight decay).

The two torch optimizers share this optimizer's param-group dicts, so an LR scheduler (or a trainer) that
edits `optimizer.param_groups[i]["lr"]` drives them directly; per-parameter state lives in the sub-optimizer
that owns the parameter (the Grokfast EMA in this one) and state_dict() merges it back into one flat
torch-style dict of tensors and JSON scalars (storable by shared.storage.formats).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.utils import clip_grad_norm_
from torch.optim import AdamW, Muon, Optimizer

from shared.errors import InvalidSpecError
from shared.optim.grokfast import grokfast_ema_
from shared.optim.qk_clip import QKClipTarget, apply_qk_clip, check_targets
from shared.optim.roles import algorithm_of, normalise_params, split_by_role

if TYPE_CHECKING:
    from shared.config.schema import OptimizerConfig

logger = logging.getLogger(__name__)

EMA_KEY = "grokfast_ema"
# DESIGN.md §5 / implementation checklist: Phase 1, Prompt Baking, Quiet-STaR RL.
PRESETS: Mapping[str, Mapping[str, float]] = MappingProxyType({
    "phase1": MappingProxyType({"muon_lr": 1e-3, "grokfast_lambda": 0.3, "qk_clip_threshold": 30.0,
                                "kl_coefficient": 0.0}),
    "baking": MappingProxyType({"muon_lr": 1e-4, "grokfast_lambda": 0.2, "qk_clip_threshold": 30.0,
                                "kl_coefficient": 0.0}),
    "rl": MappingProxyType({"muon_lr": 5e-4, "grokfast_lambda": 0.1, "qk_clip_threshold": 25.0,
                            "kl_coefficient": 0.1}),
})


def check_range(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = True) -> float:
    """Validate a scalar hyperparameter; the error names the argument and the interval it broke."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InvalidSpecError(f"must be a number, got {value!r}", field=name)
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low}"
        hi = "inf)" if high is None else f"{high}" + (")" if high_open else "]")
        raise InvalidSpecError(f"must be in {lo}, {hi}, got {value!r}", field=name)
    return float(value)


def _check_group_values(values: Mapping[str, Any], prefix: str = "") -> None:
    check_range(prefix + "muon_lr", values["muon_lr"], low=0.0, low_open=True, high=None)
    check_range(prefix + "adamw_lr", values["adamw_lr"], low=0.0, low_open=True, high=None)
    check_range(prefix + "weight_decay", values["weight_decay"], low=0.0, high=None)
    check_range(prefix + "grokfast_alpha", values["grokfast_alpha"], low=0.0, high=1.0)
    check_range(prefix + "grokfast_lambda", values["grokfast_lambda"], low=0.0, high=None)


class MuonGrokfast(Optimizer):
    """Grokfast → clip → Muon/AdamW by parameter role → QK-clip (DESIGN.md §5; see the module docstring).

    Args:
        params: parameters (model.parameters()), (name, parameter) pairs (model.named_parameters(), which
            lets warnings and errors name them), or param-group dicts {"params": ..., plus any of muon_lr,
            adamw_lr, weight_decay, grokfast_alpha, grokfast_lambda}. Each parameter's `af_role` attribute
            picks its optimizer: "muon" → Muon, any other role or none → AdamW.
        muon_lr: Muon learning rate before the 0.2·√max(rows, cols) RMS match.
        adamw_lr: AdamW learning rate; None = muon_lr.
        weight_decay: decoupled weight decay for both (θ ← θ(1 − lr·wd)).
        betas, eps: AdamW's.
        momentum, nesterov, ns_steps: Muon's (its NS normalisation eps stays torch's 1e-7).
        grokfast_alpha: EMA factor α in [0, 1). grokfast_lambda: amplification λ ≥ 0; 0 turns the filter
            off and keeps no EMA state.
        qk_clip_threshold: τ > 0 (inf disables clipping).
        kl_coefficient: carried for API compatibility with the checklist and readable as an attribute; the
            loss owns the KL term (a frozen-reference divergence needs logits, which an optimizer never
            sees), so step() never uses it.
        max_grad_norm: clip the filtered gradients' global norm to this; None = no clipping here (e.g. the
            trainer clips itself).
        qk_modules: attention modules implementing shared.optim.qk_clip.QKClipTarget (the model's
            qk_clip_modules()); also settable later with attach_qk_modules.

    After step(), each parameter's .grad holds the gradient the update used (filtered, then clipped).
    """

    def __init__(
        self,
        params: Iterable[Any],
        *,
        muon_lr: float = 1e-3,
        adamw_lr: float | None = None,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        grokfast_alpha: float = 0.98,
        grokfast_lambda: float = 0.3,
        qk_clip_threshold: float = 30.0,
        kl_coefficient: float = 0.0,
        max_grad_norm: float | None = None,
        qk_modules: Iterable[QKClipTarget] | None = None,
    ) -> None:
        adamw_lr = muon_lr if adamw_lr is None else adamw_lr
        group_values = {"muon_lr": muon_lr, "adamw_lr": adamw_lr, "weight_decay": weight_decay,
                        "grokfast_alpha": grokfast_alpha, "grokfast_lambda": grokfast_lambda}
        _check_group_values(group_values)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise InvalidSpecError(f"must be a pair (beta1, beta2), got {betas!r}", field="betas")
        check_range("betas", betas[0], low=0.0, high=1.0)
        check_range("betas", betas[1], low=0.0, high=1.0)
        check_range("eps", eps, low=0.0, low_open=True)
        check_range("momentum", momentum, low=0.0, high=1.0)
        if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or not 1 <= ns_steps < 100:
            raise InvalidSpecError(f"must be an integer in [1, 100), got {ns_steps!r}", field="ns_steps")
        self.qk_clip_threshold = check_range("qk_clip_threshold", qk_clip_threshold, low=0.0, low_open=True)
        self.kl_coefficient = check_range("kl_coefficient", kl_coefficient, low=0.0)
        self.max_grad_norm = (None if max_grad_norm is None else
                              check_range("max_grad_norm", max_grad_norm, low=0.0, low_open=True))
        user_groups = normalise_params(params)

        self._group_values = group_values
        self._muon_kwargs = {"momentum": momentum, "nesterov": nesterov, "ns_steps": ns_steps,
                             "adjust_lr_fn": "match_rms_adamw"}
        self._adamw_kwargs = {"betas": tuple(betas), "eps": eps}
        self._muon: Muon | None = None
        self._adamw: AdamW | None = None
        self._qk_targets: list[QKClipTarget] = []
        self._untagged: list[str] = []
        self._user_groups_added = 0
        self._constructing = True
        self.last_grad_norm: torch.Tensor | None = None
        self.last_max_logits: list[torch.Tensor] = []
        defaults = {**group_values, **self._muon_kwargs, **self._adamw_kwargs}
        super().__init__(user_groups, defaults)  # calls self.add_param_group per user group
        self._constructing = False
        self._warn_untagged()
        if qk_modules is not None:
            self.attach_qk_modules(qk_modules)

    # --- presets -------------------------------------------------------------------------------------

    @classmethod
    def _preset(cls, name: str, params: Iterable[Any], overrides: dict[str, Any]) -> MuonGrokfast:
        return cls(params, **{**PRESETS[name], **overrides})

    @classmethod
    def phase1(cls, params: Iterable[Any], **overrides: Any) -> MuonGrokfast:
        """Phase 1 (Cognate pretraining): lr 1e-3, λ 0.3, τ 30, kl 0."""
        return cls._preset("phase1", params, overrides)

    @classmethod
    def baking(cls, params: Iterable[Any], **overrides: Any) -> MuonGrokfast:
        """Phase 3 Prompt Baking (fine-tuning): lr 1e-4, λ 0.2, τ 30, kl 0."""
        return cls._preset("baking", params, overrides)

    @classmethod
    def rl(cls, params: Iterable[Any], **overrides: Any) -> MuonGrokfast:
        """Phase 3 Quiet-STaR RL: lr 5e-4, λ 0.1, τ 25 (tighter), kl 0.1."""
        return cls._preset("rl", params, overrides)

    @classmethod
    def from_config(cls, params: Iterable[Any], cfg: OptimizerConfig, **kwargs: Any) -> MuonGrokfast:
        """Build from a profile's OptimizerConfig; kwargs set what it does not carry (qk_modules, …)."""
        fields = ("muon_lr", "adamw_lr", "weight_decay", "grokfast_alpha", "grokfast_lambda",
                  "qk_clip_threshold", "kl_coefficient")
        return cls(params, **{f: getattr(cfg, f) for f in fields}, **kwargs)

    # --- groups --------------------------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a user group: its parameters are split by role into one internal group per role."""
        (user,) = normalise_params([param_group])
        values = {**self._group_values, **{k: v for k, v in user.items() if k != "params"}}
        _check_group_values(values, prefix=f"params[{self._user_groups_added}].")
        self._user_groups_added += 1
        seen = {id(p) for group in self.param_groups for p in group["params"]}
        for name, p in user["params"]:
            if id(p) in seen:
                raise InvalidSpecError("appears in more than one param group (or twice in one)",
                                       field=name or f"param {tuple(p.shape)}")
            seen.add(id(p))
        first = sum(len(g["params"]) for g in self.param_groups)
        by_role, untagged = split_by_role(user["params"], first_index=first)
        self._untagged += untagged
        for role, tensors in by_role.items():
            self._add_role_group(role, tensors, values)
        if not self._constructing:
            self._warn_untagged()

    def _add_role_group(self, role: str, tensors: list[torch.Tensor], values: Mapping[str, Any]) -> None:
        algorithm = algorithm_of(role)
        group = {"params": tensors, "role": role, "algorithm": algorithm,
                 "lr": values[f"{algorithm}_lr"], "weight_decay": values["weight_decay"],
                 "grokfast_alpha": values["grokfast_alpha"], "grokfast_lambda": values["grokfast_lambda"]}
        # The sub-optimizer fills its own defaults into this very dict and keeps it; so does this one,
        # which is what lets a scheduler's edit of param_groups[i]["lr"] reach the sub-optimizer.
        if algorithm == "muon":
            if self._muon is None:
                self._muon = Muon([group], **self._muon_kwargs)
            else:
                self._muon.add_param_group(group)
        elif self._adamw is None:
            self._adamw = AdamW([group], **self._adamw_kwargs)
        else:
            self._adamw.add_param_group(group)
        self.param_groups.append(group)

    def _warn_untagged(self) -> None:
        if self._untagged:
            shown = ", ".join(self._untagged[:20])
            more = f" and {len(self._untagged) - 20} more" if len(self._untagged) > 20 else ""
            logger.warning("%d parameter(s) carry no af_role and go to AdamW: %s%s",
                           len(self._untagged), shown, more)
            self._untagged = []

    def _subs(self) -> list[Optimizer]:
        return [opt for opt in (self._muon, self._adamw) if opt is not None]

    def _sub(self, algorithm: str) -> Optimizer:
        opt = self._muon if algorithm == "muon" else self._adamw
        assert opt is not None, algorithm  # a group of that algorithm exists, so its optimizer does
        return opt

    def attach_qk_modules(self, modules: Iterable[QKClipTarget]) -> None:
        """Set (replace, so attaching twice does not clip twice) the attention modules QK-clip acts on."""
        self._qk_targets = check_targets(modules)

    # --- step ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # Grokfast on the raw gradients, in place, so clipping and both optimizers see the filtered ones.
        for group in self.param_groups:
            if group["grokfast_lambda"] == 0:
                continue
            grads, emas = [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if EMA_KEY not in state:
                    state[EMA_KEY] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                grads.append(p.grad)
                emas.append(state[EMA_KEY])
            grokfast_ema_(grads, emas, alpha=group["grokfast_alpha"], lam=group["grokfast_lambda"])

        # Clip the global norm of what the optimizers will actually use.
        if self.max_grad_norm is not None:
            with_grad = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            self.last_grad_norm = clip_grad_norm_(with_grad, self.max_grad_norm)

        for opt in self._subs():
            opt.step()

        # QK-clip last, on the weights the step just wrote, using the logits recorded in this step's forwards.
        self.last_max_logits = apply_qk_clip(self._qk_targets, self.qk_clip_threshold)
        return loss

    # --- state ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """{"state": {index: {...}}, "param_groups": [...]}, torch's layout over this optimizer's groups.

        A parameter's entry merges its Grokfast EMA with its Muon (momentum_buffer) or AdamW (step,
        exp_avg, exp_avg_sq) state. Tensors are the live buffers, as in torch; serialise before stepping.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state: dict[int, dict[str, Any]] = {}
        for group in self.param_groups:
            sub_state = self._sub(group["algorithm"]).state
            for p in group["params"]:
                merged = {**self.state.get(p, {}), **sub_state.get(p, {})}
                if merged:
                    state[index[id(p)]] = merged
        state_dict = {"state": state, "param_groups": groups}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            state_dict = post_hook(self, state_dict) or state_dict
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Inverse of state_dict(); the group layout (roles, sizes, order) must match this optimizer's."""
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            state_dict = pre_hook(self, state_dict) or state_dict
        saved_groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if not isinstance(saved_groups, list) or not isinstance(state_dict.get("state"), dict):
            raise InvalidSpecError("expected {'state': ..., 'param_groups': [...]}", field="state_dict")
        if len(saved_groups) != len(self.param_groups):
            raise InvalidSpecError(f"has {len(saved_groups)} param groups, this optimizer "
                                   f"{len(self.param_groups)}", field="state_dict.param_groups")
        saved_state = state_dict["state"]
        subs: dict[str, dict[str, Any]] = {}
        emas: dict[torch.Tensor, torch.Tensor] = {}
        for i, (cur, saved) in enumerate(zip(self.param_groups, saved_groups)):
            where = f"state_dict.param_groups[{i}]"
            got = (saved.get("role"), saved.get("algorithm"), len(saved.get("params", ())))
            want = (cur["role"], cur["algorithm"], len(cur["params"]))
            if got != want:
                raise InvalidSpecError(f"(role, optimizer, size) is {got}, this optimizer's is {want}",
                                       field=where)
            sub = subs.setdefault(cur["algorithm"], {"state": {}, "param_groups": []})
            first_local = sum(len(g["params"]) for g in sub["param_groups"])
            local_ids = list(range(first_local, first_local + len(cur["params"])))
            for local, saved_id, p in zip(local_ids, saved["params"], cur["params"]):
                entry = dict(saved_state.get(saved_id, {}))
                for key, value in entry.items():
                    if isinstance(value, torch.Tensor) and key != "step" and value.shape != p.shape:
                        raise InvalidSpecError(f"state {key!r} has shape {tuple(value.shape)}, the parameter "
                                               f"{tuple(p.shape)}", field=f"state_dict.state[{saved_id}]")
                if EMA_KEY in entry:
                    emas[p] = entry.pop(EMA_KEY)
                if entry:
                    sub["state"][local] = entry
            sub["param_groups"].append({**{k: v for k, v in saved.items() if k != "params"},
                                        "params": local_ids})
        for algorithm, sub_state_dict in subs.items():
            self._sub(algorithm).load_state_dict(sub_state_dict)

        # The sub-optimizers now hold fresh group dicts; share them again, in this optimizer's order.
        fresh = {algorithm: iter(self._sub(algorithm).param_groups) for algorithm in subs}
        self.param_groups = [next(fresh[g["algorithm"]]) for g in self.param_groups]
        self.state = defaultdict(dict)
        for p, ema in emas.items():
            self.state[p][EMA_KEY] = ema.detach().to(device=p.device, dtype=p.dtype, copy=True)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)


__all__ = ["PRESETS", "MuonGrokfast"]
