"""Safe arithmetic for the offline backend: an evaluator that never runs code, and parsers that turn the
datasets' worked solutions into verified steps.

`evaluate` walks Python's AST and accepts numbers, parentheses, unary +/- and the binary operators
+ - * / // % ** (small exponents) — nothing else: no names, calls, attributes, subscripts, strings or
comparisons; oversized inputs and results are refused. Every step the parsers return was evaluated here,
so a step is "verified" when its source's claimed result equals the evaluated one.

    GSM8K   "... 12+8=<<12+8=20>>20 ..."         one step per calculator annotation (claimed 20, checked)
    SVAMP   "( ( 66.0 * 87.0 ) * 25.0 )"         one step per operation, innermost first (66*87=5742, …)
    ASDiv   "25+15+5=45", "(49-16)-11=22",       each equation's left side as steps, its right side the
            "9/6=1 r3"                           claim; a remainder form becomes // and % steps
Algebra (ASDiv "x:…; x+y=2584; x=y+704"), GCD/LCM and other non-arithmetic formulas raise `Unsupported`
with a named reason, which the backend counts.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable

__all__ = [
    "MAX_EXPONENT", "MAX_EXPR_CHARS", "MAX_MAGNITUDE", "REASONS", "Step", "Unsupported", "close", "evaluate", "fmt",
    "asdiv_steps", "canonical", "expression_steps", "gsm8k_steps", "inverse_expr", "parse", "split_top",
    "svamp_steps", "to_text",
]

MAX_EXPR_CHARS = 400      # longer inputs are refused before parsing (deep nesting cannot exhaust the stack)
MAX_EXPONENT = 10         # |exponent| of ** at most this
MAX_MAGNITUDE = 1e15      # every intermediate and final |value| at most this

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_SYMBOL: dict[type, str] = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
                            ast.Mod: "%", ast.Pow: "**"}
_OP_OF: dict[str, type] = {v: k for k, v in _SYMBOL.items()}
_PRECEDENCE: dict[type, int] = {ast.Add: 1, ast.Sub: 1, ast.Mult: 2, ast.Div: 2, ast.FloorDiv: 2, ast.Mod: 2,
                                ast.Pow: 4}
_NON_ASSOCIATIVE = (ast.Sub, ast.Div, ast.FloorDiv, ast.Mod)
# A leading zero ("05") is a syntax error in Python 3 but an ordinary number in the datasets.
_LEADING_ZEROS = re.compile(r"(?<![\d.])0+(?=\d)")


# The reasons `Unsupported` carries (counted rejections of the offline backend).
REASONS: tuple[str, ...] = ("no_calc_steps", "unparsable_expression", "step_mismatch", "asdiv_algebra",
                            "asdiv_unsupported_formula")


class Unsupported(ValueError):
    """A formula this module does not turn into steps; `reason` is the counted rejection name."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def close(a: float, b: float) -> bool:
    """The one numeric equality used for verification (the same tolerance as format.answers_match)."""
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def fmt(value: float) -> str:
    """A number as the reasoning text writes it: integers without ".0", others with at most 6 decimals."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value}")
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def parse(expr: str) -> ast.expr:
    """The expression's AST after checking its size and that only arithmetic nodes occur."""
    if not isinstance(expr, str):
        raise ValueError(f"not an expression: {expr!r}")
    text = expr.strip()
    if not text:
        raise ValueError("empty expression")
    if len(text) > MAX_EXPR_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPR_CHARS} characters")
    try:
        tree = ast.parse(_LEADING_ZEROS.sub("", text), mode="eval")
    except (SyntaxError, MemoryError, RecursionError) as exc:
        raise ValueError(f"not an arithmetic expression: {expr!r} ({exc.__class__.__name__})") from None
    for node in ast.walk(tree.body):
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                raise ValueError(f"operator {node.op.__class__.__name__} is not allowed")
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd)):
                raise ValueError(f"operator {node.op.__class__.__name__} is not allowed")
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise ValueError(f"constant {node.value!r} is not a number")
        elif not isinstance(node, (ast.operator, ast.unaryop)):
            raise ValueError(f"{node.__class__.__name__} is not allowed in an arithmetic expression")
    return tree.body


