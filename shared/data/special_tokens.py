"""The 12 Phase-3 special tokens (DESIGN.md §5, checklist Phase 3 "Add Special Tokens"): the one owner.

`[thinking]` … `[/endthinking]` wrap visible reasoning and delimit Quiet-STaR's hidden thoughts (the same
two tokens, no 13th/14th); the 10 strategy tokens mark which reasoning move a step makes. Their order here
is the order `add_special_tokens` appends them, so on a tokenizer that has none of them yet the ids are
`len(tokenizer) + i` for SPECIAL_TOKENS[i] — stable across runs, which checkpoints and data shards rely on.

Phase 0/1 tokenizers never contain these tokens (nothing is reserved for them): Phase 3 adds them to the
champion's tokenizer and resizes the embedding, as the checklist does.
"""

from __future__ import annotations

from typing import Any

from shared.errors import FailedPreconditionError, InvalidSpecError

THINKING_OPEN = "[thinking]"
THINKING_CLOSE = "[/endthinking]"
# Names without brackets, in the checklist's order; shared.config.schema.STRATEGIES must equal this (tested).
STRATEGIES: tuple[str, ...] = (
    "step", "mece", "falsify", "expert", "orthogonal",
    "doubt", "bayesian", "multidomain", "correct", "uncertain",
)
STRATEGY_TOKENS: tuple[str, ...] = tuple(f"<{name}>" for name in STRATEGIES)
SPECIAL_TOKENS: tuple[str, ...] = (THINKING_OPEN, THINKING_CLOSE, *STRATEGY_TOKENS)


def strategy_token(name: str) -> str:
    """The token of a strategy given its bare name (`"doubt"` → `"<doubt>"`)."""
    if name not in STRATEGIES:
        raise InvalidSpecError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}", field="strategy")
    return f"<{name}>"


def add_special_tokens(tokenizer: Any) -> int:
    """Add the 12 tokens as special tokens; idempotent; returns how many were new to the vocabulary.

    Accepts a Hugging Face tokenizer (they become extra special tokens, so `skip_special_tokens` drops them
    and they are never split into sub-words) or a bare `tokenizers.Tokenizer`. Existing extra special tokens
    are kept (`replace_extra_special_tokens=False`): the HF default would silently forget them.
    """
    if hasattr(tokenizer, "backend_tokenizer") or hasattr(tokenizer, "extra_special_tokens"):
        added = tokenizer.add_special_tokens({"extra_special_tokens": list(SPECIAL_TOKENS)},
                                             replace_extra_special_tokens=False)
    else:
        from tokenizers import AddedToken

        added = tokenizer.add_special_tokens(
            [AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
             for t in SPECIAL_TOKENS])
    special_token_ids(tokenizer)  # fails loudly if any token did not end up as one id
    return int(added)


def special_token_ids(tokenizer: Any) -> dict[str, int]:
    """token → id for the 12 tokens; FailedPreconditionError if the tokenizer lacks any of them."""
    lookup = tokenizer.convert_tokens_to_ids if hasattr(tokenizer, "convert_tokens_to_ids") else \
        tokenizer.token_to_id
    unk = getattr(tokenizer, "unk_token_id", None)
    ids: dict[str, int] = {}
    missing = []
    for tok in SPECIAL_TOKENS:
        i = lookup(tok)
        # HF maps an unknown token to unk_token_id (GPT-2: <|endoftext|>), a bare tokenizer to None.
        if i is None or (unk is not None and i == unk):
            missing.append(tok)
        else:
            ids[tok] = int(i)
    if missing:
        raise FailedPreconditionError(f"the tokenizer lacks the Phase-3 special tokens {missing}; "
                                      f"call shared.data.special_tokens.add_special_tokens first")
    return ids
