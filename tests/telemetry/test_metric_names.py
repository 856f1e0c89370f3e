"""Metric-name constants cover every name the checklist logs, and only names it uses."""

import re
from pathlib import Path

import pytest

from shared.errors import InvalidSpecError
from shared.telemetry import metric_names as M

CHECKLIST = (Path(__file__).resolve().parents[2] / ".." / "shared" / "spec" / "implementation-checklist.md").resolve()
needs_checklist = pytest.mark.skipif(not CHECKLIST.is_file(), reason=f"checklist not present at {CHECKLIST}")


def _logged_keys(text: str) -> set[str]:
    """String keys inside every wandb.log({...}) call of the checklist."""
    keys = set()
    for match in re.finditer(r"wandb\.log\(\{(.*?)\}\)", text, flags=re.S):
        keys.update(re.findall(r'f?"([^"{]+)(?:\{[^}]*\})?"\s*:', match.group(1)))
    return keys


@needs_checklist
def test_every_logged_checklist_name_has_a_constant():
    keys = _logged_keys(CHECKLIST.read_text())
    assert {"train/loss", "rl/reward", "anti_theater/correlation", "baking/accuracy_"} <= keys  # parser sanity
    known = M.ALL_METRICS | {M.BAKING_ACCURACY_PREFIX, M.FINAL_PREFIX}
    assert keys - known == set()


@needs_checklist
def test_every_constant_comes_from_the_checklist():
    text = CHECKLIST.read_text()
    for name in M.ALL_METRICS:
        bare = name.removeprefix(M.FINAL_PREFIX)
        assert f'"{bare}"' in text, f"{name} does not appear in the checklist"


def test_parameterised_names():
    assert M.baking_accuracy("<step>") == "baking/accuracy_step"
    assert M.baking_accuracy("mece") == "baking/accuracy_mece"
    assert M.final("gsm8k_acc") == M.FINAL_GSM8K_ACC
    with pytest.raises(InvalidSpecError):
        M.baking_accuracy("two words")
    with pytest.raises(InvalidSpecError):
        M.final("Bad-Name")
