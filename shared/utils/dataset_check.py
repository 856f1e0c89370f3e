"""Pre-flight dataset check: every dataset a run needs has a source before training starts.

A source is, in order of preference: a local mirror (`mirror_dir/<name>/` holding at least one data
file), then the Hugging Face hub (when not offline and the hub knows the dataset). This module only
answers "where from?"; reading and converting each publisher format is the dataset service's job, which
will plug in its own per-dataset paths (`paths=`) and hub ids (`hub_ids=`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from shared.errors import NotFoundError

log = logging.getLogger(__name__)

# Suffixes of files that hold records (publisher formats seen in the mirror; .bz2 for compressed text).
DATA_SUFFIXES = (".json", ".jsonl", ".xml", ".txt", ".bz2", ".lst", ".parquet", ".csv", ".arrow")

# The checklist's Phase 1 list ("all 16 datasets"; it names 15).
CHECKLIST_DATASETS: tuple[str, ...] = (
    "GSM8K", "SVAMP", "ASDiv", "Mini-MBPP", "CodeXGLUE", "ARC-Easy", "ARC-Challenge", "HotpotQA",
    "DROP", "StrategyQA", "PIQA", "HellaSwag", "BoolQ", "WikiText", "FineWeb-Edu",
)

# Directories under the mirror that also hold a dataset. Mini-MBPP is MBPP's sanitized subset, which is
# selected from the full MBPP file by task id, so a mirror of MBPP serves it.
MIRROR_ALIASES: dict[str, tuple[str, ...]] = {"Mini-MBPP": ("MBPP",)}

# Hub repositories (best known ids; the dataset service owns the definitive mapping and configs).
HUB_IDS: dict[str, str] = {
    "GSM8K": "openai/gsm8k",
    "SVAMP": "ChilleD/SVAMP",
    "ASDiv": "EleutherAI/asdiv",
    "MBPP": "google-research-datasets/mbpp",
    "Mini-MBPP": "google-research-datasets/mbpp",
    "CodeXGLUE": "google/code_x_glue_tc_text_to_code",
    "ARC-Easy": "allenai/ai2_arc",
    "ARC-Challenge": "allenai/ai2_arc",
    "HotpotQA": "hotpotqa/hotpot_qa",
    "DROP": "ucinlp/drop",
    "StrategyQA": "ChilleD/StrategyQA",
    "PIQA": "ybisk/piqa",
    "HellaSwag": "Rowan/hellaswag",
    "BoolQ": "google/boolq",
    "WikiText": "Salesforce/wikitext",
    "CommonsenseQA": "tau/commonsense_qa",
    "FineWeb-Edu": "HuggingFaceFW/fineweb-edu",
}

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset will be read from: kind "mirror" (location = directory) or "hub" (repo id)."""

    kind: str
    location: str
    files: tuple[str, ...] = field(default=())  # data files found in a mirror, relative to location

    def __str__(self) -> str:
        return f"{self.kind}:{self.location}"


class DatasetUnavailableError(NotFoundError):
    """Required datasets have no source. `missing` maps each name to the sources tried and why each failed."""

    def __init__(self, missing: Mapping[str, Sequence[str]]):
        self.missing = {name: list(tried) for name, tried in missing.items()}
        lines = [f"  {name}: " + "; ".join(tried) for name, tried in self.missing.items()]
        super().__init__(
            f"{len(self.missing)} required dataset(s) unavailable:\n" + "\n".join(lines)
            + "\nPut the files under <mirror_dir>/<name>/ or allow hub access (unset HF_HUB_OFFLINE/"
            "HF_DATASETS_OFFLINE, check the network and the token).")


def hub_is_offline(hub_offline: bool | None = None) -> bool:
    """The explicit flag, else HF_HUB_OFFLINE / HF_DATASETS_OFFLINE as the hub libraries read them."""
    if hub_offline is not None:
        return bool(hub_offline)
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_dataset_exists(repo_id: str) -> bool:
    """One metadata request to the hub (never in tests: they run offline or inject hub_probe)."""
    from huggingface_hub import HfApi  # deferred: only needed when the hub is actually consulted

    HfApi().dataset_info(repo_id, timeout=10)
    return True


def _data_files(directory: Path) -> tuple[str, ...]:
    found = [p for p in directory.rglob("*") if p.is_file() and _is_data_file(p)]
    return tuple(sorted(str(p.relative_to(directory)) for p in found))


def _is_data_file(p: Path) -> bool:
    return p.suffix.lower() in DATA_SUFFIXES and not p.name.startswith(".")


def _case_insensitive_child(parent: Path, name: str) -> Path | None:
    exact = parent / name
    if exact.exists():
        return exact
    if not parent.is_dir():
        return None
    lowered = name.lower()
    matches = [c for c in parent.iterdir() if c.name.lower() == lowered]
    return matches[0] if matches else None


