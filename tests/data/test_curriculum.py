"""Phase 1 curriculum: stages, the category mix, formatting with loss masks, packing, determinism, resume."""

from __future__ import annotations

import json
from collections import Counter
from itertools import islice

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from shared.data.curriculum import (
    DEFAULT_WEIGHTS,
    IGNORE_INDEX,
    STAGES,
    Phase1Dataset,
    format_record,
    stage_for_epoch,
    stage_weights,
)
from shared.data.records import DATASETS, Record
from shared.data.tokenizer import load_gpt2_tokenizer, train_bpe_tokenizer
from shared.errors import FailedPreconditionError, InvalidSpecError
from tests.data import GPT2_DIR, gsm8k_records, mbpp_records, require, wikitext_articles, wikitext_records


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_tokenizer(require(GPT2_DIR))


def math(i: int, split: str = "train") -> Record:
    rationale = f"{i} plus {i} makes {2 * i}." if i % 2 else ""
    return Record(id=f"GSM8K/{i}", dataset="GSM8K", category="math", split=split,
                  prompt=f"What is {i} + {i}?", answer=str(2 * i), rationale=rationale)


def arc(i: int) -> Record:
    return Record(id=f"ARC-Easy/{i}", dataset="ARC-Easy", category="qa", split="train",
                  prompt=f"Which colour is item {i}?", choices=("red", "deep green", "blue"), label=i % 3,
                  answer="ignored: the gold choice's text is used")


def wiki(i: int) -> Record:
    return Record(id=f"WikiText/{i}", dataset="WikiText", category="language", split="train",
                  text=f" The zebra number {i} lives on the plain .\n" * (1 + i % 4))


def mixed(n: int = 60) -> dict[str, list[Record]]:
    return {"GSM8K": [math(i) for i in range(n)], "ARC-Easy": [arc(i) for i in range(n)],
            "WikiText": [wiki(i) for i in range(n)]}


def stream_of(ds: Phase1Dataset, tok) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's documents, concatenated, built record by record with format_record."""
    ids: list[int] = []
    mask: list[int] = []
    for rec in ds.sample_plan():
        i, m = format_record(rec, tok)
        ids += i
        mask += m
    return np.array(ids), np.array(mask, dtype=bool)


def run(ds: Phase1Dataset) -> list[dict[str, torch.Tensor]]:
    return list(ds)


def same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


# -- stages and weights -------------------------------------------------------------------------------
def test_stages_are_the_checklists_datasets():
    assert STAGES[1] == ("GSM8K", "SVAMP", "MBPP")
    assert STAGES[2] == ("ARC-Easy", "ARC-Challenge", "PIQA", "WikiText")
    assert STAGES[3] == ("HotpotQA", "DROP", "HellaSwag", "FineWeb-Edu")
    assert all(name in DATASETS for names in STAGES.values() for name in names)


def test_ten_epochs_are_three_three_four():
    assert [stage_for_epoch(e, 10) for e in range(10)] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 3]


@pytest.mark.parametrize("total", range(3, 41))
def test_stage_schedule_scales_with_the_total(total):
    stages = [stage_for_epoch(e, total) for e in range(total)]
    assert stages == sorted(stages)  # never goes back a stage
    counts = Counter(stages)
    assert set(counts) == {1, 2, 3}
    for stage, share in ((1, 0.3), (2, 0.3), (3, 0.4)):
        assert abs(counts[stage] - share * total) <= 1


def test_short_schedules_and_bad_epochs():
    assert [stage_for_epoch(e, 1) for e in range(1)] == [1]
    assert [stage_for_epoch(e, 2) for e in range(2)] == [1, 2]
    for epoch, total in ((10, 10), (-1, 10), (0, 0)):
        with pytest.raises(InvalidSpecError):
            stage_for_epoch(epoch, total)


