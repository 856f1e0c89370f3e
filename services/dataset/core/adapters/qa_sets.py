"""Question answering: ARC-Easy / ARC-Challenge (Clark et al. 2018), HotpotQA (Yang et al. 2018),
DROP (Dua et al. 2019), BoolQ (Clark et al. 2019).

Two of the mirrored files are LLM-Adapters' instruction-style rewrites (Hu et al. 2023, "LLM-Adapters"):
the choices are inlined as "Answer1: ... Answer2: ..." and the gold is "answerN". They are parsed back
into the publishers' fields, so a record does not depend on which copy it came from.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

from services.dataset.core.adapters.base import (DatasetAdapter, MirrorFile, as_bool, label_index,
                                                 normalize_number, stem_and_choices, text_field)
from services.dataset.core.adapters.io import bad_line, read_json
from shared.data.records import ParseReport, Record
from shared.errors import InvalidSpecError

_LLM_LEAD = re.compile(r"^\s*please choose the correct answer to the question:\s*", re.I)
_LLM_FORMAT = re.compile(r"\n\s*answer format:\s*(?P<names>[^\n]*)\s*$", re.I)
_LLM_GOLD = re.compile(r"answer\s*(\d+)", re.I)


def _marker(k: int) -> re.Pattern[str]:
    # "AnswerK:" at the start or after whitespace, so "xAnswer2:" inside a choice is not a marker.
    return re.compile(rf"(?:^|(?<=\s))Answer{k}:\s*")


def parse_llm_adapters_choices(instruction: str, gold: str) -> tuple[str, list[str], int]:
    """(question, choices, label) from an LLM-Adapters multiple-choice instruction and its "answerN".

    Markers are matched in order (Answer1, then Answer2 after it, ...), and the count is checked against
    the "Answer format: answer1/.../answerN" line when there is one, so a choice text that happens to
    contain "Answer3:" cannot split the choices differently without the read failing."""
    body, expected = instruction, None
    fmt = _LLM_FORMAT.search(body)
    if fmt:
        expected = len(re.findall(r"answer\d+", fmt.group("names"), re.I)) or None
        body = body[: fmt.start()]
    first = _marker(1).search(body)
    if not first:
        raise InvalidSpecError("no 'Answer1:' in the instruction", field="instruction")
    question = _LLM_LEAD.sub("", body[: first.start()]).strip()
    if not question:
        raise InvalidSpecError("no question before 'Answer1:'", field="instruction")
    choices: list[str] = []
    pos, k = first.end(), 1
    while True:
        nxt = None if expected == k else _marker(k + 1).search(body, pos)
        if nxt is None:
            choices.append(body[pos:].strip())
            break
        choices.append(body[pos: nxt.start()].strip())
        pos, k = nxt.end(), k + 1
    if expected is not None and len(choices) != expected:
        raise InvalidSpecError(f"found {len(choices)} choices, the answer format lists {expected}",
                               field="instruction")
    match = _LLM_GOLD.fullmatch(gold.strip())
    if not match or not 1 <= int(match.group(1)) <= len(choices):
        raise InvalidSpecError(f"gold {gold!r} is not answer1..answer{len(choices)}", field="answer")
    return question, choices, int(match.group(1)) - 1


class _ARCAdapter(DatasetAdapter):
    """Both ARC schemas: the publisher's {id, question: {stem, choices: [{text, label}]}, answerKey}
    (the mirrored dev sample; the hub allenai/ai2_arc has the same fields with question a string and
    choices {text: [...], label: [...]}) and the LLM-Adapters test rewrite, whose ids are row indices."""

    category = "qa"
    hub_id = "allenai/ai2_arc"
    hub_splits = {"train": "train", "dev": "validation", "test": "test"}
    license = "CC BY-SA 4.0 (LLM-Adapters rewrite: ODC-By)"

    def from_hub_row(self, row: dict[str, Any], split: str, index: int) -> Record:
        split = self.publisher_split(split)
        stem, pairs = stem_and_choices(row)
        labels = [label for label, _ in pairs]
        key = text_field(row, "id", required=False) or f"{split}-{index}"
        return self.choice_record(key, split, stem, [text for _, text in pairs],
                                  label_index(labels, row["answerKey"]),
                                  meta={"answer_key": str(row["answerKey"]).strip(), "choice_labels": labels})

    def mirror_record(self, row: Any, mf: MirrorFile, index: int) -> Record:
        if mf.schema != "llm-adapters":
            return self.from_hub_row(row, mf.split, index)
        gold = text_field(row, "answer", required=False) or text_field(row, "output")
        question, choices, label = parse_llm_adapters_choices(text_field(row, "instruction"), gold)
        return self.choice_record(f"{mf.split}-{index}", mf.split, question, choices, label,
                                  meta={"format": "llm-adapters"})


class ARCEasyAdapter(_ARCAdapter):
    name = "ARC-Easy"
    hub_config = "ARC-Easy"
    files = (MirrorFile("ARC-Easy-Dev.sample.jsonl", "dev"),
             MirrorFile("llm_adapters_arc_easy_test.json", "test", "json", "llm-adapters"))


class ARCChallengeAdapter(_ARCAdapter):
    name = "ARC-Challenge"
    hub_config = "ARC-Challenge"
    # Only the LLM-Adapters test file is mirrored; a sample in the original schema would be read too.
    files = (MirrorFile("ARC-Challenge-Dev.sample.jsonl", "dev"),
             MirrorFile("llm_adapters_arc_challenge_test.json", "test", "json", "llm-adapters"))


class HotpotQAAdapter(DatasetAdapter):
    """Mirror: ReAct's simplified dev set {question, answer, type}, without context or ids (ids are row
    indices). Hub hotpotqa/hotpot_qa "distractor": {id, question, answer, type, level, supporting_facts,
    context}; the context is not put into the prompt, so both copies give the same closed-book task."""

    name = "HotpotQA"
    category = "qa"
    hub_id = "hotpotqa/hotpot_qa"
    hub_config = "distractor"
    hub_splits = {"train": "train", "dev": "validation"}
    license = "CC BY-SA 4.0"
    files = (MirrorFile("hotpot_dev_v1_simplified.json", "dev", "json"),)

    def from_hub_row(self, row: dict[str, Any], split: str, index: int) -> Record:
        split = self.publisher_split(split)
        key = text_field(row, "id", "_id", required=False) or f"{split}-{index}"
        meta = {k: row[k] for k in ("type", "level") if isinstance(row.get(k), str)}
        return self.record(key, split, prompt=text_field(row, "question"), answer=text_field(row, "answer"),
                           meta=meta)


def _drop_answer(answer: dict[str, Any]) -> tuple[str, str]:
    """(gold, kind) from DROP's {number, spans, date}: the number if given, else the spans joined by ", ",
    else the date as "day month year" with empty parts left out."""
    number = str(answer.get("number") or "").strip()
    if number:
        try:
            return normalize_number(number), "number"
        except InvalidSpecError:
            return number, "number"
    spans = [str(s).strip() for s in answer.get("spans") or [] if str(s).strip()]
    if spans:
        return ", ".join(spans), "spans"
    date = answer.get("date") or {}
    text = " ".join(str(date.get(k) or "").strip() for k in ("day", "month", "year")).split()
    if text:
        return " ".join(text), "date"
    raise InvalidSpecError("the answer has no number, spans or date", field="answer")


class DROPAdapter(DatasetAdapter):
    """Mirror: allennlp's DROP test fixture (19 QA pairs) in the publisher's schema {passage id: {passage,
    qa_pairs: [{question, answer: {number, date, spans}, query_id}]}}; its publisher split is unknown, so it
    is returned as "all". Hub ucinlp/drop: {section_id, query_id, passage, question, answers_spans:
    {spans, types}}, one row per question."""

    name = "DROP"
    category = "qa"
    hub_id = "ucinlp/drop"
    hub_splits = {"train": "train", "dev": "validation"}
    license = "CC BY-SA 4.0"
    files = (MirrorFile("drop_sample.json", "all", "drop"),)

    def mirror_rows(self, path: Path, mf: MirrorFile, report: ParseReport,
                    on_bad_line: str) -> Iterator[tuple[str, int, Any]]:
        data = read_json(path)
        if not isinstance(data, dict):
            raise InvalidSpecError(f"{path}: expected an object keyed by passage id, found {type(data).__name__}")
        index = 0
        for passage_id, entry in data.items():
            pairs = entry.get("qa_pairs") if isinstance(entry, dict) else None
            if not isinstance(pairs, list):
                bad_line(report, on_bad_line, f"{path}[{passage_id}]", "no qa_pairs list")
                continue
            for k, qa in enumerate(pairs):
                row = {"passage": entry.get("passage"), "section_id": passage_id,
                       **(qa if isinstance(qa, dict) else {})}
                yield f"{path}[{passage_id}].qa_pairs[{k}]", index, row
                index += 1

    def from_hub_row(self, row: dict[str, Any], split: str, index: int) -> Record:
        split = self.publisher_split(split)
        passage, question = text_field(row, "passage"), text_field(row, "question")
        if isinstance(row.get("answer"), dict):
            gold, kind = _drop_answer(row["answer"])
        else:
            spans = row["answers_spans"]
            types = list(spans.get("types") or [])
            gold, kind = _drop_answer({"number": spans["spans"][0]} if types == ["number"] else
                                      {"spans": spans["spans"]})
        key = text_field(row, "query_id", required=False) or f"{split}-{index}"
        return self.record(key, split, prompt=f"{passage}\n\n{question}", answer=gold,
                           meta={"passage_id": text_field(row, "section_id", "passage_id", required=False),
                                 "answer_type": kind})


_BOOLQ_LLM_QUESTION = re.compile(r"question:\s*(?P<q>.*?)\s*(?:\n\s*answer format:[^\n]*)?\s*$", re.I | re.S)


class BoolQAdapter(DatasetAdapter):
    """Mirror: allennlp's 5-line SuperGLUE-schema sample {question, passage, idx, label} and LLM-Adapters'
    rewrite of all 3,270 dev questions without passages. The sample's questions are SuperGLUE train items
    (idx 0 "do iran and afghanistan ..." is train's first; none is among the dev questions), so it is
    returned as "train"; it holds idx 5 twice, and the second is a reported duplicate. LLM-Adapters
    appended "?" to every question; it is removed to give back the publisher's text. Hub google/boolq:
    {question, answer (bool), passage}. Scored as a 2-way choice: choices ("false", "true")."""

    name = "BoolQ"
    category = "qa"
    hub_id = "google/boolq"
    hub_splits = {"train": "train", "dev": "validation"}
    license = "CC BY-SA 3.0"
    files = (MirrorFile("boolq_sample.jsonl", "train"),
             MirrorFile("llm_adapters_boolq_test.json", "dev", "json", "llm-adapters"))

    def _build(self, key: str, split: str, question: str, passage: str, gold: bool,
               meta: dict[str, Any]) -> Record:
        prompt = f"{passage}\n\n{question}" if passage else question
        return self.choice_record(key, split, prompt, ["false", "true"], int(gold),
                                  meta={"has_passage": bool(passage), **meta})

    def from_hub_row(self, row: dict[str, Any], split: str, index: int) -> Record:
        split = self.publisher_split(split)
        gold = as_bool(row["answer"] if "answer" in row else row["label"], "answer")
        idx = row.get("idx")  # SuperGLUE's idx is the row's position in its split
        key = f"{split}-{idx if isinstance(idx, int) and not isinstance(idx, bool) else index}"
        return self._build(key, split, text_field(row, "question"), text_field(row, "passage", required=False),
                           gold, {})

    def mirror_record(self, row: Any, mf: MirrorFile, index: int) -> Record:
        if mf.schema != "llm-adapters":
            return self.from_hub_row(row, mf.split, index)
        match = _BOOLQ_LLM_QUESTION.search(text_field(row, "instruction"))
        question = match.group("q").strip() if match else ""
        if not question:
            raise InvalidSpecError("no 'question:' in the instruction", field="instruction")
        return self._build(f"{mf.split}-{index}", mf.split, question.removesuffix("?").strip(), "",
                           as_bool(text_field(row, "answer"), "answer"), {"format": "llm-adapters"})
