"""A teacher that is any Hugging Face causal LM directory, run locally with transformers (no network).

Same prompts and parser as the HTTP backend: the messages go through the tokenizer's chat template when it
has one, else they are joined as plain text. Records are generated in left-padded batches. Costs nothing
(billed 0); `calls` counts the records generated.

Decoding keeps special tokens: once Phase 3's 12 tokens are in a teacher's tokenizer they are special, and
`skip_special_tokens=True` would silently delete `[thinking]` and the strategy tokens from every reply.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from shared.data.records import Record
from shared.errors import AcceleratorUnavailableError, InvalidSpecError, NotFoundError

from .format import EMPTY_PROMPT, strategy_token
from .prompts import BackendResult, build_messages, parse_reply

log = logging.getLogger(__name__)

__all__ = ["LocalHFBackend", "PROMPT_TOO_LONG", "format_prompt"]

PROMPT_TOO_LONG = "prompt_too_long"  # prompt + max_new_tokens exceed the model's context


def format_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, bool]:
    """(prompt text, whether it came from the chat template). A template already holds any BOS token."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return str(text), True
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant: ", False


def _context_length(config: Any) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class LocalHFBackend:
    """Generate examples with a local causal LM. Greedy when temperature is 0, else sampled."""

    def __init__(self, model_dir: str | Path, *, max_new_tokens: int = 256, device: str = "cpu",
                 temperature: float = 0.0, batch_size: int = 8):
        d = Path(model_dir)
        if not d.is_dir():
            raise NotFoundError(f"the local teacher model directory {d} does not exist (model_dir)")
        if not (d / "config.json").is_file():
            raise NotFoundError(f"{d} is not a Hugging Face model directory: it has no config.json "
                                f"(model_dir; write one with save_pretrained)")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InvalidSpecError(f"must be an integer ≥ 1, got {max_new_tokens!r}", field="max_new_tokens")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidSpecError(f"must be an integer ≥ 1, got {batch_size!r}", field="batch_size")
        if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 10:
            raise InvalidSpecError(f"must be a number in [0, 10], got {temperature!r}", field="temperature")
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise InvalidSpecError(f"not a torch device: {device!r} ({exc})", field="device") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise AcceleratorUnavailableError(f"device {device!r} was asked for the local teacher but CUDA "
                                              f"is not available; use device='cpu'")
        self.model_dir = d
        self.origin = f"local:{d}"
        self.max_new_tokens = max_new_tokens
        self.temperature = float(temperature)
        self.batch_size = batch_size
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from shared.model.io import safetensors_weight_files

        # safetensors only (DESIGN §8: a pickle is never unpickled): without this check transformers would
        # torch.load a pytorch_model.bin, or any shard an index or config.json names
        safetensors_weight_files(d)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
            # float32 on CPU (half precision there is slow or unsupported); the saved dtype on an accelerator.
            dtype = torch.float32 if self.device.type == "cpu" else "auto"
            self.model = AutoModelForCausalLM.from_pretrained(str(d), local_files_only=True, dtype=dtype,
                                                              use_safetensors=True)
        except (OSError, ValueError, KeyError) as exc:
            raise InvalidSpecError(f"cannot load a causal LM and its tokenizer from {d}: {exc}",
                                   field="model_dir") from None
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"  # generation continues from the right end of every row
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self._context = _context_length(self.model.config)

    def __repr__(self) -> str:
        return f"LocalHFBackend(model_dir={str(self.model_dir)!r}, device={str(self.device)!r})"

    def prompt_ids(self, record: Record, strategy: str) -> list[int]:
        """Token ids of the prompt for one record (chat template when the tokenizer has one)."""
        text, templated = format_prompt(self.tokenizer, build_messages(record, strategy))
        return self.tokenizer(text, add_special_tokens=not templated)["input_ids"]

    def decode_reply(self, ids: Sequence[int]) -> tuple[str, int]:
        """(text, tokens used) of generated ids, cut at the first end-of-sequence; special tokens kept."""
        ids = list(ids)
        used = len(ids)
        for i, t in enumerate(ids):
            if t in self._eos_ids:
                ids, used = ids[:i], i + 1
                break
        return self.tokenizer.decode(ids, skip_special_tokens=False), used

    def complete(self, prompts: Sequence[Sequence[int]]) -> list[tuple[str, int]]:
        """(reply, completion tokens) per prompt, generated in left-padded batches of batch_size."""
        out: list[tuple[str, int]] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start:start + self.batch_size]
            out.extend(self.decode_reply(new) for new in self._generate_batch(batch))
        return out

    @torch.inference_mode()
    def _generate_batch(self, batch: Sequence[Sequence[int]]) -> list[list[int]]:
        pad = self.tokenizer.pad_token_id
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + list(ids) for ids in batch], device=self.device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=self.device)
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "pad_token_id": pad}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        out = self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)  # (B, width + new)
        return [row[width:].tolist() for row in out]

    def generate(self, records: Sequence[Record], strategy: str) -> BackendResult:
        """One example of `strategy` per record, or a counted rejection; examples keep the input order."""
        strategy_token(strategy)  # an unknown strategy fails before any generation
        result = BackendResult()
        todo: list[tuple[Record, list[int]]] = []
        for record in records:
            if not record.prompt.strip():  # a language-modelling record: nothing to ask
                result.rejections[EMPTY_PROMPT] += 1
                continue
            ids = self.prompt_ids(record, strategy)
            if self._context is not None and len(ids) + self.max_new_tokens > self._context:
                result.rejections[PROMPT_TOO_LONG] += 1
                continue
            todo.append((record, ids))
        replies = self.complete([ids for _, ids in todo])
        for (record, ids), (reply, used) in zip(todo, replies):
            result.calls += 1
            result.prompt_tokens += len(ids)
            result.completion_tokens += used
            example, reason = parse_reply(reply, record, strategy, self.origin)
            if example is not None:
                result.examples.append(example)
            else:
                assert reason is not None
                result.rejections[reason] += 1
        log.info("%s %s: %d records → %d examples, rejected %s", self.origin, strategy, len(records),
                 len(result.examples), dict(result.rejections) or "none")
        return result
