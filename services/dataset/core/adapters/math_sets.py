"""Math word problems: GSM8K, SVAMP, ASDiv. Answers are normalised numbers; rationales are the publishers'.

GSM8K (Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems"): the solution ends in
"#### <number>" and carries calculator annotations "<<48/2=24>>" the model was never meant to emit.
SVAMP (Patel et al. 2021): a 1,000-problem challenge set; the equation is the rationale.
ASDiv (Miao et al. 2020): XML; answers carry units ("9 (apples)") and some are not numbers at all.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterator

from services.dataset.core.adapters.base import DatasetAdapter, MirrorFile, normalize_number, text_field
from shared.data.records import ParseReport, Record
from shared.errors import InvalidSpecError

_CALC = re.compile(r"<<[^<>]*>>")


class GSM8KAdapter(DatasetAdapter):
    """Hub schema openai/gsm8k "main": {question, answer} (the same rows as the mirror's JSON Lines)."""

    name = "GSM8K"
    category = "math"
    hub_id = "openai/gsm8k"
    hub_config = "main"
    hub_splits = {"train": "train", "test": "test"}
    license = "MIT"
    has_rationale = True
    files = (MirrorFile("train.jsonl", "train"), MirrorFile("test.jsonl", "test"))

    def from_hub_row(self, row: dict[str, Any], split: str, index: int) -> Record:
        split = self.publisher_split(split)
        question = text_field(row, "question")
        solution = text_field(row, "answer")
        if solution.count("####") != 1:
            raise InvalidSpecError(f"the solution has {solution.count('####')} '####' markers, expected 1")
        worked, final = solution.split("####")
        worked = worked.strip()
        # The annotations are the calculator calls GSM8K's models were trained to make; a rationale for our
        # models is the prose without them, but they are kept for tool-use experiments.
        cleaned = _CALC.sub("", worked)
        return self.record(f"{split}-{index}", split, prompt=question, answer=normalize_number(final),
                           rationale=cleaned, meta={"calc_rationale": worked})


class SVAMPAdapter(DatasetAdapter):
    """Mirror: SVAMP.json, the whole challenge set, returned as publisher split "test" (SVAMP is an
    evaluation set). Hub schema ChilleD/SVAMP assumed to keep the file's fields {ID, Body, Question,
    Equation, Answer, Type} with a 700/300 train/test split; not verified (no network here)."""

    name = "SVAMP"
    category = "math"
    hub_id = "ChilleD/SVAMP"
    hub_splits = {"train": "train", "test": "test"}
    license = "MIT"
    has_rationale = True
    files = (MirrorFile("SVAMP.json", "test", "json"),)

    def from_hub_row(self, row: dict[str, Any], split: str, index: int) -> Record:
        split = self.publisher_split(split)
        body, question = text_field(row, "Body"), text_field(row, "Question")
        equation = text_field(row, "Equation", required=False)
        key = text_field(row, "ID", required=False) or f"{split}-{index}"
        return self.record(key, split, prompt=f"{body} {question}", answer=normalize_number(row["Answer"]),
                           rationale=equation,
                           meta={"equation": equation, "type": text_field(row, "Type", required=False)})


# One number, optionally followed by one parenthesised unit: "9 (apples)", "0.46 (dollars)", "48".
# Ratios ("3:4"), times ("3:30 p.m."), fractions ("2/3"), several answers ("5; 7") and words are not.
_ASDIV_ANSWER = re.compile(r"(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)\s*(?:\(([^()]*)\))?")


class ASDivAdapter(DatasetAdapter):
    """Mirror: ASDiv.xml, returned as publisher split "all" (the release has no split; the paper uses
    cross-validation). Problems whose answer is not a single number are reported skips, so a numeric
    evaluator never sees a gold it cannot compare. Hub schema EleutherAI/asdiv assumed {body, question,
    solution_type, answer, formula} in one "validation" split; not verified. Hub rows carry no problem
    ID, so their ids are index-based and differ from the mirror's "nluds-NNNN"."""

    name = "ASDiv"
    category = "math"
    hub_id = "EleutherAI/asdiv"
    hub_splits = {"all": "validation"}
    license = "CC BY-NC 4.0"
    has_rationale = True
    files = (MirrorFile("ASDiv.xml", "all", "xml"),)

    def mirror_rows(self, path: Path, mf: MirrorFile, report: ParseReport,
                    on_bad_line: str) -> Iterator[tuple[str, int, Any]]:
        # A trusted local publisher file. ElementTree never fetches external entities or DTDs, and expat
        # >= 2.4.1 (2.5.0 here) refuses runaway internal entity expansion ("billion laughs"). The whole
        # file is one tree, so a parse error fails the read outright rather than per problem.
        try:
            root = ET.parse(path).getroot()
        except (ET.ParseError, OSError) as exc:
            raise InvalidSpecError(f"{path}: not well-formed XML: {exc}") from None
        for i, problem in enumerate(root.iter("Problem")):
            row = {child.tag: (child.text or "") for child in problem}
            row.update({f"@{k}": v for k, v in problem.attrib.items()})
            yield f"{path}[Problem {problem.get('ID') or i}]", i, row

    def from_hub_row(self, row: dict[str, Any], split: str, index: int) -> Record:
        split = self.publisher_split(split)
        # The XML's element names (mirror) and the hub's lower-case column names are both accepted.
        body = text_field(row, "Body", "body")
        question = text_field(row, "Question", "question")
        raw_answer = text_field(row, "Answer", "answer")
        match = _ASDIV_ANSWER.fullmatch(raw_answer)
        if not match:
            raise InvalidSpecError(f"answer {raw_answer!r} is not a single number")
        formula = text_field(row, "Formula", "formula", required=False)
        meta = {"solution_type": text_field(row, "Solution-Type", "solution_type", required=False),
                "unit": (match.group(2) or "").strip(), "raw_answer": raw_answer}
        if row.get("@Grade"):
            meta["grade"] = row["@Grade"]
        key = row.get("@ID") or f"{split}-{index}"
        return self.record(key, split, prompt=f"{body} {question}", answer=normalize_number(match.group(1)),
                           rationale=formula, meta=meta)
