"""Measure the activation memory of one training sample without running the model for real.

Method: run forward + loss for a batch of ONE sample under `torch.autograd.graph.saved_tensors_hooks`
and add up the bytes of every distinct storage autograd keeps for backward (parameters and buffers
excluded: they are counted as weights). The probe runs on a copy of the model whose parameters and
buffers live on the meta device, so shapes and dtypes propagate but no memory is allocated and no FLOP is
spent; a model that cannot run on meta (data-dependent shapes, `.item()`, an op without a meta kernel)
is probed for real on a CPU copy at batch 1.

On top of the saved tensors the caller holds the model output (logits) through backward, and backward
begins by materialising the loss's gradient w.r.t. that output; for cross-entropy that is two
output-sized tensors (d loss/d log-probs, then d loss/d logits). So per sample we add the output once
if autograd did not already save it, plus two output-sized gradient buffers. For language models with a
large vocabulary these terms dominate, which is why they are not left to a fudge factor.

Attention: on meta, `F.scaled_dot_product_attention` would take its math path and save the (T × T)
attention matrix, which the fused kernels that CPU and CUDA pick for ordinary inputs never keep (they
save q, k, v, the output and a log-sum-exp). The probe therefore routes 4-D SDPA calls on meta tensors to
the memory-efficient kernel's meta implementation, so its saved tensors are those of a fused kernel.

Scaling by batch is linear: everything counted here is batch-sized. Batch-independent saved tensors
(rare) are then over-counted, which errs on the safe side.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from shared.errors import InvalidSpecError
from shared.utils.model_size import storage_key, storage_nbytes

log = logging.getLogger(__name__)

ExampleInputFn = Callable[[int], Any]
LossFn = Callable[[Any, Any], torch.Tensor]


@dataclass(frozen=True)
class ActivationProfile:
    """Bytes one sample adds during a training step, and how they were measured."""

    saved_bytes: int  # storages autograd saved for backward (not parameters/buffers)
    output_bytes: int  # the model output tensor the loss reads (logits for an LM)
    output_held_bytes: int  # output bytes not already among the saved ones (held by the caller)
    probe_device: str  # "meta" or the device of the real fallback run

    @property
    def per_sample(self) -> int:
        # output held by the caller + two output-sized gradient buffers at the start of backward
        return self.saved_bytes + self.output_held_bytes + 2 * self.output_bytes


def infer_vocab_size(model: nn.Module) -> int | None:
    """The model's token vocabulary, from its config, its input embedding or its first nn.Embedding."""
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and vocab > 0:
        return vocab
    get_emb = getattr(model, "get_input_embeddings", None)
    if callable(get_emb):
        try:
            emb = get_emb()
        except (NotImplementedError, AttributeError):
            emb = None
        if isinstance(emb, nn.Embedding):
            return emb.num_embeddings
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            return module.num_embeddings
    return None


def _meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose parameters and buffers are meta tensors, made without copying their data.

    Seeding deepcopy's memo with a meta twin of every parameter and buffer means deepcopy never reads the
    originals, and tied weights stay tied (one id, one twin).
    """
    memo: dict[int, Any] = {}
    for p in model.parameters():
        if id(p) not in memo:
            twin = torch.empty_like(p, device="meta")
            memo[id(p)] = nn.Parameter(twin, requires_grad=p.requires_grad)
    for b in model.buffers():
        if id(b) not in memo:
            memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def _real_copy(model: nn.Module) -> nn.Module:
    """A CPU copy to run for real (the model itself must stay untouched: BatchNorm stats, grads)."""
    on_meta = any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    if on_meta:
        # Values are garbage, which is fine for counting bytes of shape-determined activations.
        return _meta_copy(model).to_empty(device="cpu")
    return copy.deepcopy(model).to("cpu")


def _to_device(obj: Any, device: str) -> Any:
    return tree_map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, obj)


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def extract_output_tensor(output: Any) -> torch.Tensor:
    """The tensor a loss would read from a model output: a tensor, `.logits`, ["logits"] or the first."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, dict):
        if isinstance(output.get("logits"), torch.Tensor):
            return output["logits"]
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    raise InvalidSpecError(
        f"cannot find a tensor in the model output of type {type(output).__name__}; pass loss_fn",
        field="loss_fn",
    )


def _default_loss(out: torch.Tensor, vocab_size: int | None) -> torch.Tensor:
    if vocab_size is not None and out.dim() >= 2 and out.shape[-1] == vocab_size and out.is_floating_point():
        # Next-token cross-entropy; target values are irrelevant to memory, zeros are always in range.
        targets = torch.zeros(out.shape[:-1].numel(), dtype=torch.long, device=out.device)
        return F.cross_entropy(out.reshape(-1, vocab_size), targets)
    if vocab_size is not None:
        # Cross-entropy's log-probs would be missed: say so rather than under-count quietly.
        log.warning("model output %s is not (…, vocab_size=%d) logits; probing with output.sum() as the "
                    "loss (pass loss_fn for the real one)", tuple(out.shape), vocab_size)
    return out.sum()


