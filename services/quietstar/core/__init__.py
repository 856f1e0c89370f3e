"""Phase 3b Quiet-STaR: the thinking tokens, Prompt Baking and its validation, the thought RL and its
anti-theater checks.

Checklist names owned here (tests/test_checklist_names.py): filter_by_strategy, evaluate, train_more_epochs,
train_test_split, measure_token_usage, generate_thoughts, score_coherence, mix_thoughts, anti_theater_check,
measure_coherence.
"""

from services.quietstar.core.baking import (
    BakingResult,
    BakingTrainer,
    KLTeacher,
    bake,
    encode_example,
    encode_prompt,
    filter_by_strategy,
    format_text,
    split_by_field,
    train_more_epochs,
    train_test_split,
)
from services.quietstar.core.baking_eval import evaluate, evaluate_baking, measure_token_usage, parse_output
from services.quietstar.core.rl import (
    MixingHead,
    anti_theater_check,
    generate_thoughts,
    measure_coherence,
    measure_theater,
    mix_thoughts,
    quietstar_step,
    score_coherence,
)
from services.quietstar.core.tokens import add_thinking_tokens

__all__ = [
    "MixingHead", "anti_theater_check", "generate_thoughts", "measure_coherence", "measure_theater", "mix_thoughts",
    "quietstar_step", "score_coherence",
    "BakingResult", "BakingTrainer", "KLTeacher", "add_thinking_tokens", "bake", "encode_example", "encode_prompt",
    "evaluate", "evaluate_baking", "filter_by_strategy", "format_text", "measure_token_usage", "parse_output",
    "split_by_field", "train_more_epochs", "train_test_split",
]
