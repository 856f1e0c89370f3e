"""from_hub_row: a hand-written row in each hub schema maps to the same fields as the mirror's record of the
same item (where the mirror has that item), so a dataset means the same thing whichever source gave it."""

from __future__ import annotations

import json

import pytest

from services.dataset.core.adapters import get_adapter
from services.dataset.core.adapters.commonsense_sets import strip_wikihow_markup
from shared.data.records import ParseReport
from shared.errors import InvalidSpecError
from tests.dataset.helpers import by_id, mirror_dir, records

FIELDS = ("prompt", "answer", "choices", "label", "rationale", "text")


def _same_content(a, b) -> None:
    assert {f: getattr(a, f) for f in FIELDS} == {f: getattr(b, f) for f in FIELDS}


def _jsonl_row(dataset: str, file: str, index: int) -> dict:
    with (mirror_dir() / dataset / file).open(encoding="utf-8") as fh:
        return json.loads(fh.readlines()[index])


@pytest.mark.parametrize("dataset, file, split, index, record_id", [
    ("GSM8K", "train.jsonl", "train", 0, "GSM8K/train-0"), ("GSM8K", "test.jsonl", "test", 1113, "GSM8K/test-1113"),
    ("MBPP", "mbpp.jsonl", "test", 10, "MBPP/11"), ("MBPP", "mbpp.jsonl", "prompt", 0, "MBPP/1"),
])
def test_hub_rows_in_the_mirror_schema_give_identical_records(dataset, file, split, index, record_id):
    row = _jsonl_row(dataset, file, index)
    assert get_adapter(dataset).from_hub_row(row, split, index) == by_id(dataset, record_id)


def test_svamp_and_strategyqa_hub_rows():
    svamp = json.loads((mirror_dir() / "SVAMP" / "SVAMP.json").read_text())[0]
    assert get_adapter("SVAMP").from_hub_row(svamp, "test", 0) == by_id("SVAMP", "SVAMP/chal-1")
    sqa = json.loads((mirror_dir() / "StrategyQA" / "train.json").read_text())[0]
    assert get_adapter("StrategyQA").from_hub_row(sqa, "train", 0) == records("StrategyQA", "train")[0]
    # A hub copy that stores facts as one string gives the same rationale.
    flat = {**sqa, "facts": " ".join(sqa["facts"]), "answer": "true"}
    _same_content(get_adapter("StrategyQA").from_hub_row(flat, "train", 0), records("StrategyQA", "train")[0])


def test_asdiv_hub_row_lowercase_columns():
    row = {"body": "Seven red apples and two green apples are in the basket.",
           "question": "How many apples are in the basket?", "solution_type": "Addition",
           "answer": "9 (apples)", "formula": "7+2=9"}
    record = get_adapter("ASDiv").from_hub_row(row, "validation", 0)   # the hub's name for the split
    _same_content(record, by_id("ASDiv", "ASDiv/nluds-0001"))
    assert record.source_split == "all" and record.id == "ASDiv/all-0"
    with pytest.raises(InvalidSpecError, match="not a single number"):
        get_adapter("ASDiv").from_hub_row({**row, "answer": "3:4"}, "all", 1)


def test_codexglue_hub_row():
    row = {"id": 0, **_jsonl_row("CodeXGLUE", "concode_text-to-code_dev.json", 0)}
    assert get_adapter("CodeXGLUE").from_hub_row(row, "dev", 0) == records("CodeXGLUE", "dev")[0]


