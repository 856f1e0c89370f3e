"""Prompt Baking: the text format and its label mask, SFT raising format adherence, the KL objective with a
frozen teacher, the convergence mitigation, and format adherence measured by unconstrained sampling."""

import random

import pytest
import torch
import torch.nn.functional as F

import services.quietstar.core.baking as baking
from services.quietstar.core import add_thinking_tokens, bake, filter_by_strategy, train_test_split
from services.quietstar.core.baking import (
    BakingCheckpoint, BakingTrainer, KLTeacher, encode_example, encode_prompt, format_text, kl_batches, mean_kl, pad_batch,
    split_by_field,
)
from services.quietstar.core.baking_eval import (
    ANSWER_ACCURACY, FORMAT_ADHERENCE, TOKEN_ACCURACY, checklist_passed, evaluate_baking, parse_output, select_items,
    short_question_outputs,
)
from services.reasoning_data.core.format import Example, check_example
from shared.data.special_tokens import STRATEGIES
from shared.errors import FailedPreconditionError, InvalidSpecError
from shared.model.modeling import IGNORE_INDEX
from shared.telemetry.metric_names import baking_accuracy
from tests.quietstar.test_tokens import CI, make_model, make_tokenizer

TEMPLATES = {
    "step": "<step> {a} + {b} = {s}",
    "doubt": "<doubt> check {a} + {b} = {s}",
    "mece": "<mece> {a} and {b} sum to {s}",
}


def examples(n_items: int, seed: int, split: str) -> list[dict]:
    """n_items addition problems × 3 strategies, in the reasoning-data artifact's example layout."""
    rng = random.Random(seed)
    out = []
    for i in range(n_items):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        for strategy, body in TEMPLATES.items():
            out.append({"id": f"{split}{i}#{strategy}", "strategy": strategy, "prompt": f"What is {a} plus {b}?",
                        "reasoning": f"[thinking] {body.format(a=a, b=b, s=a + b)} [/endthinking]",
                        "answer": str(a + b), "gold": str(a + b), "verified": True, "source": "synthetic",
                        "source_id": f"{split}{i}", "split": split})
    return out


def spec(lr: float = 5e-3, batch_size: int = 8, target: float = 0.85):
    q = CI.phases.quietstar
    opt = q.baking_optimizer.model_copy(update={"muon_lr": lr, "adamw_lr": lr})
    return q.model_copy(update={"baking_optimizer": opt, "batch_size": batch_size,
                                "format_adherence_target": target})


def setup(seed: int = 0, **overrides):
    tok = make_tokenizer()
    model = make_model(len(tok), seed=seed, **overrides)
    add_thinking_tokens(model, tok, verbose=False)
    return model, tok


def test_synthetic_examples_obey_the_data_format():
    for ex in examples(3, 0, "train"):
        assert check_example(Example.from_dict(ex)) is None


# --- text format and labels ---------------------------------------------------------------------------

def test_format_and_prompt_never_a_target():
    model, tok = setup()
    exs = examples(4, 0, "train")
    enc = [encode_example(tok, ex, 64) for ex in exs]
    batch = pad_batch(enc, tok)
    ids, labels = batch["input_ids"], batch["labels"]
    for row, (ex, e) in enumerate(zip(exs, enc)):
        n = len(e.input_ids)
        text = tok.decode(ids[row, :n].tolist(), skip_special_tokens=False)
        assert text == format_text(ex) + tok.eos_token                # {prompt}\n{reasoning}\nAnswer: {a}<eos>
        assert list(e.prompt) == encode_prompt(tok, ex)
        assert (labels[row, :len(e.prompt)] == IGNORE_INDEX).all()    # never the prompt
        assert (labels[row, n:] == IGNORE_INDEX).all()                # never the padding
        assert torch.equal(labels[row, len(e.prompt):n], ids[row, len(e.prompt):n])
        assert labels[row, n - 1] == tok.eos_token_id
    # the model's loss is exactly the cross-entropy of the continuation tokens
    model.train()
    out = model(ids, labels=labels)
    logits = out.logits.detach()
    targets = [(r, t) for r, e in enumerate(enc) for t in range(len(e.prompt), len(e.input_ids))]
    manual = F.cross_entropy(torch.stack([logits[r, t - 1] for r, t in targets]).float(),
                             torch.tensor([int(ids[r, t]) for r, t in targets]))
    assert torch.allclose(out.lm_loss.detach(), manual, atol=1e-5)
    # the reasoning span used by token accuracy: only [thinking] … [/endthinking]
    span = pad_batch(enc[:1], tok, span="reasoning")["labels"][0]
    kept = span[span != IGNORE_INDEX].tolist()
    assert tok.decode(kept, skip_special_tokens=False) == exs[0]["reasoning"]


