"""Pre-flight checks a phase runs before it starts: free disk space and a usable GPU.

Both fail with a message that names what was measured and what was needed, so a run stops at minute
zero instead of after hours of training (the checklist's premortem).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Callable

from shared.errors import AcceleratorUnavailableError, InsufficientStorageError, InvalidSpecError

log = logging.getLogger(__name__)

GIB = 2**30

# Free disk space each phase needs, in GiB (the checklist divides by 1024**3 and calls it GB).
#
# | phase          | GiB | why                                                                       |
# |----------------|-----|---------------------------------------------------------------------------|
# | datasets (0)   |   3 | checklist: ~1.35 GB of raw datasets; the tokenized curriculum and eval     |
# |                |     | sets are about as large again; the rest is headroom for the hub cache.     |
# | cognate (1)    |  10 | checklist ("Need 10GB"): 3 models + ancestor, step checkpoints with        |
# |                |     | optimizer state (weights + AdamW's 2 states ≈ 3× the ~0.2 GB fp32 model).  |
# | evomerge (2)   |   6 | the checklist's "8 × 1.7 GB" is VRAM for a population held at once, not    |
# |                |     | disk. On disk: resume checkpoints of the 8-model population (weights only, |
# |                |     | ≤ 0.2 GB each at the default size) for the last 2 generations ≈ 3.2 GB,    |
# |                |     | plus the champion and its manifest; the 4 inputs are Phase 1's outputs.    |
# | reasoning_data |   2 | ~25k examples as JSON (~0.1 GB) plus the resumable request cache.          |
# | (3a)           |     |                                                                           |
# | quietstar (3b) |   8 | baked model, frozen teacher copy, RL checkpoints every 1000 episodes       |
# |                |     | (rollback needs the previous ones): ~10 × (weights + optimizer state).     |
# | bitnet (4)     |   4 | full-precision input, per-layer backups for revert, QAT checkpoints and    |
# |                |     | the packed ternary output (~0.3 GB per the checklist).                     |
# | pipeline       |  15 | checklist: "Minimum: 15GB free" for the whole run (phases reuse space as   |
# |                |     | intermediates are cleaned up; ~13 GB with intermediates kept).             |
STORAGE_REQUIREMENTS_GB: dict[str, float] = {
    "datasets": 3.0,
    "cognate": 10.0,
    "evomerge": 6.0,
    "reasoning_data": 2.0,
    "quietstar": 8.0,
    "bitnet": 4.0,
    "pipeline": 15.0,
}

# The checklist's phase numbers; Phase 3 is Quiet-STaR itself (3a, its data, has its own name).
PHASE_ALIASES: dict[str, str] = {
    "phase0": "datasets",
    "phase1": "cognate",
    "phase2": "evomerge",
    "phase3a": "reasoning_data",
    "phase3": "quietstar",
    "phase3b": "quietstar",
    "phase4": "bitnet",
    "all": "pipeline",
}


def _existing_ancestor(path: Path) -> Path:
    """The path itself or its nearest existing parent: outputs often go to a directory not made yet."""
    path = path.expanduser().absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor)


def check_storage_requirements(phase: str, path: str | Path = ".", *, required_gb: float | None = None) -> dict:
    """Check that the filesystem holding `path` has the free space `phase` needs.

    `phase` is a project name (datasets, cognate, evomerge, reasoning_data, quietstar, bitnet,
    pipeline) or a checklist alias (phase0..phase4, phase3a/3b, all); the requirement comes from
    STORAGE_REQUIREMENTS_GB (table and reasons above) unless `required_gb` is given. A path that does
    not exist yet is measured at its nearest existing parent.

    Returns {"free_gb", "required_gb", "ok": True, "path", "phase"}; raises InsufficientStorageError
    naming the phase, the path, free and needed GiB, InvalidSpecError for an unknown phase.
    """
    key = PHASE_ALIASES.get(str(phase).lower(), str(phase).lower())
    if required_gb is None:
        if key not in STORAGE_REQUIREMENTS_GB:
            known = sorted(STORAGE_REQUIREMENTS_GB) + sorted(PHASE_ALIASES)
            raise InvalidSpecError(f"unknown phase {phase!r}; known: {', '.join(known)} "
                                   "(or pass required_gb)", field="phase")
        required_gb = STORAGE_REQUIREMENTS_GB[key]
    elif isinstance(required_gb, bool) or not isinstance(required_gb, (int, float)) \
            or not math.isfinite(required_gb) or required_gb < 0:
        raise InvalidSpecError(f"must be a finite number >= 0, got {required_gb!r}", field="required_gb")

    where = _existing_ancestor(Path(path))
    free_gb = shutil.disk_usage(where).free / GIB
    if free_gb < required_gb:
        raise InsufficientStorageError(
            f"phase {phase!r} needs {required_gb:.1f} GB free at {where} but only {free_gb:.1f} GB is "
            f"free; free {required_gb - free_gb:.1f} GB or point the run's output at another disk")
    log.info("storage ok for %s: %.1f GB free at %s (needs %.1f GB)", phase, free_gb, where, required_gb)
    return {"free_gb": free_gb, "required_gb": float(required_gb), "ok": True, "path": str(where),
            "phase": key}


GpuProbe = Callable[[], tuple[bool, dict | None]]


def cuda_probe(device_index: int = 0, min_free_gb: float | None = None) -> tuple[bool, dict | None]:
    """Probe one CUDA device: (available, info) or (False, None) when no CUDA device is visible.

    available means free memory ≥ min_free_gb; with min_free_gb None, ≥ 90% of the device is free
    (i.e. nobody else is using it). info = {"name", "total_gb", "free_gb", "index", "required_gb"}.
    """
    import torch  # deferred: the storage check and the tests of the waiting logic need no torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return False, None
    if device_index >= torch.cuda.device_count():
        raise AcceleratorUnavailableError(
            f"GPU index {device_index} requested but only {torch.cuda.device_count()} CUDA device(s) "
            "are visible (check CUDA_VISIBLE_DEVICES)")
    free, total = torch.cuda.mem_get_info(device_index)
    info = {
        "name": torch.cuda.get_device_name(device_index),
        "total_gb": total / GIB,
        "free_gb": free / GIB,
        "index": device_index,
    }
    needed = 0.9 * info["total_gb"] if min_free_gb is None else float(min_free_gb)
    info["required_gb"] = needed
    return info["free_gb"] >= needed, info


def wait_for_gpu(
    timeout: float = 3600,
    *,
    min_free_gb: float | None = None,
    poll_interval: float = 5.0,
    device_index: int = 0,
    probe: GpuProbe | None = None,
) -> dict:
    """Wait until a GPU is usable, then return {"name", "total_gb", "free_gb", "index"}.

    No CUDA device at all raises AcceleratorUnavailableError at once (waiting cannot make one appear).
    A visible device without enough free memory (min_free_gb, default 90% of the device: see
    `cuda_probe`) is polled every `poll_interval` seconds until it is, or until `timeout` seconds have
    passed, which raises AcceleratorUnavailableError with the last numbers seen.

    `probe()` replaces the CUDA query (tests, other accelerators): it returns (available, info), with
    info None when no device is visible; device_index and min_free_gb are then the probe's business.
    """
    for name, value in (("timeout", timeout), ("poll_interval", poll_interval)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0 or (name == "poll_interval" and value == 0):
            raise InvalidSpecError(f"must be a finite number {'> 0' if name == 'poll_interval' else '>= 0'}, "
                                   f"got {value!r}", field=name)
    if probe is None:
        def probe() -> tuple[bool, dict | None]:
            return cuda_probe(device_index, min_free_gb)

    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        available, info = probe()
        polls += 1
        if info is None:
            raise AcceleratorUnavailableError(
                "no CUDA device visible; this phase needs a GPU: run on a GPU host (check the driver, "
                "CUDA_VISIBLE_DEVICES and the container's GPU request) or choose a CPU profile")
        if available:
            log.info("GPU %s (%s) ready: %.1f of %.1f GB free after %d poll(s)", info.get("index"),
                     info.get("name"), info.get("free_gb", float("nan")), info.get("total_gb", float("nan")),
                     polls)
            return {k: info[k] for k in ("name", "total_gb", "free_gb", "index") if k in info}
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            needed = info.get("required_gb", min_free_gb)
            needed_text = f"{needed:.1f} GB" if isinstance(needed, (int, float)) else "more"
            raise AcceleratorUnavailableError(
                f"GPU {info.get('index', device_index)} ({info.get('name', '?')}) had "
                f"{info.get('free_gb', float('nan')):.1f} GB free of {info.get('total_gb', float('nan')):.1f} GB, "
                f"needed {needed_text}; still busy after waiting {timeout:g} s ({polls} polls). "
                "Free the GPU (another job holds it) or raise the timeout")
        if polls == 1:
            log.info("GPU %s busy (%.1f GB free); waiting up to %g s", info.get("index", device_index),
                     info.get("free_gb", float("nan")), timeout)
        time.sleep(min(poll_interval, remaining))