def test_arc_hub_row_flattened_choices():
    row = {"id": "MCAS_2000_4_6", "question": "Which technology was developed most recently?",
           "choices": {"text": ["cellular telephone", "television", "refrigerator", "airplane"],
                       "label": ["A", "B", "C", "D"]}, "answerKey": "A"}
    assert get_adapter("ARC-Easy").from_hub_row(row, "validation", 0) == by_id("ARC-Easy", "ARC-Easy/MCAS_2000_4_6")
    numeric = {**row, "id": "x", "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]}, "answerKey": "3"}
    assert get_adapter("ARC-Challenge").from_hub_row(numeric, "test", 0).label == 2


def test_hotpotqa_hub_row_keeps_closed_book_prompt():
    row = {"id": "5a8b57f25542995d1e6f1371", "question": "Were Scott Derrickson and Ed Wood of the same nationality?",
           "answer": "yes", "type": "comparison", "level": "hard",
           "supporting_facts": {"title": ["Scott Derrickson", "Ed Wood"], "sent_id": [0, 0]},
           "context": {"title": ["Ed Wood"], "sentences": [["Edward Davis Wood Jr. was an American filmmaker."]]}}
    record = get_adapter("HotpotQA").from_hub_row(row, "validation", 0)
    _same_content(record, records("HotpotQA", "dev")[0])
    assert record.id == "HotpotQA/5a8b57f25542995d1e6f1371" and record.meta == {"type": "comparison", "level": "hard"}


def test_drop_hub_row_answers_spans():
    mirror = by_id("DROP", "DROP/215fb32f-542e-49cd-a7a9-7e965ce8814e")
    passage, question = mirror.prompt.split("\n\n")
    row = {"section_id": "history_720", "query_id": "215fb32f-542e-49cd-a7a9-7e965ce8814e", "passage": passage,
           "question": question, "answers_spans": {"spans": ["2"], "types": ["number"]}}
    record = get_adapter("DROP").from_hub_row(row, "validation", 0)
    _same_content(record, mirror)
    assert record.id == mirror.id and record.meta == mirror.meta and record.source_split == "dev"
    spans = {**row, "answers_spans": {"spans": ["Carl Filip", "Gustavus Adolphus"], "types": ["span", "span"]}}
    assert get_adapter("DROP").from_hub_row(spans, "dev", 0).answer == "Carl Filip, Gustavus Adolphus"


def test_piqa_hub_row_and_hidden_label():
    first = records("PIQA", "valid")[0]
    row = {"goal": first.prompt, "sol1": first.choices[0], "sol2": first.choices[1], "label": 0}
    assert get_adapter("PIQA").from_hub_row(row, "validation", 0) == first
    with pytest.raises(InvalidSpecError, match="label -1"):
        get_adapter("PIQA").from_hub_row({**row, "label": -1}, "train", 0)


def test_hellaswag_hub_row_matches_the_text_mirror():
    row = {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
           "ctx": "A man is sitting on a roof. he", "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val",
           "split_type": "indomain", "label": "3",
           "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                       "is holding a rubik's cube.", "starts pulling up roofing on a roof."]}
    record = get_adapter("HellaSwag").from_hub_row(row, "validation", 0)
    _same_content(record, records("HellaSwag", "val")[0])
    assert record.id == "HellaSwag/val-0" and record.meta["ind"] == 24
    with pytest.raises(InvalidSpecError, match="not 0-3"):
        get_adapter("HellaSwag").from_hub_row({**row, "label": ""}, "val", 0)   # hub test rows


def test_wikihow_markup_is_cleaned_like_the_mirror():
    assert strip_wikihow_markup("[header] How to tie a tie [title] Pick the tie. [step] Hold it.") == \
        "How to tie a tie. Pick the tie. Hold it."


def test_boolq_hub_row_puts_the_passage_before_the_question():
    dev0 = records("BoolQ", "dev")[0]
    row = {"question": dev0.prompt, "answer": False, "passage": "Ethanol fuel -- All biomass goes through ..."}
    record = get_adapter("BoolQ").from_hub_row(row, "validation", 0)
    assert record.id == dev0.id and (record.answer, record.label, record.choices) == ("false", 0, ("false", "true"))
    assert record.prompt == f"{row['passage']}\n\n{dev0.prompt}" and record.meta["has_passage"]


def test_commonsenseqa_hub_row():
    row = {"id": "1afa02df02c908a558b4036e80242fac", "question_concept": "revolving door",
           "question": "A revolving door is convenient for two direction travel, but it also serves as a security "
                       "measure at a what?",
           "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["bank", "library", "department store", "mall",
                                                                     "new york"]}, "answerKey": "A"}
    assert get_adapter("CommonsenseQA").from_hub_row(row, "validation", 0) == \
        by_id("CommonsenseQA", "CommonsenseQA/1afa02df02c908a558b4036e80242fac")


def test_wikitext_hub_lines_group_into_the_mirrors_articles():
    """The hub's rows are lines; from_hub_rows must rebuild the same articles the mirror file gives."""
    lines = (mirror_dir() / "WikiText" / "wikitext-2.valid.txt").read_text(encoding="utf-8").split("\n")
    rows = [{"text": line + "\n"} for line in lines]
    report = ParseReport()
    hub = list(get_adapter("WikiText").from_hub_rows(rows, "validation", report=report))
    mirror = records("WikiText", "valid")
    assert [(r.id, r.text, r.meta["title"]) for r in hub] == [(r.id, r.text, r.meta["title"]) for r in mirror]
    assert report.read == 60 and all(r.meta["variant"] == "raw" for r in hub)
    with pytest.raises(InvalidSpecError, match="empty text"):
        get_adapter("WikiText").from_hub_row({"text": ""}, "train", 0)


def test_fineweb_hub_row():
    row = {"text": "The water cycle moves water.", "id": "<urn:uuid:1>", "dump": "CC-MAIN-2024-10",
           "url": "https://example.org/a", "date": "2024-02-01", "file_path": "s3://x", "language": "en",
           "language_score": 0.97, "token_count": 7, "score": 3.4, "int_score": 3}
    record = get_adapter("FineWeb-Edu").from_hub_row(row, "train", 5)
    assert record.id == "FineWeb-Edu/<urn:uuid:1>" and record.text == row["text"] and not record.prompt
    assert record.meta["int_score"] == 3 and "file_path" not in record.meta


def test_default_from_hub_rows_reports_unmappable_rows():
    good = _jsonl_row("GSM8K", "train.jsonl", 0)
    report = ParseReport()
    out = list(get_adapter("GSM8K").from_hub_rows([good, {"question": "no answer"}, good], "train", report=report,
                                                  where="openai/gsm8k:train"))
    assert [r.id for r in out] == ["GSM8K/train-0", "GSM8K/train-2"]
    assert report.read == 2 and report.skipped == ["openai/gsm8k:train:1: missing or empty field 'answer'"]


def test_unknown_split_is_refused():
    with pytest.raises(InvalidSpecError, match="GSM8K has no split 'validation'"):
        get_adapter("GSM8K").from_hub_row({"question": "q", "answer": "#### 1"}, "validation", 0)