def test_long_examples_cut_the_prompt_from_the_left_or_are_dropped():
    model, tok = setup()
    ex = dict(examples(1, 0, "train")[0], prompt="blah " * 80 + "What is 1 plus 2?")
    e = encode_example(tok, ex, 64)
    assert len(e.input_ids) == 64
    assert tok.decode(list(e.prompt), skip_special_tokens=False).endswith("What is 1 plus 2?\n")
    assert tok.decode(list(e.reasoning) + list(e.answer), skip_special_tokens=False) == \
        f"{ex['reasoning']}\nAnswer: {ex['answer']}{tok.eos_token}"
    too_long = dict(ex, reasoning="[thinking] <step> " + "1 + " * 60 + "1 [/endthinking]")
    assert encode_example(tok, too_long, 64) is None
    trainer = BakingTrainer(model, tok, [ex, too_long], batch_size=2, seed=0)
    assert trainer.dropped_too_long == 1 and len(trainer.encoded) == 1


def test_filter_and_splits():
    exs = examples(10, 0, "train")
    assert {e["strategy"] for e in filter_by_strategy(exs, "doubt")} == {"doubt"}
    assert filter_by_strategy(exs, "<mece>") == [e for e in exs if e["strategy"] == "mece"]
    with pytest.raises(Exception):
        filter_by_strategy(exs, "nonsense")
    train, val = train_test_split(exs, 0.2, seed=3)
    assert len(train) + len(val) == len(exs) and val
    assert not {e["source_id"] for e in train} & {e["source_id"] for e in val}   # items never straddle
    tr, va = split_by_field(exs + examples(2, 1, "val"))
    assert len(tr) == 30 and len(va) == 6


def test_parse_output():
    ok = parse_output("[thinking] <step> 3 + 4 = 7 [/endthinking]\nAnswer: 7")
    assert ok.adherent and ok.answer == "7" and ok.strategies == ("step",)
    assert not parse_output("[thinking] 3 + 4 = 7 [/endthinking]\nAnswer: 7").adherent     # no strategy token
    assert not parse_output("[thinking] <step> 3 + 4 = 7\nAnswer: 7").adherent             # never closed
    assert not parse_output("[thinking] <step> 7 [/endthinking]").adherent                  # no answer line
    assert not parse_output("So [thinking] <step> 7 [/endthinking]\nAnswer: 7").adherent    # text before it
    assert not parse_output("[thinking] <step> [thinking] 7 [/endthinking]\nAnswer: 7").adherent
    bare = parse_output("the sum\nAnswer: 7")
    assert not bare.adherent and bare.answer == "7"


def test_select_items_covers_every_strategy():
    items = select_items(examples(10, 0, "val"), 6)
    assert sorted(e["strategy"] for e in items) == sorted(["step", "mece", "doubt"] * 2)


# --- SFT baking on a tiny model -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def baked():
    """The ci profile's model on a 300-token BPE, baked by SFT on 40 items × 3 strategies."""
    model, tok = setup()
    train, val = examples(40, 0, "train"), examples(8, 1, "val")
    records = []
    result = bake(model, tok, train, val, spec(), epochs=14, seed=0, eval_limit=24, max_new_tokens=24,
                  on_epoch=records.append)
    return model, tok, train, val, result, records


