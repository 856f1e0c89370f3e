"""The quietstar phase as a job on the ci profile: a champion, the reasoning data and the datasets in; a
Phase-3 model out that loads and generates with thoughts shown or hidden; every gate metric reported and
consistent; a job killed in baking or in RL resumes from its last checkpoint and ends where an
uninterrupted job ends; bad inputs fail naming what is wrong."""

import json

import pytest
import torch

from services.quietstar.core import rl as rl_mod
from services.quietstar.core.artifact import HEAD_FILE, SETTINGS_FILE, load_quietstar
from services.quietstar.core.baking import BakingTrainer
from services.quietstar.core.baking_eval import checklist_passed, short_question_outputs
from services.quietstar.core.job import BAKED_STEP, pack_rows, score_gsm8k
from shared.config import load_profile
from shared.data.records import Record
from shared.data.special_tokens import SPECIAL_TOKENS
from shared.data.tokenizer import load_tokenizer, save_tokenizer
from shared.model import TRMTitansMAG, TRMTitansMAGConfig, save_model
from shared.runtime import JobRegistry, JobRequest, JobState, get_phase
from shared.storage import LocalStore
from shared.storage.keys import checkpoint_prefix

CI = load_profile("ci")
SPEC = CI.phases.quietstar
EVALUATION = CI.evaluation.model_copy(update={"gsm8k_limit": 6}).model_dump()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, datasets_dir):
    """The datasets and reasoning-data jobs of the ci profile, and a champion: a ci-shaped model (seeded
    random init — the job's mechanics do not depend on what it knows) on the datasets' tokenizer."""
    store = LocalStore(tmp_path_factory.mktemp("store"))
    data = JobRegistry(get_phase("datasets"), store)
    dj = data.submit(JobRequest(request_id="d", phase="datasets", seed=1),
                     CI.phases.datasets.model_copy(update={"mirror_dir": str(datasets_dir)}))
    assert dj.done.wait(300) and dj.state is JobState.SUCCEEDED, dj.error
    rd = JobRegistry(get_phase("reasoning_data"), store)
    rj = rd.submit(JobRequest(request_id="r-quietstar", phase="reasoning_data", seed=1, inputs=dj.artifacts),
                   CI.phases.reasoning_data)
    assert rj.done.wait(300) and rj.state is JobState.SUCCEEDED, rj.error
    data.shutdown()
    rd.shutdown()
    work = tmp_path_factory.mktemp("champion")
    tok_ref = next(r for r in dj.artifacts if r.name == "tokenizer")
    tokenizer = load_tokenizer(store.fetch(tok_ref, work / "t") / "tokenizer")
    torch.manual_seed(0)
    model = TRMTitansMAG(TRMTitansMAGConfig.from_profile(CI.phases.cognate.model,
                                                         active_ltm_slots=CI.phases.cognate.model.ltm_slots))
    save_model(model, work / "champion")
    save_tokenizer(tokenizer, work / "champion" / "tokenizer")
    with store.open_artifact("fixtures/champion", kind="model", name="champion", tokenizer="tokenizer",
                             config=model.config.to_dict()) as w:
        for f in sorted((work / "champion").iterdir()):
            w.add_dir(f.name, f) if f.is_dir() else w.add_file(f.name, f)
    inputs = (w.ref, *rj.artifacts, *dj.artifacts)
    return store, inputs


def run_quietstar(store, inputs, request_id, spec=SPEC):
    reg = JobRegistry(get_phase("quietstar"), store)
    job = reg.submit(JobRequest(request_id=request_id, phase="quietstar", seed=1, inputs=inputs,
                                evaluation=EVALUATION), spec)
    assert job.done.wait(900)
    job.stages = [e.stage for e in reg.watch(job.job_id)]
    reg.shutdown()
    return job


@pytest.fixture(scope="module")
def whole(upstream):
    store, inputs = upstream
    return run_quietstar(store, inputs, "q-whole")


