"""Per-strategy prompts and parse_reply: repairs what is safe, rejects (by reason) what is not, never invents."""

from __future__ import annotations

import re

import pytest

from services.reasoning_data.core import format as F
from services.reasoning_data.core.prompts import (
    EMPTY_REPLY,
    NO_ANSWER,
    STRATEGY_GUIDES,
    build_messages,
    parse_reply,
    question_text,
)
from shared.data.records import Record
from shared.errors import InvalidSpecError

MATH = Record(id="GSM8K/train-1", dataset="GSM8K", category="math", split="train",
              prompt="Tom has 3 apples and buys 4 more. How many apples does he have?", answer="7")
YESNO = Record(id="StrategyQA/q1", dataset="StrategyQA", category="commonsense", split="train",
               prompt="Could a cat fit in a teacup?", answer="false")
CHOICE = Record(id="ARC-Easy/a1", dataset="ARC-Easy", category="qa", split="train",
                prompt="Which planet is closest to the Sun?", choices=("Venus", "Mercury", "Mars"), label=1,
                answer="Mercury")
CODE = Record(id="MBPP/11", dataset="MBPP", category="code", split="train",
              prompt="Write a function add(a, b) that returns the sum.",
              answer="def add(a, b):\n    return a + b")
NO_GOLD = Record(id="HotpotQA/x", dataset="HotpotQA", category="qa", split="train",
                 prompt="Name a primary colour.", answer="")
ORIGIN = "openai:test-model"


def good(strategy: str, answer: str = "7") -> str:
    tok = F.strategy_token(strategy)
    return f"[thinking] {tok} 3 apples plus 4 apples. {tok} 3 + 4 = 7. [/endthinking]\nAnswer: {answer}"


def inner_of(reasoning: str) -> str:
    assert reasoning.startswith(F.THINKING_OPEN) and reasoning.endswith(F.THINKING_CLOSE)
    return reasoning[len(F.THINKING_OPEN):-len(F.THINKING_CLOSE)].strip()


def squash(text: str) -> str:
    return " ".join(text.split())


# --- prompts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", F.STRATEGIES)
def test_prompt_asks_for_the_exact_format_with_only_its_own_token(strategy):
    messages = build_messages(MATH, strategy)
    assert [m["role"] for m in messages] == ["system", "user"]
    text = "\n".join(m["content"] for m in messages)
    tok = F.strategy_token(strategy)
    assert f"{F.THINKING_OPEN} {tok}" in text and F.THINKING_CLOSE in text and "Answer:" in text
    assert [t for t in F.STRATEGY_TOKENS if t in text] == [tok]   # no other strategy is suggested
    assert MATH.prompt in messages[1]["content"]
    assert "number" in messages[0]["content"]                      # math asks for a number only


def test_every_strategy_has_its_own_guide():
    assert set(STRATEGY_GUIDES) == set(F.STRATEGIES)
    assert len(set(STRATEGY_GUIDES.values())) == len(F.STRATEGIES)


def test_the_gold_answer_never_reaches_the_teacher():
    for record in (MATH, CODE, CHOICE):
        text = "\n".join(m["content"] for m in build_messages(record, "doubt"))
        if record is CHOICE:
            assert "B) Mercury" in text            # the options, not which one is right
            assert "label" not in text and "correct option is" not in text
        else:
            assert record.answer not in text


def test_answer_form_follows_the_item():
    system = {r.id: build_messages(r, "step")[0]["content"] for r in (YESNO, CHOICE, CODE)}
    assert "yes or no" in system[YESNO.id]
    assert "option" in system[CHOICE.id]
    assert "Python code" in system[CODE.id]


def test_multiple_choice_question_lists_the_lettered_options():
    assert question_text(CHOICE) == "Which planet is closest to the Sun?\nOptions:\nA) Venus\nB) Mercury\nC) Mars"


