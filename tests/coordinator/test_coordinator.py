"""The coordinator over real loopback gRPC: graph order, gates, leases with fencing, restart safety,
cancel, approvals and bad input (issue #3's "Done when")."""

import json
import threading
from pathlib import Path

import grpc
import pytest
import yaml

from agentforge.v1 import common_pb2, coordinator_pb2
from services.coordinator.core.gates import judge
from shared.config import load_profile
from shared.config.load import CONFIG_DIR
from tests.coordinator.cluster import Cluster, passing_metrics

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def rpc_error(fn, *args):
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, timeout=10)
    return info.value


def test_a_run_walks_the_graph_and_reasoning_data_runs_beside_cognate(cluster):
    hold = threading.Event()
    cluster.behaviour["cognate"].hold = hold
    run_id = cluster.create()
    # while cognate is held, reasoning_data (depends only on datasets) runs and finishes
    cluster.wait(lambda: cluster.phase(run_id, "reasoning_data").state == "succeeded", what="reasoning_data")
    assert cluster.phase(run_id, "cognate").state == "running"
    assert cluster.phase(run_id, "evomerge").state == "pending"
    hold.set()
    run = cluster.wait_run(run_id)
    assert [p.state for p in run.phases] == ["succeeded"] * 6
    calls = {name: b.calls[0] for name, b in cluster.behaviour.items()}
    for name, definition in cluster.defs.items():
        for dep in definition.depends_on:
            assert calls[dep]["end"] <= calls[name]["start"], f"{name} started before {dep} finished"
    # lineage: each phase got its dependencies' published outputs
    assert sorted(calls["quietstar"]["inputs"]) == ["datasets_out", "evomerge_out", "reasoning_data_out"]
    assert calls["cognate"]["inputs"] == ["datasets_out"]
    for ph in run.phases:
        (art,) = ph.artifacts
        assert art.uri.endswith(f"runs/{run_id}/{ph.phase}/{ph.phase}_out")
        cluster.store.verify(cluster.store.ref_for(f"runs/{run_id}/{ph.phase}/{ph.phase}_out"))
    events = list(cluster.stub.WatchRun(coordinator_pb2.WatchRunRequest(run_id=run_id), timeout=10))
    kinds = [e.kind for e in events]
    assert kinds[0] == "run_created" and kinds[-1] == "run_finished" and "gate" in kinds
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


def test_two_lease_holding_jobs_are_serialized_by_a_capacity_one_lease(cluster):
    cluster.behaviour["cognate"].step_delay = 0.15
    a, b = cluster.create(), cluster.create()
    cluster.wait_run(a)
    cluster.wait_run(b)
    first, second = sorted(cluster.behaviour["cognate"].calls, key=lambda c: c["start"])
    assert first["end"] <= second["start"], "two cognate jobs held the accelerator at once"
    assert second["token"] > first["token"] > 0
    assert cluster.coordinator.leases.free_slots() == 1


