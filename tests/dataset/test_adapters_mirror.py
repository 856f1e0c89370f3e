"""Every adapter against the real mirror: counts from SOURCES.md, the invariants every record must keep, and
hand-picked records checked against the files."""

from __future__ import annotations

import json
import re

import pytest

from services.dataset.core.adapters import ADAPTERS, get_adapter, provisional_split
from shared.data.records import Record
from tests.dataset.helpers import by_id, mirror_dir, read, records

# {dataset: {publisher split: records}} measured on the mirror; SOURCES.md gives the totals.
EXPECTED = {
    "GSM8K": {"train": 7473, "test": 1319},
    "SVAMP": {"test": 1000},
    "ASDiv": {"all": 2084},                    # + 221 reported skips = 2,305 problems
    "MBPP": {"train": 384, "test": 500, "validation": 90},   # train = 374 train + 10 few-shot prompts
    "CodeXGLUE": {"dev": 2000},
    "ARC-Easy": {"dev": 5, "test": 2376},
    "ARC-Challenge": {"test": 1172},
    "HotpotQA": {"dev": 7405},
    "DROP": {"all": 19},
    "StrategyQA": {"train": 2061, "dev": 229},
    "PIQA": {"valid": 1838},
    "HellaSwag": {"val": 10042},
    "BoolQ": {"train": 4, "dev": 3270},        # + 1 reported duplicate in the 5-line sample
    "WikiText": {"valid": 60, "test": 60},     # articles (WikiText-2 has 60 in each)
    "CommonsenseQA": {"dev": 1221},
}
EXPECTED_SKIPS = {"ASDiv": 221, "BoolQ": 1}
MIRRORED = sorted(EXPECTED)


@pytest.mark.parametrize("name", MIRRORED)
def test_counts_match_the_sources(name):
    splits, report = read(name)
    assert {k: len(v) for k, v in splits.items()} == EXPECTED[name]
    assert report.read == sum(EXPECTED[name].values())
    assert report.skipped_count == EXPECTED_SKIPS.get(name, 0), report.skipped[:5]


def test_asdiv_reads_or_reports_every_problem():
    _, report = read("ASDiv")
    assert report.read + report.skipped_count == 2305
    assert all("is not a single number" in s and "ASDiv.xml[Problem nluds-" in s for s in report.skipped)
    assert any("nluds-0030" in s and "Mrs. Hilt" in s for s in report.skipped)   # a name, not a number
    assert any("'3:4'" in s for s in report.skipped)                              # a ratio is not "3"


def test_boolq_sample_duplicate_is_reported_not_dropped_silently():
    _, report = read("BoolQ")
    assert report.read + report.skipped_count == 3270 + 5
    (skip,) = report.skipped
    assert "boolq_sample.jsonl:3: duplicate id BoolQ/train-5" in skip and "boolq_sample.jsonl:2" in skip


@pytest.mark.parametrize("name", MIRRORED)
def test_every_record_keeps_the_schema_invariants(name):
    adapter = get_adapter(name)
    splits, _ = read(name)
    ids = [r.id for rs in splits.values() for r in rs]
    assert len(ids) == len(set(ids)), "ids must be unique within a dataset"
    for key, recs in splits.items():
        for r in recs:
            assert r.id.startswith(f"{name}/") and r.dataset == name and r.category == adapter.category
            assert r.split == provisional_split(r.source_split)
            assert adapter.mirror_key(r) == key
            assert Record.from_dict(json.loads(json.dumps(r.to_dict(), allow_nan=False))) == r  # JSON-safe, valid
            if r.choices:
                assert 0 <= r.label < len(r.choices) and r.answer == r.choices[r.label]
                assert all(c.strip() for c in r.choices)
            if adapter.category == "language":
                assert r.text and not r.prompt and not r.answer
            else:
                assert r.prompt.strip() and r.answer.strip()
            if adapter.has_rationale:
                assert r.rationale.strip()


