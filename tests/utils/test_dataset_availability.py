"""validate_dataset_availability against the real dataset mirror and small built ones. No network."""

import logging
from pathlib import Path

import pytest

from shared.errors import NotFoundError
from shared.utils import DatasetUnavailableError, validate_dataset_availability

REPO_ROOT = Path(__file__).resolve().parents[2]
MIRROR = (REPO_ROOT / ".." / "shared" / "datasets").resolve()
MIRRORED = ["GSM8K", "SVAMP", "ASDiv", "MBPP", "CodeXGLUE", "ARC-Easy", "ARC-Challenge", "HotpotQA", "DROP",
            "StrategyQA", "PIQA", "HellaSwag", "BoolQ", "WikiText", "CommonsenseQA"]

needs_mirror = pytest.mark.skipif(not MIRROR.is_dir(), reason=f"dataset mirror not present at {MIRROR}")


def never_called(repo_id):
    raise AssertionError(f"the hub was consulted for {repo_id} although it is offline")


@needs_mirror
def test_every_mirrored_dataset_is_found_in_the_real_mirror():
    found = validate_dataset_availability(MIRRORED, mirror_dir=MIRROR, hub_offline=True, hub_probe=never_called)
    assert list(found) == MIRRORED
    assert all(src.kind == "mirror" for src in found.values())
    assert "train.jsonl" in found["GSM8K"].files
    assert "hellaswag_val_full.txt.bz2" in found["HellaSwag"].files
    # a README alone would not count: PIQA's data files are the .jsonl and .lst, not README.md
    assert set(found["PIQA"].files) == {"valid.jsonl", "valid-labels.lst"}


@needs_mirror
def test_checklist_list_fails_on_fineweb_alone_and_says_what_was_tried(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetUnavailableError) as err:
        validate_dataset_availability(mirror_dir=MIRROR, hub_probe=never_called)  # the checklist's defaults
    assert list(err.value.missing) == ["FineWeb-Edu"]
    tried = " ".join(err.value.missing["FineWeb-Edu"])
    assert str(MIRROR / "FineWeb-Edu") in tried and "HuggingFaceFW/fineweb-edu" in tried and "offline" in tried
    assert isinstance(err.value, NotFoundError)


@needs_mirror
def test_mini_mbpp_is_served_by_the_mbpp_mirror():
    found = validate_dataset_availability(["Mini-MBPP"], mirror_dir=MIRROR, hub_offline=True)
    assert Path(found["Mini-MBPP"].location).name == "MBPP"


@needs_mirror
def test_missing_optional_dataset_warns_and_is_left_out(caplog):
    with caplog.at_level(logging.WARNING, logger="shared.utils.dataset_check"):
        found = validate_dataset_availability(["GSM8K"], optional=["FineWeb-Edu"], mirror_dir=MIRROR,
                                              hub_offline=True)
    assert list(found) == ["GSM8K"]
    assert any("FineWeb-Edu" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_every_missing_dataset_is_named(tmp_path):
    (tmp_path / "GSM8K").mkdir()
    (tmp_path / "GSM8K" / "README.md").write_text("no data here")
    (tmp_path / "SVAMP").mkdir()
    (tmp_path / "SVAMP" / "SVAMP.json").write_text("[]")
    with pytest.raises(DatasetUnavailableError) as err:
        validate_dataset_availability(["GSM8K", "SVAMP", "DROP"], mirror_dir=tmp_path, hub_offline=True)
    assert set(err.value.missing) == {"GSM8K", "DROP"}
    assert "holds no data file" in " ".join(err.value.missing["GSM8K"])
    assert "does not exist" in " ".join(err.value.missing["DROP"])
    assert "GSM8K" in str(err.value) and "DROP" in str(err.value) and "SVAMP" not in str(err.value)


def test_nested_and_case_insensitive_mirror_layouts(tmp_path):
    (tmp_path / "gsm8k" / "main").mkdir(parents=True)
    (tmp_path / "gsm8k" / "main" / "train-00000.parquet").write_bytes(b"PAR1")
    found = validate_dataset_availability(["GSM8K"], mirror_dir=tmp_path, hub_offline=True)
    assert found["GSM8K"].files == ("main/train-00000.parquet",)


def test_explicit_paths_per_dataset(tmp_path):
    (tmp_path / "arc").mkdir()
    (tmp_path / "arc" / "easy.jsonl").write_text("{}\n")
    found = validate_dataset_availability(["ARC-Easy"], mirror_dir=tmp_path, hub_offline=True,
                                          paths={"ARC-Easy": ["arc/easy.jsonl"]})
    assert found["ARC-Easy"].files == ("easy.jsonl",)


def test_hub_is_used_when_online_and_the_mirror_lacks_the_dataset(tmp_path):
    asked = []

    def probe(repo_id):
        asked.append(repo_id)
        return repo_id == "openai/gsm8k"

    found = validate_dataset_availability(["GSM8K"], mirror_dir=tmp_path, hub_offline=False, hub_probe=probe)
    assert str(found["GSM8K"]) == "hub:openai/gsm8k"
    with pytest.raises(DatasetUnavailableError) as err:
        validate_dataset_availability(["PIQA"], mirror_dir=tmp_path, hub_offline=False, hub_probe=probe)
    assert "ybisk/piqa: not found" in " ".join(err.value.missing["PIQA"])
    assert asked == ["openai/gsm8k", "ybisk/piqa"]


def test_hub_errors_are_reported_as_that_sources_failure(tmp_path):
    def probe(repo_id):
        raise ConnectionError("network unreachable")

    with pytest.raises(DatasetUnavailableError) as err:
        validate_dataset_availability(["BoolQ"], hub_offline=False, hub_probe=probe)
    tried = err.value.missing["BoolQ"]
    assert tried[0] == "mirror: no mirror_dir given"
    assert "ConnectionError: network unreachable" in tried[1]


def test_offline_env_keeps_the_hub_closed(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DatasetUnavailableError):
        validate_dataset_availability(["GSM8K"], mirror_dir=tmp_path, hub_probe=never_called)
