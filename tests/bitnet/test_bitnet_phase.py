"""The bitnet phase as a job on the ci profile: a Phase-3 model (tests/bitnet/conftest.py: a ci-shaped model
with two blocks trained a little, the thinking tokens, a mixing head), the reasoning data and the datasets in; a
packed 1.58-bit model out whose reload gives the in-memory logits exactly, every gate metric reported and
consistent with the file; bad inputs refused."""

import json

import pytest
import torch

from services.bitnet.core.packed import MANIFEST, PACKED, load_packed
from shared.runtime import JobState
from tests.bitnet.jobs import CI, SPEC, run_bitnet


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
    # the checklist's test and its rate over the short questions are what the published model itself writes
    from services.bitnet.core.packed import load_any
    from services.quietstar.core.baking_eval import SHORT_QUESTIONS, checklist_passed, short_question_outputs

    published = load_any(size.parent)
    texts = short_question_outputs(published.model, published.tokenizer)
    assert SHORT_QUESTIONS[0] == "What is 2+2?" and len(texts) == len(SHORT_QUESTIONS)
    assert m["bitnet/thinking_tokens_present"] == float(checklist_passed(texts[0]))
    assert m["bitnet/short_question_format_rate"] == pytest.approx(sum(map(checklist_passed, texts)) / len(texts))
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
    # no warm-up steps: each block goes to λ = 1 untrained, which costs NLL, more than the tiny bound
    job = run_bitnet(store, inputs, "b-strict", spec=SPEC.model_copy(update={"max_layer_drop": 1e-6,
                                                                          "lambda_warmup_steps": 0}))
    assert job.state is JobState.SUCCEEDED, job.error
    m = job.metrics
    assert any(s.endswith("(reverted)") for s in job.stages)
    assert m["bitnet/reverted_blocks"] >= 1 and m["bitnet/ternary_fraction"] < 1.0   # the gate that forbids it fails
    assert m["bitnet/reload_logits_max_abs_diff"] == 0.0                             # reverted layers reload too
