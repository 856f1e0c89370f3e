"""Ternary-weight × int8-activation matmul for BitNet layers: a C++ CPU kernel and a pure-torch reference.

    w = prepare_weight(codes)                        # once per layer; codes int8 (out, in) in {-1, 0, 1}
    acc = ternary_matmul_int(x_q, w)                 # int32 (B, out), exact Σ_i x_q[b, i]·codes[o, i]
    y = ternary_linear(x_q, x_scale, w, w_scale)     # float32 (B, out) = (float(acc) * x_scale[b]) * w_scale
    y = ternary_linear_f32(x, w, w_scale)            # float x (B, in): absmax int8 quantization fused in, then ↑

Backends (`available_backends()`, best first):
- "avx512vnni": the same file's AVX-512 path: vpdpbusd (u8 codes × s8 activations, 4 products summed into int32
  lanes) over two weight blocks per 512-bit load; listed only when the CPU has AVX-512 F/BW/VL and VNNI.
- "avx2": services/bitnet/csrc/ternary.cpp with AVX2 intrinsics; listed only when the CPU has AVX2.
- "portable": the same C++ file's plain loops (no intrinsics; the compiler may auto-vectorise them for the
  baseline ISA), for CPUs without AVX2.
- "torch": the reference — decodes the weight to an int8 matrix and multiplies in int64; it allocates
  out×in-sized temporaries and is meant for checking, not speed.
The C++ backends never materialise an out×in matrix: codes are decoded in registers, and a call allocates
only its (B, out) output plus O(B) bookkeeping. They split output rows over torch's intra-op threads
(at::parallel_for), so `torch.set_num_threads` applies. The extension is loaded from $AGENTFORGE_KERNEL_DIR when a prebuilt copy of this exact
source is there (images build one: `python -m services.bitnet.core.kernel build DIR`), else built on first use
with torch.utils.cpp_extension.load (cache: $TORCH_EXTENSIONS_DIR or torch's default; ~20 s cold, then
cached); if that fails (no compiler or ninja) a warning is logged once and only "torch" is available.

Weight layout (KernelWeight.data, uint8 (out, row_bytes)): one row per output feature, 2 bits per weight
holding c = w + 1 ∈ {0, 1, 2} (the base-3 digit, not pack.CODE: the kernel computes Σ c·x − Σ x so that the
unsigned × signed byte multiply vpmaddubsw applies directly). Per row: q = in // 128 blocks of 32 bytes, byte
j of block t holding weights 128t + j + 32k at bits 2k (k = 0..3); then the r = in % 128 tail weights in
ceil(r/32) sub-blocks of 8 bytes, byte j of sub-block s holding weights 128q + 32s + j + 8k at bits 2k, with
code 1 (w = 0) past `in`. row_bytes = 32q + 8·ceil(r/32) < ceil(in/4) + 8.

Activations: any int8 value is exact (the kernels are correct for −128 too, though absmax quantization only
produces [−127, 127]); in ≤ 2^24 keeps the int32 accumulators exact.
Float epilogue, the same order in every backend: y = (acc.to(float32) * x_scale[:, None]) * w_scale, with
w_scale rounded to float32 first, so all backends give bit-identical floats.
`ternary_linear_f32(x, w, w_scale)` equals `ternary_linear(*quant.activation_quant(x), w, w_scale)` bit for
bit in every backend ("torch" is exactly that composition); the C++ backends quantize each row (amax in
float32, clamped at 1e-6, scale = amax / 127, true division, round half to even, clamp to ±127) into a
per-call scratch buffer, parallel over batch rows, without an int8 (B, in) tensor reaching Python. Rows
holding NaN or ±inf raise InvalidSpecError in every backend (torch's NaN → int8 cast is undefined).
Inference only: nothing here
is differentiable (training goes through BitLinear's straight-through float path).
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from shared.errors import InvalidSpecError

log = logging.getLogger(__name__)

BACKENDS = ("avx512vnni", "avx2", "portable", "torch")
_CPP_ID = {"portable": 0, "avx2": 1, "avx512vnni": 2}
_SRC = Path(__file__).resolve().parents[1] / "csrc" / "ternary.cpp"
_EXT_NAME = "agentforge_bitnet_ternary"
_BLOCK, _BLOCK_BYTES, _SUB, _SUB_BYTES = 128, 32, 32, 8

_F32 = struct.Struct("f")
_F32_MAX = 3.4028234663852886e38
_fast_id: int | None = None     # the best C++ backend's id, once available_backends() has run
_lock = threading.Lock()
_ext = None
_ext_error: str | None = None
_available: tuple[str, ...] | None = None


def row_bytes(in_features: int) -> int:
    """Bytes per output row of the kernel layout: 32·(in // 128) + 8·ceil((in % 128) / 32)."""
    q, r = divmod(in_features, _BLOCK)
    return q * _BLOCK_BYTES + -(-r // _SUB) * _SUB_BYTES


@dataclass(frozen=True, eq=False)
class KernelWeight:
    """A ternary weight matrix in the kernel layout (module docstring). Build it with `prepare_weight`."""

    data: Tensor          # uint8 (out_features, row_bytes(in_features)), contiguous, CPU
    out_features: int
    in_features: int

    def __post_init__(self):
        want = (self.out_features, row_bytes(self.in_features))
        if self.data.dtype != torch.uint8 or tuple(self.data.shape) != want or not self.data.is_contiguous():
            raise InvalidSpecError(f"expected contiguous uint8 data of shape {want}, got {self.data.dtype} "
                                   f"{tuple(self.data.shape)}", field="data")

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def codes(self) -> Tensor:
        """Decode back to int8 (out, in) codes (allocates out×in bytes; for the reference and tests)."""
        out, n = self.out_features, self.in_features
        q, r = divmod(n, _BLOCK)
        d = self.data
        shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
        main = d[:, :q * _BLOCK_BYTES].reshape(out, q, 1, _BLOCK_BYTES)
        main = ((main >> shifts.view(1, 1, 4, 1)) & 3).reshape(out, q * _BLOCK)          # (t, k, j) order
        ns = -(-r // _SUB)
        tail = d[:, q * _BLOCK_BYTES:].reshape(out, ns, 1, _SUB_BYTES)
        tail = ((tail >> shifts.view(1, 1, 4, 1)) & 3).reshape(out, ns * _SUB)[:, :r]    # (s, k, j) order
        return (torch.cat([main, tail], dim=1).to(torch.int8) - 1).contiguous()


def prepare_weight(codes: Tensor) -> KernelWeight:
    """Lay out int8 ternary codes (out, in) for the kernel: out × row_bytes(in) bytes (≈ out·in/4)."""
    if not isinstance(codes, Tensor) or codes.dtype != torch.int8 or codes.dim() != 2:
        what = f"{codes.dtype} {tuple(codes.shape)}" if isinstance(codes, Tensor) else type(codes).__name__
        raise InvalidSpecError(f"codes must be an int8 (out, in) tensor, got {what}", field="codes")
    if bool(((codes < -1) | (codes > 1)).any()):
        raise InvalidSpecError("codes must be in {-1, 0, 1}", field="codes")
    out, n = codes.shape
    q, r = divmod(n, _BLOCK)
    ns = -(-r // _SUB)
    c = (codes.detach().cpu() + 1).to(torch.uint8)                                      # c = w + 1
    main = c[:, :q * _BLOCK].reshape(out, q, 4, _BLOCK_BYTES)                            # weight 128t+32k+j
    main = main[:, :, 0] | (main[:, :, 1] << 2) | (main[:, :, 2] << 4) | (main[:, :, 3] << 6)
    tail = torch.ones(out, ns * _SUB, dtype=torch.uint8)                                 # pad: w = 0
    tail[:, :r] = c[:, q * _BLOCK:]
    tail = tail.reshape(out, ns, 4, _SUB_BYTES)                                          # weight 32s+8k+j
    tail = tail[:, :, 0] | (tail[:, :, 1] << 2) | (tail[:, :, 2] << 4) | (tail[:, :, 3] << 6)
    data = torch.cat([main.reshape(out, -1), tail.reshape(out, -1)], dim=1).contiguous()
    return KernelWeight(data=data, out_features=out, in_features=n)


def _ensure_ninja_on_path() -> None:
    """A venv's pip-installed ninja sits next to the interpreter, which need not be on PATH."""
    if shutil.which("ninja") is None:
        here = Path(sys.executable).parent
        if (here / "ninja").exists():
            os.environ["PATH"] = f"{here}{os.pathsep}{os.environ.get('PATH', '')}"


KERNEL_DIR_ENV = "AGENTFORGE_KERNEL_DIR"    # a folder holding a prebuilt extension (`build_prebuilt`)
_STAMP = "source.sha256"


def _source_sha256() -> str:
    import hashlib
    return hashlib.sha256(_SRC.read_bytes()).hexdigest()


def _jit_build(build_directory: str | None = None):
    from torch.utils.cpp_extension import load
    _ensure_ninja_on_path()
    return load(name=_EXT_NAME, sources=[str(_SRC)], extra_cflags=["-O3", "-fopenmp"],
                extra_ldflags=["-fopenmp"], build_directory=build_directory, verbose=False)


def build_prebuilt(out_dir: str | os.PathLike) -> Path:
    """Compile the extension into `out_dir` (images do this at build time, so a container with a read-only
    root filesystem never compiles): the shared library plus the sha256 of the source it was built from."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _jit_build(str(out))
    lib = next(out.glob(f"{_EXT_NAME}*.so"), None)
    if lib is None:
        raise FileNotFoundError(f"the build left no {_EXT_NAME}*.so in {out}")
    (out / _STAMP).write_text(_source_sha256() + "\n")
    return lib


def _load_prebuilt(folder: str):
    """The extension from $AGENTFORGE_KERNEL_DIR when it was built from this exact source, else None."""
    import importlib.util
    d = Path(folder)
    lib = next(d.glob(f"{_EXT_NAME}*.so"), None)
    stamp = d / _STAMP
    if lib is None or not stamp.is_file():
        log.warning("%s=%s holds no prebuilt kernel; compiling it instead", KERNEL_DIR_ENV, folder)
        return None
    if stamp.read_text().strip() != _source_sha256():
        log.warning("the prebuilt kernel in %s was built from another source; compiling it instead", folder)
        return None
    spec = importlib.util.spec_from_file_location(_EXT_NAME, lib)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_ext():
    """Build/load the C++ extension once per process; None (with one warning) when it cannot be built."""
    global _ext, _ext_error
    if _ext is not None or _ext_error is not None:
        return _ext
    with _lock:
        if _ext is None and _ext_error is None:
            try:
                folder = os.environ.get(KERNEL_DIR_ENV)
                _ext = (_load_prebuilt(folder) if folder else None) or _jit_build()
            except Exception as exc:  # noqa: BLE001 - any build failure means "torch backend only"
                _ext_error = f"{type(exc).__name__}: {exc}"
                log.warning("BitNet C++ ternary kernel unavailable, using the pure-torch reference: %s",
                            _ext_error.splitlines()[0] if _ext_error else "")
    return _ext


def extension_error() -> str | None:
    """Why the C++ extension could not be built (None when it loaded or has not been tried)."""
    return _ext_error


def available_backends() -> list[str]:
    """Backends usable in this process, best first: "avx512vnni", "avx2" (CPUs with them), "portable", "torch"."""
    global _available, _fast_id
    if _available is None:
        ext = _load_ext()
        if ext is None:
            _available = ("torch",)
        else:
            _available = ((("avx512vnni",) if ext.has_avx512vnni() else ()) + (("avx2",) if ext.has_avx2() else ())
                          + ("portable", "torch"))
            _fast_id = _CPP_ID[_available[0]]
    return list(_available)


def _pick(backend: str | None) -> str:
    if _available is None:
        available_backends()
    if backend is None:
        return _available[0]
    if backend in _available:
        return backend
    if backend not in BACKENDS:
        raise InvalidSpecError(f"unknown backend {backend!r}; expected one of {list(BACKENDS)}", field="backend")
    raise InvalidSpecError(f"backend {backend!r} is not available here (available: {available_backends()}"
                           f"{'; build error: ' + _ext_error if _ext_error else ''})", field="backend")


def _check_x(x_q: Tensor, w: KernelWeight) -> Tensor:
    if not isinstance(x_q, Tensor) or x_q.dtype is not torch.int8 or x_q.dim() != 2:
        what = f"{x_q.dtype} {tuple(x_q.shape)}" if isinstance(x_q, Tensor) else type(x_q).__name__
        raise InvalidSpecError(f"x_q must be an int8 (B, in) tensor, got {what}", field="x_q")
    if x_q.shape[1] != w.in_features:
        raise InvalidSpecError(f"x_q has {x_q.shape[1]} features, the weight expects {w.in_features}",
                               field="x_q")
    if w.in_features > 2**24:
        raise InvalidSpecError("in_features > 2^24 could overflow int32 accumulators", field="in_features")
    if not x_q.is_cpu or not x_q.is_contiguous():
        x_q = x_q.cpu().contiguous()
    return x_q


def _reference_int(x_q: Tensor, w: KernelWeight) -> Tensor:
    return (x_q.to(torch.int64) @ w.codes().to(torch.int64).T).to(torch.int32)


def ternary_matmul_int(x_q: Tensor, w: KernelWeight, backend: str | None = None) -> Tensor:
    """int32 (B, out) accumulators Σ_i x_q[b, i]·w[o, i], exact; `backend` None = the best available."""
    x = _check_x(x_q, w)
    name = _pick(backend)
    if name == "torch":
        return _reference_int(x, w)
    return _ext.matmul_int(x, w.data, w.in_features, _CPP_ID[name])


def _w_scale32(w_scale) -> float:
    """The weight scale rounded to float32 (as a Python float holding that exact value)."""
    if isinstance(w_scale, (float, int)) and not isinstance(w_scale, bool):
        try:
            return _F32.unpack(_F32.pack(w_scale))[0]
        except OverflowError:
            return float(torch.tensor(float(w_scale), dtype=torch.float32))    # ±inf, as torch rounds it
    t = torch.as_tensor(w_scale).detach()
    if t.numel() != 1:
        raise InvalidSpecError(f"w_scale must be a scalar, got shape {tuple(t.shape)}", field="w_scale")
    return t.reshape(()).to(torch.float32).item()


def ternary_linear(x_q: Tensor, x_scale: Tensor, w: KernelWeight, w_scale, backend: str | None = None) -> Tensor:
    """float32 (B, out) = (acc.to(float32) * x_scale[:, None]) * float32(w_scale), identical in every backend."""
    x = _check_x(x_q, w)
    if not isinstance(x_scale, Tensor) or x_scale.dim() != 1 or x_scale.shape[0] != x.shape[0]:
        what = tuple(x_scale.shape) if isinstance(x_scale, Tensor) else type(x_scale).__name__
        raise InvalidSpecError(f"x_scale must be a (B,) = ({x.shape[0]},) tensor, got {what}", field="x_scale")
    xs = x_scale
    if xs.dtype is not torch.float32 or not xs.is_cpu or not xs.is_contiguous() or xs.requires_grad:
        xs = xs.detach().cpu().to(torch.float32).contiguous()
    ws = _w_scale32(w_scale)
    name = _pick(backend)
    if name == "torch":
        acc = _reference_int(x, w)
        return acc.to(torch.float32) * xs[:, None] * torch.tensor(ws, dtype=torch.float32)
    return _ext.linear(x, xs, w.data, w.in_features, ws, _CPP_ID[name])


def _nonfinite_error(x: Tensor) -> InvalidSpecError:
    rows = (~torch.isfinite(x)).any(dim=1).nonzero().flatten().tolist()
    return InvalidSpecError(f"x rows {rows[:8]} hold NaN or inf: absmax int8 quantization is undefined for them",
                            field="x")


def ternary_linear_f32(x: Tensor, w: KernelWeight, w_scale, backend: str | None = None) -> Tensor:
    """float32 (B, out) = ternary_linear(*activation_quant(x), w, w_scale), bit-identical in every backend, with
    the per-token absmax int8 quantization done inside the C++ kernel. x: floating (B, in), computed in float32
    (other float dtypes are converted first, which gives the same codes and scales). NaN/inf → InvalidSpecError."""
    if backend is None and _fast_id is not None and type(w_scale) is float and -_F32_MAX <= w_scale <= _F32_MAX:
        # Decode-time fast path (a call is a few µs, so ~1 µs of Python checks matters): the C++ side checks the
        # same things; anything it refuses or cannot take as is (other dtypes, non-contiguous, NaN rows) goes
        # through the checked path below, which converts or explains. double → float in C++ rounds to nearest
        # like _w_scale32 does.
        try:
            return _ext.linear_f32(x, w.data, w.in_features, w_scale, _fast_id)
        except (RuntimeError, ValueError, TypeError, AttributeError):
            pass
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 2:
        what = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise InvalidSpecError(f"x must be a floating (B, in) tensor, got {what}", field="x")
    if x.shape[1] != w.in_features:
        raise InvalidSpecError(f"x has {x.shape[1]} features, the weight expects {w.in_features}", field="x")
    if w.in_features > 2**24:
        raise InvalidSpecError("in_features > 2^24 could overflow int32 accumulators", field="in_features")
    if x.dtype is not torch.float32 or not x.is_cpu or not x.is_contiguous() or x.requires_grad:
        x = x.detach().cpu().to(torch.float32).contiguous()
    ws = _w_scale32(w_scale)
    name = _pick(backend)
    if name == "torch":
        if not bool(torch.isfinite(x).all()):
            raise _nonfinite_error(x)
        from services.bitnet.core.quant import activation_quant
        x_q, x_scale = activation_quant(x)
        return ternary_linear(x_q, x_scale, w, ws, "torch")
    try:
        return _ext.linear_f32(x, w.data, w.in_features, ws, _CPP_ID[name])
    except ValueError:       # the kernel's only ValueError: a row with NaN or inf
        raise _nonfinite_error(x) from None


def main(argv: list[str] | None = None) -> int:
    """`python -m services.bitnet.core.kernel build DIR`: prebuild the extension (used by the Dockerfiles)."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m services.bitnet.core.kernel")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile the C++ extension into DIR (set AGENTFORGE_KERNEL_DIR=DIR to use it)")
    b.add_argument("dir")
    args = parser.parse_args(argv)
    lib = build_prebuilt(args.dir)
    print(f"built {lib}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
