"""The artifact manifest and the reference that points at it.

Every artifact is a folder of files plus `manifest.json`, written last. The manifest records each file's
sha256 and size, the config that produced it (and the hash of its canonical JSON, so two artifacts built
from the same config can be matched without comparing trees), the tokenizer folder, metrics, lineage
(parents) and the producing run/phase/job/fencing token. An `ArtifactRef` is what crosses process
boundaries: the artifact's URI plus the sha256 of the exact manifest bytes, so a reader holding a ref can
tell whether the manifest it finds is the one it was promised.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.errors import InvalidSpecError
from shared.canonical import config_hash, dumps_canonical, loads_strict
from shared.storage.keys import validate_key

MANIFEST_FORMAT = "agentforge.artifact/v1"
MANIFEST_NAME = "manifest.json"
KINDS = ("model", "checkpoint", "dataset", "tokenizer", "report", "other")
RETENTIONS = ("final", "intermediate")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class _ReadsLikeJSON(Mapping[str, Any]):
    """Read-only dict access (`entry["size"]`, `producer.get("run_id")`) on a frozen record, so code that
    treats the manifest as the JSON it was parsed from keeps working; attributes remain the typed API."""

    def __getitem__(self, name: str) -> Any:
        if name not in self.__dataclass_fields__:  # type: ignore[attr-defined]
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)  # type: ignore[attr-defined]


def _need(cond: bool, field_name: str, message: str) -> None:
    if not cond:
        raise InvalidSpecError(message, field=field_name)


def _check_sha(value: Any, field_name: str) -> None:
    _need(isinstance(value, str) and bool(_SHA256.fullmatch(value)), field_name,
          f"must be 64 lowercase hex characters (a sha256), got {value!r}")


def _check_size(value: Any, field_name: str) -> None:
    _need(isinstance(value, int) and not isinstance(value, bool) and value >= 0, field_name,
          f"must be a non-negative integer byte count, got {value!r}")


def _check_optional_str(value: Any, field_name: str) -> None:
    _need(value is None or isinstance(value, str), field_name, f"must be a string or null, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ArtifactRef:
    """A pointer to one artifact version."""

    uri: str
    """Where the artifact lives: `s3://bucket/<key>` or `file:///root/<key>` (the folder, not the manifest)."""
    sha256: str
    """sha256 of the exact `manifest.json` bytes; readers check the manifest against it."""
    size: int
    """Total bytes: every file plus the manifest."""
    name: str = ""
    """The artifact's human name (copied from the manifest)."""

    def __post_init__(self) -> None:
        _need(isinstance(self.uri, str) and "://" in self.uri, "uri", f"must be a URI, got {self.uri!r}")
        _check_sha(self.sha256, "sha256")
        _check_size(self.size, "size")
        _need(isinstance(self.name, str), "name", f"must be a string, got {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArtifactRef:
        if not isinstance(data, Mapping):
            raise InvalidSpecError(f"an artifact ref must be an object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"uri", "sha256", "size", "name"})
        _need(not unknown, unknown[0] if unknown else "", "unknown field in artifact ref")
        missing = [k for k in ("uri", "sha256", "size") if k not in data]
        _need(not missing, missing[0] if missing else "", "missing from artifact ref")
        return cls(uri=data["uri"], sha256=data["sha256"], size=data["size"], name=data.get("name", ""))


@dataclass(frozen=True, kw_only=True)
class Producer(_ReadsLikeJSON):
    """Who wrote an artifact; any field may be unknown (None), e.g. for an imported dataset."""

    run_id: str | None = None
    phase: str | None = None
    job_id: str | None = None
    request_id: str | None = None
    fencing_token: int | None = None

    def __post_init__(self) -> None:
        for name in ("run_id", "phase", "job_id", "request_id"):
            _check_optional_str(getattr(self, name), f"producer.{name}")
        token = self.fencing_token
        _need(token is None or (isinstance(token, int) and not isinstance(token, bool) and token >= 0),
              "producer.fencing_token", f"must be a non-negative integer or null, got {token!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | Producer | None) -> Producer:
        if data is None:
            return cls()
        if isinstance(data, Producer):
            return data
        _need(isinstance(data, Mapping), "producer", f"must be an object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"run_id", "phase", "job_id", "request_id", "fencing_token"})
        _need(not unknown, f"producer.{unknown[0]}" if unknown else "producer", "unknown field")
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class FileEntry(_ReadsLikeJSON):
    """Hash and size of one file of an artifact."""

    sha256: str
    size: int


def _parse_time(value: Any) -> datetime:
    _need(isinstance(value, str), "created_at", f"must be an ISO-8601 UTC timestamp, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidSpecError(f"must be an ISO-8601 UTC timestamp, got {value!r}", field="created_at") from None
    _need(parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0, "created_at",
          f"must be in UTC, got {value!r}")
    return parsed


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """Contents of `manifest.json`. Construct with `Manifest.create`; parse with `Manifest.from_json`."""

    format: str = MANIFEST_FORMAT
    kind: str
    """One of KINDS."""
    name: str
    files: dict[str, FileEntry]
    """relpath -> hash and size of every file in the artifact (manifest.json itself excluded)."""
    config: dict[str, Any] = field(default_factory=dict)
    config_hash: str
    """sha256 of the canonical JSON of `config`."""
    tokenizer: str | None = None
    """relpath of the tokenizer folder inside the artifact (model artifacts carry their tokenizer)."""
    metrics: dict[str, float] = field(default_factory=dict)
    parents: tuple[ArtifactRef, ...] = ()
    producer: Producer = field(default_factory=Producer)
    retention: str = "final"
    """"final": published by the coordinator (promotion marks it), kept by `artifacts gc`; "intermediate":
    a job's staged outputs, checkpoints and work units, which gc deletes once the run is done."""
    created_at: str

    def __post_init__(self) -> None:
        _need(self.format == MANIFEST_FORMAT, "format", f"must be {MANIFEST_FORMAT!r}, got {self.format!r}")
        _need(self.kind in KINDS, "kind", f"must be one of {', '.join(KINDS)}; got {self.kind!r}")
        _need(isinstance(self.name, str) and bool(self.name), "name", "must be a non-empty string")
        _need(isinstance(self.files, dict), "files", "must be an object of relpath -> {sha256, size}")
        for rel, entry in self.files.items():
            validate_key(rel, field=f"files[{rel!r}]")
            _need(rel != MANIFEST_NAME, f"files[{rel!r}]", "manifest.json is reserved for the manifest itself")
            _need(isinstance(entry, FileEntry), f"files[{rel!r}]", "must be a FileEntry")
            _check_sha(entry.sha256, f"files[{rel!r}].sha256")
            _check_size(entry.size, f"files[{rel!r}].size")
        _need(isinstance(self.config, dict), "config", f"must be an object, got {type(self.config).__name__}")
        _check_sha(self.config_hash, "config_hash")
        _need(self.config_hash == config_hash(self.config), "config_hash",
              "does not match the sha256 of the canonical JSON of config (config was edited?)")
        if self.tokenizer is not None:
            tok = validate_key(self.tokenizer, field="tokenizer")
            _need(any(rel.startswith(tok + "/") for rel in self.files), "tokenizer",
                  f"names folder {tok!r} but the artifact has no files under it")
        _need(isinstance(self.metrics, dict), "metrics", "must be an object of name -> number")
        for key, value in self.metrics.items():
            _need(isinstance(key, str) and bool(key), "metrics", f"metric names must be non-empty strings: {key!r}")
            _need(isinstance(value, float) and math.isfinite(value), f"metrics.{key}",
                  f"must be a finite float, got {value!r}")
        _need(all(isinstance(p, ArtifactRef) for p in self.parents), "parents", "must be ArtifactRefs")
        _need(isinstance(self.producer, Producer), "producer", "must be a Producer")
        _need(self.retention in RETENTIONS, "retention", f"must be one of {RETENTIONS}; got {self.retention!r}")
        _parse_time(self.created_at)

    @classmethod
    def create(
        cls,
        *,
        kind: str,
        name: str,
        files: Mapping[str, FileEntry],
        config: Mapping[str, Any] | None = None,
        tokenizer: str | None = None,
        metrics: Mapping[str, float] | None = None,
        parents: tuple[ArtifactRef, ...] | list[ArtifactRef] = (),
        producer: Producer | Mapping[str, Any] | None = None,
        retention: str = "final",
        created_at: datetime | None = None,
    ) -> Manifest:
        cfg = dict(config or {})
        return cls(
            kind=kind,
            name=name,
            files=dict(sorted(files.items())),
            config=cfg,
            config_hash=config_hash(cfg),
            tokenizer=tokenizer,
            metrics=normalize_metrics(metrics or {}),
            parents=tuple(p if isinstance(p, ArtifactRef) else ArtifactRef.from_dict(p) for p in parents),
            producer=Producer.from_dict(producer),
            retention=retention,
            created_at=(created_at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds"),
        )

    @property
    def total_file_bytes(self) -> int:
        return sum(entry.size for entry in self.files.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "kind": self.kind,
            "name": self.name,
            "files": {rel: {"sha256": e.sha256, "size": e.size} for rel, e in self.files.items()},
            "config": self.config,
            "config_hash": self.config_hash,
            "tokenizer": self.tokenizer,
            "metrics": self.metrics,
            "parents": [p.to_dict() for p in self.parents],
            "producer": asdict(self.producer),
            "retention": self.retention,
            "created_at": self.created_at,
        }

    def to_json(self) -> bytes:
        """Canonical bytes: the manifest hash in an ArtifactRef is the sha256 of exactly these bytes."""
        return dumps_canonical(self.to_dict()).encode("utf-8")

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        _need(isinstance(data, dict), "manifest", f"must be a JSON object, got {type(data).__name__}")
        expected = {"format", "kind", "name", "files", "config", "config_hash", "tokenizer", "metrics",
                    "parents", "producer", "retention", "created_at"}
        unknown, missing = sorted(set(data) - expected), sorted(expected - set(data))
        _need(not unknown, unknown[0] if unknown else "", "unknown manifest field")
        _need(not missing, missing[0] if missing else "", "missing from manifest")
        _need(data["format"] == MANIFEST_FORMAT, "format",
              f"must be {MANIFEST_FORMAT!r}, got {data['format']!r} (not an Agent Forge artifact?)")
        files = data["files"]
        _need(isinstance(files, dict), "files", "must be an object of relpath -> {sha256, size}")
        entries = {}
        for rel, entry in files.items():
            _need(isinstance(entry, dict) and set(entry) == {"sha256", "size"}, f"files[{rel!r}]",
                  "must be exactly {sha256, size}")
            entries[rel] = FileEntry(sha256=entry["sha256"], size=entry["size"])
        _need(isinstance(data["parents"], list), "parents", "must be a list of artifact refs")
        metrics = data["metrics"]
        _need(isinstance(metrics, dict), "metrics", "must be an object of name -> number")
        return cls(
            kind=data["kind"],
            name=data["name"],
            files=entries,
            config=data["config"],
            config_hash=data["config_hash"],
            tokenizer=data["tokenizer"],
            metrics=normalize_metrics(metrics),
            parents=tuple(ArtifactRef.from_dict(p) for p in data["parents"]),
            producer=Producer.from_dict(data["producer"]),
            retention=data["retention"],
            created_at=data["created_at"],
        )

    @classmethod
    def from_json(cls, data: bytes | str, *, source: str = "manifest.json") -> Manifest:
        try:
            return cls.from_dict(loads_strict(data, name=source))
        except InvalidSpecError as exc:
            raise InvalidSpecError(f"{source}: {exc}") from exc


def normalize_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Ints become floats (JSON does not keep the distinction); bools and non-numbers are refused."""
    out = {}
    for key, value in metrics.items():
        _need(isinstance(value, (int, float)) and not isinstance(value, bool), f"metrics.{key}",
              f"must be a number, got {value!r}")
        out[key] = float(value)
    return out
