"""Logging setup for entry points, with secrets redacted from every record.

Library modules only do `log = logging.getLogger(__name__)`; an entry point (CLI, service main) calls
`configure_logging()` once. The handler it installs carries a `SecretRedactingFilter`, so a token that
reaches a log call by any path (the message, a %-argument, an exception's text, a stack) is written as
"***". The design's rule "a secret is never logged" is enforced here, not left to each call site.

Secrets are the values passed to `register_secret`/`configure_logging(secrets=...)` and the values of
environment variables that hold credentials: a fixed list plus any variable whose name ends with _TOKEN,
_SECRET, _KEY or _PASSWORD and whose value is at least 8 characters (shorter values would match ordinary
words and blank out logs while protecting nothing that a guess could not find).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from typing import IO, Iterable

from shared.errors import InvalidSpecError

DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "***"

SECRET_ENV_VARS = ("AGENTFORGE_TOKEN", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY", "OPENAI_API_KEY")
SECRET_ENV_SUFFIXES = ("_TOKEN", "_SECRET", "_KEY", "_PASSWORD")
MIN_ENV_SECRET_LEN = 8
MIN_REGISTERED_SECRET_LEN = 4

_registered: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Redact `value` from every record handled by a SecretRedactingFilter from now on.

    Empty values are ignored (nothing to hide); values shorter than 4 characters are refused, since
    redacting them would blank out ordinary text.
    """
    if not value:
        return
    if not isinstance(value, str):
        raise InvalidSpecError(f"a secret must be a string, got {type(value).__name__}", field="secret")
    if len(value) < MIN_REGISTERED_SECRET_LEN:
        raise InvalidSpecError(f"a secret shorter than {MIN_REGISTERED_SECRET_LEN} characters cannot be "
                               "redacted without destroying the log", field="secret")
    with _lock:
        _registered.add(value)


def _env_secrets() -> set[str]:
    found = set()
    for name, value in os.environ.items():
        upper = name.upper()
        named = upper in SECRET_ENV_VARS or upper.endswith(SECRET_ENV_SUFFIXES)
        if named and len(value) >= MIN_ENV_SECRET_LEN:
            found.add(value)
    return found


def current_secrets() -> set[str]:
    """Every value that is redacted right now (registered + credential environment variables)."""
    with _lock:
        registered = set(_registered)
    return registered | _env_secrets()


class SecretRedactingFilter(logging.Filter):
    """Replace every known secret with "***" in a record's message, arguments, exception and stack.

    The record is rewritten in place (message rendered with its args, exception text pre-formatted),
    so every handler after this one sees only the redacted text. The environment is read per record:
    a credential exported after logging was configured is still caught.
    """

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        for s in secrets:
            register_secret(s)
        self._formatter = logging.Formatter()
        self._cache_key: frozenset[str] | None = None
        self._pattern: re.Pattern[str] | None = None

    def _compiled(self) -> re.Pattern[str] | None:
        secrets = frozenset(current_secrets())
        if secrets != self._cache_key:
            # Longest first, so a secret that contains another is replaced whole.
            ordered = sorted(secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
            self._cache_key = secrets
        return self._pattern

    def redact(self, text: str) -> str:
        pattern = self._compiled()
        return pattern.sub(REDACTED, text) if pattern is not None and text else text

    def filter(self, record: logging.LogRecord) -> bool:
        pattern = self._compiled()
        if pattern is None:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep what we can show, redacted
            message = f"{record.msg} {record.args!r}"
        record.msg = pattern.sub(REDACTED, message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = pattern.sub(REDACTED, record.exc_text)
        if record.stack_info:
            record.stack_info = pattern.sub(REDACTED, record.stack_info)
        return True


_HANDLER_MARK = "_agentforge_handler"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (it may be replaced after configuration, e.g. by
    a test harness or a daemonizing wrapper), never to a stream that has since been closed."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property ignores it
        pass


def configure_logging(
    level: int | str = "INFO",
    *,
    fmt: str = DEFAULT_FORMAT,
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Install one stream handler (stderr by default) with secret redaction on the root logger.

    For entry points only. Calling it again replaces the handler it installed before (it never
    stacks a second one, and leaves handlers installed by others alone). Returns the handler.
    """
    if isinstance(level, str):
        resolved = logging.getLevelName(level.upper())
        if not isinstance(resolved, int):
            raise InvalidSpecError(f"unknown log level {level!r}", field="level")
        level = resolved
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(SecretRedactingFilter(secrets))
    root.addHandler(handler)
    root.setLevel(level)
    # Warnings (e.g. from libraries) go through the same redacting handler.
    logging.captureWarnings(True)
    return handler
