"""The 10 strategies built from verified content, and the structural validator that re-checks them.

A source item becomes a *trace* (`extract`): verified arithmetic steps for math (arith.py), the
decomposition and facts of a StrategyQA question, or facts read off an MBPP solution's syntax tree (never
run). A builder turns one trace into one example whose `structure` holds everything the strategy claims
and whose reasoning is rendered from that structure alone. `validate_structure` re-checks the claims from
scratch (re-evaluating arithmetic, re-parsing code) and renders the structure again: the reasoning must be
exactly that text, so a number changed in the structure or in the text is caught either way.

Support (an unsupported pair is the counted rejection "not_applicable", never a made-up example):

    source kind            strategies
    math  GSM8K SVAMP ASDiv  all 10
    choice  StrategyQA       step, mece, falsify, expert, uncertain — the checks available are the
                             decomposition, the annotators' facts and the gold label; no arithmetic exists to
                             recompute (doubt, correct), no second route (orthogonal), no likelihoods to
                             derive (bayesian) and no domains to verify separately (multidomain)
    code  MBPP               step, expert, doubt — what is checkable without running code: the tested
                             function's name and arity (from the test) against its definition, the constructs
                             and the final return in its syntax tree

What each strategy's structure claims (math / StrategyQA / MBPP where supported):
    step         a chain of verified steps / the sub-questions then the facts / test call, definition, body
    mece         a whole split into disjoint parts that sum to it, the answer being the whole or a part /
                 the two cases yes|no, exactly one holding, decided by the facts
    falsify      a wrong candidate refuted by the inverse check of the last step, the answer passing it /
                 the other choice supposed and refuted by the facts
    expert       an expert picked from the problem's wording, then the verified chain
    orthogonal   a second expression, different from every step, that also evaluates to the answer
    doubt        an earlier step recomputed backwards (its result undone gives its operand) / the arity the
                 test implies recounted from the definition's parameters
    bayesian     prior over 3 candidates, likelihoods 0.9/0.1 from the inverse check, posterior = prior ×
                 likelihood normalised (sums to 1, peaks at the answer)
    multidomain  arithmetic (the last step), algebra (the answer as the unknown of the inverse equation) and,
                 when close, estimation (the last step with rounded numbers)
    correct      a step stated with a wrong value, verified wrong, then its verified repair
    uncertain    confidence before < after a verified check that the answer passes and an alternative fails
"""

from __future__ import annotations

import ast
import math
import random
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from services.reasoning_data.core.arith import (
    Step, Unsupported, asdiv_steps, canonical, close, evaluate, fmt, gsm8k_steps, inverse_expr, parse,
    split_top, svamp_steps, to_text,
)
from services.reasoning_data.core.format import (
    STRATEGIES, Example, answers_match, example_id, normalise_answer, wrap,
)
from shared.data.records import Record

__all__ = [
    "BUILDERS", "KIND_OF_SOURCE", "REASONS", "SUPPORT", "SUPPORT_BY_SOURCE", "ChoiceTrace", "CodeTrace",
    "MathTrace", "build", "choice_expert", "code_facts", "extract", "is_subquestion",
    "math_expert", "render", "subquestion_id", "subquestions", "supports", "validate_structure",
]

KIND_OF_SOURCE: dict[str, str] = {"GSM8K": "math", "SVAMP": "math", "ASDiv": "math", "StrategyQA": "choice",
                                  "MBPP": "code"}
SUPPORT: dict[str, tuple[str, ...]] = {
    "math": STRATEGIES,
    "choice": ("step", "mece", "falsify", "expert", "uncertain"),
    "code": ("step", "expert", "doubt"),
}

SUPPORT_BY_SOURCE: dict[str, tuple[str, ...]] = {src: SUPPORT[kind] for src, kind in KIND_OF_SOURCE.items()}

# Rejection reasons this module adds (arith.Unsupported reasons come through as they are).
NOT_APPLICABLE = "not_applicable"
UNSUPPORTED_SOURCE = "unsupported_source"
FINAL_MISMATCH = "final_mismatch"          # the verified steps do not arrive at the gold answer
NO_INVERSE_CHECK = "no_inverse_check"      # the last step is not + - * / (or divides by zero backwards)
NO_CANDIDATES = "no_wrong_candidates"
NO_PARTITION = "no_partition"
NO_SECOND_ROUTE = "no_second_route"
NO_FACTS = "no_facts"
NO_DECOMPOSITION = "no_decomposition"
NOT_YES_NO = "not_yes_no"
CODE_UNPARSABLE = "code_unparsable"
NO_TESTED_FUNCTION = "no_tested_function"
ARITY_MISMATCH = "arity_mismatch"
TOO_LONG = "too_long"

REASONS: tuple[str, ...] = (NOT_APPLICABLE, UNSUPPORTED_SOURCE, FINAL_MISMATCH, NO_INVERSE_CHECK, NO_CANDIDATES,
                            NO_PARTITION, NO_SECOND_ROUTE, NO_FACTS, NO_DECOMPOSITION, NOT_YES_NO, CODE_UNPARSABLE,
                            NO_TESTED_FUNCTION, ARITY_MISMATCH, TOO_LONG)

MAX_REASONING_CHARS = 900     # longer renderings are rejected (seq_len is small); most are under 400
MAX_ROUTE_CHARS = 120         # an inlined second route longer than this is not offered
LIKELY, UNLIKELY = 0.9, 0.1   # P(check passes | candidate) for the right / a wrong candidate
PRIORS = ((0.5, 0.25, 0.25), (0.4, 0.3, 0.3), (0.6, 0.2, 0.2), (0.34, 0.33, 0.33))
BEFORE = (0.5, 0.6, 0.7)      # confidence before a check …
AFTER = (0.9, 0.95, 0.99)     # … and after it passed