def test_a_gate_fails_on_a_missing_metric_and_approve_continues(cluster):
    metrics = passing_metrics("cognate")
    metrics.pop("cognate/memory_diversity")
    cluster.behaviour["cognate"].metrics = metrics
    run_id = cluster.create()
    run = cluster.wait_run(run_id, states=("blocked",))
    assert "cognate/memory_diversity was not reported" in run.error
    gate = next(g for g in cluster.phase(run_id, "cognate").gates if g.metric == "cognate/memory_diversity")
    assert not gate.measured and not gate.passed
    assert cluster.phase(run_id, "evomerge").state == "pending"
    # approving a gate that did not fail is refused
    err = rpc_error(cluster.stub.ApproveGate, coordinator_pb2.ApproveGateRequest(
        run_id=run_id, phase="datasets", who="ana", why="looks fine"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "did not fail" in err.details()
    cluster.stub.ApproveGate(coordinator_pb2.ApproveGateRequest(
        run_id=run_id, phase="cognate", who="ana", why="diversity measured by hand"), timeout=10)
    run = cluster.wait_run(run_id)
    assert cluster.phase(run_id, "cognate").state == "approved"
    approvals = cluster.state.approvals(run_id)
    assert approvals[0]["who"] == "ana" and approvals[0]["why"] == "diversity measured by hand"


def test_a_gate_that_may_not_be_approved_stays_closed(cluster):
    metrics = passing_metrics("datasets")
    metrics["datasets/required_available_fraction"] = 0.5
    cluster.behaviour["datasets"].metrics = metrics
    run_id = cluster.create()
    run = cluster.wait_run(run_id, states=("blocked",))
    assert "datasets/required_available_fraction = 0.5, needs >= 1" in run.error
    err = rpc_error(cluster.stub.ApproveGate, coordinator_pb2.ApproveGateRequest(
        run_id=run_id, phase="datasets", who="ana", why="x"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "may not be approved" in err.details()
    # RetryPhase reruns it; with passing metrics the run completes
    cluster.behaviour["datasets"].metrics = None
    cluster.stub.RetryPhase(coordinator_pb2.PhaseRef(run_id=run_id, phase="datasets"), timeout=10)
    cluster.wait_run(run_id)
    assert len(cluster.behaviour["datasets"].calls) == 2


def test_restart_of_the_coordinator_mid_run_continues_and_redoes_nothing(cluster):
    hold = threading.Event()
    cluster.behaviour["cognate"].hold = hold
    run_id = cluster.create()
    cluster.wait(lambda: cluster.behaviour["cognate"].started.is_set(), what="cognate start")
    cluster.kill_coordinator()
    cluster.start_coordinator()
    hold.set()
    cluster.wait_run(run_id)
    for name, b in cluster.behaviour.items():
        assert len(b.calls) == 1, f"{name} ran {len(b.calls)} times"


def test_a_killed_worker_gets_the_same_request_again_and_resumes(tmp_path):
    cluster = Cluster(tmp_path, lease_ttl_s=30.0)
    try:
        b = cluster.behaviour["evomerge"]
        b.steps, b.pause_after = 6, 3
        run_id = cluster.create()
        assert b.paused.wait(30), "evomerge never reached step 3"
        cluster.kill_worker("evomerge")          # dies after its step-3 checkpoint
        b.pause_after = 0
        cluster.start_worker("evomerge")
        cluster.wait_run(run_id)
        first, second = b.calls
        assert first["request_id"] == second["request_id"] and first["token"] == second["token"]
        registry = cluster.workers["evomerge"][1]
        job = registry.get(cluster.phase(run_id, "evomerge").job_id)
        assert job.resumed_from_step == 3        # at most one checkpoint interval lost
        events = [e.kind for e in cluster.stub.WatchRun(coordinator_pb2.WatchRunRequest(run_id=run_id), timeout=10)]
        assert "resubmitted" in events
    finally:
        cluster.close()


def test_lease_expiry_after_a_crash_hands_the_accelerator_on_and_the_stale_token_is_refused(tmp_path):
    cluster = Cluster(tmp_path, lease_ttl_s=0.5)
    try:
        cluster.behaviour["cognate"].hold = threading.Event()  # never released: the worker "hangs", then dies
        run_a = cluster.create()
        cluster.wait(lambda: cluster.behaviour["cognate"].started.is_set(), what="cognate start")
        stale = cluster.phase(run_a, "cognate")
        old_token, old_job = stale.fencing_token, stale.job_id
        cluster.kill_worker("cognate")
        cluster.wait(lambda: cluster.phase(run_a, "cognate").state == "waiting", timeout=10, what="fencing")
        # the stale holder is refused on heartbeat…
        err = rpc_error(cluster.stub.RenewLease, coordinator_pb2.LeaseRef(lease_id=f"lease-{old_token}",
                                                                        fencing_token=old_token))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        # …and whatever it staged is never published
        staged = [k for k in cluster.store.list_artifacts("jobs/") if f"/t{old_token}/" in k]
        assert all(not k.startswith("runs/") for k in staged)
        assert cluster.store.list_artifacts(f"runs/{run_a}/cognate/") == []
        cluster.behaviour["cognate"].hold = None
        cluster.start_worker("cognate")
        cluster.wait_run(run_a)
        new = cluster.phase(run_a, "cognate")
        assert new.fencing_token > old_token and new.job_id != old_job
    finally:
        cluster.close()


def test_cancel_stops_jobs_and_releases_the_lease(cluster):
    hold = threading.Event()
    cluster.behaviour["cognate"].hold = hold
    run_id = cluster.create()
    cluster.wait(lambda: cluster.behaviour["cognate"].started.is_set(), what="cognate start")
    assert cluster.coordinator.leases.free_slots() == 0
    run = cluster.stub.CancelRun(coordinator_pb2.RunRef(run_id=run_id), timeout=10)
    assert run.state == "cancelled"
    job_id = cluster.phase(run_id, "cognate").job_id
    server, registry = cluster.workers["cognate"]
    cluster.wait(lambda: registry.get(job_id).state.value == "cancelled", what="job cancelled")
    # released once the worker reports the job stopped (tests/coordinator/test_lease_handover.py)
    cluster.wait(lambda: cluster.coordinator.leases.free_slots() == 1, what="the lease released")
    assert {p.state for p in run.phases if p.phase not in ("datasets", "reasoning_data")} == {"cancelled"}


def test_work_units_over_grpc_go_to_each_worker_once(cluster):
    cluster.behaviour["cognate"].hold = threading.Event()   # the run stays running: only its units are handed out
    run_id = cluster.create(start_phase="", request_id="units")
    units = [coordinator_pb2.WorkUnit(unit_id=f"u{i}") for i in range(5)]
    reply = cluster.stub.PlanUnits(coordinator_pb2.PlanUnitsRequest(run_id=run_id, phase="reasoning_data", units=units), timeout=10)
    assert reply.planned == 5 and reply.total == 5
    got = []
    for worker in ("w1", "w2", "w3", "w1", "w2", "w3"):
        lease = cluster.stub.LeaseUnit(coordinator_pb2.LeaseUnitRequest(run_id=run_id, phase="reasoning_data", worker=worker), timeout=10)
        if lease.granted:
            got.append(lease.unit.unit_id)
            art = common_pb2.ArtifactRef(uri="file:///x", sha256="0" * 64, size=1, name=lease.unit.unit_id)
            ref = coordinator_pb2.UnitRef(run_id=run_id, phase="reasoning_data", unit_id=lease.unit.unit_id,
                                          fencing_token=lease.fencing_token)
            assert cluster.stub.CompleteUnit(coordinator_pb2.CompleteUnitRequest(unit=ref, artifact=art), timeout=10).newly_completed
            assert not cluster.stub.CompleteUnit(coordinator_pb2.CompleteUnitRequest(unit=ref, artifact=art), timeout=10).newly_completed
    assert sorted(got) == [f"u{i}" for i in range(5)]


def test_units_of_a_cancelled_or_failed_run_are_not_handed_out_even_by_name(cluster):
    cluster.behaviour["cognate"].hold = threading.Event()   # keeps a run running
    live, cancelled = cluster.create(), cluster.create()
    cluster.wait(lambda: cluster.phase(cancelled, "cognate").state == "waiting", what="datasets of both runs done")
    cluster.behaviour["datasets"].error = "no data today"
    failed = cluster.create()
    cluster.wait_run(failed, states=("failed",))
    for run_id in (live, cancelled, failed):
        units = [coordinator_pb2.WorkUnit(unit_id=f"u{i}") for i in range(2)]
        cluster.stub.PlanUnits(coordinator_pb2.PlanUnitsRequest(run_id=run_id, phase="reasoning_data", units=units),
                               timeout=10)
    cluster.stub.CancelRun(coordinator_pb2.RunRef(run_id=cancelled), timeout=10)

    def lease(run_id):
        return cluster.stub.LeaseUnit(coordinator_pb2.LeaseUnitRequest(run_id=run_id, phase="reasoning_data",
                                                                       worker="w"), timeout=10)

    assert not lease(cancelled).granted and not lease(failed).granted
    for run_id in (cancelled, failed):
        listed = cluster.stub.ListUnits(coordinator_pb2.ListUnitsRequest(run_id=run_id, phase="reasoning_data"),
                                        timeout=10).units
        assert [u.state for u in listed] == ["pending", "pending"]
    got = lease(live)
    assert got.granted and got.run_id == live


def test_bad_input_gets_clear_errors(cluster):
    err = rpc_error(cluster.stub.GetRun, coordinator_pb2.RunRef(run_id="run-nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "run-nope" in err.details()
    err = rpc_error(cluster.stub.CreateRun, coordinator_pb2.CreateRunRequest(profile="ci", start_phase="quantum"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "quantum" in err.details()
    err = rpc_error(cluster.stub.CreateRun, coordinator_pb2.CreateRunRequest(config_yaml="name: x\nseed: [1\n"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "YAML" in err.details()
    data = yaml.safe_load((CONFIG_DIR / "ci.yaml").read_text())
    data["phases"]["cognate"]["batch_size"] = 0
    err = rpc_error(cluster.stub.CreateRun, coordinator_pb2.CreateRunRequest(config_yaml=yaml.safe_dump(data)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "phases.cognate.batch_size" in err.details()
    err = rpc_error(cluster.stub.RetryPhase, coordinator_pb2.PhaseRef(run_id="run-nope", phase="cognate"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    a = cluster.create(request_id="same")
    assert cluster.create(request_id="same") == a  # same request id, same config: the same run
    err = rpc_error(cluster.stub.CreateRun, coordinator_pb2.CreateRunRequest(profile="tiny", request_id="same"))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    err = rpc_error(cluster.stub.RetryPhase, coordinator_pb2.PhaseRef(run_id=a, phase="nonsense"))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "nonsense" in err.details()
    err = rpc_error(cluster.stub.CreateRun, coordinator_pb2.CreateRunRequest(profile="ci", start_phase="evomerge"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "cognate" in err.details()


def test_every_ci_gate_fails_on_the_metrics_of_a_random_init_model():
    fixture = json.loads((ASSETS / "random_init_metrics.json").read_text())["metrics"]
    gates = load_profile("ci").gates
    for phase in ("datasets", "cognate", "evomerge", "reasoning_data", "quietstar", "bitnet"):
        outcomes = judge(getattr(gates, phase), {k: v for k, v in fixture.items() if v is not None})
        passed = [o.metric for o in outcomes if o.passed]
        assert not passed, f"{phase} gates passed on a random-init model: {passed}"


@pytest.mark.parametrize("profile", ["ci", "tiny", "default"])
def test_every_gate_of_every_profile_fails_on_random_init(profile):
    fixture = json.loads((ASSETS / "random_init_metrics.json").read_text())["metrics"]
    gates = load_profile(profile).gates
    for phase in ("datasets", "cognate", "evomerge", "reasoning_data", "quietstar", "bitnet"):
        for gate in getattr(gates, phase):
            assert gate.metric in fixture, f"{gate.metric} has no random-init fixture value"
        assert not [o for o in judge(getattr(gates, phase), {k: v for k, v in fixture.items() if v is not None}) if o.passed]


def test_start_phase_takes_earlier_outputs_as_inputs(cluster):
    first = cluster.create()
    cluster.wait_run(first)
    refs = {p.phase: p.artifacts[0] for p in cluster.run(first).phases}
    inputs = [refs["evomerge"], refs["reasoning_data"], refs["datasets"]]
    second = cluster.create(start_phase="quietstar", inputs=inputs)
    run = cluster.wait_run(second)
    states = {p.phase: p.state for p in run.phases}
    assert states == {"datasets": "skipped", "cognate": "skipped", "evomerge": "skipped",
                      "reasoning_data": "skipped", "quietstar": "succeeded", "bitnet": "succeeded"}
    assert sorted(cluster.behaviour["quietstar"].calls[-1]["inputs"]) == ["datasets_out", "evomerge_out", "reasoning_data_out"]
    assert len(cluster.behaviour["cognate"].calls) == 1
    # an input that does not exist, or whose manifest hash does not match, is refused up front
    missing = common_pb2.ArtifactRef(uri=refs["evomerge"].uri + "-gone", sha256=refs["evomerge"].sha256,
                                     name="evomerge_out")
    err = rpc_error(cluster.stub.CreateRun, coordinator_pb2.CreateRunRequest(
        profile="ci", start_phase="quietstar", inputs=[missing, refs["reasoning_data"]]))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    forged = common_pb2.ArtifactRef(uri=refs["evomerge"].uri, sha256="0" * 64, name="evomerge_out")
    err = rpc_error(cluster.stub.CreateRun, coordinator_pb2.CreateRunRequest(
        profile="ci", start_phase="quietstar", inputs=[forged, refs["reasoning_data"]]))
    assert err.code() == grpc.StatusCode.DATA_LOSS


def test_finished_phases_are_reused_only_when_asked(cluster):
    first = cluster.create()
    cluster.wait_run(first)
    reused = cluster.create(reuse_finished_phases=True)
    run = cluster.wait_run(reused)
    assert {p.state for p in run.phases} == {"reused"}
    assert {p.reused_from for p in run.phases} == {first}
    assert all(len(b.calls) == 1 for b in cluster.behaviour.values())
    fresh = cluster.create()
    cluster.wait_run(fresh)
    assert all(len(b.calls) == 2 for b in cluster.behaviour.values())
