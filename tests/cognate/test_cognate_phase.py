"""The cognate phase as a job on the ci profile: the datasets job's artifacts in, four models out, every gate
metric of the profile reported, the models loadable with their tokenizer."""

import pytest

from shared.config import load_profile
from shared.model import load_model
from shared.runtime import JobRegistry, JobRequest, JobState, get_phase
from shared.storage import LocalStore

CI = load_profile("ci")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, datasets_dir):
    store = LocalStore(tmp_path_factory.mktemp("store"))
    data = JobRegistry(get_phase("datasets"), store)
    spec = CI.phases.datasets.model_copy(update={"mirror_dir": str(datasets_dir)})
    dj = data.submit(JobRequest(request_id="d", phase="datasets", seed=1), spec)
    assert dj.done.wait(300) and dj.state is JobState.SUCCEEDED, dj.error
    cog = JobRegistry(get_phase("cognate"), store)
    job = cog.submit(JobRequest(request_id="c", phase="cognate", seed=1, inputs=dj.artifacts,
                                evaluation=CI.evaluation.model_dump()), CI.phases.cognate)
    assert job.done.wait(600)
    yield job, store
    data.shutdown()
    cog.shutdown()


def test_the_job_publishes_an_ancestor_and_three_models(finished, tmp_path):
    job, store = finished
    assert job.state is JobState.SUCCEEDED, job.error
    names = {r.name for r in job.artifacts}
    assert names == {"ancestor", "model_reasoning", "model_memory", "model_speed"}
    ref = next(r for r in job.artifacts if r.name == "model_memory")
    local = store.fetch(ref, tmp_path / "m")
    model = load_model(local)
    assert (local / "tokenizer" / "tokenizer.json").is_file()
    assert int(model.net.layers[0].memory.mask.sum()) == 32 and model.config.act_threshold == 0.5
    manifest = store.read_manifest(ref)
    assert manifest.parents and manifest.parents[0].name == "ancestor"


def test_every_cognate_gate_metric_is_reported(finished):
    job, _ = finished
    for gate in CI.gates.cognate:
        assert gate.metric in job.metrics, f"{gate.metric} not reported"
    for a, b in (("reasoning", "memory"), ("reasoning", "speed"), ("memory", "speed")):
        assert f"cognate/barrier/{a}-{b}" in job.metrics


def test_the_variants_differ_in_the_named_directions(finished):
    job, _ = finished
    m = job.metrics
    # speed halts earliest, reasoning thinks longest (act_threshold ordering), memory uses the most memory
    assert m["cognate/speed/halting_steps"] <= m["cognate/memory/halting_steps"] <= m["cognate/reasoning/halting_steps"]
    assert m["cognate/speed/halting_steps"] < m["cognate/reasoning/halting_steps"]
    assert m["cognate/memory/ltm_usage"] > max(m["cognate/reasoning/ltm_usage"], m["cognate/speed/ltm_usage"])


def test_training_was_logged_to_wandb_offline(finished):
    import os
    from pathlib import Path

    runs = list(Path(os.environ["WANDB_DIR"]).glob("wandb/offline-run-*"))
    assert runs, "no offline W&B run was written"
