"""What every benchmark shares: the machine description and appending a section to bench/RESULTS.md."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "RESULTS.md"
HEADER = """# Benchmark results

Each section below is one run of a benchmark script in bench/, appended by the script itself: the date,
the machine (platform, CPU model, cores, RAM), library versions and thread count, then its figures. Numbers
compare only within one section (same machine, same run); gates never use them (DESIGN.md §7).
"""


def machine() -> dict[str, str]:
    cpu, ram = "unknown", "unknown"
    try:
        cpu = next(x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                   if x.startswith("model name"))
        mem_kb = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines()
                      if x.startswith("MemTotal"))
        ram = f"{mem_kb / 2**20:.1f} GiB"
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cores": str(os.cpu_count()), "ram": ram}


def machine_line() -> str:
    m = machine()
    return f"- machine: {m['platform']}; CPU {m['cpu']}; {m['cores']} cores; {m['ram']} RAM"


def append_section(section: str) -> None:
    """Append a Markdown section (it starts with its own '## ' heading) and echo it."""
    if not RESULTS.exists():
        RESULTS.write_text(HEADER)
    with RESULTS.open("a") as fh:
        fh.write(section)
    sys.stdout.write(section + "\n")


def emit(section: str, out: str | None) -> None:
    """A bench's `--out FILE`: write the section there (and echo it); without it, append to RESULTS.md."""
    if out:
        Path(out).write_text(section)
        sys.stdout.write(section + "\n")
    else:
        append_section(section)


def offline_env() -> None:
    """No network for the hub or W&B while a bench runs (the caller's explicit settings win)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")


def run_phase_job(store, profile, phase: str, inputs, spec, request_id: str):
    """Run one phase's job in this process with the profile's evaluation settings: (the finished job, its
    progress events, wall seconds). A job that does not succeed ends the bench with its error."""
    import time

    from shared.runtime import JobRegistry, JobRequest, JobState, get_phase

    reg = JobRegistry(get_phase(phase), store)
    t0 = time.time()
    job = reg.submit(JobRequest(request_id=request_id, phase=phase, seed=1, inputs=tuple(inputs),
                                evaluation=profile.evaluation.model_dump()), spec)
    ok = job.done.wait(7200)
    events = list(reg.watch(job.job_id))
    reg.shutdown()
    seconds = time.time() - t0
    if not ok or job.state is not JobState.SUCCEEDED:
        raise SystemExit(f"{phase} failed: {job.error}")
    return job, events, seconds
