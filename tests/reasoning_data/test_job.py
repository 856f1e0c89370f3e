"""The reasoning_data phase as a job (issue #8): the checklist's artifact from the ci profile, the split by
source problem, scale-out workers with a crashed one, a restarted job that redoes nothing, the HTTP backend
through the job with a shared cost limit, and bad input."""

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from services.coordinator.core.unit_service import PoolUnitService
from services.coordinator.core.work_units import InMemoryUnitJournal, WorkUnitPool
from services.reasoning_data.core import job as job_mod
from services.reasoning_data.core.format import SPECIAL_TOKENS, Example, check_example
from services.reasoning_data.core.job import (
    PHASE,
    ReasoningDataRunner,
    UnitWorker,
    load_reasoning_data,
    plan_units,
    select_items,
    validate_reasoning_data,
)
from services.reasoning_data.core.strategies import is_subquestion, validate_structure
from shared.config import load_profile
from shared.config.schema import ReasoningDataConfig
from shared.errors import InvalidSpecError
from shared.runtime import JobRegistry, JobRequest, JobState, get_phase
from shared.runtime.context import JobContext
from shared.runtime.events import EventLog
from shared.storage import LocalStore
from tests.reasoning_data.fake_openai import FakeOpenAI

CI = load_profile("ci")


@pytest.fixture(scope="module")
def data(tmp_path_factory, datasets_dir):
    """A store holding the ci datasets job's artifacts."""
    store = LocalStore(tmp_path_factory.mktemp("store"))
    reg = JobRegistry(get_phase("datasets"), store)
    spec = CI.phases.datasets.model_copy(update={"mirror_dir": str(datasets_dir)})
    dj = reg.submit(JobRequest(request_id="d", phase="datasets", seed=1), spec)
    assert dj.done.wait(300) and dj.state is JobState.SUCCEEDED, dj.error
    reg.shutdown()
    return store, next(r for r in dj.artifacts if r.name == "datasets")


def pool_service(ttl_s: float = 30.0) -> PoolUnitService:
    return PoolUnitService(WorkUnitPool(InMemoryUnitJournal(), ttl_s=ttl_s))


def context(store, spec, datasets_ref, *, request_id="r", run_id="run-1") -> JobContext:
    req = JobRequest(request_id=request_id, phase=PHASE, run_id=run_id, inputs=(datasets_ref,))
    return JobContext(job_id=f"job-{request_id}", request=req, spec=spec, store=store, events=EventLog(),
                      cancel_event=threading.Event())


def test_the_ci_job_writes_the_checklists_artifact(data):
    store, ref = data
    reg = JobRegistry(get_phase("reasoning_data"), store)
    job = reg.submit(JobRequest(request_id="ci", phase=PHASE, seed=1, inputs=(ref,)), CI.phases.reasoning_data)
    assert job.done.wait(300) and job.state is JobState.SUCCEEDED, job.error
    reg.shutdown()
    (art,) = job.artifacts
    merged = load_reasoning_data(store, art)  # the checklist's validation, or an error
    spec = CI.phases.reasoning_data
    assert validate_reasoning_data(merged, target=spec.target_examples) == []
    assert len(merged["metadata"]["strategies"]) == 10 and merged["special_tokens"] == list(SPECIAL_TOKENS)
    exs = merged["examples"]
    assert len(exs) == merged["metadata"]["total_examples"] >= spec.target_examples
    # the target counts the strategies' examples of source problems; the short questions come on top
    short = [d for d in exs if is_subquestion(d["id"])]
    assert short and len(exs) - len(short) >= spec.target_examples
    for d in exs:
        ex = Example.from_dict(d)
        assert check_example(ex) is None and validate_structure(ex) is None
        assert "[thinking]" in ex.reasoning and "[/endthinking]" in ex.reasoning
        assert not ex.source_id.startswith("GSM8K/test")
    # every strategy variant of one problem on one side; both sides non-empty
    sides: dict[str, set] = {}
    for d in exs:
        sides.setdefault(d["source_id"], set()).add(d["split"])
    assert all(len(s) == 1 for s in sides.values())
    assert {d["split"] for d in exs} == {"train", "val"}
    # shards hold exactly the merged examples
    index = store.load_json(art, "shards.json")["shards"]
    sharded = [e["id"] for s in index for e in store.load_json(art, s["file"])]
    assert sorted(sharded) == sorted(d["id"] for d in exs) and len(set(sharded)) == len(sharded)
    assert all(s["count"] <= spec.shard_size for s in index)
    m = job.metrics
    assert m["reasoning_data/total_examples"] == len(exs)
    assert m["reasoning_data/valid_fraction"] == 1.0 and m["reasoning_data/strategies_covered"] == 10
    assert m["reasoning_data/math_verification_rate"] == 1.0
    assert sum(m[f"reasoning_data/strategy/{s}"] for s in spec.strategies) == len(exs)
    assert m["reasoning_data/rejected_total"] == sum(v for k, v in m.items() if k.startswith("reasoning_data/rejected/"))


