"""Safe file formats: safetensors for tensors, canonical JSON for everything else, never pickle.

A pickle (and `torch.save`, which is a zip around a pickle) runs arbitrary code when loaded, so a corrupt
or foreign checkpoint could take over a worker (DESIGN.md §8). Before any tensor file is handed to the
safetensors loader its header is checked structurally: 8-byte little-endian header length, then a JSON
object whose tensor offsets lie inside the file. Anything else is refused with UnsafeFormatError, and
nothing in this module ever calls `pickle` or `torch.load`.

Optimizer state (nested dicts of tensors and Python scalars plus `param_groups`) is split into a flat
tensor dict for safetensors and a JSON tree that records where each tensor goes and the exact Python
types (int vs float, tuple vs list, int dict keys), so `load_state_dict` gets back what `state_dict` gave.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import load as _st_load_bytes
from safetensors.torch import load_file as _st_load_file
from safetensors.torch import save as _st_save_bytes

from shared.canonical import _reject_constant, dumps_canonical, loads_strict, sha256_bytes  # noqa: F401 - re-exported
from shared.errors import InvalidSpecError, NotFoundError, UnsafeFormatError

CHUNK = 1 << 20
# safetensors itself refuses headers over 100 MB; checking first keeps a hostile length from allocating.
MAX_HEADER_BYTES = 100_000_000
OPTIMIZER_FORMAT = "agentforge.optimizer_state/v1"


# --- hashing and canonical JSON ------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hash a file in 1 MiB chunks so a multi-GB checkpoint never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def load_json(path: str | os.PathLike[str]) -> Any:
    """The checklist's load_json: read a JSON file strictly (NaN refused); errors name the file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"JSON file not found: {p}") from None
    return loads_strict(data, name=str(p))


# --- format sniffing -----------------------------------------------------------------------------------


def _looks_like(head: bytes) -> str:
    if head.startswith(b"PK\x03\x04"):
        return "a torch.save zip archive (which wraps a pickle)"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return f"a Python pickle (protocol {head[1]})"
    if head[:1] in (b"(", b"]", b"}", b"c", b"l", b"d", b"I", b"S", b"V", b"N"):
        return "a Python pickle (protocol 0/1)"
    return "an unknown format"


def _unsafe(name: str, reason: str, head: bytes) -> UnsafeFormatError:
    return UnsafeFormatError(
        f"{name} is not a safetensors file ({reason}); it looks like {_looks_like(head)}. "
        "It is refused and never unpickled: re-export it with safetensors."
    )


def check_safetensors_header(head: bytes, total_size: int, name: str) -> dict[str, Any]:
    """Validate a safetensors header structurally and return it (tensor entries + "__metadata__").

    `head` holds at least the first 8 bytes and, when the file is valid, the whole header after them.
    """
    if total_size < 8 or len(head) < 8:
        raise _unsafe(name, f"only {total_size} bytes long", head)
    (length,) = struct.unpack("<Q", head[:8])
    if length < 2 or length > min(total_size - 8, MAX_HEADER_BYTES):
        raise _unsafe(name, f"header length {length} does not fit a {total_size}-byte file", head)
    raw = head[8 : 8 + length]
    if len(raw) != length:
        raise _unsafe(name, "header is truncated", head)
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError):
        raise _unsafe(name, "header is not JSON", head) from None
    if not isinstance(header, dict):
        raise _unsafe(name, "header is not a JSON object", head)
    data_size = total_size - 8 - length
    for key, entry in header.items():
        if key == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise _unsafe(name, "__metadata__ must map strings to strings", head)
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise _unsafe(name, f"tensor {key!r} has data offsets outside the file", head)
    return header


def check_safetensors_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) == 8:
            (length,) = struct.unpack("<Q", head)
            if 2 <= length <= min(size - 8, MAX_HEADER_BYTES):
                head += fh.read(length)
    return check_safetensors_header(head, size, str(path))


# --- tensors -------------------------------------------------------------------------------------------


def _prepare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors with no shared storage (safetensors refuses aliases; clone those only)."""
    if not isinstance(tensors, dict):
        raise InvalidSpecError(f"tensors must be a dict, got {type(tensors).__name__}")
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise InvalidSpecError(f"tensor {name!r}: expected str -> torch.Tensor, got {type(tensor).__name__}")
        t = tensor.detach().to("cpu").contiguous()
        storage = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if t.numel() and storage in seen:
            t = t.clone()
        seen.add(storage)
        out[name] = t
    return out


def _check_metadata(metadata: dict[str, str] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise InvalidSpecError("safetensors metadata must map str -> str (encode other values as JSON)")
    return dict(metadata)


def tensors_to_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    return _st_save_bytes(_prepare(tensors), metadata=_check_metadata(metadata))


def save_tensors(
    target: str | os.PathLike[str] | BinaryIO,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write safetensors to a path (atomically: temp file, fsync, rename) or to a writable binary buffer."""
    data = tensors_to_bytes(tensors, metadata)
    if isinstance(target, (str, os.PathLike)):
        path = Path(target)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    else:
        target.write(data)


