"""The cost ledger a paid teacher spends against: reserve a call's worst case before sending, settle after.

Why reserve-then-settle: many workers (threads here, processes on other machines through the coordinator)
spend one limit at once. A check of "spent so far" before each call would let N concurrent calls each see
room for one more and overshoot by N − 1 calls. Reserving the call's worst-case cost under one lock
makes "spent + reserved ≤ limit" an invariant; settling replaces the reservation by what the call really
cost (≤ the worst case when the server honours max_tokens), so the limit is never crossed.

Amounts are kept as integer pico-dollars (1e-12 USD), rounded up: sums are exact and independent of the
order threads settle in, and rounding up only ever over-counts spending.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

from shared.errors import FailedPreconditionError, InvalidSpecError
from shared.runtime.units import Budget as _Budget

log = logging.getLogger(__name__)

__all__ = ["Budget", "LocalBudget", "Price"]

_PICO = 10**12


def _check_amount(value: float, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidSpecError(f"must be a number of US dollars, got {value!r}", field=field)
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise InvalidSpecError(f"must be a finite amount ≥ 0 (US dollars), got {value!r}", field=field)
    return value


def _to_pico(usd: float) -> int:
    return math.ceil(usd * _PICO)


@dataclass(frozen=True)
class Price:
    """A model's token prices in US dollars per million tokens (what provider price lists quote)."""

    input_per_mtok: float
    """Price of one million prompt (input) tokens."""
    output_per_mtok: float
    """Price of one million completion (output) tokens."""

    def __post_init__(self) -> None:
        _check_amount(self.input_per_mtok, "price.input_per_mtok")
        _check_amount(self.output_per_mtok, "price.output_per_mtok")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """US dollars for one call with these token counts."""
        if prompt_tokens < 0 or completion_tokens < 0:
            raise InvalidSpecError(f"token counts must be ≥ 0, got {prompt_tokens}, {completion_tokens}",
                                   field="usage")
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


# The protocol lives with the other scale-out contracts (shared.runtime.units); re-exported here.
Budget = _Budget


class LocalBudget:
    """An in-process Budget: one lock, so any number of threads may reserve at once."""

    def __init__(self, limit_usd: float):
        # Rounded down (spending is rounded up): the ledger never allows a fraction of a pico-dollar extra.
        self._limit = math.floor(_check_amount(limit_usd, "cost_limit_usd") * _PICO)
        self._limit_usd = float(limit_usd)
        self._spent = 0
        self._open: dict[str, int] = {}
        self._reserved = 0
        self._refused = 0
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    def reserve(self, amount_usd: float) -> str | None:
        amount = _to_pico(_check_amount(amount_usd, "amount_usd"))
        with self._lock:
            if self._spent + self._reserved + amount > self._limit:
                self._refused += 1
                log.debug("budget refused %.6f USD: spent %.6f + reserved %.6f of %.6f", amount / _PICO,
                          self._spent / _PICO, self._reserved / _PICO, self._limit_usd)
                return None
            rid = f"r{next(self._ids)}"
            self._open[rid] = amount
            self._reserved += amount
            return rid

    def _close(self, reservation_id: str) -> int:
        try:
            amount = self._open.pop(reservation_id)
        except KeyError:
            raise FailedPreconditionError(f"reservation {reservation_id!r} is unknown or was already "
                                          f"settled or released") from None
        self._reserved -= amount
        return amount

    def settle(self, reservation_id: str, actual_usd: float) -> None:
        actual = _to_pico(_check_amount(actual_usd, "actual_usd"))
        with self._lock:
            reserved = self._close(reservation_id)
            self._spent += actual
            spent = self._spent
        if actual > reserved:
            # The server billed more than the worst case we reserved (it ignored max_tokens, or counts
            # tokens we did not bound): recorded as is, so the ledger stays true even if the limit is crossed.
            log.warning("a call cost %.6f USD, more than the %.6f USD reserved for it; spent %.6f of %.6f USD",
                        actual / _PICO, reserved / _PICO, spent / _PICO, self._limit_usd)

    def release(self, reservation_id: str) -> None:
        with self._lock:
            self._close(reservation_id)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"limit_usd": self._limit_usd, "spent_usd": self._spent / _PICO,
                    "reserved_usd": self._reserved / _PICO, "refused": self._refused}

    def __repr__(self) -> str:
        s = self.snapshot()
        return (f"LocalBudget(limit_usd={s['limit_usd']}, spent_usd={s['spent_usd']}, "
                f"reserved_usd={s['reserved_usd']}, refused={s['refused']})")
