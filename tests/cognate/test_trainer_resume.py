"""The Cognate training loop: a job killed mid-epoch resumes from its last checkpoint and its loss curve
matches the uninterrupted one; loss falls; a checkpoint of another spec is refused."""

import threading

import pytest
import torch

from services.cognate.core.trainer import Segment, Trainer
from shared.config import load_profile
from shared.data.records import Record
from shared.errors import FailedPreconditionError
from shared.data.tokenizer import train_bpe_tokenizer
from shared.model import TRMTitansMAG, TRMTitansMAGConfig
from shared.optim import MuonGrokfast
from shared.runtime.context import JobContext, JobRequest
from shared.runtime.events import EventLog
from shared.storage import LocalStore

CI = load_profile("ci").phases.cognate


def corpus():
    texts = [f"the {w} sat on the mat number {i} and counted {i * 3} apples" for i, w in
             enumerate(["cat", "dog", "owl", "fox", "ant", "bee"] * 20)]
    records = {"GSM8K": [Record(id=f"GSM8K/{i}", dataset="GSM8K", category="math", split="train",
                                prompt=f"What is {i} + {i}?", answer=str(2 * i)) for i in range(120)],
               "WikiText": [Record(id=f"WikiText/{i}", dataset="WikiText", category="language", split="train",
                                   text=t) for i, t in enumerate(texts)]}
    tok = train_bpe_tokenizer(texts + [r.prompt for r in records["GSM8K"]], 300)
    return records, tok


def model_for(tok, **changes):
    torch.manual_seed(0)
    cfg = TRMTitansMAGConfig.from_profile(CI.model.model_copy(update={"vocab_size": len(tok), **changes}),
                                          act_threshold=0.9)
    return TRMTitansMAG(cfg)


def make_ctx(tmp_path, spec=CI):
    return JobContext(job_id="cognate-test", request=JobRequest(request_id="r-resume", phase="cognate"), spec=spec,
                      store=LocalStore(tmp_path / "store"), events=EventLog(), cancel_event=threading.Event())


SEG = Segment(name="warmup", seed=3, weights={"math": 0.5, "language": 0.5}, first_step=0, last_step=8,
              steps_per_epoch=4, total_epochs=2)


def run(tmp_path, records, tok, *, crash_at=None, ctx=None):
    model = model_for(tok)
    opt = MuonGrokfast.phase1(model.named_parameters(), qk_modules=model.qk_clip_modules(), max_grad_norm=1.0)

    def on_step(info):
        assert info.tokens_per_s > 0 and info.memory_mb > 0 and info.segment is SEG
        assert info.epoch_end == ((info.step + 1) % SEG.steps_per_epoch == 0)
        if crash_at is not None and info.step == crash_at:
            raise KeyboardInterrupt("simulated kill")

    torch.manual_seed(SEG.seed)
    trainer = Trainer(model, opt, records, tok, seq_len=32, batch_size=2, n_sup=1, checkpoint_every=2, ctx=ctx,
                      on_step=on_step)
    return trainer.run(SEG), model


