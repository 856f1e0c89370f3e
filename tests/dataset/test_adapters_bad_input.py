"""Bad input is reported or refused, never dropped silently: malformed lines, missing fields and files,
misaligned label files, garbled archives, unknown names."""

from __future__ import annotations

import bz2
import json
from pathlib import Path

import pytest

from services.dataset.core.adapters import get_adapter, normalize_number, read_json, read_jsonl
from services.dataset.core.adapters.qa_sets import parse_llm_adapters_choices
from shared.data.records import DATASETS, ParseReport
from shared.errors import InvalidSpecError, NotFoundError
from tests.dataset.helpers import copy_dataset, insert_line

# --- JSON Lines: skip mode reports file:line, fail mode names file and line -----------------------------


@pytest.mark.parametrize("bad, why", [("{broken", "not valid JSON"), ('{"question": "q only"}', "'answer'"),
                                      ("[1, 2]", "not a JSON object"), ("", "blank line"),
                                      ('{"question": "q", "answer": NaN}', "not valid JSON")])
def test_malformed_jsonl_line_is_reported_with_file_and_line(tmp_path, bad, why):
    folder = copy_dataset("GSM8K", tmp_path)
    insert_line(folder / "test.jsonl", 3, bad)
    report = ParseReport()
    splits = get_adapter("GSM8K").read_mirror(tmp_path, report=report)
    assert len(splits["test"]) == 1319 and len(splits["train"]) == 7473   # the good lines all survive
    assert report.read == 1319 + 7473 and report.skipped_count == 1
    assert report.skipped[0].startswith(f"{folder / 'test.jsonl'}:3: ") and why in report.skipped[0]
    # Ids are line positions, so the lines after the bad one keep theirs.
    assert splits["test"][2].id == "GSM8K/test-3"


def test_fail_mode_raises_naming_file_and_line(tmp_path):
    folder = copy_dataset("GSM8K", tmp_path)
    insert_line(folder / "test.jsonl", 5, "{broken")
    with pytest.raises(InvalidSpecError, match=rf"{folder / 'test.jsonl'}:5: not valid JSON"):
        get_adapter("GSM8K").read_mirror(tmp_path, report=ParseReport(), on_bad_line="fail")


def test_unknown_on_bad_line_is_refused(tmp_path):
    with pytest.raises(InvalidSpecError, match="on_bad_line"):
        get_adapter("GSM8K").read_mirror(tmp_path, report=ParseReport(), on_bad_line="ignore")


def test_read_jsonl_yields_line_numbers(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\r\n\xff\xfe\n{"a": 3}\n')
    report = ParseReport()
    assert list(read_jsonl(path, report, "skip")) == [(1, {"a": 1}), (3, {"a": 3})]
    assert report.skipped_count == 1 and report.skipped[0].startswith(f"{path}:2: not valid JSON")


def test_a_mirror_record_with_an_out_of_range_label_is_reported(tmp_path):
    folder = copy_dataset("CommonsenseQA", tmp_path)
    choices = [{"label": "A", "text": "a"}, {"label": "B", "text": "b"}]
    row = {"answerKey": "F", "id": "x1", "question": {"question_concept": "c", "stem": "s?", "choices": choices}}
    insert_line(folder / "dev_rand_split.jsonl", 1, json.dumps(row))
    report = ParseReport()
    assert len(get_adapter("CommonsenseQA").read_mirror(tmp_path, report=report)["dev"]) == 1221
    assert report.skipped_count == 1 and "answer key 'F'" in report.skipped[0]


# --- whole files: missing ones are NotFoundError, unparsable ones InvalidSpecError ---------------------


@pytest.mark.parametrize("name", [n for n in DATASETS])
def test_missing_folder_names_dataset_folder_and_files(tmp_path, name):
    adapter = get_adapter(name)
    with pytest.raises(NotFoundError) as err:
        adapter.read_mirror(tmp_path, report=ParseReport())
    message = str(err.value)
    assert name in message and str(tmp_path / adapter.folder) in message
    for mf in adapter.files:
        assert mf.name in message
    if name == "FineWeb-Edu":
        assert "*.jsonl" in message


def test_empty_folder_names_the_files_looked_for(tmp_path):
    (tmp_path / "PIQA").mkdir()
    with pytest.raises(NotFoundError, match="has none of valid.jsonl"):
        get_adapter("PIQA").read_mirror(tmp_path, report=ParseReport())


def test_unparsable_json_array_fails_whatever_on_bad_line_says(tmp_path):
    folder = copy_dataset("SVAMP", tmp_path)
    data = (folder / "SVAMP.json").read_bytes()
    (folder / "SVAMP.json").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidSpecError, match="SVAMP.json is not valid JSON"):
        get_adapter("SVAMP").read_mirror(tmp_path, report=ParseReport(), on_bad_line="skip")


