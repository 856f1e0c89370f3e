"""Judging a phase's gate table on the metrics it reported (DESIGN.md §7).

The phase has already run its in-phase mitigation; the coordinator only compares. A metric that was not
reported, or is not a finite number, fails its gate — a gate never passes on something not measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from shared.config.schema import Gate


@dataclass(frozen=True)
class GateOutcome:
    metric: str
    op: str
    threshold: float
    measured: bool
    value: float
    passed: bool
    mitigation: str
    may_approve: bool

    @property
    def reason(self) -> str:
        if not self.measured:
            return f"{self.metric} was not reported (a metric that was not measured fails its gate)"
        verdict = "passed" if self.passed else "failed"
        return f"{self.metric} = {self.value:.6g}, needs {self.op} {self.threshold:g}: {verdict}"

    def to_dict(self) -> dict:
        return {"metric": self.metric, "op": self.op, "threshold": self.threshold, "measured": self.measured,
                "value": self.value, "passed": self.passed, "mitigation": self.mitigation,
                "may_approve": self.may_approve}

    @classmethod
    def from_dict(cls, d: Mapping) -> "GateOutcome":
        return cls(**{k: d[k] for k in ("metric", "op", "threshold", "measured", "value", "passed",
                                        "mitigation", "may_approve")})


def judge(gates: Sequence[Gate], metrics: Mapping[str, float]) -> list[GateOutcome]:
    outcomes = []
    for gate in gates:
        raw = metrics.get(gate.metric)
        measured = isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw)
        value = float(raw) if measured else 0.0
        outcomes.append(GateOutcome(metric=gate.metric, op=gate.op, threshold=gate.threshold,
                                    measured=measured, value=value, passed=measured and gate.passes(value),
                                    mitigation=gate.mitigation, may_approve=gate.may_approve))
    return outcomes


def failures(outcomes: Sequence[GateOutcome]) -> list[GateOutcome]:
    return [o for o in outcomes if not o.passed]
