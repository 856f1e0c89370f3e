"""Commonsense: StrategyQA (Geva et al. 2021), PIQA (Bisk et al. 2020), HellaSwag (Zellers et al. 2019),
CommonsenseQA (Talmor et al. 2019). All four are scored as multiple choice (choices + label); StrategyQA's
yes/no becomes the 2-way choice ("no", "yes"), so log-likelihood scoring treats it like BoolQ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from services.dataset.core.adapters.base import (DatasetAdapter, MirrorFile, as_bool, label_index,
                                                 stem_and_choices, text_field)
from services.dataset.core.adapters.io import bad_line, read_jsonl, read_lines
from shared.data.records import ParseReport, Record
from shared.errors import InvalidSpecError, NotFoundError


class StrategyQAAdapter(DatasetAdapter):
    """Mirror: the authors' train/dev split of the public training set, JSON arrays of {qid, term,
    description, question, answer (bool), facts, decomposition, evidence}. The facts are the rationale,
    the decomposition goes to meta, the (large) evidence is dropped. Hub schema ChilleD/StrategyQA assumed
    to keep these fields (facts/decomposition possibly as one string) with a train/test split that is not
    the authors'; not verified (no network here)."""

    name = "StrategyQA"
    category = "commonsense"
    hub_id = "ChilleD/StrategyQA"
    hub_splits = {"train": "train", "test": "test"}
    license = "MIT"
    has_rationale = True
    files = (MirrorFile("train.json", "train", "json"), MirrorFile("dev.json", "dev", "json"))

    def from_hub_row(self, row: dict[str, Any], split: str, index: int) -> Record:
        split = self.publisher_split(split)
        facts = row.get("facts") or []
        rationale = " ".join(str(f).strip() for f in facts) if isinstance(facts, list) else str(facts).strip()
        decomposition = row.get("decomposition") or []
        meta = {"term": text_field(row, "term", required=False),
                "description": text_field(row, "description", required=False),
                "decomposition": list(decomposition) if isinstance(decomposition, list) else str(decomposition)}
        key = text_field(row, "qid", required=False) or f"{split}-{index}"
        return self.choice_record(key, split, text_field(row, "question"), ["no", "yes"],
                                  int(as_bool(row["answer"], "answer")), rationale=rationale, meta=meta)


class PIQAAdapter(DatasetAdapter):
    """Mirror: valid.jsonl {goal, sol1, sol2} with valid-labels.lst, line i of one labelling line i of the
    other; differing line counts mean the pair is misaligned, which no per-line skip can repair, so that is
    always an error. Hub ybisk/piqa: {goal, sol1, sol2, label}; its test labels are hidden (-1)."""

    name = "PIQA"
    category = "commonsense"
    hub_id = "ybisk/piqa"
    hub_splits = {"train": "train", "valid": "validation"}
    license = "AFL-3.0"
    files = (MirrorFile("valid.jsonl", "valid", "piqa"),)

    @staticmethod
    def labels_name(mf: MirrorFile) -> str:
        return mf.name.replace(".jsonl", "-labels.lst")

    def mirror_rows(self, path: Path, mf: MirrorFile, report: ParseReport,
                    on_bad_line: str) -> Iterator[tuple[str, int, Any]]:
        labels_path = path.with_name(self.labels_name(mf))
        if not labels_path.is_file():
            raise NotFoundError(f"{self.name}: {path.name} is in {path.parent} but its labels file "
                                f"{labels_path.name} is not")
        labels = read_lines(labels_path)
        n_lines = len(read_lines(path))
        if n_lines != len(labels):
            raise InvalidSpecError(f"{path} has {n_lines} lines but {labels_path} has {len(labels)} labels; "
                                   f"the files must be aligned line by line")
        for lineno, obj in read_jsonl(path, report, on_bad_line):
            yield f"{path}:{lineno}", lineno - 1, {**obj, "label": labels[lineno - 1].strip()}

    def from_hub_row(self, row: dict[str, Any], split: str, index: int) -> Record:
        split = self.publisher_split(split)
        label = row["label"]
        if str(label) not in ("0", "1"):  # the labels file holds "0"/"1", the hub ints; -1 = hidden
            raise InvalidSpecError(f"label {label!r} is not 0 or 1", field="label")
        return self.choice_record(f"{split}-{index}", split, text_field(row, "goal"),
                                  [text_field(row, "sol1"), text_field(row, "sol2")], int(label))


_WIKIHOW_MARKUP = (("[header]", ""), ("[step]", ""), ("[substeps]", ""), (" [title]", ". "), ("[title] ", ""),
                   ("[title].", ""), ("  ", " "))


def strip_wikihow_markup(text: str) -> str:
    """The cleaning the mirrored text file went through (klosax/hellaswag_text_data's extractor, which
    llama.cpp's HellaSwag scorer reads), applied to hub rows so both copies give the same strings."""
    for old, new in _WIKIHOW_MARKUP:
        text = text.replace(old, new)
    return text.strip()