def test_sft_baking_raises_format_adherence(baked):
    model, tok, train, val, result, records = baked
    before, after = result.initial_metrics, result.final_metrics
    print(f"format adherence {before[FORMAT_ADHERENCE]:.3f} -> {after[FORMAT_ADHERENCE]:.3f}; token accuracy "
          f"{before[TOKEN_ACCURACY]:.3f} -> {after[TOKEN_ACCURACY]:.3f}; answer accuracy "
          f"{before[ANSWER_ACCURACY]:.3f} -> {after[ANSWER_ACCURACY]:.3f}; epochs {result.epochs_run}")
    assert before[FORMAT_ADHERENCE] <= 0.1
    assert after[FORMAT_ADHERENCE] >= 0.75
    assert after[TOKEN_ACCURACY] > before[TOKEN_ACCURACY] + 0.3
    assert len(records) == result.epochs_run == len(result.history)
    assert [r["epoch"] for r in records] == list(range(1, result.epochs_run + 1))
    assert records[-1]["loss"] < records[0]["loss"]
    assert all("baking/loss" in r and FORMAT_ADHERENCE in r for r in records)
    assert after == records[result.best_epoch - 1]["metrics"]           # the best epoch's weights are returned
    assert result.converged == (after[FORMAT_ADHERENCE] >= result.target)
    assert result.train_examples == len(train) and result.dropped_too_long == 0
    # temperature sampling too, not only greedy decoding: the unbaked model never samples the format
    sampled = evaluate_baking(model, tok, val, limit=24, max_new_tokens=24, temperature=1.0, seed=5)
    unbaked, _ = setup()
    never = evaluate_baking(unbaked, tok, val, limit=24, max_new_tokens=24, temperature=1.0, seed=5)
    print(f"sampled (T=1) format adherence: {never[FORMAT_ADHERENCE]:.3f} unbaked, "
          f"{sampled[FORMAT_ADHERENCE]:.3f} baked (epoch {result.best_epoch} of {result.epochs_run})")
    assert never[FORMAT_ADHERENCE] == 0.0 and sampled[FORMAT_ADHERENCE] >= 0.25


def test_per_strategy_metrics_for_every_strategy_in_the_data(baked):
    model, tok, train, val, result, records = baked
    for metrics in (result.initial_metrics, result.final_metrics, *[r["metrics"] for r in records]):
        for s in {e["strategy"] for e in val}:
            for name in (baking_accuracy(s), f"baking/format_adherence_{s}", f"baking/token_accuracy_{s}",
                         f"baking/strategy_usage_{s}"):
                assert name in metrics and 0.0 <= metrics[name] <= 1.0, name
        absent = set(STRATEGIES) - {e["strategy"] for e in val}
        assert not any(k.endswith(f"_{s}") for k in metrics for s in absent)
        assert metrics["baking/val_accuracy"] == metrics[ANSWER_ACCURACY]


def test_adherence_is_measured_by_unconstrained_sampling(baked):
    """Sampling: generate gets only the prompt `{prompt}\\n` and a plain config (no processor, forced or
    banned tokens). Greedy: every output token is the argmax of the model's own logits on the prompt and
    the tokens before it — nothing forced, nothing reshaped — for prompts of different lengths batched."""
    model, tok, train, val, result, records = baked
    calls = []
    original = model.generate

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    model.generate = spy
    try:
        metrics = evaluate_baking(model, tok, val, limit=6, max_new_tokens=24, temperature=1.0)
        assert calls
        prompts = {tuple(encode_prompt(tok, ex)) for ex in val}
        for args, kwargs in calls:
            assert set(kwargs) == {"generation_config"}, kwargs.keys()
            (ids,) = args
            assert all(tuple(row) in prompts for row in ids.tolist())   # exactly `{prompt}\n`, no [thinking]
            cfg = kwargs["generation_config"]
            assert cfg.do_sample
            for attr in ("forced_bos_token_id", "forced_eos_token_id", "bad_words_ids", "force_words_ids",
                         "suppress_tokens", "begin_suppress_tokens", "sequence_bias", "min_new_tokens",
                         "no_repeat_ngram_size", "constraints"):
                assert not getattr(cfg, attr, None), attr
            assert getattr(cfg, "min_length", 0) in (None, 0)
            assert getattr(cfg, "repetition_penalty", 1.0) in (None, 1.0)
            assert cfg.top_k in (None, 0) and cfg.top_p in (None, 1.0) and cfg.temperature == 1.0
        assert 0.0 <= metrics[FORMAT_ADHERENCE] <= 1.0
    finally:
        del model.generate
    # greedy == argmax of the model's own logits at every step, prompts of different lengths in one batch
    chosen = val[:4]
    prompts = [encode_prompt(tok, ex) for ex in chosen]
    assert len({len(p) for p in prompts}) > 1
    outs = baking.baking_eval.sample_outputs(model, tok, prompts, max_new_tokens=12, temperature=0.0)
    model.eval()
    with torch.no_grad():
        for prompt, out in zip(prompts, outs):
            seq = [*prompt, *out]
            for t in range(len(prompt), len(seq)):
                assert int(model(torch.tensor([seq[:t]])).logits[0, -1].argmax()) == seq[t]
            if len(out) < 12:   # stopped early: the next argmax is eos
                assert int(model(torch.tensor([seq])).logits[0, -1].argmax()) == tok.eos_token_id


