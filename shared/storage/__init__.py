"""Artifact storage: content-verified, manifest-last artifacts on a local folder or S3 (DESIGN.md §4)."""

from shared.storage.base import ArtifactStore, VerifyReport
from shared.storage.factory import store_from_uri
from shared.storage.formats import (
    check_safetensors_file,
    dumps_canonical,
    load_tensors,
    load_tensors_bytes,
    loads_strict,
    optimizer_state_bytes,
    optimizer_state_from_bytes,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
    save_tensors,
    sha256_bytes,
    sha256_file,
    tensors_to_bytes,
)
from shared.storage.keys import checkpoint_prefix, published_key, staging_key, validate_key, validate_prefix
from shared.storage.local import LocalStore
from shared.storage.manifest import (
    KINDS,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    RETENTIONS,
    ArtifactRef,
    FileEntry,
    Manifest,
    Producer,
    config_hash,
)
from shared.storage.s3 import RetryPolicy, S3Store
from shared.storage.streams import CancelEvent
from shared.storage.writer import ArtifactWriter

__all__ = [
    "KINDS",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "RETENTIONS",
    "ArtifactRef",
    "ArtifactStore",
    "ArtifactWriter",
    "CancelEvent",
    "FileEntry",
    "LocalStore",
    "Manifest",
    "Producer",
    "RetryPolicy",
    "S3Store",
    "VerifyReport",
    "check_safetensors_file",
    "checkpoint_prefix",
    "config_hash",
    "dumps_canonical",
    "load_tensors",
    "load_tensors_bytes",
    "loads_strict",
    "optimizer_state_bytes",
    "optimizer_state_from_bytes",
    "optimizer_state_from_tensors",
    "optimizer_state_to_tensors",
    "published_key",
    "save_tensors",
    "sha256_bytes",
    "sha256_file",
    "staging_key",
    "store_from_uri",
    "tensors_to_bytes",
    "validate_key",
    "validate_prefix",
]