def test_read_json_is_strict(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"x": NaN}')
    with pytest.raises(InvalidSpecError, match="a.json"):
        read_json(path)
    with pytest.raises(NotFoundError, match="missing.json"):
        read_json(tmp_path / "missing.json")


def test_malformed_xml_fails_naming_the_file(tmp_path):
    folder = copy_dataset("ASDiv", tmp_path)
    (folder / "ASDiv.xml").write_text("<Machine-Reading-Corpus-File><ProblemSet><Problem>")
    with pytest.raises(InvalidSpecError, match="ASDiv.xml: not well-formed XML"):
        get_adapter("ASDiv").read_mirror(tmp_path, report=ParseReport())


# --- PIQA: the labels file must align with the questions -------------------------------------------------


def test_piqa_short_labels_file_is_an_error(tmp_path):
    folder = copy_dataset("PIQA", tmp_path)
    labels = folder / "valid-labels.lst"
    labels.write_text("\n".join(labels.read_text().split("\n")[:-3]) + "\n")
    with pytest.raises(InvalidSpecError, match=r"1838 lines but .*valid-labels.lst has 1836 labels"):
        get_adapter("PIQA").read_mirror(tmp_path, report=ParseReport())


def test_piqa_missing_labels_file_is_not_found(tmp_path):
    folder = copy_dataset("PIQA", tmp_path)
    (folder / "valid-labels.lst").unlink()
    with pytest.raises(NotFoundError, match="valid-labels.lst"):
        get_adapter("PIQA").read_mirror(tmp_path, report=ParseReport())


def test_piqa_bad_label_value_is_a_reported_line(tmp_path):
    folder = copy_dataset("PIQA", tmp_path)
    labels = folder / "valid-labels.lst"
    lines = labels.read_text().split("\n")
    lines[9] = "7"
    labels.write_text("\n".join(lines))
    report = ParseReport()
    assert len(get_adapter("PIQA").read_mirror(tmp_path, report=report)["valid"]) == 1837
    assert report.skipped == [f"{folder / 'valid.jsonl'}:10: label: label '7' is not 0 or 1"]


# --- HellaSwag: a garbled or truncated block costs that task only -----------------------------------------

def _task(i: int, label: int = 1) -> list[str]:
    return [f"Activity {i}: context {i}", str(label), *(f"ending {i}.{k}" for k in range(4))]


def _write_hellaswag(tmp_path: Path, lines: list[str]) -> None:
    folder = tmp_path / "HellaSwag"
    folder.mkdir()
    (folder / "hellaswag_val_full.txt.bz2").write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))