def test_short_question_outputs_are_the_greedy_text_with_all_the_room_the_context_leaves(baked):
    """What the checklist's post-Phase-4 test reads: each prompt alone, greedy, up to the end of the context,
    special tokens kept; checklist_passed is exactly "both wrapper tokens in it"; a baked model passes on
    prompts of the kind it was baked on, the unbaked one does not; a prompt that fills the context is refused."""
    model, tok, train, val, result, records = baked
    prompts = ["What is 2 plus 2?", "What is 3 plus 5?", "What is 7 plus 1?"]
    texts = short_question_outputs(model, tok, prompts)
    for prompt, text in zip(prompts, texts):
        ids = encode_prompt(tok, {"prompt": prompt})
        room = model.config.max_seq_len - len(ids)
        (out,) = baking.baking_eval.sample_outputs(model, tok, [ids], max_new_tokens=room, temperature=0.0)
        assert text == tok.decode(out, skip_special_tokens=False) and len(out) <= room
    assert sum(map(checklist_passed, texts)) >= 2
    fresh, fresh_tok = setup()
    assert not any(map(checklist_passed, short_question_outputs(fresh, fresh_tok, prompts)))
    assert checklist_passed("x [thinking] y [/endthinking]") and not checklist_passed("[thinking] y")
    assert not checklist_passed("[/endthinking]") and not checklist_passed("")
    with pytest.raises(InvalidSpecError, match="prompts"):
        short_question_outputs(model, tok, ["word " * model.config.max_seq_len])
    with pytest.raises(InvalidSpecError, match="prompts"):
        short_question_outputs(model, tok, [])


# --- the KL objective -----------------------------------------------------------------------------------

def test_kl_objective_keeps_teacher_bit_identical_and_lowers_kl():
    # A random d-32 model's logits are near uniform, so no prefix could move them; scaled weights make the
    # teacher's predictions depend on its few-shot prefix (window 128 sees all of it), so there is a KL.
    model, tok = setup(window=128, dropout=0.0)
    with torch.no_grad():
        model.embed.weight.mul_(10)
        for p in model.parameters():
            if getattr(p, "af_role", None) == "muon":
                p.mul_(5)
    train, val = examples(8, 0, "train"), examples(2, 1, "val")
    before_weights = {k: v.clone() for k, v in model.state_dict().items()}
    probe_teacher = KLTeacher(model, tok, train[:2], max_new_tokens=12)
    rows = kl_batches(probe_teacher, [encode_example(tok, e, 64) for e in train], seed=123, max_seq_len=64)
    kl_before = mean_kl(probe_teacher, model, tok, rows)
    always_fine = lambda *a, **k: {FORMAT_ADHERENCE: 1.0}     # noqa: E731 — no generation eval needed here
    result = bake(model, tok, train, val, spec(lr=3e-3), epochs=3, seed=0, objective="kl", kl_shots=2,
                  kl_max_new_tokens=12, evaluator=always_fine, evaluate_initial=False)
    teacher = result.teacher
    assert result.teacher_unchanged is True
    for k, v in teacher.model.state_dict().items():
        assert torch.equal(v, before_weights[k]), k                     # bit-identical to the pre-bake model
    assert all(not p.requires_grad for p in teacher.model.parameters())
    assert not all(torch.equal(v, before_weights[k]) for k, v in model.state_dict().items())   # student moved
    kl_after = mean_kl(teacher, model, tok, rows)
    print(f"KL(teacher || student) {kl_before:.4f} -> {kl_after:.4f}")
    assert kl_before > 1e-3
    assert kl_after < 0.75 * kl_before
    assert teacher.prefix[-1] == tok.eos_token_id and len(teacher.shots) == 2


