"""detect_training_issues on synthetic loss curves with known shapes."""

import math

import numpy as np
import pytest

from shared.errors import AgentForgeError, InvalidSpecError
from shared.utils import (
    DivergenceError,
    NonFiniteLossError,
    PlateauError,
    TrainingIssue,
    detect_training_issues,
)


def noisy(curve: np.ndarray, scale: float = 0.05, seed: int = 0) -> list[float]:
    """The curve with multiplicative per-step noise (a batch's loss scatters around the trend)."""
    rng = np.random.default_rng(seed)
    return list(curve * (1 + scale * rng.standard_normal(curve.size)))


def decreasing(n: int) -> np.ndarray:
    t = np.arange(n)
    return 1.0 + 5.0 * np.exp(-t / 800.0)  # still improving >1% per 1000 steps at n=3000


@pytest.mark.parametrize("seed", range(5))
def test_noisy_decreasing_curve_is_healthy(seed):
    for n in (120, 700, 3000):  # before and after each check becomes possible
        assert detect_training_issues(noisy(decreasing(n), seed=seed)) is None


def test_short_history_is_healthy_whatever_its_shape():
    rising = [1.0, 2.0, 4.0, 8.0, 16.0]
    assert detect_training_issues(rising) is None
    assert detect_training_issues([]) is None


def test_nan_names_its_step():
    losses = noisy(decreasing(300))
    losses[287] = math.nan
    with pytest.raises(NonFiniteLossError) as err:
        detect_training_issues(losses)
    assert err.value.step == 287
    assert "step 287" in str(err.value)


def test_inf_in_a_short_history_is_still_caught():
    with pytest.raises(NonFiniteLossError) as err:
        detect_training_issues([2.0, 1.9, math.inf])
    assert err.value.step == 2


def test_old_nan_outside_the_window_does_not_poison_later_checks():
    losses = noisy(decreasing(1000))
    losses[10] = math.nan  # long ago, followed by a healthy recovery
    assert detect_training_issues(losses) is None


def test_exponential_blow_up_is_divergence():
    healthy = decreasing(400)
    blow_up = healthy[-1] * np.exp(np.arange(100) / 25.0)  # ×50 over 100 steps
    with pytest.raises(DivergenceError) as err:
        detect_training_issues(noisy(np.concatenate([healthy, blow_up])))
    assert err.value.step == 499
    assert "1.5x the best mean" in str(err.value)


def test_sustained_slow_rise_is_divergence_by_trend():
    healthy = decreasing(300)
    # +4% per 50-step window: never 1.5x the best within these steps, but rising steadily.
    rise = healthy[-1] * (1.04 ** (np.arange(150) / 50.0))
    with pytest.raises(DivergenceError, match="risen for 3 consecutive windows"):
        detect_training_issues(noisy(np.concatenate([healthy, rise]), scale=0.01))


@pytest.mark.parametrize("seed", range(5))
def test_flat_noisy_curve_after_a_long_window_is_a_plateau(seed):
    curve = np.concatenate([decreasing(500), np.full(1200, decreasing(500)[-1])])
    with pytest.raises(PlateauError) as err:
        detect_training_issues(noisy(curve, scale=0.02, seed=seed), plateau_window=1000)
    assert err.value.step == 1699
    assert "plateaued" in str(err.value)


def test_progress_late_in_the_window_is_not_a_plateau():
    # Flat for 700 steps, then a 10% drop: the last 1000 steps did improve.
    curve = np.concatenate([np.full(700, 2.0), np.linspace(2.0, 1.8, 300)])
    assert detect_training_issues(noisy(curve, scale=0.02), plateau_window=1000) is None


def test_plateau_needs_a_long_enough_history():
    flat = noisy(np.full(900, 2.0))
    assert detect_training_issues(flat, plateau_window=1000) is None


def test_issues_share_one_catchable_base():
    for cls in (NonFiniteLossError, DivergenceError, PlateauError):
        assert issubclass(cls, TrainingIssue) and issubclass(cls, AgentForgeError)


def test_negative_losses_are_judged_relative_to_their_magnitude():
    # An RL objective around -10 that keeps improving is healthy; one that climbs to -2 diverged.
    improving = list(-10.0 - np.arange(200) * 0.01)
    assert detect_training_issues(improving) is None
    worse = improving[:150] + [-2.0] * 50
    with pytest.raises(DivergenceError):
        detect_training_issues(worse)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"window": 0}, "window"), ({"divergence_factor": 1.0}, "divergence_factor"),
     ({"plateau_tolerance": -0.1}, "plateau_tolerance"), ({"trend_windows": 1}, "trend_windows")],
)
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(InvalidSpecError) as err:
        detect_training_issues([1.0] * 10, **kwargs)
    assert err.value.field == field
