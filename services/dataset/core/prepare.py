"""Preparing the curriculum: every dataset from its first available source, split, decontaminated, capped,
written as `{name}_{split}.json` (a JSON array of records) with one manifest, plus the tokenizer.

The manifest (datasets_manifest.json) records per dataset: counts per split, each file's sha256, the source
actually used, which splits are derived, the license, and every skipped line with its reason. The
checklist's integrity check (`verify_prepared`) and the run report read it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from services.dataset.core.adapters.registry import get_adapter
from services.dataset.core.sources import build_sources, resolve
from services.dataset.core.splits import assign_splits, cap, check_contamination, decontaminate
from shared.canonical import sha256_bytes
from shared.config.load import resolve_path
from shared.config.schema import DatasetsConfig
from shared.data.records import Record, canonical_name
from shared.data.prepared import MANIFEST, MANIFEST_FORMAT, file_name
from shared.errors import FailedPreconditionError
from shared.utils import DatasetUnavailableError

log = logging.getLogger(__name__)



@dataclass
class Prepared:
    directory: Path
    manifest: dict
    records: dict[str, dict[str, list[Record]]] = field(repr=False)


def prepare_datasets(spec: DatasetsConfig, out_dir: Path, *, seed: int, progress: Callable[[str, float], None] = lambda *_: None) -> Prepared:
    required = [canonical_name(n) for n in spec.required]
    optional = [canonical_name(n) for n in spec.optional]
    names = required + [n for n in optional if n not in required]
    sources = build_sources(spec.sources, mirror_dir=resolve_path(spec.mirror_dir), seed=seed,
                            on_bad_line=spec.on_bad_line)
    splits_by_dataset: dict[str, dict[str, list[Record]]] = {}
    info: dict[str, dict] = {}
    missing: dict[str, list[str]] = {}
    absent_optional: dict[str, str] = {}
    for i, name in enumerate(names):
        progress(f"reading {name}", i / max(1, len(names)))
        adapter = get_adapter(name)
        try:
            provided = resolve(adapter, sources, limit=spec.max_examples_per_dataset)
        except DatasetUnavailableError as exc:
            if name in optional:
                absent_optional[name] = "; ".join(exc.missing[name])
                log.warning("optional dataset %s unavailable: %s", name, absent_optional[name])
                continue
            missing.update(exc.missing)
            continue
        result = assign_splits(name, provided.splits, val_fraction=spec.val_fraction)
        splits = {k: cap(v, spec.max_examples_per_dataset) for k, v in result.splits.items()}
        splits_by_dataset[name] = splits
        info[name] = {"source": provided.source, "synthetic": provided.synthetic, "derived": list(result.derived),
                      "publisher_splits": result.mapping, "license": adapter.license, "category": adapter.category,
                      "read": provided.report.read, "skipped": provided.report.skipped_count,
                      "skipped_examples": provided.report.skipped[:20]}
    if missing:
        raise DatasetUnavailableError(missing)
    dropped = decontaminate(splits_by_dataset)
    check_contamination(splits_by_dataset)
    for name, splits in splits_by_dataset.items():
        empty = [s for s in ("train", "val", "test") if not splits[s] and not (name == "GSM8K" and s == "train")]
        if not splits["train"] and not splits["test"]:
            raise FailedPreconditionError(f"{name}: every split is empty after reading {info[name]['source']}")
        info[name]["empty_splits"] = empty
        info[name]["decontaminated"] = dropped.get(name, 0)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, splits in splits_by_dataset.items():
        files = {}
        for split, records in splits.items():
            data = json.dumps([r.to_dict() for r in records], ensure_ascii=False, allow_nan=False).encode()
            (out_dir / file_name(name, split)).write_bytes(data)
            files[split] = {"file": file_name(name, split), "count": len(records), "sha256": sha256_bytes(data)}
        info[name]["files"] = files
    manifest = {"format": MANIFEST_FORMAT, "datasets": info, "required": required, "optional": optional,
                "absent_optional": absent_optional,
                "fills_absent_optional": {n: "WikiText" for n in absent_optional if n == "FineWeb-Edu"}}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    progress("datasets written", 1.0)
    return Prepared(out_dir, manifest, splits_by_dataset)
