"""The whole pipeline distributed (issue #12): a `ci` run created through the coordinator's gRPC API on a
LocalCluster -- the coordinator and six phase services as separate processes on loopback gRPC, auth on, one
torch thread each, SeaweedFS as S3 -- executes every phase for real and completes.

At ci scale some gates fail (evomerge's improvement, quietstar's and bitnet's quality gates, see
configs/ci.yaml): each failed gate must stop the run with its reason, and is then approved through
ApproveGate with who and why. At the end every artifact of the run verifies (files re-hashed), the CLI agrees,
and the final model's lineage reaches back through every phase to the datasets.

The slow end-to-end test of `make test` (marker `e2e`): a few minutes on two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.deploy.local import LOCAL_ONLY_ENV
from shared.rpc.convert import ref_from_proto
from tests.e2e.harness import APPROVER, DONE, lineage, phase_spans, verify_run_artifacts

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.s3]
REPO = Path(__file__).resolve().parents[2]
PIPELINE = ("datasets", "cognate", "evomerge", "reasoning_data", "quietstar", "bitnet")


def proc_environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().rstrip(b"\0").decode().split("\0")
    return dict(p.split("=", 1) for p in pairs)


@pytest.mark.timeout(1800)
def test_a_ci_run_through_the_coordinator_rpc_completes_verified_with_full_lineage(cluster, e2e):
    # the deployed shape: every service its own process, auth required, one torch thread each
    pids = {name: cluster.pid(name) for name in cluster.services}
    assert len(set(pids.values())) == 7 and None not in pids.values()
    for name, pid in pids.items():
        env = proc_environ(pid)
        assert env["AGENTFORGE_REQUIRE_AUTH"] == "1" and env["AGENTFORGE_TOKEN"] == cluster.token, name
        assert env["AGENTFORGE_TORCH_THREADS"] == LOCAL_ONLY_ENV["AGENTFORGE_TORCH_THREADS"] == "1", name
        assert env["AGENTFORGE_STORE"].startswith("s3://"), name

    started = time.monotonic()
    run_id = e2e.create(profile="ci", request_id="e2e-ci-run")
    run, approvals = e2e.drive(run_id, timeout_s=1500)
    wall = time.monotonic() - started
    assert run.state == "succeeded", f"{run.state}: {run.error}"
    assert {p.phase: p.state in DONE for p in run.phases} == {p: True for p in PIPELINE}
    assert all(p.state in ("succeeded", "approved") for p in run.phases)   # every phase executed, none reused
    # the same request id returns the same run (CreateRun is idempotent)
    assert e2e.create(profile="ci", request_id="e2e-ci-run") == run_id

    # every approved phase is one whose gate failed, and each approval is recorded with who and why
    assert {p.phase for p in run.phases if p.state == "approved"} == {a.phase for a in approvals}
    events = e2e.events(run_id)
    approved_msgs = {ev.phase: ev.message for ev in events if ev.kind == "approved"}
    blocked_msgs = [ev.message for ev in events if ev.kind == "blocked"]
    assert len(blocked_msgs) == len(approvals)
    for a in approvals:
        assert APPROVER in approved_msgs[a.phase] and all(m in approved_msgs[a.phase] for m in a.metrics)
        assert any(f"gate of {a.phase} failed" in m for m in blocked_msgs)
    assert [ev.kind for ev in events][-1] == "run_finished" and events[-1].state == "succeeded"
    assert [ev.seq for ev in events] == list(range(1, len(events) + 1))

    # every artifact of the run verifies, and the run record names exactly the published ones
    keys = verify_run_artifacts(e2e, run)
    assert {k.split("/")[2] for k in keys} == set(PIPELINE)
    (final,) = [ref_from_proto(a) for a in next(p for p in run.phases if p.phase == "bitnet").artifacts]
    assert final.name == "model"
    cli = subprocess.run([sys.executable, "-m", "shared.cli", "artifacts", "verify", final.uri], cwd=REPO,
                         env={**os.environ, **cluster.env_for_client()}, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and cli.stdout.startswith(f"ok: {final.uri}"), cli.stderr

    # lineage: from the packed model back to the datasets, through every model-producing phase, all of it
    # written by this run and readable through the hashes the children recorded
    graph = lineage(e2e.store, final)
    producers = {m.producer.phase for _, m in graph.values()}
    assert producers == {"bitnet", "quietstar", "evomerge", "cognate", "reasoning_data", "datasets"}, producers
    assert {m.producer.run_id for _, m in graph.values()} == {run_id}
    # through published artifacts only: deleting the run's staging (artifacts gc) cannot break it
    assert all(e2e.store.key_from_uri(uri).startswith(f"runs/{run_id}/") for uri in graph), sorted(graph)
    roots = [m for _, m in graph.values() if not m.parents]
    assert roots and {m.producer.phase for m in roots} == {"datasets"}
    assert "datasets" in {m.name for m in roots}
    for ref, m in graph.values():   # a child's parents are the artifacts its phase was handed
        assert ref.name == m.name

    spans = phase_spans(events)
    table = ", ".join(f"{p} {sum(b - a for a, b in spans.get(p, [])):.0f}s" for p in PIPELINE)
    print(f"\ndistributed ci run {run_id}: {wall:.0f} s wall ({table}); approved: "
          + "; ".join(f"{a.phase} ({', '.join(a.metrics)})" for a in approvals))
