"""The 10 strategy builders and the structural validator: built examples pass, tampered ones are rejected —
both when only the text changes and when the structure changes and the text is re-rendered to match."""

import copy
import dataclasses
import random

import pytest

from services.dataset.core.prepare import prepare_datasets
from services.reasoning_data.core.arith import Unsupported, evaluate, fmt
from services.reasoning_data.core.format import STRATEGIES, answers_match, check_example, strategy_token
from services.reasoning_data.core.offline import SOURCES, source_items
from services.reasoning_data.core.strategies import (
    BUILDERS, KIND_OF_SOURCE, SUPPORT, build, code_facts, extract, render, supports, validate_structure,
)
from shared.config import load_profile
from shared.data.records import Record

GSM = Record(
    id="GSM8K/t-1", dataset="GSM8K", category="math", split="train",
    prompt="Alexandra bought 8 magazines on Friday and 12 on Saturday. On Sunday she bought four times the "
           "Friday number. Her dog chewed up 4. How many magazines does she have now?",
    answer="48",
    meta={"calc_rationale": "12+8=<<12+8=20>>20 magazines\n8*4=<<8*4=32>>32 on Sunday\n"
                            "12+8+32=<<12+8+32=52>>52\n52-4=<<52-4=48>>48 left"})
SVAMP = Record(id="SVAMP/t-2", dataset="SVAMP", category="math", split="train",
               prompt="They harvest 66 sacks per day, 25 oranges each. How many oranges after 87 days?",
               answer="143550", meta={"equation": "( ( 66.0 * 87.0 ) * 25.0 )"})
SQA = Record(id="StrategyQA/t-3", dataset="StrategyQA", category="commonsense", split="train",
             prompt="Did the Wehrmacht affect the outcome of the War to End All Wars?", answer="no",
             choices=("no", "yes"), label=0,
             rationale="The War to End All Wars is World War I. World War I ended in 1918. "
                       "The Wehrmacht was formed in 1935.",
             meta={"term": "Wehrmacht", "decomposition": ["What war was the War to End All Wars?",
                                                          "When did #1 end?", "When was the Wehrmacht formed?",
                                                          "Is #3 before #2?"]})
MBPP = Record(id="MBPP/t-4", dataset="MBPP", category="code", split="train",
              prompt="Write a function to add the squares of two numbers.\nYour code should pass this test:\n"
                     "assert add_squares(1, 2) == 5",
              answer="def add_squares(a, b):\n    total = 0\n    for x in (a, b):\n        total += x * x\n"
                     "    return total",
              meta={"tests": ["assert add_squares(1, 2) == 5"]})
HANDMADE = (GSM, SVAMP, SQA, MBPP)


def make(record, strategy, seed=0):
    ex = build(strategy, record, extract(record), random.Random(seed))
    assert not isinstance(ex, str), (record.id, strategy, ex)
    return ex


def rerendered(ex, structure):
    """The example with a tampered structure and the text rendered from it: only the semantic checks can
    tell."""
    return dataclasses.replace(ex, structure=structure, reasoning=render(ex.strategy, structure))


def tampered(ex, change):
    s = copy.deepcopy(ex.structure)
    change(s)
    try:
        return rerendered(ex, s)
    except (KeyError, TypeError, ValueError, IndexError):  # not even renderable: the old text stays
        return dataclasses.replace(ex, structure=s)


# ------------------------------------------------------------------------------------ built examples pass

@pytest.mark.parametrize("record", HANDMADE, ids=lambda r: r.dataset)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_supported_strategy_builds_a_valid_example(record, strategy):
    if not supports(record.dataset, strategy):
        assert build(strategy, record, extract(record), random.Random(0)) == "not_applicable"
        return
    for seed in range(5):
        ex = make(record, strategy, seed)
        assert check_example(ex) is None and validate_structure(ex) is None
        assert strategy_token(strategy) in ex.reasoning and ex.reasoning == render(strategy, ex.structure)
        assert ex.verified and answers_match(ex.answer, record.answer) and ex.gold == record.answer
        assert ex.id == f"{record.id}#{strategy}" and ex.source == record.dataset and ex.origin == "offline"
        assert len(ex.reasoning) < 400


def test_the_support_table_is_explicit():
    assert SUPPORT["math"] == STRATEGIES
    assert set(SUPPORT["choice"]) == {"step", "mece", "falsify", "expert", "uncertain"}
    assert set(SUPPORT["code"]) == {"step", "expert", "doubt"}
    assert set(KIND_OF_SOURCE) == set(SOURCES)
    assert set(BUILDERS) == set(STRATEGIES)
    assert BUILDERS["step"](GSM, extract(GSM), random.Random(0)).strategy == "step"
    assert BUILDERS["bayesian"](SQA, extract(SQA), random.Random(0)) == "not_applicable"
    # an example claiming an unsupported pair is refused by the validator too
    fake = dataclasses.replace(make(SQA, "falsify"), strategy="bayesian", id="StrategyQA/t-3#bayesian")
    assert validate_structure(fake) == "not_applicable"


