"""A teacher behind an OpenAI-compatible chat-completions API (OpenAI, OpenRouter, vLLM, Ollama, …).

One record → one call (POST {api_base}/chat/completions) → parse_reply. Around each attempt:

  cost      the attempt's worst case is reserved on the shared Budget before it is sent — prompt tokens
            bounded by the UTF-8 bytes of the messages plus a per-message allowance (a byte-level BPE token
            covers ≥ 1 byte), completion tokens by `max_tokens`, which the request carries — and settled
            with the reported `usage` (the worst case when there is none). A refused reservation stops the
            generate() call: that record and every one not yet started count as "budget_refused". So the
            limit holds across every worker sharing the Budget, whatever their number and concurrency.
  retries   tenacity, on 429, 5xx, timeouts and connection errors: exponential backoff with jitter, never
            shorter than the server's Retry-After (seconds or HTTP date; capped at max_wait_s); after
            max_retries the record counts as "timeout" or "http_error". Other 4xx are final ("http_error");
            401/403 abort the call with AuthenticationError (every record would fail the same way).
  malformed a 200 whose body is not a chat completion is final ("malformed_response"), not retried: the
            provider has most likely billed it, so a retry could pay twice for one record. It is settled
            at the worst case, since its real cost is unknown; so are timeouts and dropped connections
            after the request was sent (the server may have done the work), while error statuses and
            connections never made release their reservation.
  secrets   the key is read from the environment, sent only in the Authorization header, and redacted
            from every message this module writes (logs, exceptions, repr).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from shared.data.records import Record
from shared.errors import AuthenticationError, FailedPreconditionError, InvalidSpecError

from .budget import Budget, Price
from .format import EMPTY_PROMPT, Example, strategy_token
from .prompts import NO_ANSWER, BackendResult, build_messages, parse_reply

log = logging.getLogger(__name__)

__all__ = ["OpenAICompatibleBackend", "retry_after_seconds", "worst_case_prompt_tokens"]

# Rejection reasons added here.
BUDGET_REFUSED = "budget_refused"
HTTP_ERROR = "http_error"
TIMEOUT = "timeout"
MALFORMED = "malformed_response"
TRUNCATED = "truncated"  # cut off by max_tokens before a usable reply

# Chat templates wrap each message in a few tokens (role markers, separators) and prime the reply with a
# few more: OpenAI documents 3 + 3, Llama-3-style templates use about 5 per message. 8 bounds them all.
PER_MESSAGE_TOKENS = 8
REPLY_PRIMING_TOKENS = 8


def worst_case_prompt_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """An upper bound on the prompt tokens a server counts for these messages (see the module docstring)."""
    return sum(len(m["role"].encode()) + len(m["content"].encode()) + PER_MESSAGE_TOKENS
               for m in messages) + REPLY_PRIMING_TOKENS


def retry_after_seconds(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Seconds a response asks us to wait: `retry-after-ms`, or `Retry-After` as seconds or an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000
            if math.isfinite(value):
                return max(0.0, value)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
        return max(0.0, value) if math.isfinite(value) else None
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


class _Transient(Exception):
    """An attempt that may succeed if repeated (429, 5xx, timeout, connection)."""

    def __init__(self, reason: str, detail: str, retry_after: float | None = None):
        super().__init__(detail)
        self.reason = reason
        self.retry_after = retry_after


class _Final(Exception):
    """An attempt that failed in a way a repeat would not fix; the record counts under `reason`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Outcome:
    example: Example | None = None
    reason: str | None = None
    attempts: int = 0
    billed_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class _Run:
    """State one generate() call shares between its threads."""

    strategy: str
    stop: threading.Event = field(default_factory=threading.Event)


