"""The OpenAI-compatible backend against a real local HTTP server: cost limit, retries, concurrency, secrets."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from services.reasoning_data.core import format as F
from services.reasoning_data.core.budget import LocalBudget, Price
from services.reasoning_data.core.http_backend import (
    BUDGET_REFUSED,
    HTTP_ERROR,
    MALFORMED,
    PER_MESSAGE_TOKENS,
    REPLY_PRIMING_TOKENS,
    TIMEOUT,
    TRUNCATED,
    OpenAICompatibleBackend,
    retry_after_seconds,
    worst_case_prompt_tokens,
)
from services.reasoning_data.core.prompts import build_messages
from shared.data.records import Record
from shared.errors import AuthenticationError, FailedPreconditionError, InvalidSpecError
from tests.conftest import GPT2_DIR

from .fake_openai import RETRYABLE, FakeOpenAI

KEY = "sk-test-0123456789abcdef-SECRET"
PRICE = Price(input_per_mtok=1.0, output_per_mtok=100.0)
MAX_TOKENS = 48
FAST = {"backoff_s": 0.01, "max_wait_s": 1.0, "timeout_s": 2.0, "max_tokens": MAX_TOKENS}


def make_records(n: int, tag: str = "a") -> list[Record]:
    # Two-digit operands: every prompt has the same length, hence the same worst-case cost.
    return [Record(id=f"GSM8K/{tag}-{i}", dataset="GSM8K", category="math", split="train",
                   prompt=f"Question {tag}{i:02d}: what is {10 + i} plus {20 + i}?", answer=str(30 + 2 * i))
            for i in range(n)]


def answers(records: list[Record]) -> dict[str, str]:
    return {r.prompt: r.answer for r in records}


def worst_usd(record: Record, strategy: str, max_tokens: int = MAX_TOKENS) -> float:
    return PRICE.cost(worst_case_prompt_tokens(build_messages(record, strategy)), max_tokens)


def backend(server: FakeOpenAI, budget, *, key: str = KEY, concurrency: int = 1, **kw) -> OpenAICompatibleBackend:
    opts = {**FAST, **kw}
    return OpenAICompatibleBackend(server.url, "teacher-1", price=PRICE, budget=budget, concurrency=concurrency,
                                   env={"OPENAI_API_KEY": key}, **opts)


def server_bill(server: FakeOpenAI) -> float:
    return sum(PRICE.cost(u["prompt_tokens"], u["completion_tokens"]) for u in server.billed_usage())


class RecordingBudget(LocalBudget):
    """LocalBudget that remembers the ledger at each refusal (read under the same lock as the decision)."""

    def __init__(self, limit_usd: float):
        super().__init__(limit_usd)
        self.refusals: list[tuple[dict, float]] = []
        self.pairs: dict[str, list[float]] = {}

    def reserve(self, amount_usd: float):
        with self._lock:
            before = self.snapshot()
            rid = super().reserve(amount_usd)
            if rid is None:
                self.refusals.append((before, amount_usd))
            else:
                self.pairs[rid] = [amount_usd]
            return rid

    def settle(self, reservation_id: str, actual_usd: float) -> None:
        with self._lock:
            super().settle(reservation_id, actual_usd)
            self.pairs[reservation_id].append(actual_usd)


@pytest.fixture
def records():
    return make_records(6)


@pytest.fixture
def server(records):
    with FakeOpenAI(answers=answers(records), api_keys=(KEY,)) as s:
        yield s


# --- configuration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", [{}, {"OPENAI_API_KEY": ""}, {"OPENAI_API_KEY": "  "}])
def test_missing_api_key_is_a_clear_error(env):
    with pytest.raises(InvalidSpecError) as err:
        OpenAICompatibleBackend("http://127.0.0.1:1/v1", "m", price=PRICE, budget=LocalBudget(1), concurrency=1,
                                env=env)
    assert err.value.field == "api_key_env"
    assert "OPENAI_API_KEY" in str(err.value) and "export OPENAI_API_KEY" in str(err.value)


def test_key_variable_name_is_configurable_and_none_means_no_auth(server, records):
    with pytest.raises(InvalidSpecError, match="OPENROUTER_API_KEY"):
        OpenAICompatibleBackend(server.url, "m", price=PRICE, budget=LocalBudget(1), concurrency=1,
                                api_key_env="OPENROUTER_API_KEY", env={"OPENAI_API_KEY": KEY})
    b = OpenAICompatibleBackend(server.url, "m", price=PRICE, budget=LocalBudget(1), concurrency=1,
                                api_key_env="OPENROUTER_API_KEY", env={"OPENROUTER_API_KEY": KEY}, **FAST)
    assert len(b.generate(records[:1], "step").examples) == 1
    server.api_keys = None
    keyless = OpenAICompatibleBackend(server.url, "m", price=PRICE, budget=LocalBudget(1), concurrency=1,
                                      api_key_env=None, env={}, **FAST)
    assert len(keyless.generate(records[:1], "step").examples) == 1
    assert server.chat_requests()[-1].authorization is None


@pytest.mark.parametrize("kwarg,value,field", [
    ("api_base", "ftp://x", "api_base"), ("api_base", "", "api_base"), ("model", " ", "model"),
    ("concurrency", 0, "concurrency"), ("concurrency", 1.5, "concurrency"), ("timeout_s", 0, "timeout_s"),
    ("max_retries", -1, "max_retries"), ("max_tokens", 0, "max_tokens"), ("temperature", -0.1, "temperature"),
    ("price", (1, 2), "price"), ("budget", object(), "budget"), ("backoff_s", -1, "backoff_s"),
])
def test_bad_arguments_name_the_field(kwarg, value, field):
    args = {"api_base": "http://127.0.0.1:1/v1", "model": "m", "price": PRICE, "budget": LocalBudget(1),
            "concurrency": 1, "env": {"OPENAI_API_KEY": KEY}, kwarg: value}
    with pytest.raises(InvalidSpecError) as err:
        OpenAICompatibleBackend(**args)
    assert err.value.field == field


def test_unknown_strategy_fails_before_anything_is_sent_or_spent(server, records):
    budget = LocalBudget(1.0)
    with pytest.raises(InvalidSpecError) as err:
        backend(server, budget).generate(records, "vibes")
    assert err.value.field == "strategy"
    assert server.chat_requests() == [] and budget.snapshot()["spent_usd"] == 0


def test_list_models_and_check_model(records):
    with FakeOpenAI(models=("teacher-1", "teacher-2"), api_keys=(KEY,)) as s:
        b = backend(s, LocalBudget(1))
        assert b.list_models() == ["teacher-1", "teacher-2"]
        b.check_model()
        other = OpenAICompatibleBackend(s.url, "gpt-9", price=PRICE, budget=LocalBudget(1), concurrency=1,
                                        env={"OPENAI_API_KEY": KEY}, **FAST)
        with pytest.raises(InvalidSpecError) as err:
            other.check_model()
        assert err.value.field == "model" and "gpt-9" in str(err.value) and "teacher-2" in str(err.value)
        assert all(r.authorization == f"Bearer {KEY}" for r in s.requests)


def test_list_models_on_an_unreachable_server_is_a_clear_error(server):
    b = backend(server, LocalBudget(1), max_retries=1)
    server.stop()
    with pytest.raises(FailedPreconditionError, match="cannot list the models"):
        b.list_models()


# --- the happy path ---------------------------------------------------------------------------------------


def test_clean_run_bills_exactly_the_reported_usage(server, records):
    budget = RecordingBudget(1.0)
    result = backend(server, budget, concurrency=3).generate(records, "doubt")
    assert [e.source_id for e in result.examples] == [r.id for r in records]     # input order kept
    assert all(F.check_example(e) is None and e.verified and e.strategy == "doubt" for e in result.examples)
    assert result.rejections == {} and result.calls == len(records) and result.retries == 0
    sent = server.chat_requests()
    assert len(sent) == len(records)
    assert all(r.body["max_tokens"] == MAX_TOKENS and r.body["model"] == "teacher-1" for r in sent)
    assert result.prompt_tokens == sum(u["prompt_tokens"] for u in server.billed_usage())
    assert result.completion_tokens == sum(u["completion_tokens"] for u in server.billed_usage())
    assert result.billed_usd == pytest.approx(server_bill(server), abs=1e-9)
    snap = budget.snapshot()
    assert snap["spent_usd"] == pytest.approx(server_bill(server), abs=1e-9) and snap["reserved_usd"] == 0
    # Every call was reserved at a worst case that bounds what it really cost.
    assert all(len(p) == 2 and p[1] <= p[0] for p in budget.pairs.values())


def test_worst_case_bounds_a_real_tokenizer():
    """Byte-level BPE: each token covers ≥ 1 byte, so the byte bound holds for any text, odd scripts too."""
    if not GPT2_DIR.is_dir():
        pytest.skip(f"GPT-2 tokenizer files absent ({GPT2_DIR})")
    from shared.data.tokenizer import load_gpt2_tokenizer

    tok = load_gpt2_tokenizer(GPT2_DIR)
    odd = Record(id="X/1", dataset="GSM8K", category="math", split="train",
                 prompt="Ünïcödé 数学 問題 🧮🧮: what is ½ + ¼? " * 20, answer="0.75")
    for record in [*make_records(3), odd]:
        for strategy in F.STRATEGIES:
            messages = build_messages(record, strategy)
            counted = sum(len(tok.encode(m["role"] + m["content"])) for m in messages)
            bound = worst_case_prompt_tokens(messages)
            # The byte part alone bounds the tokens; the allowances are left for the chat template's own.
            assert counted <= bound - REPLY_PRIMING_TOKENS - PER_MESSAGE_TOKENS * len(messages)


# --- faults ----------------------------------------------------------------------------------------------


def test_every_fault_is_retried_or_counted(server, records):
    # One record at a time, so the scripted faults meet the requests in a known order.
    server.slow_s = 0.5
    server.script("429", "500", "timeout",   # record 0: three retries…
                  "malformed",               # …then a 200 that is not JSON: final, not retried
                  "no_wrapper",              # record 1: the teacher ignored the format
                  "400",                     # record 2: not retryable
                  "wrong_answer")            # record 3; records 4 and 5 get good replies
    budget = LocalBudget(1.0)
    result = backend(server, budget, timeout_s=0.25).generate(records, "step")
    assert result.retries == 3 and result.calls == len(records)
    assert result.rejections == {MALFORMED: 1, F.NO_WRAPPER: 1, HTTP_ERROR: 1, F.WRONG_ANSWER: 1}
    assert [e.source_id for e in result.examples] == [records[4].id, records[5].id]
    assert len(server.chat_requests()) == result.calls + result.retries == 9
    # Billing: reported usage where there was a reply; the worst case for the timed-out attempt and the
    # malformed body (the server did the work; we cannot know its cost); nothing for error statuses.
    w = worst_usd(records[0], "step")
    reported = sum(PRICE.cost(r.usage["prompt_tokens"], r.usage["completion_tokens"])
                   for r in server.chat_requests() if r.status == 200 and r.fault not in ("timeout", "malformed"))
    assert budget.snapshot()["spent_usd"] == pytest.approx(reported + 2 * w, abs=1e-9)
    assert result.billed_usd == pytest.approx(budget.snapshot()["spent_usd"], abs=1e-9)
    assert server_bill(server) <= budget.snapshot()["spent_usd"]       # we never under-count the provider
    assert budget.snapshot()["reserved_usd"] == 0


def test_retry_after_is_honoured(server, records):
    server.retry_after = "0.4"
    server.script("429")
    result = backend(server, LocalBudget(1.0), backoff_s=0.01).generate(records[:1], "step")
    first, second = server.chat_requests()
    assert first.status == 429 and second.status == 200 and result.retries == 1
    assert second.started - first.finished >= 0.38      # backoff alone would have waited ~0.01-0.02 s


def test_retry_after_above_max_wait_is_capped(server, records):
    server.retry_after = "30"
    server.script("429")
    backend(server, LocalBudget(1.0), max_wait_s=0.2).generate(records[:1], "step")
    first, second = server.chat_requests()
    assert 0.15 <= second.started - first.finished < 5


def test_retry_after_header_forms():
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after": "0.25"}) == 0.25
    assert retry_after_seconds({"retry-after": "-3"}) == 0.0
    assert retry_after_seconds({"retry-after": format_datetime(now + timedelta(seconds=7), usegmt=True)},
                               now=now) == pytest.approx(7)
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5


def test_gives_up_after_max_retries_without_spending(server, records):
    server.script(*["500"] * 10)
    budget = LocalBudget(1.0)
    result = backend(server, budget, max_retries=2).generate(records[:1], "step")
    assert result.rejections == {HTTP_ERROR: 1} and result.retries == 2 and result.calls == 1
    assert len(server.chat_requests()) == 3
    assert budget.snapshot() == {"limit_usd": 1.0, "spent_usd": 0.0, "reserved_usd": 0.0, "refused": 0}


def test_repeated_timeouts_give_up_as_timeout_and_are_billed_at_worst_case(server, records):
    server.slow_s = 0.5
    server.script("timeout", "timeout")
    budget = LocalBudget(1.0)
    result = backend(server, budget, max_retries=1, timeout_s=0.15).generate(records[:1], "step")
    assert result.rejections == {TIMEOUT: 1} and result.retries == 1
    assert budget.snapshot()["spent_usd"] == pytest.approx(2 * worst_usd(records[0], "step"), abs=1e-9)


def test_client_errors_are_not_retried(server, records):
    server.script("400")
    result = backend(server, LocalBudget(1.0), max_retries=5).generate(records[:1], "step")
    assert result.rejections == {HTTP_ERROR: 1} and result.retries == 0
    assert len(server.chat_requests()) == 1


def test_missing_usage_is_settled_at_worst_case(server, records):
    server.script("no_usage")
    budget = LocalBudget(1.0)
    result = backend(server, budget).generate(records[:1], "step")
    assert len(result.examples) == 1 and result.prompt_tokens == 0
    assert budget.snapshot()["spent_usd"] == pytest.approx(worst_usd(records[0], "step"), abs=1e-9)


def test_usage_above_the_worst_case_is_recorded_as_is(server, records, caplog):
    server.script("overbill")
    budget = LocalBudget(100.0)
    with caplog.at_level(logging.WARNING):
        result = backend(server, budget).generate(records[:1], "step")
    assert budget.snapshot()["spent_usd"] == pytest.approx(server_bill(server), abs=1e-9)
    assert budget.snapshot()["spent_usd"] > worst_usd(records[0], "step")
    assert result.billed_usd == pytest.approx(budget.snapshot()["spent_usd"], abs=1e-9)
    assert "more than" in caplog.text


def test_cut_off_replies_count_as_truncated(server, records):
    result = backend(server, LocalBudget(1.0), max_tokens=6).generate(records[:2], "step")
    assert result.rejections == {TRUNCATED: 2}
    assert all(r.usage["completion_tokens"] <= 6 for r in server.chat_requests())


# --- budget ----------------------------------------------------------------------------------------------


def test_zero_budget_sends_nothing(server, records):
    budget = LocalBudget(0.0)
    result = backend(server, budget, concurrency=3).generate(records, "step")
    assert result.rejections == {BUDGET_REFUSED: len(records)} and result.refused_by_budget == len(records)
    assert result.calls == 0 and server.chat_requests() == []


def test_a_refused_reservation_stops_the_call(server, records):
    # Room for exactly one worst case: the first call fits; it costs > 0, so the second cannot.
    budget = LocalBudget(worst_usd(records[0], "step"))
    result = backend(server, budget).generate(records, "step")
    assert len(result.examples) == 1 and result.calls == 1
    assert result.rejections == {BUDGET_REFUSED: len(records) - 1}
    assert budget.snapshot()["refused"] == 1            # one refusal; the rest were never attempted
    assert len(server.chat_requests()) == 1


# --- concurrency and the shared limit --------------------------------------------------------------------


def test_at_most_concurrency_requests_in_flight(records):
    many = make_records(16)
    with FakeOpenAI(answers=answers(many), api_keys=(KEY,), reply_delay_s=0.05) as s:
        result = backend(s, LocalBudget(10.0), concurrency=4).generate(many, "mece")
        assert len(result.examples) == 16
        assert s.max_in_flight[f"Bearer {KEY}"] == 4    # reached, never exceeded


def test_three_workers_share_one_limit():
    """The issue's Done-when: 3 workers at concurrency 4 on one budget, with faults injected.

    Billed cost (reported usage × price) stays within the limit, the refused call would have crossed it,
    and retries equal the retryable faults the server injected.
    """
    keys = ("sk-worker-1", "sk-worker-2", "sk-worker-3")
    strategies = ("step", "mece", "doubt")
    per_worker = 20
    work = [make_records(per_worker, tag) for tag in "abc"]
    everything = [r for w in work for r in w]
    with FakeOpenAI(answers=answers(everything), api_keys=keys, reply_delay_s=0.1, retry_after="0.05") as s:
        w = worst_usd(everything[0], "step")
        usage = [s.expected_usage({"messages": build_messages(r, st), "max_tokens": MAX_TOKENS})
                 for recs, st in zip(work, strategies) for r in recs]
        demand = sum(PRICE.cost(u["prompt_tokens"], u["completion_tokens"]) for u in usage)
        # Less than the work would cost: some call must be refused; far more than 12 in-flight worst cases,
        # so the refusals come late, after the injected faults have been retried.
        limit = 0.8 * demand
        assert limit > 16 * w
        budget = RecordingBudget(limit)
        s.script("429", "500", "500")
        workers = [backend(s, budget, key=k, concurrency=4) for k in keys]
        results: list = [None] * 3

        def run(i):
            results[i] = workers[i].generate(work[i], strategies[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        snap = budget.snapshot()
        assert server_bill(s) <= limit                                   # what the provider would charge
        assert snap["spent_usd"] <= limit and snap["reserved_usd"] == 0
        assert snap["spent_usd"] == pytest.approx(server_bill(s), abs=1e-9)
        assert sum(r.billed_usd for r in results) == pytest.approx(snap["spent_usd"], abs=1e-9)
        # Refused: at least one, and each would have crossed the limit when it was asked.
        assert snap["refused"] >= 1 and budget.refusals
        for before, amount in budget.refusals:
            assert before["spent_usd"] + before["reserved_usd"] + amount > limit
        assert sum(r.refused_by_budget for r in results) >= 1
        # Retries equal the retryable faults injected; every HTTP request is a call or a retry.
        injected = sum(1 for r in s.chat_requests() if r.fault in RETRYABLE)
        assert injected == 3 and sum(r.retries for r in results) == 3
        assert len(s.chat_requests()) == sum(r.calls + r.retries for r in results)
        # Every record is accounted for exactly once; everything emitted is well formed and verified.
        for res, recs, st in zip(results, work, strategies):
            assert len(res.examples) + sum(res.rejections.values()) == len(recs)
            assert set(res.rejections) <= {BUDGET_REFUSED}
            assert all(F.check_example(e) is None and e.verified and e.strategy == st for e in res.examples)
        for k in keys:
            assert s.max_in_flight[f"Bearer {k}"] <= 4


# --- the key stays secret --------------------------------------------------------------------------------


def test_key_is_sent_but_never_logged_or_shown(server, records, caplog):
    server.script("429", "500", "400", "malformed")
    with caplog.at_level(logging.DEBUG):
        b = backend(server, LocalBudget(1.0), concurrency=2)
        b.list_models()
        b.generate(records, "falsify")
    assert all(r.authorization == f"Bearer {KEY}" for r in server.requests)
    assert caplog.records                                   # the run did log (retries, warnings, summary)
    assert KEY not in caplog.text and KEY not in repr(b)


def test_wrong_key_fails_clearly_without_echoing_it(server, records, caplog):
    wrong = "sk-wrong-key-9999-SECRET"
    budget = LocalBudget(1.0)
    with caplog.at_level(logging.DEBUG):
        b = backend(server, budget, key=wrong, concurrency=3)
        with pytest.raises(AuthenticationError) as err:
            b.generate(records, "step")
        with pytest.raises(AuthenticationError) as err2:
            b.list_models()
    assert "Incorrect API key" in str(err.value)            # the server's reason is passed on…
    for text in (str(err.value), str(err2.value), caplog.text, repr(b)):
        assert wrong not in text                            # …with the key itself redacted
    assert budget.snapshot()["reserved_usd"] == 0 and budget.snapshot()["spent_usd"] == 0