def test_the_step_chain_is_the_verified_calculator_steps():
    ex = make(GSM, "step")
    assert ex.reasoning == "[thinking] <step> 12+8=20 <step> 8*4=32 <step> 12+8+32=52 <step> 52-4=48 [/endthinking]"
    assert [s["expr"] for s in ex.structure["steps"]] == ["12+8", "8*4", "12+8+32", "52-4"]
    assert make(SVAMP, "step").structure["steps"][0] == {"expr": "66*87", "value": 5742.0}


def test_math_strategy_contents_are_what_they_claim():
    ans = 48.0
    mece = make(GSM, "mece").structure
    assert mece["whole"] == 52 and sorted(p["value"] for p in mece["parts"]) == [4, 48]
    mul = make(SVAMP, "mece").structure   # 5742*25: the whole split into 25 equal parts
    assert mul["parts"][0]["count"] * mul["parts"][0]["value"] == mul["whole"] == 143550
    fal = make(GSM, "falsify").structure
    assert fal["candidate"] != ans and evaluate(fal["candidate_check"]) != 52 and evaluate(fal["answer_check"]) == 52
    orth = make(GSM, "orthogonal").structure
    assert evaluate(orth["route"]) == ans and orth["route"] not in {s["expr"] for s in orth["steps"]}
    bay = make(GSM, "bayesian").structure
    best = bay["posterior"].index(max(bay["posterior"]))
    assert sum(bay["posterior"]) == pytest.approx(1) and bay["candidates"][best] == ans
    multi = make(GSM, "multidomain").structure
    assert {d["domain"] for d in multi["domains"]} >= {"arithmetic", "algebra"}
    cor = make(GSM, "correct").structure
    k = cor["index"]
    assert evaluate(cor["steps"][k]["expr"]) != cor["wrong"]
    assert f"={fmt(cor['wrong'])}. <correct>" in render("correct", cor)
    unc = make(GSM, "uncertain").structure
    assert unc["before"] < unc["after"] and unc["alternative"] != ans
    doubt = make(GSM, "doubt").structure
    assert doubt["index"] < len(doubt["steps"]) - 1           # an earlier value is recomputed
    assert make(GSM, "expert").structure["expert"] == "a math teacher"
    assert make(Record(**{**GSM.__dict__, "prompt": GSM.prompt + " Each costs $2."}), "expert").structure[
        "expert"] == "an accountant"


# ------------------------------------------------------------------------------------ tampering is caught

def _digit_changed(text):
    i = next(i for i, ch in enumerate(text) if ch.isdigit())
    return text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1:]


@pytest.mark.parametrize("record", HANDMADE, ids=lambda r: r.dataset)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_changing_the_text_alone_is_rejected(record, strategy):
    if not supports(record.dataset, strategy):
        return
    ex = make(record, strategy)
    for text in (_digit_changed(ex.reasoning), ex.reasoning.replace("[/endthinking]", "yes [/endthinking]"),
                 ex.reasoning.replace(" ", "  ", 1)):
        assert validate_structure(dataclasses.replace(ex, reasoning=text)) == "text_disagrees_with_structure"


