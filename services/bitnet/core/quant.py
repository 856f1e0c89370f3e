"""BitNet b1.58 quantization for TRMTitansMAG (DESIGN.md §5 Phase 4): BitLinear, per-row embedding codes, the
compression configs and the sparsity measure.

**BitLinear** replaces an nn.Linear y = W x + b:

    r   = sqrt(mean(x²) + ε)                      per token
    x̂   = g ⊙ x / r                               RMSNorm on the input (gain g, 1 at conversion)
    x_q = clip(round(x̂ · 127 / max|x̂|), −127, 127)          per-token absmax int8 activations
    W_q = clip(round(W / γ), −1, 1),  γ = mean|W|           per-tensor absmean ternary weights (RoundClip)
    y   = r · (W_q x_q) · γ · max|x̂| / 127 + b

The factor r puts back the scale the norm took out, so at conversion (g = 1, full precision) BitLinear
computes exactly the Linear it replaced: the pretrained function is the starting point and the norm only
conditions what the quantizers see (per-token absmax is scale-free anyway; g becomes a learned per-channel
smoothing). |W/γ| < ½ rounds to 0: `sparsity_threshold` 0.5, in units of γ, is that band.

**λ warm-up** (quantization-aware training): `lam` ∈ [0, 1] blends full precision into ternary,
W_eff = W + λ·(Q(W) − W) and x_eff = x̂ + λ·(Q(x̂) − x̂), the quantization residual detached (straight-through
estimator: the gradient flows to the latent full-precision W as if the quantizer were the identity). λ = 0 is
the Linear, λ = 1 the ternary layer.

**Frozen** (`freeze()`): the latent weight becomes ternary codes for the integer kernel
(services.bitnet.core.kernel: int8 activations × 2-bit weights, int32 accumulators, then the scales); the
layer stores the flat 2-bit (or base-3) packing and γ. A frozen layer computes y = r · kernel(x_q) + b in
float32 — the same computation in memory and after reloading the packed file, so their logits are equal.

**Embeddings and head**: per-row symmetric int8 (or int4) codes with one float scale per row
(`quantize_rows`); the model keeps their dequantized values, the artifact keeps codes and scales.
Neural-memory fast weights are not parameters and stay float; so do norms, biases, the halting head and the
initial states.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.errors import FailedPreconditionError, InvalidSpecError

__all__ = [
    "BitLinear", "QUANTIZABLE", "activation_quant", "bitlinear_modules", "convert_to_bitlinear",
    "get_compression_config", "get_conservative_compression_config", "measure_sparsity", "memory_init_parameters",
    "quantize_memory_inits", "quantize_rows",
    "set_lambda", "ternary_codes", "weight_scale",
]

EPS = 1e-6
ACT_MAX = 127
SPARSITY_THRESHOLD = 0.5   # RoundClip: |W/γ| below this rounds to 0
# Linear layers of a TRMTitansMAG block that become BitLinear (module name suffixes). The halting head, the
# embeddings and the LM head are handled elsewhere.
QUANTIZABLE = ("attn.q", "attn.k", "attn.v", "attn.o", "memory.to_k", "memory.to_v", "memory.to_q",
               "memory.to_rates", "gate", "up", "down")


def weight_scale(w: Tensor) -> Tensor:
    """γ = mean |W| (per tensor), never 0."""
    return w.detach().abs().mean().clamp(min=EPS)


def ternary_codes(w: Tensor, gamma: Tensor | None = None) -> Tensor:
    """RoundClip(W / γ, −1, 1) as int8."""
    g = weight_scale(w) if gamma is None else gamma
    return (w.detach() / g).round().clamp(-1, 1).to(torch.int8)


def activation_quant(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token absmax int8: (codes int8 (…, in) in [−127, 127], scale (…,) float32 with x ≈ codes · scale)."""
    amax = x.detach().abs().amax(-1).float().clamp(min=EPS)
    scale = amax / ACT_MAX
    codes = (x.detach().float() / scale.unsqueeze(-1)).round().clamp(-ACT_MAX, ACT_MAX).to(torch.int8)
    return codes, scale


