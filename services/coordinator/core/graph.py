"""The run's phase graph: which phases run, in which order, and which are skipped for a start phase."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from shared.errors import InvalidSpecError
from shared.runtime.phase import PhaseDefinition


@dataclass(frozen=True)
class PhaseNode:
    phase: str
    depends_on: tuple[str, ...]
    skipped: bool


def downstream_of(start: str, defs: Mapping[str, PhaseDefinition]) -> set[str]:
    """`start` and every phase that (transitively) depends on it."""
    reached = {start}
    changed = True
    while changed:
        changed = False
        for name, d in defs.items():
            if name not in reached and reached.intersection(d.depends_on):
                reached.add(name)
                changed = True
    return reached


def plan(defs: Mapping[str, PhaseDefinition], start_phase: str = "") -> list[PhaseNode]:
    """Nodes in dependency order. With a start phase, everything not downstream of it is skipped."""
    if start_phase and start_phase not in defs:
        raise InvalidSpecError(f"unknown phase '{start_phase}'; phases: {', '.join(defs)}", field="start_phase")
    active = downstream_of(start_phase, defs) if start_phase else set(defs)
    return [PhaseNode(phase=name, depends_on=tuple(d.depends_on), skipped=name not in active)
            for name, d in defs.items()]