MATH_TAMPERS = {
    "step": [(lambda s: s["steps"][1].update(value=33.0), "step_wrong"),
             (lambda s: s["steps"].pop(), "answer_not_derived"),
             (lambda s: s["steps"][0].update(expr="12 + 8"), "step_not_canonical")],
    "expert": [(lambda s: s.update(expert="a chef"), "wrong_expert")],
    "mece": [(lambda s: s["parts"].pop(), "too_few_parts"),
             (lambda s: s["parts"].append({"expr": "1", "value": 1.0, "count": 1}) or s.update(
                 cover=s["cover"] + "+1"), "parts_do_not_cover"),
             (lambda s: s.update(whole=53.0), "whole_wrong"),
             (lambda s: s.update(parts=[{"expr": "26", "value": 26.0, "count": 2}], cover="2*26"),
              "answer_not_in_partition"),
             (lambda s: s["parts"][0].update(value=-4.0), "bad_part")],
    "falsify": [(lambda s: s.update(candidate=48.0, candidate_check="48+4"), "candidate_is_the_answer"),
                (lambda s: s.update(candidate_check="1+51"), "candidate_not_refuted"),
                (lambda s: s.update(answer_check="26*2"), "answer_not_confirmed")],
    "orthogonal": [(lambda s: s.update(route="52-4"), "route_not_different"),
                   (lambda s: s.update(route="12+8+8*4-5"), "route_wrong")],
    "doubt": [(lambda s: s.update(check="4*2"), "check_is_not_a_recomputation"),
              (lambda s: s.update(index=9), "bad_index")],
    "bayesian": [(lambda s: s.update(posterior=[p * 0.9 for p in s["posterior"]]), "posterior_not_normalised"),
                 (lambda s: s.update(posterior=s["posterior"][::-1]) if s["posterior"] != s["posterior"][::-1]
                  else s.update(posterior=[1 / 3] * 3), "posterior_not_prior_times_likelihood"),
                 (lambda s: s.update(prior=[0.5, 0.5, 0.5]), "prior_not_a_distribution"),
                 (lambda s: s.update(likelihood=[0.9 if q == 0.1 else 0.1 for q in s["likelihood"]]),
                  "likelihood_not_from_check"),
                 (lambda s: s["candidates"].__setitem__(s["candidates"].index(48.0), 47.0), "candidates_wrong")],
    "multidomain": [(lambda s: s.update(domains=s["domains"][:1]), "too_few_domains"),
                    (lambda s: s["domains"][1].update(value=53.0), "algebra_wrong"),
                    (lambda s: s["domains"][1].update(expr="48+5", value=53.0), "algebra_wrong"),
                    (lambda s: s["domains"].append({"domain": "astrology", "expr": "1", "value": 1.0}),
                     "unknown_domain")],
    "correct": [(lambda s: s.update(wrong=s["steps"][s["index"]]["value"]), "wrong_step_is_right"),
                (lambda s: s.pop("wrong"), "malformed_structure"),
                (lambda s: s.update(index=-1), "bad_index")],
    "uncertain": [(lambda s: s.update(after=s["before"]), "confidence_not_raised"),
                  (lambda s: s.update(alternative=48.0, alternative_check="48+4"), "alternative_is_the_answer"),
                  (lambda s: s.update(equation="x+5=52"), "equation_wrong"),
                  (lambda s: s.update(target=53.0), "target_wrong")],
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_tampered_math_structure_is_rejected_even_with_matching_text(strategy):
    assert validate_structure(make(GSM, strategy)) is None
    for seed in range(3):
        ex = make(GSM, strategy, seed)
        for change, reason in MATH_TAMPERS[strategy]:
            bad = tampered(ex, change)
            assert validate_structure(bad) == reason, (strategy, seed, reason, bad.structure)


def test_an_unverified_or_mismatched_math_example_is_rejected():
    ex = make(GSM, "step")
    assert validate_structure(dataclasses.replace(ex, verified=False)) == "math_unverified"
    assert validate_structure(dataclasses.replace(ex, answer="49")) == "answer_not_derived"


CHOICE_TAMPERS = {
    "step": [(lambda s: s.update(questions=[]), "no_decomposition"), (lambda s: s.update(facts=" "), "no_facts")],
    "expert": [(lambda s: s.update(expert="an expert on cooking"), "wrong_expert")],
    "mece": [(lambda s: s.update(cases=["no"]), "cases_not_exhaustive_and_exclusive"),
             (lambda s: s.update(cases=["no", "no"]), "cases_not_exhaustive_and_exclusive")],
    "falsify": [(lambda s: s.update(candidate="no"), "candidate_is_the_answer"),
                (lambda s: s.update(candidate="maybe"), "candidate_is_the_answer")],
    "uncertain": [(lambda s: s.update(after=0.4), "confidence_not_raised"),
                  (lambda s: s.update(before=0.2), "confidence_not_raised")],
}


@pytest.mark.parametrize("strategy", SUPPORT["choice"])
def test_a_tampered_strategyqa_structure_is_rejected(strategy):
    ex = make(SQA, strategy)
    for change, reason in CHOICE_TAMPERS[strategy]:
        assert validate_structure(tampered(ex, change)) == reason
    flipped = tampered(ex, lambda s: s.update(answer="yes"))
    assert validate_structure(flipped) == "answer_not_derived"
    assert validate_structure(dataclasses.replace(flipped, answer="yes")) == "answer_mismatch"  # gold is "no"
    assert validate_structure(tampered(ex, lambda s: s.update(choices=["no", "maybe"]))) == "not_yes_no"


@pytest.mark.parametrize("strategy", SUPPORT["code"])
def test_a_tampered_mbpp_structure_is_rejected(strategy):
    ex = make(MBPP, strategy)
    assert ex.structure["func"] == "add_squares" and ex.structure["params"] == ["a", "b"]
    assert ex.structure["constructs"] == ["loop"] and ex.structure["returns"] == "total"
    for change, reason in [(lambda s: s.update(arity=3), "arity_disagrees_with_code"),
                           (lambda s: s.update(params=["a"]), "params_disagrees_with_code"),
                           (lambda s: s.update(constructs=["recursion"]), "constructs_disagrees_with_code"),
                           (lambda s: s.update(returns="a*a+b*b"), "returns_disagrees_with_code")]:
        assert validate_structure(tampered(ex, change)) == reason
    renamed = dataclasses.replace(ex, answer=ex.answer.replace("def add_squares", "def add_sq"), gold="")
    assert validate_structure(renamed) == "no_tested_function"


def test_mbpp_facts_come_from_the_syntax_tree_without_running_code():
    facts = code_facts("Do it.\nYour code should pass this test:\nassert f(1, k=2) == 3",
                       "import os\ndef helper(x):\n    return x\n"
                       "def f(a, k=0, *rest):\n    if a:\n        return f(a - 1, k)\n    "
                       "return helper([i for i in range(k)])\nos.system('never run')")
    assert facts == {"func": "f", "arity": 2, "params": ["a", "k", "*rest"], "required": 1,
                     "constructs": ["condition", "comprehension", "recursion", "helper helper"],
                     "returns": "helper([i for i in range(k)])"}
    for prompt, code, reason in [
        ("no test shown", "def f(): pass", "no_tested_function"),
        ("x\nYour code should pass this test:\nassert g(1) == 1", "def f(a): return a", "no_tested_function"),
        ("x\nYour code should pass this test:\nassert f(1, 2, 3) == 1", "def f(a): return a", "arity_mismatch"),
        ("x\nYour code should pass this test:\nassert f(1) == 1", "def f(a)\n  return a", "code_unparsable"),
        ("x\nYour code should pass this test:\nassert f(*xs) == 1", "def f(a): return a", "no_tested_function"),
    ]:
        with pytest.raises(Unsupported) as exc:
            code_facts(prompt, code)
        assert exc.value.reason == reason


@pytest.mark.parametrize("record", HANDMADE, ids=lambda r: r.dataset)
def test_the_validator_returns_a_reason_for_any_damaged_structure(record):
    for strategy in SUPPORT[KIND_OF_SOURCE[record.dataset]]:
        ex = make(record, strategy)
        assert validate_structure(dataclasses.replace(ex, structure={})) == "no_structure"
        assert validate_structure(dataclasses.replace(ex, structure={**ex.structure, "kind": "poem"})) == "wrong_kind"
        for key in ex.structure:
            if key == "kind":
                continue
            for damage in ("drop", None, "text", [1], {"a": 1}):
                s = dict(ex.structure)
                if damage == "drop":
                    del s[key]
                else:
                    s[key] = damage
                reason = validate_structure(dataclasses.replace(ex, structure=s))
                assert isinstance(reason, str) and reason, (strategy, key, damage)


# -------------------------------------------------------------------------------------- on the real data

@pytest.fixture(scope="module")
def built(tmp_path_factory, datasets_dir):
    spec = load_profile("ci").phases.datasets.model_copy(
        update={"mirror_dir": str(datasets_dir), "required": list(SOURCES), "optional": [],
                "max_examples_per_dataset": 60})
    out = prepare_datasets(spec, tmp_path_factory.mktemp("strategies") / "data", seed=2).directory
    examples = []
    for record in source_items(out):
        try:
            trace = extract(record)
        except Unsupported:
            continue
        for strategy in SUPPORT[KIND_OF_SOURCE[record.dataset]]:
            ex = build(strategy, record, trace, random.Random(f"{record.id}:{strategy}"))
            if not isinstance(ex, str):
                examples.append(ex)
    return examples


def test_real_examples_pass_and_every_kind_of_tampering_fails(built):
    assert {(e.source, e.strategy) for e in built} == {(s, t) for s in SOURCES
                                                       for t in SUPPORT[KIND_OF_SOURCE[s]]}
    for ex in built:
        assert check_example(ex) is None and validate_structure(ex) is None, ex.id
        assert validate_structure(dataclasses.replace(ex, reasoning=ex.reasoning[:-15] + "x" + ex.reasoning[-15:]))
        if any(ch.isdigit() for ch in ex.reasoning):
            assert validate_structure(dataclasses.replace(ex, reasoning=_digit_changed(ex.reasoning)))
        if KIND_OF_SOURCE[ex.source] == "math":
            assert ex.verified and answers_match(ex.answer, ex.gold)
            s = copy.deepcopy(ex.structure)
            s["steps"][0]["value"] += 1
            assert validate_structure(rerendered(ex, s)) == "step_wrong", ex.id
            s = copy.deepcopy(ex.structure)
            s["steps"][-1]["expr"] = f"{s['steps'][-1]['expr']}+1"
            assert validate_structure(rerendered(ex, s)) in ("step_wrong", "step_not_canonical"), ex.id
