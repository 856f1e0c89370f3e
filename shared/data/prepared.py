"""Reading the prepared curriculum (the datasets phase's artifact): file names, one split's records, and
the checklist's integrity check. Written by services/dataset/core/prepare.py; read by every later phase.
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.canonical import sha256_bytes
from shared.data.records import Record, canonical_name
from shared.errors import IntegrityError, InvalidSpecError, NotFoundError

MANIFEST = "datasets_manifest.json"
MANIFEST_FORMAT = "agentforge.datasets/v1"


def file_name(dataset: str, split: str) -> str:
    return f"{dataset}_{split}.json"


def load_split(directory: Path, dataset: str, split: str) -> list[Record]:
    """Records of one prepared split (after `verify_prepared`)."""
    path = Path(directory) / file_name(canonical_name(dataset), split)
    if not path.is_file():
        raise NotFoundError(f"prepared split {path.name} not found in {directory}")
    return [Record.from_dict(d) for d in json.loads(path.read_bytes())]


def verify_prepared(directory: Path, required=None) -> dict:
    """The checklist's integrity check: every file listed exists, hashes and counts match, and every
    required dataset is present. Returns the manifest."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise NotFoundError(f"{path} not found: run the datasets phase first")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise InvalidSpecError(f"{path}: not a datasets manifest", field="format")
    for name in required or manifest["required"]:
        if canonical_name(name) not in manifest["datasets"]:
            raise NotFoundError(f"required dataset {name} is not in {path}")
    for name, entry in manifest["datasets"].items():
        for split, f in entry["files"].items():
            data = (directory / f["file"]).read_bytes()
            if sha256_bytes(data) != f["sha256"]:
                raise IntegrityError(f"{f['file']}: sha256 does not match the manifest")
            if len(json.loads(data)) != f["count"]:
                raise IntegrityError(f"{f['file']}: {len(json.loads(data))} records, manifest says {f['count']}")
    return manifest
