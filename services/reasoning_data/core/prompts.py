"""What a teacher model is asked (one prompt per strategy) and how its reply becomes an Example.

Shared by every free-text teacher (the HTTP backend, the local Hugging Face backend). The reply format is
the example's own format, so parsing is extraction, not translation:

    [thinking] <strategy-token> … [/endthinking]
    Answer: …

`parse_reply` repairs only what cannot change the content — chatter or a code fence around the reply,
`**Answer:**` markdown, `\\boxed{…}`, an option letter for a multiple-choice item, a missing `[/endthinking]`
when an `Answer:` line follows, whitespace — and never adds what the teacher did not write: a reply without
the `[thinking]` wrapper or without its strategy token is a counted rejection, never patched.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from shared.data.records import Record

from .format import (
    EMPTY_ANSWER,
    EMPTY_PROMPT,
    NESTED_WRAPPER,
    NO_STRATEGY_TOKEN,
    NO_WRAPPER,
    STRATEGIES,
    STRATEGY_TOKENS,
    THINKING_CLOSE,
    THINKING_OPEN,
    WRONG_ANSWER,
    WRONG_STRATEGY_TOKEN,
    Example,
    answers_match,
    check_example,
    example_id,
    normalise_answer,
    strategy_token,
    wrap,
)

__all__ = [
    "BackendResult", "EMPTY_REPLY", "NO_ANSWER", "STRATEGY_GUIDES", "build_messages", "parse_reply",
    "question_text",
]

# Rejection reasons added here (format.py owns the rest).
EMPTY_REPLY = "empty_reply"
NO_ANSWER = "no_answer_line"

# What each strategy asks of the teacher, in one or two sentences (the token is written by build_messages).
STRATEGY_GUIDES: dict[str, str] = {
    "step": "solve it in small explicit steps, one computation or inference per step, and start every step "
            "with {tok}.",
    "mece": "split the problem into cases or parts that do not overlap and together cover everything; mark "
            "the split with {tok}, then settle each part and combine them.",
    "falsify": "state a candidate answer, then try hard to refute it with a check or a counterexample "
               "(mark the attempt with {tok}); keep the answer only if it survives.",
    "expert": "reason as a specialist in the problem's field would: with {tok}, name the principle, formula "
              "or rule an expert applies, then apply it.",
    "orthogonal": "solve it one way, then with {tok} reach the answer again by an independent route and "
                  "compare the two results.",
    "doubt": "after reaching an intermediate result, question it with {tok} and recompute it a different way "
             "before going on.",
    "bayesian": "state a prior belief about the answer, then with {tok} weigh each piece of evidence and "
                "update the belief until it is decisive.",
    "multidomain": "draw on knowledge from at least two different fields (mark each with {tok}) and combine "
                   "what they say.",
    "correct": "write a tempting but wrong step, then with {tok} point out the error, say why it is wrong and "
               "replace it with the right step.",
    "uncertain": "say with {tok} where you are unsure and how confident you are, then resolve the uncertainty "
                 "before answering.",
}
assert set(STRATEGY_GUIDES) == set(STRATEGIES)

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_YES_NO_DATASETS = ("StrategyQA", "BoolQ")


@dataclass
class BackendResult:
    """What one generate(records, strategy) call of a teacher backend produced and spent.

    Every input record ends up either in `examples` or counted once in `rejections` (by reason).
    `calls` counts records sent to the teacher, `retries` the extra attempts on top of them.
    """

    examples: list[Example] = field(default_factory=list)
    rejections: Counter[str] = field(default_factory=Counter)
    calls: int = 0
    retries: int = 0
    billed_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    refused_by_budget: int = 0


# --- prompts -------------------------------------------------------------------------------------------


def question_text(record: Record) -> str:
    """The question as the student sees it: the record's prompt, plus its lettered options when it has any."""
    text = record.prompt.strip()
    if record.choices:
        options = "\n".join(f"{_LETTERS[i]}) {c}" for i, c in enumerate(record.choices))
        text = f"{text}\nOptions:\n{options}"
    return text


def _answer_form(record: Record) -> str:
    if record.category == "code":
        return "the complete Python code, starting on the line after 'Answer:'"
    if record.choices:
        return "the text of the correct option, copied exactly"
    if record.dataset in _YES_NO_DATASETS or normalise_answer(record.answer) in ("yes", "no"):
        return "yes or no"
    if record.category == "math":
        return "the final number only (no units, no words)"
    return "the short final answer only"


def build_messages(record: Record, strategy: str) -> list[dict[str, str]]:
    """Chat messages (system + user) asking for one example of `strategy` on `record`.

    Only the strategy's own token appears, so a reply holding another strategy's token was not asked for.
    """
    tok = strategy_token(strategy)  # InvalidSpecError on an unknown strategy
    guide = STRATEGY_GUIDES[strategy].format(tok=tok)
    system = (
        "You write worked solutions that teach a student model to reason with one named strategy.\n"
        "Reply in exactly this format and nothing else:\n"
        f"{THINKING_OPEN} {tok} <your reasoning> {THINKING_CLOSE}\n"
        "Answer: <final answer>\n\n"
        f"The strategy is '{strategy}': {guide}\n"
        f"Begin the reply with {THINKING_OPEN} followed by {tok}. Close the reasoning with {THINKING_CLOSE}, "
        f"then write one line 'Answer: ' with {_answer_form(record)}. Keep the reasoning short and correct; "
        "no other tags, no code fences around the reply, nothing after the answer."
    )
    user = f"Question:\n{question_text(record)}\n\nReply in the format above, using {tok}."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# --- parsing -------------------------------------------------------------------------------------------