def test_merge_drops_duplicates_and_near_duplicates_of_one_problem():
    spec = CI.phases.reasoning_data
    base = dict(prompt="Q?", answer="16", source="GSM8K", gold="16", verified=True)
    body = ("2+2=4 and 4+4=8 and 8+8=16 so the total is sixteen apples in all, counted twice over: "
            "first the red ones and then the green ones, which gives sixteen again [/endthinking]")
    a = Example(id="G/1#step", strategy="step", source_id="G/1", reasoning=f"[thinking] <step> {body}", **base)
    same = Example(id="G/1#step", strategy="step", source_id="G/1", reasoning=a.reasoning, **base)
    kept, rejected, _ = job_mod.merge([a, same], spec)
    assert kept == [a] and rejected == Counter({"duplicate": 1})
    near = Example(id="G/1#doubt", strategy="doubt", source_id="G/1", reasoning=f"[thinking] <step> <doubt> {body}",
                   **base)
    kept, rejected, _ = job_mod.merge([a, near], spec)
    assert len(kept) == 1 and rejected == Counter({"near_duplicate": 1})
    other_problem = Example(id="G/2#doubt", strategy="doubt", source_id="G/2", reasoning=near.reasoning, **base)
    kept, rejected, _ = job_mod.merge([a, other_problem], spec)  # the bound is per problem
    assert len(kept) == 2 and not rejected
    # a step's short question of the same problem is another question: its reasoning may repeat the step
    short = Example(id="G/1#step/q1", strategy="step", source_id="G/1", prompt="What is 2+2?",
                    reasoning=a.reasoning, **{k: v for k, v in base.items() if k != "prompt"})
    kept, rejected, _ = job_mod.merge([a, short], spec)
    assert kept == [a, short] and not rejected
    bad = Example(id="G/3#mece", strategy="mece", source_id="G/3", reasoning="no wrapper", **base)
    kept, rejected, figures = job_mod.merge([a, bad], spec)
    assert kept == [a] and rejected == Counter({"merge_no_thinking_wrapper": 1})
    assert figures == {"checked": 2, "valid": 1}


def _run_workers(store, service, n_workers):
    workers = [UnitWorker(store, service, run_id="run-x", name=f"w{i}", idle_s=0.05, heartbeat_s=0.05)
               for i in range(n_workers)]
    for w in workers:
        w.start()
    return workers


