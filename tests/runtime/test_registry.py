"""The phase-worker runtime: idempotent submit, events, cancel, resume from checkpoint, error mapping."""

import dataclasses
import threading

import pytest

from shared.config import load_profile
from shared.errors import AlreadyExistsError, FailedPreconditionError, InvalidSpecError, NotFoundError, UnavailablePhaseError
from shared.runtime import JobRegistry, JobRequest, JobState, get_phase
from shared.storage.local import LocalStore
from tests.fakes import CountingRunner, reference_state

SPEC = load_profile("ci").phases.datasets


def registry_with(tmp_path, runner, store=None):
    definition = dataclasses.replace(get_phase("dataset"), runner_factory=lambda: runner)
    return JobRegistry(definition, store or LocalStore(tmp_path / "store"))


def wait(job, timeout=30):
    assert job.done.wait(timeout), f"job {job.job_id} did not finish"
    return job


def test_job_runs_and_reports_artifacts_metrics_and_ordered_events(tmp_path):
    reg = registry_with(tmp_path, CountingRunner(steps=6))
    job = wait(reg.submit(JobRequest(request_id="r1", phase="datasets"), SPEC))
    assert job.state is JobState.SUCCEEDED
    assert job.metrics["final/value"] == pytest.approx(float(reference_state(6)[0]))
    assert job.metrics["train/loss"] == pytest.approx(1 / 6)
    (ref,) = job.artifacts
    assert "jobs/" in ref.uri and "/t0/result" in ref.uri  # job-scoped, not published
    tensors, _ = reg.store.load_tensors(ref, "state.safetensors")
    assert tensors["state"].equal(reference_state(6))
    events = list(reg.watch(job.job_id))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].state is JobState.QUEUED and events[-1].state is JobState.SUCCEEDED
    assert [e.step for e in events if e.stage == "count"] == [1, 2, 3, 4, 5, 6]
    assert list(reg.watch(job.job_id, after_seq=len(events) - 1))[0].seq == len(events)
    reg.shutdown()


def test_submit_is_idempotent_per_request_id(tmp_path):
    gate = threading.Event()
    reg = registry_with(tmp_path, CountingRunner(steps=2, gate=gate))
    a = reg.submit(JobRequest(request_id="same", phase="datasets"), SPEC)
    b = reg.submit(JobRequest(request_id="same", phase="datasets"), SPEC)
    assert a is b and len(reg.jobs()) == 1
    other = SPEC.model_copy(update={"seq_len": SPEC.seq_len + 1})
    with pytest.raises(AlreadyExistsError, match="request_id 'same'"):
        reg.submit(JobRequest(request_id="same", phase="datasets"), other)
    gate.set()
    wait(a)
    reg.shutdown()


def test_bad_requests_get_clear_errors(tmp_path):
    reg = registry_with(tmp_path, CountingRunner())
    with pytest.raises(InvalidSpecError, match="context.request_id"):
        reg.submit(JobRequest(request_id="", phase="datasets"), SPEC)
    with pytest.raises(InvalidSpecError, match="context.phase"):
        reg.submit(JobRequest(request_id="x", phase="cognate"), SPEC)
    with pytest.raises(NotFoundError, match="no job 'nope'"):
        reg.get("nope")
    with pytest.raises(InvalidSpecError, match=r"spec\.seq_len"):
        reg.parse_spec({**SPEC.model_dump(mode="json"), "seq_len": 0})
    reg.shutdown()


def test_cancel_stops_a_running_job_and_deletes_its_staged_outputs(tmp_path):
    gate = threading.Event()
    runner = CountingRunner(steps=5, gate=gate)
    reg = registry_with(tmp_path, runner)
    job = reg.submit(JobRequest(request_id="c", phase="datasets"), SPEC)
    assert runner.started.wait(10)
    reg.cancel(job.job_id)
    wait(job)
    assert job.state is JobState.CANCELLED
    assert reg.store.list_artifacts(f"jobs/{job.job_id}/") == []
    reg.shutdown()