# --- the convergence check and its mitigation -----------------------------------------------------------

def _scripted(values):
    """An evaluator returning the given format adherence values in order (then the last one)."""
    seen = []

    def evaluator(model, tokenizer, examples_, **kwargs):
        seen.append(kwargs)
        v = values[min(len(seen) - 1, len(values) - 1)]
        return {FORMAT_ADHERENCE: v, ANSWER_ACCURACY: 0.0, TOKEN_ACCURACY: 0.0}

    return evaluator, seen


@pytest.mark.parametrize("values, mitigated, converged, best", [
    ([0.0, 0.5, 0.6, 0.7, 0.8, 0.9], True, True, 5),    # below target after 2 epochs, reaches it after
    ([0.0, 0.5, 0.6, 0.6, 0.6, 0.6], True, False, 5),   # below target after the mitigation too (a tie: the later)
    ([0.0, 0.5, 0.85], False, True, 2),                 # exactly at target: no mitigation
    ([0.0, 0.95, 0.9], False, True, 1),                 # the first epoch validated best: its weights come back
    ([0.0, 0.9, 0.5], False, True, 1),                  # a planned epoch reached the target: no mitigation
    ([0.0, 0.5, 0.6, 0.9, 0.4, 0.3], True, True, 3),    # the mitigation's first epoch is the best
])
def test_mitigation_runs_exactly_when_below_target(monkeypatch, values, mitigated, converged, best):
    model, tok = setup()
    evaluator, seen = _scripted(values)
    monkeypatch.setattr(baking, "evaluate_baking", evaluator)          # bake's default evaluator
    records, weights = [], {}
    result = bake(model, tok, examples(4, 0, "train"), examples(1, 1, "val"), spec(target=0.85), epochs=2,
                  seed=0, on_epoch=records.append,
                  on_checkpoint=lambda c: weights.update({c.progress["epoch"]: {
                      k: v.clone() for k, v in model.state_dict().items()}}))
    assert result.mitigated is mitigated and result.converged is converged
    assert result.epochs_run == 2 + (3 if mitigated else 0) == len(records)
    assert len(seen) == 1 + result.epochs_run                          # initial + one validation per epoch
    assert [r["stage"] for r in records] == ["planned"] * 2 + ["mitigation"] * (3 if mitigated else 0)
    planned_lrs = records[0]["lrs"]
    if mitigated:
        assert result.lrs_after_mitigation == [lr * 0.5 for lr in result.lrs_before_mitigation]
        assert result.lrs_before_mitigation == planned_lrs
        assert all(r["lrs"] == [lr * 0.5 for lr in planned_lrs] for r in records[2:])
    else:
        assert result.lrs_before_mitigation is None and all(r["lrs"] == planned_lrs for r in records)
    # the best epoch's weights and validation are the result
    assert result.best_epoch == best and result.restored_best is (best != result.epochs_run)
    assert result.final_metrics == records[best - 1]["metrics"]
    assert result.final_metrics[FORMAT_ADHERENCE] == max(values[1:1 + result.epochs_run])
    assert set(weights) == set(range(1, result.epochs_run + 1))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, weights[best][name]), name
    if best != result.epochs_run:
        assert any(not torch.equal(t, weights[result.epochs_run][n]) for n, t in model.state_dict().items())