def _eval(node: ast.expr) -> float:
    if isinstance(node, ast.Constant):
        value = node.value
    elif isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand)
        value = -operand if isinstance(node.op, ast.USub) else operand
    elif isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            if abs(right) > MAX_EXPONENT:
                raise ValueError(f"exponent {right} exceeds {MAX_EXPONENT}")
            if left == 0 and right < 0:
                raise ValueError("zero to a negative power")
            if left < 0 and right != int(right):
                raise ValueError("a negative number to a fractional power")
        elif isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ValueError("division by zero")
        try:
            value = _BINOPS[type(node.op)](left, right)
        except (OverflowError, ZeroDivisionError, ArithmeticError) as exc:
            raise ValueError(f"arithmetic error: {exc}") from None
    else:  # parse() let nothing else through
        raise ValueError(f"{node.__class__.__name__} is not allowed")
    value = float(value)
    if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise ValueError(f"value out of range (|x| > {MAX_MAGNITUDE:g})")
    return value


def evaluate(expr: str) -> float:
    """The value of an arithmetic expression as a float; ValueError for anything that is not one."""
    return _eval(parse(expr))


def to_text(node: ast.expr) -> str:
    """An arithmetic AST as compact text with only the parentheses it needs ("(12+8)*3")."""
    if isinstance(node, ast.Constant):
        return fmt(float(node.value))
    if isinstance(node, ast.UnaryOp):
        inner = to_text(node.operand)
        if isinstance(node.operand, ast.BinOp):
            inner = f"({inner})"
        return ("-" if isinstance(node.op, ast.USub) else "+") + inner
    if isinstance(node, ast.BinOp):
        p = _PRECEDENCE[type(node.op)]
        left, right = to_text(node.left), to_text(node.right)
        if _needs_parens(node.left, p, is_right=False, op=node.op):
            left = f"({left})"
        if _needs_parens(node.right, p, is_right=True, op=node.op):
            right = f"({right})"
        return f"{left}{_SYMBOL[type(node.op)]}{right}"
    raise ValueError(f"{node.__class__.__name__} is not arithmetic")


def _needs_parens(child: ast.expr, parent_precedence: int, *, is_right: bool, op: ast.operator) -> bool:
    if isinstance(child, ast.Constant):
        return child.value < 0  # "3--2" would be legal Python but is unreadable
    if isinstance(child, ast.UnaryOp):
        return True
    if not isinstance(child, ast.BinOp):
        return False
    p = _PRECEDENCE[type(child.op)]
    if isinstance(op, ast.Pow):
        return p <= parent_precedence if not is_right else p < parent_precedence
    if p < parent_precedence:
        return True
    return is_right and p == parent_precedence and (isinstance(op, _NON_ASSOCIATIVE) or
                                                    isinstance(child.op, _NON_ASSOCIATIVE))


def canonical(expr: str) -> str:
    """An expression re-written by to_text (numbers normalised, redundant parentheses dropped)."""
    return to_text(parse(expr))


def split_top(expr: str) -> tuple[str, str, str] | None:
    """(left, op, right) of the expression's last operation when it is + - * /, else None."""
    node = parse(expr)
    if not isinstance(node, ast.BinOp) or not isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        return None
    return to_text(node.left), _SYMBOL[type(node.op)], to_text(node.right)


_INVERSE = {"+": "-", "-": "+", "*": "/", "/": "*"}