# ---------------------------------------------------------------------------------------------- traces

@dataclass(frozen=True)
class MathTrace:
    steps: tuple[Step, ...]

    @property
    def answer(self) -> str:
        return fmt(self.steps[-1].value)


@dataclass(frozen=True)
class ChoiceTrace:
    questions: tuple[str, ...]
    facts: str
    choices: tuple[str, ...]
    answer: str
    term: str


@dataclass(frozen=True)
class CodeTrace:
    func: str
    arity: int
    params: tuple[str, ...]
    required: int
    constructs: tuple[str, ...]
    returns: str


def extract(record: Record) -> MathTrace | ChoiceTrace | CodeTrace:
    """The verified content of a source item; arith.Unsupported (with its counted reason) when there is
    none usable."""
    kind = KIND_OF_SOURCE.get(record.dataset)
    if kind is None:
        raise Unsupported(UNSUPPORTED_SOURCE, record.dataset)
    if kind == "math":
        if record.dataset == "GSM8K":
            steps = gsm8k_steps(record.meta.get("calc_rationale", ""))
        elif record.dataset == "SVAMP":
            steps = svamp_steps(record.meta.get("equation") or record.rationale)
        else:
            steps = asdiv_steps(record.rationale, record.meta.get("solution_type", ""))
        if not answers_match(fmt(steps[-1].value), record.answer):
            raise Unsupported(FINAL_MISMATCH, f"steps give {fmt(steps[-1].value)}, gold is {record.answer}")
        return MathTrace(tuple(steps))
    if kind == "choice":
        choices = tuple(normalise_answer(c) for c in record.choices)
        if sorted(choices) != ["no", "yes"] or normalise_answer(record.answer) not in choices:
            raise Unsupported(NOT_YES_NO, record.id)
        facts = " ".join(record.rationale.split())
        if not facts:
            raise Unsupported(NO_FACTS, record.id)
        decomposition = record.meta.get("decomposition") or []
        if isinstance(decomposition, str):
            decomposition = [decomposition]
        questions = tuple(" ".join(str(q).split()) for q in decomposition if str(q).strip())
        return ChoiceTrace(questions, facts, choices, normalise_answer(record.answer),
                           " ".join(str(record.meta.get("term") or "").split()))
    facts = code_facts(record.prompt, record.answer)
    return CodeTrace(facts["func"], facts["arity"], tuple(facts["params"]), facts["required"],
                     tuple(facts["constructs"]), facts["returns"])


# ------------------------------------------------------------------------------------------ code facts

_TEST_MARKER = "Your code should pass this test:"
_CONSTRUCTS = (("loop", (ast.For, ast.While, ast.AsyncFor)), ("condition", (ast.If, ast.IfExp)),
               ("comprehension", (ast.comprehension,)), ("lambda", (ast.Lambda,)),
               ("exception handling", (ast.Try,)))


def code_facts(prompt: str, code: str) -> dict[str, Any]:
    """What the MBPP prompt's test and the solution's syntax tree say, without running anything: the tested
    function, the number of arguments the test passes, the definition's parameters, the constructs the
    function uses and its final return expression (when short)."""
    if _TEST_MARKER not in prompt:
        raise Unsupported(NO_TESTED_FUNCTION, "the prompt shows no test")
    test = prompt.rsplit(_TEST_MARKER, 1)[1].strip()
    try:
        with warnings.catch_warnings():  # the publisher's "\d" in plain strings warns; it is still code
            warnings.simplefilter("ignore")
            test_tree = ast.parse(test)
            tree = ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise Unsupported(CODE_UNPARSABLE) from None
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    call = next((n for n in ast.walk(test_tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                 and n.func.id in defs), None)
    if call is None:
        raise Unsupported(NO_TESTED_FUNCTION, "no function the test calls is defined")
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        raise Unsupported(NO_TESTED_FUNCTION, "the test unpacks its arguments")
    fn = defs[call.func.id]
    arity = len(call.args) + len(call.keywords)
    positional = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args)]
    required = len(positional) - len(fn.args.defaults)
    if not (required <= arity and (arity <= len(positional) or fn.args.vararg is not None)):
        raise Unsupported(ARITY_MISMATCH, f"{fn.name} takes {len(positional)}, the test passes {arity}")
    params = positional + ([f"*{fn.args.vararg.arg}"] if fn.args.vararg else [])
    nodes = list(ast.walk(fn))
    constructs = [name for name, types in _CONSTRUCTS if any(isinstance(n, types) for n in nodes)]
    if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == fn.name for n in nodes):
        constructs.append("recursion")
    helpers = sorted({n.func.id for n in nodes if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                      and n.func.id in defs and n.func.id != fn.name})
    constructs += [f"helper {h}" for h in helpers]
    last = fn.body[-1]
    returns = ast.unparse(last.value) if isinstance(last, ast.Return) and last.value is not None else ""
    if len(returns) > 60 or "\n" in returns:
        returns = ""
    return {"func": fn.name, "arity": arity, "params": params, "required": required, "constructs": constructs,
            "returns": returns}


# ------------------------------------------------------------------------------------------- rendering

def _num(x: float) -> str:
    return fmt(x)


def _chain(steps: list[dict]) -> str:
    return "; ".join(f"{s['expr']}={_num(s['value'])}" for s in steps)


def _lead(steps: list[dict]) -> str:
    """The steps before the last, as a sentence ("" when there is one step)."""
    return f"{_chain(steps[:-1])}. " if len(steps) > 1 else ""


def _pct(p: float) -> str:
    return f"{round(p * 100)}%"


def _p(p: float) -> str:
    return f"{p:.2f}"


def _unknown(op: str, right: str, target: float) -> str:
    """The inverse equation with the answer as unknown: last step "52-4" → "x+4=52"."""
    return f"{inverse_expr('x', op, right)}={_num(target)}"


