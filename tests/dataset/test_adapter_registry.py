"""The registry covers the schema's datasets, and each adapter's metadata is consistent with the project's."""

from __future__ import annotations

import pytest

from services.dataset.core.adapters import ADAPTERS, DatasetAdapter, provisional_split
from shared.data.records import CATEGORIES, DATASETS, SPLITS
from shared.errors import InvalidSpecError
from shared.utils import HUB_IDS


def test_one_adapter_per_dataset_in_schema_order():
    assert list(ADAPTERS) == list(DATASETS)
    assert all(isinstance(a, DatasetAdapter) and a.name == name for name, a in ADAPTERS.items())


@pytest.mark.parametrize("name", DATASETS)
def test_adapter_metadata(name):
    adapter = ADAPTERS[name]
    assert adapter.category in CATEGORIES and adapter.license.strip()
    assert adapter.hub_id == HUB_IDS[name]   # one hub id per dataset across the project
    assert adapter.hub_splits
    for ours, theirs in adapter.hub_splits.items():
        assert provisional_split(ours) in SPLITS and theirs
        assert adapter.publisher_split(theirs) == ours and adapter.publisher_split(ours) == ours
    assert all(provisional_split(s) in SPLITS for s in adapter.publisher_splits)
    assert adapter.streaming == (name == "FineWeb-Edu")


def test_categories_and_rationales():
    by_category = {c: sorted(n for n, a in ADAPTERS.items() if a.category == c) for c in CATEGORIES}
    assert by_category == {
        "math": ["ASDiv", "GSM8K", "SVAMP"], "code": ["CodeXGLUE", "MBPP"],
        "qa": ["ARC-Challenge", "ARC-Easy", "BoolQ", "DROP", "HotpotQA"],
        "commonsense": ["CommonsenseQA", "HellaSwag", "PIQA", "StrategyQA"], "language": ["FineWeb-Edu", "WikiText"]}
    assert sorted(n for n, a in ADAPTERS.items() if a.has_rationale) == ["ASDiv", "GSM8K", "SVAMP", "StrategyQA"]
    assert ADAPTERS["FineWeb-Edu"].hub_config == "sample-10BT"


def test_unknown_publisher_split_is_refused():
    with pytest.raises(InvalidSpecError, match="unknown publisher split 'holdout'"):
        provisional_split("holdout")
