"""Phase 1's in-phase mitigations: variants that did not specialise are retrained once with more different
configs (the checklist's "retrain with more aggressive config differences")."""

import pytest

from services.cognate.core.diversity import specialisation_problems
from services.cognate.core.model_metrics import ModelProfile
from services.cognate.core.runner import more_different
from shared.config import load_profile
from shared.model import load_model
from shared.runtime import JobRegistry, JobRequest, JobState, get_phase
from shared.storage import LocalStore

CI = load_profile("ci")


def profile(h, c, u):
    return ModelProfile(halting_steps=h, flops_per_step=c / h, compute_per_token=c, ltm_usage=u, nll=3.0)


def test_specialised_variants_have_no_problem_and_each_failure_is_named():
    good = {"reasoning": profile(2.0, 200, 0.2), "memory": profile(1.8, 400, 0.9), "speed": profile(1.2, 100, 0.2)}
    assert specialisation_problems(good) == []
    same = {n: profile(2.0, 200, 0.5) for n in ("reasoning", "memory", "speed")}
    problems = specialisation_problems(same)
    assert len(problems) == 2
    assert "both below 0.3" in problems[0] and "does not think longer" in problems[1]
    hoarder = dict(good, reasoning=profile(2.0, 200, 0.95))
    problems = specialisation_problems(hoarder)
    assert len(problems) == 1 and "does not use the most memory" in problems[0]


def test_more_different_moves_each_variant_further_along_its_own_axis():
    variants = CI.phases.cognate.variants
    out = {v.name: v for v in more_different(variants, 32)}
    before = {v.name: v for v in variants}
    assert before["reasoning"].act_threshold < out["reasoning"].act_threshold < 1.0
    assert out["speed"].act_threshold == before["speed"].act_threshold / 2
    assert out["speed"].ltm_slots == max(1, before["speed"].ltm_slots // 2)
    assert out["memory"].ltm_slots == 32
    for name in out:   # data order, schedule and mix are the variant's own
        assert (out[name].seed, out[name].epochs, out[name].mix) == (before[name].seed, before[name].epochs,
                                                                     before[name].mix)


def test_a_job_whose_variants_are_alike_retrains_them_with_more_different_configs(tmp_path, datasets_dir):
    store = LocalStore(tmp_path / "store")
    data = JobRegistry(get_phase("datasets"), store)
    dj = data.submit(JobRequest(request_id="d", phase="datasets", seed=1),
                     CI.phases.datasets.model_copy(update={"mirror_dir": str(datasets_dir)}))
    assert dj.done.wait(300) and dj.state is JobState.SUCCEEDED, dj.error
    alike = [v.model_copy(update={"act_threshold": 0.6, "ltm_slots": 16, "epochs": 1})
             for v in CI.phases.cognate.variants]
    spec = CI.phases.cognate.model_copy(update={"variants": alike})
    cog = JobRegistry(get_phase("cognate"), store)
    evaluation = CI.evaluation.model_copy(update={"gsm8k_limit": 2, "multiple_choice_limit": 4}).model_dump()
    job = cog.submit(JobRequest(request_id="c", phase="cognate", seed=1, inputs=dj.artifacts,
                                evaluation=evaluation), spec)
    try:
        assert job.done.wait(600) and job.state is JobState.SUCCEEDED, job.error
        assert job.metrics["cognate/retrained_variants"] == 1.0
        events = [e for e in cog.watch(job.job_id) if e.stage == "retraining the variants"]
        assert len(events) == 1 and "both below 0.3" in events[0].message
        models = {r.name: load_model(store.fetch(r, tmp_path / r.name)) for r in job.artifacts}
        assert models["model_speed"].config.act_threshold == pytest.approx(0.3)
        assert models["model_reasoning"].config.act_threshold == pytest.approx(0.8)
        assert int(models["model_memory"].net.layers[0].memory.mask.sum()) == CI.phases.cognate.model.ltm_slots
        assert int(models["model_speed"].net.layers[0].memory.mask.sum()) == 8
    finally:
        data.shutdown()
        cog.shutdown()
