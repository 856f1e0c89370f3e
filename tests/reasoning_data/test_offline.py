"""The offline backend on the real mirror (prepared by the datasets phase): train records only, all 10
strategies, every emitted example well formed and structurally valid, math verified, deterministic."""

import collections
import json
import shutil

import pytest

import services.reasoning_data.core.offline as offline
from services.dataset.core.prepare import prepare_datasets
from services.reasoning_data.core.arith import evaluate, fmt
from services.reasoning_data.core.format import STRATEGIES, Example, check_example
from services.reasoning_data.core.offline import REJECTION_REASONS, SOURCES, OfflineBackend, source_items
from services.reasoning_data.core.strategies import KIND_OF_SOURCE, SUPPORT, is_subquestion, validate_structure
from shared.config import load_profile
from shared.data.prepared import load_split
from shared.data.records import Record
from shared.errors import IntegrityError, InvalidSpecError, NotFoundError

PER_DATASET = 120


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, datasets_dir):
    spec = load_profile("ci").phases.datasets.model_copy(
        update={"mirror_dir": str(datasets_dir), "required": list(SOURCES), "optional": [],
                "max_examples_per_dataset": PER_DATASET})
    return prepare_datasets(spec, tmp_path_factory.mktemp("offline") / "data", seed=3).directory


@pytest.fixture(scope="module")
def records(prepared):
    return source_items(prepared)


@pytest.fixture(scope="module")
def generated(records):
    backend = OfflineBackend()
    return {s: backend.generate(records, s, seed=11) for s in STRATEGIES}


def test_source_items_reads_only_train_records_in_a_fixed_order(prepared, records, monkeypatch):
    assert records and all(r.split == "train" for r in records)
    assert [r.dataset for r in records] == sorted((r.dataset for r in records), key=SOURCES.index)
    for source in SOURCES:
        ids = [r.id for r in records if r.dataset == source]
        assert ids and ids == sorted(ids)
    gsm_test = {r.id for r in load_split(prepared, "GSM8K", "test")} | {r.prompt for r in
                                                                       load_split(prepared, "GSM8K", "test")}
    assert gsm_test and not gsm_test & ({r.id for r in records} | {r.prompt for r in records})
    asked = []
    real = offline.load_split
    monkeypatch.setattr(offline, "load_split", lambda d, n, split: asked.append((n, split)) or real(d, n, split))
    again = source_items(prepared, ["StrategyQA", "GSM8K"])
    assert asked == [("StrategyQA", "train"), ("GSM8K", "train")]
    assert [r.id for r in again] == [r.id for r in records if r.dataset == "StrategyQA"] + \
                                    [r.id for r in records if r.dataset == "GSM8K"]


def test_a_non_train_record_in_a_train_file_is_an_error(prepared, tmp_path):
    bad = tmp_path / "data"
    shutil.copytree(prepared, bad)
    rows = json.loads((bad / "GSM8K_train.json").read_text())
    rows[0]["split"] = "test"
    (bad / "GSM8K_train.json").write_text(json.dumps(rows))
    with pytest.raises(IntegrityError, match="only the train split"):
        source_items(bad)
    with pytest.raises(InvalidSpecError, match="HellaSwag"):
        source_items(prepared, ["HellaSwag"])
    with pytest.raises(NotFoundError):
        source_items(tmp_path / "nowhere", ["GSM8K"])


def test_generate_refuses_unknown_strategies_and_test_records(records):
    backend = OfflineBackend()
    with pytest.raises(InvalidSpecError, match="'ponder'"):
        backend.generate(records[:3], "ponder", seed=0)
    leaked = records[0].with_split("test")
    with pytest.raises(IntegrityError, match="GSM8K test"):
        backend.generate([leaked], "step", seed=0)


def test_every_strategy_yields_valid_examples_and_accounts_for_every_record(records, generated):
    by_source = collections.Counter(r.dataset for r in records)
    total = 0
    for strategy, all_examples in generated.items():
        examples, rejected = [e for e in all_examples[0] if not is_subquestion(e.id)], all_examples[1]
        assert examples, strategy
        total += len(examples)
        assert len(examples) + sum(rejected.values()) == len(records), strategy
        assert rejected["failed_format_check"] == 0 and rejected["failed_structure_check"] == 0
        assert len({e.id for e in examples}) == len(examples)
        unsupported = [s for s in SOURCES if strategy not in SUPPORT[KIND_OF_SOURCE[s]]]
        assert rejected["not_applicable"] == sum(by_source[s] for s in unsupported)
        assert {e.source for e in examples} == set(SOURCES) - set(unsupported), strategy
        for e in all_examples[0]:
            assert e.strategy == strategy and check_example(e) is None and validate_structure(e) is None
            assert e.origin == "offline" and e.verified
    assert total >= 2000


