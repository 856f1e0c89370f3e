"""A full disk mid-artifact: no visible artifact, no partial file under a final name, a clear error.

"real" runs LocalStore on a 2 MiB tmpfs when this process may mount one (root on Linux), else on a
LocalStore whose writes raise ENOSPC after 2 MiB; "hook" always uses the latter. Same assertions.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch

from shared.errors import StorageError
from shared.storage import LocalStore

LIMIT = 2 << 20


class TinyDiskStore(LocalStore):
    """LocalStore on a pretend disk with LIMIT bytes free (counted across all writes)."""

    used = 0

    def _write_chunk(self, fh, chunk: bytes) -> None:
        if self.used + len(chunk) > LIMIT:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.used += len(chunk)
        fh.write(chunk)


def _mount_tmpfs(path: Path) -> bool:
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={LIMIT // 1024}k", "tmpfs", str(path)],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(params=["real", "hook"])
def full_disk_store(request: pytest.FixtureRequest, tmp_path: Path):
    root = tmp_path / "disk"
    root.mkdir()
    if request.param == "real" and _mount_tmpfs(root):
        try:
            yield LocalStore(root), root
        finally:
            subprocess.run(["umount", str(root)], capture_output=True, timeout=10)
        return
    yield TinyDiskStore(root), root


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_disk_full_mid_artifact(full_disk_store, tmp_path: Path) -> None:
    store, root = full_disk_store
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 << 20))  # more than the disk holds
    with pytest.raises(StorageError) as info:
        with store.open_artifact("runs/r/p/ckpt", kind="checkpoint", name="c") as w:
            w.add_tensors("model.safetensors", {"w": torch.zeros(1000)})  # fits
            w.add_json("config.json", {"a": 1})  # fits
            w.add_file("optimizer.bin", big)  # does not
    assert "disk is full" in str(info.value)
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert store.list_artifacts() == []
    assert _files(root) == []  # no partial file, no temp file, and the files that fit were removed too

    # the store keeps working once there is room again
    with store.open_artifact("runs/r/p/small", kind="report", name="s") as w:
        w.add_json("report.json", {"ok": True})
    assert store.list_artifacts() == ["runs/r/p/small"]


def test_disk_full_on_a_single_object(full_disk_store) -> None:
    store, root = full_disk_store
    with pytest.raises(StorageError, match="disk is full"):
        store.put_bytes("a/blob", b"x" * (3 << 20))
    assert _files(root) == []