def load_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file after the structural check; returns (tensors, metadata)."""
    header = check_safetensors_file(path)
    return _st_load_file(str(path)), dict(header.get("__metadata__") or {})


def check_safetensors_bytes(data: bytes | bytearray | memoryview, name: str = "<bytes>") -> dict[str, Any]:
    view = memoryview(data)
    length = struct.unpack("<Q", view[:8])[0] if len(view) >= 8 else 0
    return check_safetensors_header(bytes(view[: 8 + min(length, MAX_HEADER_BYTES)]), len(view), name)


def load_tensors_bytes(data: bytes, *, name: str = "<bytes>") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    header = check_safetensors_bytes(data, name)
    return _st_load_bytes(bytes(data)), dict(header.get("__metadata__") or {})


# --- optimizer state -----------------------------------------------------------------------------------


def _encode(value: Any, path: list[str], tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        name = "/".join(path) or "tensor"
        while name in tensors:  # two paths that join to the same string ("a/b" key vs nested a, b)
            name += "~"
        tensors[name] = value
        return {"$tensor": name}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, (list, tuple)):
        items = [_encode(v, path + [str(i)], tensors) for i, v in enumerate(value)]
        return {"$tuple": items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        pairs = [(k, _encode(v, path + [str(k)], tensors)) for k, v in value.items()]
        if all(isinstance(k, str) and not k.startswith("$") for k, _ in pairs):
            return dict(pairs)
        for k, _ in pairs:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise InvalidSpecError(f"unsupported dict key {k!r}", field="/".join(path) or "state_dict")
        return {"$dict": [[k, v] for k, v in pairs]}
    raise InvalidSpecError(
        f"cannot store a {type(value).__name__} in optimizer state (only tensors and JSON scalars)",
        field="/".join(path) or "state_dict",
    )


def _decode(value: Any, tensors: dict[str, torch.Tensor], used: set[str]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors, used) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, inner), = value.items()
        if tag == "$tensor":
            if inner not in tensors:
                raise InvalidSpecError(f"optimizer state refers to missing tensor {inner!r}")
            used.add(inner)
            return tensors[inner]
        if tag == "$float":
            return float(inner)
        if tag == "$tuple":
            return tuple(_decode(v, tensors, used) for v in inner)
        if tag == "$dict":
            return {k: _decode(v, tensors, used) for k, v in inner}
    return {k: _decode(v, tensors, used) for k, v in value.items()}


def optimizer_state_to_tensors(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into (tensors for safetensors, JSON-serialisable tree)."""
    if not isinstance(state_dict, dict) or "param_groups" not in state_dict:
        raise InvalidSpecError("expected an optimizer state_dict with 'state' and 'param_groups'")
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state_dict, [], tensors)
    return tensors, {"format": OPTIMIZER_FORMAT, "state_dict": tree}


def optimizer_state_from_tensors(tensors: dict[str, torch.Tensor], json_meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of optimizer_state_to_tensors; every tensor must be referenced exactly as written."""
    if not isinstance(json_meta, dict) or json_meta.get("format") != OPTIMIZER_FORMAT:
        got = json_meta.get("format") if isinstance(json_meta, dict) else type(json_meta).__name__
        raise InvalidSpecError(f"optimizer state format must be {OPTIMIZER_FORMAT!r}, got {got!r}")
    used: set[str] = set()
    state = _decode(json_meta["state_dict"], tensors, used)
    extra = sorted(set(tensors) - used)
    if extra:
        raise InvalidSpecError(f"optimizer state has tensors the JSON does not reference: {extra[:5]}")
    return state


def optimizer_state_bytes(state_dict: dict[str, Any]) -> bytes:
    """Optimizer state as one safetensors blob, the JSON tree in its metadata (a convenience for writers)."""
    tensors, meta = optimizer_state_to_tensors(state_dict)
    return tensors_to_bytes(tensors, {"optimizer_state": dumps_canonical(meta)})


def optimizer_state_from_bytes(data: bytes, *, name: str = "<optimizer state>") -> dict[str, Any]:
    tensors, metadata = load_tensors_bytes(data, name=name)
    if "optimizer_state" not in metadata:
        raise InvalidSpecError(f"{name} has no 'optimizer_state' metadata; was it written by optimizer_state_bytes?")
    return optimizer_state_from_tensors(tensors, loads_strict(metadata["optimizer_state"], name=name))


__all__ = [
    "check_safetensors_bytes",
    "check_safetensors_file",
    "check_safetensors_header",
    "dumps_canonical",
    "load_tensors",
    "load_tensors_bytes",
    "loads_strict",
    "optimizer_state_bytes",
    "optimizer_state_from_bytes",
    "optimizer_state_from_tensors",
    "optimizer_state_to_tensors",
    "save_tensors",
    "sha256_bytes",
    "sha256_file",
    "tensors_to_bytes",
]
