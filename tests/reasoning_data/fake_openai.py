"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests: canned chat completions and scripted faults.

Speaks `GET /v1/models` and `POST /v1/chat/completions` over real sockets (stdlib http.server, one thread
per connection), so the client's timeouts, connection pool and retries are exercised for real.

Replies: the strategy is the strategy token the request's messages carry, the answer the one registered
for the question found in the user message; the reply is well formed for that strategy, with `usage`
(prompt tokens = words of the messages, completion tokens = words of the reply, both below what a real
tokenizer counts in bytes) and cut at the request's `max_tokens` words like a real server.

Faults, consumed one per chat request in arrival order (`script(...)`):
    "429"          429 with Retry-After: `retry_after` (seconds)
    "500"          500
    "400"          400 (not retryable)
    "timeout"      a correct reply, but only after `slow_s` seconds (the server still bills it)
    "malformed"    200 whose body is not JSON
    "no_wrapper"   200, a reply without [thinking] … [/endthinking]
    "wrong_answer" 200, well formed but with a wrong answer
    "no_usage"     200, a correct reply without `usage`
    "overbill"     200, a correct reply whose usage claims `overbill_tokens` completion tokens

Every request is recorded (path, Authorization header, JSON body, fault, status, usage billed, times).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from shared.data.special_tokens import STRATEGY_TOKENS

FAULTS = ("429", "500", "400", "timeout", "malformed", "no_wrapper", "wrong_answer", "no_usage", "overbill")
RETRYABLE = ("429", "500", "timeout")


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None
    body: Any
    fault: str | None = None
    status: int = 0
    usage: dict[str, int] | None = None   # what the server billed (None: nothing it could report)
    started: float = 0.0
    finished: float = 0.0


def good_reply(strategy_tok: str, answer: str) -> str:
    return (f"{strategy_tok} First I restate what is asked. {strategy_tok} Then I work it out and check it: "
            f"the result is {answer}.")


