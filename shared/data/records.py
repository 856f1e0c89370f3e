"""The one record schema every dataset adapter maps to, and the parse report adapters fill in.

    id          "<dataset>/<publisher id or index>", unique within a dataset
    dataset     canonical name (GSM8K, SVAMP, ASDiv, MBPP, CodeXGLUE, ARC-Easy, ARC-Challenge, HotpotQA,
                DROP, StrategyQA, PIQA, HellaSwag, BoolQ, WikiText, FineWeb-Edu, CommonsenseQA)
    category    math | code | qa | commonsense | language
    split       train | val | test (ours; `source_split` keeps the publisher's name)
    prompt      what the model is given
    answer      normalised gold answer (e.g. GSM8K's number after ####, "true"/"false", a choice's text)
    choices     the options of a multiple-choice item, in order; `label` is the index of the right one
    rationale   the publisher's worked solution / facts, when there is one
    text        the text of a language-modelling record (prompt/answer empty)
    meta        small JSON-safe extras (question type, decomposition, tests, …)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from shared.errors import InvalidSpecError

Category = Literal["math", "code", "qa", "commonsense", "language"]
CATEGORIES: tuple[str, ...] = ("math", "code", "qa", "commonsense", "language")
SPLITS: tuple[str, ...] = ("train", "val", "test")

DATASETS: tuple[str, ...] = (
    "GSM8K", "SVAMP", "ASDiv", "MBPP", "CodeXGLUE", "ARC-Easy", "ARC-Challenge", "HotpotQA", "DROP",
    "StrategyQA", "PIQA", "HellaSwag", "BoolQ", "WikiText", "FineWeb-Edu", "CommonsenseQA",
)
# The checklist's names for the same datasets.
ALIASES: dict[str, str] = {"Mini-MBPP": "MBPP", "mini-mbpp": "MBPP", "WikiText-2": "WikiText"}


def canonical_name(name: str) -> str:
    """The canonical dataset name, accepting the checklist's aliases; unknown names are an error."""
    canon = ALIASES.get(name, name)
    if canon not in DATASETS:
        raise InvalidSpecError(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}", field="dataset")
    return canon


@dataclass(frozen=True)
class Record:
    id: str
    dataset: str
    category: str
    split: str
    prompt: str = ""
    answer: str = ""
    choices: tuple[str, ...] = ()
    label: int | None = None
    rationale: str = ""
    text: str = ""
    source_split: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.id:
            raise InvalidSpecError("a record needs an id", field="id")
        if self.category not in CATEGORIES:
            raise InvalidSpecError(f"unknown category {self.category!r} in {self.id}", field="category")
        if self.split not in SPLITS:
            raise InvalidSpecError(f"unknown split {self.split!r} in {self.id}", field="split")
        if self.choices and (self.label is None or not 0 <= self.label < len(self.choices)):
            raise InvalidSpecError(f"{self.id}: label {self.label} is not an index into {len(self.choices)} "
                                   f"choices", field="label")
        if not self.text and not self.prompt:
            raise InvalidSpecError(f"{self.id}: a record needs a prompt or a text", field="prompt")

    @property
    def is_multiple_choice(self) -> bool:
        return bool(self.choices)

    def with_split(self, split: str) -> "Record":
        return Record(**{**asdict(self), "split": split, "choices": tuple(self.choices)})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["choices"] = list(self.choices)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
        try:
            return cls(**{**d, "choices": tuple(d.get("choices") or ())})
        except TypeError as exc:
            raise InvalidSpecError(f"not a record: {exc}", field="record") from None


@dataclass
class ParseReport:
    """What reading a source skipped and why (file and line), so nothing is dropped silently."""

    read: int = 0
    skipped: list[str] = field(default_factory=list)

    def skip(self, where: str, why: str) -> None:
        self.skipped.append(f"{where}: {why}")

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)