@pytest.mark.parametrize("name", ["GSM8K", "SVAMP", "ASDiv", "DROP"])
def test_numeric_answers_have_one_spelling(name):
    numeric = [r.answer for r in records(name) if name != "DROP" or r.meta["answer_type"] == "number"]
    assert numeric and all(re.fullmatch(r"-?\d+(\.\d*[1-9])?", a) for a in numeric)


def test_gsm8k_answer_rationale_and_annotations():
    first = records("GSM8K", "train")[0]
    assert first.id == "GSM8K/train-0" and first.answer == "72" and first.prompt.startswith("Natalia sold clips")
    assert first.rationale == ("Natalia sold 48/2 = 24 clips in May.\n"
                               "Natalia sold 48+24 = 72 clips altogether in April and May.")
    assert "<<48/2=24>>" in first.meta["calc_rationale"] and "####" not in first.meta["calc_rationale"]
    assert records("GSM8K", "train")[345].answer == "1080"   # "#### 1,080" in the file
    assert records("GSM8K", "test")[1113].answer == "-3"
    assert records("GSM8K", "test")[0].answer == "18"
    assert not any("<<" in r.rationale or "####" in r.rationale for r in records("GSM8K"))


def test_svamp_asdiv_fields():
    chal = by_id("SVAMP", "SVAMP/chal-1")
    assert chal.answer == "51" and chal.rationale == "( 76.0 - 25.0 )" and chal.meta["type"] == "Subtraction"
    assert chal.prompt == ("Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack "
                           "How much do you have to pay to buy each pack?")
    first = by_id("ASDiv", "ASDiv/nluds-0001")
    assert (first.answer, first.rationale, first.meta["unit"]) == ("9", "7+2=9", "apples")
    assert first.prompt.endswith("How many apples are in the basket?")


def test_mbpp_publisher_splits_by_task_id():
    ranges = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601), "train": range(601, 975)}
    for r in records("MBPP"):
        assert r.meta["task_id"] in ranges[r.source_split]
        assert r.id == f"MBPP/{r.meta['task_id']}" and "\r" not in r.answer
        assert r.prompt.endswith(r.meta["tests"][0]) and len(r.meta["tests"]) == 3
    assert sum(r.source_split == "prompt" for r in records("MBPP", "train")) == 10
    task = by_id("MBPP", "MBPP/11")
    assert task.split == "test" and task.answer.startswith("def remove_Occ(s,ch):")


def test_codexglue_first_record():
    first = records("CodeXGLUE", "dev")[0]
    assert first.prompt.startswith("actually walks the bag") and "concode_field_sep" in first.prompt
    assert first.answer.startswith("int function ( ) { _total = extractList ( ) . size ( ) ;")


def test_arc_both_schemas():
    dev = by_id("ARC-Easy", "ARC-Easy/MCAS_2000_4_6")
    assert dev.source_split == "dev" and dev.split == "val"
    assert dev.choices == ("cellular telephone", "television", "refrigerator", "airplane") and dev.label == 0
    test0 = records("ARC-Easy", "test")[0]
    assert test0.prompt == "Which statement best explains why photosynthesis is the foundation of most food webs?"
    assert test0.choices[3] == "The producers in all ecosystems are plants." and test0.label == 0
    for name in ("ARC-Easy", "ARC-Challenge"):
        sizes = {len(r.choices) for r in records(name, "test")}
        assert sizes == {3, 4, 5}
        assert not any("Answer" in c and ":" in c for r in records(name, "test") for c in r.choices)
    # The one ARC-Easy item whose gold is the fifth choice.
    assert sum(r.label == 4 for r in records("ARC-Easy", "test")) == 1


def test_hotpotqa_drop_fields():
    first = records("HotpotQA", "dev")[0]
    assert first.prompt == "Were Scott Derrickson and Ed Wood of the same nationality?"
    assert first.answer == "yes" and first.meta == {"type": "comparison"}
    spans = by_id("DROP", "DROP/db3c7682-0ae2-4705-a2be-4e6867352dc6")
    assert spans.answer == "sixth terminal" and spans.meta["passage_id"] == "history_319"
    assert spans.prompt.startswith("The Port of Charleston") and spans.prompt.endswith("?")
    assert by_id("DROP", "DROP/215fb32f-542e-49cd-a7a9-7e965ce8814e").answer == "2"


