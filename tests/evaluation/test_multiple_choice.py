"""Multiple choice: an oracle scores 100%, a wrong-answer model 0, a constant model exactly chance."""

import dataclasses
import math
import random

import pytest

from shared.data.records import Record
from shared.errors import InvalidSpecError
from shared.evaluation import (TEMPLATES, above_chance, evaluate_arc, evaluate_boolq, evaluate_commonsense_qa,
                               evaluate_hellaswag, evaluate_multiple_choice, evaluate_piqa)
from tests.evaluation.fakes import VOCAB, CharTokenizer, PrefixMeanLM, UniformLM, teach

TOK = CharTokenizer()


def mc_records(dataset: str, n: int = 6, n_choices: int = 4, category: str = "qa") -> list[Record]:
    """Items whose choices share leading characters ("blue" / "blur") so an oracle must score whole
    continuations; no choice is a prefix of another, which log-likelihood scoring cannot tell apart."""
    words = ["red", "reed", "blue", "blur", "green", "gray", "grey", "teal"]
    rng = random.Random(dataset)
    records = []
    for i in range(n):
        choices = tuple(rng.sample(words, n_choices))
        records.append(Record(id=f"{dataset}/{i}", dataset=dataset, category=category, split="test",
                              prompt=f"What colour is {dataset} item {i}?", choices=choices,
                              label=i % n_choices))
    return records


def boolq_records(n: int = 6) -> list[Record]:
    records = []
    for i in range(n):
        truth = "true" if i % 3 else "false"
        if i % 2:  # both record shapes the adapter may produce: answer only, or yes/no choices + label
            extra = {"answer": truth}
        else:
            extra = {"answer": truth, "choices": ("no", "yes"), "label": int(truth == "true")}
        records.append(Record(id=f"BoolQ/{i}", dataset="BoolQ", category="qa", split="test",
                              prompt=f"is statement {i} correct", meta={"passage": f"Passage {i}."}, **extra))
    return records


def oracle(records, wrong: bool = False):
    """Teaches the gold continuation of every record (or the next choice after it, when `wrong`)."""
    pairs = []
    for record in records:
        context, continuations, gold = TEMPLATES[record.dataset](record)
        pick = (gold + 1) % len(continuations) if wrong else gold
        pairs.append((context, continuations[pick]))
    return teach(TOK, pairs)


CASES = [
    (evaluate_arc, mc_records("ARC-Easy") + mc_records("ARC-Challenge", n_choices=3)),
    (evaluate_piqa, mc_records("PIQA", n_choices=2, category="commonsense")),
    (evaluate_hellaswag, mc_records("HellaSwag", category="commonsense")),
    (evaluate_boolq, boolq_records()),
    (evaluate_commonsense_qa, mc_records("CommonsenseQA", n_choices=5, category="commonsense")),
]


@pytest.mark.parametrize("evaluate, records", CASES, ids=[c[0].__name__ for c in CASES])
@pytest.mark.parametrize("normalize", ["chars", "length", "none"])
def test_oracle_scores_everything_and_a_wrong_model_nothing(evaluate, records, normalize):
    good = evaluate(oracle(records), TOK, records, normalize=normalize)
    assert good["accuracy"] == 1.0 and good["accuracy_norm"] == 1.0 and good["n"] == len(records)
    assert good["gold_nll"] == pytest.approx(0.0, abs=1e-6)
    bad = evaluate(oracle(records, wrong=True), TOK, records, normalize=normalize)
    assert bad["accuracy"] <= bad["chance"] and bad["accuracy_norm"] <= bad["chance"]
    assert bad["gold_nll"] > 1.0


def test_chance_is_the_mean_inverse_number_of_choices():
    records = mc_records("ARC-Easy", n=4, n_choices=4) + mc_records("ARC-Challenge", n=2, n_choices=2)
    result = evaluate_arc(UniformLM(), TOK, records)
    assert result["chance"] == pytest.approx((4 * 0.25 + 2 * 0.5) / 6)


def test_ties_are_split_so_a_constant_model_scores_exactly_chance():
    # Equal-length choices: a uniform model gives every choice the same score under every normalisation.
    records = [Record(id=f"ARC-Easy/{i}", dataset="ARC-Easy", category="qa", split="test", prompt=f"q{i}",
                      choices=("aaa", "bbb", "ccc", "ddd")[: 2 + i % 3], label=i % 2) for i in range(9)]
    for normalize in ("chars", "length", "none"):
        result = evaluate_arc(UniformLM(), TOK, records, normalize=normalize)
        assert result["accuracy"] == pytest.approx(result["chance"])
        assert result["accuracy_norm"] == pytest.approx(result["chance"])
        assert result["gold_nll"] == pytest.approx(math.log(VOCAB))


def test_each_normalisation_picks_what_it_documents():
    # Uniform model, gold " bbbb" (5 tokens, 4 chars) vs " a" (2 tokens, 1 char); each token costs log V.
    record = Record(id="ARC-Easy/0", dataset="ARC-Easy", category="qa", split="test", prompt="q",
                    choices=("a", "bbbb"), label=1)
    runs = {n: evaluate_arc(UniformLM(), TOK, [record], normalize=n) for n in ("chars", "length", "none")}
    assert all(r["accuracy"] == 0.0 for r in runs.values())  # raw log-likelihood prefers the shorter
    assert runs["chars"]["accuracy_norm"] == 1.0  # -5 log V / 4 chars beats -2 log V / 1 char
    assert runs["length"]["accuracy_norm"] == 0.5  # log V per token either way: a two-way tie
    assert runs["none"]["accuracy_norm"] == 0.0


