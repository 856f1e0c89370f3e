"""The bitnet phase as a job on the ci profile: a Phase-3 model (a ci-shaped model trained a little, the
thinking tokens, a mixing head), the reasoning data and the datasets in; a packed 1.58-bit model out whose reload gives the
in-memory logits exactly, every gate metric reported and consistent with the file; bad inputs refused."""

import json

import pytest
import torch

from services.bitnet.core.packed import MANIFEST, PACKED, load_packed
from services.quietstar.core.artifact import save_quietstar
from services.quietstar.core.rl import MixingHead
from services.quietstar.core.tokens import add_thinking_tokens
from shared.config import load_profile
from services.quietstar.core.baking import split_by_field
from services.quietstar.core.job import pack_rows
from services.reasoning_data.core.job import load_reasoning_data
from shared.data.tokenizer import load_tokenizer, save_tokenizer
from shared.model import TRMTitansMAG, TRMTitansMAGConfig, save_model
from shared.runtime import JobRegistry, JobRequest, JobState, get_phase
from shared.storage import LocalStore

CI = load_profile("ci")
SPEC = CI.phases.bitnet
EVALUATION = CI.evaluation.model_copy(update={"gsm8k_limit": 3, "multiple_choice_limit": 4}).model_dump()


def publish(store, key, name, folder):
    with store.open_artifact(key, kind="model", name=name, tokenizer="tokenizer", config={"fixture": True}) as w:
        for f in sorted(folder.iterdir()):
            w.add_dir(f.name, f) if f.is_dir() else w.add_file(f.name, f)
    return w.ref


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, datasets_dir):
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
    cfg = CI.phases.cognate.model
    model = TRMTitansMAG(TRMTitansMAGConfig.from_profile(cfg, active_ltm_slots=cfg.ltm_slots))
    add_thinking_tokens(model, tok, verbose=False)
    # a little training on reasoning-format text (what a Phase-3 model knows), so the model has an NLL gain
    # over uniform on it and the drop is defined
    train, _ = split_by_field(load_reasoning_data(store, rj.artifacts[0])["examples"])
    rows = pack_rows(tok, train, cfg.max_seq_len, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for i in range(60):
        ids = rows[(torch.arange(8) + 8 * i) % len(rows)]
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    folder = save_quietstar(model, MixingHead(cfg.hidden_dim), tok, {"thought_length": 2, "num_thoughts": 2,
                                                                     "lookahead_tokens": 2}, work / "model")
    ref = publish(store, "fixtures/quietstar-model", "model", folder)
    plain = save_model(model, work / "plain")           # a model without the Phase-3 files
    save_tokenizer(tok, plain / "tokenizer")
    bad = publish(store, "fixtures/not-phase3", "model", plain)
    # a model outside the family: the Phase-3 files, but config.json says gpt2
    foreign = work / "foreign"
    import shutil

    shutil.copytree(folder, foreign)
    config = json.loads((foreign / "config.json").read_text())
    (foreign / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    other = publish(store, "fixtures/foreign", "model", foreign)
    return store, (ref, *rj.artifacts, *dj.artifacts), (bad, *rj.artifacts, *dj.artifacts), \
        (other, *rj.artifacts, *dj.artifacts)


def run_bitnet(store, inputs, request_id, spec=SPEC):
    reg = JobRegistry(get_phase("bitnet"), store)
    job = reg.submit(JobRequest(request_id=request_id, phase="bitnet", seed=1, inputs=inputs,
                                evaluation=EVALUATION), spec)
    assert job.done.wait(900)
    job.stages = [e.stage for e in reg.watch(job.job_id)]
    reg.shutdown()
    return job


@pytest.fixture(scope="module")
def done(upstream):
    store, inputs, *_ = upstream
    return run_bitnet(store, inputs, "b")


def test_the_packed_model_is_published_and_reloads_to_the_same_logits(upstream, done, tmp_path):
    store, inputs, *_ = upstream
    assert done.state is JobState.SUCCEEDED, done.error
    (ref,) = done.artifacts
    assert ref.name == "model" and [p.name for p in store.read_manifest(ref).parents] == ["model"]
    folder = store.fetch(ref, tmp_path / "m")
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["pack_format"] == SPEC.pack_format and manifest["embedding_bits"] == SPEC.embedding_bits
    for name in ("tokenizer", "mixing_head.safetensors", "quietstar.json"):   # Phase 3 travels along
        assert (folder / name).exists()
    model = load_packed(folder)
    again = load_packed(folder)
    ids = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    assert done.metrics["bitnet/reload_logits_max_abs_diff"] == 0.0
    # every packed tensor takes exactly ceil(n/4) bytes (2-bit)
    from safetensors import safe_open

    with safe_open(str(folder / PACKED), "pt") as f:
        for name, (o, i) in manifest["shapes"].items():
            assert f.get_tensor(f"{name}.packed").numel() == -(-o * i // 4)


def test_every_gate_metric_is_reported_and_matches_the_artifact(upstream, done, tmp_path):
    store, *_ = upstream
    m = done.metrics
    for gate in CI.gates.bitnet:
        assert gate.metric in m, gate.metric
    assert m["bitnet/compression_ratio"] > 3.0 and m["bitnet/bitlinear_compression_ratio"] > 15.0
    assert m["bitnet/bitlinear_compression_ratio"] <= 16.0 + 1e-9          # 2 bits vs 32, plus the scales
    assert m["bitnet/nll_gain_retained"] == pytest.approx(1 - m["bitnet/accuracy_drop"])
    assert 0.0 < m["bitnet/sparsity"] < 1.0
    assert m["bitnet/ternary_fraction"] == pytest.approx(1.0) or m["bitnet/reverted_blocks"] > 0
    assert m["bitnet/bytes_per_token_reduction"] > 1.0
    (ref,) = done.artifacts
    size = store.fetch(ref, tmp_path / "m") / PACKED
    assert m["bitnet/model_size_mb"] == pytest.approx(size.stat().st_size / 2 ** 20)
    assert m["bitnet/thinking_tokens_present"] in (0.0, 1.0)
    assert any(s.startswith("block 0") for s in done.stages)


def test_a_model_that_is_not_a_phase3_model_or_outside_the_family_is_refused_with_its_reason(upstream):
    store, _, bad_inputs, foreign_inputs = upstream
    job = run_bitnet(store, bad_inputs, "b-bad")
    assert job.state is JobState.FAILED and "quietstar.json" in job.error
    job = run_bitnet(store, foreign_inputs, "b-foreign")
    assert job.state is JobState.FAILED and "gpt2" in job.error


def test_generate_chat_and_export_on_the_packed_model(upstream, done, tmp_path, capsys, monkeypatch):
    import io

    from shared.cli import main
    from shared.model import load_model

    store, *_ = upstream
    (ref,) = done.artifacts
    folder = store.fetch(ref, tmp_path / "m")
    assert main(["generate", "--model", str(folder), "--prompt", "What is 2+2?", "--max-new-tokens", "3",
                 "--show-thoughts"]) == 0
    shown = capsys.readouterr().out
    assert shown.count("[thinking]") >= 3                     # one hidden thought before each of the 3 tokens
    assert main(["generate", "--model", str(folder), "--prompt", "What is 2+2?", "--max-new-tokens", "3",
                 "--no-thoughts"]) == 0
    assert capsys.readouterr().out.strip() != shown.strip()
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2+2?\n\nexit\nnever read\n"))
    assert main(["chat", "--model", str(folder), "--max-new-tokens", "2", "--no-thoughts"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) >= 1
    out = tmp_path / "hf"
    assert main(["export-hf", "--model", str(folder), "--out", str(out)]) == 0
    plain = load_model(out).eval()
    packed = load_packed(folder)
    ids = torch.randint(0, 100, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = plain(ids).logits.flatten(), packed(ids).logits.flatten()
    # the same weights; only the packed model's int8 activation rounding differs
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.99
    assert main(["export-hf", "--model", str(folder), "--out", str(out)]) != 0      # never overwrites
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) != 0
    err = capsys.readouterr().err
    assert "--model" in err and "Traceback" not in err


def test_a_block_that_costs_more_than_max_layer_drop_is_reverted_to_full_precision(upstream):
    store, inputs, *_ = upstream
    job = run_bitnet(store, inputs, "b-strict", spec=SPEC.model_copy(update={"max_layer_drop": 1e-6}))
    assert job.state is JobState.SUCCEEDED, job.error
    m = job.metrics
    assert any(s.endswith("(reverted)") for s in job.stages)
    assert m["bitnet/reverted_blocks"] >= 1 and m["bitnet/ternary_fraction"] < 1.0   # the gate that forbids it fails
    assert m["bitnet/reload_logits_max_abs_diff"] == 0.0                             # reverted layers reload too