def _render_math(strategy: str, s: dict) -> str:
    steps = s["steps"]
    last = steps[-1]
    last_text = f"{last['expr']}={_num(last['value'])}"
    if strategy == "step":
        return " ".join(f"<step> {st['expr']}={_num(st['value'])}" for st in steps)
    if strategy == "expert":
        return f"<expert> As {s['expert']}: {_chain(steps)}."
    if strategy == "mece":
        labels = " | ".join(_num(p["value"]) if p["count"] == 1 else f"{p['count']} parts of {_num(p['value'])}"
                            for p in s["parts"])
        return (f"{_lead(steps)}{last_text}. <mece> Split {_num(s['whole'])} into disjoint parts: {labels}. "
                f"{s['cover']}={_num(s['whole'])}, so they cover it exactly.")
    if strategy == "falsify":
        c, check = s["candidate"], s["candidate_check"]
        return (f"{_lead(steps)}<falsify> Guess {_num(c)}: {check}={_num(evaluate(check))}, not {_num(s['target'])}, "
                f"refuted. {last_text}: {s['answer_check']}={_num(s['target'])}, holds.")
    if strategy == "orthogonal":
        return (f"Route 1: {_chain(steps)}. <orthogonal> Route 2: {s['route']}={_num(evaluate(s['route']))}. "
                f"Both give {_num(last['value'])}.")
    if strategy == "doubt":
        k = s["index"]
        before, after = steps[:k + 1], steps[k + 1:]
        doubted = steps[k]
        text = (f"{_chain(before)}. <doubt> Is {doubted['expr']}={_num(doubted['value'])} right? "
                f"{s['check']}={_num(evaluate(s['check']))}, it is.")
        return f"{text} {_chain(after)}." if after else text
    if strategy == "bayesian":
        cands = s["candidates"]
        prior = " ".join(f"{_num(c)}:{_p(p)}" for c, p in zip(cands, s["prior"]))
        lik = " ".join(f"{_num(c)}:{_p(p)}" for c, p in zip(cands, s["likelihood"]))
        post = " ".join(f"{_num(c)}:{_p(p)}" for c, p in zip(cands, s["posterior"]))
        return (f"{_lead(steps)}<bayesian> Prior {prior}. Check {s['equation']}, likelihood {lik}. "
                f"Posterior {post}. {last_text}.")
    if strategy == "multidomain":
        parts = []
        for d in s["domains"]:
            if d["domain"] == "arithmetic":
                parts.append(f"Arithmetic: {d['expr']}={_num(d['value'])}.")
            elif d["domain"] == "algebra":
                parts.append(f"Algebra: {d['equation']} gives x={_num(d['x'])}, as {d['expr']}={_num(d['value'])}.")
            else:
                parts.append(f"Estimation: {d['expr']}={_num(d['value'])}, close to {_num(d['near'])}.")
        return f"{_lead(steps)}<multidomain> " + " ".join(parts)
    if strategy == "correct":
        k = s["index"]
        wrong = steps[k]
        text = _chain(steps[:k])
        text = f"{text}; " if text else ""
        text += (f"{wrong['expr']}={_num(s['wrong'])}. <correct> No: {wrong['expr']} is {_num(wrong['value'])}, "
                 f"not {_num(s['wrong'])}. {wrong['expr']}={_num(wrong['value'])}")
        rest = _chain(steps[k + 1:])
        return f"{text}; {rest}." if rest else f"{text}."
    if strategy == "uncertain":
        return (f"{_lead(steps)}{last_text}? <uncertain> {_pct(s['before'])} sure; it could be "
                f"{_num(s['alternative'])}. Check {s['equation']}: {s['answer_check']}={_num(s['target'])} holds, "
                f"{s['alternative_check']}={_num(evaluate(s['alternative_check']))} does not. "
                f"Now {_pct(s['after'])} sure: {_num(last['value'])}.")
    raise KeyError(strategy)


def _render_choice(strategy: str, s: dict) -> str:
    facts, answer = s["facts"], s["answer"]
    if strategy == "step":
        return " ".join(f"<step> {q}" for q in s["questions"]) + f" Facts: {facts} So: {answer}."
    if strategy == "expert":
        return f"<expert> As {s['expert']}: {' '.join(s['questions'])} Facts: {facts} So: {answer}."
    if strategy == "mece":
        return (f"<mece> Cases: {' | '.join(s['cases'])}; exactly one holds. Facts: {facts} "
                f"Only the case {answer} fits.")
    if strategy == "falsify":
        return f"<falsify> Suppose {s['candidate']}. Facts: {facts} These refute {s['candidate']}, so {answer}."
    if strategy == "uncertain":
        return (f"<uncertain> {' or '.join(s['choices'])}? {_pct(s['before'])} sure of either. Facts: {facts} "
                f"Now {_pct(s['after'])} sure: {answer}.")
    raise KeyError(strategy)


def _code_sentences(s: dict) -> list[str]:
    n = s["arity"]
    out = [f"The test calls {s['func']} with {n} argument{'s' if n != 1 else ''}.",
           f"Define {s['func']}({', '.join(s['params'])})."]
    out.append(f"It uses {', '.join(s['constructs'])}." if s["constructs"] else "It is straight-line code.")
    if s["returns"]:
        out.append(f"It returns {s['returns']}.")
    return out


def _render_code(strategy: str, s: dict) -> str:
    sentences = _code_sentences(s)
    if strategy == "step":
        return " ".join(f"<step> {t}" for t in sentences)
    if strategy == "expert":
        return f"<expert> As {s['expert']}: " + " ".join(sentences)
    if strategy == "doubt":
        n, k, required = len(s["params"]), s["arity"], s["required"]
        optional = f", {required} required" if required != n else ""
        return (f"{sentences[0]} <doubt> Does {s['func']} take {k} argument{'s' if k != 1 else ''}? Its definition "
                f"has {n} parameter{'s' if n != 1 else ''}{optional}, so yes. " + " ".join(sentences[1:]))
    raise KeyError(strategy)


