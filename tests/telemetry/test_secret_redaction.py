"""A secret reaching a log call by any path is written as *** (DESIGN §8: a secret is never logged)."""

import io
import logging
import warnings

import pytest

from shared.errors import InvalidSpecError
from shared.telemetry import logs
from shared.telemetry.logs import configure_logging, register_secret

TOKEN = "af-tok-3f9c2a7d51e84b06"


@pytest.fixture
def captured(monkeypatch):
    """configure_logging into a buffer; restore the root logger and the secret registry afterwards."""
    monkeypatch.setattr(logs, "_registered", set())
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffer = io.StringIO()
    handler = configure_logging("DEBUG", stream=buffer, secrets=[TOKEN])
    yield buffer
    root.removeHandler(handler)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.captureWarnings(False)


def test_token_in_message_args_and_exception_is_redacted(captured):
    log = logging.getLogger("shared.some.module")  # a library logger, propagating to the root handler
    log.info(f"connecting with {TOKEN}")
    log.info("token=%s user=%s", TOKEN, "alice")
    log.warning("config: %s", {"endpoint": "http://x", "token": TOKEN})
    log.info("%(tok)s in a mapping argument", {"tok": TOKEN})
    try:
        raise PermissionError(f"server rejected bearer {TOKEN}")
    except PermissionError:
        log.exception("request failed")
    text = captured.getvalue()
    assert TOKEN not in text
    assert text.count("***") == 5
    assert "user=alice" in text and "PermissionError: server rejected bearer ***" in text


def test_exception_formatted_by_another_handler_is_redacted_too(captured):
    # The filter rewrites the record itself, so handlers after ours never see the raw token.
    other = io.StringIO()
    second = logging.StreamHandler(other)
    logging.getLogger().addHandler(second)
    try:
        try:
            raise ValueError(TOKEN)
        except ValueError:
            logging.getLogger("x").exception("boom %s", TOKEN)
    finally:
        logging.getLogger().removeHandler(second)
    assert TOKEN not in captured.getvalue()
    assert TOKEN not in other.getvalue() and "ValueError: ***" in other.getvalue()


def test_credential_environment_variables_are_redacted_without_registration(captured, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-key-0123456789abcdef")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_0123456789abcdefXYZ")  # matched by the _TOKEN suffix
    monkeypatch.setenv("DB_PASSWORD", "correct-horse-battery")
    monkeypatch.setenv("SORT_KEY", "name")  # too short to be a credential: must not blank the word "name"
    log = logging.getLogger("env")
    log.info("wandb %s github %s db %s", "wandb-key-0123456789abcdef", "ghp_0123456789abcdefXYZ",
             "correct-horse-battery")
    log.info("sorted by name")
    text = captured.getvalue()
    for secret in ("wandb-key-0123456789abcdef", "ghp_0123456789abcdefXYZ", "correct-horse-battery"):
        assert secret not in text
    assert "sorted by name" in text


def test_a_secret_containing_another_is_replaced_whole(captured):
    register_secret("abcd")
    register_secret("xxabcdxx-longer-secret")
    logging.getLogger("nested").info("value xxabcdxx-longer-secret end")
    line = captured.getvalue()
    assert "value *** end" in line and "xx" not in line.split("value")[1]


def test_secret_registered_after_configuration_is_redacted(captured):
    late = "registered-later-0042"
    register_secret(late)
    logging.getLogger("late").info("late %s", late)
    assert late not in captured.getvalue()


def test_captured_warnings_go_through_the_filter(captured):
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"deprecated use of {TOKEN}", UserWarning)
    assert "deprecated use of ***" in captured.getvalue()


def test_configuring_twice_keeps_one_handler(captured):
    before = len(logging.getLogger().handlers)
    again = configure_logging("INFO", stream=captured)
    assert len(logging.getLogger().handlers) == before
    logging.getLogger().removeHandler(again)


def test_register_secret_guards():
    register_secret("")  # nothing to hide: ignored
    with pytest.raises(InvalidSpecError):
        register_secret("abc")
    with pytest.raises(InvalidSpecError):
        configure_logging("LOUD")
