"""GSM8K: answer extraction, an oracle generator scores 100%, a wrong one 0, subsets are deterministic."""

import random

import pytest

from shared.data.records import Record
from shared.errors import InvalidSpecError
from shared.evaluation import evaluate_gsm8k, extract_final_number, fewshot_prefix, gsm8k_prompt
from tests.evaluation.fakes import CharTokenizer, ScriptedGenerator, UniformLM, teach

TOK = CharTokenizer()


@pytest.mark.parametrize("text, number", [
    ("The answer is 1,234.", "1234"),
    ("#### -5", "-5"),
    ("$3.50", "3.5"),
    ("x = 7.0", "7"),
    ("no number here", None),
    ("", None),
    ("16 - 3 - 4 = 9 eggs", "9"),
    ("she had 20 - 5 left", "5"),  # a spaced minus is subtraction, not a sign
    ("so -12 degrees", "-12"),
    ("costs -$1,000.00 in total", "-1000"),
    ("first 3 then 4 #### 18 and later 20", "18"),  # the marker wins over the last number
    ("12 apples, #### and no number after the marker", "12"),
    ("It is 0.25 of it.", "0.25"),
    ("1,234,567 people", "1234567"),
    ("the 2nd step gives 10.", "10"),
])
def test_extract_final_number(text, number):
    assert extract_final_number(text) == number


def gsm8k_records(n: int = 6) -> list[Record]:
    return [Record(id=f"GSM8K/{i}", dataset="GSM8K", category="math", split="test",
                   prompt=f"Tom has {i} apples and buys {i + 2} more. How many?", answer=f"{2 * i + 2:,}",
                   rationale=f"{i} + {i + 2} = {2 * i + 2}") for i in range(n)]


def generator(records, reply, fewshot: str = ""):
    """A greedy-decodable model that answers each record's prompt with reply(record), then eos."""
    return teach(TOK, [(gsm8k_prompt(r.prompt, fewshot), reply(r)) for r in records], eos=True)


def test_oracle_generator_scores_everything():
    records = gsm8k_records()
    model = generator(records, lambda r: f" {r.rationale}\n#### {r.answer}")
    assert evaluate_gsm8k(model, TOK, records, max_new_tokens=64) == {"exact_match": 1.0, "answered": 1.0,
                                                                     "n": 6}


def test_wrong_number_scores_nothing():
    records = gsm8k_records()
    model = generator(records, lambda r: f" #### {int(r.answer) + 1}")
    result = evaluate_gsm8k(model, TOK, records, max_new_tokens=64)
    assert result["exact_match"] == 0.0 and result["answered"] == 1.0


def test_a_model_that_says_nothing_scores_nothing():
    result = evaluate_gsm8k(UniformLM(), TOK, gsm8k_records(2), max_new_tokens=4)
    assert result["exact_match"] == 0.0


def test_output_is_cut_at_the_stop_string():
    # Without the cut the last number would be the invented next question's 99.
    records = gsm8k_records(3)
    model = generator(records, lambda r: f" I think {r.answer}.\n\nQuestion: what about 99")
    assert evaluate_gsm8k(model, TOK, records, max_new_tokens=80)["exact_match"] == 1.0
    assert evaluate_gsm8k(model, TOK, records, max_new_tokens=80, stop=())["exact_match"] == 0.0


def test_decoding_stops_early_at_the_stop_string():
    records = gsm8k_records(1)
    model = generator(records, lambda r: f" {r.answer}\nQuestion: " + "x" * 50)
    evaluate_gsm8k(model, TOK, records, max_new_tokens=60)
    prompt_len = len(gsm8k_prompt(records[0].prompt))
    assert max(shape[1] for _, _, shape in model.calls) < prompt_len + 20


def test_a_model_with_generate_is_decoded_by_its_own_generate():
    records = gsm8k_records(3)
    model = ScriptedGenerator(TOK, {gsm8k_prompt(r.prompt): f" #### {r.answer}" for r in records}).train()
    assert evaluate_gsm8k(model, TOK, records, max_new_tokens=32)["exact_match"] == 1.0
    assert len(model.generate_calls) == 3 and model.training


def test_fewshot_prefix_is_prepended():
    shots = gsm8k_records(2)
    prefix = fewshot_prefix(shots)
    assert prefix.startswith("Question: Tom has 0 apples") and prefix.count("#### ") == 2
    assert prefix.endswith("#### 4\n\n")
    records = gsm8k_records(4)[2:]
    model = generator(records, lambda r: f" #### {r.answer}", fewshot=prefix)
    assert evaluate_gsm8k(model, TOK, records, max_new_tokens=16, fewshot=prefix)["exact_match"] == 1.0
    assert evaluate_gsm8k(model, TOK, records, max_new_tokens=16)["exact_match"] == 0.0


def test_limit_takes_the_first_ids_in_natural_order_whatever_the_input_order():
    records = gsm8k_records(12)
    model = generator(records[:3], lambda r: f" #### {r.answer}")  # only GSM8K/0, /1, /2 are known
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    for order in (records, shuffled, list(reversed(records))):
        assert evaluate_gsm8k(model, TOK, order, max_new_tokens=16, limit=3)["exact_match"] == 1.0
    assert evaluate_gsm8k(model, TOK, records, max_new_tokens=16)["exact_match"] == 0.25


def test_training_mode_is_restored():
    records = gsm8k_records(2)
    model = generator(records, lambda r: f" #### {r.answer}").train()
    evaluate_gsm8k(model, TOK, records, max_new_tokens=16)
    assert model.training and all(not training for training, _, _ in model.calls)


def test_bad_input_is_an_error():
    bad_gold = Record(id="GSM8K/0", dataset="GSM8K", category="math", split="test", prompt="q", answer="n/a")
    with pytest.raises(InvalidSpecError, match="answer"):
        evaluate_gsm8k(UniformLM(), TOK, [bad_gold], max_new_tokens=2)
    with pytest.raises(InvalidSpecError, match="records"):
        evaluate_gsm8k(UniformLM(), TOK, [], max_new_tokens=2)
    with pytest.raises(InvalidSpecError, match="max_new_tokens"):
        evaluate_gsm8k(UniformLM(), TOK, gsm8k_records(1), max_new_tokens=8, max_length=8)


def test_batched_decoding_of_a_model_without_a_cache_equals_one_prompt_at_a_time():
    import torch

    from shared.evaluation import greedy_generate, greedy_generate_many
    from shared.model import TRMTitansMAG
    from tests.model.helpers import tiny_config

    torch.manual_seed(0)
    model = TRMTitansMAG(tiny_config(vocab_size=40, max_seq_len=24))
    prompts = [[3, 5, 7], [1] * 9, [2, 4, 6, 8, 10, 12], [9]]
    alone = [greedy_generate(model, torch.tensor([p]), 6, max_length=12)[0, len(p):].tolist() for p in prompts]
    for batch_size in (1, 3, 4):   # rows of different lengths, right-padded, windows cropped per row
        assert greedy_generate_many(model, prompts, 6, max_length=12, batch_size=batch_size) == alone
    eos = alone[1][2]               # a row that emits eos stops there (its new tokens end before it)
    cut = greedy_generate_many(model, prompts, 6, eos, max_length=12)
    assert cut == [a[:a.index(eos)] if eos in a else a for a in alone] and len(cut[1]) <= 2