def test_hellaswag_garbled_block_is_skipped_and_reading_resumes(tmp_path):
    garbled = _task(1)
    garbled[1] = "x"
    _write_hellaswag(tmp_path, _task(0) + garbled + _task(2) + _task(3)[:-1] + _task(4) + _task(5)[:4])
    report = ParseReport()
    recs = get_adapter("HellaSwag").read_mirror(tmp_path, report=report)["val"]
    assert [r.prompt for r in recs] == ["Activity 0: context 0", "Activity 2: context 2", "Activity 4: context 4"]
    assert report.read == 3 and report.skipped_count == 3
    assert "hellaswag_val_full.txt.bz2:7: garbled task block" in report.skipped[0]
    assert "hellaswag_val_full.txt.bz2:19: garbled task block" in report.skipped[1]   # the task missing an ending
    assert "truncated task" in report.skipped[-1]
    with pytest.raises(InvalidSpecError, match=r"hellaswag_val_full.txt.bz2:7: garbled"):
        get_adapter("HellaSwag").read_mirror(tmp_path, report=ParseReport(), on_bad_line="fail")


def test_a_cut_bz2_archive_is_an_error(tmp_path):
    _write_hellaswag(tmp_path, _task(0) * 50)
    path = tmp_path / "HellaSwag" / "hellaswag_val_full.txt.bz2"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(InvalidSpecError, match="not a readable bz2 archive"):
        get_adapter("HellaSwag").read_mirror(tmp_path, report=ParseReport())


# --- names, numbers and the LLM-Adapters instruction parser ----------------------------------------------

def test_unknown_dataset_name_lists_the_known_ones():
    with pytest.raises(InvalidSpecError, match="unknown dataset 'GSM9K'.*GSM8K.*CommonsenseQA"):
        get_adapter("GSM9K")


def test_aliases_resolve_to_the_canonical_adapter():
    assert get_adapter("Mini-MBPP") is get_adapter("MBPP")
    assert get_adapter("WikiText-2") is get_adapter("WikiText")


@pytest.mark.parametrize("raw, expected", [("1,000", "1000"), (51.0, "51"), ("2.50", "2.5"), ("-3", "-3"),
                                           (" 72", "72"), (0.1, "0.1"), ("109,200,000", "109200000"), (7, "7")])
def test_normalize_number(raw, expected):
    assert normalize_number(raw) == expected


@pytest.mark.parametrize("raw", ["3:4", "1e5", "nan", "", "2/3", "1,00", True])
def test_normalize_number_refuses_what_is_not_a_plain_number(raw):
    with pytest.raises(InvalidSpecError):
        normalize_number(raw)


def test_llm_adapters_parser_takes_markers_in_order():
    text = ("Please choose the correct answer to the question: Which is right?\n\n"
            "Answer1: see Answer3: below Answer2: two Answer3: three\n\nAnswer format: answer1/answer2/answer3")
    question, choices, label = parse_llm_adapters_choices(text, "answer2")
    assert question == "Which is right?" and label == 1
    assert choices == ["see Answer3: below", "two", "three"]


@pytest.mark.parametrize("text, gold, match", [
    ("Q?\n\nAnswer1: a Answer2: b\n\nAnswer format: answer1/answer2/answer3", "answer1", "found 2 choices"),
    ("Q?\n\nAnswer1: a Answer2: b", "answer3", "answer1..answer2"),
    ("Q? a or b", "answer1", "no 'Answer1:'"),
])
def test_llm_adapters_parser_refuses_inconsistent_items(text, gold, match):
    with pytest.raises(InvalidSpecError, match=match):
        parse_llm_adapters_choices(text, gold)


def test_fineweb_reads_jsonl_files_when_present(tmp_path):
    folder = tmp_path / "FineWeb-Edu"
    folder.mkdir()
    (folder / "part0.jsonl").write_text(json.dumps({"text": "Photosynthesis makes sugar.", "id": "u1", "score": 3.2})
                                        + "\n" + json.dumps({"text": "No id here."}) + "\n")
    report = ParseReport()
    splits = get_adapter("FineWeb-Edu").read_mirror(tmp_path, report=report)
    assert [r.id for r in splits["train"]] == ["FineWeb-Edu/u1", "FineWeb-Edu/part0-1"]
    assert splits["train"][0].meta == {"score": 3.2} and report.read == 2