def test_a_killed_job_resumes_and_its_loss_curve_matches(tmp_path):
    records, tok = corpus()
    full, full_model = run(tmp_path / "a", records, tok, ctx=make_ctx(tmp_path / "a"))
    ctx = make_ctx(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", records, tok, crash_at=5, ctx=ctx)
    resumed, resumed_model = run(tmp_path / "b", records, tok, ctx=ctx)
    assert resumed.resumed_from == 4 and ctx.resumed_from_step == 3   # the step-3 checkpoint: one interval lost
    assert len(resumed.losses) == len(full.losses) == 8
    assert resumed.losses == pytest.approx(full.losses, rel=1e-4, abs=1e-4)
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_training_lowers_the_loss(tmp_path):
    records, tok = corpus()
    seg = Segment(name="warmup", seed=1, weights={"math": 0.5, "language": 0.5}, first_step=0, last_step=40,
                  steps_per_epoch=20, total_epochs=2)
    model = model_for(tok)
    opt = MuonGrokfast.phase1(model.named_parameters(), qk_modules=model.qk_clip_modules(), max_grad_norm=1.0,
                              muon_lr=3e-3, adamw_lr=3e-3)
    result = Trainer(model, opt, records, tok, seq_len=32, batch_size=4, n_sup=1, checkpoint_every=0).run(seg)
    assert sum(result.losses[-5:]) / 5 < sum(result.losses[:5]) / 5 - 0.3


def test_a_checkpoint_written_for_another_spec_is_refused(tmp_path):
    records, tok = corpus()
    ctx = make_ctx(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, records, tok, crash_at=3, ctx=ctx)
    other = make_ctx(tmp_path, spec=CI.model_copy(update={"batch_size": CI.batch_size + 1}))
    with pytest.raises(FailedPreconditionError, match="refusing to resume"):
        run(tmp_path, records, tok, ctx=other)


def test_out_of_memory_halves_the_micro_batch_and_doubles_accumulation(tmp_path, monkeypatch):
    records, tok = corpus()
    model = model_for(tok)
    opt = MuonGrokfast.phase1(model.named_parameters(), qk_modules=model.qk_clip_modules(), max_grad_norm=1.0)
    trainer = Trainer(model, opt, records, tok, seq_len=32, batch_size=4, accumulation=1, n_sup=1,
                      checkpoint_every=0)
    real = Trainer._train_step
    seen = []

    def flaky(self, micro):
        seen.append([len(g) for g in micro])
        if len(micro[0]) > 1:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return real(self, micro)

    monkeypatch.setattr(Trainer, "_train_step", flaky)
    seg = Segment(name="warmup", seed=1, weights={"math": 1.0}, first_step=0, last_step=3, steps_per_epoch=3,
                  total_epochs=1)
    result = trainer.run(seg)
    assert seen[:3] == [[4], [2, 2], [1, 1, 1, 1]]          # same 4 sequences, ever smaller micro-batches
    assert trainer.batch_size == 1 and trainer.accumulation == 4
    assert [e["batch_size"] for e in trainer.oom_events] == [2, 1]
    assert len(result.losses) == 3 and all(l == l for l in result.losses)


def test_accumulated_micro_batches_give_the_full_batch_gradient(tmp_path):
    records, tok = corpus()
    ids = torch.randint(0, len(tok), (4, 16))
    drawn = [{"input_ids": ids[i], "labels": ids[i]} for i in range(4)]
    grads = []
    for groups in ([drawn], [drawn[:2], drawn[2:]]):
        model = model_for(tok, dropout=0.0)   # dropout masks would differ between the two splits
        model.train()
        captured = {}

        class Probe:
            def step(self):
                captured.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

            def zero_grad(self, set_to_none=True):
                model.zero_grad(set_to_none=True)

        torch.manual_seed(0)
        Trainer(model, Probe(), records, tok, seq_len=16, batch_size=4, n_sup=1, checkpoint_every=0)._train_step(groups)
        grads.append(captured)
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5), name


class _GradProbe:
    """An optimizer stand-in that records the gradients it is asked to step with (and how often)."""

    def __init__(self, model):
        self.model, self.grads, self.steps = model, {}, 0

    def step(self):
        self.steps += 1
        self.grads = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=True)


def _masked_batch(tok, targets_per_row: list[int]):
    """Rows of 16 tokens whose labels keep only the last k tokens of row i (k = targets_per_row[i])."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, len(tok), (len(targets_per_row), 16), generator=g)
    labels = torch.full_like(ids, -100)
    for i, k in enumerate(targets_per_row):
        if k:
            labels[i, -k:] = ids[i, -k:]
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(len(targets_per_row))]


@pytest.mark.parametrize("split", [[2, 2], [1, 3], [1, 1, 1, 1]])
def test_any_split_of_a_masked_batch_gives_the_full_batch_loss_and_gradient(split):
    """Losses are per target token of the effective batch: micro-batches with different target counts (and
    one with none) add up to the whole batch's loss and gradient, as out-of-memory recovery promises."""
    records, tok = corpus()
    drawn = _masked_batch(tok, [0, 3, 16, 9])
    losses, grads = [], []
    for sizes in ([4], split):
        groups, at = [], 0
        for n in sizes:
            groups.append(drawn[at:at + n])
            at += n
        model = model_for(tok, dropout=0.0)
        model.train()
        probe = _GradProbe(model)
        torch.manual_seed(0)
        losses.append(Trainer(model, probe, records, tok, seq_len=16, batch_size=4, n_sup=2,
                              checkpoint_every=0)._train_step(groups))
        grads.append(probe.grads)
    assert losses[0] > 0 and losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5), name


