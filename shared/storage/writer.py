"""ArtifactWriter: all-or-nothing creation of one artifact.

    with store.open_artifact(key, kind="model", name="champion", config=cfg, producer=p) as w:
        w.add_tensors("model.safetensors", model.state_dict())
        w.add_dir("tokenizer", tok_dir)
        w.set_metrics({"val_nll": 2.31})
    ref = w.ref

Files are uploaded as they are added (each one atomically, hashed while it streams, so the recorded
sha256 is of the bytes actually sent and large files are read once). `manifest.json` is written only on a
clean exit, after every file; on any error or cancellation the writer deletes what it wrote and never
writes the manifest, so the artifact never becomes visible.
"""

from __future__ import annotations

import errno
import io
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from shared.errors import AgentForgeError, InvalidSpecError, StorageError
from shared.storage import formats
from shared.storage.keys import validate_key
from shared.storage.manifest import (
    KINDS,
    MANIFEST_NAME,
    RETENTIONS,
    ArtifactRef,
    FileEntry,
    Manifest,
    Producer,
    normalize_metrics,
)
from shared.storage.streams import CancelEvent, HashingReader, check_cancel

if TYPE_CHECKING:
    from shared.storage.base import ArtifactStore

log = logging.getLogger(__name__)

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _translate(exc: BaseException, key: str) -> BaseException:
    """The error callers see: our own errors unchanged, OS errors as StorageError (naming a full disk)."""
    if isinstance(exc, AgentForgeError) or not isinstance(exc, OSError):
        return exc
    if exc.errno in _DISK_FULL:
        return StorageError(f"artifact {key} was not written: the disk is full ({exc})")
    return StorageError(f"artifact {key} was not written: {exc}")