def test_stage_weights_renormalise_over_present_categories():
    w = stage_weights(DEFAULT_WEIGHTS, {"math", "code"})
    assert set(w) == {"math", "code"}
    assert sum(w.values()) == pytest.approx(1.0)
    assert w["math"] / w["code"] == pytest.approx(0.4 / 0.1)
    w = stage_weights(DEFAULT_WEIGHTS, ["qa", "commonsense", "language", "math"])
    assert w["qa"] / w["language"] == pytest.approx(3.0) and sum(w.values()) == pytest.approx(1.0)
    assert stage_weights({"math": 1.0, "qa": 0.0}, {"math", "qa"}) == {"math": 1.0}  # zero is dropped


@pytest.mark.parametrize("weights", [{"maths": 1.0}, {"math": -0.1}, {"math": float("nan")}, {"qa": 0.0}])
def test_bad_weights_are_refused(weights):
    with pytest.raises(InvalidSpecError, match="dataset_weights"):
        stage_weights(weights, {"math", "qa"})


# -- formatting -------------------------------------------------------------------------------------
def test_loss_covers_only_answer_and_rationale(tok):
    eos = tok.eos_token
    ids, mask = format_record(math(2), tok)  # no rationale
    assert tok.decode([t for t, m in zip(ids, mask) if not m]) == "What is 2 + 2?\nAnswer:"
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == " 4" + eos
    ids, mask = format_record(math(3), tok)  # rationale first, then the answer, both learned
    assert tok.decode([t for t, m in zip(ids, mask) if not m]) == "What is 3 + 3?\n"
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == "3 plus 3 makes 6.\nAnswer: 6" + eos
    ids, mask = format_record(arc(4), tok)  # multiple choice: the gold choice's text
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == " deep green" + eos
    ids, mask = format_record(wiki(1), tok)  # language: everything
    assert all(mask) and tok.decode(ids) == wiki(1).text + eos


def test_mask_is_a_prefix_of_zeros_then_ones(tok):
    for rec in [math(i) for i in range(10)] + [arc(i) for i in range(10)]:
        ids, mask = format_record(rec, tok)
        assert ids[-1] == tok.eos_token_id and len(ids) == len(mask)
        first = mask.index(1)
        assert set(mask[:first]) == {0} and set(mask[first:]) == {1}


def test_parts_tokenise_as_the_joined_text(tok):
    """Tokenising prompt and target apart gives the tokens of the whole text: no odd split at 'Answer:'."""
    records = gsm8k_records(300) + mbpp_records(100) + [arc(i) for i in range(30)]
    for rec in records:
        ids, _ = format_record(rec, tok)
        assert ids[:-1] == tok.encode(tok.decode(ids[:-1]), add_special_tokens=False), rec.id


# -- packing ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seq_len", [7, 32, 200])
def test_packing_tiles_the_stream_exactly(tok, seq_len):
    """Window k is stream[kL : kL+L+1]; labels are the next tokens, -100 exactly where the mask is 0."""
    ds = Phase1Dataset(mixed(), tok, seq_len=seq_len, seed=3)
    ids, mask = stream_of(ds, tok)
    seqs = run(ds)
    assert len(seqs) == (len(ids) - 1) // seq_len  # only the tail shorter than one window is dropped
    for k, s in enumerate(seqs):
        lo = k * seq_len
        assert s["input_ids"].dtype == torch.long and s["input_ids"].shape == (seq_len,)
        assert s["input_ids"].tolist() == ids[lo:lo + seq_len].tolist()
        target = np.where(mask[lo + 1:lo + seq_len + 1], ids[lo + 1:lo + seq_len + 1], IGNORE_INDEX)
        assert s["labels"].tolist() == target.tolist()


def test_prompts_are_never_targets_and_documents_start_after_eos(tok):
    ds = Phase1Dataset({"ARC-Easy": [arc(i) for i in range(40)]}, tok, seq_len=16, seed=0)
    eos = tok.eos_token_id
    prompt_ids = set(tok.encode("Which colour is item?\nAnswer:", add_special_tokens=False))
    for s in run(ds):
        x, y = s["input_ids"], s["labels"]
        assert not prompt_ids & set(y[y != IGNORE_INDEX].tolist())
        # The first token of a new (QA) document is predicted from eos: it is a prompt token, never learned.
        assert (y[x == eos] == IGNORE_INDEX).all()


