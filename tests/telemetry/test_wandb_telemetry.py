"""Telemetry (the W&B wrapper): offline runs on disk, validation of what is logged, read-back. No network."""

import logging
import math

import numpy as np
import pytest
import torch

from shared.errors import FailedPreconditionError, InvalidSpecError
from shared.telemetry import Telemetry, metric_names as M, resolve_mode


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def test_offline_run_writes_its_directory_and_remembers_what_was_logged(tmp_path, caplog):
    with Telemetry().start("agent-forge-v2", "phase1-test", {"batch_size": 8}, dir=tmp_path) as tel:
        for step, loss in enumerate([2.5, 2.1, 1.9]):
            tel.log({M.TRAIN_LOSS: loss, M.TRAIN_PERPLEXITY: math.exp(loss)}, step=step)
        tel.log({M.VAL_LOSS: torch.tensor(1.8), M.VAL_ACCURACY: np.float32(0.25)}, step=3)
        run_dir = tel.run_dir
        assert tel.mode == "offline"
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0] == run_dir.parent
    record = next(runs[0].glob("run-*.wandb"))
    assert record.stat().st_size > 0
    assert tel.series(M.TRAIN_LOSS) == [(0, 2.5), (1, 2.1), (2, 1.9)]
    assert tel.history[3] == {"_step": 3, M.VAL_LOSS: pytest.approx(1.8), M.VAL_ACCURACY: pytest.approx(0.25)}
    assert tel.run is None  # the context manager finished the run


def test_non_finite_and_non_numeric_values_are_dropped_with_a_warning(caplog):
    tel = Telemetry().start("p", "drops", mode="disabled")
    with caplog.at_level(logging.WARNING, logger="shared.telemetry.wandb_run"):
        accepted = tel.log({"train/loss": float("nan"), "rl/reward": float("inf"), "note": "text",
                            "val/loss": 1.25, "": 3.0, "_runtime": 1.0})
    assert accepted == {"val/loss": 1.25}
    assert tel.history == [{"_step": None, "val/loss": 1.25}]
    warned = " ".join(r.getMessage() for r in caplog.records)
    for key in ("'train/loss'", "'rl/reward'", "'note'", "''", "'_runtime'"):
        assert key in warned
    tel.finish()


def test_values_are_never_coerced():
    tel = Telemetry().start("p", "exact", mode="disabled")
    tel.log({"generation": 3, "best_fitness": 0.1 + 0.2, "flag": True})
    assert tel.history[0] == {"_step": None, "generation": 3, "best_fitness": 0.1 + 0.2, "flag": True}
    assert type(tel.history[0]["generation"]) is int
    tel.finish()


def test_nested_final_metrics_are_flattened_as_the_checklist_logs_them():
    tel = Telemetry().start("p", "final", mode="disabled")
    tel.log({"final/": {"perplexity": 12.5, "gsm8k_acc": 0.12}, "val": {"loss": 2.0}})
    assert tel.history[0] == {"_step": None, M.FINAL_PERPLEXITY: 12.5, M.FINAL_GSM8K_ACC: 0.12, M.VAL_LOSS: 2.0}
    tel.finish()


def test_a_step_that_goes_backwards_is_dropped_like_wandb_would(caplog):
    tel = Telemetry().start("p", "steps", mode="disabled")
    tel.log({"train/loss": 2.0}, step=10)
    with caplog.at_level(logging.WARNING):
        assert tel.log({"train/loss": 1.0}, step=9) == {}
    assert tel.series("train/loss") == [(10, 2.0)]
    assert "already logged" in caplog.text
    with pytest.raises(InvalidSpecError):
        tel.log({"train/loss": 1.0}, step=-1)
    tel.finish()


def test_tables_and_summary():
    tel = Telemetry().start("p", "table", mode="disabled")
    tel.table(M.DIVERSITY_MODEL_COMPARISON, ["model", "halting_steps"], [["reasoning", 7.5], ["speed", 2.0]])
    assert tel.tables[M.DIVERSITY_MODEL_COMPARISON]["rows"] == [["reasoning", 7.5], ["speed", 2.0]]
    with pytest.raises(InvalidSpecError) as err:
        tel.table("t", ["a", "b"], [[1]])
    assert err.value.field == "rows"
    assert tel.summary({"champion": "combo-5", "best_fitness": 0.8, "bad": math.nan}) == {
        "champion": "combo-5", "best_fitness": 0.8}
    tel.finish()


def test_disabled_mode_writes_nothing(tmp_path):
    with Telemetry().start("p", "off", mode="disabled", dir=tmp_path / "runs") as tel:
        tel.log({"train/loss": 1.0})
        assert tel.run_dir is None
    assert not list(tmp_path.rglob("offline-run-*"))
    assert tel.series("train/loss") == [(None, 1.0)]


def test_mode_resolution(monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    assert resolve_mode() == "offline"  # no key: never try to reach the server
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode() == "disabled"
    assert resolve_mode("offline") == "offline"  # the argument wins
    assert resolve_mode("dryrun") == "offline"
    with pytest.raises(InvalidSpecError) as err:
        resolve_mode("sometimes")
    assert err.value.field == "mode"


def test_lifecycle_errors():
    tel = Telemetry()
    with pytest.raises(FailedPreconditionError):
        tel.log({"x": 1.0})
    with pytest.raises(FailedPreconditionError):
        with tel:
            pass
    tel.start("p", "once", mode="disabled")
    with pytest.raises(FailedPreconditionError):
        tel.start("p", "twice", mode="disabled")
    tel.finish()
    tel.finish()  # idempotent
    with pytest.raises(FailedPreconditionError, match="finished"):
        tel.log({"x": 1.0})
    with pytest.raises(InvalidSpecError) as err:
        Telemetry().start("", "name", mode="disabled")
    assert err.value.field == "project"