def test_unknown_strategy_is_a_clear_error():
    with pytest.raises(InvalidSpecError) as err:
        build_messages(MATH, "vibes")
    assert err.value.field == "strategy"
    with pytest.raises(InvalidSpecError):
        parse_reply(good("step"), MATH, "vibes", ORIGIN)


# --- well-formed replies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", F.STRATEGIES)
def test_good_reply_becomes_a_verified_well_formed_example(strategy):
    ex, reason = parse_reply(good(strategy), MATH, strategy, ORIGIN)
    assert reason is None and ex is not None
    assert F.check_example(ex) is None
    assert ex.id == F.example_id(MATH.id, strategy) and ex.strategy == strategy
    assert ex.verified and ex.answer == "7" and ex.gold == "7"
    assert ex.source == "GSM8K" and ex.source_id == MATH.id and ex.origin == ORIGIN
    assert ex.prompt == question_text(MATH)
    assert inner_of(ex.reasoning) == f"{F.strategy_token(strategy)} 3 apples plus 4 apples. " \
                                      f"{F.strategy_token(strategy)} 3 + 4 = 7."


def test_numbers_are_compared_as_numbers():
    ex, _ = parse_reply(good("step", "7.0"), MATH, "step", ORIGIN)
    assert ex is not None and ex.verified
    ex, _ = parse_reply(good("step", "$7."), MATH, "step", ORIGIN)
    assert ex is not None and ex.verified


def test_yes_no_gold_true_false_matches_yes_no():
    ex, reason = parse_reply(good("bayesian", "No"), YESNO, "bayesian", ORIGIN)
    assert reason is None and ex.verified


# --- repairs ---------------------------------------------------------------------------------------------

REPAIRABLE = {
    "chatter and a fence around it":
        "Sure! Here is the solution:\n```text\n" + good("step") + "\n```\nHope it helps.",
    "markdown answer": good("step").replace("Answer: 7", "**Answer:** **7**"),
    "final answer label": good("step").replace("Answer: 7", "Final answer: 7"),
    "boxed": good("step").replace("Answer: 7", "Answer: \\boxed{7}"),
    "crlf and blank lines": good("step").replace("\n", "\r\n\r\n\r\n") + "   \r\n",
    "answer on the closing line": good("step").replace("[/endthinking]\n", "[/endthinking] "),
    "missing close before the answer": good("step").replace(" [/endthinking]", ""),
    "trailing chatter after the answer": good("step") + "\n\nLet me know if you need more help.",
}


@pytest.mark.parametrize("case", sorted(REPAIRABLE))
def test_safe_repairs_give_the_same_example(case):
    want, _ = parse_reply(good("step"), MATH, "step", ORIGIN)
    got, reason = parse_reply(REPAIRABLE[case], MATH, "step", ORIGIN)
    assert reason is None, case
    assert F.check_example(got) is None
    assert got.answer == "7" and got.verified
    assert squash(inner_of(got.reasoning)) == squash(inner_of(want.reasoning))


def test_missing_close_is_repaired_at_the_last_answer_line():
    reply = "[thinking] <doubt> Answer: maybe 8? <doubt> No: 3 + 4 = 7.\nAnswer: 7"
    ex, reason = parse_reply(reply, MATH, "doubt", ORIGIN)
    assert reason is None
    assert ex.answer == "7" and "maybe 8" in ex.reasoning


@pytest.mark.parametrize("answer", ["B", "(B)", "B) Mercury", "mercury", "Mercury."])
def test_multiple_choice_letter_or_case_maps_to_the_option_text(answer):
    ex, reason = parse_reply(good("expert", answer), CHOICE, "expert", ORIGIN)
    assert reason is None and ex.answer == "Mercury" and ex.verified


def test_multiple_choice_letter_with_another_options_text_is_not_trusted():
    ex, reason = parse_reply(good("expert", "B) Venus"), CHOICE, "expert", ORIGIN)
    assert ex is None and reason == F.WRONG_ANSWER


