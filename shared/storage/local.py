"""LocalStore: the artifact store on a local (or mounted) filesystem, used by the embedded mode and tests.

Each object is a file `<root>/<key>`. A write goes to a temp file in the same folder, is fsynced and then
renamed over the final name (os.replace is atomic within one filesystem), so a crash, a cancellation or a
full disk never leaves a partial file under a final name. Temp files carry a marker suffix and are hidden
from `list`.
"""

from __future__ import annotations

import errno
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from shared.errors import InvalidSpecError, NotFoundError, StorageError
from shared.storage.base import ArtifactStore
from shared.storage.keys import validate_key, validate_prefix
from shared.storage.streams import CHUNK, CancelEvent, check_cancel

log = logging.getLogger(__name__)

TMP_MARKER = ".agentforge-tmp"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class LocalStore(ArtifactStore):
    """Objects as files under `root`; URIs are `file://<absolute root>/<key>`."""

    scheme = "file"

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the local store root {self.root}: {exc}") from exc

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _error(self, exc: OSError, action: str, key: str) -> StorageError:
        if exc.errno in _DISK_FULL:
            return StorageError(f"{action} {self.uri_for(key)} failed: the disk is full ({exc})")
        return StorageError(f"{action} {self.uri_for(key)} failed: {exc}")

    def _write_chunk(self, fh: BinaryIO, chunk: bytes) -> None:
        """One write; a seam so tests can simulate a full disk where they cannot mount a small tmpfs."""
        fh.write(chunk)

    # --- primitives ----------------------------------------------------------------------------------------

    def put_stream(self, key: str, reader: BinaryIO, *, cancel_event: CancelEvent | None = None) -> int:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{TMP_MARKER}")
        written = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                while True:
                    check_cancel(cancel_event, f"writing {self.uri_for(key)}")
                    chunk = reader.read(CHUNK)
                    if not chunk:
                        break
                    self._write_chunk(fh, chunk)
                    written += len(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            self._fsync_dir(path.parent)
        except OSError as exc:
            raise self._error(exc, "writing", key) from exc
        finally:
            # after a successful replace tmp no longer exists; otherwise this removes the partial file
            try:
                tmp.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not remove temp file %s: %s", tmp, exc)
        return written

    @staticmethod
    def _fsync_dir(folder: Path) -> None:
        """Persist the rename itself, so a power loss cannot resurrect the old name."""
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass  # some filesystems (e.g. certain FUSE mounts) do not support fsync on directories
        finally:
            os.close(fd)

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        path = self._path(key)
        try:
            fh = open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(f"no object {key!r} in {self!r}") from None
        except OSError as exc:
            raise self._error(exc, "reading", key) from exc
        return self._chunks(fh, key, chunk_size)

    def _chunks(self, fh: BinaryIO, key: str, chunk_size: int) -> Iterator[bytes]:
        with fh:
            try:
                while chunk := fh.read(chunk_size):
                    yield chunk
            except OSError as exc:
                raise self._error(exc, "reading", key) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        prefix = validate_prefix(prefix)
        # walk only the deepest folder the prefix names, not the whole store
        start = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not start.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for fname in filenames:
                if fname.endswith(TMP_MARKER):
                    continue
                key = fname if rel_dir == "." else f"{rel_dir}/{fname}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            return
        except OSError as exc:
            raise self._error(exc, "deleting", key) from exc
        # drop folders the delete emptied, so a deleted artifact leaves no empty tree behind
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def copy(self, src: str, dst: str) -> None:
        path = self._path(src)
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            raise NotFoundError(f"no object {src!r} in {self!r}") from None
        except OSError as exc:
            raise self._error(exc, "reading", src) from exc
        with fh:
            self.put_stream(dst, fh)

    def uri_for(self, key: str) -> str:
        return f"file://{self.root.as_posix()}/{key}"

    def key_from_uri(self, uri: str) -> str:
        base = f"file://{self.root.as_posix()}/"
        if not isinstance(uri, str) or not uri.startswith("file://"):
            raise InvalidSpecError(f"{uri!r} is not a file:// URI, so it is not in {self!r}", field="uri")
        if not uri.startswith(base):
            raise InvalidSpecError(f"{uri!r} is outside this store's root {self.root}", field="uri")
        return validate_key(uri[len(base):], field="uri")
