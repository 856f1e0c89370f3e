"""Dataset adapters: one per dataset, mapping the publishers' files and hub rows to `Record`s.

    from services.dataset.core.adapters import get_adapter
    splits = get_adapter("GSM8K").read_mirror(mirror_dir, report=ParseReport())   # {"train": [...], "test": [...]}
"""

from services.dataset.core.adapters.base import DatasetAdapter, MirrorFile, normalize_number, provisional_split
from services.dataset.core.adapters.io import read_json, read_jsonl
from services.dataset.core.adapters.registry import ADAPTERS, get_adapter

__all__ = ["ADAPTERS", "DatasetAdapter", "MirrorFile", "get_adapter", "normalize_number", "provisional_split",
           "read_json", "read_jsonl"]
