"""The artifact store interface: object operations per backend, artifact operations once for all.

Backends (LocalStore, S3Store) implement a handful of object primitives: streaming put with cancellation,
chunked read, exists, list, delete, copy and the key <-> URI mapping. Everything an artifact means is
built here on top of them, so both backends share one definition of "complete", "verified" and "visible":

- an artifact is `<key>/manifest.json` plus the files it lists; the manifest is written last and deleted
  first, so a reader (and `list_artifacts`) never sees a half-written or half-deleted artifact;
- every read of a file is checked against the manifest's sha256 and size, and a manifest read through an
  ArtifactRef is checked against the ref's sha256, so a corrupt or swapped artifact raises IntegrityError;
- tensors are loaded only after the safetensors structural check (formats.py), never unpickled;
- `promote` publishes a staged artifact: its copy is marked final and its parents point at published
  artifacts, never at staging (which `artifacts gc` deletes, shared/storage/gc.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from shared.errors import (
    AlreadyExistsError,
    IntegrityError,
    InvalidSpecError,
    NotFoundError,
    StorageError,
)
from shared.storage import formats
from shared.storage.keys import staging_folder, validate_key, validate_prefix
from shared.storage.manifest import MANIFEST_NAME, ArtifactRef, FileEntry, Manifest, Producer
from shared.storage.streams import CHUNK, CancelEvent
from shared.storage.writer import ArtifactWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyReport:
    """Result of `verify`: every file was re-read from the store and matched its manifest entry."""

    uri: str
    manifest_sha256: str
    files: int
    bytes: int


def _join(key: str, rel: str) -> str:
    return f"{key}/{rel}"


class ArtifactStore(ABC):
    """Base class of every backend; see the module docstring for the artifact rules."""

    # --- object primitives (backends) ------------------------------------------------------------------

    @abstractmethod
    def put_stream(self, key: str, reader: BinaryIO, *, cancel_event: CancelEvent | None = None) -> int:
        """Store everything `reader` yields under `key`, atomically (all or nothing); returns bytes written.

        Raises CancelledError if `cancel_event` is set mid-way, leaving no object and no partial upload.
        """

    @abstractmethod
    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Yield the object's bytes; NotFoundError if there is no such object."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """All object keys starting with `prefix` (a plain string prefix, recursive), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; removing a missing object is not an error."""

    @abstractmethod
    def copy(self, src: str, dst: str) -> None:
        """Copy an object inside this store (server-side where the backend can)."""

    @abstractmethod
    def uri_for(self, key: str) -> str: ...

    @abstractmethod
    def key_from_uri(self, uri: str) -> str:
        """Inverse of uri_for; InvalidSpecError if the URI belongs to another scheme, bucket or root."""

    # --- object conveniences (overridable) -------------------------------------------------------------

    def put_file(self, key: str, path: str | os.PathLike[str], *, cancel_event: CancelEvent | None = None) -> int:
        with open(path, "rb") as fh:
            return self.put_stream(key, fh, cancel_event=cancel_event)

    def put_bytes(self, key: str, data: bytes, *, cancel_event: CancelEvent | None = None) -> int:
        return self.put_stream(key, io.BytesIO(data), cancel_event=cancel_event)

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.iter_chunks(key))

    def get_file(self, key: str, dest: str | os.PathLike[str]) -> int:
        """Download to `dest` through a temp file in the same folder, so `dest` is never partial."""
        return self._download(key, Path(dest))

    def delete_keys(self, keys: list[str]) -> None:
        for key in keys:
            self.delete(key)

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(validate_prefix(prefix))
        self.delete_keys(keys)
        return len(keys)

    def _download(
        self, key: str, dest: Path, check: Callable[[int, str | None], None] | None = None, hash_it: bool = False
    ) -> int:
        """Stream to a temp file; `check(size, sha256)` runs before the rename, so a file that fails it
        never appears under its final name."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
        digest = hashlib.sha256() if hash_it else None
        size = 0
        try:
            with open(tmp, "wb") as fh:
                for chunk in self.iter_chunks(key):
                    fh.write(chunk)
                    size += len(chunk)
                    if digest is not None:
                        digest.update(chunk)
            if check is not None:
                check(size, digest.hexdigest() if digest is not None else None)
            os.replace(tmp, dest)
        except OSError as exc:
            raise StorageError(f"downloading {self.uri_for(key)} to {dest} failed: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def _hash_object(self, key: str) -> tuple[int, str]:
        digest, size = hashlib.sha256(), 0
        for chunk in self.iter_chunks(key):
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()

    # --- writing artifacts ------------------------------------------------------------------------------

    def open_artifact(
        self,
        key: str,
        *,
        kind: str,
        name: str,
        config: dict[str, Any] | None = None,
        producer: Producer | dict[str, Any] | None = None,
        parents: list[ArtifactRef] | tuple[ArtifactRef, ...] = (),
        retention: str = "final",
        tokenizer: str | None = None,
        cancel_event: CancelEvent | None = None,
    ) -> ArtifactWriter:
        """Start writing an artifact under `key`; use as a context manager (see ArtifactWriter)."""
        return ArtifactWriter(
            self, validate_key(key), kind=kind, name=name, config=config, producer=producer,
            parents=parents, retention=retention, tokenizer=tokenizer, cancel_event=cancel_event,
        )

    # --- reading artifacts ------------------------------------------------------------------------------

    def _artifact_key(self, ref_or_key: ArtifactRef | str) -> str:
        if isinstance(ref_or_key, ArtifactRef):
            return self.key_from_uri(ref_or_key.uri)
        if "://" in ref_or_key:
            return self.key_from_uri(ref_or_key)
        return validate_key(ref_or_key)

    def _read_manifest_bytes(self, ref_or_key: ArtifactRef | str) -> tuple[str, Manifest, bytes]:
        key = self._artifact_key(ref_or_key)
        where = self.uri_for(key)
        try:
            data = self.get_bytes(_join(key, MANIFEST_NAME))
        except NotFoundError:
            raise NotFoundError(
                f"no artifact at {where}: it has no {MANIFEST_NAME} (never completed, or deleted)"
            ) from None
        if isinstance(ref_or_key, ArtifactRef):
            actual = formats.sha256_bytes(data)
            if actual != ref_or_key.sha256:
                raise IntegrityError(
                    f"manifest of {where} does not match its ref: expected sha256 {ref_or_key.sha256}, "
                    f"got {actual}; the artifact was replaced or is corrupt"
                )
        try:
            manifest = Manifest.from_json(data, source=_join(where, MANIFEST_NAME))
        except InvalidSpecError as exc:
            raise IntegrityError(f"malformed manifest: {exc}") from exc
        if isinstance(ref_or_key, ArtifactRef):
            total = manifest.total_file_bytes + len(data)
            if total != ref_or_key.size:
                raise IntegrityError(f"{where}: ref says {ref_or_key.size} bytes, manifest adds up to {total}")
        return key, manifest, data

    def read_manifest(self, ref_or_key: ArtifactRef | str) -> Manifest:
        """The artifact's manifest; checked against `ref.sha256` when given a ref (IntegrityError)."""
        return self._read_manifest_bytes(ref_or_key)[1]

    def ref_for(self, key: str) -> ArtifactRef:
        """An ArtifactRef for the complete artifact at `key` (trusting what is stored now)."""
        key, manifest, data = self._read_manifest_bytes(key)
        return _make_ref(self.uri_for(key), manifest, data)

    def _entry(self, manifest: Manifest, where: str, rel: str) -> FileEntry:
        rel = validate_key(rel, field="relpath")
        if rel not in manifest.files:
            raise NotFoundError(f"artifact {where} has no file {rel!r}; it has {sorted(manifest.files)[:10]}")
        return manifest.files[rel]

    def _check(self, where: str, rel: str, entry: FileEntry, size: int, sha: str | None) -> None:
        if size != entry.size or (sha is not None and sha != entry.sha256):
            raise IntegrityError(
                f"{_join(where, rel)} is corrupt: expected sha256 {entry.sha256} ({entry.size} bytes), "
                f"got {sha or 'unhashed'} ({size} bytes)"
            )

    def read_file_bytes(self, ref: ArtifactRef, relpath: str) -> bytes:
        """One file of an artifact, verified against the manifest."""
        key, manifest, _ = self._read_manifest_bytes(ref)
        rel = validate_key(relpath, field="relpath")
        entry = self._entry(manifest, ref.uri, rel)
        buf = bytearray()
        for chunk in self.iter_chunks(_join(key, rel)):
            buf += chunk
            if len(buf) > entry.size:  # stop early: a swapped-in huge object must not fill memory
                break
        data = bytes(buf)
        self._check(ref.uri, rel, entry, len(data), formats.sha256_bytes(data))
        return data

    def load_tensors(self, ref: ArtifactRef, relpath: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """(tensors, metadata) of a safetensors file: hash checked, then format checked, never unpickled."""
        data = self.read_file_bytes(ref, relpath)
        return formats.load_tensors_bytes(data, name=_join(ref.uri, relpath))

    def load_json(self, ref: ArtifactRef, relpath: str) -> Any:
        return formats.loads_strict(self.read_file_bytes(ref, relpath), name=_join(ref.uri, relpath))

    def fetch(self, ref: ArtifactRef, dest_dir: str | os.PathLike[str], *, verify: bool = True) -> Path:
        """Download every file (and the manifest) into `dest_dir`; each file is checked as it arrives.

        With verify=False only sizes are checked (for benchmarking the cost of hashing; do not use it to
        load anything).
        """
        key, manifest, data = self._read_manifest_bytes(ref)
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        for rel, entry in manifest.files.items():
            self._download(_join(key, rel), dest / rel, hash_it=verify,
                           check=lambda size, sha, rel=rel, entry=entry: self._check(ref.uri, rel, entry, size, sha))
        (dest / MANIFEST_NAME).write_bytes(data)
        return dest

    def verify(self, ref: ArtifactRef) -> VerifyReport:
        """Re-read and re-hash every file in the store; IntegrityError listing every mismatch."""
        key, manifest, data = self._read_manifest_bytes(ref)
        problems = []
        for rel, entry in manifest.files.items():
            try:
                size, sha = self._hash_object(_join(key, rel))
            except NotFoundError:
                problems.append(f"{rel}: missing")
                continue
            if size != entry.size or sha != entry.sha256:
                problems.append(f"{rel}: expected sha256 {entry.sha256} ({entry.size} bytes), got {sha} ({size} bytes)")
        if problems:
            raise IntegrityError(f"artifact {ref.uri} failed verification: " + "; ".join(problems))
        return VerifyReport(ref.uri, ref.sha256, len(manifest.files), manifest.total_file_bytes + len(data))

    def list_artifacts(self, prefix: str = "") -> list[str]:
        """Keys of the complete artifacts under `prefix` (those with a manifest), sorted.

        One listing call, no manifest reads; use `list_refs` when you need refs.
        """
        suffix = "/" + MANIFEST_NAME
        keys = sorted(k[: -len(suffix)] for k in self.list(validate_prefix(prefix)) if k.endswith(suffix))
        out: list[str] = []
        for key in keys:
            # a file named manifest.json inside an artifact's folder is content, not another artifact
            if out and key.startswith(out[-1] + "/"):
                continue
            out.append(key)
        return out

    def list_refs(self, prefix: str = "") -> list[ArtifactRef]:
        """ArtifactRefs of the complete artifacts under `prefix`; unreadable manifests are skipped (logged)."""
        refs = []
        for key in self.list_artifacts(prefix):
            try:
                refs.append(self.ref_for(key))
            except (NotFoundError, IntegrityError) as exc:  # deleted meanwhile, or corrupt
                log.warning("skipping unreadable artifact %s: %s", self.uri_for(key), exc)
        return refs

    # --- publishing and deleting ------------------------------------------------------------------------

    def promote(self, staged_ref: ArtifactRef, published_key: str) -> ArtifactRef:
        """Publish a staged artifact at `published_key`: copy and verify its files, then write its manifest last.

        The published manifest is the staged one marked "final", with every parent that the same job staged
        (same `jobs/<job>/t<token>/` folder, e.g. Cognate's ancestor of its three variants) replaced by that
        parent's published ref: the parent is promoted beside the artifact first (idempotent), so published
        lineage never points into staging, which `artifacts gc` deletes. Idempotent for the same artifact;
        AlreadyExistsError if a different artifact is published there.
        """
        src, staged, _ = self._read_manifest_bytes(staged_ref)
        dst = validate_key(published_key, field="published_key")
        if dst == src:
            raise InvalidSpecError(f"cannot promote {staged_ref.uri} onto itself", field="published_key")
        manifest = dataclasses.replace(staged, retention="final",
                                       parents=self._published_parents(src, dst, staged.parents))
        data = manifest.to_json()
        ref = _make_ref(self.uri_for(dst), manifest, data)
        try:
            existing = self.get_bytes(_join(dst, MANIFEST_NAME))
        except NotFoundError:
            existing = None
        if existing is not None:
            if existing == data:
                log.info("promote: %s already holds %s", ref.uri, ref.sha256[:12])
                return ref
            raise AlreadyExistsError(
                f"{ref.uri} already holds a different artifact (manifest sha256 "
                f"{formats.sha256_bytes(existing)}); refusing to replace it with {staged_ref.uri}"
            )
        self.claim_key(dst)
        try:
            for rel, entry in manifest.files.items():
                self.copy(_join(src, rel), _join(dst, rel))
                size, sha = self._hash_object(_join(dst, rel))
                self._check(ref.uri, rel, entry, size, sha)
            self.put_bytes(_join(dst, MANIFEST_NAME), data)
        except BaseException:
            self._cleanup(dst, "promote")
            raise
        log.info("promoted %s -> %s (%d files)", staged_ref.uri, ref.uri, len(manifest.files))
        return ref

    def _published_parents(self, src: str, dst: str, parents: tuple[ArtifactRef, ...]) -> tuple[ArtifactRef, ...]:
        """`parents` with each one staged beside `src` (same job and token) promoted beside `dst`.

        A job publishes all its outputs under one folder, each under its staging name (runs/<run>/<phase>/
        <name> for jobs/<job>/t<token>/<name>), so a sibling in staging is a sibling once published."""
        folder = staging_folder(src)
        if folder is None:
            return parents
        name = src[len(folder) + 1:]
        root = dst[: -len(name) - 1] if dst.endswith("/" + name) else dst.rpartition("/")[0]
        out = []
        for parent in parents:
            try:
                key = self.key_from_uri(parent.uri)
            except InvalidSpecError:  # another store: not ours to publish
                key = None
            if key is None or staging_folder(key) != folder:
                if key is not None and staging_folder(key) is not None:
                    log.warning("promote %s: parent %s is another job's staged output; lineage keeps it as is",
                                src, parent.uri)
                out.append(parent)
                continue
            sibling = key[len(folder) + 1:]
            out.append(self.promote(parent, f"{root}/{sibling}" if root else sibling))
        return tuple(out)

    def claim_key(self, key: str) -> int:
        """Make `key` ready for a new artifact; returns how many leftover objects were removed.

        AlreadyExistsError if an artifact exists at `key`, inside it (a manifest below `key`) or around it
        (a manifest at a parent key): clearing the folder would delete or corrupt that artifact. Anything
        else under `key` is an invisible leftover of a crashed writer and is removed, so it cannot be
        mistaken for part of the new artifact.
        """
        parts = key.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if self.exists(_join(parent, MANIFEST_NAME)):
                raise AlreadyExistsError(
                    f"cannot create an artifact at {self.uri_for(key)}: it is inside artifact {self.uri_for(parent)}"
                )
        leftovers = self.list(key + "/")
        manifests = [k for k in leftovers if k.endswith("/" + MANIFEST_NAME)]
        if manifests:
            where = manifests[0][: -len(MANIFEST_NAME) - 1]
            raise AlreadyExistsError(
                f"an artifact already exists at {self.uri_for(where)}; artifacts are immutable "
                "(write under a new key, or delete_artifact first)"
            )
        self.delete_keys(leftovers)
        if leftovers:
            log.info("removed %d leftover objects under %s", len(leftovers), self.uri_for(key))
        return len(leftovers)

    def delete_artifact(self, ref_or_key: ArtifactRef | str) -> int:
        """Delete the manifest first (the artifact disappears at once), then its files."""
        key = self._artifact_key(ref_or_key)
        self.delete(_join(key, MANIFEST_NAME))
        return self.delete_prefix(key + "/")

    def _cleanup(self, key: str, why: str) -> None:
        """Best effort: a leftover without a manifest is invisible, so a failed cleanup only wastes space."""
        try:
            self.delete(_join(key, MANIFEST_NAME))
            self.delete_prefix(key + "/")
        except Exception as exc:  # noqa: BLE001 - never mask the error that made us clean up
            log.warning("%s: could not remove leftovers under %s: %s", why, self.uri_for(key), exc)


def _make_ref(uri: str, manifest: Manifest, data: bytes) -> ArtifactRef:
    return ArtifactRef(
        uri=uri, sha256=formats.sha256_bytes(data), size=manifest.total_file_bytes + len(data), name=manifest.name
    )

