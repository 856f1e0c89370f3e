"""Shared helpers for the dataset tests: where the real mirror is, and each dataset read once per session."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest

from services.dataset.core.adapters import get_adapter
from shared.data.records import ParseReport, Record

# tests/dataset/helpers.py -> parents[3] is the folder holding this checkout and `shared/datasets`.
MIRROR = Path(__file__).resolve().parents[3] / "shared" / "datasets"


def mirror_dir() -> Path:
    if not MIRROR.is_dir():
        pytest.skip(f"the shared dataset mirror is absent ({MIRROR}); CI has it beside the clone")
    return MIRROR


@functools.cache
def _read(name: str) -> tuple[dict[str, list[Record]], ParseReport]:
    report = ParseReport()
    return get_adapter(name).read_mirror(MIRROR, report=report), report


def read(name: str) -> tuple[dict[str, list[Record]], ParseReport]:
    """{publisher split: records} and the report of the real mirror, parsed once per test session (the
    HellaSwag archive and the ARC/HotpotQA arrays are the slow ones). Callers must not mutate the lists."""
    mirror_dir()
    return _read(name)


def records(name: str, split: str | None = None) -> list[Record]:
    splits, _ = read(name)
    return list(splits[split]) if split else [r for rs in splits.values() for r in rs]


def by_id(name: str, record_id: str) -> Record:
    found = [r for r in records(name) if r.id == record_id]
    assert len(found) == 1, f"{record_id}: {len(found)} records"
    return found[0]


def copy_dataset(name: str, dest: Path) -> Path:
    """A writable copy of one dataset's mirror folder under dest/<name>; returns the folder."""
    src = mirror_dir() / get_adapter(name).folder
    target = dest / src.name
    shutil.copytree(src, target)
    return target


def insert_line(path: Path, lineno: int, line: str) -> None:
    """Insert `line` so that it becomes line `lineno` (1-based) of a text file."""
    lines = path.read_text(encoding="utf-8").split("\n")
    lines.insert(lineno - 1, line)
    path.write_text("\n".join(lines), encoding="utf-8")