_RENDER: dict[str, Callable[[str, dict], str]] = {"math": _render_math, "choice": _render_choice,
                                                   "code": _render_code}


def render(strategy: str, structure: dict) -> str:
    """The reasoning of an offline example, from its structure alone (wrapper included)."""
    return wrap(_RENDER[structure["kind"]](strategy, structure))


# --------------------------------------------------------------------------------------- math helpers

def _last_op(steps: list[dict]) -> tuple[str, str, str, float] | None:
    """(left, op, right, value of left) of the last step when it can be undone (+ - * / and no division by
    zero backwards)."""
    top = split_top(steps[-1]["expr"])
    if top is None:
        return None
    left, op, right = top
    if op in "*/" and evaluate(right) == 0:
        return None
    return left, op, right, evaluate(left)


def _passes(candidate: float, op: str, right: str, target: float) -> bool:
    return close(evaluate(inverse_expr(candidate, op, right)), target)


def _wrong_candidates(steps: list[dict], top: tuple[str, str, str, float]) -> list[float]:
    """Plausible wrong answers, in a fixed order: the last step with another operator, off by one or ten,
    doubled; only ones displayed differently from the answer that fail the inverse check."""
    left, op, right, target = top
    answer = steps[-1]["value"]
    pool: list[float] = []
    for alt in "+-*/":
        if alt != op:
            try:
                pool.append(evaluate(f"({left}){alt}({right})"))
            except ValueError:
                pass
    pool += [answer + 1, answer - 1, answer + 10, answer * 2]
    integral = answer == int(answer)
    out: list[float] = []
    seen = {fmt(answer)}
    for v in pool:
        if not math.isfinite(v) or abs(v) > 1e9 or (answer >= 0 > v) or (integral and v != int(v)):
            continue
        v = float(fmt(v))
        if fmt(v) in seen or close(v, answer) or _passes(v, op, right, target):
            continue
        seen.add(fmt(v))
        out.append(v)
    return out


def _signed_terms(node: ast.expr, sign: int = 1) -> list[tuple[int, ast.expr]]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        right_sign = sign if isinstance(node.op, ast.Add) else -sign
        return _signed_terms(node.left, sign) + _signed_terms(node.right, right_sign)
    return [(sign, node)]


def _partition(last: dict) -> dict | None:
    """A whole and disjoint parts that sum to it, read off the last step, or None."""
    node = parse(last["expr"])
    answer = last["value"]
    if answer < 0:
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        terms = [(sign, to_text(t), evaluate(to_text(t))) for sign, t in _signed_terms(node)]
        if any(v < 0 for _, _, v in terms):
            return None
        plus = [(e, v) for sign, e, v in terms if sign > 0]
        minus = [(e, v) for sign, e, v in terms if sign < 0]
        if minus:
            whole_expr = "+".join(e if isinstance(parse(e), ast.Constant) else f"({e})" for e, _ in plus)
            parts = [(last["expr"], answer), *minus]
        else:
            whole_expr, parts = last["expr"], plus
        if len(parts) < 2:
            return None
        return _exact({"whole_expr": whole_expr, "whole": evaluate(whole_expr),
                       "parts": [{"expr": e, "value": v, "count": 1} for e, v in parts]})
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div)):
        left, right = to_text(node.left), to_text(node.right)
        lv, rv = evaluate(left), evaluate(right)
        if isinstance(node.op, ast.Mult):
            options = [(rv, left, lv), (lv, right, rv)]  # (count, part expr, part value)
            options = [o for o in options if o[0] == int(o[0]) and 2 <= o[0] <= 10000 and o[2] >= 0]
            found = [_exact({"whole_expr": last["expr"], "whole": answer,
                             "parts": [{"expr": expr, "value": value, "count": int(count)}]})
                     for count, expr, value in sorted(options, key=lambda o: o[0])]
            return next((f for f in found if f), None)
        if rv == int(rv) and 2 <= rv <= 10000 and lv >= 0:
            return _exact({"whole_expr": left, "whole": lv,
                           "parts": [{"expr": last["expr"], "value": answer, "count": int(rv)}]})
    return None


def _exact(partition: dict) -> dict | None:
    """The partition when its text is exact: the parts as written add up to the whole as written."""
    cover = _cover_text(partition["parts"])
    return {**partition, "cover": cover} if close(evaluate(cover), partition["whole"]) else None


def _cover_text(parts: list[dict]) -> str:
    return "+".join(_num(p["value"]) if p["count"] == 1 else f"{p['count']}*{_num(p['value'])}" for p in parts)


def _inline(steps: list[dict]) -> str | None:
    """The last step with every number that an earlier step computed replaced by that step's expression:
    one expression from the problem's numbers to the answer."""
    done: list[tuple[float, ast.expr]] = []

    def sub(node: ast.expr) -> ast.expr:
        if isinstance(node, ast.Constant):
            for value, tree in reversed(done):
                if close(float(node.value), value):
                    return tree
            return node
        if isinstance(node, ast.UnaryOp):
            return ast.UnaryOp(op=node.op, operand=sub(node.operand))
        if isinstance(node, ast.BinOp):
            return ast.BinOp(left=sub(node.left), op=node.op, right=sub(node.right))
        return node

    for s in steps:
        done.append((s["value"], sub(parse(s["expr"]))))
    text = to_text(done[-1][1])
    return text if len(text) <= MAX_ROUTE_CHARS else None


