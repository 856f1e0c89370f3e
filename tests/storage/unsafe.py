"""Armed payloads for the "never unpickled" tests: loading any of them creates a marker file."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch


class Boom:
    """Unpickling this calls open(marker, "w"): if the marker exists, something unpickled our bytes."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def armed_pickle(marker: Path) -> bytes:
    return pickle.dumps({"weights": [1.0, 2.0], "payload": Boom(marker)})


def armed_torch_save(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2), "payload": Boom(marker)}, buf)
    return buf.getvalue()


class CancelAfter:
    """A cancel event that reads as set from its n-th `is_set()` call on, once armed: cancels mid-upload
    deterministically instead of racing a timer thread."""

    def __init__(self) -> None:
        self.calls, self.limit = 0, None

    def arm(self, after: int) -> None:
        self.calls, self.limit = 0, after

    def is_set(self) -> bool:
        if self.limit is None:
            return False
        self.calls += 1
        return self.calls > self.limit