def inverse_expr(result: float | str, op: str, right: str) -> str:
    """The expression that undoes `left op right = result`: it equals `left` exactly when `result` is right.

    ("+", "4") and 48 → "48-4"; ("-", "8+32") and 20 → "20+(8+32)"; ("*", "4") and 32 → "32/4". A string
    `result` is written as it is ("x" gives the equation's unknown form, "x-4").
    """
    inv = _INVERSE[op]
    wrapped = right if isinstance(parse(right), ast.Constant) else f"({right})"
    first = result if isinstance(result, str) else fmt(result)
    if first.startswith("-"):
        first = f"({first})"
    return f"{first}{inv}{wrapped}"


@dataclass(frozen=True)
class Step:
    """One verified computation: `expr` (canonical text) evaluates to `value`; `claimed` is the source's
    stated result ("" when the source states none), equal to `value` for every step the parsers return."""

    expr: str
    value: float
    claimed: str = ""

    @property
    def text(self) -> str:
        return f"{self.expr}={fmt(self.value)}"

    def to_dict(self) -> dict[str, Any]:
        return {"expr": self.expr, "value": self.value}


def _claimed_step(expr: str, claimed: str) -> Step:
    try:
        expr = canonical(expr)
        value = evaluate(expr)
    except ValueError as exc:
        raise Unsupported("unparsable_expression", f"{expr!r}: {exc}") from None
    try:
        claim = float(claimed.replace(",", "").strip())
    except ValueError:
        raise Unsupported("unparsable_expression", f"claimed result {claimed!r}") from None
    if not close(value, claim):
        raise Unsupported("step_mismatch", f"{expr} evaluates to {fmt(value)}, the source says {claimed}")
    return Step(expr, value, claimed.strip())


_ANNOTATION = re.compile(r"<<([^<>]*)>>")


def gsm8k_steps(calc_rationale: str) -> list[Step]:
    """One verified step per `<<expr=result>>` annotation that computes something, in order; Unsupported
    when there is none or one does not check out."""
    found = _ANNOTATION.findall(calc_rationale or "")
    if not found:
        raise Unsupported("no_calc_steps")
    steps = []
    for body in found:
        if body.count("=") != 1:
            raise Unsupported("unparsable_expression", f"annotation {body!r}")
        expr, claimed = body.split("=")
        step = _claimed_step(expr, claimed)
        if not isinstance(parse(step.expr), ast.Constant):  # "<<5=5>>" restates a number, computes nothing
            steps.append(step)
    if not steps:
        raise Unsupported("no_calc_steps", "every annotation restates a number")
    return steps


def _tree_steps(node: ast.expr, steps: list[Step]) -> ast.expr:
    """Emit a step for every operation of `node`, innermost first, and return the node that stands for it
    in its parent: a constant holding the step's value. A left operand with the same precedence and no
    parentheses of its own is kept in the same step, so "87-24-45" is one step and "(66*87)*25" two."""
    if isinstance(node, ast.Constant):
        return node
    if isinstance(node, ast.UnaryOp):
        inner = _tree_steps(node.operand, steps)
        return ast.Constant(-float(inner.value) if isinstance(node.op, ast.USub) else float(inner.value)) \
            if isinstance(inner, ast.Constant) else node
    assert isinstance(node, ast.BinOp)
    if _same_chain(node, node.left):
        left = _chain(node.left, steps)
    else:
        left = _tree_steps(node.left, steps)
    right = _tree_steps(node.right, steps)
    expr = to_text(ast.BinOp(left=left, op=node.op, right=right))
    try:
        value = evaluate(expr)
    except ValueError as exc:
        raise Unsupported("unparsable_expression", f"{expr!r}: {exc}") from None
    steps.append(Step(expr, value))
    return ast.Constant(value)


def _same_chain(parent: ast.BinOp, left: ast.expr) -> bool:
    """`left` continues `parent`'s chain: same precedence (not **) and not in parentheses of its own (a
    parenthesised operand starts after its parent's opening parenthesis)."""
    p = _PRECEDENCE[type(parent.op)]
    return (isinstance(left, ast.BinOp) and _PRECEDENCE[type(left.op)] == p and p != 4
            and (left.lineno, left.col_offset) == (parent.lineno, parent.col_offset))


