"""TRMTitansMAGConfig: the Hugging Face config of the model family (DESIGN.md §5).

Every field is checked before anything is built; an error names the field. `ltm_slots` is the neural
memory's hidden width and fixes tensor shapes; `active_ltm_slots` (<= ltm_slots) is the capacity this model
uses — the unused units are masked, so models of different capacity share shapes and can be merged.

`layer_plan` is the path one call of the shared net takes through its `num_layers` MAG blocks: a list of
[slot, scale] steps, each `x = layers[slot](scale · x)`. None (the default) is every block once, in order, at
scale 1. EvoMerge's DFS merging (data-flow space, Akiba et al. 2024, arXiv 2403.13187) evolves it; the tensor
shapes never change, so a model with a plan can still be merged weight by weight.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

from transformers import PreTrainedConfig

from shared.errors import InvalidSpecError


def _check(cond: bool, field: str, message: str) -> None:
    if not cond:
        raise InvalidSpecError(message, field=field)


def check_layer_plan(plan: Any, num_layers: int) -> list[list] | None:
    """The plan in canonical form ([[int, float], ...]) or None; InvalidSpecError naming `layer_plan` when a
    step is malformed, a slot is outside [0, num_layers), a scale is not finite and > 0, or the length is
    outside 1..4·num_layers."""
    if plan is None:
        return None
    limit = 4 * num_layers
    _check(isinstance(plan, (list, tuple)) and 1 <= len(plan) <= limit, "layer_plan",
           f"must be None or a list of 1..{limit} [slot, scale] steps (4 × num_layers), got {plan!r}")
    steps = []
    for i, step in enumerate(plan):
        _check(isinstance(step, (list, tuple)) and len(step) == 2, "layer_plan",
               f"step {i} must be a [slot, scale] pair, got {step!r}")
        slot, scale = step
        _check(isinstance(slot, int) and not isinstance(slot, bool) and 0 <= slot < num_layers, "layer_plan",
               f"step {i}: slot must be an integer in [0, num_layers={num_layers}), got {slot!r}")
        _check(isinstance(scale, Real) and not isinstance(scale, bool) and math.isfinite(scale) and scale > 0,
               "layer_plan", f"step {i}: scale must be a finite number > 0, got {scale!r}")
        steps.append([slot, float(scale)])
    return steps


class TRMTitansMAGConfig(PreTrainedConfig):
    model_type = "trm_titans_mag"

    def __init__(self, vocab_size: int = 50257, hidden_dim: int = 512, num_layers: int = 8, num_heads: int = 8,
                 max_seq_len: int = 512, window: int = 256, persistent_tokens: int = 16, ltm_slots: int = 2048,
                 active_ltm_slots: int | None = None, memory_dim: int = 64, memory_chunk_size: int = 64,
                 memory_theta_max: float = 1.0, n_latent_steps: int = 3, t_cycles: int = 2, n_sup: int = 4,
                 act_threshold: float = 0.95, dropout: float = 0.0, mlp_ratio: int = 4, rope_base: float = 10000.0,
                 tie_word_embeddings: bool = True, layer_plan: list | None = None, **kwargs: Any):
        ints = dict(vocab_size=vocab_size, hidden_dim=hidden_dim, num_layers=num_layers, num_heads=num_heads,
                    max_seq_len=max_seq_len, window=window, ltm_slots=ltm_slots, memory_dim=memory_dim,
                    memory_chunk_size=memory_chunk_size, n_latent_steps=n_latent_steps, t_cycles=t_cycles,
                    n_sup=n_sup, mlp_ratio=mlp_ratio)
        for name, value in ints.items():
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name,
                   f"must be an integer >= 1, got {value!r}")
        _check(isinstance(persistent_tokens, int) and persistent_tokens >= 0, "persistent_tokens",
               f"must be an integer >= 0, got {persistent_tokens!r}")
        _check(hidden_dim % num_heads == 0, "hidden_dim",
               f"({hidden_dim}) must be divisible by num_heads ({num_heads})")
        _check((hidden_dim // num_heads) % 2 == 0, "hidden_dim",
               f"per-head width {hidden_dim // num_heads} must be even (rotary embeddings)")
        active = ltm_slots if active_ltm_slots is None else active_ltm_slots
        _check(isinstance(active, int) and 1 <= active <= ltm_slots, "active_ltm_slots",
               f"must be in [1, ltm_slots={ltm_slots}], got {active!r}")
        _check(0 < act_threshold <= 1, "act_threshold", f"must be in (0, 1], got {act_threshold!r}")
        _check(0 <= dropout < 1, "dropout", f"must be in [0, 1), got {dropout!r}")
        _check(memory_theta_max >= 0, "memory_theta_max", f"must be >= 0, got {memory_theta_max!r}")
        plan = check_layer_plan(layer_plan, num_layers)
        self.vocab_size = vocab_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.max_seq_len = max_seq_len
        self.window = window
        self.persistent_tokens = persistent_tokens
        self.ltm_slots = ltm_slots
        self.active_ltm_slots = active
        self.memory_dim = memory_dim
        self.memory_chunk_size = memory_chunk_size
        self.memory_theta_max = float(memory_theta_max)
        self.n_latent_steps = n_latent_steps
        self.t_cycles = t_cycles
        self.n_sup = n_sup
        self.act_threshold = float(act_threshold)
        self.dropout = float(dropout)
        self.mlp_ratio = mlp_ratio
        self.rope_base = float(rope_base)
        self.layer_plan = plan
        # the names generic Hugging Face utilities look for
        self.hidden_size = hidden_dim
        self.num_hidden_layers = num_layers
        self.num_attention_heads = num_heads
        self.max_position_embeddings = max_seq_len
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    @classmethod
    def from_profile(cls, model_cfg, *, active_ltm_slots: int | None = None, act_threshold: float = 0.95,
                     **extra: Any) -> "TRMTitansMAGConfig":
        """From shared.config.schema.ModelConfig plus a variant's capacity and halting threshold."""
        fields = {**model_cfg.model_dump(), **extra}   # extra overrides (e.g. a test's shorter n_sup)
        return cls(**fields, active_ltm_slots=active_ltm_slots, act_threshold=act_threshold)
