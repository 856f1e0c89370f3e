"""check_storage_requirements with a faked filesystem (shutil.disk_usage)."""

import shutil
from collections import namedtuple

import pytest

from shared.errors import InsufficientStorageError, InvalidSpecError, StorageError
from shared.utils import STORAGE_REQUIREMENTS_GB, check_storage_requirements

GIB = 2**30
Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def disk(monkeypatch):
    """Set `disk.free_gb`; `disk.paths` records where the check measured."""

    class Disk:
        free_gb = 100.0
        paths: list = []

        def usage(self, path):
            self.paths.append(str(path))
            return Usage(1000 * GIB, (1000 - self.free_gb) * GIB, int(self.free_gb * GIB))

    d = Disk()
    d.paths = []
    monkeypatch.setattr(shutil, "disk_usage", d.usage)
    return d


def test_phase1_needs_the_checklists_10_gb(disk, tmp_path):
    disk.free_gb = 20
    result = check_storage_requirements("phase1", tmp_path)
    assert result["ok"] is True
    assert result["required_gb"] == 10
    assert result["free_gb"] == pytest.approx(20)


def test_not_enough_space_names_phase_path_and_numbers(disk, tmp_path):
    disk.free_gb = 5
    with pytest.raises(InsufficientStorageError) as err:
        check_storage_requirements("phase1", tmp_path)
    msg = str(err.value)
    assert "'phase1'" in msg and str(tmp_path) in msg
    assert "10.0 GB" in msg and "5.0 GB" in msg
    assert isinstance(err.value, StorageError)


@pytest.mark.parametrize(
    ("alias", "name"),
    [("phase0", "datasets"), ("phase1", "cognate"), ("phase2", "evomerge"), ("phase3a", "reasoning_data"),
     ("phase3", "quietstar"), ("phase4", "bitnet"), ("all", "pipeline")],
)
def test_checklist_aliases_and_project_names_agree(disk, tmp_path, alias, name):
    by_alias = check_storage_requirements(alias, tmp_path)
    by_name = check_storage_requirements(name, tmp_path)
    assert by_alias["required_gb"] == by_name["required_gb"] == STORAGE_REQUIREMENTS_GB[name]
    assert by_alias["phase"] == name


def test_whole_pipeline_needs_15_gb_and_each_phase_fits_in_it():
    assert STORAGE_REQUIREMENTS_GB["pipeline"] == 15
    assert all(v <= 15 for v in STORAGE_REQUIREMENTS_GB.values())


def test_boundary_exactly_enough_passes(disk, tmp_path):
    disk.free_gb = 10
    assert check_storage_requirements("cognate", tmp_path)["ok"] is True


def test_explicit_requirement_overrides_the_table(disk, tmp_path):
    disk.free_gb = 3
    assert check_storage_requirements("anything", tmp_path, required_gb=2)["required_gb"] == 2
    with pytest.raises(InsufficientStorageError):
        check_storage_requirements("phase0", tmp_path, required_gb=4)


def test_unknown_phase_is_a_spec_error(disk, tmp_path):
    with pytest.raises(InvalidSpecError) as err:
        check_storage_requirements("phase9", tmp_path)
    assert err.value.field == "phase"


def test_missing_output_dir_is_measured_at_its_existing_parent(disk, tmp_path):
    target = tmp_path / "not" / "yet" / "made"
    result = check_storage_requirements("phase1", target)
    assert disk.paths == [str(tmp_path)]
    assert result["path"] == str(tmp_path)
