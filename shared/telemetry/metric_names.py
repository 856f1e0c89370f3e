"""Metric names the checklist logs to W&B, as constants, so dashboards and code cannot drift apart.

Every name here appears in `spec/implementation-checklist.md` (a `wandb.log` call or a final-metrics
dict logged under "final/"); helpers build the parameterised ones (`baking/accuracy_<strategy>`,
`final/<metric>`). Phases may log more, but the names users look for are these.
"""

from __future__ import annotations

import re

from shared.errors import InvalidSpecError

# Phase 1: Cognate, per step / per epoch
TRAIN_LOSS = "train/loss"
TRAIN_PERPLEXITY = "train/perplexity"
VAL_LOSS = "val/loss"
VAL_ACCURACY = "val/accuracy"
# Phase 1 summary table
DIVERSITY_MODEL_COMPARISON = "diversity/model_comparison"

# Phase 2: EvoMerge, per generation
GENERATION = "generation"
BEST_FITNESS = "best_fitness"
DIVERSITY = "diversity"
IMPROVEMENT = "improvement"

# Phase 3: Prompt Baking
BAKING_LOSS = "baking/loss"
BAKING_EPOCH = "baking/epoch"
BAKING_VAL_ACCURACY = "baking/val_accuracy"
BAKING_ACCURACY_PREFIX = "baking/accuracy_"

# Phase 3: Quiet-STaR RL
RL_REWARD = "rl/reward"
RL_COHERENCE = "rl/coherence"
ANTI_THEATER_DIVERGENCE = "anti_theater/divergence"
ANTI_THEATER_ABLATION = "anti_theater/ablation"
ANTI_THEATER_CORRELATION = "anti_theater/correlation"

# Final metrics ("final/" + the keys of the checklist's final_metrics dicts)
FINAL_PREFIX = "final/"
FINAL_PERPLEXITY = "final/perplexity"
FINAL_GSM8K_ACC = "final/gsm8k_acc"
FINAL_ARC_ACC = "final/arc_acc"
FINAL_HALTING_STEPS = "final/halting_steps"
FINAL_LTM_USAGE = "final/ltm_usage"
FINAL_INFERENCE_TIME = "final/inference_time"
FINAL_COHERENCE = "final/coherence"
FINAL_THINKING_TOKEN_USAGE = "final/thinking_token_usage"
FINAL_COMPRESSION_RATIO = "final/compression_ratio"
FINAL_ACCURACY_DROP = "final/accuracy_drop"
FINAL_SPARSITY = "final/sparsity"
FINAL_INFERENCE_SPEEDUP = "final/inference_speedup"

_METRIC_SUFFIX = re.compile(r"^[a-z0-9_]+$")


def baking_accuracy(strategy: str) -> str:
    """`baking/accuracy_<strategy>` for a strategy given as "step" or as its token "<step>"."""
    name = strategy.strip().strip("<>").lower()
    if not _METRIC_SUFFIX.match(name):
        raise InvalidSpecError(f"strategy {strategy!r} is not a simple name like 'step' or '<step>'",
                               field="strategy")
    return BAKING_ACCURACY_PREFIX + name


def final(metric: str) -> str:
    """`final/<metric>` (the checklist logs its final_metrics dict under "final/")."""
    if not _METRIC_SUFFIX.match(metric):
        raise InvalidSpecError(f"final metric {metric!r} must be lower_snake_case", field="metric")
    return FINAL_PREFIX + metric


ALL_METRICS: frozenset[str] = frozenset(
    value for key, value in dict(globals()).items()
    if key.isupper() and isinstance(value, str) and not key.endswith("_PREFIX")
)
