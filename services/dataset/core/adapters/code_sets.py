"""Code generation: MBPP (Austin et al. 2021, "Program Synthesis with Large Language Models") and
CodeXGLUE text-to-code, CONCODE (Iyer et al. 2018; Lu et al. 2021, "CodeXGLUE")."""

from __future__ import annotations

from typing import Any

from services.dataset.core.adapters.base import DatasetAdapter, MirrorFile, text_field
from shared.data.records import Record
from shared.errors import InvalidSpecError


def mbpp_split(task_id: int) -> str:
    """MBPP's publisher split of a task, by the upstream README's task-id ranges: 1-10 were the few-shot
    prompts, 11-510 the test set, 511-600 validation, 601-974 train (the hub's "full" splits agree)."""
    if task_id < 1:
        raise InvalidSpecError(f"task_id {task_id} is not a positive MBPP task id", field="task_id")
    if task_id <= 10:
        return "prompt"
    if task_id <= 510:
        return "test"
    if task_id <= 600:
        return "validation"
    return "train"


def _code(text: str) -> str:
    # The publisher's code has CRLF line ends (it was written on Windows) and a few stray CRs; one line-end
    # convention keeps exact-match and execution independent of that accident.
    return text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")


class MBPPAdapter(DatasetAdapter):
    """Mirror: mbpp.jsonl (all 974 tasks, split by task id). Hub schema google-research-datasets/mbpp
    "full": {task_id, text, code, test_list, test_setup_code, challenge_test_list}; same rows."""

    name = "MBPP"
    category = "code"
    hub_id = "google-research-datasets/mbpp"
    hub_config = "full"
    # The hub's "prompt" split (10 few-shot tasks) is left out: splits.py has no place for it and ten
    # exemplars do not matter for training. The mirror folds them into "train" (see mirror_key).
    hub_splits = {"train": "train", "validation": "validation", "test": "test"}
    license = "CC BY 4.0 (per the hub card; the upstream README names none)"
    files = (MirrorFile("mbpp.jsonl", "train"),)   # one file for all splits: mirror_record splits by task id
    extra_splits = ("prompt",)

    def from_hub_row(self, row: dict[str, Any], split: str, index: int) -> Record:
        split = self.publisher_split(split)
        task_id = row["task_id"]
        if not isinstance(task_id, int) or isinstance(task_id, bool):
            raise InvalidSpecError(f"task_id {task_id!r} is not an integer", field="task_id")
        text, code = text_field(row, "text"), row["code"]
        if not isinstance(code, str) or not code.strip():
            raise InvalidSpecError("missing or empty field 'code'", field="code")
        tests = row["test_list"]
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
            raise InvalidSpecError("test_list must be a non-empty list of assert strings", field="test_list")
        # The first test shows the function's name and signature, which the text alone does not give;
        # the remaining tests stay hidden for scoring.
        prompt = f"{text}\nYour code should pass this test:\n{tests[0]}"
        meta: dict[str, Any] = {"task_id": task_id, "tests": list(tests)}
        if row.get("test_setup_code"):
            meta["test_setup_code"] = _code(row["test_setup_code"])
        if row.get("challenge_test_list"):
            meta["challenge_tests"] = list(row["challenge_test_list"])
        return self.record(str(task_id), split, prompt=prompt, answer=_code(code), meta=meta)

    def mirror_record(self, row: Any, mf: MirrorFile, index: int) -> Record:
        if not isinstance(row.get("task_id"), int):
            raise InvalidSpecError(f"task_id {row.get('task_id')!r} is not an integer", field="task_id")
        return self.from_hub_row(row, mbpp_split(row["task_id"]), index)

    def mirror_key(self, record: Record) -> str:
        # The few-shot tasks are returned with train (splits.py knows no "prompt" split); their records
        # keep source_split "prompt", so they can still be told apart.
        return "train" if record.source_split == "prompt" else record.source_split


class CodeXGLUEAdapter(DatasetAdapter):
    """Mirror: concode_text-to-code_dev.json, JSON Lines despite its name, {nl, code}; only the dev split
    is mirrored. `nl` keeps CONCODE's class context after the description (`concode_field_sep` ...), which
    is part of the task. Hub schema google/code_x_glue_tc_text_to_code: {id, nl, code}; the hub's test
    split has no gold code as far as we know, so it is not listed (not verified: no network here)."""

    name = "CodeXGLUE"
    category = "code"
    hub_id = "google/code_x_glue_tc_text_to_code"
    hub_splits = {"train": "train", "dev": "validation"}
    license = "C-UDA (data); MIT (code)"
    files = (MirrorFile("concode_text-to-code_dev.json", "dev", "jsonl"),)

    def from_hub_row(self, row: dict[str, Any], split: str, index: int) -> Record:
        split = self.publisher_split(split)
        return self.record(f"{split}-{index}", split, prompt=text_field(row, "nl"),
                           answer=text_field(row, "code"), meta={"language": "java"})
