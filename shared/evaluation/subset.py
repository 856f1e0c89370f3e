"""A fixed, deterministic evaluation subset: the first N records in natural id order.

A profile can say "100 GSM8K questions in tiny" and every run, every phase and every machine scores the same
100, whatever order the loader yielded them in. Natural order compares the digit runs of an id as numbers,
so "GSM8K/2" comes before "GSM8K/10".
"""

from __future__ import annotations

import re
from typing import Iterable

from shared.data.records import Record
from shared.errors import InvalidSpecError

_DIGITS = re.compile(r"(\d+)")


def natural_key(record_id: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key of an id: digit runs as numbers, the rest as text (a tag keeps the two comparable)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in _DIGITS.split(record_id))


def first_n(records: Iterable[Record], limit: int | None) -> list[Record]:
    """All records (limit None) or the first `limit` in natural id order; ids must be unique."""
    ordered = sorted(records, key=lambda r: natural_key(r.id))
    for a, b in zip(ordered, ordered[1:]):
        if a.id == b.id:
            raise InvalidSpecError(f"duplicate record id {a.id!r}: a subset by id would be ambiguous",
                                   field="records")
    if limit is None:
        return ordered
    if limit < 0:
        raise InvalidSpecError(f"must be >= 0 or None, got {limit}", field="limit")
    return ordered[:limit]