class BitLinear(nn.Module):
    """A drop-in replacement for nn.Linear; see the module docstring."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.gain = nn.Parameter(torch.ones(in_features))
        self.register_buffer("lam", torch.zeros(()), persistent=True)
        self.frozen = False
        self._kernel = None            # KernelWeight when frozen
        self.packed: Tensor | None = None
        self.pack_format = "2bit"
        self.register_buffer("scale", torch.ones(()), persistent=True)
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> BitLinear:
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            layer.weight.copy_(linear.weight.float())
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.float())
        return layer.to(linear.weight.device)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"lam={float(self.lam):.3f}, frozen={self.frozen}")

    def _normed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.to(torch.promote_types(x.dtype, torch.float32))   # float32 at least (float64 stays)
        r = (x.pow(2).mean(-1, keepdim=True) + EPS).sqrt()
        return x / r * self.gain.to(x.dtype), r

    def forward(self, x: Tensor) -> Tensor:
        if self.frozen:
            return self._forward_frozen(x)
        xn, r = self._normed(x)
        lam = float(self.lam)
        w = self.weight
        if lam > 0:
            codes, s = activation_quant(xn)
            xq = codes.float() * s.unsqueeze(-1)
            xn = xn + (lam * (xq.to(xn.dtype) - xn)).detach()
            gamma = weight_scale(w)
            wq = ternary_codes(w, gamma).to(w.dtype) * gamma
            w = w + (lam * (wq - w)).detach()
        y = F.linear(xn, w.to(xn.dtype)) * r
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype)

    # -- frozen: the integer kernel --
    def freeze(self, pack_format: str = "2bit") -> None:
        """Ternary for good: codes for the kernel and the packed storage; the latent weight is dropped."""
        from services.bitnet.core.pack import pack_ternary

        if float(self.lam) != 1.0:
            raise FailedPreconditionError(f"freeze a BitLinear at λ = 1 (this one is at {float(self.lam):.3f})")
        gamma = weight_scale(self.weight)
        codes = ternary_codes(self.weight, gamma).cpu()
        self.load_frozen(pack_ternary(codes, pack_format), gamma, pack_format, codes=codes)

    def load_frozen(self, packed: Tensor, gamma: Tensor | float, pack_format: str, *, codes: Tensor | None = None):
        from services.bitnet.core.kernel import prepare_weight
        from services.bitnet.core.pack import unpack_ternary

        if codes is None:
            codes = unpack_ternary(packed, (self.out_features, self.in_features), pack_format)
        self._kernel = prepare_weight(codes)
        self.packed = packed
        self.pack_format = pack_format
        with torch.no_grad():
            self.scale.copy_(torch.as_tensor(gamma, dtype=torch.float32))
        self.weight.requires_grad_(False)
        self.weight.data = torch.empty(0)         # the latent weight is gone; the codes are the layer
        self.frozen = True

    def _forward_frozen(self, x: Tensor) -> Tensor:
        from services.bitnet.core.kernel import ternary_linear_f32

        shape = x.shape
        xn, r = self._normed(x.reshape(-1, self.in_features))
        # activation_quant fused into the kernel (bit-identical to activation_quant + ternary_linear)
        y = ternary_linear_f32(xn.cpu(), self._kernel, float(self.scale)).to(x.device)
        y = y.to(r.dtype) * r
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def codes(self) -> Tensor:
        """The layer's ternary codes (int8, out × in): from the packing when frozen, else from W."""
        if self.frozen:
            from services.bitnet.core.pack import unpack_ternary

            return unpack_ternary(self.packed, (self.out_features, self.in_features), self.pack_format)
        return ternary_codes(self.weight)


# == the model =================================================================================================

def bitlinear_modules(model: nn.Module) -> dict[str, BitLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, BitLinear)}


def convert_to_bitlinear(model: nn.Module, *, exclude: tuple[str, ...] = ()) -> list[str]:
    """Replace the QUANTIZABLE nn.Linear layers of every block with BitLinear (λ = 0: the same function).
    `exclude`: name suffixes to keep as nn.Linear (a config's preserve_layers). Returns the converted names.
    A model without such layers is refused (nothing to compress)."""
    targets = [(n, m) for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and not isinstance(m, BitLinear)
               and any(n.endswith("." + s) for s in QUANTIZABLE) and not any(n.endswith("." + s) for s in exclude)]
    if not targets:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise FailedPreconditionError(
            "no linear layer to quantize: expected the TRMTitansMAG block layers "
            f"({', '.join(QUANTIZABLE)}); the model has {len(linear)} nn.Linear ({', '.join(linear[:4]) or 'none'})")
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, BitLinear.from_linear(module))
    return [n for n, _ in targets]