def _find_in_mirror(name: str, mirror: Path, rel_paths: Sequence[str]) -> tuple[DatasetSource | None, str]:
    """(source, why-not) for one dataset in the mirror: the first candidate path holding data wins."""
    reasons = []
    for rel in rel_paths:
        candidate = _case_insensitive_child(mirror, rel) if "/" not in rel else mirror / rel
        if candidate is None or not candidate.exists():
            reasons.append(f"{mirror / rel} does not exist")
            continue
        if candidate.is_file():
            if _is_data_file(candidate):
                return DatasetSource("mirror", str(candidate.parent), (candidate.name,)), ""
            reasons.append(f"{candidate} is not a data file ({', '.join(DATA_SUFFIXES)})")
            continue
        files = _data_files(candidate)
        if files:
            return DatasetSource("mirror", str(candidate), files), ""
        reasons.append(f"{candidate} holds no data file ({', '.join(DATA_SUFFIXES)})")
    return None, "mirror: " + "; ".join(reasons)


ALIASES_TO_CANONICAL = {"Mini-MBPP": "MBPP"}


def validate_dataset_availability(
    required: Iterable[str] = CHECKLIST_DATASETS,
    *,
    optional: Iterable[str] = (),
    mirror_dir: str | Path | None = None,
    hub_offline: bool | None = None,
    paths: Mapping[str, Sequence[str]] | None = None,
    hub_ids: Mapping[str, str] | None = None,
    hub_probe: Callable[[str], bool] | None = None,
    prepared_dir: str | Path | None = None,
) -> dict[str, DatasetSource]:
    """Find a source for every dataset; return {name: DatasetSource} for those found.

    Sources, in order: (1) the mirror: each of `paths[name]` (relative to mirror_dir; default
    [name, *MIRROR_ALIASES[name]], directory names matched case-insensitively) that is a data file or a
    directory with a data file somewhere below it (DATA_SUFFIXES); (2) the hub: `hub_ids[name]`
    (default HUB_IDS) when the hub is not offline (`hub_offline`, else HF_HUB_OFFLINE /
    HF_DATASETS_OFFLINE) and `hub_probe(repo_id)` (default: one metadata request) returns True.

    With `prepared_dir` (the datasets phase's output), the prepared curriculum is consulted first: its
    manifest is integrity-checked (file hashes and counts) and a dataset it holds is found there, with the
    source it was prepared from (kind "prepared:<source>").

    A missing `optional` dataset is logged as a warning and left out of the result; missing `required`
    ones raise DatasetUnavailableError naming every missing dataset and every source tried.
    """
    required = list(dict.fromkeys(required))
    optional = [n for n in dict.fromkeys(optional) if n not in required]
    paths = dict(paths or {})
    hub_ids = dict(HUB_IDS if hub_ids is None else hub_ids)
    probe = hub_probe or _hub_dataset_exists
    offline = hub_is_offline(hub_offline)
    mirror = Path(mirror_dir).expanduser() if mirror_dir is not None else None

    prepared = {}
    if prepared_dir is not None:
        from shared.data.prepared import verify_prepared  # the manifest format lives with the data code

        prepared = verify_prepared(Path(prepared_dir), required=[])["datasets"]
    found: dict[str, DatasetSource] = {}
    missing: dict[str, list[str]] = {}
    for name in required + optional:
        tried: list[str] = []
        source = None
        entry = prepared.get(ALIASES_TO_CANONICAL.get(name, name))
        if entry is not None:
            found[name] = DatasetSource(kind=f"prepared:{entry['source']}", location=str(prepared_dir),
                                        files=tuple(f["file"] for f in entry["files"].values()))
            continue
        if prepared_dir is not None:
            tried.append(f"prepared: not in {prepared_dir}")
        if mirror is None:
            tried.append("mirror: no mirror_dir given")
        elif not mirror.is_dir():
            tried.append(f"mirror: {mirror} is not a directory")
        else:
            source, why = _find_in_mirror(name, mirror, paths.get(name, [name, *MIRROR_ALIASES.get(name, ())]))
            if source is None:
                tried.append(why)
        if source is None:
            source = _try_hub(name, hub_ids.get(name), offline, probe, tried)
        if source is not None:
            found[name] = source
            log.debug("dataset %s: %s", name, source)
        elif name in optional:
            log.warning("optional dataset %s unavailable (%s); continuing without it", name, "; ".join(tried))
        else:
            missing[name] = tried
    if missing:
        raise DatasetUnavailableError(missing)
    log.info("datasets available: %s", ", ".join(f"{n} ({s.kind})" for n, s in found.items()))
    return found


def _try_hub(name: str, repo_id: str | None, offline: bool, probe: Callable[[str], bool],
             tried: list[str]) -> DatasetSource | None:
    if repo_id is None:
        tried.append("hub: no hub id known for this dataset (pass hub_ids)")
        return None
    if offline:
        tried.append(f"hub {repo_id}: offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE or hub_offline=True)")
        return None
    try:
        if probe(repo_id):
            return DatasetSource("hub", repo_id)
        tried.append(f"hub {repo_id}: not found")
    except Exception as exc:  # network, auth, missing package: report it as this source's failure
        tried.append(f"hub {repo_id}: {type(exc).__name__}: {exc}")
    return None
