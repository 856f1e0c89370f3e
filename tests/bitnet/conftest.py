"""Fixtures shared by the BitNet job tests (one store, built once for the package): the upstream artifacts —
datasets, reasoning data, a Phase-3 model (a ci-shaped model with two blocks trained a little, the thinking
tokens, a mixing head) and two models the job must refuse — and one uninterrupted ci job."""

import json
import shutil

import pytest
import torch

from services.quietstar.core.artifact import save_quietstar
from services.quietstar.core.baking import split_by_field
from services.quietstar.core.job import pack_rows
from services.quietstar.core.rl import MixingHead
from services.quietstar.core.tokens import add_thinking_tokens
from services.reasoning_data.core.job import load_reasoning_data
from shared.data.tokenizer import load_tokenizer, save_tokenizer
from shared.model import TRMTitansMAG, TRMTitansMAGConfig, save_model
from shared.runtime import JobRegistry, JobRequest, JobState, get_phase
from shared.storage import LocalStore
from tests.bitnet.jobs import CI, NUM_LAYERS, publish, run_bitnet, train_a_little


@pytest.fixture(scope="package")
def upstream(tmp_path_factory, datasets_dir):
    """(store, inputs, inputs with a model that is not a Phase-3 model, inputs with a model outside the family)."""
    store = LocalStore(tmp_path_factory.mktemp("store"))
    reg = JobRegistry(get_phase("datasets"), store)
    dj = reg.submit(JobRequest(request_id="d", phase="datasets", seed=1),
                    CI.phases.datasets.model_copy(update={"mirror_dir": str(datasets_dir)}))
    assert dj.done.wait(300) and dj.state is JobState.SUCCEEDED, dj.error
    reg.shutdown()
    rd = JobRegistry(get_phase("reasoning_data"), store)
    rj = rd.submit(JobRequest(request_id="r-bitnet", phase="reasoning_data", seed=1, inputs=dj.artifacts),
                   CI.phases.reasoning_data)
    assert rj.done.wait(300) and rj.state is JobState.SUCCEEDED, rj.error
    rd.shutdown()
    work = tmp_path_factory.mktemp("phase3")
    tok = load_tokenizer(store.fetch(next(r for r in dj.artifacts if r.name == "tokenizer"), work / "t") / "tokenizer")
    torch.manual_seed(0)
    cfg = CI.phases.cognate.model.model_copy(update={"num_layers": NUM_LAYERS})
    model = TRMTitansMAG(TRMTitansMAGConfig.from_profile(cfg, active_ltm_slots=cfg.ltm_slots))
    add_thinking_tokens(model, tok, verbose=False)
    train, _ = split_by_field(load_reasoning_data(store, rj.artifacts[0])["examples"])
    train_a_little(model, pack_rows(tok, train, cfg.max_seq_len, seed=0))
    folder = save_quietstar(model, MixingHead(cfg.hidden_dim), tok, {"thought_length": 2, "num_thoughts": 2,
                                                                     "lookahead_tokens": 2}, work / "model")
    ref = publish(store, "fixtures/quietstar-model", "model", folder)
    plain = save_model(model, work / "plain")           # a model without the Phase-3 files
    save_tokenizer(tok, plain / "tokenizer")
    bad = publish(store, "fixtures/not-phase3", "model", plain)
    # a model outside the family: the Phase-3 files, but config.json says gpt2
    foreign = work / "foreign"
    shutil.copytree(folder, foreign)
    config = json.loads((foreign / "config.json").read_text())
    (foreign / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    other = publish(store, "fixtures/foreign", "model", foreign)
    return store, (ref, *rj.artifacts, *dj.artifacts), (bad, *rj.artifacts, *dj.artifacts), \
        (other, *rj.artifacts, *dj.artifacts)


@pytest.fixture(scope="package")
def done(upstream):
    """The uninterrupted job (request "b") on the ci spec."""
    store, inputs, *_ = upstream
    return run_bitnet(store, inputs, "b")