class _FusedAttentionOnMeta(TorchFunctionMode):
    """Make SDPA on meta tensors save what a fused kernel saves (see the module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            routed = _efficient_sdpa(*args, **kwargs)
            if routed is not None:
                return routed
        return func(*args, **kwargs)


def _efficient_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                    enable_gqa=False):
    if not (query.is_meta and query.dim() == 4 and key.dim() == 4 and value.dim() == 4):
        return None
    if enable_gqa and query.shape[1] != key.shape[1]:
        return None  # grouped-query shapes: leave to the default path
    bias = attn_mask
    if bias is not None and bias.dtype == torch.bool:
        bias = torch.zeros(bias.shape, dtype=query.dtype, device=query.device)  # values are irrelevant
    out = torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, bias, True, dropout_p, is_causal, scale=scale)
    return out[0]


def _probe_once(
    model: nn.Module,
    device: str,
    make_input: Callable[[], Any],
    loss_fn: LossFn | None,
    vocab_size: int | None,
) -> ActivationProfile:
    owned = {storage_key(t) for t in list(model.parameters()) + list(model.buffers())}
    saved: dict[tuple, int] = {}
    keep_alive: list[torch.Tensor] = []  # storage keys are addresses: keep them from being reused

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        if key not in owned and key not in saved:
            saved[key] = storage_nbytes(t)
            keep_alive.append(t)
        return t

    model.train()  # training-mode activations (dropout masks, batch-norm statistics)
    inputs = _to_device(make_input(), device)
    attention = _FusedAttentionOnMeta() if device == "meta" else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), attention, \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = _call(model, inputs)
        out = extract_output_tensor(output)
        loss = loss_fn(output, inputs) if loss_fn is not None else _default_loss(out, vocab_size)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise InvalidSpecError("the loss must be a scalar tensor", field="loss_fn")
    out_bytes = storage_nbytes(out)
    held = 0 if storage_key(out) in saved else out_bytes
    return ActivationProfile(
        saved_bytes=sum(saved.values()),
        output_bytes=out_bytes,
        output_held_bytes=held,
        probe_device=device,
    )


def _linear_input_fn(model: nn.Module, seq_len: int) -> ExampleInputFn | None:
    """Input for a model that visibly starts with a Linear layer (nn.Linear, or an nn.Sequential whose
    first layer is one): (B, seq_len, in_features) floats. The checklist sizes `nn.Linear(512, 512)`
    this way; anything less obvious must say what it takes through example_input_fn."""
    first = model[0] if isinstance(model, nn.Sequential) and len(model) else model
    if not isinstance(first, nn.Linear):
        return None
    dtype = first.weight.dtype

    def make(batch: int) -> torch.Tensor:
        return torch.zeros(batch, seq_len, first.in_features, dtype=dtype)

    return make


def profile_activations(
    model: nn.Module,
    seq_len: int,
    *,
    vocab_size: int | None = None,
    example_input_fn: ExampleInputFn | None = None,
    loss_fn: LossFn | None = None,
) -> ActivationProfile:
    """Activation bytes of ONE training sample (see the module docstring for what is counted).

    Inputs: by default a LongTensor (1, seq_len) of token ids (the model must be a language model whose
    vocabulary is given or can be inferred) or, for a model that starts with nn.Linear, (1, seq_len,
    in_features) floats; otherwise `example_input_fn(batch_size)` returns the input (a tensor, a tuple
    of positional args or a dict of keyword args). `loss_fn(output, inputs)` replaces
    the default loss (cross-entropy on logits of width vocab_size, else output.sum()).
    """
    if example_input_fn is None and vocab_size is None and infer_vocab_size(model) is None:
        example_input_fn = _linear_input_fn(model, seq_len)
    if example_input_fn is None:
        # A language model: token ids in, logits over the vocabulary out.
        vocab_size = vocab_size if vocab_size is not None else infer_vocab_size(model)
        if vocab_size is None:
            raise InvalidSpecError(
                "the model has no token embedding to infer a vocabulary from; pass vocab_size for a "
                "language model, or example_input_fn(batch_size) returning its input",
                field="example_input_fn",
            )

        def make_input() -> torch.Tensor:
            return torch.zeros(1, seq_len, dtype=torch.long)

    else:
        # Any other model: only an explicit vocab_size makes the default loss cross-entropy.

        def make_input() -> Any:
            return example_input_fn(1)

    try:
        return _probe_once(_meta_copy(model), "meta", make_input, loss_fn, vocab_size)
    except InvalidSpecError:
        raise
    except Exception as exc:  # any op that cannot run on meta: measure for real instead
        log.info("meta-device activation probe failed (%s: %s); probing a CPU copy at batch 1",
                 type(exc).__name__, exc)
    return _probe_once(_real_copy(model), "cpu", make_input, loss_fn, vocab_size)