class ArtifactWriter:
    """Context manager returned by `ArtifactStore.open_artifact`; `ref` is set after a clean exit."""

    def __init__(
        self,
        store: ArtifactStore,
        key: str,
        *,
        kind: str,
        name: str,
        config: dict[str, Any] | None,
        producer: Producer | dict[str, Any] | None,
        parents: list[ArtifactRef] | tuple[ArtifactRef, ...],
        retention: str,
        tokenizer: str | None,
        cancel_event: CancelEvent | None,
    ):
        # validate everything the manifest needs now, so a bad argument fails before any upload
        if kind not in KINDS:
            raise InvalidSpecError(f"must be one of {', '.join(KINDS)}; got {kind!r}", field="kind")
        if retention not in RETENTIONS:
            raise InvalidSpecError(f"must be one of {RETENTIONS}; got {retention!r}", field="retention")
        if not isinstance(name, str) or not name:
            raise InvalidSpecError("must be a non-empty string", field="name")
        self._config = dict(config or {})
        formats.dumps_canonical(self._config)
        self._producer = Producer.from_dict(producer)
        self._parents = tuple(p if isinstance(p, ArtifactRef) else ArtifactRef.from_dict(p) for p in parents)
        self._tokenizer = validate_key(tokenizer, field="tokenizer") if tokenizer is not None else None
        self._store, self.key, self._kind, self._name, self._retention = store, key, kind, name, retention
        self._cancel = cancel_event
        self._files: dict[str, FileEntry] = {}
        self._metrics: dict[str, float] = {}
        self._written: list[str] = []
        self._entered = False
        self.ref: ArtifactRef | None = None
        self.manifest: Manifest | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------

    def __enter__(self) -> ArtifactWriter:
        self._store.claim_key(self.key)  # refuses existing/nested artifacts, clears invisible leftovers
        self._entered = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            if self.ref is None:
                self.commit()
            return False
        if self.ref is not None:  # committed explicitly before the error: the artifact is complete, keep it
            return False
        self._abort()
        translated = _translate(exc, self._store.uri_for(self.key))
        if translated is exc:
            return False
        raise translated from exc

    def commit(self) -> ArtifactRef:
        """Write manifest.json (after every file) and return the ref; called by a clean `with` exit."""
        self._require_open()
        try:
            check_cancel(self._cancel, f"writing artifact {self.key}")
            self.manifest = Manifest.create(
                kind=self._kind, name=self._name, files=self._files, config=self._config,
                tokenizer=self._tokenizer, metrics=self._metrics, parents=self._parents,
                producer=self._producer, retention=self._retention,
            )
            data = self.manifest.to_json()
            self._put(MANIFEST_NAME, io.BytesIO(data))
        except BaseException as exc:
            self._abort()
            translated = _translate(exc, self._store.uri_for(self.key))
            if translated is exc:
                raise
            raise translated from exc
        self.ref = ArtifactRef(
            uri=self._store.uri_for(self.key), sha256=formats.sha256_bytes(data),
            size=self.manifest.total_file_bytes + len(data), name=self._name,
        )
        log.info("wrote artifact %s (%d files, %d bytes)", self.ref.uri, len(self._files), self.ref.size)
        return self.ref

    def _abort(self) -> None:
        """Delete what this writer wrote; best effort, a leftover without a manifest stays invisible."""
        for key in reversed(self._written):
            try:
                self._store.delete(key)
            except Exception as exc:  # noqa: BLE001 - the original error matters more
                log.warning("could not delete %s after a failed write: %s", self._store.uri_for(key), exc)
        self._written.clear()
        self._files.clear()

    # --- adding content ---------------------------------------------------------------------------------

    def _require_open(self) -> None:
        if not self._entered:
            raise InvalidSpecError("use the artifact writer as a context manager (`with store.open_artifact(...)`)")
        if self.ref is not None:
            raise InvalidSpecError(f"artifact {self.key} is already committed; artifacts are immutable")

    def _relpath(self, relpath: str) -> str:
        rel = validate_key(relpath, field="relpath")
        if rel == MANIFEST_NAME:
            raise InvalidSpecError("manifest.json is reserved for the manifest", field="relpath")
        if rel in self._files:
            raise InvalidSpecError(f"{rel!r} was already added to artifact {self.key}", field="relpath")
        return rel

    def _put(self, rel: str, raw: io.RawIOBase | io.BufferedIOBase | Any) -> FileEntry:
        key = f"{self.key}/{rel}"
        reader = HashingReader(raw)
        self._written.append(key)  # before the put: a failed put may still leave an object to delete
        self._store.put_stream(key, reader, cancel_event=self._cancel)  # type: ignore[arg-type]
        return FileEntry(sha256=reader.sha256, size=reader.size)

    def _add(self, relpath: str, raw: Any) -> FileEntry:
        self._require_open()
        rel = self._relpath(relpath)
        check_cancel(self._cancel, f"writing artifact {self.key}")
        entry = self._put(rel, raw)
        self._files[rel] = entry
        return entry

    def add_file(self, relpath: str, local_path: str | os.PathLike[str]) -> FileEntry:
        if relpath.endswith(".safetensors"):  # never publish a pickle under a safetensors name
            formats.check_safetensors_file(local_path)
        with open(local_path, "rb") as fh:
            return self._add(relpath, fh)

    def add_bytes(self, relpath: str, data: bytes) -> FileEntry:
        if relpath.endswith(".safetensors"):
            formats.check_safetensors_bytes(data, relpath)
        return self._add(relpath, io.BytesIO(data))

    def add_json(self, relpath: str, obj: Any) -> FileEntry:
        return self.add_bytes(relpath, formats.dumps_canonical(obj).encode("utf-8"))

    def add_tensors(
        self, relpath: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
    ) -> FileEntry:
        return self.add_bytes(relpath, formats.tensors_to_bytes(tensors, metadata))

    def add_dir(self, relpath: str, local_dir: str | os.PathLike[str]) -> dict[str, FileEntry]:
        """Add every regular file under `local_dir` as `<relpath>/<its path>` ("" adds at the root).

        Symlinked files are followed (Hugging Face caches use them); symlinked folders are not, so a
        link cycle cannot loop.
        """
        root = Path(local_dir)
        if not root.is_dir():
            raise InvalidSpecError(f"{root} is not a directory", field="local_dir")
        added = {}
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for fname in sorted(filenames):
                path = Path(dirpath) / fname
                inner = path.relative_to(root).as_posix()
                rel = f"{relpath}/{inner}" if relpath else inner
                added[rel] = self.add_file(rel, path)
        return added

    def set_metrics(self, metrics: dict[str, float]) -> None:
        """Replace the metrics recorded in the manifest (finite numbers only: NaN is not a measurement)."""
        normalized = normalize_metrics(metrics)
        bad = sorted(k for k, v in normalized.items() if not math.isfinite(v))
        if bad:
            raise InvalidSpecError(f"metrics must be finite; got {', '.join(f'{k}={normalized[k]}' for k in bad)}",
                                   field="metrics")
        self._metrics = normalized
