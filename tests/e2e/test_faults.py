"""Faults against the real processes (issue #12): each test starts from fixture artifacts at the phase under
test (tests/e2e/conftest.py `upstream`) on the package's LocalCluster, injects a process fault -- kill -9, a
restart, a cancel, a second run -- and checks what the design promises (DESIGN.md §4, §8):

  a trainer killed after a checkpoint   the coordinator notices the lost job, resubmits the same request once
                                        the worker is back, the job resumes from its newest checkpoint (at
                                        most one checkpoint interval lost) and the run completes
  the coordinator killed mid-run        restarted on the same state file, it picks the run up where it was
                                        (same job, no resubmission) and completes it
  S3 restarted during an upload         the upload is retried to completion; no artifact is ever listed whose
                                        files do not verify
  a failing gate                        the run stops, blocked, with the metric, value and threshold; nothing
                                        of the phase is published until ApproveGate (who, why) continues it
  CancelRun                             every running job stops on its worker, nothing staged survives, and
                                        the accelerator lease passes to the next run once the job has stopped
  two runs at once                      their lease-holding jobs never overlap in time on the workers

The in-process versions with fake phase cores live in tests/coordinator; these run the real phase cores in
their own processes, so a kill is a real SIGKILL and a restart a new process.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import grpc
import pytest
import yaml

from agentforge.v1 import common_pb2, coordinator_pb2
from shared.config.load import CONFIG_DIR
from shared.errors import IntegrityError, NotFoundError, StorageError
from shared.storage import S3Store, checkpoint_prefix, sha256_bytes
from tests.e2e.harness import APPROVER, DONE, phase_spans, verify_run_artifacts, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.s3]
SUCCEEDED, CANCELLED = common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_CANCELLED
LIVE = (common_pb2.JOB_STATE_QUEUED, common_pb2.JOB_STATE_RUNNING)


def ci_yaml(*edits) -> str:
    """configs/ci.yaml as a complete profile document for CreateRun, with the evaluations cut to a few items
    (no fault test reads a score) and each edit(profile_dict) applied."""
    profile = yaml.safe_load((CONFIG_DIR / "ci.yaml").read_text())
    profile["evaluation"].update(gsm8k_limit=2, multiple_choice_limit=4)
    for edit in edits:
        edit(profile)
    return yaml.safe_dump(profile)


def checkpoint_steps(store, request_id: str) -> list[int]:
    """Steps of the complete checkpoints of a request (the ones a resumed job can find)."""
    return sorted(int(k.rsplit("step-", 1)[1]) for k in store.list_artifacts(checkpoint_prefix(request_id)))


# -- kill -9 ------------------------------------------------------------------------------------------------
@pytest.mark.timeout(900)
def test_a_trainer_killed_after_a_checkpoint_resumes_from_it_and_the_run_completes(cluster, e2e, upstream):
    run_id = e2e.create(config_yaml=ci_yaml(), start_phase="quietstar", inputs=upstream.quietstar_inputs())
    before = e2e.wait_phase(run_id, "quietstar", ("running",), 120)
    request_id = e2e.job("quietstar", before.job_id).request_id
    # two checkpoints, so resuming from the first would show too
    wait_for(lambda: len(checkpoint_steps(e2e.store, request_id)) >= 2, 300, "quietstar's second checkpoint",
             poll_s=0.05)
    assert e2e.job("quietstar", before.job_id).state in LIVE, "the job ended before it could be killed"
    cluster.kill("quietstar", signal.SIGKILL)
    survived = checkpoint_steps(e2e.store, request_id)   # the dead process writes nothing more
    assert survived and not cluster.serving("quietstar")
    # while the worker is down the phase stays running: a lost worker is not a failed job
    time.sleep(2)
    assert e2e.phase(run_id, "quietstar").state == "running" and e2e.run(run_id).state == "running"

    cluster.restart("quietstar")
    run, _ = e2e.drive(run_id, timeout_s=600)
    assert run.state == "succeeded", run.error
    after = next(p for p in run.phases if p.phase == "quietstar")
    assert after.state in DONE and after.attempt == 1
    job = e2e.job("quietstar", after.job_id)   # asked of the new process
    assert job.request_id == request_id and job.state == SUCCEEDED
    # resumed from the newest checkpoint that existed when it was killed: at most one interval lost
    assert job.resumed_from_step == survived[-1] > 0
    noticed = [ev.kind for ev in e2e.events(run_id) if ev.phase == "quietstar" and ev.kind in ("resubmitted", "fenced")]
    assert noticed, "the coordinator never noticed the lost job"
    verify_run_artifacts(e2e, run)
    print(f"\nkill -9 quietstar: checkpoints {survived} survived, resumed from {job.resumed_from_step}, "
          f"coordinator: {noticed}")


@pytest.mark.timeout(600)
def test_the_coordinator_killed_mid_run_picks_the_run_up_after_a_restart(cluster, e2e, upstream):
    run_id = e2e.create(config_yaml=ci_yaml(), start_phase="bitnet", inputs=upstream.bitnet_inputs())
    before = e2e.wait_phase(run_id, "bitnet", ("running",), 120)
    cluster.kill("coordinator", signal.SIGKILL)
    assert not cluster.serving("coordinator")
    # killed mid-job; the worker goes on without its coordinator
    assert e2e.job("bitnet", before.job_id).state in LIVE
    cluster.restart("coordinator")            # same command, same state file
    e2e.reconnect()
    run, _ = e2e.drive(run_id, timeout_s=600)
    assert run.state == "succeeded", run.error
    after = next(p for p in run.phases if p.phase == "bitnet")
    # the same job, not a new one: same id, attempt and fencing token, never resubmitted
    assert (after.job_id, after.attempt, after.fencing_token) == (before.job_id, 1, before.fencing_token)
    events = e2e.events(run_id)
    assert [ev.kind for ev in events].count("phase_started") == 1
    assert not {"resubmitted", "fenced"} & {ev.kind for ev in events}
    assert [ev.seq for ev in events] == list(range(1, len(events) + 1))   # the event log survived whole
    verify_run_artifacts(e2e, run)


# -- S3 -----------------------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_s3_restarted_during_an_upload_is_retried_and_nothing_corrupt_is_ever_listed(seaweed, caplog):
    """A multipart upload whose server is stopped after its first part and started again: the services'
    default retry policy carries the upload over the restart; a reader listing and verifying the bucket the
    whole time never sees an artifact whose files do not match its manifest."""
    bucket = f"e2e-{os.urandom(6).hex()}"
    store = S3Store(seaweed.endpoint, seaweed.access_key, seaweed.secret_key, bucket, part_size=5 << 20)
    reader = S3Store(seaweed.endpoint, seaweed.access_key, seaweed.secret_key, bucket, create_bucket=False)
    with store.open_artifact("runs/r/p/small", kind="other", name="small") as w:
        w.add_json("a.json", {"before": "the restart"})
    payload = os.urandom(17 << 20)            # four parts of 5 MiB
    restarted = threading.Event()
    restarter: list[threading.Thread] = []
    real_upload_part = store.client._upload_part

    def upload_part(*args):
        etag = real_upload_part(*args)
        if not restarted.is_set():            # after the first part: the server goes away and comes back
            restarted.set()
            seaweed.stop()
            restarter.append(threading.Thread(target=seaweed.start))
            restarter[0].start()
        return etag

    stop = threading.Event()
    listed, corrupt = set(), []

    def watch():
        while not stop.is_set():
            try:
                for key in reader.list_artifacts("runs/"):
                    try:
                        reader.verify(reader.ref_for(key))
                        listed.add(key)
                    except (IntegrityError, NotFoundError) as exc:
                        corrupt.append(f"{key}: {exc}")
            except StorageError:
                pass                          # the server is down: nothing is visible, nothing is wrong
            stop.wait(0.05)

    store.client._upload_part = upload_part
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with caplog.at_level(logging.WARNING, logger="shared.storage.s3"):
            with store.open_artifact("runs/r/p/big", kind="checkpoint", name="big", retention="intermediate") as w:
                w.add_bytes("blob.bin", payload)
    finally:
        stop.set()
        watcher.join()
        for t in restarter:
            t.join()
        if seaweed.proc is None:
            seaweed.start()
    assert restarted.is_set() and "retrying" in caplog.text
    assert corrupt == []
    assert "runs/r/p/small" in listed
    ref = store.ref_for("runs/r/p/big")
    store.verify(ref)
    assert sha256_bytes(store.read_file_bytes(ref, "blob.bin")) == sha256_bytes(payload)
    assert store.list_artifacts("runs/") == ["runs/r/p/big", "runs/r/p/small"]
    assert store.list_multipart_uploads() == []


# -- gates --------------------------------------------------------------------------------------------------
@pytest.mark.timeout(600)
def test_a_failing_gate_blocks_the_run_with_its_reason_and_approve_gate_continues_it(e2e, upstream):
    def impossible_compression(profile):
        gate = next(g for g in profile["gates"]["bitnet"] if g["metric"] == "bitnet/compression_ratio")
        gate["threshold"] = 1000.0

    run_id = e2e.create(config_yaml=ci_yaml(impossible_compression), start_phase="bitnet",
                        inputs=upstream.bitnet_inputs())
    run, approvals = e2e.drive(run_id, timeout_s=600, approve=False)
    assert run.state == "blocked" and approvals == []
    ph = next(p for p in run.phases if p.phase == "bitnet")
    assert ph.state == "gate_failed"
    gate = next(g for g in ph.gates if g.metric == "bitnet/compression_ratio")
    assert gate.measured and not gate.passed and 0 < gate.value < 1000 and gate.may_approve
    assert run.error.startswith("gate of bitnet failed: ")
    assert f"bitnet/compression_ratio = {gate.value:.6g}, needs >= 1000: failed" in run.error
    events = e2e.events(run_id, timeout_s=3)
    assert [ev.message for ev in events if ev.kind == "blocked"] == [run.error]
    # blocked: nothing of the phase is published, and the run stays blocked
    assert e2e.store.list_artifacts(f"runs/{run_id}/") == []
    time.sleep(1)
    assert e2e.run(run_id).state == "blocked"
    # an approval needs who and why
    for who, why, field in (("", "because", "who"), (APPROVER, " ", "why")):
        with pytest.raises(grpc.RpcError) as err:
            e2e.stub.ApproveGate(coordinator_pb2.ApproveGateRequest(run_id=run_id, phase="bitnet", who=who, why=why),
                                 timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()

    approvals = e2e.approve_failed_gates(e2e.run(run_id))
    assert [a.phase for a in approvals] == ["bitnet"] and "bitnet/compression_ratio" in approvals[0].metrics
    run, more = e2e.drive(run_id, timeout_s=120)
    assert run.state == "succeeded" and more == []
    assert next(p for p in run.phases if p.phase == "bitnet").state == "approved"
    (message,) = [ev.message for ev in e2e.events(run_id) if ev.kind == "approved"]
    assert APPROVER in message and "bitnet/compression_ratio" in message
    assert verify_run_artifacts(e2e, run) == [f"runs/{run_id}/bitnet/model"]


# -- cancel -------------------------------------------------------------------------------------------------
@pytest.mark.timeout(600)
def test_cancel_run_stops_every_worker_and_frees_the_lease_once_the_job_stopped(cluster, e2e, upstream):
    def longer_reasoning_data(profile):   # so reasoning data is still being generated beside cognate
        profile["phases"]["reasoning_data"]["target_examples"] = 2000

    run_id = e2e.create(config_yaml=ci_yaml(longer_reasoning_data))
    both = wait_for(lambda: (r := e2e.run(run_id)) and all(
        p.state == "running" for p in r.phases if p.phase in ("cognate", "reasoning_data")) and r,
        180, "cognate and reasoning_data to run side by side", poll_s=0.1)
    running = {p.phase: p for p in both.phases if p.state == "running"}
    assert set(running) == {"cognate", "reasoning_data"}
    assert all(e2e.job(ph, p.job_id).state in LIVE for ph, p in running.items())
    leased = running["cognate"]
    assert leased.fencing_token > 0

    cancelled_at = time.monotonic()
    run = e2e.stub.CancelRun(coordinator_pb2.RunRef(run_id=run_id), timeout=30)
    assert run.state == "cancelled"
    assert {p.phase: p.state for p in run.phases} == {
        "datasets": "succeeded", "cognate": "cancelled", "evomerge": "cancelled", "reasoning_data": "cancelled",
        "quietstar": "cancelled", "bitnet": "cancelled"}
    # the next run asks for the lease while the cancelled cognate job may still be stopping
    second = e2e.create(config_yaml=ci_yaml(), start_phase="bitnet", inputs=upstream.bitnet_inputs())
    # every running job stops on its own worker, and what it staged is gone (nothing ever published)
    stopped = {}
    for phase, p in running.items():
        wait_for(lambda: e2e.job(phase, p.job_id).state == CANCELLED, 120, f"{phase} job {p.job_id} to stop")
        stopped[phase] = time.monotonic() - cancelled_at
        assert e2e.store.list_artifacts(f"jobs/{p.job_id}/") == []
        assert e2e.store.list_artifacts(f"runs/{run_id}/{phase}/") == []
    # the lease passes on: the next run's lease-holding phase starts, with a newer fencing token
    took = e2e.wait_phase(second, "bitnet", ("running",), 60)
    assert took.fencing_token > leased.fencing_token
    run2 = e2e.stub.CancelRun(coordinator_pb2.RunRef(run_id=second), timeout=30)
    assert run2.state == "cancelled"
    # no reasoning-data unit of the cancelled run is worked on any more, or handed to a replica asking for work
    units = coordinator_pb2.ListUnitsRequest(run_id=run_id, phase="reasoning_data")
    done = sum(u.state == "done" for u in e2e.stub.ListUnits(units, timeout=30).units)
    probe = e2e.stub.LeaseUnit(coordinator_pb2.LeaseUnitRequest(phase="reasoning_data", worker="e2e-probe"), timeout=30)
    assert not probe.granted or probe.run_id != run_id
    time.sleep(2)
    assert sum(u.state == "done" for u in e2e.stub.ListUnits(units, timeout=30).units) == done

    wait_for(lambda: e2e.job("bitnet", took.job_id).state in (CANCELLED, SUCCEEDED), 120, "bitnet to stop")
    # the hand-over on the workers' clocks (one host): the next lease holder's first event comes after the
    # cancelled cognate job's last (the coordinator keeps the lease until the worker reports the job stopped)
    cognate_end = max(e.time.ToNanoseconds() for e in e2e.job_events("cognate", leased.job_id)) / 1e9
    bitnet_start = min(e.time.ToNanoseconds() for e in e2e.job_events("bitnet", took.job_id)) / 1e9
    assert bitnet_start > cognate_end, (f"the next lease holder started {cognate_end - bitnet_start:.2f} s before "
                                        f"the cancelled job stopped")
    print("\ncancel: workers stopped after " + ", ".join(f"{k} {v:.1f} s" for k, v in stopped.items())
          + f"; next lease holder started {bitnet_start - cognate_end:+.2f} s after the cancelled one stopped")


# -- the lease ----------------------------------------------------------------------------------------------
@pytest.mark.timeout(900)
def test_two_runs_at_once_never_hold_the_accelerator_together(e2e, upstream):
    """Run A starts at bitnet and run B at quietstar: different services, both lease-holding, so only the lease
    can keep them apart. Their jobs' spans, read from the workers' own event logs, must not overlap."""
    runs = [e2e.create(config_yaml=ci_yaml(), start_phase="bitnet", inputs=upstream.bitnet_inputs()),
            e2e.create(config_yaml=ci_yaml(), start_phase="quietstar", inputs=upstream.quietstar_inputs())]
    finished = {}
    deadline = time.monotonic() + 800
    while len(finished) < len(runs):
        for run_id in runs:
            if run_id in finished:
                continue
            run = e2e.run(run_id)
            if run.state == "blocked":
                e2e.approve_failed_gates(run)
            elif run.state in ("succeeded", "failed", "cancelled"):
                finished[run_id] = run
        assert time.monotonic() < deadline, f"runs not finished: {set(runs) - set(finished)}"
        time.sleep(0.5)
    assert all(r.state == "succeeded" for r in finished.values()), {k: r.error for k, r in finished.items()}

    spans, tokens, leased = [], [], set()
    for run_id, run in finished.items():
        for p in run.phases:
            if not p.needs_accelerator or p.state == "skipped":
                continue
            leased.add(p.phase)
            times = [e.time.ToNanoseconds() / 1e9 for e in e2e.job_events(p.phase, p.job_id)]
            spans.append((min(times), max(times), f"{run_id}/{p.phase}"))
            tokens.append(p.fencing_token)
    assert len(spans) == 3 and len(set(tokens)) == 3
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        assert end <= start, f"{a} (until {end:.2f}) and {b} (from {start:.2f}) held the accelerator together"
    # the lease was really contended: a phase waited for it
    waited = [ev for run_id in runs for ev in e2e.events(run_id) if ev.kind == "waiting"]
    assert waited, "no phase ever waited for the lease; the test did not exercise it"
    # and the coordinator's own record agrees: its phase spans do not overlap either
    coord = sorted(s for run_id in runs for phase, ss in phase_spans(e2e.events(run_id)).items()
                   if phase in leased for s in ss)
    assert all(a[1] <= b[0] for a, b in zip(coord, coord[1:])), coord
