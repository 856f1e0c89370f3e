"""Safe readers for the mirror's files: strict JSON, strict UTF-8, and one rule for bad lines.

A bad line (unparsable JSON, a record missing a field) is either skipped and written into the
ParseReport with its "file:line", or raised as InvalidSpecError naming file and line; which one is the
caller's `on_bad_line` ("skip" | "fail"). Nothing is dropped silently. A file that cannot be parsed as a
whole (a .json document, a corrupt .bz2) is always an error, since no part of it can be trusted.
"""

from __future__ import annotations

import bz2
import json
from pathlib import Path
from typing import Any, Iterator

from shared.canonical import _reject_constant, loads_strict
from shared.data.records import ParseReport
from shared.errors import InvalidSpecError, NotFoundError

ON_BAD_LINE = ("skip", "fail")


def check_on_bad_line(on_bad_line: str) -> None:
    if on_bad_line not in ON_BAD_LINE:
        raise InvalidSpecError(f"must be one of {', '.join(ON_BAD_LINE)}, got {on_bad_line!r}",
                               field="on_bad_line")


def bad_line(report: ParseReport, on_bad_line: str, where: str, why: str) -> None:
    """Record a skipped line (skip) or stop the read (fail); `where` is "file:line" or "file[item]"."""
    if on_bad_line == "fail":
        raise InvalidSpecError(f"{where}: {why} (set on_bad_line='skip' to skip such lines)")
    report.skip(where, why)


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise NotFoundError(f"{path} does not exist or is not a file")


def read_jsonl(path: Path, report: ParseReport, on_bad_line: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number from 1, object) for each good line of a JSON Lines file; every other line goes
    through `bad_line`. A blank line is a bad line too: JSON Lines has no empty records, and a blank in the
    middle of a file usually means it was spliced or truncated."""
    check_on_bad_line(on_bad_line)
    path = Path(path)
    _require_file(path)
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                bad_line(report, on_bad_line, where, "blank line")
                continue
            try:
                obj = json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                bad_line(report, on_bad_line, where, f"not valid JSON: {exc}")
                continue
            if not isinstance(obj, dict):
                bad_line(report, on_bad_line, where, f"not a JSON object but {type(obj).__name__}")
                continue
            yield lineno, obj


def read_json(path: Path) -> Any:
    """A whole JSON document, strictly (NaN/Infinity refused); an unparsable file is InvalidSpecError
    naming the file, a missing one NotFoundError."""
    path = Path(path)
    _require_file(path)
    try:
        return loads_strict(path.read_bytes(), name=str(path))
    except RecursionError:
        raise InvalidSpecError(f"{path} is not valid JSON: nested too deeply") from None


def read_json_array(path: Path) -> list[Any]:
    """A JSON document whose top level must be an array (the publishers' list-of-records files)."""
    data = read_json(path)
    if not isinstance(data, list):
        raise InvalidSpecError(f"{path}: expected a JSON array of records, found {type(data).__name__}")
    return data


def read_text(path: Path) -> str:
    """A UTF-8 text file (transparently bz2-decompressed for a .bz2 name); bytes that are not UTF-8 or a
    damaged/truncated archive are InvalidSpecError naming the file."""
    path = Path(path)
    _require_file(path)
    try:
        data = bz2.decompress(path.read_bytes()) if path.suffix == ".bz2" else path.read_bytes()
    except (OSError, EOFError, ValueError) as exc:  # bz2 raises OSError for bad data, EOFError for a cut file
        raise InvalidSpecError(f"{path}: not a readable bz2 archive: {exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidSpecError(f"{path}: not UTF-8 text: {exc}") from None


def read_lines(path: Path) -> list[str]:
    """The lines of a text file without their line ends; a final newline does not make an empty line.
    Only LF (with an optional CR before it) ends a line: str.splitlines would also split at form feeds and
    U+2028, which occur inside paragraphs and would shift fixed-size blocks such as HellaSwag's."""
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]
