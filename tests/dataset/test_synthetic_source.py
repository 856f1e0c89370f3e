"""The procedural arithmetic source: exact answers, checkable rationales, determinism, labelled synthetic."""

from services.dataset.core.synthetic import check_rationale, generate_problems


def test_every_problem_has_an_exact_answer_and_a_valid_step_chain():
    records = generate_problems(300, seed=1)
    assert len({r.id for r in records}) == 300
    assert all(check_rationale(r) for r in records)
    assert all(r.meta["synthetic"] and r.category == "math" and r.answer.lstrip("-").isdigit() for r in records)
    assert all(r.prompt.endswith("now?") for r in records)


def test_the_checker_rejects_a_wrong_step_or_answer():
    r = generate_problems(1, seed=2)[0]
    broken_answer = r.__class__(**{**r.to_dict(), "choices": (), "answer": str(int(r.answer) + 1)})
    assert not check_rationale(broken_answer)
    steps = list(r.meta["steps"])
    lhs, rhs = steps[0].split(" = ")
    steps[0] = f"{lhs} = {int(rhs) + 1}"
    broken_step = r.__class__(**{**r.to_dict(), "choices": (), "meta": {**r.meta, "steps": steps}})
    assert not check_rationale(broken_step)


def test_deterministic_per_seed_and_dataset():
    assert generate_problems(20, seed=3) == generate_problems(20, seed=3)
    assert generate_problems(20, seed=3) != generate_problems(20, seed=4)
    assert generate_problems(5, seed=3, dataset="SVAMP")[0].dataset == "SVAMP"
