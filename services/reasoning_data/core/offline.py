"""The offline backend (default in the tiny/ci profiles): reasoning examples from datasets that carry
verified reasoning, no model involved.

Only our `train` split of each source is read — never a test or val split, and in particular never GSM8K
test. Every emitted example passes both `format.check_example` and `strategies.validate_structure`; a math
example is emitted only when its verified steps arrive at the gold answer (so math answer verification is
100% among emitted examples). Everything else is a rejection counted by reason. With the `step`
strategy, each math record also gives one short question per verified step with an operator
(strategies.subquestions: "What is 5*3?", id "<source_id>#step/q<k>"), so the student meets short prompts too.
The output for one (record, strategy, seed) does not depend on the other records, so any slicing of the
records into work units gives the same examples.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Iterable

from services.reasoning_data.core import arith, strategies
from services.reasoning_data.core.arith import Unsupported
from services.reasoning_data.core.format import STRATEGIES, Example, check_example
from services.reasoning_data.core.strategies import (
    KIND_OF_SOURCE, UNSUPPORTED_SOURCE, MathTrace, build, extract, subquestions, supports, validate_structure,
)
from shared.config.schema import REASONING_SOURCES
from shared.data.prepared import load_split
from shared.data.records import Record
from shared.errors import IntegrityError, InvalidSpecError

__all__ = ["FAILED_FORMAT_CHECK", "FAILED_STRUCTURE_CHECK", "OfflineBackend", "REJECTION_REASONS", "SOURCES",
           "source_items"]

SOURCES: tuple[str, ...] = REASONING_SOURCES  # the profile's `sources` choose among these
TRAIN = "train"

# A built example that fails a check is a bug in this backend, not in the data; counted, never emitted.
FAILED_FORMAT_CHECK = "failed_format_check"
FAILED_STRUCTURE_CHECK = "failed_structure_check"
# Every name a rejection Counter from `generate` can hold.
REJECTION_REASONS: tuple[str, ...] = (*arith.REASONS, *strategies.REASONS, FAILED_FORMAT_CHECK, FAILED_STRUCTURE_CHECK)


def _require_train(record: Record, source: str | None = None) -> None:
    if record.split != TRAIN:
        raise IntegrityError(f"record {record.id} is from split {record.split!r}: the offline backend reads "
                             f"only the train split (never GSM8K test)")
    if source is not None and record.dataset != source:
        raise IntegrityError(f"record {record.id} in {source}'s train file belongs to {record.dataset}")


def source_items(data_dir: Path | str, sources: Iterable[str] = SOURCES) -> list[Record]:
    """The train records of each source, sources in the given order, records by id within a source.

    Reads `<dataset>_train.json` only. IntegrityError when a record there is not a train record of that
    dataset; InvalidSpecError for a source the backend does not know; NotFoundError (from load_split) when
    a source's train file is missing.
    """
    out: list[Record] = []
    for source in sources:
        if source not in KIND_OF_SOURCE:
            raise InvalidSpecError(f"unknown offline source {source!r}; known: {', '.join(SOURCES)}",
                                   field="sources")
        records = load_split(Path(data_dir), source, TRAIN)
        for r in records:
            _require_train(r, source)
        out.extend(sorted(records, key=lambda r: r.id))
    return out


class OfflineBackend:
    """Examples of one strategy from source records; deterministic for a seed.

    The random choices of one example (which step to doubt, which wrong candidate, …) come from a generator
    seeded by (seed, record id, strategy) alone.
    """

    origin = "offline"

    def generate(self, records: list[Record], strategy: str, *, seed: int) -> tuple[list[Example], Counter]:
        if strategy not in STRATEGIES:
            raise InvalidSpecError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}",
                                   field="strategy")
        examples: list[Example] = []
        rejected: Counter = Counter()
        for record in records:
            _require_train(record)
            if record.dataset not in KIND_OF_SOURCE:
                rejected[UNSUPPORTED_SOURCE] += 1
                continue
            if not supports(record.dataset, strategy):
                rejected["not_applicable"] += 1
                continue
            try:
                trace = extract(record)
            except Unsupported as exc:
                rejected[exc.reason] += 1
                continue
            rng = random.Random(f"{seed}:{record.id}:{strategy}")
            built = build(strategy, record, trace, rng)
            if isinstance(built, str):
                rejected[built] += 1
                continue
            if check_example(built) is not None:
                rejected[FAILED_FORMAT_CHECK] += 1
                continue
            if validate_structure(built) is not None:
                rejected[FAILED_STRUCTURE_CHECK] += 1
                continue
            examples.append(built)
            if strategy == "step" and isinstance(trace, MathTrace):
                examples.extend(sub for sub in subquestions(record, trace)
                                if check_example(sub) is None and validate_structure(sub) is None)
        return examples, rejected