# --- checkpoints --------------------------------------------------------------------------------------

def test_baking_resumed_from_an_epoch_checkpoint_ends_exactly_like_an_uninterrupted_run():
    """Killed after any epoch (incl. inside the mitigation), a job that reloads the weights and the
    checkpoint ends with the same weights, history and mitigation decision as one that never stopped."""
    train, val = examples(6, 0, "train"), examples(2, 1, "val")
    s = spec(lr=3e-3, target=1.0)   # never reached: the mitigation runs (1 + 3 epochs)

    def fresh():
        return setup(dropout=0.1)

    model, tok = fresh()
    saved = []
    whole = bake(model, tok, train, val, s, epochs=1, seed=3, eval_limit=3, max_new_tokens=8,
                 on_checkpoint=lambda c: saved.append((c, {k: v.clone() for k, v in model.state_dict().items()})))
    assert whole.mitigated and whole.epochs_run == 4 and len(saved) == 4
    assert [c.progress["epoch"] for c, _ in saved] == [1, 2, 3, 4]
    for cut in (0, 2):                                   # after the planned epoch; inside the mitigation
        ckpt, weights = saved[cut]
        again, tok2 = fresh()
        again.load_state_dict(weights)
        resumed = bake(again, tok2, train, val, s, epochs=1, seed=3, eval_limit=3, max_new_tokens=8, resume=ckpt)
        assert resumed.epochs_run == 4 and resumed.mitigated
        assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
        assert resumed.lrs_after_mitigation == whole.lrs_after_mitigation
        for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
            assert torch.equal(a, b), name


def test_a_resumed_baking_returns_the_same_best_epoch_weights_the_checkpoint_carried(monkeypatch):
    """When an earlier epoch validated best, every later checkpoint carries that epoch's weights; a job
    resumed from any of them ends holding exactly them, as the uninterrupted run does."""
    by_epoch = {0: 0.0, 1: 0.5, 2: 0.7, 3: 0.3, 4: 0.4, 5: 0.2}     # planned 0.5, 0.7: the mitigation runs

    def evaluator(model, tokenizer, examples_, *, seed, **kwargs):
        return {FORMAT_ADHERENCE: by_epoch[seed - 3], ANSWER_ACCURACY: 0.0, TOKEN_ACCURACY: 0.0}

    monkeypatch.setattr(baking, "evaluate_baking", evaluator)
    train, val = examples(6, 0, "train"), examples(2, 1, "val")
    model, tok = setup(dropout=0.1)
    saved = []
    whole = bake(model, tok, train, val, spec(lr=3e-3), epochs=2, seed=3, eval_limit=3, max_new_tokens=8,
                 on_checkpoint=lambda c: saved.append((c, {k: v.clone() for k, v in model.state_dict().items()})))
    assert whole.mitigated and whole.epochs_run == 5 and whole.best_epoch == 2 and whole.restored_best
    assert [c.best_weights is None for c, _ in saved] == [True, True, False, False, False]
    for name, t in saved[2][0].best_weights.items():
        assert torch.equal(t, saved[1][1][name]), name                # epoch 2's weights, carried along
    for cut in (1, 2, 3):
        ckpt, weights = saved[cut]
        again, tok2 = setup(dropout=0.1)
        again.load_state_dict(weights)
        resumed = bake(again, tok2, train, val, spec(lr=3e-3), epochs=2, seed=3, eval_limit=3, max_new_tokens=8,
                       resume=ckpt)
        assert resumed.best_epoch == 2 and resumed.final_metrics == whole.final_metrics
        assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
        for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
            assert torch.equal(a, b), name
    broken = BakingCheckpoint(saved[3][0].progress, saved[3][0].optimizer_state, saved[3][0].rng_state, None)
    again, tok2 = setup(dropout=0.1)
    with pytest.raises(FailedPreconditionError, match="best"):
        bake(again, tok2, train, val, spec(lr=3e-3), epochs=2, seed=3, eval_limit=3, max_new_tokens=8, resume=broken)
