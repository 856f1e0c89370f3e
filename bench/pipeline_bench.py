"""The whole pipeline, embedded vs distributed, in one run on this machine (issue #12).

    .venv/bin/python bench/pipeline_bench.py [--profile tiny] [--modes embedded,distributed] [--out FILE]

embedded: `agentforge run --profile P --approve-failed-gates ...` in a child process (what `make run` runs),
its own store and state; wall time from start to exit, peak RSS of that process (wait4's ru_maxrss).
distributed: a LocalCluster (coordinator + six phase services as processes, SeaweedFS as S3, auth on, each
phase service at the profile's runtime.torch_threads, as the embedded run — only one lease-holding phase
computes at a time; the e2e tests keep LocalCluster's one thread each); a run created through CreateRun, every failed gate approved through ApproveGate (the
same gates the embedded run approves); wall time from CreateRun to the run's end; peak RSS of each service
(VmHWM from /proc/PID/status, read before the cluster stops). Cluster start and stop are reported apart;
the BitNet kernel is prebuilt into the cluster's cache first, as the images carry it.
Per-phase times come from each run's phase_started / phase_finished events. Target (issue #12):
distributed ≤ 1.2 × embedded. Appends to bench/RESULTS.md (or --out).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine_line  # noqa: E402 - bench/ is not a package

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REASON = "pipeline bench: every failed gate that allows approval is approved, as make run does"


def phase_times(events) -> dict[str, float]:
    """Seconds per phase from (kind, phase, time) triples: first phase_started to the last phase_finished or
    gate event (a phase whose gate failed ends at its gate: no phase_finished until someone approves it, and
    the wait for approval is not the phase's time)."""
    start, end = {}, {}
    for kind, phase, t in events:
        if kind == "phase_started":
            start.setdefault(phase, t)
        elif kind in ("phase_finished", "gate"):
            end[phase] = t
    return {p: end[p] - start[p] for p in start if p in end}


def embedded(profile: str, work: Path) -> dict:
    from services.coordinator.core.state import StateStore

    state = work / "state.sqlite"
    cmd = [sys.executable, "-m", "shared.cli", "run", "--profile", profile, "--store", str(work / "store"),
           "--state", str(state), "--approve-failed-gates", REASON]
    log = work / "embedded.log"
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    store = StateStore(state)
    (run,) = store.list_runs()
    events = [(e.kind, e.phase, e.time) for e in store.events(run.run_id)]
    return {"wall": wall, "exit": code, "state": run.state, "peak_mib": usage.ru_maxrss / 1024,
            "phases": phase_times(events), "log": str(log)}


def vm_hwm_mib(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def distributed(profile: str, work: Path) -> dict:
    import grpc

    from agentforge.v1 import coordinator_pb2, coordinator_pb2_grpc
    from shared.deploy.local import LocalCluster
    from shared.rpc.auth import with_token
    from shared.rpc.server import channel_options

    from services.bitnet.core.kernel import build_prebuilt
    from shared.config import load_profile
    from shared.deploy import topology

    # the BitNet kernel prebuilt, as the images carry it (the embedded run finds it in torch's warm cache)
    build_prebuilt(work / "cluster" / "cache" / "kernels")
    threads = {"AGENTFORGE_TORCH_THREADS": str(load_profile(profile).runtime.torch_threads)}
    t0 = time.perf_counter()
    cluster = LocalCluster(work / "cluster", base_port=None,
                           extra_env={s.name: threads for s in topology.SERVICES if s.name != "coordinator"})
    cluster.start()
    started = time.perf_counter() - t0
    try:
        channel = with_token(grpc.insecure_channel(cluster.address("coordinator"), options=channel_options()),
                             cluster.token)
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        t1 = time.perf_counter()
        run_id = stub.CreateRun(coordinator_pb2.CreateRunRequest(profile=profile, request_id="pipeline-bench"),
                                timeout=60).run_id
        approved = []
        while True:
            run = stub.GetRun(coordinator_pb2.RunRef(run_id=run_id), timeout=60)
            if run.state in ("succeeded", "failed", "cancelled"):
                break
            if run.state == "blocked":
                blocked = [p for p in run.phases if p.state == "gate_failed"]
                if not blocked or any(not g.may_approve for p in blocked for g in p.gates if not g.passed):
                    break                                  # a gate that may not be approved: the run stops here
                for p in blocked:
                    stub.ApproveGate(coordinator_pb2.ApproveGateRequest(run_id=run_id, phase=p.phase,
                                                                        who="pipeline-bench", why=REASON), timeout=60)
                    approved.append(p.phase)
                continue
            time.sleep(1.0)
        wall = time.perf_counter() - t1
        peaks = {name: vm_hwm_mib(cluster.pid(name)) for name in cluster.services}
        events = []
        for ev in stub.WatchRun(coordinator_pb2.WatchRunRequest(run_id=run_id), timeout=60):
            events.append((ev.kind, ev.phase, ev.time.seconds + ev.time.nanos / 1e9))
        channel.close()
    finally:
        t2 = time.perf_counter()
        cluster.stop()
        stopped = time.perf_counter() - t2
    return {"wall": wall, "state": run.state, "error": run.error, "approved": approved, "peaks": peaks,
            "phases": phase_times(events), "start_s": started, "stop_s": stopped}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--modes", default="embedded,distributed")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--out", default=None, help="write the section here instead of bench/RESULTS.md")
    args = ap.parse_args()
    from shared.config import load_profile

    modes = args.modes.split(",")
    tmp = tempfile.TemporaryDirectory(prefix="pipeline-bench-") if args.work is None else None
    work = Path(args.work or tmp.name)
    results = {}
    load0 = os.getloadavg()
    for mode in modes:
        (work / mode).mkdir(parents=True, exist_ok=True)
        results[mode] = (embedded if mode == "embedded" else distributed)(args.profile, work / mode)
        print(mode, {k: v for k, v in results[mode].items() if k != "phases"}, flush=True)
    load1 = os.getloadavg()
    lines = [f"## pipeline_bench — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "", machine_line(),
             f"- profile `{args.profile}` (runtime.torch_threads {load_profile(args.profile).runtime.torch_threads}: "
             f"the embedded process and each distributed phase service); modes run one after the other in this "
             f"order: {', '.join(modes)}; load "
             f"average {load0[0]:.2f} before, {load1[0]:.2f} after; failed gates approved where allowed "
             f"(`--approve-failed-gates` embedded, ApproveGate distributed)", ""]
    phases = list(dict.fromkeys(p for r in results.values() for p in r["phases"]))
    lines += ["| phase | " + " | ".join(f"{m} s" for m in modes) + " |", "|---|" + "---:|" * len(modes)]
    for p in phases:
        lines.append(f"| {p} | " + " | ".join(f"{results[m]['phases'].get(p, float('nan')):.1f}" for m in modes)
                     + " |")
    lines.append("| **run (wall)** | " + " | ".join(f"**{results[m]['wall']:.1f}**" for m in modes) + " |")
    lines.append("| run state | " + " | ".join(results[m]["state"] for m in modes) + " |")
    if set(modes) >= {"embedded", "distributed"}:
        ratio = results["distributed"]["wall"] / results["embedded"]["wall"]
        lines += ["", f"distributed / embedded wall time: **{ratio:.2f}×** (target ≤ 1.2×)"]
    if "embedded" in results:
        lines += ["", f"embedded: peak RSS of the one process {results['embedded']['peak_mib']:.0f} MiB"]
    if "distributed" in results:
        d = results["distributed"]
        lines += ["", f"distributed: cluster start {d['start_s']:.1f} s, stop {d['stop_s']:.1f} s (not in the wall "
                  f"time); approved: {', '.join(d['approved']) or 'none'}", "",
                  "| service | peak RSS MiB (VmHWM) |", "|---|---:|"]
        lines += [f"| {name} | {mib:.0f} |" for name, mib in d["peaks"].items()]
    lines.append("")
    emit("\n".join(lines), args.out)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
