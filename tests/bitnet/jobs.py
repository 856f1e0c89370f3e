"""Helpers of the BitNet job tests: the ci spec, publishing a fixture folder as an artifact, running a job."""

import torch

from shared.config import load_profile
from shared.runtime import JobRegistry, JobRequest, get_phase

CI = load_profile("ci")
SPEC = CI.phases.bitnet
EVALUATION = CI.evaluation.model_copy(update={"gsm8k_limit": 3, "multiple_choice_limit": 4}).model_dump()
# two blocks, so layer-by-layer staging has a stage between blocks (and a checkpoint to resume from);
# the ci profile's Phase-1 model has one
NUM_LAYERS = 2


def publish(store, key, name, folder):
    with store.open_artifact(key, kind="model", name=name, tokenizer="tokenizer", config={"fixture": True}) as w:
        for f in sorted(folder.iterdir()):
            w.add_dir(f.name, f) if f.is_dir() else w.add_file(f.name, f)
    return w.ref


def run_bitnet(store, inputs, request_id, spec=SPEC):
    """One job on a fresh registry (a fresh worker: a resubmitted request_id finds only its checkpoints);
    the job comes back with `stages` and `events` (its Watch stream) attached."""
    reg = JobRegistry(get_phase("bitnet"), store)
    job = reg.submit(JobRequest(request_id=request_id, phase="bitnet", seed=1, inputs=inputs,
                                evaluation=EVALUATION), spec)
    assert job.done.wait(900)
    job.events = list(reg.watch(job.job_id))
    job.stages = [e.stage for e in job.events]
    reg.shutdown()
    return job


def train_a_little(model, rows, steps: int = 60) -> None:
    """A few AdamW steps on reasoning-format rows: the model gets an NLL gain over uniform, so the drop is
    defined."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for i in range(steps):
        ids = rows[(torch.arange(8) + 8 * i) % len(rows)]
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
