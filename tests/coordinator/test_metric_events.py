"""The coordinator keeps every metric-carrying progress event of every job as a run event of kind "metrics",
in order and exactly once: in process and over gRPC, across pages, across a coordinator restart and across
a worker restart (whose resubmitted job starts a new event log)."""

import dataclasses
import time

from agentforge.v1 import coordinator_pb2
from services.coordinator.core.engine import Coordinator
from services.coordinator.core.executors import InProcessExecutor
from services.coordinator.core.state import StateStore
from shared.config import load_profile
from shared.runtime import events as events_mod
from shared.runtime.phase import discover_phases
from shared.runtime.registry import JobRegistry
from shared.storage import LocalStore
from tests.coordinator.cluster import Behaviour, Cluster, FakePhaseRunner


def stored(state, run_id, phase):
    return [e for e in state.events(run_id) if e.kind == "metrics" and e.phase == phase]


def steps_of(events):
    return [e.payload["metrics"][f"{e.phase}/fake_step"] for e in events]


def test_in_process_every_metric_event_is_stored_once_in_order_across_pages(tmp_path, monkeypatch):
    monkeypatch.setattr(events_mod, "METRIC_EVENTS_PAGE", 4)
    store = LocalStore(tmp_path / "store")
    behaviour = {n: Behaviour(steps=11, step_metrics=True) for n in discover_phases()}
    defs = {n: dataclasses.replace(d, runner_factory=lambda n=n: FakePhaseRunner(n, behaviour[n]))
            for n, d in discover_phases().items()}
    registries = {n: JobRegistry(d, store) for n, d in defs.items()}
    c = Coordinator(StateStore(tmp_path / "s.sqlite"), store, defs,
                    {n: InProcessExecutor(r) for n, r in registries.items()})
    try:
        run = c.create_run(load_profile("ci"))
        assert c.run_until_done(run.run_id, poll_interval_s=0.01, timeout_s=60).state == "succeeded"
        for phase in defs:
            events = stored(c.state, run.run_id, phase)
            assert steps_of(events) == list(range(1, 12)), phase
            job = registries[phase].get(c.state.get_phase(run.run_id, phase).job_id)
            assert [e.payload["seq"] for e in events] == [e.seq for e in job.events.metric_events(limit=100)[0]]
            assert {e.payload["event_log_id"] for e in events} == {job.events.log_id}
            assert [e.payload["step"] for e in events] == list(range(1, 12))
            # stored before the phase's outcome: a report can read them as soon as the phase finished
            finished = next(e for e in c.state.events(run.run_id) if e.kind == "phase_finished" and e.phase == phase)
            assert events[-1].seq < finished.seq
    finally:
        for r in registries.values():
            r.shutdown()


def test_a_non_finite_value_is_left_out_and_named(tmp_path):
    store = LocalStore(tmp_path / "store")

    class NaNRunner(FakePhaseRunner):
        def run(self, ctx):
            ctx.progress("diverging", step=1, metrics={"cognate/x": float("nan"), "cognate/y": 2.0})
            return super().run(ctx)

    behaviour = {n: Behaviour() for n in discover_phases()}
    defs = {n: dataclasses.replace(d, runner_factory=lambda n=n: (NaNRunner if n == "cognate" else FakePhaseRunner)(
        n, behaviour[n])) for n, d in discover_phases().items()}
    registries = {n: JobRegistry(d, store) for n, d in defs.items()}
    c = Coordinator(StateStore(tmp_path / "s.sqlite"), store, defs,
                    {n: InProcessExecutor(r) for n, r in registries.items()})
    try:
        run = c.create_run(load_profile("ci"))
        assert c.run_until_done(run.run_id, poll_interval_s=0.01, timeout_s=60).state == "succeeded"
        (event,) = stored(c.state, run.run_id, "cognate")
        assert event.payload["metrics"] == {"cognate/y": 2.0} and event.payload["non_finite"] == ["cognate/x"]
    finally:
        for r in registries.values():
            r.shutdown()


def test_over_grpc_the_events_reach_watch_run_with_their_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(events_mod, "METRIC_EVENTS_PAGE", 3)
    cluster = Cluster(tmp_path)
    try:
        for b in cluster.behaviour.values():
            b.steps, b.step_metrics = 8, True
        run_id = cluster.create()
        cluster.wait_run(run_id)
        for phase in cluster.defs:
            assert steps_of(stored(cluster.state, run_id, phase)) == list(range(1, 9)), phase
        watched = [e for e in cluster.stub.WatchRun(coordinator_pb2.WatchRunRequest(run_id=run_id), timeout=10)
                   if e.kind == "metrics" and e.phase == "bitnet"]
        assert [(m.name, m.value, m.step) for e in watched for m in e.metrics] == [
            ("bitnet/fake_step", float(s), s) for s in range(1, 9)]
        assert [e.message for e in watched] == ["work"] * 8
    finally:
        cluster.close()


def test_a_restarted_coordinator_neither_repeats_nor_skips_an_event(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        b = cluster.behaviour["cognate"]
        b.steps, b.pause_after, b.step_metrics = 9, 4, True
        run_id = cluster.create()
        assert b.paused.wait(30), "cognate never reached step 4"
        cluster.wait(lambda: len(stored(cluster.state, run_id, "cognate")) == 4, what="4 stored events")
        cluster.kill_coordinator()
        b.pause.set()                 # the job goes on while no coordinator polls it
        time.sleep(0.2)
        cluster.start_coordinator()   # a new Coordinator: its cursor comes from the stored events
        cluster.wait_run(run_id)
        assert steps_of(stored(cluster.state, run_id, "cognate")) == list(range(1, 10))
        assert len(b.calls) == 1
    finally:
        cluster.close()


def test_a_restarted_worker_s_resumed_job_is_collected_from_its_new_log(tmp_path):
    cluster = Cluster(tmp_path, lease_ttl_s=30.0)
    try:
        b = cluster.behaviour["evomerge"]
        b.steps, b.pause_after, b.step_metrics = 6, 3, True
        run_id = cluster.create()
        assert b.paused.wait(30), "evomerge never reached step 3"
        cluster.wait(lambda: len(stored(cluster.state, run_id, "evomerge")) == 3, what="3 stored events")
        cluster.kill_worker("evomerge")          # dies after its step-3 checkpoint
        b.pause_after = 0
        cluster.start_worker("evomerge")
        cluster.wait_run(run_id)
        events = stored(cluster.state, run_id, "evomerge")
        # the resumed job (from the step-3 checkpoint) reports steps 4..6 in a new log whose seqs restart
        assert steps_of(events) == [1, 2, 3, 4, 5, 6]
        logs = [e.payload["event_log_id"] for e in events]
        assert logs[0] == logs[2] != logs[3] == logs[5]
        assert events[3].payload["seq"] < events[2].payload["seq"]
    finally:
        cluster.close()
