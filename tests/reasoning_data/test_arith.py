"""The safe arithmetic evaluator and the parsers that turn GSM8K / SVAMP / ASDiv solutions into verified steps."""

import ast
import builtins
import operator
import random

import pytest

from services.dataset.core.prepare import prepare_datasets
from services.reasoning_data.core.arith import (
    MAX_EXPR_CHARS, Unsupported, asdiv_steps, canonical, close, evaluate, fmt, gsm8k_steps, inverse_expr, parse,
    split_top, svamp_steps, to_text,
)
from shared.config import load_profile
from shared.data.prepared import load_split

MATH = ("GSM8K", "SVAMP", "ASDiv")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, datasets_dir):
    spec = load_profile("ci").phases.datasets.model_copy(
        update={"mirror_dir": str(datasets_dir), "required": list(MATH), "optional": []})
    return prepare_datasets(spec, tmp_path_factory.mktemp("arith") / "data", seed=1).directory


@pytest.mark.parametrize("expr, value", [
    ("1+2*3", 7), ("(1+2)*3", 9), ("-4+10", 6), ("-(2+3)*2", -10), ("7/2", 3.5), ("7//2", 3), ("7%3", 1),
    ("2**10", 1024), ("2**-1", 0.5), (".5*10", 5), ("05+1", 6), ("1.05*100", 105), ("  12 + 8  ", 20),
    ("+3", 3), ("10-2-3", 5), ("2**3**2", 512), ("100/8/5", 2.5),
])
def test_evaluates_arithmetic_like_python_does(expr, value):
    assert evaluate(expr) == pytest.approx(value) and isinstance(evaluate(expr), float)


@pytest.mark.parametrize("expr", [
    "x+1", "abs(-3)", "__import__('os').system('true')", "(1).real", "[1, 2][0]", "'a'*3", "1 if 1 else 2",
    "1<2", "True+1", "lambda: 1", "1j*2", "not 1", "~1", "1 << 3", "1 & 3", "f'{1}'", "(1, 2)", "{}", "1; 2",
    "x = 1", "", "   ",
    "2**11", "10**10**10", "9**-50", "(-8)**0.5", "0**-1", "1/0", "5//0", "5%0",
    "9" * 20, "1e300*1e300", "10.0**10*10**10",
    "(" * 500 + "1" + ")" * 500, "1+" * 300 + "1",
])
def test_refuses_anything_but_bounded_arithmetic(expr):
    with pytest.raises(ValueError):
        evaluate(expr)


def test_never_calls_eval_or_exec(monkeypatch):
    def forbidden(*_a, **_k):
        raise AssertionError("the evaluator must not use eval/exec")

    # (compile stays: ast.parse itself compiles source to an AST, never to code that runs)
    for name in ("eval", "exec"):
        monkeypatch.setattr(builtins, name, forbidden)
    assert evaluate("(3+4)*2-1") == 13
    with pytest.raises(ValueError):
        evaluate("__import__('os').getcwd()")


