"""Who gets the accelerator lease next: the oldest waiting run first, and never while a cancelled job is still
stopping (DESIGN.md §4, §8). A fake cognate job `linger`s after its cancel, like a trainer in a long GPU step."""

import threading
import time

from agentforge.v1 import coordinator_pb2
from tests.coordinator.cluster import Cluster


def cognate_waits(cluster, *run_ids):
    cluster.wait(lambda: all(cluster.phase(r, "cognate").state == "waiting" for r in run_ids),
                 what=f"cognate of {run_ids} waiting for the lease")


def holder_and_waiter(cluster):
    """A first run whose cognate job holds the lease (held open, lingering after a cancel until told) and a
    second run whose cognate waits for it: (the cognate fake's behaviour, first run id, second run id)."""
    b = cluster.behaviour["cognate"]
    b.hold, b.linger = threading.Event(), threading.Event()
    first = cluster.create()
    cluster.wait(b.started.is_set, what="cognate start")
    second = cluster.create()
    cognate_waits(cluster, second)
    return b, first, second


def cancel(cluster, run_id):
    return cluster.stub.CancelRun(coordinator_pb2.RunRef(run_id=run_id), timeout=10)


def call_of(cluster, run_id):
    """The fake cognate job's record of its run (first attempt)."""
    return next(c for c in cluster.behaviour["cognate"].calls if c["request_id"].startswith(run_id))


def test_the_oldest_waiting_run_gets_a_freed_lease_first(cluster):
    b = cluster.behaviour["cognate"]
    b.hold = threading.Event()
    holder = cluster.create()
    cluster.wait(b.started.is_set, what="cognate start")
    older = cluster.create()
    newer = cluster.create()
    cognate_waits(cluster, older, newer)
    b.hold.set()
    for run_id in (holder, older, newer):
        cluster.wait_run(run_id)
    tokens = {r: cluster.phase(r, "cognate").fencing_token for r in (holder, older, newer)}
    assert tokens[holder] < tokens[older] < tokens[newer], "a newer run took the lease ahead of an older one"
    assert call_of(cluster, older)["end"] <= call_of(cluster, newer)["start"]


def test_a_cancelled_job_keeps_the_lease_until_its_worker_reports_it_stopped(cluster):
    b, first, second = holder_and_waiter(cluster)

    run = cancel(cluster, first)
    # the user hears at once...
    assert run.state == "cancelled"
    assert next(p for p in run.phases if p.phase == "cognate").state == "cancelled"
    # ...but the job is still on the accelerator, so nobody else gets it
    assert b.lingering.wait(10), "the cognate job never saw its cancel"
    time.sleep(0.3)   # ~15 coordinator ticks
    assert cluster.phase(second, "cognate").state == "waiting"
    assert cluster.coordinator.leases.free_slots() == 0
    assert len(b.calls) == 1

    b.hold.set()      # lets the next holder through; the cancelled job waits for `linger` only
    b.linger.set()
    cluster.wait_run(second)
    stopped, started = call_of(cluster, first)["stopped"], call_of(cluster, second)["start"]
    assert started > stopped, f"the next holder started {stopped - started:.3f} s before the cancelled job stopped"
    job = cluster.workers["cognate"][1].get(cluster.phase(first, "cognate").job_id)
    assert job.state.value == "cancelled"
    assert cluster.phase(second, "cognate").fencing_token > cluster.phase(first, "cognate").fencing_token
    assert cluster.coordinator.leases.free_slots() == 1
    # nothing was appended after the cancelled run's last event
    events = list(cluster.stub.WatchRun(coordinator_pb2.WatchRunRequest(run_id=first), timeout=10))
    assert events[-1].kind == "run_finished" and events[-1].state == "cancelled"


def test_a_coordinator_restarted_mid_cancel_releases_the_lease_once_the_job_stops(cluster):
    b, first, second = holder_and_waiter(cluster)
    cancel(cluster, first)
    assert b.lingering.wait(10)
    cluster.kill_coordinator()
    cluster.start_coordinator()
    time.sleep(0.3)
    assert cluster.coordinator.leases.free_slots() == 0, "the restarted coordinator forgot the cancelled job's lease"
    assert cluster.phase(second, "cognate").state == "waiting"
    b.hold.set()
    b.linger.set()
    cluster.wait_run(second)
    assert call_of(cluster, second)["start"] > call_of(cluster, first)["stopped"]
    assert cluster.coordinator.leases.free_slots() == 1


def test_a_cancelled_job_whose_worker_is_gone_loses_the_lease_after_its_ttl(tmp_path):
    cluster = Cluster(tmp_path, lease_ttl_s=0.5)
    b = cluster.behaviour["cognate"]
    b.hold, b.linger = threading.Event(), threading.Event()
    try:
        first = cluster.create()
        cluster.wait(b.started.is_set, what="cognate start")
        second = cluster.create()
        cognate_waits(cluster, second)
        cancel(cluster, first)
        assert b.lingering.wait(10)
        cluster.kill_worker("cognate")       # it never answers again: only the TTL can free the accelerator
        cluster.wait(lambda: cluster.state.get_phase(first, "cognate").lease_id == "", timeout=10,
                     what="the cancelled job's lease to expire")
        b.hold.set()
        cluster.start_worker("cognate")
        cluster.wait_run(second)
        assert cluster.phase(second, "cognate").fencing_token > cluster.phase(first, "cognate").fencing_token
    finally:
        b.linger.set()
        cluster.close()


def test_a_phase_retried_after_cancel_waits_for_its_cancelled_job_to_stop(cluster):
    b = cluster.behaviour["cognate"]
    b.hold, b.linger = threading.Event(), threading.Event()
    run_id = cluster.create()
    cluster.wait(b.started.is_set, what="cognate start")
    cancel(cluster, run_id)
    assert b.lingering.wait(10)
    cluster.stub.RetryPhase(coordinator_pb2.PhaseRef(run_id=run_id, phase="cognate"), timeout=10)
    time.sleep(0.3)
    assert cluster.phase(run_id, "cognate").state == "waiting"
    assert len(b.calls) == 1, "the retry started beside its own cancelled job"
    b.hold.set()
    b.linger.set()
    cluster.wait_run(run_id)
    old, new = b.calls
    assert new["request_id"].endswith(".a2") and new["start"] > old["stopped"]