def _place_split(expr: str) -> tuple[str, str] | None:
    """"123" → ("100", "23"): a whole number's leading place and the rest, when both are non-zero."""
    if not isinstance(parse(expr), ast.Constant):
        return None
    n = evaluate(expr)
    if n != int(n) or n < 10:
        return None
    digits = str(int(n))
    head, rest = int(digits[0]) * 10 ** (len(digits) - 1), int(digits) % 10 ** (len(digits) - 1)
    return (str(head), str(rest)) if rest else None


def _w(expr: str) -> str:
    """An operand in parentheses unless it is a plain number."""
    return expr if isinstance(parse(expr), ast.Constant) and not expr.startswith("-") else f"({expr})"


def _second_route(steps: list[dict]) -> str | None:
    """An expression different from every step that also gives the answer: the chain inlined into one
    expression, else the last step with an operand split by place value (148-103 = 148-100-3,
    66*87 = 66*80+66*7), else a division with both sides halved."""
    taken = {canonical(s["expr"]) for s in steps}
    answer = steps[-1]["value"]
    candidates: list[str] = []
    inlined = _inline(steps)
    if inlined:
        candidates.append(inlined)
    top = split_top(steps[-1]["expr"])
    if top is not None:
        left, op, right = top
        r_split = _place_split(right)
        l_split = _place_split(left)
        if op in "+-" and r_split:
            candidates.append(f"{left}{op}{r_split[0]}{op}{r_split[1]}")
        if op == "+" and l_split:
            candidates.append(f"{l_split[0]}+{l_split[1]}+{_w(right)}")
        if op == "*" and r_split:
            candidates.append(f"{_w(left)}*{r_split[0]}+{_w(left)}*{r_split[1]}")
        if op == "*" and l_split:
            candidates.append(f"{l_split[0]}*{_w(right)}+{l_split[1]}*{_w(right)}")
        if op == "/":
            lv, rv = evaluate(left), evaluate(right)
            if lv == int(lv) and rv == int(rv) and lv % 2 == 0 and rv % 2 == 0 and rv != 0:
                candidates.append(f"{fmt(lv / 2)}/{fmt(rv / 2)}")
    for c in candidates:
        try:
            if canonical(c) not in taken and close(evaluate(c), answer):
                return canonical(c)
        except ValueError:
            continue
    return None


def _estimate(expr: str) -> str | None:
    """The expression with every number rounded to one significant figure (None when none changes)."""
    node = parse(expr)
    changed = False

    def rnd(n: ast.expr) -> ast.expr:
        nonlocal changed
        if isinstance(n, ast.Constant):
            v = float(n.value)
            if v == 0:
                return n
            r = float(f"{v:.1g}")
            changed |= r != v
            return ast.Constant(r)
        if isinstance(n, ast.UnaryOp):
            return ast.UnaryOp(op=n.op, operand=rnd(n.operand))
        if isinstance(n, ast.BinOp):
            return ast.BinOp(left=rnd(n.left), op=n.op, right=rnd(n.right))
        return n

    text = to_text(rnd(node))
    return text if changed else None


def _near(estimate: float, value: float) -> bool:
    return abs(estimate - value) <= 0.25 * abs(value) and estimate != value


_MONEY = ("$", "dollar", "cent", "price", "cost", "pay", "paid", "earn", "salary", "spend", "spent")
_MEASURE = (" km", "kilomet", "mile", " meter", "metre", "feet", " foot", "inch", "speed", "mph", "liter",
            "litre", "gallon", "pound", "kilogram")


def math_expert(prompt: str) -> str:
    """The expert a math problem calls for, from its wording."""
    low = prompt.lower()
    if any(w in low for w in _MONEY):
        return "an accountant"
    if any(w in low for w in _MEASURE):
        return "an engineer"
    return "a math teacher"


def choice_expert(term: str) -> str:
    return f"an expert on {term}" if term else "a fact-checker"


CODE_EXPERT = "a Python developer"


# ------------------------------------------------------------------------------------------- builders

Built = dict | str   # a structure, or a rejection reason


