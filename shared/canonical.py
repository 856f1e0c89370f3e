"""Canonical JSON and hashing: one definition, so a config hashes the same in a run, a manifest and a job.

Canonical JSON is sorted keys, no whitespace, UTF-8 kept as is, NaN/Infinity refused.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from shared.errors import InvalidSpecError


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _reject_constant(name: str) -> Any:
    raise InvalidSpecError(f"{name} is not valid JSON (NaN and Infinity are refused)")


def dumps_canonical(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, NaN/Infinity refused, so equal data hashes equally."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise InvalidSpecError(f"cannot write canonical JSON: {exc} (NaN/Infinity are not JSON)") from exc
    except TypeError as exc:
        raise InvalidSpecError(f"cannot write canonical JSON: {exc}") from exc


def loads_strict(data: str | bytes, *, name: str = "JSON document") -> Any:
    """Parse JSON, refusing NaN/Infinity (Python's json accepts them by default)."""
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except ValueError as exc:  # includes UnicodeDecodeError and our own InvalidSpecError
        raise InvalidSpecError(f"{name} is not valid JSON: {exc}") from exc


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of a config mapping."""
    return sha256_bytes(dumps_canonical(config).encode("utf-8"))