def test_step_adds_a_short_question_per_operator_step_of_each_math_record(records, generated):
    """Each math record's `step` example comes with one "What is <expr>?" per distinct step expression that
    has an operator, taken from its own steps (same source, same split key), answered with that step: the
    question's value, checked, in the step format — and no other strategy adds any."""
    by_id = {r.id: r for r in records}
    steps = {e.source_id: e for e in generated["step"][0] if not is_subquestion(e.id)}
    short = [e for e in generated["step"][0] if is_subquestion(e.id)]
    assert len({e.id for e in short}) == len(short)
    by_source: dict[str, list] = {}
    for e in short:
        by_source.setdefault(e.source_id, []).append(e)
    for source_id, parent in steps.items():
        if KIND_OF_SOURCE[by_id[source_id].dataset] != "math":
            assert source_id not in by_source
            continue
        exprs = [s["expr"] for s in parent.structure["steps"]]
        wanted = list(dict.fromkeys(x for x in exprs if any(op in x.lstrip("-") for op in "+-*/%")))
        got = by_source.get(source_id, [])
        assert [e.prompt for e in got] == [f"What is {x}?" for x in wanted]
        for e in got:    # the id names the step's 1-based position in the parent
            k = int(e.id.rsplit("/q", 1)[1])
            assert e.id == f"{source_id}#step/q{k}" and exprs[k - 1] == e.structure["steps"][0]["expr"]
    assert len(short) > len([s for s in steps if KIND_OF_SOURCE[by_id[s].dataset] == "math"])
    for e in short:
        parent = steps[e.source_id]
        (step,) = e.structure["steps"]
        assert step in parent.structure["steps"] and KIND_OF_SOURCE[e.source] == "math"
        assert e.prompt == f"What is {step['expr']}?" and len(e.prompt) < 60
        assert e.answer == e.gold == fmt(evaluate(step["expr"])) and e.verified
        assert e.reasoning == f"[thinking] <step> {step['expr']}={e.answer} [/endthinking]"
    for strategy, (examples, _) in generated.items():
        assert strategy == "step" or not any(is_subquestion(e.id) for e in examples)


def test_math_answers_are_all_verified_and_unverifiable_items_are_counted(records, generated):
    math_ids = {r.id for r in records if KIND_OF_SOURCE[r.dataset] == "math"}
    gold = {r.id: r.answer for r in records}
    for strategy, (examples, rejected) in generated.items():
        math = [e for e in examples if e.source_id in math_ids and not is_subquestion(e.id)]  # /q: own gold
        assert math and all(e.verified and e.gold == gold[e.source_id] for e in math)
        assert set(rejected) <= set(REJECTION_REASONS) - {"failed_format_check", "failed_structure_check"}
    # the same source items are unusable for every strategy that reaches extraction
    step_rejected = generated["step"][1]
    assert step_rejected["asdiv_algebra"] == generated["doubt"][1]["asdiv_algebra"]


def test_reasoning_is_short(generated):
    lengths = [len(e.reasoning) for examples, _ in generated.values() for e in examples]
    assert sum(n < 400 for n in lengths) >= 0.95 * len(lengths)


def test_generation_is_deterministic_and_independent_of_slicing(records, generated):
    backend = OfflineBackend()
    for strategy in ("bayesian", "correct", "step"):
        again, rejected = backend.generate(records, strategy, seed=11)
        assert [e.to_dict() for e in again] == [e.to_dict() for e in generated[strategy][0]]
        assert rejected == generated[strategy][1]
        half = records[1::2]
        sliced, _ = backend.generate(half, strategy, seed=11)
        wanted = {r.id for r in half}
        assert [e.to_dict() for e in sliced] == [e.to_dict() for e in again if e.source_id in wanted]
    other, _ = backend.generate(records, "bayesian", seed=12)
    assert [e.id for e in other] == [e.id for e in generated["bayesian"][0]]
    assert [e.reasoning for e in other] != [e.reasoning for e in generated["bayesian"][0]]


def test_examples_survive_a_json_round_trip(generated):
    for examples, _ in generated.values():
        for e in examples[:50]:
            back = Example.from_dict(json.loads(json.dumps(e.to_dict())))
            assert back == e and validate_structure(back) is None


def test_unverifiable_or_foreign_items_are_counted_never_emitted():
    def gsm(i, calc, answer):
        return Record(id=f"GSM8K/x-{i}", dataset="GSM8K", category="math", split="train", prompt="How many?",
                      answer=answer, meta={"calc_rationale": calc})

    items = [gsm(1, "<<12+8=20>>20 then <<20*2=40>>40", "40"),      # verifiable
             gsm(2, "<<12+8=21>>21", "21"),                         # the source's arithmetic is wrong
             gsm(3, "<<12+8=20>>20", "25"),                         # the steps do not reach the gold
             gsm(4, "no calculator annotations", "5"),
             Record(id="ARC-Easy/x", dataset="ARC-Easy", category="qa", split="train", prompt="Which?",
                    answer="A", choices=("A", "B"), label=0)]
    for strategy in STRATEGIES:
        examples, rejected = OfflineBackend().generate(items, strategy, seed=0)
        # step: the record's example and one short question per step (12+8, 20*2)
        assert [e.source_id for e in examples] == ["GSM8K/x-1"] * (3 if strategy == "step" else 1), strategy
        assert rejected == collections.Counter({"step_mismatch": 1, "final_mismatch": 1, "no_calc_steps": 1,
                                                "unsupported_source": 1}), strategy
