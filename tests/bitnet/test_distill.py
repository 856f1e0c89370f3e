"""The BitNet job's data and QAT loss: one example per row from position 0 with padding never a target, a
held-out NLL blind to the padding, and distillation that moves the student towards the frozen teacher."""

import copy

import torch

from services.bitnet.core.job import distillation_loss, example_batches, heldout_nll, teacher_rows, train_steps
from services.quietstar.core.baking import encode_example, encode_prompt
from shared.model.modeling import IGNORE_INDEX
from tests.quietstar.test_baking import examples, setup

SEQ = 64


def test_each_row_is_one_example_from_its_prompt_and_padding_is_never_a_target():
    model, tok = setup()
    exs = examples(5, 0, "train")
    wanted = [encode_example(tok, ex, SEQ).input_ids for ex in exs]
    batches = example_batches(tok, exs, SEQ, batch_size=4, seed=None)
    assert [len(b["input_ids"]) for b in batches] == [4, 4, 4, 3]
    rows = []
    for b in batches:
        ids, labels = b["input_ids"], b["labels"]
        assert ids.shape == labels.shape and ids.shape[1] == max((labels != IGNORE_INDEX).sum(1))  # longest row
        for i in range(len(ids)):
            n = int((labels[i] != IGNORE_INDEX).sum())
            assert torch.equal(labels[i, :n], ids[i, :n]) and (labels[i, n:] == IGNORE_INDEX).all()
            rows.append(ids[i, :n].tolist())
    assert rows == wanted                                             # in order, each from position 0
    shuffled = [r["input_ids"][i, :int((r["labels"][i] != IGNORE_INDEX).sum())].tolist()
                for r in example_batches(tok, exs, SEQ, batch_size=4, seed=7) for i in range(len(r["input_ids"]))]
    assert shuffled != rows and sorted(shuffled) == sorted(rows)
    assert shuffled == [r["input_ids"][i, :int((r["labels"][i] != IGNORE_INDEX).sum())].tolist()
                        for r in example_batches(tok, exs, SEQ, batch_size=4, seed=7)
                        for i in range(len(r["input_ids"]))]
    assert example_batches(tok, exs, 4, batch_size=4, seed=None) == []   # nothing fits: nothing made up


def _repadded(batches, pad_id):
    return [{"input_ids": torch.where(b["labels"] == IGNORE_INDEX, pad_id, b["input_ids"]), "labels": b["labels"]}
            for b in batches]


def test_the_held_out_nll_counts_the_examples_tokens_only():
    model, tok = setup()
    batches = example_batches(tok, examples(4, 1, "val"), SEQ, batch_size=4, seed=None)
    nll = heldout_nll(model, batches)
    assert abs(heldout_nll(model, _repadded(batches, 5)) - nll) < 1e-5     # what the padding holds is not read
    single = [{"input_ids": b["input_ids"][i:i + 1, :int((b["labels"][i] != IGNORE_INDEX).sum())]}
              for b in batches for i in range(len(b["input_ids"]))]
    tokens = sum(s["input_ids"].shape[1] - 1 for s in single)
    per_row = sum(heldout_nll(model, [s]) * (s["input_ids"].shape[1] - 1) for s in single) / tokens
    assert abs(per_row - nll) < 1e-4                                       # = the rows one by one, unpadded


def test_distillation_moves_the_student_towards_the_teacher_and_ignores_padding():
    teacher, tok = setup(seed=0, dropout=0.0)
    teacher.eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batches = example_batches(tok, examples(4, 2, "train"), SEQ, batch_size=4, seed=0)
    b = batches[0]

    def loss_of(batch):
        student.train()
        with torch.no_grad():
            out = student(batch["input_ids"], labels=batch["labels"])
            return float(distillation_loss(out, teacher, batch["input_ids"], batch["labels"]) - out.halt_loss)

    kl = loss_of(b)
    assert kl > 0 and abs(loss_of(_repadded(batches, 7)[0]) - kl) < 1e-5
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    train_steps(student, batches, 12, opt, teacher=teacher)
    assert loss_of(b) < 0.5 * kl
    assert all(p.grad is None for p in teacher.parameters())      # the teacher stays frozen


def test_teacher_rows_are_the_teachers_own_greedy_continuation_of_each_distinct_prompt():
    """One row per distinct training prompt (its last SEQ // 2 tokens), the teacher's argmax at every new
    position, eos after it when the teacher stopped, never longer than SEQ; mixed into the QAT batches."""
    teacher, tok = setup(seed=0, dropout=0.0)
    teacher.eval()
    exs = examples(6, 3, "train")                       # 3 strategies share each prompt
    rows = teacher_rows(teacher, tok, exs, SEQ, in_format_only=False)
    prompts = sorted({tuple(encode_prompt(tok, ex)[-(SEQ // 2):]) for ex in exs})
    assert len(rows) == len(prompts) == len({ex["prompt"] for ex in exs})
    with torch.no_grad():
        for prompt, row in zip(prompts, rows):
            assert tuple(row[:len(prompt)]) == prompt and len(row) <= SEQ
            stopped = row[-1] == tok.eos_token_id and len(row) > len(prompt)
            end = len(row) - 1 if stopped else len(row)
            for t in range(len(prompt), end):             # each new token is the teacher's argmax
                assert int(teacher(torch.tensor([row[:t]])).logits[0, -1].argmax()) == row[t]
            if stopped:
                assert int(teacher(torch.tensor([row[:-1]])).logits[0, -1].argmax()) == tok.eos_token_id
            else:                                         # ran out of room: exactly SEQ // 2 new tokens
                assert len(row) - len(prompt) == SEQ - SEQ // 2
    mixed = example_batches(tok, exs, SEQ, batch_size=4, seed=1, extra_rows=rows)
    got = sorted(b["input_ids"][i, :int((b["labels"][i] != IGNORE_INDEX).sum())].tolist()
                 for b in mixed for i in range(len(b["input_ids"])))
    assert got == sorted([encode_example(tok, ex, SEQ).input_ids for ex in exs] + rows)
    assert teacher_rows(teacher, tok, [], SEQ) == []
    assert teacher_rows(teacher, tok, exs, SEQ) == []        # an untrained teacher never writes the format


def test_teacher_rows_keep_only_continuations_in_the_format(monkeypatch):
    """By default a continuation is distilled only when it holds one [thinking] … [/endthinking]."""
    import services.quietstar.core.baking_eval as baking_eval

    teacher, tok = setup(seed=0, dropout=0.0)
    exs = examples(3, 4, "train")
    prompts = sorted({tuple(encode_prompt(tok, ex)[-(SEQ // 2):]) for ex in exs})
    good = tok.encode("[thinking] <step> 1 + 1 = 2 [/endthinking]\nAnswer: 2", add_special_tokens=False)
    bad = tok.encode("[thinking] <step> 1 + 1 = 2", add_special_tokens=False)
    scripted = [good if i % 2 == 0 else bad for i in range(len(prompts))]
    monkeypatch.setattr(baking_eval, "sample_outputs", lambda *a, **k: [list(o) for o in scripted])
    rows = teacher_rows(teacher, tok, exs, SEQ)
    assert rows == [[*p, *good, tok.eos_token_id] for i, p in enumerate(prompts) if i % 2 == 0]
    assert len(teacher_rows(teacher, tok, exs, SEQ, in_format_only=False)) == len(prompts)