def _math_structure(strategy: str, record: Record, trace: MathTrace, rng: random.Random) -> Built:
    steps = [s.to_dict() for s in trace.steps]
    s: dict[str, Any] = {"kind": "math", "steps": steps}
    if strategy == "step":
        return s
    if strategy == "expert":
        return {**s, "expert": math_expert(record.prompt)}
    if strategy == "mece":
        part = _partition(steps[-1])
        if part is None:
            return NO_PARTITION
        return {**s, **part}
    if strategy == "orthogonal":
        route = _second_route(steps)
        return {**s, "route": route} if route else NO_SECOND_ROUTE
    if strategy == "doubt":
        options = [k for k in range(len(steps)) if _undoable(steps[k])]
        earlier = [k for k in options if k < len(steps) - 1]
        if not options:
            return NO_INVERSE_CHECK
        k = rng.choice(earlier or options)
        left, op, right = split_top(steps[k]["expr"])
        return {**s, "index": k, "check": inverse_expr(steps[k]["value"], op, right)}
    if strategy == "correct":
        k = rng.randrange(len(steps))
        value = steps[k]["value"]
        wrong = [w for w in _step_slips(steps[k]) if not close(w, value)]
        if not wrong:
            return NO_CANDIDATES
        return {**s, "index": k, "wrong": rng.choice(wrong)}
    top = _last_op(steps)
    if top is None:
        return NO_INVERSE_CHECK
    left, op, right, target = top
    answer = steps[-1]["value"]
    if not _passes(answer, op, right, target):  # the answer as displayed (rounded) does not undo exactly
        return NO_INVERSE_CHECK
    if strategy == "multidomain":
        domains = [{"domain": "arithmetic", "expr": steps[-1]["expr"], "value": answer},
                   {"domain": "algebra", "equation": _unknown(op, right, target), "x": answer,
                    "expr": inverse_expr(answer, op, right), "value": target}]
        est = _estimate(steps[-1]["expr"])
        if est is not None:
            try:
                ev = evaluate(est)
            except ValueError:
                ev = None
            if ev is not None and _near(ev, answer):
                domains.append({"domain": "estimation", "expr": est, "value": ev, "near": answer})
        return {**s, "domains": domains}
    wrong = _wrong_candidates(steps, top)
    if strategy == "falsify":
        if not wrong:
            return NO_CANDIDATES
        c = rng.choice(wrong)
        return {**s, "candidate": c, "candidate_check": inverse_expr(c, op, right),
                "answer_check": inverse_expr(answer, op, right), "target": target}
    if strategy == "uncertain":
        if not wrong:
            return NO_CANDIDATES
        c = rng.choice(wrong)
        return {**s, "alternative": c, "before": rng.choice(BEFORE), "after": rng.choice(AFTER),
                "equation": _unknown(op, right, target), "answer_check": inverse_expr(answer, op, right),
                "alternative_check": inverse_expr(c, op, right), "target": target}
    if strategy == "bayesian":
        if len(wrong) < 2:
            return NO_CANDIDATES
        cands = [answer, *rng.sample(wrong, 2)]
        rng.shuffle(cands)
        prior = list(rng.choice(PRIORS))
        rng.shuffle(prior)
        likelihood = [LIKELY if _passes(c, op, right, target) else UNLIKELY for c in cands]
        joint = [p * q for p, q in zip(prior, likelihood)]
        posterior = [j / sum(joint) for j in joint]
        return {**s, "candidates": cands, "prior": prior, "likelihood": likelihood, "posterior": posterior,
                "equation": _unknown(op, right, target), "target": target}
    raise KeyError(strategy)


def _undoable(step: dict) -> bool:
    """The step can be recomputed backwards: + - * /, no division by zero, and its displayed value undoes it."""
    top = split_top(step["expr"])
    if top is None or (top[1] in "*/" and evaluate(top[2]) == 0):
        return False
    return _passes(float(fmt(step["value"])), top[1], top[2], evaluate(top[0]))


def _step_slips(step: dict) -> list[float]:
    """Wrong values a careless solver might write for a step: another operator, off by one or ten."""
    value = step["value"]
    out = []
    top = split_top(step["expr"])
    if top is not None:
        left, op, right = top
        for alt in "+-*":
            if alt != op:
                try:
                    out.append(evaluate(f"({left}){alt}({right})"))
                except ValueError:
                    pass
    out += [value + 1, value - 1, value + 10]
    integral = value == int(value)
    return [float(fmt(v)) for v in out if math.isfinite(v) and abs(v) <= 1e9 and (v >= 0 or value < 0)
            and (not integral or v == int(v)) and fmt(v) != fmt(value)]


def _choice_structure(strategy: str, record: Record, trace: ChoiceTrace, rng: random.Random) -> Built:
    s: dict[str, Any] = {"kind": "choice", "facts": trace.facts, "answer": trace.answer,
                         "choices": list(trace.choices)}
    if strategy in ("step", "expert"):
        if not trace.questions:
            return NO_DECOMPOSITION
        s["questions"] = list(trace.questions)
        if strategy == "expert":
            s["expert"] = choice_expert(trace.term)
            s["term"] = trace.term
        return s
    if strategy == "mece":
        return {**s, "cases": list(trace.choices)}
    if strategy == "falsify":
        return {**s, "candidate": next(c for c in trace.choices if c != trace.answer)}
    if strategy == "uncertain":
        return {**s, "before": 1 / len(trace.choices), "after": rng.choice(AFTER)}
    raise KeyError(strategy)


def _code_structure(strategy: str, record: Record, trace: CodeTrace, rng: random.Random) -> Built:
    s: dict[str, Any] = {"kind": "code", "func": trace.func, "arity": trace.arity, "params": list(trace.params),
                         "required": trace.required, "constructs": list(trace.constructs), "returns": trace.returns}
    if strategy == "expert":
        s["expert"] = CODE_EXPERT
    return s


_STRUCTURE: dict[str, Callable[..., Built]] = {"math": _math_structure, "choice": _choice_structure,
                                                "code": _code_structure}


def supports(source: str, strategy: str) -> bool:
    kind = KIND_OF_SOURCE.get(source)
    return kind is not None and strategy in SUPPORT[kind]


def build(strategy: str, record: Record, trace: MathTrace | ChoiceTrace | CodeTrace,
          rng: random.Random) -> Example | str:
    """One example of `strategy` from a record's trace, or the reason there is none."""
    if strategy not in STRATEGIES:
        raise KeyError(strategy)
    if not supports(record.dataset, strategy):
        return NOT_APPLICABLE
    kind = KIND_OF_SOURCE[record.dataset]
    try:
        structure = _STRUCTURE[kind](strategy, record, trace, rng)
    except Unsupported as exc:
        return exc.reason
    if isinstance(structure, str):
        return structure
    reasoning = render(strategy, structure)
    if len(reasoning) > MAX_REASONING_CHARS:
        return TOO_LONG
    if kind == "math":
        answer_text = fmt(structure["steps"][-1]["value"])   # what the verified steps arrive at
    elif kind == "choice":
        answer_text = structure["answer"]
    else:
        answer_text = record.answer                          # the reference solution the facts describe
    return Example(id=example_id(record.id, strategy), strategy=strategy, prompt=record.prompt,
                   reasoning=reasoning, answer=answer_text, source=record.dataset, source_id=record.id,
                   gold=record.answer, verified=answers_match(answer_text, record.answer), origin="offline",
                   structure=structure)


