"""Key validation and layout: a key can never escape its store or its prefix."""

from __future__ import annotations

import pytest

from shared.errors import InvalidSpecError
from shared.storage import checkpoint_prefix, published_key, staging_key, validate_key, validate_prefix


@pytest.mark.parametrize(
    ("key", "rule"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("C:/x", "absolute"),
        ("a/../b", "'..'"),
        ("..", "'..'"),
        ("a/./b", "'.'"),
        ("a\\b", "backslash"),
        ("a/\x00b", "control character"),
        ("a\nb", "control character"),
        ("a\x7fb", "control character"),
        ("a//b", "empty path segments"),
        ("a/", "empty path segments"),
        ("x" * 901, "901 bytes"),
        ("é" * 451, "902 bytes"),
    ],
)
def test_bad_keys_are_refused_naming_key_and_rule(key: str, rule: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        validate_key(key)
    assert rule in str(info.value)
    assert repr(key)[:40] in str(info.value)


def test_good_keys_pass_and_are_nfc() -> None:
    assert validate_key("runs/r1/cognate/model.safetensors") == "runs/r1/cognate/model.safetensors"
    assert validate_key("x" * 900) == "x" * 900
    assert validate_key("cafe\u0301") == "caf\u00e9"  # decomposed accent -> one composed object name
    assert validate_key("a/.hidden/b..c") == "a/.hidden/b..c"  # only whole '..' segments are special


def test_prefixes() -> None:
    assert validate_prefix("") == ""
    assert validate_prefix("runs/") == "runs/"
    with pytest.raises(InvalidSpecError):
        validate_prefix("../")


def test_layout() -> None:
    assert staging_key("job-7", 3, "model") == "jobs/job-7/t3/model"
    assert published_key("run-1", "cognate", "model") == "runs/run-1/cognate/model"
    assert checkpoint_prefix("req-9") == "checkpoints/req-9/"


@pytest.mark.parametrize(
    "call",
    [
        lambda: staging_key("a/b", 1, "m"),
        lambda: staging_key("..", 1, "m"),
        lambda: staging_key("j", -1, "m"),
        lambda: staging_key("j", True, "m"),
        lambda: staging_key("j", 1, "../m"),
        lambda: published_key("r", "p/q", "m"),
        lambda: checkpoint_prefix(""),
    ],
)
def test_layout_refuses_ids_that_would_change_the_layout(call) -> None:
    with pytest.raises(InvalidSpecError):
        call()