def test_a_batch_of_prompt_tokens_only_has_no_loss_and_changes_nothing():
    records, tok = corpus()
    model = model_for(tok, dropout=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    probe = _GradProbe(model)
    trainer = Trainer(model, probe, records, tok, seq_len=16, batch_size=2, n_sup=2, checkpoint_every=0)
    assert trainer._train_step([_masked_batch(tok, [0, 0])]) is None     # not a loss of 0
    assert probe.steps == 0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_a_prompt_only_step_is_left_out_of_the_loss_curve(monkeypatch):
    records, tok = corpus()
    real = Trainer._train_step
    count = [0]

    def second_is_prompt_only(self, micro):
        count[0] += 1
        if count[0] == 2:
            micro = [[{"input_ids": d["input_ids"], "labels": torch.full_like(d["labels"], -100)} for d in g]
                     for g in micro]
        return real(self, micro)

    monkeypatch.setattr(Trainer, "_train_step", second_is_prompt_only)
    model = model_for(tok)
    seen = []
    trainer = Trainer(model, MuonGrokfast.phase1(model.named_parameters()), records, tok, seq_len=32,
                      batch_size=2, n_sup=1, checkpoint_every=0, on_step=seen.append)
    seg = Segment(name="warmup", seed=1, weights={"math": 1.0}, first_step=0, last_step=4, steps_per_epoch=4,
                  total_epochs=1)
    result = trainer.run(seg)
    assert [info.step for info in seen] == [0, 1, 2, 3]                  # every step is still reported
    assert [info.loss is None for info in seen] == [False, True, False, False]
    assert result.losses == [info.loss for info in seen if info.loss is not None] and len(result.losses) == 3


def _nan_at(monkeypatch, calls: set[int]):
    """Make the listed _train_step calls (0-based, counted over the whole test) report a NaN loss."""
    real = Trainer._train_step
    count = [0]

    def sometimes_nan(self, micro):
        loss = real(self, micro)
        count[0] += 1
        return float("nan") if count[0] - 1 in calls else loss

    monkeypatch.setattr(Trainer, "_train_step", sometimes_nan)


def test_a_non_finite_loss_rolls_back_to_the_last_checkpoint_and_halves_the_learning_rate(tmp_path, monkeypatch):
    records, tok = corpus()
    _nan_at(monkeypatch, {5})
    ctx = make_ctx(tmp_path)
    model = model_for(tok)
    opt = MuonGrokfast.phase1(model.named_parameters(), qk_modules=model.qk_clip_modules(), max_grad_norm=1.0)
    lrs = [g["lr"] for g in opt.param_groups]
    trainer = Trainer(model, opt, records, tok, seq_len=32, batch_size=2, n_sup=1, checkpoint_every=2, ctx=ctx)
    result = trainer.run(SEG)
    assert trainer.mitigations == [{"segment": "warmup", "issue": "NonFiniteLossError", "at_step": 5,
                                    "rolled_back_to": 4, "lr_scale": 0.5}]
    assert len(result.losses) == 8 and all(loss == loss for loss in result.losses)   # the NaN step was redone
    assert [g["lr"] for g in opt.param_groups] == [lr / 2 for lr in lrs]
    assert ctx.latest_checkpoint().state["lr_scale"] == 0.5     # a restart keeps the lower rate


def test_a_loss_that_stays_non_finite_stops_after_three_halvings_and_without_a_checkpoint_at_once(tmp_path,
                                                                                                 monkeypatch):
    records, tok = corpus()
    _nan_at(monkeypatch, set(range(5, 100)))
    model = model_for(tok)
    opt = MuonGrokfast.phase1(model.named_parameters(), qk_modules=model.qk_clip_modules(), max_grad_norm=1.0)
    trainer = Trainer(model, opt, records, tok, seq_len=32, batch_size=2, n_sup=1, checkpoint_every=2,
                      ctx=make_ctx(tmp_path))
    with pytest.raises(FailedPreconditionError, match="after 3 learning-rate halvings"):
        trainer.run(SEG)
    assert [m["lr_scale"] for m in trainer.mitigations] == [0.5, 0.25, 0.125]
    fresh = model_for(tok)
    bare = Trainer(fresh, MuonGrokfast.phase1(fresh.named_parameters()), records, tok, seq_len=32,
                   batch_size=2, n_sup=1, checkpoint_every=0)
    with pytest.raises(FailedPreconditionError, match="no checkpoint of this segment to roll back to"):
        bare.run(SEG)