def subquestions(record: Record, trace: MathTrace) -> list[Example]:
    """Short arithmetic questions taken from the verified steps of a math record ("What is 5*3?"), each
    answered with its step in the `step` format — so the student also meets short prompts, not only word
    problems, and still opens and closes its reasoning (a model baked on long prompts alone may not, measured
    on tiny: "What is 2+2?" drifted past the context without `[/endthinking]`). One per step with an
    operator, in step order, a repeated expression once (one per record made 7% of the tiny data; this,
    ~12%); the answer is the step's evaluated value (gold = that value, verified). Ids
    `<source_id>#step/q<k>`, k = the step's 1-based position. The job's target_examples does not count them:
    they come on top of the source problems' examples."""
    out: list[Example] = []
    seen: set[str] = set()
    for k, step in enumerate((s.to_dict() for s in trace.steps), start=1):
        expr = step["expr"]
        if expr in seen or not any(op in expr.lstrip("-") for op in "+-*/%"):
            continue
        seen.add(expr)
        structure = {"kind": "math", "steps": [step]}
        answer = fmt(step["value"])
        out.append(Example(id=subquestion_id(record.id, k), strategy="step", prompt=f"What is {expr}?",
                           reasoning=render("step", structure), answer=answer, source=record.dataset,
                           source_id=record.id, gold=answer, verified=True, origin="offline", structure=structure))
    return out


def subquestion_id(source_id: str, k: int) -> str:
    return f"{example_id(source_id, 'step')}/q{k}"


def is_subquestion(example_id_: str) -> bool:
    """Whether an example id is a step's short question (`subquestions`)."""
    return re.search(r"#step/q\d+$", example_id_) is not None


def _builder(strategy: str) -> Callable[[Record, Any, random.Random], Example | str]:
    def builder(record: Record, trace: Any, rng: random.Random) -> Example | str:
        return build(strategy, record, trace, rng)

    builder.__name__ = f"build_{strategy}"
    return builder


# strategy → (record, trace, rng) -> Example | rejection reason
BUILDERS: dict[str, Callable[[Record, Any, random.Random], Example | str]] = {
    name: _builder(name) for name in STRATEGIES}


# ----------------------------------------------------------------------------------------- validation

def validate_structure(ex: Example) -> str | None:
    """Re-check an offline example's structure from scratch and that its reasoning is exactly the structure
    rendered: None when it holds, else the reason."""
    s = ex.structure
    if not isinstance(s, dict) or not s:
        return "no_structure"
    kind = s.get("kind")
    if kind not in _RENDER or KIND_OF_SOURCE.get(ex.source, kind) != kind:
        return "wrong_kind"
    if ex.strategy not in SUPPORT[kind]:
        return NOT_APPLICABLE
    try:
        reason = _CHECK[kind](ex.strategy, ex, s)
        if reason:
            return reason
        if ex.reasoning != render(ex.strategy, s):
            return "text_disagrees_with_structure"
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError) as exc:
        return exc.reason if isinstance(exc, Unsupported) else "malformed_structure"
    return None


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _refuted_then_confirmed(s: dict, key: str, answer, op: str, right: str, target: float) -> str | None:
    """A wrong value s[key] that the inverse check of the last step refutes, then the answer it confirms."""
    c = s[key]
    if not _is_num(c) or close(c, answer):
        return f"{key}_is_the_answer"
    if s[f"{key}_check"] != inverse_expr(c, op, right) or _passes(c, op, right, target):
        return f"{key}_not_refuted"
    if s["answer_check"] != inverse_expr(answer, op, right) or not _passes(answer, op, right, target):
        return "answer_not_confirmed"
    return None