def test_two_workers_and_a_killed_third_produce_exactly_the_planned_units(data, monkeypatch):
    store, ref = data
    spec = CI.phases.reasoning_data
    service = pool_service(ttl_s=0.5)
    items = select_items(job_mod._CACHE.records(store, ref).values(), spec)
    units = plan_units(items, spec, datasets_ref=ref, output_prefix="jobs/test/t0/work", slices=range(3))
    assert service.plan("run-x", PHASE, units) == len(units) == 30

    # The third worker "dies" inside its first unit: it stops heartbeating and never completes.
    real = job_mod.make_backend
    died = threading.Event()

    def dying_backend(spec, budget, env=None):
        run = real(spec, budget)
        if threading.current_thread().name == "w-doomed" and not died.is_set():
            def hang(records, strategy):
                died.set()
                threading.Event().wait(3600)
            return hang
        return run
    monkeypatch.setattr(job_mod, "make_backend", dying_backend)
    doomed = UnitWorker(store, service, run_id="run-x", name="w-doomed", idle_s=0.05, heartbeat_s=0.05)
    doomed.heartbeat_s = 3600  # a dead process sends no heartbeats
    threading.Thread(target=doomed.loop, name="w-doomed", daemon=True).start()
    assert died.wait(30)
    workers = _run_workers(store, service, 2)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = [u.state for u in service.list_units("run-x", PHASE)]
        if states.count("done") == len(units):
            break
        time.sleep(0.05)
    for w in workers:
        w.stop()
    statuses = service.list_units("run-x", PHASE)
    assert sorted(u.unit_id for u in statuses) == sorted(uid for uid, _ in units)
    assert all(u.state == "done" for u in statuses)
    assert sum(w.completed for w in workers) == len(units)  # each unit completed once, by a live worker
    assert [u.attempts for u in statuses].count(2) == 1     # the doomed worker's unit was handed out again
    ids = [e["id"] for u in statuses for e in store.load_json(job_mod.ArtifactRef.from_dict(u.artifact), "examples.json")]
    assert len(ids) == len(set(ids))


def test_a_restarted_job_redoes_no_finished_unit(data, monkeypatch):
    store, ref = data
    spec = CI.phases.reasoning_data
    service = pool_service()
    first = ReasoningDataRunner(service, poll_s=0.01).run(context(store, spec, ref, request_id="a"))
    a = store.load_json(first.artifacts[0], "reasoning_data.json")["examples"]
    worked = []
    real = job_mod.work_unit
    monkeypatch.setattr(job_mod, "work_unit", lambda *a, **k: worked.append(1) or real(*a, **k))
    second = ReasoningDataRunner(service, poll_s=0.01).run(context(store, spec, ref, request_id="a"))
    assert worked == []
    assert second.metrics == first.metrics
    b = store.load_json(second.artifacts[0], "reasoning_data.json")["examples"]
    assert a == b


def _openai_spec(url: str, **kw) -> ReasoningDataConfig:
    base = CI.phases.reasoning_data.model_dump(mode="json")
    base.update(backend="openai", api_base=url, model="teacher-1", cost_limit_usd=1.0, concurrency=4,
                api_key_env="AF_TEST_TEACHER_KEY", max_completion_tokens=64, request_timeout_s=2.0, max_retries=3,
                prices=[{"model": "teacher-1", "input_per_mtok": 1.0, "output_per_mtok": 100.0}],
                strategies=["step", "doubt"], sources=["GSM8K", "SVAMP"], target_examples=6, items_per_unit=3)
    base.update(kw)
    return ReasoningDataConfig.model_validate(base)