def test_the_model_is_published_loads_and_generates_with_thoughts_shown_or_hidden(upstream, whole, tmp_path):
    store, inputs = upstream
    assert whole.state is JobState.SUCCEEDED, whole.error
    (ref,) = whole.artifacts
    manifest = store.read_manifest(ref)
    assert ref.name == "model" and {p.name for p in manifest.parents} == {"champion", "reasoning_data"}
    folder = store.fetch(ref, tmp_path / "m")
    assert (folder / HEAD_FILE).is_file() and (folder / SETTINGS_FILE).is_file()
    assert not list(folder.rglob("*.pt")) and not list(folder.rglob("*.bin"))     # safetensors + JSON only
    qs = load_quietstar(folder)
    assert all(qs.tokenizer.convert_tokens_to_ids(t) != qs.tokenizer.unk_token_id for t in SPECIAL_TOKENS)
    assert qs.model.get_input_embeddings().num_embeddings >= len(qs.tokenizer)
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    assert settings["thought_length"] == SPEC.thought_length
    hidden = qs.generate("What is 2+2?", max_new_tokens=6)
    shown = qs.generate("What is 2+2?", max_new_tokens=6, show_thoughts=True)
    assert shown.count("[thinking]") >= hidden.count("[thinking]") + 1   # a thought before every token
    assert len(shown) > len(hidden)
    # the short-question rate is the published model's own: greedy, without thoughts, the checklist's test
    texts = short_question_outputs(qs.model, qs.tokenizer)
    assert whole.metrics["quietstar/short_question_format_rate"] == pytest.approx(
        sum(map(checklist_passed, texts)) / len(texts))


def test_every_gate_metric_is_reported_and_the_comparisons_add_up(whole):
    m = whole.metrics
    for gate in CI.gates.quietstar:
        assert gate.metric in m, gate.metric
    q = "quietstar/"
    assert m[q + "gsm8k_acc_gain"] == pytest.approx(m[q + "gsm8k_acc"] - m[q + "gsm8k_acc_phase2"])
    assert m[q + "gsm8k_acc_gain_over_baking"] == pytest.approx(m[q + "gsm8k_acc"] - m[q + "gsm8k_acc_baked"])
    assert m[q + "gsm8k_items"] == EVALUATION["gsm8k_limit"]
    for name in ("format_adherence", "thinking_token_usage", "coherence", "gsm8k_acc", "answer_accuracy"):
        assert 0.0 <= m[q + name] <= 1.0, name
    assert m[q + "anti_theater_passed"] in (0.0, 1.0)
    assert m[q + "anti_theater_ablation"] == pytest.approx(m[q + "nll_without_thoughts"] - m[q + "nll_with_thoughts"])
    assert m[q + "rl_steps"] == SPEC.rl_steps
    # each failing check doubled the KL coefficient and raised the threshold x1.5
    r = m[q + "rl_rollbacks"]
    assert m[q + "rl_kl_coefficient"] == pytest.approx(SPEC.rl_optimizer.kl_coefficient * 2 ** r)
    assert m[q + "rl_reward_threshold"] == pytest.approx(SPEC.reward_threshold * 1.5 ** r)
    # 12 rows of the embedding (tied head) when the tokenizer outgrew the model's rows, else none
    assert m[q + "parameter_delta"] % CI.phases.cognate.model.hidden_dim == 0
    assert m[q + "baking_epochs"] >= SPEC.baking_epochs


