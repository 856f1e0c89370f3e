"""What every dataset adapter is: where its data lives (mirror files, hub id) and how a row becomes a Record.

An adapter knows one publisher's formats and nothing else; which source is used, how train/val/test are
carved and what is capped happen in `services.dataset.core.{sources,splits,prepare}`. Records leave here
with a provisional `split` (train / val / test from the publisher's split name) and `source_split` set to
the publisher's own name.

Shared rules, so the sixteen adapters behave alike:
  - ids are "<dataset>/<publisher id>", or "<dataset>/<publisher split>-<row index>" where the publisher
    gives none; the index is the row's position in its file / hub split, so a mirror row and the hub row of
    the same item get the same id when both keep the publisher's order;
  - a row that cannot be mapped (missing field, label out of range, ...) is a bad line: reported with its
    "file:line" and skipped, or raised, as `on_bad_line` says; so is a second row with an id already read;
  - numbers are normalised one way (`normalize_number`), multiple-choice answers are the right choice's text.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator

from services.dataset.core.adapters.io import bad_line, check_on_bad_line, read_json_array, read_jsonl
from shared.data.records import ParseReport, Record
from shared.errors import InvalidSpecError, NotFoundError

# Publisher split names -> our provisional split. "prompt" is MBPP's few-shot split (never evaluated on),
# "all" marks a release without splits (ASDiv, the DROP fixture); the carving in splits.py decides later.
PROVISIONAL_SPLIT: dict[str, str] = {
    "train": "train", "prompt": "train",
    "dev": "val", "val": "val", "valid": "val", "validation": "val",
    "test": "test", "all": "test",
}

# What a malformed row can raise while being mapped; each becomes a reported bad line, never a crash.
ROW_ERRORS = (InvalidSpecError, KeyError, TypeError, ValueError, IndexError, AttributeError)


def provisional_split(publisher_split: str) -> str:
    try:
        return PROVISIONAL_SPLIT[publisher_split]
    except KeyError:
        raise InvalidSpecError(f"unknown publisher split {publisher_split!r}; known: "
                               f"{', '.join(PROVISIONAL_SPLIT)}", field="split") from None


def describe(exc: BaseException) -> str:
    """A one-line reason for the parse report."""
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    if isinstance(exc, InvalidSpecError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# --- field helpers: each raises InvalidSpecError naming the field, so the report says what was wrong ---

def text_field(row: Any, *keys: str, required: bool = True) -> str:
    """The first of `keys` present in `row` as a non-empty string (stripped); "" if absent and optional."""
    if not isinstance(row, dict):
        raise InvalidSpecError(f"expected a JSON object, got {type(row).__name__}")
    for key in keys:
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if value is not None and not isinstance(value, str):
            raise InvalidSpecError(f"field {key!r} is {type(value).__name__}, not a string")
    if required:
        raise InvalidSpecError(f"missing or empty field {keys[0]!r}")
    return ""


def as_bool(value: Any, field: str) -> bool:
    """A gold yes/no as the publishers write it: JSON bool, "true"/"false", "yes"/"no" or 0/1."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
        return value.strip().lower() in ("true", "yes")
    raise InvalidSpecError(f"field {field!r} is {value!r}, not a boolean")


_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+")


def normalize_number(value: Any) -> str:
    """One spelling per number, so exact-match scoring compares values: thousands commas dropped, integers
    without ".0", no trailing zeros ("1,000" -> "1000", 51.0 -> "51", "2.50" -> "2.5", "-3" -> "-3")."""
    if isinstance(value, bool):
        raise InvalidSpecError(f"{value!r} is not a number")
    text = repr(value) if isinstance(value, float) else str(value).strip()  # repr: shortest exact float
    if not _PLAIN_NUMBER.fullmatch(text):
        raise InvalidSpecError(f"{value!r} is not a plain decimal number")
    try:
        number = Decimal(text.replace(",", ""))
    except InvalidOperation:
        raise InvalidSpecError(f"{value!r} is not a plain decimal number") from None
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