def test_the_http_backend_through_the_job_keeps_three_workers_within_the_cost_limit(data, monkeypatch):
    store, ref = data
    items = select_items(job_mod._CACHE.records(store, ref).values(), _openai_spec("http://x"))
    answers = {r.prompt[:60]: r.answer for r in items}
    monkeypatch.setenv("AF_TEST_TEACHER_KEY", "sk-test-secret-key")  # the job and its replicas read it
    with FakeOpenAI(answers=answers, reply_delay_s=0.02) as server:
        spec = _openai_spec(server.url, cost_limit_usd=0.05, target_examples=40)
        server.script("429", "500")
        service = pool_service()
        runner = ReasoningDataRunner(service, poll_s=0.01)
        extra = [UnitWorker(store, service, run_id="", name=f"replica-{i}", idle_s=0.02) for i in range(2)]
        for w in extra:
            w.start()
        try:
            result = runner.run(context(store, spec, ref))
        finally:
            for w in extra:
                w.stop()
        billed = sum(u["prompt_tokens"] * 1e-6 + u["completion_tokens"] * 1e-4 for u in server.billed_usage())
        sent = len(server.chat_requests())
    m = result.metrics
    assert billed <= spec.cost_limit_usd
    assert m["reasoning_data/billed_usd"] == pytest.approx(billed, abs=1e-9)
    # every request the server saw is a call or a retry of one (a retry that would cross the limit is not sent)
    assert m["reasoning_data/calls"] + m["reasoning_data/retries"] == sent
    assert m["reasoning_data/refused_by_budget"] >= 1           # the limit was reached and held
    assert m["reasoning_data/total_examples"] >= 1
    merged = store.load_json(result.artifacts[0], "reasoning_data.json")
    assert all(check_example(Example.from_dict(d)) is None for d in merged["examples"])
    assert all(d["origin"] == "openai:teacher-1" for d in merged["examples"])


def test_bad_input_gets_a_clear_error_naming_the_field(data):
    with pytest.raises(InvalidSpecError, match="AF_TEST_TEACHER_KEY"):
        ReasoningDataRunner(pool_service(), env={}).validate(_openai_spec("http://127.0.0.1:9/v1"))
    for bad, field in (({"strategies": ["step", "telepathy"]}, "strategies"), ({"cost_limit_usd": -1.0}, "cost_limit_usd"),
                       ({"prices": []}, "price"), ({"sources": ["GSM8K-test"]}, "sources")):
        with pytest.raises(Exception, match=field):
            _openai_spec("http://x", **bad)
    local = CI.phases.reasoning_data.model_copy(update={"backend": "local", "model": "/nonexistent/model"})
    with pytest.raises(InvalidSpecError, match="/nonexistent/model"):
        ReasoningDataRunner(pool_service()).validate(local)


def test_the_job_retries_faults_and_counts_a_reply_without_the_wrapper_as_a_rejection(data):
    store, ref = data
    items = select_items(job_mod._CACHE.records(store, ref).values(), _openai_spec("http://x"))
    answers = {r.prompt[:60]: r.answer for r in items}
    with FakeOpenAI(answers=answers) as server:
        server.script("429", "500", "no_wrapper")
        spec = _openai_spec(server.url, target_examples=2, strategies=["step"])
        result = ReasoningDataRunner(pool_service(), poll_s=0.01, env={"AF_TEST_TEACHER_KEY": "k"}).run(
            context(store, spec, ref, run_id="run-w"))
    assert result.metrics["reasoning_data/rejected/no_thinking_wrapper"] == 1
    assert result.metrics["reasoning_data/retries"] == 2  # the 429 and the 500, each retried once


def test_the_checklists_generator_command_writes_a_file_that_passes_its_validation(tmp_path, datasets_dir):
    """`agentforge reasoning-data --output FILE --cost-limit N` (the checklist's phase3_data_generator)."""
    out = tmp_path / "data" / "phase3_reasoning.json"
    env = {**os.environ, "AGENTFORGE_STORE": f"file://{tmp_path / 'store'}"}
    result = subprocess.run([sys.executable, "-m", "shared.cli", "--log-level", "WARNING", "reasoning-data",
                             "--profile", "ci", "--output", str(out), "--target", "30"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["metadata"]["total_examples"] >= 30 and validate_reasoning_data(data, target=30) == []
    assert not list(out.parent.glob("*.partial"))
    bad = subprocess.run([sys.executable, "-m", "shared.cli", "reasoning-data", "--profile", "ci",
                          "--output", str(tmp_path / "x.json"), "--cost-limit", "-1"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "cost_limit_usd" in bad.stderr and not (tmp_path / "x.json").exists()