def set_lambda(modules, lam: float) -> None:
    for m in (modules.values() if isinstance(modules, dict) else modules):
        m.lam.fill_(float(min(1.0, max(0.0, lam))))


def measure_sparsity(model: nn.Module) -> float:
    """The checklist's measure_sparsity: the fraction of ternary codes that are 0 over every BitLinear."""
    layers = bitlinear_modules(model)
    if not layers:
        raise FailedPreconditionError("the model has no BitLinear layer: sparsity is undefined")
    zeros = total = 0
    for m in layers.values():
        c = m.codes()
        zeros += int((c == 0).sum())
        total += c.numel()
    return zeros / total


def quantize_rows(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Per-row symmetric quantization: (codes int8 in [−q, q], scale float32 per row), q = 2^(bits−1) − 1
    (127 for int8, 7 for int4); dequantized = codes · scale[:, None]."""
    if bits not in (4, 8):
        raise InvalidSpecError(f"per-row quantization takes 4 or 8 bits, got {bits}", field="embedding_bits")
    q = 2 ** (bits - 1) - 1
    scale = (w.detach().float().abs().amax(1) / q).clamp(min=EPS)
    codes = (w.detach().float() / scale[:, None]).round().clamp(-q, q).to(torch.int8)
    return codes, scale


MEMORY_INITS = ("memory.w1_init", "memory.w2_init")   # the neural memory's initial fast weights (parameters)


def memory_init_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if any(n.endswith("." + s) for s in MEMORY_INITS)}


def quantize_memory_inits(model: nn.Module, bits: int) -> dict[str, dict[str, Tensor]]:
    """Store the memory's initial fast weights at `bits` (4 / 8: per-row int4 / int8 codes + scales; 16:
    float16; 32: unchanged) and put the values they decode to back into the model (so what is measured is
    what is stored). Returns {name: {"codes", "scale"}} for 4 and 8 bits, {} otherwise. The fast weights computed from them
    at run time stay float."""
    out: dict[str, dict[str, Tensor]] = {}
    for name, p in memory_init_parameters(model).items():
        with torch.no_grad():
            if bits in (4, 8):
                codes, scale = quantize_rows(p.reshape(p.shape[0], -1), bits)
                p.copy_((codes.float() * scale[:, None]).reshape(p.shape).to(p.dtype))
                out[name] = {"codes": codes, "scale": scale}
            elif bits == 16:
                p.copy_(p.to(torch.float16).to(p.dtype))
            elif bits != 32:
                raise InvalidSpecError(f"must be 4, 8, 16 or 32, got {bits}", field="memory_init_bits")
    return out


# == the checklist's configs ===================================================================================

_TARGETS = {"tiny": 6.0, "small": 8.0, "medium": 8.0, "large": 8.0}
_CALIBRATION = {"tiny": 128, "small": 256, "medium": 512, "large": 1024}


def get_compression_config(size_category: str) -> dict[str, Any]:
    """The checklist's adaptive targets: sparsity_threshold (the RoundClip zero band, in units of γ),
    target_compression (whole artifact vs fp32; 6× tiny, 8× otherwise, as the checklist's success criteria),
    preserve_layers (layer suffixes kept full precision: none — embeddings and head are quantized per row,
    the halting head is never converted) and calibration_samples."""
    if size_category not in _TARGETS:
        raise InvalidSpecError(f"unknown size category {size_category!r}; known: {', '.join(_TARGETS)}",
                               field="size_category")
    return {"size_category": size_category, "sparsity_threshold": SPARSITY_THRESHOLD,
            "target_compression": _TARGETS[size_category], "preserve_layers": [],
            "calibration_samples": _CALIBRATION[size_category], "embedding_bits": 8}


def get_conservative_compression_config(size_category: str) -> dict[str, Any]:
    """What the checklist falls back to when the drop exceeds 10%: the memory projections (whose outputs set
    the fast-weight updates and their rates) stay full precision, embeddings and the memory's initial fast
    weights are stored at 8 bits at least, and the target is lowered by a quarter (the checklist accepts
    0.75 × target)."""
    cfg = get_compression_config(size_category)
    cfg.update(preserve_layers=["memory.to_k", "memory.to_v", "memory.to_q", "memory.to_rates"],
               target_compression=cfg["target_compression"] * 0.75, embedding_bits=8, conservative=True)
    return cfg
