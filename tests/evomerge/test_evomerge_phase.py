"""The evomerge phase as a job on the ci profile: Cognate's four models and the datasets in, a champion out
that loads and generates, every gate metric reported, and a job restarted mid-evolution continues from its
last checkpointed generation with the same result."""

import pytest
import torch

from shared.config import load_profile
from shared.model import load_model
from shared.runtime import JobRegistry, JobRequest, JobState, get_phase
from shared.storage import LocalStore

CI = load_profile("ci")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, datasets_dir):
    store = LocalStore(tmp_path_factory.mktemp("store"))
    data = JobRegistry(get_phase("datasets"), store)
    dj = data.submit(JobRequest(request_id="d", phase="datasets", seed=1),
                     CI.phases.datasets.model_copy(update={"mirror_dir": str(datasets_dir)}))
    assert dj.done.wait(300) and dj.state is JobState.SUCCEEDED, dj.error
    cog = JobRegistry(get_phase("cognate"), store)
    evaluation = CI.evaluation.model_copy(update={"gsm8k_limit": 2, "multiple_choice_limit": 4}).model_dump()
    cj = cog.submit(JobRequest(request_id="c", phase="cognate", seed=1, inputs=dj.artifacts,
                               evaluation=evaluation), CI.phases.cognate)
    assert cj.done.wait(600) and cj.state is JobState.SUCCEEDED, cj.error
    yield store, dj.artifacts + cj.artifacts
    data.shutdown()
    cog.shutdown()


def run_evomerge(store, inputs, request_id, spec=CI.phases.evomerge):
    reg = JobRegistry(get_phase("evomerge"), store)
    job = reg.submit(JobRequest(request_id=request_id, phase="evomerge", seed=1, inputs=inputs), spec)
    assert job.done.wait(600)
    job.stages = [e.stage for e in reg.watch(job.job_id)]
    reg.shutdown()
    return job


def test_the_champion_is_published_loads_generates_and_every_gate_metric_is_reported(upstream, tmp_path):
    store, inputs = upstream
    job = run_evomerge(store, inputs, "e")
    assert job.state is JobState.SUCCEEDED, job.error
    for gate in CI.gates.evomerge:
        assert gate.metric in job.metrics
    m = job.metrics
    assert m["evomerge/best_fitness"] >= m["evomerge/generation0_best_fitness"] > 0
    assert m["evomerge/improvement"] == pytest.approx(
        (m["evomerge/best_fitness"] - m["evomerge/generation0_best_fitness"]) / m["evomerge/generation0_best_fitness"])
    assert m["evomerge/champion_vs_best_parent"] == pytest.approx(
        m["evomerge/champion_holdout_fitness"] - m["evomerge/best_parent_holdout_fitness"])
    (ref,) = job.artifacts
    manifest = store.read_manifest(ref)
    assert ref.name == "champion" and {p.name for p in manifest.parents} == {
        "ancestor", "model_reasoning", "model_memory", "model_speed"}
    model = load_model(store.fetch(ref, tmp_path / "champion"))
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)


def test_a_job_restarted_after_a_generation_continues_from_it(upstream, monkeypatch):
    store, inputs = upstream
    whole = run_evomerge(store, inputs, "e-whole")
    from services.evomerge.core.loop import Evolution

    real_step = Evolution.step
    calls = {"n": 0}

    def dying_step(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash after generation 1's checkpoint")
        return real_step(self)

    monkeypatch.setattr(Evolution, "step", dying_step)
    first = run_evomerge(store, inputs, "e-killed")
    assert first.state is JobState.FAILED and "internal error" in first.error   # details stay in the log
    monkeypatch.setattr(Evolution, "step", real_step)
    resumed = run_evomerge(store, inputs, "e-killed")
    assert resumed.state is JobState.SUCCEEDED, resumed.error
    for key in ("evomerge/improvement", "evomerge/best_fitness", "evomerge/champion_holdout_fitness"):
        assert resumed.metrics[key] == pytest.approx(whole.metrics[key], rel=1e-9)
    generations = [s for s in resumed.stages if s.startswith("generation ")]
    assert generations == ["generation 2"]          # 0 and 1 came from the checkpoint, not recomputed
    assert [s for s in first.stages if s.startswith("generation ")] == ["generation 0", "generation 1"]


def test_missing_parents_fail_with_the_name_of_the_missing_input(upstream):
    store, inputs = upstream
    job = run_evomerge(store, tuple(r for r in inputs if r.name != "model_memory"), "e-missing")
    assert job.state is JobState.FAILED and "model_memory" in job.error