def labelled_choices(choices: Any) -> list[tuple[str, str]]:
    """(label, text) pairs from either publisher shape: ARC/CSQA files' [{"label", "text"}, ...] or the
    hub's {"label": [...], "text": [...]}."""
    if isinstance(choices, dict):
        labels, texts = choices["label"], choices["text"]
        if len(labels) != len(texts):
            raise InvalidSpecError(f"{len(labels)} choice labels but {len(texts)} choice texts")
        pairs = list(zip(labels, texts))
    else:
        pairs = [(c["label"], c["text"]) for c in choices]
    if len(pairs) < 2:
        raise InvalidSpecError(f"a multiple-choice item needs at least 2 choices, got {len(pairs)}")
    return [(str(label).strip(), str(text).strip()) for label, text in pairs]


def stem_and_choices(row: Any) -> tuple[str, list[tuple[str, str]]]:
    """Question text and (label, text) choices of an ARC / CommonsenseQA row in either shape: the
    publishers' files nest {stem, choices} under "question", the hub flattens them to question + choices."""
    question = row["question"]
    if isinstance(question, dict):
        return text_field(question, "stem"), labelled_choices(question["choices"])
    return text_field(row, "question"), labelled_choices(row["choices"])


def label_index(labels: list[str], key: Any) -> int:
    key = str(key).strip()
    if key not in labels:
        raise InvalidSpecError(f"answer key {key!r} is not one of the choice labels {labels}")
    return labels.index(key)


@dataclass(frozen=True)
class MirrorFile:
    """One file of a dataset's mirror folder and the publisher split it holds."""

    name: str
    split: str
    fmt: str = "jsonl"   # "jsonl" | "json" (a JSON array) | an adapter-specific format it reads itself
    schema: str = ""     # which of a dataset's record schemas the file holds, where it has several


