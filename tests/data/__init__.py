"""Helpers for the data tests: the shared GPT-2 files and small readers of the real mirror's files.

The readers are deliberately minimal (the real adapters live in services/dataset); they only turn
publisher files into Records so tokenizer and curriculum properties are checked on real text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shared.data.records import Record

SHARED_DIR = Path(__file__).resolve().parents[3] / "shared"
GPT2_DIR = SHARED_DIR / "tokenizers" / "gpt2"
DATASETS_DIR = SHARED_DIR / "datasets"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (CI has the shared folder beside the clone)")
    return path


def gsm8k_records(n: int | None = None, split: str = "train") -> list[Record]:
    """GSM8K train items: question → prompt, worked solution → rationale, the number after #### → answer."""
    lines = require(DATASETS_DIR / "GSM8K" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines[:n]):
        d = json.loads(line)
        solution, _, answer = d["answer"].rpartition("####")
        out.append(Record(id=f"GSM8K/{i}", dataset="GSM8K", category="math", split=split,
                          prompt=d["question"], answer=answer.strip(), rationale=solution.strip()))
    return out


def mbpp_records(n: int | None = None) -> list[Record]:
    lines = require(DATASETS_DIR / "MBPP" / "mbpp.jsonl").read_text(encoding="utf-8").splitlines()
    out = []
    for line in lines[:n]:
        d = json.loads(line)
        out.append(Record(id=f"MBPP/{d['task_id']}", dataset="MBPP", category="code", split="train",
                          prompt=d["text"], answer=d["code"]))
    return out


_HEADING = re.compile(r"^ = [^=].* = $")


def wikitext_articles(which: str = "valid") -> list[str]:
    """WikiText-2 articles (split at top-level ' = Title = ' lines), raw text kept byte for byte."""
    text = require(DATASETS_DIR / "WikiText" / f"wikitext-2.{which}.txt").read_text(encoding="utf-8")
    articles: list[list[str]] = []
    for line in text.splitlines(keepends=True):
        if _HEADING.match(line.rstrip("\n")) or not articles:
            articles.append([])
        articles[-1].append(line)
    return ["".join(a) for a in articles if "".join(a).strip()]


def wikitext_records(which: str = "valid", n: int | None = None) -> list[Record]:
    return [Record(id=f"WikiText/{which}-{i}", dataset="WikiText", category="language", split="train",
                   text=t) for i, t in enumerate(wikitext_articles(which)[:n])]