class HellaSwagAdapter(DatasetAdapter):
    """Mirror: hellaswag_val_full.txt.bz2, all 10,042 validation tasks as 6-line blocks ("activity: ctx",
    the label 0-3, four endings). A block that does not have that shape is reported and the reader moves
    on line by line until a well-formed block starts, so one lost line costs one task, not the rest of the
    file. Ids are task indices (line // 6), which match the hub's row order. Hub Rowan/hellaswag:
    {ind, activity_label, ctx_a, ctx_b, ctx, endings, source_id, split, split_type, label (a string)}."""

    name = "HellaSwag"
    category = "commonsense"
    hub_id = "Rowan/hellaswag"
    hub_splits = {"train": "train", "val": "validation"}
    license = "MIT"
    files = (MirrorFile("hellaswag_val_full.txt.bz2", "val", "hellaswag-text"),)

    @staticmethod
    def _block_ok(lines: list[str], i: int) -> bool:
        """Six lines of the right shape, followed by the end or the next "activity: ctx" line. Without that
        last check a block missing an ending would take the next task's first line as its fourth ending."""
        if i + 6 > len(lines):
            return False
        return (": " in lines[i] and lines[i + 1].strip() in ("0", "1", "2", "3")
                and all(lines[j].strip() for j in range(i + 2, i + 6))
                and (i + 6 == len(lines) or ": " in lines[i + 6]))

    def mirror_rows(self, path: Path, mf: MirrorFile, report: ParseReport,
                    on_bad_line: str) -> Iterator[tuple[str, int, Any]]:
        lines = read_lines(path)
        i = 0
        while i < len(lines):
            if self._block_ok(lines, i):
                activity, _, ctx = lines[i].partition(": ")
                yield f"{path}:{i + 1}", i // 6, {"activity_label": activity, "ctx": ctx, "label": lines[i + 1],
                                                  "endings": lines[i + 2: i + 6]}
                i += 6
                continue
            start = i
            i += 1
            while i < len(lines) and not self._block_ok(lines, i):
                i += 1
            what = "truncated task" if len(lines) - start < 6 else "garbled task block"
            bad_line(report, on_bad_line, f"{path}:{start + 1}",
                     f"{what}: lines {start + 1}-{i} are not 'activity: context', a label 0-3 and 4 endings")

    def mirror_record(self, row: Any, mf: MirrorFile, index: int) -> Record:
        return self._build(row, mf.split, index, clean=False)

    def from_hub_row(self, row: dict[str, Any], split: str, index: int) -> Record:
        return self._build(row, self.publisher_split(split), index, clean=True)

    def _build(self, row: dict[str, Any], split: str, index: int, *, clean: bool) -> Record:
        tidy = strip_wikihow_markup if clean else str.strip
        activity, ctx = tidy(text_field(row, "activity_label")), tidy(text_field(row, "ctx"))
        endings = row["endings"]
        if not isinstance(endings, list) or len(endings) != 4:
            raise InvalidSpecError("endings must be a list of 4 strings", field="endings")
        label = str(row["label"]).strip()
        if label not in ("0", "1", "2", "3"):  # the hub's test labels are empty
            raise InvalidSpecError(f"label {row['label']!r} is not 0-3", field="label")
        meta: dict[str, Any] = {"activity_label": activity}
        meta.update({k: row[k] for k in ("ind", "source_id", "split_type") if k in row})
        return self.choice_record(f"{split}-{index}", split, f"{activity}: {ctx}",
                                  [tidy(str(e)) for e in endings], int(label), meta=meta)


class CommonsenseQAAdapter(DatasetAdapter):
    """Mirror: dev_rand_split.jsonl (CSQA v1.11 random split) {answerKey, id, question: {question_concept,
    choices: [{label, text}] x5, stem}}. Hub tau/commonsense_qa: {id, question, question_concept,
    choices: {label, text}, answerKey}; its test answer keys are empty, so test is not listed."""

    name = "CommonsenseQA"
    category = "commonsense"
    hub_id = "tau/commonsense_qa"
    hub_splits = {"train": "train", "dev": "validation"}
    license = "MIT"
    files = (MirrorFile("dev_rand_split.jsonl", "dev"),)

    def from_hub_row(self, row: dict[str, Any], split: str, index: int) -> Record:
        split = self.publisher_split(split)
        stem, pairs = stem_and_choices(row)
        labels = [label for label, _ in pairs]
        question = row["question"]
        concept = question.get("question_concept", "") if isinstance(question, dict) else row.get(
            "question_concept", "")
        key = text_field(row, "id", required=False) or f"{split}-{index}"
        return self.choice_record(key, split, stem, [text for _, text in pairs],
                                  label_index(labels, row["answerKey"]),
                                  meta={"question_concept": concept, "answer_key": str(row["answerKey"]).strip()})