def test_strategyqa_is_a_yes_no_choice_with_facts():
    first = by_id("StrategyQA", "StrategyQA/2bc9c4f9c19c167187f2")
    assert first.answer == "yes" and first.choices == ("no", "yes") and first.label == 1
    assert first.rationale.startswith("Julius Caesar had three children. Genghis Khan had sixteen children.")
    assert first.meta["decomposition"][-1] == "Is #2 greater than #1?"
    assert by_id("StrategyQA", "StrategyQA/e0044a7b4d146d611e73").answer == "no"


def test_piqa_labels_are_aligned_with_the_labels_file():
    recs = records("PIQA", "valid")
    assert recs[0].label == 0 and recs[0].prompt == "How do I ready a guinea pig cage for it's new occupants?"
    assert recs[0].answer.endswith("ripped paper strips, you will also need to supply it with a water bottle and a "
                                   "food dish.")
    assert [r.label for r in recs[:3]] == [0, 1, 1]
    assert sum(r.label for r in recs) == 928   # ones in valid-labels.lst


def test_hellaswag_blocks():
    recs = records("HellaSwag", "val")
    first = recs[0]
    assert first.prompt == "Roof shingle removal: A man is sitting on a roof. he"
    assert first.label == 3 and first.answer == "starts pulling up roofing on a roof."
    assert first.meta["activity_label"] == "Roof shingle removal"
    assert all(len(r.choices) == 4 for r in recs) and [r.id for r in recs[:2]] == ["HellaSwag/val-0", "HellaSwag/val-1"]
    assert {r.label for r in recs} == {0, 1, 2, 3}


def test_boolq_passages_and_questions():
    sample = by_id("BoolQ", "BoolQ/train-0")
    assert sample.prompt.startswith("Persian language -- Persian")
    assert sample.prompt.endswith("\n\ndo iran and afghanistan speak the same language")
    assert (sample.answer, sample.label, sample.choices) == ("true", 1, ("false", "true"))
    dev0 = records("BoolQ", "dev")[0]
    assert dev0.prompt == "does ethanol take more energy make that produces" and dev0.answer == "false"
    assert not any(r.prompt.endswith("?") for r in records("BoolQ", "dev"))
    assert sum(r.answer == "true" for r in records("BoolQ", "dev")) == 2033


def test_wikitext_articles_cover_the_files_exactly():
    for split, file in (("valid", "wikitext-2.valid.txt"), ("test", "wikitext-2.test.txt")):
        recs = records("WikiText", split)
        assert all(r.meta["variant"] == "tokenized" for r in recs)
        assert all(r.text.split("\n")[0] == f" = {r.meta['title']} = " for r in recs)
        # Nothing lost, nothing reordered: the articles' non-blank lines are the file's.
        lines = (mirror_dir() / "WikiText" / file).read_text(encoding="utf-8").split("\n")
        assert [ln for r in recs for ln in r.text.split("\n") if ln.strip()] == [ln for ln in lines if ln.strip()]
    assert records("WikiText", "valid")[0].meta["title"] == "Homarus gammarus"
    # A formula line shaped like a heading stays inside its article.
    assert any(" = 1 <unk> and <unk> C = " in r.text.split("\n")[1:] for r in records("WikiText", "test"))


def test_commonsenseqa_first_record():
    first = by_id("CommonsenseQA", "CommonsenseQA/1afa02df02c908a558b4036e80242fac")
    assert first.answer == "bank" and first.label == 0 and len(first.choices) == 5
    assert first.prompt.endswith("serves as a security measure at a what?")
    assert first.meta["question_concept"] == "revolving door"


def test_every_mirrored_dataset_has_an_expectation():
    assert set(MIRRORED) == set(ADAPTERS) - {"FineWeb-Edu"}
