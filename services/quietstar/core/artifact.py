"""The Phase-3 model as it travels: the baked and thought-trained model, its tokenizer with the 12 tokens,
the mixing head and the thought settings — and generation from it with thoughts shown or hidden.

Layout of the `model` artifact (and of a local folder written by `save_quietstar`):

    config.json, model.safetensors   the TRMTitansMAG (shared.model.save_model)
    tokenizer/                       the tokenizer, `[thinking]`, `[/endthinking]` and the 10 strategy tokens added
    mixing_head.safetensors          MixingHead weights (safetensors, never a pickle)
    quietstar.json                   {"format": 1, "thought_length", "num_thoughts", "lookahead_tokens",
                                      "hidden_dim", "token_ids": {token: id}}

`QuietStarModel.generate(text)` writes the answer the way the model was trained to: the prompt is
`{text}\\n` (the baking format), and every visible token is chosen from the mixture of the prediction
with a hidden thought and without it (Quiet-STaR inference, `generate.generate_with_thoughts`).
`show_thoughts=True` puts each hidden thought before the token it preceded, wrapped in `[thinking]` …
`[/endthinking]`; hidden, the text is only what the model wrote (which itself holds the visible
`[thinking] … [/endthinking]` reasoning that baking taught).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from services.quietstar.core.baking import encode_prompt
from services.quietstar.core.rl import MixingHead, ThoughtTokens
from shared.data.special_tokens import SPECIAL_TOKENS, THINKING_CLOSE, THINKING_OPEN, special_token_ids
from shared.data.tokenizer import load_tokenizer, save_tokenizer
from shared.errors import FailedPreconditionError
from shared.model import load_model, save_model
from shared.storage.formats import load_tensors, save_tensors

__all__ = ["HEAD_FILE", "SETTINGS_FILE", "QuietStarModel", "load_quietstar", "save_quietstar", "thought_tokens"]

HEAD_FILE = "mixing_head.safetensors"
SETTINGS_FILE = "quietstar.json"
FORMAT = 1


def thought_tokens(tokenizer: Any) -> ThoughtTokens:
    """The thought delimiters and the padding id of a tokenizer that has the 12 tokens."""
    ids = special_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return ThoughtTokens(start_id=ids[THINKING_OPEN], end_id=ids[THINKING_CLOSE], pad_id=int(pad or 0))


@dataclass
class QuietStarModel:
    model: Any
    head: MixingHead | None
    tokenizer: Any
    settings: dict[str, Any]

    @property
    def tokens(self) -> ThoughtTokens:
        return thought_tokens(self.tokenizer)

    def generate(self, text: str, *, max_new_tokens: int = 64, show_thoughts: bool = False,
                 thoughts: bool = True, temperature: float = 0.0, seed: int = 0) -> str:
        """The model's continuation of `{text}\\n` (special tokens kept). thoughts=False: plain greedy /
        sampled decoding without hidden thoughts (the mixing head unused)."""
        from services.quietstar.core.baking_eval import sample_outputs
        from services.quietstar.core.generate import generate_with_thoughts, render

        prompt = encode_prompt(self.tokenizer, {"prompt": text})
        room = max(1, int(self.model.config.max_seq_len) - max_new_tokens)
        prompt = prompt[-room:]
        if thoughts and self.head is None:
            raise FailedPreconditionError("this model has no mixing head (no Phase-3 files): generate without "
                                          "thoughts")
        if not thoughts:
            (out,) = sample_outputs(self.model, self.tokenizer, [prompt], max_new_tokens=max_new_tokens,
                                    temperature=temperature, seed=seed)
            return self.tokenizer.decode(out, skip_special_tokens=False)
        (gen,) = generate_with_thoughts(self.model, self.head, [prompt], max_new_tokens=max_new_tokens,
                                        thought_length=int(self.settings["thought_length"]), tokens=self.tokens,
                                        eos_id=self.tokenizer.eos_token_id, temperature=temperature, seed=seed)
        return render(self.tokenizer, gen, self.tokens, show_thoughts=show_thoughts)


def save_quietstar(model: Any, head: MixingHead, tokenizer: Any, settings: dict[str, Any],
                   directory: str | Path) -> Path:
    """Write the layout in the module docstring into `directory` (created)."""
    out = save_model(model, directory)
    save_tokenizer(tokenizer, out / "tokenizer")
    save_tensors(out / HEAD_FILE, head_state(head))
    ids = special_token_ids(tokenizer)
    (out / SETTINGS_FILE).write_text(json.dumps({"format": FORMAT, **settings, "hidden_dim": head_hidden(head),
                                                 "token_ids": ids}, indent=2, sort_keys=True))
    return out


def head_hidden(head: MixingHead) -> int:
    return int(head.net[0].in_features // 2)


def load_quietstar(directory: str | Path, *, device: str = "cpu") -> QuietStarModel:
    """Load a folder written by `save_quietstar` (or a fetched `model` artifact of the quietstar phase)."""
    root = Path(directory)
    settings_path = root / SETTINGS_FILE
    if not settings_path.is_file():
        raise FailedPreconditionError(f"{root} is not a Phase-3 model: {SETTINGS_FILE} is missing")
    settings = json.loads(settings_path.read_text())
    if settings.get("format") != FORMAT:
        raise FailedPreconditionError(f"{settings_path}: format {settings.get('format')!r}, expected {FORMAT}")
    model = load_model(root).to(device).eval()
    tokenizer = load_tokenizer(root / "tokenizer")
    ids = special_token_ids(tokenizer)
    if ids != {k: int(v) for k, v in settings["token_ids"].items()} or set(ids) != set(SPECIAL_TOKENS):
        raise FailedPreconditionError(f"{root}: the tokenizer's thinking-token ids {ids} differ from "
                                      f"{SETTINGS_FILE}'s {settings['token_ids']}")
    if int(settings["hidden_dim"]) != int(model.config.hidden_dim):
        raise FailedPreconditionError(f"{root}: mixing head for hidden size {settings['hidden_dim']}, model has "
                                      f"{model.config.hidden_dim}")
    head = MixingHead(int(settings["hidden_dim"]))
    tensors, _ = load_tensors(root / HEAD_FILE)
    head.load_state_dict(tensors, strict=True)
    return QuietStarModel(model, head.to(device).eval(), tokenizer, settings)


def head_state(head: MixingHead) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