def _positive(value: Any, name: str, *, integer: bool = False, allow_zero: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or value < 0 or (
            value == 0 and not allow_zero):
        kind = "an integer" if integer else "a number"
        bound = "≥ 0" if allow_zero else "> 0"
        raise InvalidSpecError(f"must be {kind} {bound}, got {value!r}", field=name)


class OpenAICompatibleBackend:
    """Generate examples with a chat model behind an OpenAI-compatible HTTP API.

    `api_key_env` names the environment variable holding the key; None for a server without auth (a local
    vLLM or Ollama). `backoff_s` is the first retry's delay (doubling after, plus up to `backoff_s` of
    jitter) and `max_wait_s` caps any one delay, Retry-After included.
    """

    def __init__(self, api_base: str, model: str, *, price: Price, budget: Budget, concurrency: int,
                 api_key_env: str | None = "OPENAI_API_KEY", timeout_s: float = 60, max_retries: int = 5,
                 max_tokens: int = 512, temperature: float = 0.7, backoff_s: float = 1.0,
                 max_wait_s: float = 30.0, env: Mapping[str, str] = os.environ):
        if not isinstance(api_base, str) or not api_base.startswith(("http://", "https://")):
            raise InvalidSpecError(f"must be an http(s) URL such as https://api.openai.com/v1, got "
                                   f"{api_base!r}", field="api_base")
        if not isinstance(model, str) or not model.strip():
            raise InvalidSpecError("must name the model, e.g. gpt-4o-mini", field="model")
        if not isinstance(price, Price):
            raise InvalidSpecError(f"must be a Price, got {type(price).__name__}", field="price")
        if not all(callable(getattr(budget, m, None)) for m in ("reserve", "settle", "release", "snapshot")):
            raise InvalidSpecError(f"must implement the Budget protocol, got {type(budget).__name__}",
                                   field="budget")
        _positive(concurrency, "concurrency", integer=True)
        _positive(timeout_s, "timeout_s")
        _positive(max_retries, "max_retries", integer=True, allow_zero=True)
        _positive(max_tokens, "max_tokens", integer=True)
        _positive(temperature, "temperature", allow_zero=True)
        _positive(backoff_s, "backoff_s", allow_zero=True)
        _positive(max_wait_s, "max_wait_s", allow_zero=True)
        self.api_base = api_base.rstrip("/")
        self.model = model
        self.origin = f"openai:{model}"
        self.price = price
        self.budget = budget
        self.concurrency = concurrency
        self.timeout_s = float(timeout_s)
        self.max_retries = max_retries
        self.max_tokens = max_tokens
        self.temperature = float(temperature)
        self.backoff_s = float(backoff_s)
        self.max_wait_s = float(max_wait_s)
        self._api_key = self._read_key(api_key_env, env)
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))
        self._slots = threading.BoundedSemaphore(concurrency)  # requests in flight, across generate() calls
        self._backoff = wait_exponential_jitter(multiplier=self.backoff_s, max=self.max_wait_s,
                                                jitter=self.backoff_s)

    @staticmethod
    def _read_key(api_key_env: str | None, env: Mapping[str, str]) -> str | None:
        if api_key_env is None:
            return None
        if not isinstance(api_key_env, str) or not api_key_env:
            raise InvalidSpecError("must name an environment variable, or be None for a server without "
                                   "auth", field="api_key_env")
        key = env.get(api_key_env, "").strip()
        if not key:
            raise InvalidSpecError(f"the environment variable {api_key_env} holding the teacher's API key is "
                                   f"not set (or empty): export {api_key_env}=<your key>, or set "
                                   f"api_key_env to the variable that holds it (none for a server "
                                   f"without auth)", field="api_key_env")
        return key

    def __repr__(self) -> str:
        return (f"OpenAICompatibleBackend(api_base={self.api_base!r}, model={self.model!r}, "
                f"concurrency={self.concurrency}, auth={'yes' if self._api_key else 'no'})")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "OpenAICompatibleBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _excerpt(self, response: httpx.Response) -> str:
        try:
            body = response.text
        except Exception:  # an undecodable body: the status alone must do
            body = ""
        return self._redact(" ".join(body.split())[:200])

    # --- retries -------------------------------------------------------------------------------------

    def _wait(self, state: Any) -> float:
        delay = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        asked = getattr(exc, "retry_after", None)
        if asked is not None:
            delay = max(delay, min(asked, self.max_wait_s))
        return delay

    def _retrying(self) -> Retrying:
        return Retrying(retry=retry_if_exception_type(_Transient), wait=self._wait,
                        stop=stop_after_attempt(self.max_retries + 1), reraise=True,
                        before_sleep=self._log_retry)

    def _log_retry(self, state: Any) -> None:
        exc = state.outcome.exception()
        log.info("%s: retrying after %s (attempt %d of %d) in %.2f s", self.origin, exc,
                 state.attempt_number, self.max_retries + 1, state.upcoming_sleep)

    def _check_auth(self, response: httpx.Response) -> None:
        if response.status_code in (401, 403):
            raise AuthenticationError(
                f"{self.api_base} refused the API key (HTTP {response.status_code}: {self._excerpt(response)}); "
                f"check the key in the environment variable and its access to model {self.model!r}")

    # --- models --------------------------------------------------------------------------------------

    def list_models(self) -> list[str]:
        """The model ids the server lists (GET {api_base}/models)."""
        url = f"{self.api_base}/models"

        def attempt() -> list[str]:
            try:
                response = self._client.get(url)
            except httpx.TimeoutException as exc:
                raise _Transient(TIMEOUT, f"timeout ({type(exc).__name__})") from None
            except httpx.TransportError as exc:
                raise _Transient(HTTP_ERROR, self._redact(f"{type(exc).__name__}: {exc}")) from None
            self._check_auth(response)
            if response.status_code == 429 or response.status_code >= 500:
                raise _Transient(HTTP_ERROR, f"HTTP {response.status_code}", retry_after_seconds(response.headers))
            if response.status_code != 200:
                raise FailedPreconditionError(f"GET {url} answered HTTP {response.status_code}: "
                                              f"{self._excerpt(response)}")
            try:
                return [str(m["id"]) for m in response.json()["data"]]
            except (ValueError, KeyError, TypeError) as exc:
                raise FailedPreconditionError(f"GET {url} did not return a model list "
                                              f"({type(exc).__name__}): {self._excerpt(response)}") from None

        try:
            return self._retrying()(attempt)
        except _Transient as exc:
            raise FailedPreconditionError(f"cannot list the models at {url} after {self.max_retries} "
                                          f"retries: {exc}") from None

    def check_model(self) -> None:
        """InvalidSpecError unless the server lists `model`."""
        served = self.list_models()
        if self.model not in served:
            shown = ", ".join(served[:20]) + (f", … ({len(served)} in all)" if len(served) > 20 else "")
            raise InvalidSpecError(f"{self.api_base} does not serve model {self.model!r}; it lists: "
                                   f"{shown or 'no models'}", field="model")

    # --- generation ----------------------------------------------------------------------------------

    def generate(self, records: Sequence[Record], strategy: str) -> BackendResult:
        """One example of `strategy` per record, or a counted rejection; examples keep the input order."""
        strategy_token(strategy)  # an unknown strategy fails here, before anything is spent
        run = _Run(strategy)
        outcomes: list[_Outcome | None] = [None] * len(records)
        fatal: BaseException | None = None
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="teacher") as pool:
            index = {pool.submit(self._one, record, run): i for i, record in enumerate(records)}
            for future in as_completed(index):
                try:
                    outcomes[index[future]] = future.result()
                except BaseException as exc:  # AuthenticationError or a bug: stop starting calls, re-raise
                    run.stop.set()
                    fatal = fatal or exc
        if fatal is not None:
            raise fatal
        result = BackendResult()
        for out in outcomes:
            assert out is not None
            if out.attempts:
                result.calls += 1
                result.retries += out.attempts - 1
            result.billed_usd += out.billed_usd
            result.prompt_tokens += out.prompt_tokens
            result.completion_tokens += out.completion_tokens
            if out.example is not None:
                result.examples.append(out.example)
            else:
                assert out.reason is not None
                result.rejections[out.reason] += 1
        result.refused_by_budget = result.rejections[BUDGET_REFUSED]
        log.info("%s %s: %d records → %d examples, rejected %s; %d calls, %d retries, %.4f USD, "
                 "%d+%d tokens", self.origin, strategy, len(records), len(result.examples),
                 dict(result.rejections) or "none", result.calls, result.retries, result.billed_usd,
                 result.prompt_tokens, result.completion_tokens)
        return result

    def _one(self, record: Record, run: _Run) -> _Outcome:
        out = _Outcome()
        messages = build_messages(record, run.strategy)
        if not record.prompt.strip():  # a language-modelling record: nothing to ask
            out.reason = EMPTY_PROMPT
            return out
        worst_usd = self.price.cost(worst_case_prompt_tokens(messages), self.max_tokens)
        body = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "n": 1}
        try:
            content, finish = self._retrying()(self._attempt, body, worst_usd, run, out)
        except _Transient as exc:
            out.reason = exc.reason
            return out
        except _Final as exc:
            out.reason = exc.reason
            return out
        out.example, out.reason = parse_reply(content, record, run.strategy, self.origin)
        if out.reason == NO_ANSWER and finish == "length":
            out.reason = TRUNCATED
        return out

    def _attempt(self, body: dict[str, Any], worst_usd: float, run: _Run,
                 out: _Outcome) -> tuple[str | None, str | None]:
        if run.stop.is_set():  # the budget refused another call of this generate(): start no more
            raise _Final(BUDGET_REFUSED)
        with self._slots:
            rid = self.budget.reserve(worst_usd)
            if rid is None:
                run.stop.set()
                raise _Final(BUDGET_REFUSED)
            out.attempts += 1
            try:
                response = self._client.post(f"{self.api_base}/chat/completions", json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                self.budget.release(rid)  # never reached the server
                reason = TIMEOUT if isinstance(exc, httpx.TimeoutException) else HTTP_ERROR
                raise _Transient(reason, f"{type(exc).__name__} (not sent)") from None
            except httpx.TimeoutException as exc:
                self._settle(rid, worst_usd, out)  # the server may have done (and billed) the work
                raise _Transient(TIMEOUT, f"timeout after {self.timeout_s:g} s ({type(exc).__name__})") from None
            except httpx.TransportError as exc:
                self._settle(rid, worst_usd, out)
                raise _Transient(HTTP_ERROR, f"{type(exc).__name__}") from None
            except BaseException:
                self.budget.release(rid)
                raise
        return self._read(response, rid, worst_usd, out)

    def _settle(self, rid: str, usd: float, out: _Outcome) -> None:
        self.budget.settle(rid, usd)
        out.billed_usd += usd

    def _read(self, response: httpx.Response, rid: str, worst_usd: float,
              out: _Outcome) -> tuple[str | None, str | None]:
        status = response.status_code
        if status != 200:
            self.budget.release(rid)  # an error status is not billed
            self._check_auth(response)
            if status == 429 or status >= 500:
                raise _Transient(HTTP_ERROR, f"HTTP {status}", retry_after_seconds(response.headers))
            log.warning("%s: HTTP %d, not retried: %s", self.origin, status, self._excerpt(response))
            raise _Final(HTTP_ERROR)
        try:
            data = response.json()
            choice = data["choices"][0]
            content = choice["message"].get("content")
            if content is not None and not isinstance(content, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            self._settle(rid, worst_usd, out)  # probably billed; the real cost is unknown
            log.warning("%s: a 200 reply that is not a chat completion (%s): %s", self.origin,
                        type(exc).__name__, self._excerpt(response))
            raise _Final(MALFORMED) from None
        usage = data.get("usage") if isinstance(data, dict) else None
        tokens = self._usage(usage)
        if tokens is None:
            log.debug("%s: no usage in the reply; settled at the worst case", self.origin)
            self._settle(rid, worst_usd, out)
        else:
            out.prompt_tokens += tokens[0]
            out.completion_tokens += tokens[1]
            self._settle(rid, self.price.cost(*tokens), out)
        finish = choice.get("finish_reason") if isinstance(choice, dict) else None
        return content, finish

    @staticmethod
    def _usage(usage: Any) -> tuple[int, int] | None:
        if not isinstance(usage, dict):
            return None
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (p, c)):
            return None
        return p, c