def test_code_answer_is_taken_from_its_fence_and_kept_unverified():
    reply = ("[thinking] <step> Add the two arguments. [/endthinking]\nAnswer:\n```python\n"
             "def add(a, b):\n    result = a + b\n    return result\n```\nThis works.")
    ex, reason = parse_reply(reply, CODE, "step", ORIGIN)
    assert reason is None
    assert ex.answer == "def add(a, b):\n    result = a + b\n    return result"
    assert not ex.verified                  # different text from the reference; only tests could verify it


def test_code_answer_equal_to_the_reference_is_verified():
    reply = "[thinking] <step> Add them. [/endthinking]\nAnswer:\ndef add(a, b):\n    return a + b\n"
    ex, reason = parse_reply(reply, CODE, "step", ORIGIN)
    assert reason is None and ex.verified


def test_no_gold_keeps_the_example_unverified():
    ex, reason = parse_reply(good("multidomain", "red"), NO_GOLD, "multidomain", ORIGIN)
    assert reason is None and not ex.verified and ex.answer == "red"


# --- rejections ------------------------------------------------------------------------------------------

REJECTED = {
    "no wrapper": ("<step> 3 + 4 = 7.\nAnswer: 7", F.NO_WRAPPER),
    "close without open": ("<step> 3 + 4 = 7. [/endthinking]\nAnswer: 7", F.NO_WRAPPER),
    "close before open": ("[/endthinking] <step> [thinking] 3 + 4 = 7.\nAnswer: 7", F.NO_WRAPPER),
    "no strategy token": ("[thinking] 3 + 4 = 7. [/endthinking]\nAnswer: 7", F.NO_STRATEGY_TOKEN),
    "token outside the wrapper": ("<step> [thinking] 3 + 4 = 7. [/endthinking]\nAnswer: 7", F.NO_STRATEGY_TOKEN),
    "another strategy's token": (good("mece"), F.WRONG_STRATEGY_TOKEN),
    "two wrappers": (good("step") + "\n" + good("step"), F.NESTED_WRAPPER),
    "no answer line": ("[thinking] <step> 3 + 4 = 7. [/endthinking]\nSo it is 7.", NO_ANSWER),
    "cut off mid-thought": ("[thinking] <step> 3 + 4 =", NO_ANSWER),
    "empty answer": ("[thinking] <step> 3 + 4 = 7. [/endthinking]\nAnswer:   \n", F.EMPTY_ANSWER),
    "wrong answer": (good("step", "8"), F.WRONG_ANSWER),
    "words instead of a number": (good("step", "seven apples"), F.WRONG_ANSWER),
    "empty reply": ("  \n ", EMPTY_REPLY),
    "none": (None, EMPTY_REPLY),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_unusable_replies_are_rejected_by_reason(case):
    reply, want = REJECTED[case]
    ex, reason = parse_reply(reply, MATH, "step", ORIGIN)
    assert ex is None and reason == want


def test_nothing_is_fabricated():
    """Whatever parse_reply accepts, its reasoning and answer were written by the teacher."""
    replies = [good(s) for s in F.STRATEGIES] + list(REPAIRABLE.values()) + [r for r, _ in REJECTED.values()]
    accepted = 0
    for reply in replies:
        for strategy in F.STRATEGIES:
            ex, reason = parse_reply(reply, MATH, strategy, ORIGIN)
            assert (ex is None) != (reason is None)
            if ex is None:
                continue
            accepted += 1
            assert F.check_example(ex) is None
            flat = squash(reply)
            assert squash(inner_of(ex.reasoning)) in flat
            assert F.strategy_token(strategy) in squash(reply.split("[/endthinking]")[0])
            assert re.search(re.escape(ex.answer), flat)
    assert accepted >= len(F.STRATEGIES) + len(REPAIRABLE)


def test_empty_prompt_record_is_rejected():
    lm = Record(id="WikiText/1", dataset="WikiText", category="language", split="train", text="Some text.")
    ex, reason = parse_reply(good("step"), lm, "step", ORIGIN)
    assert ex is None and reason == F.EMPTY_PROMPT
