"""Add the 12 Phase-3 tokens to the champion's tokenizer and give the model embedding rows for them.

The checklist's "Add Special Tokens" step: `add_special_tokens` on the tokenizer, `resize_token_embeddings`
on the model, and a printed parameter delta. What the checklist leaves open is what the new rows hold.
Hugging Face's default (`mean_resizing=True`) draws them from a normal around the mean embedding — noise.
Here every new row is set deterministically:

- `init="words"` (default): the mean of the existing rows of the token's description as the *old* tokenizer
  spells it (`[thinking]` → " thinking", `<mece>` → " mutually exclusive collectively exhaustive", …; see
  DESCRIPTIONS). The 12 tokens start distinct from each other and in the region of words with a related
  meaning. A description whose ids are all new or out of range falls back to the mean row.
- `init="mean"`: the mean of the existing rows (Hewitt 2021, "Initializing new word embeddings for
  pretrained language models"): with a tied head, a new token's initial logit is the average logit, so
  the model does not start by emitting it everywhere.

Both apply to the input embedding and, when the head is not tied to it, to the head's rows too (each from
its own matrix). "Existing rows" are the ids below the first new token's id, i.e. the tokenizer's vocabulary
before the tokens were added — never rows the model holds beyond the tokenizer (a vocabulary padded past
len(tokenizer) holds untrained rows).

Idempotent: a second call adds nothing, resizes nothing, rewrites no row and reports `added == 0` and a
zero delta. When the tokenizer already has the tokens but the model lacks rows for them (a tokenizer saved
after the tokens were added, a model saved before), the missing rows are created and initialised.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from shared.data.special_tokens import SPECIAL_TOKENS, add_special_tokens, special_token_ids
from shared.errors import FailedPreconditionError, InvalidSpecError
from shared.utils import get_model_size

__all__ = ["DESCRIPTIONS", "INITS", "add_thinking_tokens"]

log = logging.getLogger(__name__)

INITS = ("words", "mean")

# What each token means, in plain words; `init="words"` starts its row at these words' mean embedding.
DESCRIPTIONS: dict[str, str] = {
    "[thinking]": " thinking",
    "[/endthinking]": " end thinking",
    "<step>": " step by step",
    "<mece>": " mutually exclusive collectively exhaustive",
    "<falsify>": " falsify",
    "<expert>": " expert",
    "<orthogonal>": " orthogonal",
    "<doubt>": " doubt",
    "<bayesian>": " bayesian",
    "<multidomain>": " multi domain",
    "<correct>": " correct",
    "<uncertain>": " uncertain",
}
assert tuple(DESCRIPTIONS) == SPECIAL_TOKENS


def _encode(tokenizer: Any, text: str) -> list[int]:
    if hasattr(tokenizer, "backend_tokenizer") or hasattr(tokenizer, "convert_tokens_to_ids"):
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text).ids)   # a bare tokenizers.Tokenizer


def _vocab_size(tokenizer: Any) -> int:
    return len(tokenizer) if hasattr(tokenizer, "__len__") else int(tokenizer.get_vocab_size(with_added_tokens=True))


def _init_rows(weight: torch.Tensor, rows: dict[int, list[int]], n_old: int, init: str) -> None:
    """weight[new] = mean of weight[old ids] per new row (fallback: the mean of rows < n_old)."""
    with torch.no_grad():
        mean = weight[:n_old].float().mean(0)
        for new_id, source_ids in rows.items():
            usable = [i for i in source_ids if 0 <= i < n_old] if init == "words" else []
            value = weight[usable].float().mean(0) if usable else mean
            weight[new_id] = value.to(weight.dtype)


def add_thinking_tokens(model: nn.Module, tokenizer: Any, *, init: str = "words",
                        verbose: bool = True) -> dict[str, Any]:
    """Add `[thinking]`, `[/endthinking]` and the 10 strategy tokens; give the model initialised rows.

    Returns {"old_vocab", "new_vocab" (the model's embedding rows before/after), "added" (tokens new to the
    tokenizer), "initialised" (rows written), "parameter_delta" (unique parameters after − before, so a tied
    head counts once), "params_before", "params_after", "token_ids" (token → id), "init"}. Prints the
    checklist's "With tokens: N params (+delta)" line when `verbose`.
    """
    if init not in INITS:
        raise InvalidSpecError(f"must be one of {INITS}, got {init!r}", field="init")
    embed = model.get_input_embeddings()
    old_rows = int(embed.num_embeddings)
    params_before = get_model_size(model)["params"]
    n_tok_before = _vocab_size(tokenizer)
    present_before = {t: i for t, i in _safe_ids(tokenizer).items()}
    # The description ids come from the tokenizer as it is before this call: the words' own embeddings.
    descriptions = {tok: _encode(tokenizer, DESCRIPTIONS[tok]) for tok in SPECIAL_TOKENS}
    added = add_special_tokens(tokenizer)
    ids = special_token_ids(tokenizer)
    n_tok = _vocab_size(tokenizer)
    # Rows to write: tokens this call added, and any token whose id the model has no row for yet.
    fresh = {tok for tok in SPECIAL_TOKENS if tok not in present_before or ids[tok] >= old_rows}
    # Existing rows = the vocabulary below the first Phase-3 token's id (what the model was trained on).
    n_old = min(min(ids.values()), old_rows)
    if n_old < 1:
        raise FailedPreconditionError("the tokenizer has no token before the Phase-3 tokens: nothing to "
                                      "initialise the new rows from")
    if n_tok > old_rows:
        # mean_resizing=False: HF would draw the new rows from a normal around the mean; they are set below.
        model.resize_token_embeddings(n_tok, mean_resizing=False)
    new_rows = int(model.get_input_embeddings().num_embeddings)
    rows = {ids[tok]: descriptions[tok] for tok in SPECIAL_TOKENS if tok in fresh}
    if rows:
        embed_w = model.get_input_embeddings().weight
        _init_rows(embed_w, rows, n_old, init)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != embed_w.data_ptr():
            _init_rows(head.weight, rows, n_old, init)
            bias = getattr(head, "bias", None)
            if bias is not None:
                with torch.no_grad():
                    bias[list(rows)] = bias[:n_old].mean().to(bias.dtype)
    params_after = get_model_size(model)["params"]
    report = {"old_vocab": old_rows, "new_vocab": new_rows, "added": int(added), "initialised": len(rows),
              "parameter_delta": params_after - params_before, "params_before": params_before,
              "params_after": params_after, "token_ids": ids, "init": init,
              "tokenizer_size_before": n_tok_before, "tokenizer_size_after": n_tok}
    if verbose:
        print(f"Base model: {params_before:,} params")
        print(f"With tokens: {params_after:,} params (+{params_after - params_before})")
    log.info("thinking tokens: %d added to the tokenizer, %d rows initialised (%s), embedding %d → %d rows, "
             "+%d params", added, len(rows), init, old_rows, new_rows, params_after - params_before)
    return report


def _safe_ids(tokenizer: Any) -> dict[str, int]:
    """The Phase-3 tokens the tokenizer already has (a subset of the 12; empty for a Phase 0-2 tokenizer)."""
    lookup = tokenizer.convert_tokens_to_ids if hasattr(tokenizer, "convert_tokens_to_ids") else \
        tokenizer.token_to_id
    unk = getattr(tokenizer, "unk_token_id", None)
    out = {}
    for tok in SPECIAL_TOKENS:
        i = lookup(tok)
        if i is not None and (unk is None or i != unk):
            out[tok] = int(i)
    return out