def test_a_choice_that_is_a_prefix_of_the_gold_ties_with_it():
    # Only continuation tokens are scored, never "the answer ends here" (lm-eval's convention too), so a
    # model sure of " blues" is as sure of " blue": the two split the credit.
    record = Record(id="ARC-Easy/0", dataset="ARC-Easy", category="qa", split="test", prompt="q",
                    choices=("blue", "blues", "red"), label=1)
    assert evaluate_arc(oracle([record]), TOK, [record])["accuracy"] == 0.5


def test_batching_does_not_change_scores():
    records = mc_records("HellaSwag", n=5, category="commonsense")
    model = PrefixMeanLM(seed=1)
    assert (evaluate_hellaswag(model, TOK, records, batch_size=1)
            == evaluate_hellaswag(model, TOK, records, batch_size=7))


def test_limit_takes_the_first_ids_in_natural_order_whatever_the_input_order():
    records = mc_records("ARC-Easy", n=12)
    model = oracle([r for r in records if r.id in ("ARC-Easy/0", "ARC-Easy/1")])
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    assert evaluate_arc(model, TOK, shuffled, limit=2)["accuracy"] == 1.0  # not ARC-Easy/10 or /11
    assert evaluate_arc(model, TOK, shuffled, limit=2) == evaluate_arc(model, TOK, records, limit=2)
    assert evaluate_arc(model, TOK, records)["accuracy"] < 1.0


def test_templates_follow_lm_eval():
    arc = mc_records("ARC-Easy", n=1)[0]
    context, continuations, gold = TEMPLATES["ARC-Easy"](arc)
    assert context == "Question: What colour is ARC-Easy item 0?\nAnswer:"
    assert continuations == [" " + c for c in arc.choices] and gold == arc.label
    context, continuations, gold = TEMPLATES["BoolQ"](boolq_records(1)[0])
    assert context == "Passage 0.\nQuestion: is statement 0 correct?\nAnswer:"
    assert continuations == [" no", " yes"] and gold == 0


def test_wrapper_refuses_another_datasets_records():
    with pytest.raises(InvalidSpecError, match="PIQA"):
        evaluate_arc(UniformLM(), TOK, mc_records("PIQA", n=2, n_choices=2))


@pytest.mark.parametrize("records, kwargs, match", [
    ([], {}, "records"),
    (mc_records("ARC-Easy", n=1), {"normalize": "tokens"}, "normalize"),
    ([Record(id="GSM8K/0", dataset="GSM8K", category="math", split="test", prompt="1+1?", answer="2",
             choices=("1", "2"), label=1)], {}, "dataset"),
    ([Record(id="PIQA/0", dataset="PIQA", category="commonsense", split="test", prompt="goal")], {},
     "choices"),
])
def test_bad_input_is_an_error_naming_the_field(records, kwargs, match):
    with pytest.raises(InvalidSpecError, match=match):
        evaluate_multiple_choice(UniformLM(), TOK, records, **kwargs)


def test_above_chance_is_the_closed_share_of_the_gap_floored_at_zero():
    assert above_chance(0.25, 0.25) == 0.0
    assert above_chance(0.10, 0.25) == 0.0
    assert above_chance(1.0, 0.25) == 1.0
    assert above_chance(0.625, 0.25) == pytest.approx(0.5)
    with pytest.raises(InvalidSpecError, match="chance"):
        above_chance(0.5, 1.0)


def _with_long_choice(record: Record, length: int) -> Record:
    """The record with its first wrong choice padded to `length` characters (one token each here)."""
    choices = list(record.choices)
    wrong = 1 if record.label == 0 else 0
    choices[wrong] = (choices[wrong] * length)[:length]
    return dataclasses.replace(record, choices=tuple(choices))


def test_a_record_with_a_choice_longer_than_the_context_is_left_out_and_counted():
    records = mc_records("PIQA", n=6, n_choices=2, category="commonsense")
    fits = evaluate_piqa(oracle(records), TOK, records, max_length=20)
    assert fits["skipped"] == 0 and fits["n"] == 6
    mixed = records[:4] + [_with_long_choice(r, 25) for r in records[4:]]
    model = oracle(mixed)
    result = evaluate_piqa(model, TOK, mixed, max_length=20)
    alone = evaluate_piqa(model, TOK, mixed[:4], max_length=20)
    assert result["skipped"] == 2 and result["n"] == 4
    assert {k: v for k, v in result.items() if k != "skipped"} == {k: v for k, v in alone.items() if k != "skipped"}


def test_when_no_record_fits_the_benchmark_is_not_measured():
    records = [_with_long_choice(r, 25) for r in mc_records("PIQA", n=3, n_choices=2, category="commonsense")]
    with pytest.raises(InvalidSpecError, match="every one of the 3 records.*max_length"):
        evaluate_piqa(oracle(records), TOK, records, max_length=20)