# "Answer:", "Final answer:", "**Answer:**", "**Answer**:" — at a line start (or right after the close).
_ANSWER = re.compile(r"(?im)^[ \t]*[*_#>]*[ \t]*(?:final[ \t]+)?answer[ \t]*[*_]*[ \t]*:[ \t]*[*_]*[ \t]?")
_FENCE_BLOCK = re.compile(r"```[^\n`]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)
_BOXED = re.compile(r"^\\boxed\{(.*)\}$")
_LETTER = re.compile(r"^\(?([A-Z])[).:]?(?:\s+(.*))?$")


def _tidy(text: str) -> str:
    """Trailing spaces off each line, runs of blank lines collapsed to one, ends stripped."""
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _code_answer(rest: str) -> str:
    body = rest.strip("\n")
    if body.lstrip().startswith("```"):
        m = _FENCE_BLOCK.search(body)
        return _tidy(m.group(1)) if m else ""
    # Unfenced code inside a reply that was itself fenced: stop at the closing fence.
    lines = []
    for line in body.split("\n"):
        if line.strip().startswith("```"):
            break
        lines.append(line)
    return _tidy("\n".join(lines))


def _short_answer(rest: str, record: Record) -> str:
    line = next((ln.strip() for ln in rest.split("\n") if ln.strip() and not ln.strip().startswith("```")), "")
    line = line.strip("*_` \t").strip()
    boxed = _BOXED.match(line)
    if boxed:
        line = boxed.group(1).strip()
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'":
        line = line[1:-1].strip()
    if record.choices:
        line = _choice_text(line, record.choices)
    return line


def _choice_text(answer: str, choices: tuple[str, ...]) -> str:
    """An option letter ("B", "(B)", "B) text") or the option text in another case → the option's text."""
    plain = answer.rstrip(".").strip()
    by_text = {c.strip().lower(): c for c in choices}
    if plain.lower() in by_text:
        return by_text[plain.lower()]
    m = _LETTER.match(plain)
    if m:
        index = _LETTERS.index(m.group(1))
        tail = (m.group(2) or "").rstrip(".").strip()
        if index < len(choices) and (not tail or tail.lower() == choices[index].strip().lower()):
            return choices[index]
    return answer


def _split(text: str) -> tuple[str | None, str | None, str | None]:
    """(inner reasoning, text after the reasoning, rejection reason) of a reply."""
    if THINKING_OPEN not in text:
        return None, None, NO_WRAPPER
    if text.count(THINKING_OPEN) > 1 or text.count(THINKING_CLOSE) > 1:
        return None, None, NESTED_WRAPPER
    start = text.index(THINKING_OPEN) + len(THINKING_OPEN)  # anything before it is chatter or a fence
    if THINKING_CLOSE in text:
        end = text.index(THINKING_CLOSE)
        if end < start:
            return None, None, NO_WRAPPER
        return text[start:end], text[end + len(THINKING_CLOSE):], None
    # No close: repairable only when an Answer line follows (the last one: the final answer comes last).
    answers = list(_ANSWER.finditer(text, start))
    if not answers:
        return None, None, NO_ANSWER
    cut = answers[-1].start()
    return text[start:cut], text[cut:], None


def parse_reply(text: str | None, record: Record, strategy: str,
                origin: str) -> tuple[Example | None, str | None]:
    """(example, None) for a usable reply, else (None, rejection reason). See the module docstring."""
    tok = strategy_token(strategy)  # InvalidSpecError on an unknown strategy: a caller bug, not a reply
    if not question_text(record):
        return None, EMPTY_PROMPT
    if text is None or not text.strip():
        return None, EMPTY_REPLY
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    inner, after, reason = _split(text)
    if reason:
        return None, reason
    assert inner is not None and after is not None
    inner = _tidy(inner)
    if not any(t in inner for t in STRATEGY_TOKENS):
        return None, NO_STRATEGY_TOKEN
    if tok not in inner:
        return None, WRONG_STRATEGY_TOKEN
    m = _ANSWER.search(after)
    if not m:
        return None, NO_ANSWER
    rest = after[m.end():]
    answer = _code_answer(rest) if record.category == "code" else _short_answer(rest, record)
    if not answer:
        return None, EMPTY_ANSWER
    gold = record.answer.strip()
    verified = bool(gold) and answers_match(answer, gold)
    # Code cannot be verified by comparing text with the reference solution (only by running tests),
    # so a code answer that differs from it is kept unverified; any other answer must match its gold.
    if gold and not verified and record.category != "code":
        return None, WRONG_ANSWER
    ex = Example(id=example_id(record.id, strategy), strategy=strategy, prompt=question_text(record),
                 reasoning=wrap(inner), answer=answer, source=record.dataset, source_id=record.id,
                 gold=record.answer, verified=verified, origin=origin)
    problem = check_example(ex)
    if problem:
        return None, problem
    return ex, None
