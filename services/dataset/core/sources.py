"""Where a dataset's records come from, tried in the order the profile sets:

  local_mirror   the publishers' files under mirror_dir (the adapters know the formats)
  hub            the Hugging Face hub through `datasets` (streaming for FineWeb-Edu); unavailable offline
  synthetic      procedural arithmetic word problems, for the math datasets only (tiny/ci profiles)

A dataset no source can provide raises DatasetUnavailableError naming it and every source tried with the
reason each gave.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

from services.dataset.core.synthetic import generate_problems
from shared.data.records import ParseReport, Record
from shared.errors import AgentForgeError, NotFoundError
from shared.utils import DatasetUnavailableError, hub_is_offline

log = logging.getLogger(__name__)

SYNTHETIC_DATASETS = ("GSM8K", "SVAMP", "ASDiv")


class SourceUnavailable(AgentForgeError):
    """This source cannot provide this dataset (the reason is in the message)."""


@dataclass
class Provided:
    source: str
    splits: dict[str, list[Record]]     # publisher split name -> records
    report: ParseReport
    synthetic: bool = False


class MirrorSource:
    name = "local_mirror"

    def __init__(self, mirror_dir: Path, *, on_bad_line: str = "skip"):
        self.mirror_dir = Path(mirror_dir)
        self.on_bad_line = on_bad_line

    def provide(self, adapter, *, limit: int) -> Provided:
        if not self.mirror_dir.is_dir():
            raise SourceUnavailable(f"mirror folder {self.mirror_dir} does not exist")
        report = ParseReport()
        try:
            splits = adapter.read_mirror(self.mirror_dir, report=report, on_bad_line=self.on_bad_line)
        except NotFoundError as exc:
            raise SourceUnavailable(str(exc)) from None
        if not any(splits.values()):
            raise SourceUnavailable(f"{adapter.name}: the mirror files hold no records")
        return Provided(self.name, splits, report)


class HubSource:
    name = "hub"

    def provide(self, adapter, *, limit: int) -> Provided:
        if hub_is_offline():
            raise SourceUnavailable("the hub is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)")
        if not adapter.hub_id:
            raise SourceUnavailable(f"{adapter.name} has no hub id")
        from datasets import load_dataset  # heavy import, only when the hub is actually used

        report = ParseReport()
        splits: dict[str, list[Record]] = {}
        for ours, theirs in adapter.hub_splits.items():
            try:
                rows = load_dataset(adapter.hub_id, adapter.hub_config, split=theirs, streaming=adapter.streaming)
            except Exception as exc:  # noqa: BLE001 - the hub raises many types; the reason is reported
                raise SourceUnavailable(f"hub {adapter.hub_id}/{adapter.hub_config or ''}:{theirs}: {exc}") from None
            # from_hub_rows maps rows (WikiText groups lines into articles) and reports bad rows
            splits[ours] = adapter.from_hub_rows((dict(r) for r in itertools.islice(rows, limit)), ours,
                                                 report=report)
        return Provided(self.name, splits, report)


class SyntheticSource:
    name = "synthetic"

    def __init__(self, *, seed: int):
        self.seed = seed

    def provide(self, adapter, *, limit: int) -> Provided:
        if adapter.name not in SYNTHETIC_DATASETS:
            raise SourceUnavailable(f"the synthetic generator only stands in for {', '.join(SYNTHETIC_DATASETS)}")
        n = max(limit, 10)
        return Provided(self.name, {"synthetic": generate_problems(n, seed=self.seed, dataset=adapter.name)},
                        ParseReport(read=n), synthetic=True)


def build_sources(names, *, mirror_dir: Path, seed: int, on_bad_line: str = "skip"):
    table = {"local_mirror": lambda: MirrorSource(mirror_dir, on_bad_line=on_bad_line),
             "hub": HubSource, "synthetic": lambda: SyntheticSource(seed=seed)}
    return [table[n]() for n in names]


def resolve(adapter, sources, *, limit: int) -> Provided:
    """The first source that can provide the dataset, or DatasetUnavailableError with every reason."""
    tried: list[str] = []
    for source in sources:
        try:
            provided = source.provide(adapter, limit=limit)
            log.info("%s: from %s (%d read, %d skipped)", adapter.name, source.name, provided.report.read,
                     provided.report.skipped_count)
            return provided
        except SourceUnavailable as exc:
            tried.append(f"{source.name} ({exc})")
    raise DatasetUnavailableError({adapter.name: tried})
