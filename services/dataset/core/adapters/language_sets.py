"""Language modelling: WikiText-2 (Merity et al. 2016) and FineWeb-Edu (Penedo et al. 2024). Records carry
`text` (prompt and answer empty).

WikiText records are whole articles, not lines: a line alone is too short to model and its neighbours
carry its context. An article starts at a top-level heading " = Title = " that stands between blank
lines; section headings " = = Sub = = " stay inside it. The blank-neighbour rule matters: the test file
has formula lines of the same shape (" = 1 <unk> and <unk> C = ") in the middle of a paragraph.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from services.dataset.core.adapters.base import DatasetAdapter, MirrorFile, text_field
from services.dataset.core.adapters.io import read_lines
from shared.data.records import ParseReport, Record
from shared.errors import InvalidSpecError, NotFoundError

_TITLE = re.compile(r" = (?P<title>[^=].*?) = ")


def _is_title(lines: list[str], i: int) -> bool:
    if not _TITLE.fullmatch(lines[i]):
        return False
    return (i == 0 or not lines[i - 1].strip()) and (i + 1 == len(lines) or not lines[i + 1].strip())


def split_articles(lines: list[str]) -> list[tuple[int, str, str]]:
    """(first line index, title, article text) per article; text before the first title, if any, is an
    article with title "". Trailing blank lines are dropped, the lines themselves are kept verbatim."""
    lines = [line.rstrip("\n") for line in lines]  # hub rows end in "\n", mirror lines do not
    starts = [i for i in range(len(lines)) if _is_title(lines, i)]
    if any(line.strip() for line in lines[: starts[0] if starts else len(lines)]):
        starts.insert(0, 0)
    articles = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        body = lines[start:end]
        while body and not body[-1].strip():
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
        match = _TITLE.fullmatch(lines[start])
        if body:
            articles.append((start, match.group("title").strip() if match else "", "\n".join(body)))
    return articles


class WikiTextAdapter(DatasetAdapter):
    """Mirror: wikitext-2.{valid,test}.txt from pytorch/examples, which is the tokenized WikiText-2
    ("wikitext-2-v1": spaced punctuation, <unk>) although its README says raw; meta["variant"] says which
    text a record holds. The hub config is the raw one (Salesforce/wikitext "wikitext-2-raw-v1"), whose
    rows are single lines ({text}); from_hub_rows groups them into articles like the mirror's."""

    name = "WikiText"
    category = "language"
    hub_id = "Salesforce/wikitext"
    hub_config = "wikitext-2-raw-v1"
    hub_splits = {"train": "train", "valid": "validation", "test": "test"}
    license = "CC BY-SA 3.0"
    files = (MirrorFile("wikitext-2.valid.txt", "valid", "text"), MirrorFile("wikitext-2.test.txt", "test", "text"))

    def mirror_rows(self, path: Path, mf: MirrorFile, report: ParseReport,
                    on_bad_line: str) -> Iterator[tuple[str, int, Any]]:
        for k, (start, title, text) in enumerate(split_articles(read_lines(path))):
            yield f"{path}:{start + 1}", k, {"title": title, "text": text, "variant": "tokenized"}

    def mirror_record(self, row: Any, mf: MirrorFile, index: int) -> Record:
        return self._article(row, mf.split, index)

    def _article(self, row: dict[str, Any], split: str, index: int) -> Record:
        return self.record(f"{split}-{index}", split, text=row["text"],
                           meta={"title": row["title"], "variant": row["variant"]})

    def from_hub_row(self, row: dict[str, Any], split: str, index: int) -> Record:
        """One hub row as it is (a line, or a whole article where a row holds one)."""
        split = self.publisher_split(split)
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise InvalidSpecError("empty text (a blank line of the corpus)", field="text")
        match = _TITLE.fullmatch(text.rstrip("\n"))
        return self.record(f"{split}-line-{index}", split, text=text.rstrip("\n"),
                           meta={"title": match.group("title").strip() if match else "", "variant": "raw"})

    def from_hub_rows(self, rows: Iterable[dict[str, Any]], split: str, *, report: ParseReport,
                      where: str = "hub") -> Iterator[Record]:
        split = self.publisher_split(split)
        lines = []
        for index, row in enumerate(rows):
            text = row.get("text") if isinstance(row, dict) else None
            if not isinstance(text, str):
                report.skip(f"{where}:{index}", "row has no text string")
                continue
            lines.append(text)
        for k, (_, title, text) in enumerate(split_articles(lines)):
            report.read += 1
            yield self._article({"title": title, "text": text, "variant": "raw"}, split, k)


class FineWebEduAdapter(DatasetAdapter):
    """No mirror files exist (SOURCES.md: no small real sample was found); a folder FineWeb-Edu/ with
    *.jsonl files of {text, id, ...} rows would be read. Hub HuggingFaceFW/fineweb-edu "sample-10BT",
    streamed: {text, id, dump, url, date, file_path, language, language_score, token_count, score,
    int_score}; the small scalar columns go to meta."""

    name = "FineWeb-Edu"
    category = "language"
    hub_id = "HuggingFaceFW/fineweb-edu"
    hub_config = "sample-10BT"
    hub_splits = {"train": "train"}
    license = "ODC-By 1.0"
    streaming = True
    _META = ("url", "dump", "language", "language_score", "token_count", "score", "int_score")

    def mirror_files(self, folder: Path) -> list[MirrorFile]:
        found = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
        if not found:
            state = "has no" if folder.is_dir() else "does not exist; looked for"
            raise NotFoundError(f"{self.name}: mirror folder {folder} {state} *.jsonl files "
                                f"(one {{text, id}} object per line)")
        return [MirrorFile(p.name, "train") for p in found]

    def mirror_record(self, row: Any, mf: MirrorFile, index: int) -> Record:
        # Several files may hold rows without ids; the file name keeps index-based ids apart.
        return self._build(row, mf.split, index, fallback=f"{Path(mf.name).stem}-{index}")

    def from_hub_row(self, row: dict[str, Any], split: str, index: int) -> Record:
        split = self.publisher_split(split)
        return self._build(row, split, index, fallback=f"{split}-{index}")

    def _build(self, row: dict[str, Any], split: str, index: int, *, fallback: str) -> Record:
        text = text_field(row, "text")
        key = text_field(row, "id", required=False) or fallback
        meta = {k: row[k] for k in self._META if isinstance(row.get(k), (str, int, float)) and row[k] == row[k]}
        return self.record(key, split, text=text, meta=meta)