def test_a_crashed_job_resumes_from_its_latest_checkpoint_and_ends_identical(tmp_path):
    store = LocalStore(tmp_path / "store")
    crashing = registry_with(tmp_path, CountingRunner(steps=10, checkpoint_every=3, crash_at=8), store)
    job = wait(crashing.submit(JobRequest(request_id="resume-me", phase="datasets"), SPEC))
    assert job.state is JobState.FAILED and "internal error" in job.error and job.error_id
    assert "Traceback" not in job.error
    crashing.shutdown()

    # A new worker process (new registry) gets the same request_id: it continues from step 6.
    fresh = registry_with(tmp_path, CountingRunner(steps=10, checkpoint_every=3), store)
    job2 = wait(fresh.submit(JobRequest(request_id="resume-me", phase="datasets"), SPEC))
    assert job2.job_id == job.job_id
    assert job2.state is JobState.SUCCEEDED and job2.resumed_from_step == 6
    tensors, _ = store.load_tensors(job2.artifacts[0], "state.safetensors")
    assert tensors["state"].equal(reference_state(10))
    # at most `keep` checkpoints remain, the newest last
    steps = [k.rsplit("-", 1)[-1] for k in store.list_artifacts("checkpoints/resume-me/")]
    assert steps == ["0000000006", "0000000009"]
    fresh.shutdown()


def test_a_checkpoint_made_for_another_spec_is_refused(tmp_path):
    store = LocalStore(tmp_path / "store")
    first = registry_with(tmp_path, CountingRunner(steps=4, checkpoint_every=2, crash_at=4), store)
    wait(first.submit(JobRequest(request_id="foreign", phase="datasets"), SPEC))
    first.shutdown()
    other = SPEC.model_copy(update={"seq_len": SPEC.seq_len * 2})
    second = registry_with(tmp_path, CountingRunner(steps=4, checkpoint_every=2), store)
    job = wait(second.submit(JobRequest(request_id="foreign", phase="datasets"), other))
    assert job.state is JobState.FAILED and "refusing to resume" in job.error
    assert isinstance(FailedPreconditionError("x"), Exception)
    second.shutdown()


def test_a_phase_without_runner_refuses_submit_and_says_which_issue(tmp_path):
    # every shipped phase has a runner now; a definition without one is what a phase looks like before its
    # issue lands
    reg = JobRegistry(dataclasses.replace(get_phase("bitnet"), runner_factory=None), LocalStore(tmp_path / "s"))
    spec = load_profile("ci").phases.bitnet
    warnings, spec_hash = reg.validate(spec)
    assert "issue #10" in warnings[0] and len(spec_hash) == 64
    with pytest.raises(UnavailablePhaseError, match="issue #10"):
        reg.submit(JobRequest(request_id="x", phase="bitnet"), spec)
    assert reg.jobs() == []
    reg.shutdown()


def test_each_job_runs_on_a_thread_of_its_own_that_ends_with_it(tmp_path):
    """A thread that ran torch keeps an OpenMP team while it lives, and idle teams slow every later torch
    call of the process (registry module doc): no job may run on a thread that outlives it, nor share one."""
    seen = []

    class Recording(CountingRunner):
        def run(self, ctx):
            seen.append(threading.current_thread())
            return super().run(ctx)

    reg = registry_with(tmp_path, Recording(steps=2))
    first = wait(reg.submit(JobRequest(request_id="r1", phase="datasets"), SPEC))
    second = wait(reg.submit(JobRequest(request_id="r2", phase="datasets"), SPEC))
    assert first.state is second.state is JobState.SUCCEEDED
    a, b = seen
    a.join(5)
    b.join(5)
    assert a is not b and not a.is_alive() and not b.is_alive()
    assert threading.main_thread() not in seen
    reg.shutdown()
