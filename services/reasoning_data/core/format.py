"""The reasoning-data example and its format rules: one owner for every backend, the validator and the artifact.

An example is one (source item, strategy) pair:

    id          "<source_id>#<strategy>" — unique; deterministic, so a redone unit writes the same ids
    strategy    one of the 10 strategy names (bare, e.g. "doubt")
    prompt      the question as the student model will see it
    reasoning   "[thinking] … [/endthinking]" holding at least one strategy token (the example's own)
    answer      the final answer (normalised like the dataset's gold: a number, "yes"/"no", code)
    source      the dataset it came from (GSM8K, SVAMP, ASDiv, StrategyQA, MBPP, …)
    source_id   the dataset record's id; the train/val split is by source_id, so all strategy variants of
                one problem land on the same side
    gold        the dataset's gold answer ("" when the source has none)
    verified    True when `answer` was checked against `gold` (numbers compared as numbers)
    origin      "offline" | "openai:<model>" | "local:<dir>"
    structure   strategy-specific verified content (offline backend) that the structural validator
                re-checks; {} for backends that write free text
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.data.special_tokens import (
    SPECIAL_TOKENS,
    STRATEGIES,
    STRATEGY_TOKENS,
    THINKING_CLOSE,
    THINKING_OPEN,
    strategy_token,
)

__all__ = [
    "Example", "SPECIAL_TOKENS", "STRATEGIES", "STRATEGY_TOKENS", "THINKING_CLOSE", "THINKING_OPEN",
    "answers_match", "check_example", "example_id", "normalise_answer", "wrap", "strategy_token",
]

# Rejection reasons (counted per reason in the quality report); backends add their own.
NO_WRAPPER = "no_thinking_wrapper"
NO_STRATEGY_TOKEN = "no_strategy_token"
WRONG_STRATEGY_TOKEN = "missing_own_strategy_token"
EMPTY_ANSWER = "empty_answer"
EMPTY_PROMPT = "empty_prompt"
WRONG_ANSWER = "answer_mismatch"
UNKNOWN_STRATEGY = "unknown_strategy"
NESTED_WRAPPER = "nested_or_repeated_wrapper"


@dataclass(frozen=True)
class Example:
    id: str
    strategy: str
    prompt: str
    reasoning: str
    answer: str
    source: str
    source_id: str
    gold: str = ""
    verified: bool = False
    origin: str = "offline"
    structure: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Example":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def example_id(source_id: str, strategy: str) -> str:
    return f"{source_id}#{strategy}"


def wrap(body: str) -> str:
    """`[thinking] body [/endthinking]` — the one place the wrapper is written."""
    return f"{THINKING_OPEN} {body.strip()} {THINKING_CLOSE}"


_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")


def normalise_answer(text: str) -> str:
    """Numbers as canonical numbers ("1,234.50" → "1234.5", "7.0" → "7"), yes/no lower-case, else stripped."""
    s = str(text).strip()
    low = s.lower().rstrip(".")
    if low in ("yes", "no", "true", "false"):
        return {"true": "yes", "false": "no"}.get(low, low)
    t = s.replace(",", "").replace("$", "").rstrip(".")
    if _NUMBER.match(t):
        value = float(t)
        if math.isfinite(value) and value == int(value) and abs(value) < 2**53:
            return str(int(value))
        return repr(value)
    return s


def answers_match(answer: str, gold: str) -> bool:
    """Equal after normalisation; numbers within 1e-6 relative (equations in float arithmetic)."""
    a, g = normalise_answer(answer), normalise_answer(gold)
    if a == g:
        return True
    try:
        x, y = float(a), float(g)
    except ValueError:
        return False
    return math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)


def check_example(ex: Example) -> str | None:
    """The format rules every example obeys, whatever its backend: None when well formed, else the reason.

    The checklist's check (wrapper present, ≥ 1 strategy token) plus: the wrapper opens first and closes
    last exactly once, the example's own strategy token is inside it, prompt and answer are non-empty, and
    a verified example's answer matches its gold.
    """
    if ex.strategy not in STRATEGIES:
        return UNKNOWN_STRATEGY
    if not ex.prompt.strip():
        return EMPTY_PROMPT
    if not ex.answer.strip():
        return EMPTY_ANSWER
    r = ex.reasoning.strip()
    if THINKING_OPEN not in r or THINKING_CLOSE not in r:
        return NO_WRAPPER
    if r.count(THINKING_OPEN) != 1 or r.count(THINKING_CLOSE) != 1:
        return NESTED_WRAPPER
    if not (r.startswith(THINKING_OPEN) and r.endswith(THINKING_CLOSE)):
        return NO_WRAPPER
    inner = r[len(THINKING_OPEN):-len(THINKING_CLOSE)]
    if not any(tok in inner for tok in STRATEGY_TOKENS):
        return NO_STRATEGY_TOKEN
    if strategy_token(ex.strategy) not in inner:
        return WRONG_STRATEGY_TOKEN
    if ex.verified and not answers_match(ex.answer, ex.gold):
        return WRONG_ANSWER
    return None
