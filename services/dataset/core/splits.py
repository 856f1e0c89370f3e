"""Train/val/test for each dataset, and the contamination check.

Publisher splits are used as they are where they exist (train -> train, dev/validation -> val,
test -> test). What is missing is carved deterministically by hashing each record's normalised content,
so identical questions always land on the same side; such splits are marked derived, and their scores are
never reported as comparable to published ones. Special cases:
  - WikiText has no train file in the mirror: train on `valid`, evaluate on `test`.
  - GSM8K test is only ever a test split (never training data, never a source of reasoning data).
  - a publisher dev split without a test split becomes our test split (test labels are unreleased);
  - a dataset with (almost) only evaluation data (ARC test, PIQA valid, …: train < 10% of the records)
    is pooled and carved into train/val/test, all derived.
Contamination: preparation fails if any val/test item's normalised content appears in any train split.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from shared.data.records import Record
from shared.errors import FailedPreconditionError, InvalidSpecError

MIN_RECORDS_FOR_EVERY_SPLIT = 10  # carving this many or more records never leaves a split empty
MIN_TRAIN_SHARE = 0.1  # a publisher train split smaller than this share is pooled and re-carved
PUBLISHER_TO_OURS = {"train": "train", "dev": "val", "val": "val", "valid": "val", "validation": "val",
                     "test": "test", "prompt": "train", "synthetic": None, "all": None}


def content_key(record: Record) -> str:
    """Normalised content: what makes two records 'the same item' for splitting and contamination."""
    raw = record.text if record.text else record.prompt
    return re.sub(r"\s+", " ", raw.strip().lower())


def bucket(record: Record) -> float:
    """A deterministic number in [0, 1) from the record's content (and dataset)."""
    digest = hashlib.sha256(f"{record.dataset}\x00{content_key(record)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class SplitResult:
    splits: dict[str, list[Record]]
    derived: tuple[str, ...]           # which of train/val/test were carved by hash
    mapping: dict[str, str]            # our split -> publisher split(s) it came from


def _carve(records: list[Record], fractions: dict[str, float]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {k: [] for k in fractions}
    edges, acc = [], 0.0
    for name, frac in fractions.items():
        acc += frac
        edges.append((acc, name))
    for r in records:
        b = bucket(r)
        name = next((n for edge, n in edges if b < edge), edges[-1][1])
        out[name].append(r.with_split(name))
    # A small pool can leave a split empty by chance; with enough records, give each split at least one
    # item: the highest-bucket item of the largest split, moved with every record of identical content (so
    # the same question never ends up on two sides), and only if the donor keeps another item.
    if len(records) >= MIN_RECORDS_FOR_EVERY_SPLIT:
        for name in out:
            if out[name]:
                continue
            donor = max(out, key=lambda k: len(out[k]))
            keys = {content_key(r) for r in out[donor]}
            if len(keys) < 2:
                continue
            top = max(out[donor], key=lambda r: (bucket(r), r.id))
            moved = [r for r in out[donor] if content_key(r) == content_key(top)]
            out[donor] = [r for r in out[donor] if content_key(r) != content_key(top)]
            out[name] = [r.with_split(name) for r in moved]
    return out


def assign_splits(dataset: str, by_publisher: dict[str, list[Record]], *, val_fraction: float) -> SplitResult:
    if not 0 < val_fraction < 0.5:
        raise InvalidSpecError(f"must be in (0, 0.5), got {val_fraction}", field="val_fraction")
    ours: dict[str, list[Record]] = {"train": [], "val": [], "test": []}
    mapping: dict[str, str] = {}
    unassigned: list[Record] = []
    for name, records in by_publisher.items():
        target = PUBLISHER_TO_OURS.get(name.lower(), "")
        if target == "":
            raise InvalidSpecError(f"{dataset}: unknown publisher split '{name}'", field="split")
        if dataset == "WikiText" and target == "val" and "train" not in by_publisher:
            target = "train"  # WikiText: train on valid, evaluate on test when train is absent
        if target is None:
            unassigned.extend(records)
            continue
        ours[target].extend(r.with_split(target) for r in records)
        mapping[target] = name
    derived: list[str] = []
    if unassigned:  # one undivided source (e.g. synthetic, ASDiv): carve all three
        carved = _carve(unassigned, {"train": 1 - 2 * val_fraction, "val": val_fraction, "test": val_fraction})
        for k, v in carved.items():
            ours[k].extend(v)
            derived.append(k)
            mapping.setdefault(k, "all")
    if not ours["test"] and ours["val"]:
        # The publisher's labelled evaluation split is its dev set (test labels unreleased): use it as test.
        ours["test"] = [r.with_split("test") for r in ours["val"]]
        ours["val"] = []
        mapping["test"] = mapping.pop("val", "val")
    total = sum(len(v) for v in ours.values())
    if len(ours["train"]) < MIN_TRAIN_SHARE * total and dataset != "GSM8K":
        # (Almost) only evaluation data: pool everything and carve train/val/test from it.
        pool = ours["train"] + ours["val"] + ours["test"]
        carved = _carve(pool, {"train": 1 - 2 * val_fraction, "val": val_fraction, "test": val_fraction})
        ours = dict(carved)
        derived = ["train", "val", "test"]
        mapping = {k: "+".join(sorted(set(r.source_split or "?" for r in pool))) for k in ours}
    elif not ours["val"] and ours["train"]:
        carved = _carve(ours["train"], {"train": 1 - val_fraction, "val": val_fraction})
        ours["train"], ours["val"] = carved["train"], carved["val"]
        derived.append("val")
        mapping["val"] = mapping.get("train", "train")
    return SplitResult(ours, tuple(sorted(set(derived))), mapping)


def cap(records: list[Record], limit: int) -> list[Record]:
    """A deterministic subset of at most `limit` records (lowest content hash first)."""
    if len(records) <= limit:
        return records
    return sorted(records, key=lambda r: (bucket(r), r.id))[:limit]


def decontaminate(splits_by_dataset: dict[str, dict[str, list[Record]]]) -> dict[str, int]:
    """Drop training records whose content equals an evaluation item of any dataset (publishers' splits can
    overlap); returns how many were dropped per dataset, for the manifest."""
    eval_keys = {content_key(r) for splits in splits_by_dataset.values()
                 for split in ("val", "test") for r in splits.get(split, [])}
    dropped: dict[str, int] = {}
    for name, splits in splits_by_dataset.items():
        before = len(splits.get("train", []))
        splits["train"] = [r for r in splits.get("train", []) if content_key(r) not in eval_keys]
        if before - len(splits["train"]):
            dropped[name] = before - len(splits["train"])
    return dropped


def check_contamination(splits_by_dataset: dict[str, dict[str, list[Record]]]) -> None:
    """Fail if any val/test item of any dataset appears (normalised) in any train split."""
    train_keys: dict[str, str] = {}
    for name, splits in splits_by_dataset.items():
        for r in splits.get("train", []):
            train_keys.setdefault(content_key(r), r.id)
    hits = []
    for name, splits in splits_by_dataset.items():
        for split in ("val", "test"):
            for r in splits.get(split, []):
                other = train_keys.get(content_key(r))
                if other is not None:
                    hits.append(f"{r.id} ({split}) = {other} (train)")
    if hits:
        raise FailedPreconditionError(f"contamination: {len(hits)} evaluation item(s) appear in a training split, "
                                      f"e.g. {'; '.join(hits[:5])}")