class FakeOpenAI:
    def __init__(self, *, answers: dict[str, str] | None = None, models: tuple[str, ...] = ("teacher-1",),
                 api_keys: tuple[str, ...] | None = None, retry_after: str = "0.05", slow_s: float = 0.6,
                 reply_delay_s: float = 0.0, overbill_tokens: int = 100_000):
        self.answers = dict(answers or {})
        self.models = models
        self.api_keys = api_keys
        self.retry_after = retry_after
        self.slow_s = slow_s
        self.reply_delay_s = reply_delay_s
        self.overbill_tokens = overbill_tokens
        self.requests: list[Seen] = []
        self._faults: deque[str] = deque()
        self._lock = threading.Lock()
        self._in_flight: dict[str | None, int] = {}
        self.max_in_flight: dict[str | None, int] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    # --- control -------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, *faults: str) -> None:
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        with self._lock:
            self._faults.extend(faults)

    def chat_requests(self) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def billed_usage(self) -> list[dict[str, int]]:
        """Usage of every completion the server produced (timed-out ones included: a provider bills them)."""
        return [r.usage for r in self.chat_requests() if r.usage is not None]

    def expected_usage(self, body: dict[str, Any]) -> dict[str, int]:
        """The usage a fault-free reply to this request body reports (replies are deterministic)."""
        return self._chat(body, None)[3]

    # --- replies -------------------------------------------------------------------------------------

    def _answer_for(self, user_text: str) -> str:
        for question, answer in self.answers.items():
            if question in user_text:
                return answer
        return "0"

    def _chat(self, body: dict[str, Any], fault: str | None) -> tuple[int, dict[str, str], bytes, Any]:
        """(status, headers, body bytes, usage billed)."""
        if fault == "429":
            return 429, {"Retry-After": self.retry_after}, b'{"error": {"message": "rate limited"}}', None
        if fault == "500":
            return 500, {}, b'{"error": {"message": "internal error"}}', None
        if fault == "400":
            return 400, {}, b'{"error": {"message": "bad request"}}', None
        messages = body["messages"]
        text = " ".join(m["content"] for m in messages)
        tok = next((t for t in STRATEGY_TOKENS if t in text), "<step>")
        answer = self._answer_for(messages[-1]["content"])
        if fault == "wrong_answer":
            answer = answer + "1"
        reasoning = good_reply(tok, answer)
        content = f"[thinking] {reasoning} [/endthinking]\nAnswer: {answer}"
        if fault == "no_wrapper":
            content = f"{reasoning}\nAnswer: {answer}"
        words = content.split(" ")
        finish = "stop"
        if len(words) > body.get("max_tokens", 1 << 30):
            words, finish = words[:body["max_tokens"]], "length"
            content = " ".join(words)
        usage = {"prompt_tokens": len(text.split()), "completion_tokens": len(words)}
        if fault == "overbill":
            usage["completion_tokens"] = self.overbill_tokens
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if fault == "malformed":
            return 200, {}, b'{"id": "cmpl-1", "choices": [{"message": ', usage
        reply: dict[str, Any] = {
            "id": "chatcmpl-fake", "object": "chat.completion", "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish}],
        }
        if fault == "no_usage":
            return 200, {}, json.dumps(reply).encode(), usage
        reply["usage"] = usage
        return 200, {}, json.dumps(reply).encode(), usage

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, headers: dict[str, str], payload: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout fault)

            def _authorised(self, seen: Seen) -> bool:
                if fake.api_keys is None:
                    return True
                given = (seen.authorization or "").removeprefix("Bearer ")
                if given in fake.api_keys:
                    return True
                # Real providers echo (part of) a wrong key: the client must not repeat it anywhere.
                payload = json.dumps({"error": {"message": f"Incorrect API key provided: {given}"}}).encode()
                seen.status = 401
                self._send(401, {}, payload)
                return False

            def do_GET(self) -> None:
                seen = Seen("GET", self.path, self.headers.get("Authorization"), None, started=time.monotonic())
                with fake._lock:
                    fake.requests.append(seen)
                if not self._authorised(seen):
                    return
                if self.path.rstrip("/") != "/v1/models":
                    seen.status = 404
                    self._send(404, {}, b'{"error": {"message": "not found"}}')
                    return
                data = [{"id": m, "object": "model", "owned_by": "fake"} for m in fake.models]
                seen.status = 200
                self._send(200, {}, json.dumps({"object": "list", "data": data}).encode())

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                auth = self.headers.get("Authorization")
                seen = Seen("POST", self.path, auth, None, started=time.monotonic())
                try:
                    seen.body = json.loads(raw)
                except ValueError:
                    seen.body = raw
                with fake._lock:
                    fake.requests.append(seen)
                    fake._in_flight[auth] = fake._in_flight.get(auth, 0) + 1
                    fake.max_in_flight[auth] = max(fake.max_in_flight.get(auth, 0), fake._in_flight[auth])
                try:
                    if not self._authorised(seen):
                        return
                    if self.path.rstrip("/") != "/v1/chat/completions" or not isinstance(seen.body, dict):
                        seen.status = 400
                        self._send(400, {}, b'{"error": {"message": "bad request"}}')
                        return
                    with fake._lock:
                        seen.fault = fake._faults.popleft() if fake._faults else None
                    status, headers, payload, usage = fake._chat(seen.body, seen.fault)
                    # Error statuses come back at once; completions take reply_delay_s (slow_s when slow).
                    time.sleep(fake.slow_s if seen.fault == "timeout" else
                               fake.reply_delay_s if status == 200 else 0.0)
                    seen.status, seen.usage = status, usage
                    self._send(status, headers, payload)
                finally:
                    seen.finished = time.monotonic()
                    with fake._lock:
                        fake._in_flight[auth] -= 1

        return Handler