def test_input_length_is_bounded_before_parsing():
    assert evaluate("+".join(["1"] * (MAX_EXPR_CHARS // 2))) == MAX_EXPR_CHARS // 2
    with pytest.raises(ValueError, match="longer than"):
        evaluate("1" + "+1" * MAX_EXPR_CHARS)


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _random_tree(rng, depth):
    if depth == 0 or rng.random() < 0.3:
        return ast.Constant(rng.choice([rng.randint(1, 99), rng.randint(1, 9) / 4]))
    op = rng.choice(list(_OPS))
    return ast.BinOp(left=_random_tree(rng, depth - 1), op=op(), right=_random_tree(rng, depth - 1))


def _value(node):
    if isinstance(node, ast.Constant):
        return float(node.value)
    return _OPS[type(node.op)](_value(node.left), _value(node.right))


def test_rendered_expressions_keep_their_value_and_are_canonical():
    rng = random.Random(3)
    checked = 0
    for _ in range(400):
        tree = _random_tree(rng, 4)
        text = to_text(tree)
        try:
            expected = _value(tree)
        except ZeroDivisionError:
            with pytest.raises(ValueError, match="division by zero"):
                evaluate(text)
            continue
        checked += 1
        assert close(evaluate(text), expected), text
        assert canonical(text) == text                       # to_text writes canonical text
        assert "( " not in text and " " not in text
        assert text.count("(") == text.count(")")
    assert checked > 300


def test_inverse_expression_equals_the_left_operand_only_for_the_right_result():
    rng = random.Random(5)
    for _ in range(300):
        left, right = rng.randint(1, 500), rng.choice(["4", "12", "3+5", "2*7", "10-3", "9/3"])
        op = rng.choice("+-*/")
        expr = f"{left}{op}({right})"
        value = evaluate(expr)
        if float(fmt(value)) != value:  # the check is written with the value as displayed
            continue
        back = inverse_expr(value, op, canonical(right))
        assert close(evaluate(back), left), (expr, back)
        assert not close(evaluate(inverse_expr(value + 1, op, canonical(right))), left)
    assert inverse_expr(48, "-", "4") == "48+4" and inverse_expr(20, "-", "8+32") == "20+(8+32)"
    assert inverse_expr("x", "*", "4") == "x/4" and inverse_expr(-3, "+", "2") == "(-3)-2"
    assert split_top("12+8+32") == ("12+8", "+", "32") and split_top("7//2") is None
    assert split_top("(66*87)*25") == ("66*87", "*", "25")


def test_fmt_writes_numbers_as_the_text_does():
    assert [fmt(x) for x in (20.0, 2.5, -0.0, 1 / 3, 1e12, -7.0)] == ["20", "2.5", "0", "0.333333",
                                                                      "1000000000000", "-7"]


def test_gsm8k_annotations_become_checked_steps():
    text = ("She bought 12+8=<<12+8=20>>20 magazines\nOn Sunday 8*4=<<8*4=32>>32\n"
            "Total <<12+8+32=52>>52, restated <<52=52>>52\nLeft 52-4=<<52-4=48>>48")
    steps = gsm8k_steps(text)
    assert [s.text for s in steps] == ["12+8=20", "8*4=32", "12+8+32=52", "52-4=48"]
    assert [s.claimed for s in steps] == ["20", "32", "52", "48"]
    with pytest.raises(Unsupported) as bad:
        gsm8k_steps(text.replace("<<8*4=32>>", "<<8*4=36>>"))
    assert bad.value.reason == "step_mismatch"
    for broken, reason in [("no annotations here", "no_calc_steps"), ("<<5=5>>", "no_calc_steps"),
                           ("<<a+1=2>>", "unparsable_expression"), ("<<1+1=2=2>>", "unparsable_expression")]:
        with pytest.raises(Unsupported) as exc:
            gsm8k_steps(broken)
        assert exc.value.reason == reason


def test_every_step_of_real_gsm8k_train_records_checks_out(prepared):
    records = load_split(prepared, "GSM8K", "train")
    assert records and all(r.split == "train" for r in records)
    parsed = arrives = 0
    for r in records:
        try:
            steps = gsm8k_steps(r.meta["calc_rationale"])
        except Unsupported as exc:
            assert exc.reason in ("no_calc_steps",), (r.id, exc)  # the mirror's arithmetic is all correct
            continue
        parsed += 1
        for s in steps:
            assert close(evaluate(s.expr), float(s.claimed)) and close(s.value, float(s.claimed))
            assert f"{s.claimed}" in r.meta["calc_rationale"]
        arrives += close(steps[-1].value, float(r.answer))
    assert parsed >= 0.95 * len(records)
    assert arrives >= 0.9 * parsed


def test_svamp_equations_become_steps_innermost_first():
    steps = svamp_steps("( ( 66.0 * 87.0 ) * 25.0 )")
    assert [s.text for s in steps] == ["66*87=5742", "5742*25=143550"]
    steps = svamp_steps("( ( 4.0 + 6.0 ) * ( 10.0 - 3.0 ) )")
    assert [s.text for s in steps] == ["4+6=10", "10-3=7", "10*7=70"]
    assert [s.text for s in svamp_steps("( 87.0 - 24.0 - 45.0 )")] == ["87-24-45=18"]
    with pytest.raises(Unsupported):
        svamp_steps("8.0")


def test_real_svamp_and_asdiv_steps_compute_their_formula(prepared):
    for name in ("SVAMP", "ASDiv"):
        records = load_split(prepared, name, "train")
        ok = 0
        for r in records:
            try:
                steps = svamp_steps(r.meta["equation"]) if name == "SVAMP" else \
                    asdiv_steps(r.rationale, r.meta.get("solution_type", ""))
            except Unsupported as exc:
                assert exc.reason in ("no_calc_steps", "unparsable_expression", "step_mismatch", "asdiv_algebra",
                                      "asdiv_unsupported_formula"), exc
                continue
            ok += 1
            for s in steps:          # each step only combines numbers, and is its own value
                assert all(isinstance(n, (ast.Constant, ast.BinOp, ast.operator, ast.UnaryOp, ast.unaryop))
                           for n in ast.walk(parse(s.expr)))
                assert close(evaluate(s.expr), s.value)
            if name == "SVAMP":
                assert close(steps[-1].value, evaluate(r.meta["equation"]))
        assert ok >= 0.75 * len(records), name


@pytest.mark.parametrize("formula, kind, expected", [
    ("25+15+5=45", "Sum", ["25+15+5=45"]),
    ("(49-16)-11=22", "Subtraction", ["49-16=33", "33-11=22"]),
    ("87-24-45=18", "TVQ-Final", ["87-24-45=18"]),
    ("69-(3*2)-(5*3)=48", "Subtraction", ["3*2=6", "5*3=15", "69-6-15=48"]),
    ("(7*60 (min/hour) + 20 (min))-(6*60 (min/hour)) = 80 (min); 80/2 (min) = 40 (min)", "Subtraction",
     ["7*60=420", "420+20=440", "6*60=360", "440-360=80", "80/2=40"]),
    ("119/9=13 r2", "Floor-Division", ["119%9=2", "119//9=13"]),
    ("7/3=2 r1", "Surplus", ["7//3=2", "7%3=1"]),
    ("9/6=1 r3", "Ceil-Division", ["9//6=1", "9%6=3", "1+1=2"]),
])
def test_asdiv_formulas_become_steps(formula, kind, expected):
    assert [s.text for s in asdiv_steps(formula, kind)] == expected


@pytest.mark.parametrize("formula, reason", [
    ("x:The cost of tuition; y:The cost of room; x+y=2584; x=y+704", "asdiv_algebra"),
    ("a:The shorter piece; a+(a+10)=40", "asdiv_algebra"),
    ("GCD(39,26)=13", "asdiv_unsupported_formula"),
    ("LCM[18,9]=18", "asdiv_unsupported_formula"),
    ("99+99=198 cents", "asdiv_unsupported_formula"),
    ("12+3=16", "step_mismatch"),
    ("2:3", "asdiv_unsupported_formula"),
    ("", "no_calc_steps"),
])
def test_asdiv_formulas_that_are_not_checkable_arithmetic_are_named(formula, reason):
    with pytest.raises(Unsupported) as exc:
        asdiv_steps(formula, "")
    assert exc.value.reason == reason
