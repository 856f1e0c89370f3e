"""Small stream helpers shared by the backends and the artifact writer: cancellation and hashing."""

from __future__ import annotations

import hashlib
import io
from typing import Any, BinaryIO, Protocol

from shared.errors import CancelledError

CHUNK = 1 << 20


class CancelEvent(Protocol):
    """Anything with `is_set()` (threading.Event, multiprocessing.Event, a job's cancel token)."""

    def is_set(self) -> bool: ...


def check_cancel(cancel_event: CancelEvent | None, what: str) -> None:
    if cancel_event is not None and cancel_event.is_set():
        raise CancelledError(f"{what} was cancelled")


class HashingReader(io.RawIOBase):
    """Wraps a binary reader and hashes exactly the bytes the backend consumes.

    Hashing while uploading (instead of hashing the local file first) records the sha256 of the bytes
    that were actually sent, even if the local file changes meanwhile, and reads large files once.
    """

    def __init__(self, raw: BinaryIO):
        super().__init__()
        self._raw = raw
        self._digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._digest.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()