def test_mix_follows_the_weights(tok):
    n = 2000
    records = {"GSM8K": [math(i) for i in range(n)], "ARC-Easy": [arc(i) for i in range(n)],
               "WikiText": [wiki(i) for i in range(n)]}
    weights = {"math": 0.5, "qa": 0.3, "language": 0.2, "code": 0.7}  # code is absent: renormalised away
    ds = Phase1Dataset(records, tok, seq_len=64, seed=11, dataset_weights=weights)
    plan = ds.sample_plan()
    assert len(plan) == 3 * n
    share = Counter(r.category for r in plan)
    for cat, want in (("math", 0.5), ("qa", 0.3), ("language", 0.2)):
        assert abs(share[cat] / len(plan) - want) < 0.02
    # Within a category every record is drawn once before any is drawn again.
    maths = [r.id for r in plan if r.category == "math"]
    assert len(set(maths[:n])) == min(n, len(maths))


def test_zero_weight_category_never_appears(tok):
    ds = Phase1Dataset(mixed(), tok, seq_len=32, seed=5, dataset_weights={"math": 1, "qa": 1, "language": 0})
    zebra = set(tok.encode(" zebra", add_special_tokens=False))
    assert all(r.category != "language" for r in ds.sample_plan())
    assert not any(zebra & set(s["input_ids"].tolist()) for s in run(ds))


def test_stage_split_and_checklist_style_inputs(tok, tmp_path):
    records = mixed(20)
    records["GSM8K"] += [math(100 + i, split="val") for i in range(20)]
    ds = Phase1Dataset(records, tok, stage=1, seq_len=32)
    assert {r.dataset for r in ds.sample_plan()} == {"GSM8K"}  # ARC and WikiText are stage 2
    assert all(r.split == "train" for r in ds.sample_plan())
    with pytest.raises(FailedPreconditionError, match="stage 3"):
        Phase1Dataset(records, tok, stage=3)
    # The checklist's form: a list of prepared record files (+ JSONL), datasets by their aliases.
    (tmp_path / "GSM8K_train.json").write_text(json.dumps([r.to_dict() for r in records["GSM8K"]]))
    (tmp_path / "wiki.jsonl").write_text("\n".join(json.dumps(r.to_dict()) for r in records["WikiText"]))
    from_files = Phase1Dataset([tmp_path / "GSM8K_train.json", str(tmp_path / "wiki.jsonl")], tok,
                               dataset_weights=DEFAULT_WEIGHTS, seq_len=32)
    from_dict = Phase1Dataset({"GSM8K": records["GSM8K"], "WikiText-2": records["WikiText"]}, tok, seq_len=32)
    assert same(run(from_files), run(from_dict))


# -- determinism and resume -------------------------------------------------------------------------
def test_same_seed_same_stream_other_seed_or_epoch_differs(tok):
    make = lambda **kw: run(Phase1Dataset(mixed(), tok, seq_len=24, **kw))  # noqa: E731
    base = make(seed=1)
    assert same(base, make(seed=1))
    assert not same(base, make(seed=2))
    assert not same(base, make(seed=1, epoch=1))