def _chain(node: ast.BinOp, steps: list[Step]) -> ast.expr:
    """A same-precedence left chain with its operands reduced, but not itself emitted as a step."""
    if _same_chain(node, node.left):
        left = _chain(node.left, steps)
    else:
        left = _tree_steps(node.left, steps)
    return ast.BinOp(left=left, op=node.op, right=_tree_steps(node.right, steps))


def expression_steps(expr: str) -> list[Step]:
    """The steps that compute an arithmetic expression, innermost operations first."""
    try:
        node = parse(expr)
        evaluate(expr)
    except ValueError as exc:
        raise Unsupported("unparsable_expression", str(exc)) from None
    steps: list[Step] = []
    result = _tree_steps(node, steps)
    if not steps:  # a bare number: the answer is given, nothing is computed
        raise Unsupported("no_calc_steps", f"{expr!r} has no operation")
    assert isinstance(result, ast.Constant)
    return steps


def svamp_steps(equation: str) -> list[Step]:
    """SVAMP's equation as steps, innermost operation first."""
    if not (equation or "").strip():
        raise Unsupported("no_calc_steps")
    return expression_steps(equation)


_UNIT = re.compile(r"\s*\([A-Za-z][^()]*\)")        # "(min/hour)", "(dollars)"
_REMAINDER = re.compile(r"^(?P<expr>[^=]+)=\s*(?P<q>-?\d+)\s*r\s*(?P<r>\d+)\s*$")
_VARIABLE_DEF = re.compile(r"^\s*[A-Za-z_]\w*\s*:")


def asdiv_steps(formula: str, solution_type: str = "") -> list[Step]:
    """ASDiv's formula as steps. Equations "lhs=rhs" separated by ";" give the steps of lhs, the last one
    claimed to equal rhs; "a/b=q rR" gives a//b=q and a%b=R, ordered so the one the problem asks for
    (by solution type) comes last, plus q+1 for a ceiling division with a remainder."""
    text = (formula or "").strip()
    if not text:
        raise Unsupported("no_calc_steps")
    parts = [_UNIT.sub("", p).strip() for p in text.split(";") if p.strip()]
    if any(_VARIABLE_DEF.match(p) for p in parts):
        raise Unsupported("asdiv_algebra", text)
    steps: list[Step] = []
    for part in parts:
        rem = _REMAINDER.match(part)
        if rem:
            steps.extend(_remainder_steps(rem.group("expr"), rem.group("q"), rem.group("r"), solution_type))
            continue
        if part.count("=") != 1 or re.search(r"[A-Za-z]", part):
            raise Unsupported("asdiv_unsupported_formula", part)
        lhs, rhs = (s.strip() for s in part.split("="))
        lhs_steps = expression_steps(lhs)
        last = lhs_steps[-1]
        checked = _claimed_step(last.expr, rhs)  # the publisher's result must be what the steps compute
        steps.extend([*lhs_steps[:-1], checked])
    return steps


def _remainder_steps(expr: str, q: str, r: str, solution_type: str) -> list[Step]:
    node = parse(expr)
    if not isinstance(node, ast.BinOp) or not isinstance(node.op, ast.Div):
        raise Unsupported("asdiv_unsupported_formula", f"remainder of {expr!r}")
    a, b = to_text(node.left), to_text(node.right)
    wrap = lambda s: s if isinstance(parse(s), ast.Constant) else f"({s})"  # noqa: E731
    quotient = _claimed_step(f"{wrap(a)}//{wrap(b)}", q)
    remainder = _claimed_step(f"{wrap(a)}%{wrap(b)}", r)
    kind = solution_type.lower()
    if kind.startswith("surplus"):
        return [quotient, remainder]
    if kind.startswith("ceil"):
        if remainder.value == 0:
            return [remainder, quotient]
        return [quotient, remainder, _claimed_step(f"{q}+1", fmt(quotient.value + 1))]
    return [remainder, quotient]
