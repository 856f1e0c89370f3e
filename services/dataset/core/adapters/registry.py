"""One adapter instance per canonical dataset name, and the lookup that accepts the checklist's aliases."""

from __future__ import annotations

from services.dataset.core.adapters.base import DatasetAdapter
from services.dataset.core.adapters.code_sets import CodeXGLUEAdapter, MBPPAdapter
from services.dataset.core.adapters.commonsense_sets import (CommonsenseQAAdapter, HellaSwagAdapter, PIQAAdapter,
                                                             StrategyQAAdapter)
from services.dataset.core.adapters.language_sets import FineWebEduAdapter, WikiTextAdapter
from services.dataset.core.adapters.math_sets import ASDivAdapter, GSM8KAdapter, SVAMPAdapter
from services.dataset.core.adapters.qa_sets import (ARCChallengeAdapter, ARCEasyAdapter, BoolQAdapter, DROPAdapter,
                                                    HotpotQAAdapter)
from shared.data.records import DATASETS, canonical_name
from shared.errors import InvalidSpecError

_ALL: tuple[DatasetAdapter, ...] = (
    GSM8KAdapter(), SVAMPAdapter(), ASDivAdapter(), MBPPAdapter(), CodeXGLUEAdapter(), ARCEasyAdapter(),
    ARCChallengeAdapter(), HotpotQAAdapter(), DROPAdapter(), StrategyQAAdapter(), PIQAAdapter(),
    HellaSwagAdapter(), BoolQAdapter(), WikiTextAdapter(), FineWebEduAdapter(), CommonsenseQAAdapter(),
)

# In the order of records.DATASETS, so iterating the registry is deterministic and matches the schema.
ADAPTERS: dict[str, DatasetAdapter] = {a.name: a for a in sorted(_ALL, key=lambda a: DATASETS.index(a.name))}


def get_adapter(name: str) -> DatasetAdapter:
    """The adapter of a dataset, by canonical name or alias ("Mini-MBPP" -> MBPP); unknown names raise
    InvalidSpecError listing the known ones."""
    canon = canonical_name(name)
    try:
        return ADAPTERS[canon]
    except KeyError:
        raise InvalidSpecError(f"dataset '{canon}' has no adapter; adapters exist for {', '.join(ADAPTERS)}",
                               field="dataset") from None
