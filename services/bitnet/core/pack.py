"""Storage format for ternary weight codes: 2 bits per code ("2bit") or 5 codes per byte ("base3").

Both formats are flat: a tensor of n = numel codes is packed in its flattened (row-major) order into exactly
`packed_nbytes(n, fmt)` bytes, ceil(n/4) or ceil(n/5). The shape and the per-tensor scale are stored next to
the bytes by the caller; this module never stores alpha·sign or any int8/float weight.

- "2bit": element i is in byte i // 4 at bits 2·(i % 4) .. 2·(i % 4) + 1, with the code `CODE[w]`
  (0 → 0b00, +1 → 0b01, −1 → 0b10). 0b11 is invalid.
- "base3": element i is digit i % 5 of byte i // 5, digit value d = w + 1 ∈ {0, 1, 2}, byte = Σ_k d_k·3^k
  over elements 5j … 5j+4, so a byte is at most 242; 243…255 are invalid.

Padding (the codes after n in the last byte) is all-zero bits in "2bit" and digit 0 in "base3"; unpacking
checks it, so a corrupt or mismatched buffer raises InvalidSpecError instead of decoding silently.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from shared.errors import InvalidSpecError

FORMATS = ("2bit", "base3")
CODE = {0: 0b00, +1: 0b01, -1: 0b10}
PER_BYTE = {"2bit": 4, "base3": 5}

_POW3 = torch.tensor([1, 3, 9, 27, 81], dtype=torch.uint8)
_SHIFT2 = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
# code → weight for 2-bit (index 3 is invalid and is rejected before the lookup)
_DECODE2 = torch.tensor([0, 1, -1, 0], dtype=torch.int8)


def _check_fmt(fmt: str) -> int:
    if fmt not in PER_BYTE:
        raise InvalidSpecError(f"unknown packing format {fmt!r}; expected one of {list(FORMATS)}", field="fmt")
    return PER_BYTE[fmt]


def packed_nbytes(n: int, fmt: str = "2bit") -> int:
    """Bytes that `n` ternary codes take in `fmt`: ceil(n/4) for "2bit", ceil(n/5) for "base3"."""
    per = _check_fmt(fmt)
    if n < 0:
        raise InvalidSpecError(f"element count must be >= 0, got {n}", field="n")
    return -(-n // per)


def _check_codes(codes: Tensor) -> None:
    if not isinstance(codes, Tensor):
        raise InvalidSpecError(f"expected a torch.Tensor, got {type(codes).__name__}", field="codes")
    if codes.dtype != torch.int8:
        raise InvalidSpecError(f"ternary codes must be int8, got {codes.dtype}", field="codes")
    bad = (codes < -1) | (codes > 1)
    if bool(bad.any()):
        idx = int(bad.reshape(-1).nonzero()[0, 0])
        val = int(codes.reshape(-1)[idx])
        raise InvalidSpecError(f"value {val} at flat index {idx} is not in {{-1, 0, 1}}", field="codes")


def pack_ternary(codes: Tensor, fmt: str = "2bit") -> Tensor:
    """Pack int8 codes in {-1, 0, 1} (any shape) into a flat uint8 tensor of `packed_nbytes(numel, fmt)`."""
    per = _check_fmt(fmt)
    _check_codes(codes)
    flat = codes.detach().reshape(-1).cpu()
    n = flat.numel()
    nbytes = packed_nbytes(n, fmt)
    if fmt == "2bit":
        c = torch.remainder(flat, 3).to(torch.uint8)       # 0 → 0b00, +1 → 0b01, -1 → 0b10 (= CODE)
        c = torch.nn.functional.pad(c, (0, nbytes * per - n)).view(nbytes, per)
        out = c[:, 0] | (c[:, 1] << 2) | (c[:, 2] << 4) | (c[:, 3] << 6)
    else:
        d = (flat + 1).to(torch.uint8)
        d = torch.nn.functional.pad(d, (0, nbytes * per - n)).view(nbytes, per)   # padding digit 0
        out = (d * _POW3).sum(dim=1, dtype=torch.uint8)                             # ≤ 242: no overflow
    return out.contiguous()


def _check_packed(packed: Tensor, shape: tuple[int, ...], fmt: str) -> int:
    _check_fmt(fmt)
    if not isinstance(packed, Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        what = f"{packed.dtype} tensor of shape {tuple(packed.shape)}" if isinstance(packed, Tensor) \
            else type(packed).__name__
        raise InvalidSpecError(f"packed codes must be a 1-D uint8 tensor, got {what}", field="packed")
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise InvalidSpecError(f"shape must be a tuple of ints, got {shape!r}", field="shape") from exc
    if any(s < 0 for s in shape):
        raise InvalidSpecError(f"shape has a negative size: {shape}", field="shape")
    n = math.prod(shape)
    want = packed_nbytes(n, fmt)
    if packed.numel() != want:
        raise InvalidSpecError(f"{packed.numel()} bytes do not hold shape {shape} in {fmt!r} "
                               f"({n} codes need exactly {want} bytes)", field="packed")
    return n


def unpack_ternary(packed: Tensor, shape: tuple[int, ...], fmt: str = "2bit") -> Tensor:
    """Inverse of `pack_ternary`: int8 codes of `shape`. Raises InvalidSpecError (field "packed") on a wrong
    byte count, an invalid 2-bit code 0b11, a base-3 byte > 242 or non-zero padding."""
    n = _check_packed(packed, shape, fmt)
    shape = tuple(int(s) for s in shape)
    p = packed.detach().cpu()
    if fmt == "2bit":
        c = (p[:, None] >> _SHIFT2) & 3                       # (nbytes, 4) codes in element order
        flat_c = c.reshape(-1)
        bad = flat_c == 3
        if bool(bad.any()):
            idx = int(bad.nonzero()[0, 0])
            raise InvalidSpecError(f"invalid 2-bit code 0b11 at element {idx} (byte {idx // 4})",
                                   field="packed")
        pad = flat_c[n:]
        if bool((pad != 0).any()):
            raise InvalidSpecError(f"padding bits after element {n - 1} of the last byte are not zero",
                                   field="packed")
        w = _DECODE2[flat_c[:n].long()]
    else:
        over = p > 242
        if bool(over.any()):
            idx = int(over.nonzero()[0, 0])
            raise InvalidSpecError(f"base-3 byte {idx} has value {int(p[idx])} > 242", field="packed")
        d = (p[:, None] // _POW3) % 3                          # (nbytes, 5) digits in element order
        flat_d = d.reshape(-1)
        if bool((flat_d[n:] != 0).any()):
            raise InvalidSpecError(f"padding digits after element {n - 1} of the last byte are not zero",
                                   field="packed")
        w = flat_d[:n].to(torch.int8) - 1
    return w.reshape(shape).contiguous()