def _check_math(strategy: str, ex: Example, s: dict) -> str | None:
    steps = s["steps"]
    if not isinstance(steps, list) or not steps:
        return "no_steps"
    for st in steps:
        if not _is_num(st["value"]) or not close(evaluate(st["expr"]), st["value"]):
            return "step_wrong"
        if canonical(st["expr"]) != st["expr"]:
            return "step_not_canonical"
    answer = steps[-1]["value"]
    if not answers_match(fmt(answer), ex.answer):
        return "answer_not_derived"
    if not (ex.verified and answers_match(ex.answer, ex.gold)):
        return "math_unverified"
    if strategy in ("step", "expert"):
        if strategy == "expert" and s["expert"] != math_expert(ex.prompt):
            return "wrong_expert"
        return None
    if strategy == "mece":
        parts = s["parts"]
        if not parts or (len(parts) < 2 and parts[0]["count"] < 2):
            return "too_few_parts"
        for p in parts:
            if not (isinstance(p["count"], int) and p["count"] >= 1 and _is_num(p["value"]) and p["value"] >= 0):
                return "bad_part"
            if not close(evaluate(p["expr"]), p["value"]):
                return "part_wrong"
        if not close(evaluate(s["whole_expr"]), s["whole"]):
            return "whole_wrong"
        if not close(sum(p["value"] * p["count"] for p in parts), s["whole"]):
            return "parts_do_not_cover"
        if s["cover"] != _cover_text(parts) or not close(evaluate(s["cover"]), s["whole"]):
            return "parts_do_not_cover"
        if not (close(s["whole"], answer) or any(close(p["value"], answer) for p in parts)):
            return "answer_not_in_partition"
        return None
    if strategy == "orthogonal":
        route = s["route"]
        if not close(evaluate(route), answer):
            return "route_wrong"
        if canonical(route) in {canonical(st["expr"]) for st in steps}:
            return "route_not_different"
        return None
    if strategy == "doubt":
        k = s["index"]
        if not (isinstance(k, int) and 0 <= k < len(steps)):
            return "bad_index"
        top = split_top(steps[k]["expr"])
        if top is None:
            return "no_inverse_check"
        left, op, right = top
        if s["check"] != inverse_expr(steps[k]["value"], op, right):
            return "check_is_not_a_recomputation"
        if not close(evaluate(s["check"]), evaluate(left)):
            return "recheck_failed"
        return None
    if strategy == "correct":
        k = s["index"]
        if not (isinstance(k, int) and 0 <= k < len(steps)) or not _is_num(s["wrong"]):
            return "bad_index"
        if close(evaluate(steps[k]["expr"]), s["wrong"]) or fmt(s["wrong"]) == fmt(steps[k]["value"]):
            return "wrong_step_is_right"
        return None
    top = _last_op(steps)
    if top is None:
        return "no_inverse_check"
    left, op, right, target = top
    if strategy in ("falsify", "uncertain", "bayesian") and not (_is_num(s["target"]) and close(s["target"], target)):
        return "target_wrong"
    if strategy in ("uncertain", "bayesian") and s["equation"] != _unknown(op, right, target):
        return "equation_wrong"
    if strategy == "falsify":
        return _refuted_then_confirmed(s, "candidate", answer, op, right, target)
    if strategy == "uncertain":
        before, after = s["before"], s["after"]
        if not (_is_num(before) and _is_num(after) and 0 < before < after <= 1):
            return "confidence_not_raised"
        return _refuted_then_confirmed(s, "alternative", answer, op, right, target)
    if strategy == "bayesian":
        cands, prior, lik, post = s["candidates"], s["prior"], s["likelihood"], s["posterior"]
        if not (len(cands) == len(prior) == len(lik) == len(post) >= 2):
            return "lengths_differ"
        if not all(_is_num(x) for x in (*cands, *prior, *lik, *post)):
            return "not_numbers"
        if sum(1 for c in cands if close(c, answer)) != 1 or len({fmt(c) for c in cands}) != len(cands):
            return "candidates_wrong"
        if any(p <= 0 for p in prior) or not close(sum(prior), 1.0):
            return "prior_not_a_distribution"
        for c, q in zip(cands, lik):
            if q != (LIKELY if _passes(c, op, right, target) else UNLIKELY):
                return "likelihood_not_from_check"
        if not math.isclose(sum(post), 1.0, abs_tol=1e-9):
            return "posterior_not_normalised"
        joint = [p * q for p, q in zip(prior, lik)]
        if any(not math.isclose(x, j / sum(joint), abs_tol=1e-9) for x, j in zip(post, joint)):
            return "posterior_not_prior_times_likelihood"
        best = max(range(len(post)), key=post.__getitem__)
        if not close(cands[best], answer) or sorted(post)[-2] >= post[best]:
            return "posterior_does_not_peak_at_answer"
        return None
    if strategy == "multidomain":
        domains = s["domains"]
        names = [d["domain"] for d in domains]
        if len(set(names)) < 2 or len(set(names)) != len(names):
            return "too_few_domains"
        for d in domains:
            if not close(evaluate(d["expr"]), d["value"]):
                return f"{d['domain']}_wrong"
            if d["domain"] == "arithmetic":
                if d["expr"] != steps[-1]["expr"] or not close(d["value"], answer):
                    return "arithmetic_wrong"
            elif d["domain"] == "algebra":
                if (d["expr"] != inverse_expr(answer, op, right) or not close(d["x"], answer)
                        or not close(d["value"], target) or d["equation"] != _unknown(op, right, target)):
                    return "algebra_wrong"
            elif d["domain"] == "estimation":
                if d["expr"] != _estimate(steps[-1]["expr"]) or not close(d["near"], answer) \
                        or not _near(d["value"], answer):
                    return "estimation_wrong"
            else:
                return "unknown_domain"
        return None
    return NOT_APPLICABLE


def _check_choice(strategy: str, ex: Example, s: dict) -> str | None:
    choices, answer = s["choices"], s["answer"]
    if sorted(choices) != ["no", "yes"] or answer not in choices:
        return "not_yes_no"
    if answer != ex.answer:
        return "answer_not_derived"
    if ex.verified and not answers_match(ex.answer, ex.gold):
        return "answer_mismatch"
    if not (isinstance(s["facts"], str) and s["facts"].strip()):
        return NO_FACTS
    if strategy in ("step", "expert"):
        qs = s["questions"]
        if not qs or not all(isinstance(q, str) and q.strip() for q in qs):
            return NO_DECOMPOSITION
        if strategy == "expert" and s["expert"] != choice_expert(s["term"]):
            return "wrong_expert"
        return None
    if strategy == "mece":
        cases = s["cases"]
        if sorted(cases) != sorted(choices) or len(set(cases)) != len(cases):
            return "cases_not_exhaustive_and_exclusive"
        return None
    if strategy == "falsify":
        if s["candidate"] not in choices or s["candidate"] == answer:
            return "candidate_is_the_answer"
        return None
    if strategy == "uncertain":
        before, after = s["before"], s["after"]
        if not (_is_num(before) and _is_num(after) and math.isclose(before, 1 / len(choices))
                and before < after <= 1):
            return "confidence_not_raised"
        return None
    return NOT_APPLICABLE


def _check_code(strategy: str, ex: Example, s: dict) -> str | None:
    try:
        facts = code_facts(ex.prompt, ex.answer)
    except Unsupported as exc:
        return exc.reason
    for key in ("func", "arity", "params", "required", "constructs", "returns"):
        if s[key] != facts[key]:
            return f"{key}_disagrees_with_code"
    if strategy == "expert" and s["expert"] != CODE_EXPERT:
        return "wrong_expert"
    if ex.verified and not answers_match(ex.answer, ex.gold):
        return "answer_mismatch"
    return None


_CHECK: dict[str, Callable[[str, Example, dict], str | None]] = {"math": _check_math, "choice": _check_choice,
                                                                 "code": _check_code}
