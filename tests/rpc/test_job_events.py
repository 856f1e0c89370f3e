"""Get's metric events (JobRef.events_after_seq → JobStatus.events): the progress events that carry metrics,
after a seq, oldest first, one page at a time, the same in process (InProcessExecutor) and over gRPC
(GrpcExecutor against a real phase server), so a poller that asks again after the last seq it got collects
every one exactly once."""

import dataclasses

import grpc
import pytest

from agentforge.v1 import job_pb2
from services.coordinator.core.executors import InProcessExecutor
from services.coordinator.remote import GrpcExecutor
from shared.config import load_profile
from shared.rpc.auth import with_token
from shared.rpc.serve import start_phase_server
from shared.runtime import JobRegistry, JobRequest, JobState, get_phase
from shared.runtime import events as events_mod
from shared.storage import LocalStore
from tests.fakes import CountingRunner

TOKEN = "job-events-token-0123456789"
CI = load_profile("ci")
STEPS = 7


class Chatty(CountingRunner):
    """CountingRunner's steps (each with train/loss) with a progress event without metrics between them."""

    def run(self, ctx):
        ctx.progress("warming up", fraction=0.0)
        return super().run(ctx)


def definition():
    return dataclasses.replace(get_phase("datasets"), runner_factory=lambda: Chatty(steps=STEPS, checkpoint_every=100))


@pytest.fixture(params=["in_process", "grpc"])
def executor(request, tmp_path):
    """(an executor for the datasets phase, its registry) in both transports; the job is submitted and done."""
    if request.param == "in_process":
        registry = JobRegistry(definition(), LocalStore(tmp_path / "store"))
        ex, server = InProcessExecutor(registry), None
    else:
        server, registry = start_phase_server(definition(), store_uri=str(tmp_path / "store"),
                                              env={"AGENTFORGE_TOKEN": TOKEN})
        ex = GrpcExecutor(definition(), with_token(grpc.insecure_channel(server.address), TOKEN), timeout_s=10)
    view = ex.submit(JobRequest(request_id="r1", phase="datasets"), CI.phases.datasets)
    assert registry.get(view.job_id).done.wait(30)
    yield ex, registry, view.job_id
    registry.shutdown()
    if server is not None:
        server.stop(None)


def collect(ex, job_id, after=0):
    """What a poller gets asking page after page from `after`: (events, number of Gets)."""
    got, gets = [], 0
    while True:
        view = ex.get(job_id, events_after_seq=after)
        gets += 1
        got.extend(view.events)
        if view.events:
            after = view.events[-1].seq
        if not view.more_events:
            return got, gets, view


def test_get_returns_the_metric_events_in_order_after_a_seq(executor):
    ex, registry, job_id = executor
    job = registry.get(job_id)
    assert job.state is JobState.SUCCEEDED
    all_events = list(registry.watch(job_id))
    with_metrics = [e for e in all_events if e.metrics and e.state is JobState.RUNNING]
    assert len(with_metrics) == STEPS and len(all_events) > STEPS + 2   # queued, started, warm-up, final
    got, gets, view = collect(ex, job_id)
    assert gets == 1 and not view.more_events
    assert [e.seq for e in got] == [e.seq for e in with_metrics]
    assert [e.step for e in got] == list(range(1, STEPS + 1))
    assert [e.metrics for e in got] == [{"train/loss": pytest.approx(1.0 / t)} for t in range(1, STEPS + 1)]
    assert all(e.stage == "count" and e.time > 0 for e in got)
    # the terminal event carries the job's final metrics, but it is not a progress event
    assert all_events[-1].metrics and all_events[-1].seq not in {e.seq for e in got}
    # after a seq: only the later ones; after the last: none
    middle = got[2].seq
    assert [e.seq for e in ex.get(job_id, events_after_seq=middle).events] == [e.seq for e in got[3:]]
    assert ex.get(job_id, events_after_seq=all_events[-1].seq).events == ()
    assert view.event_log_id == job.events.log_id and len(view.event_log_id) == 32


def test_pages_end_with_more_events_and_the_next_page_starts_after_the_last(executor, monkeypatch):
    ex, registry, job_id = executor
    monkeypatch.setattr(events_mod, "METRIC_EVENTS_PAGE", 3)
    first = ex.get(job_id, events_after_seq=0)
    assert [e.step for e in first.events] == [1, 2, 3] and first.more_events
    got, gets, last = collect(ex, job_id)
    assert [e.step for e in got] == list(range(1, STEPS + 1))    # none missed, none twice
    assert gets == 3 and not last.more_events                   # 3 + 3 + 1


def test_submit_and_cancel_answers_carry_no_events(executor):
    ex, registry, job_id = executor
    again = ex.submit(JobRequest(request_id="r1", phase="datasets"), CI.phases.datasets)   # idempotent
    assert again.job_id == job_id and again.events == () and not again.more_events
    assert again.event_log_id == registry.get(job_id).events.log_id


def test_a_resubmitted_job_starts_a_new_event_log(tmp_path):
    """A failed job resubmitted with the same request_id (as after a worker restart) gets the same job id and
    a new log whose seqs start again at 1: the log id tells a poller its cursor no longer applies."""
    registry = JobRegistry(dataclasses.replace(get_phase("datasets"),
                                               runner_factory=lambda: CountingRunner(steps=4, crash_at=3)),
                           LocalStore(tmp_path / "store"))
    ex = InProcessExecutor(registry)
    first = ex.submit(JobRequest(request_id="r", phase="datasets"), CI.phases.datasets)
    registry.get(first.job_id).done.wait(30)
    before = ex.get(first.job_id)
    assert before.state is JobState.FAILED and [e.step for e in before.events] == [1, 2]
    registry.definition = dataclasses.replace(registry.definition, runner_factory=lambda: CountingRunner(steps=4))
    second = ex.submit(JobRequest(request_id="r", phase="datasets"), CI.phases.datasets)
    registry.get(second.job_id).done.wait(30)
    after = ex.get(second.job_id)
    assert second.job_id == first.job_id and after.event_log_id != before.event_log_id
    assert [e.step for e in after.events] == [1, 2, 3, 4] and after.events[0].seq < before.events[-1].seq
    registry.shutdown()


def test_a_negative_seq_is_invalid_argument(tmp_path):
    server, registry = start_phase_server(definition(), store_uri=str(tmp_path / "store"),
                                          env={"AGENTFORGE_TOKEN": TOKEN})
    try:
        from agentforge.v1 import dataset_pb2_grpc

        stub = dataset_pb2_grpc.DatasetServiceStub(with_token(grpc.insecure_channel(server.address), TOKEN))
        with pytest.raises(grpc.RpcError) as err:
            stub.Get(job_pb2.JobRef(job_id="x", events_after_seq=-1), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "events_after_seq" in err.value.details()
    finally:
        registry.shutdown()
        server.stop(None)
