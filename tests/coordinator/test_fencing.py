"""A lease holder whose lease expired is fenced: its finished output is never published, and the phase
runs again under a newer token (in-process executors and a fake monotonic clock, so no sleeps)."""

import dataclasses
import threading
import time

from services.coordinator.core.engine import Coordinator
from services.coordinator.core.executors import InProcessExecutor
from services.coordinator.core.state import StateStore
from shared.config import load_profile
from shared.runtime.phase import discover_phases
from shared.runtime.registry import JobRegistry
from shared.storage import LocalStore
from tests.coordinator.clock import FakeClock
from tests.coordinator.cluster import Behaviour, FakePhaseRunner


def test_an_expired_holder_that_finishes_late_is_never_published(tmp_path):
    store = LocalStore(tmp_path / "store")
    defs = {n: dataclasses.replace(d, runner_factory=lambda n=n: FakePhaseRunner(n, behaviour[n]))
            for n, d in discover_phases().items()}
    behaviour = {n: Behaviour() for n in defs}
    hold = threading.Event()
    behaviour["cognate"].hold = hold
    registries = {n: JobRegistry(d, store) for n, d in defs.items()}
    clock = FakeClock()
    c = Coordinator(StateStore(tmp_path / "s.sqlite"), store, defs,
                    {n: InProcessExecutor(r) for n, r in registries.items()}, lease_ttl_s=10.0, clock=clock)
    run = c.create_run(load_profile("ci"))

    def tick_until(pred, what):
        for _ in range(500):
            c.tick()
            if pred():
                return
            time.sleep(0.01)
        raise AssertionError(what)

    tick_until(lambda: behaviour["cognate"].started.is_set(), "cognate never started")
    old = c.state.get_phase(run.run_id, "cognate")
    clock.advance(11.0)              # the coordinator heard nothing for longer than the TTL…
    hold.set()                       # …and then the stale holder finishes its job anyway
    registries["cognate"].get(old.job_id).done.wait(10)
    tick_until(lambda: c.state.get_run(run.run_id).state == "succeeded", "run never finished")

    new = c.state.get_phase(run.run_id, "cognate")
    assert new.fencing_token > old.fencing_token and new.job_id != old.job_id
    published = c.store.read_manifest(f"runs/{run.run_id}/cognate/cognate_out")
    assert published.producer.fencing_token == new.fencing_token
    assert [k for k in store.list_artifacts(f"jobs/{old.job_id}/")] == []  # the fenced job's output is gone
    kinds = [e.kind for e in c.state.events(run.run_id)]
    assert "fenced" in kinds
    for r in registries.values():
        r.shutdown()