@pytest.mark.parametrize("seq_len", [5, 48, 400])
def test_resume_yields_exactly_the_remaining_sequences(tok, seq_len):
    full = run(Phase1Dataset(mixed(), tok, seq_len=seq_len, seed=9, epoch=2))
    for cut in sorted({0, 1, len(full) // 3, len(full) - 1, len(full)}):
        first = Phase1Dataset(mixed(), tok, seq_len=seq_len, seed=9, epoch=2)
        head = list(islice(first, cut))
        state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
        assert all(type(v) is int for v in state.values()) and state["position"] == cut
        again = Phase1Dataset(mixed(), tok, seq_len=seq_len, seed=9)  # epoch comes from the state
        again.load_state_dict(state)
        assert same(head + run(again), full), f"cut at {cut}"


def test_resume_between_batches(tok):
    full = list(Phase1Dataset(mixed(), tok, seq_len=20, seed=4).batches(8))
    first = Phase1Dataset(mixed(), tok, seq_len=20, seed=4)
    it = first.batches(8)
    head = [next(it), next(it)]
    again = Phase1Dataset(mixed(), tok, seq_len=20, seed=4)
    again.load_state_dict(first.state_dict())
    rest = list(again.batches(8))
    assert len(head) + len(rest) == len(full)
    for a, b in zip(head + rest, full):
        assert a["input_ids"].shape[1] == 20 and torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["labels"], b["labels"])
    assert all(b["input_ids"].shape[0] == 8 for b in full[:-1])


def test_finished_epoch_yields_nothing_until_set_epoch(tok):
    ds = Phase1Dataset(mixed(), tok, seq_len=30, seed=1)
    n = len(run(ds))
    assert run(ds) == []
    ds.set_epoch(1)
    assert len(run(ds)) > 0.8 * n


def test_foreign_states_are_refused(tok):
    ds = Phase1Dataset(mixed(), tok, seq_len=30, seed=1)
    state = ds.state_dict()
    for key, value in (("seed", 2), ("seq_len", 31), ("num_records", 7), ("stage", 2)):
        with pytest.raises(FailedPreconditionError, match=key):
            ds.load_state_dict({**state, key: value})
    with pytest.raises(InvalidSpecError, match="state"):
        ds.load_state_dict({"epoch": 0})
    ds.load_state_dict({**state, "draw": 1, "offset": 10_000})
    with pytest.raises(FailedPreconditionError, match="offset"):
        run(ds)


def test_dataloader_in_process_works_and_workers_are_refused(tok):
    ds = Phase1Dataset(mixed(), tok, seq_len=16, seed=2)
    batches = list(DataLoader(ds, batch_size=4, num_workers=0))
    assert batches[0]["input_ids"].shape == (4, 16) and ds.state_dict()["position"] > 0
    ds.set_epoch(0)
    with pytest.raises(FailedPreconditionError, match="num_workers=0"):
        list(DataLoader(ds, batch_size=4, num_workers=1))


def test_real_curriculum_with_a_trained_bpe():
    """Stage 1 + 2 data from the mirror through a 1k BPE: full sequences, ids in range, targets present."""
    records = {"GSM8K": gsm8k_records(400), "MBPP": mbpp_records(100), "WikiText": wikitext_records(n=20)}
    bpe = train_bpe_tokenizer(wikitext_articles("valid"), 1024)
    ds = Phase1Dataset(records, bpe, seq_len=128, seed=42, dataset_weights=DEFAULT_WEIGHTS)
    batches = list(ds.batches(16, drop_last=True))
    assert batches
    for b in batches:
        x, y = b["input_ids"], b["labels"]
        assert x.shape == (16, 128) and 0 <= int(x.min()) and int(x.max()) < len(bpe)
        assert ((y == IGNORE_INDEX) | ((y >= 0) & (y < len(bpe)))).all()
    learned = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches) / sum(b["labels"].numel()
                                                                                  for b in batches)
    assert 0.3 < learned < 1.0  # prompts are masked, rationales/answers/text are not


def test_wikitext_fills_an_absent_fineweb_edu_in_stage_three():
    from shared.data.curriculum import stage_datasets
    from shared.data.records import Record

    wiki = [Record(id="WikiText/1", dataset="WikiText", category="language", split="train", text="some text")]
    hot = [Record(id="HotpotQA/1", dataset="HotpotQA", category="qa", split="train", prompt="q", answer="a")]
    assert "WikiText" in stage_datasets(3, {"WikiText": wiki, "HotpotQA": hot})
    fine = [Record(id="FineWeb-Edu/1", dataset="FineWeb-Edu", category="language", split="train", text="x")]
    assert "WikiText" not in stage_datasets(3, {"WikiText": wiki, "FineWeb-Edu": fine})
    assert "WikiText" in stage_datasets(2, {"WikiText": wiki})