class DatasetAdapter(ABC):
    """One dataset: its identity, where it lives, and how its rows map to Records."""

    name: ClassVar[str]                      # canonical name (shared.data.records.DATASETS)
    category: ClassVar[str]                  # math | code | qa | commonsense | language
    hub_id: ClassVar[str]                    # Hugging Face dataset id
    hub_config: ClassVar[str | None] = None
    # publisher split name (as in read_mirror's keys and from_hub_row's `split`) -> the hub's split name;
    # only splits with gold labels on the hub are listed.
    hub_splits: ClassVar[dict[str, str]]
    license: ClassVar[str]
    streaming: ClassVar[bool] = False        # True where the hub copy is too large to download
    has_rationale: ClassVar[bool] = False
    files: ClassVar[tuple[MirrorFile, ...]] = ()
    extra_splits: ClassVar[tuple[str, ...]] = ()   # publisher splits neither on the hub list nor a file's

    @property
    def folder(self) -> str:
        return self.name

    # --- the hub ---------------------------------------------------------------------------------------

    @abstractmethod
    def from_hub_row(self, row: dict[str, Any], split: str, index: int) -> Record:
        """One row of the hub dataset -> Record. `split` is the publisher split (a key of hub_splits; the
        hub's own name is accepted too) and `index` the row's position in it. Raises InvalidSpecError (or
        KeyError/TypeError/ValueError) for a row that cannot be mapped."""

    def from_hub_rows(self, rows: Iterable[dict[str, Any]], split: str, *, report: ParseReport,
                      where: str = "hub") -> Iterator[Record]:
        """Records from a hub split, reporting unmappable rows. Sources should prefer this to calling
        from_hub_row per row: WikiText's hub rows are lines and only this groups them into articles."""
        for index, row in enumerate(rows):
            try:
                record = self.from_hub_row(dict(row), split, index)
            except ROW_ERRORS as exc:
                report.skip(f"{where}:{index}", describe(exc))
                continue
            report.read += 1
            yield record

    @property
    def publisher_splits(self) -> tuple[str, ...]:
        """Every publisher split name this adapter knows: the hub's (our names for them) and the mirror's."""
        names = [*self.hub_splits, *(mf.split for mf in self.files), *self.extra_splits]
        return tuple(dict.fromkeys(names))

    def publisher_split(self, split: str) -> str:
        """Accept either the publisher's split name or the hub's name for it; return the publisher's."""
        if split in self.publisher_splits:
            return split
        for ours, theirs in self.hub_splits.items():
            if split == theirs:
                return ours
        known = sorted({*self.publisher_splits, *self.hub_splits.values()})
        raise InvalidSpecError(f"{self.name} has no split {split!r}; known: {', '.join(known)}", field="split")

    def record(self, key: str, source_split: str, **fields: Any) -> Record:
        """A Record of this dataset with id "<dataset>/<key>" and the provisional split of `source_split`."""
        return Record(id=f"{self.name}/{key}", dataset=self.name, category=self.category,
                      split=provisional_split(source_split), source_split=source_split, **fields)

    def choice_record(self, key: str, source_split: str, prompt: str, choices: list[str], label: int,
                      **fields: Any) -> Record:
        """A multiple-choice Record; the gold answer is the right choice's text."""
        if not 0 <= label < len(choices):
            raise InvalidSpecError(f"label {label} is not an index into {len(choices)} choices", field="label")
        if any(not c for c in choices):
            raise InvalidSpecError("a choice is empty", field="choices")
        return self.record(key, source_split, prompt=prompt, choices=tuple(choices), label=label,
                           answer=choices[label], **fields)

    # --- the mirror ------------------------------------------------------------------------------------

    def read_mirror(self, mirror_dir: Path, *, report: ParseReport,
                    on_bad_line: str = "skip") -> dict[str, list[Record]]:
        """{publisher split name: records} from this dataset's files under mirror_dir/<folder>/.

        Missing folder or files -> NotFoundError naming the dataset, the folder and the files looked for.
        A bad line is reported as "file:line" (skip) or raised as InvalidSpecError (fail)."""
        check_on_bad_line(on_bad_line)
        folder = Path(mirror_dir) / self.folder
        out: dict[str, list[Record]] = {}
        first_seen: dict[str, str] = {}
        for mf in self.mirror_files(folder):
            for where, index, row in self.mirror_rows(folder / mf.name, mf, report, on_bad_line):
                try:
                    record = self.mirror_record(row, mf, index)
                except ROW_ERRORS as exc:
                    bad_line(report, on_bad_line, where, describe(exc))
                    continue
                if record.id in first_seen:  # ids must be unique per dataset; the first one read wins
                    bad_line(report, on_bad_line, where,
                             f"duplicate id {record.id} (first read at {first_seen[record.id]})")
                    continue
                first_seen[record.id] = where
                out.setdefault(self.mirror_key(record), []).append(record)
                report.read += 1
        return out

    def mirror_files(self, folder: Path) -> list[MirrorFile]:
        """The declared files that exist; NotFoundError if the folder or every file is missing (a partial
        mirror is normal here: e.g. PIQA's train file is too large to be mirrored)."""
        present = [mf for mf in self.files if (folder / mf.name).is_file()]
        if not present:
            state = "has none of" if folder.is_dir() else "does not exist; looked for"
            raise NotFoundError(f"{self.name}: mirror folder {folder} {state} "
                                f"{', '.join(mf.name for mf in self.files)}")
        return present

    def mirror_rows(self, path: Path, mf: MirrorFile, report: ParseReport,
                    on_bad_line: str) -> Iterator[tuple[str, int, Any]]:
        """(where, index, raw row) for each row of one file. JSON Lines and JSON arrays are handled here;
        adapters with other formats override this."""
        if mf.fmt == "jsonl":
            for lineno, obj in read_jsonl(path, report, on_bad_line):
                yield f"{path}:{lineno}", lineno - 1, obj
        elif mf.fmt == "json":
            for i, item in enumerate(read_json_array(path)):
                yield f"{path}[{i}]", i, item
        else:
            raise NotImplementedError(f"{type(self).__name__} must read format {mf.fmt!r} itself")

    def mirror_record(self, row: Any, mf: MirrorFile, index: int) -> Record:
        """A mirror row -> Record; by default the mirror holds hub-schema rows."""
        return self.from_hub_row(row, mf.split, index)

    def mirror_key(self, record: Record) -> str:
        """The read_mirror key a record is returned under (its publisher split)."""
        return record.source_split
