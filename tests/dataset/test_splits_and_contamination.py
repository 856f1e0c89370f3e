"""Split assignment, derived splits, capping and the contamination check."""

import pytest

from services.dataset.core.splits import (
    assign_splits,
    cap,
    check_contamination,
    content_key,
    decontaminate,
)
from shared.data.records import Record
from shared.errors import FailedPreconditionError, InvalidSpecError


def rec(dataset, i, split="train", prompt=None, text=""):
    return Record(id=f"{dataset}/{i}", dataset=dataset, category="qa", split=split,
                  prompt=prompt if prompt is not None else ("" if text else f"question {i} of {dataset}"),
                  answer="a", text=text)


def test_publisher_splits_are_kept_and_a_missing_val_is_carved_from_train():
    res = assign_splits("GSM8K", {"train": [rec("GSM8K", i) for i in range(400)],
                                  "test": [rec("GSM8K", 1000 + i, "test") for i in range(50)]}, val_fraction=0.1)
    assert len(res.splits["test"]) == 50 and res.derived == ("val",)
    assert 20 <= len(res.splits["val"]) <= 60
    assert len(res.splits["train"]) + len(res.splits["val"]) == 400
    assert {r.split for r in res.splits["val"]} == {"val"}


def test_a_single_evaluation_split_is_carved_into_three_derived_splits_deterministically():
    pool = {"test": [rec("PIQA", i, "test") for i in range(1000)]}
    a = assign_splits("PIQA", pool, val_fraction=0.1)
    b = assign_splits("PIQA", pool, val_fraction=0.1)
    assert a.derived == ("test", "train", "val")
    assert [r.id for r in a.splits["train"]] == [r.id for r in b.splits["train"]]
    sizes = {k: len(v) for k, v in a.splits.items()}
    assert sum(sizes.values()) == 1000 and 700 < sizes["train"] < 900
    ids = [set(r.id for r in v) for v in a.splits.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_gsm8k_test_never_becomes_training_data():
    res = assign_splits("GSM8K", {"test": [rec("GSM8K", i, "test") for i in range(100)]}, val_fraction=0.1)
    assert res.splits["train"] == [] and len(res.splits["test"]) == 100


def test_wikitext_trains_on_valid_and_evaluates_on_test():
    res = assign_splits("WikiText", {"valid": [rec("WikiText", i, "val", text=f"article {i}") for i in range(100)],
                                     "test": [rec("WikiText", 500 + i, "test", text=f"other {i}") for i in range(10)]},
                        val_fraction=0.1)
    assert res.mapping["train"] == "valid" and res.mapping["test"] == "test"
    assert len(res.splits["test"]) == 10 and len(res.splits["train"]) + len(res.splits["val"]) == 100


def test_identical_content_lands_on_one_side():
    dupes = [rec("ARC-Easy", i, "test", prompt="Same question?") for i in range(30)]
    res = assign_splits("ARC-Easy", {"test": dupes}, val_fraction=0.2)
    assert sum(1 for v in res.splits.values() if v) == 1


def test_contamination_fails_preparation_and_decontamination_removes_overlap():
    splits = {"A": {"train": [rec("A", 1, prompt="Shared  Question")], "val": [], "test": []},
              "B": {"train": [], "val": [], "test": [rec("B", 2, "test", prompt="shared question")]}}
    with pytest.raises(FailedPreconditionError, match="contamination: 1 evaluation item.*B/2"):
        check_contamination(splits)
    assert decontaminate(splits) == {"A": 1}
    check_contamination(splits)
    assert content_key(rec("x", 1, prompt="  A  b\n")) == "a b"


def test_cap_is_deterministic_and_bounded():
    records = [rec("X", i) for i in range(100)]
    assert cap(records, 10) == cap(list(reversed(records)), 10)
    assert len(cap(records, 10)) == 10 and cap(records, 1000) == records


def test_bad_split_names_and_fractions_are_errors():
    with pytest.raises(InvalidSpecError, match="unknown publisher split 'weird'"):
        assign_splits("X", {"weird": [rec("X", 1)]}, val_fraction=0.1)
    with pytest.raises(InvalidSpecError, match="val_fraction"):
        assign_splits("X", {"train": [rec("X", 1)]}, val_fraction=0.6)