def test_a_job_killed_in_rl_resumes_from_its_last_check_and_ends_like_an_uninterrupted_one(upstream, whole,
                                                                                            monkeypatch):
    store, inputs = upstream
    real = rl_mod.quietstar_step
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == SPEC.anti_theater_every + 1:     # just after the first check's checkpoint
            raise RuntimeError("simulated crash in RL")
        return real(*args, **kwargs)

    monkeypatch.setattr(rl_mod, "quietstar_step", dying)
    first = run_quietstar(store, inputs, "q-rl-killed")
    assert first.state is JobState.FAILED and "internal error" in first.error
    steps = sorted(int(k.rsplit("-", 1)[-1]) for k in store.list_artifacts(checkpoint_prefix("q-rl-killed")))
    assert steps[-1] == BAKED_STEP + SPEC.anti_theater_every      # the last check's checkpoint
    monkeypatch.setattr(rl_mod, "quietstar_step", real)
    resumed = run_quietstar(store, inputs, "q-rl-killed")
    assert resumed.state is JobState.SUCCEEDED, resumed.error
    assert not any(s.startswith("baking epoch") for s in resumed.stages)     # baking came from the checkpoint
    rl_steps = [s for s in resumed.stages if s.startswith("RL step")]
    assert all(int(s.split()[-1]) > SPEC.anti_theater_every for s in rl_steps)
    final = {k: v for k, v in whole.metrics.items() if k.startswith("quietstar/")}
    assert len(final) > 20
    for key, value in final.items():
        assert resumed.metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-4), key   # float32 sums


def test_a_job_killed_in_baking_resumes_from_its_last_epoch(upstream, whole, monkeypatch):
    store, inputs = upstream
    real = BakingTrainer.train_epoch
    calls = {"n": 0}

    def dying(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash in baking epoch 2")
        return real(self)

    monkeypatch.setattr(BakingTrainer, "train_epoch", dying)
    first = run_quietstar(store, inputs, "q-bake-killed")
    assert first.state is JobState.FAILED
    monkeypatch.setattr(BakingTrainer, "train_epoch", real)
    resumed = run_quietstar(store, inputs, "q-bake-killed")
    assert resumed.state is JobState.SUCCEEDED, resumed.error
    epochs = [s for s in resumed.stages if s.startswith("baking epoch")]
    assert epochs and not any(s.startswith("baking epoch 1 ") for s in epochs)    # epoch 1 not redone
    final = {k: v for k, v in whole.metrics.items() if k.startswith("quietstar/")}
    assert len(final) > 20
    for key, value in final.items():
        assert resumed.metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-4), key   # float32 sums


def test_missing_reasoning_data_fails_naming_the_input(upstream):
    store, inputs = upstream
    job = run_quietstar(store, tuple(r for r in inputs if r.name != "reasoning_data"), "q-missing")
    assert job.state is JobState.FAILED and "reasoning_data" in job.error


def test_rl_spans_are_the_baking_text_packed_and_gsm8k_reads_the_answer_line():
    class Tok:
        eos_token_id = 0

        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text]

        def decode(self, ids, skip_special_tokens=False):
            return "".join(chr(i) for i in ids)

    examples = [{"prompt": f"q{i}", "reasoning": "[thinking] x [/endthinking]", "answer": str(i), "strategy": "step"}
                for i in range(3)]
    rows = pack_rows(Tok(), examples, 8, seed=None)
    text = "".join(f"q{i}\n[thinking] x [/endthinking]\nAnswer: {i}\0" for i in range(3))
    assert rows.shape == (len(text) // 8, 8)
    assert Tok().decode(rows.flatten().tolist()) == text[:rows.numel()]
    shuffled = pack_rows(Tok(), examples, 8, seed=3)
    assert sorted(shuffled.flatten().tolist()) != [] and shuffled.shape == rows.shape
    recs = [Record(id="a", dataset="GSM8K", category="math", split="test", prompt="q", answer="#### 12"),
            Record(id="b", dataset="GSM8K", category="math", split="test", prompt="q", answer="#### 7")]
    outs = [Tok().encode("[thinking] <step> 5+7=12 [/endthinking]\nAnswer: 12"), Tok().encode("so 8")]
    assert score_gsm8k(Tok(), recs, outs) == {"exact_match": 0.5, "answered": 1.0, "n": 2.0}
    # the Answer: line wins over a later number
    outs = [Tok().encode("[thinking] <step> 12 [/endthinking]\nAnswer: 11\nso 12"), Tok().encode("Answer: 7")]
    assert score_gsm8k(Tok(), recs, outs)["exact_match"] == 0.5
