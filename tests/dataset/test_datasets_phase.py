"""The datasets phase end to end on the ci profile (real mirror), and its bad-input behaviour."""

import json
import shutil

import pytest

from services.dataset.core.prepare import prepare_datasets
from services.dataset.core.runner import DatasetsRunner
from shared.config import load_profile
from shared.data.prepared import load_split, verify_prepared
from shared.data.tokenizer import load_tokenizer, tokenizer_fingerprint
from shared.errors import InvalidSpecError, IntegrityError
from shared.runtime import JobRegistry, JobRequest, JobState, get_phase
from shared.storage import LocalStore
from shared.utils import DatasetUnavailableError, validate_dataset_availability

CI = load_profile("ci").phases.datasets


def spec_with(**changes):
    return CI.model_copy(update=changes)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, datasets_dir):
    out = tmp_path_factory.mktemp("prepared") / "datasets"
    return prepare_datasets(spec_with(mirror_dir=str(datasets_dir)), out, seed=7)


def test_every_required_dataset_is_prepared_with_its_source_and_no_contamination(prepared):
    m = verify_prepared(prepared.directory)
    assert set(m["datasets"]) == {n for n in CI.required}
    for name, entry in m["datasets"].items():
        assert entry["source"] == "local_mirror"
        assert entry["files"]["train"]["count"] > 0, name
        for split in ("train", "val", "test"):
            records = load_split(prepared.directory, name, split)
            assert len(records) == entry["files"][split]["count"] <= CI.max_examples_per_dataset
            assert all(r.split == split and r.dataset == name for r in records)
    assert m["absent_optional"].keys() == {"FineWeb-Edu"} and m["fills_absent_optional"] == {"FineWeb-Edu": "WikiText"}
    train = {r.prompt or r.text for n in m["datasets"] for r in load_split(prepared.directory, n, "train")}
    evals = {r.prompt or r.text for n in m["datasets"] for s in ("val", "test") for r in load_split(prepared.directory, n, s)}
    assert not train & evals
    gsm_test = {r.id for r in load_split(prepared.directory, "GSM8K", "test")}
    assert all(r.source_split == "test" for r in load_split(prepared.directory, "GSM8K", "test"))
    assert not gsm_test & {r.id for r in load_split(prepared.directory, "GSM8K", "train")}
    assert "val" in m["datasets"]["GSM8K"]["derived"] and m["datasets"]["PIQA"]["derived"] == ["test", "train", "val"]


def test_preparation_is_deterministic(prepared, tmp_path, datasets_dir):
    again = prepare_datasets(spec_with(mirror_dir=str(datasets_dir)), tmp_path / "again", seed=7)
    for name, entry in prepared.manifest["datasets"].items():
        for split, f in entry["files"].items():
            assert again.manifest["datasets"][name]["files"][split]["sha256"] == f["sha256"], (name, split)


def test_the_prepared_manifest_is_what_validate_dataset_availability_reads(prepared):
    found = validate_dataset_availability(CI.required + ["Mini-MBPP"], prepared_dir=prepared.directory)
    assert found["GSM8K"].kind == "prepared:local_mirror" and found["Mini-MBPP"].kind == "prepared:local_mirror"
    with pytest.raises(DatasetUnavailableError, match="FineWeb-Edu"):
        validate_dataset_availability(["FineWeb-Edu"], prepared_dir=prepared.directory, mirror_dir=None,
                                      hub_offline=True)


def test_a_tampered_prepared_file_fails_the_integrity_check(prepared, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared.directory, copy)
    path = copy / "SVAMP_train.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps(data[:-1]))
    with pytest.raises(IntegrityError, match="SVAMP_train.json"):
        verify_prepared(copy)


def test_synthetic_fills_math_datasets_when_the_mirror_lacks_them(tmp_path):
    spec = spec_with(mirror_dir=str(tmp_path / "empty-mirror"), required=["GSM8K", "SVAMP"], optional=[])
    (tmp_path / "empty-mirror").mkdir()
    p = prepare_datasets(spec, tmp_path / "out", seed=3)
    assert {e["source"] for e in p.manifest["datasets"].values()} == {"synthetic"}
    assert all(e["synthetic"] for e in p.manifest["datasets"].values())


def test_a_dataset_no_source_provides_names_it_and_every_source(tmp_path):
    spec = spec_with(mirror_dir=str(tmp_path / "nope"), required=["PIQA"], optional=[])
    with pytest.raises(DatasetUnavailableError) as info:
        prepare_datasets(spec, tmp_path / "out", seed=3)
    text = str(info.value)
    assert "PIQA" in text and "local_mirror" in text and "does not exist" in text and "synthetic" in text


def test_malformed_lines_are_counted_and_reported_or_fatal(tmp_path, datasets_dir):
    mirror = tmp_path / "mirror"
    (mirror / "CommonsenseQA").mkdir(parents=True)
    lines = (datasets_dir / "CommonsenseQA" / "dev_rand_split.jsonl").read_text().splitlines()
    lines.insert(5, '{"broken": ')
    (mirror / "CommonsenseQA" / "dev_rand_split.jsonl").write_text("\n".join(lines) + "\n")
    spec = spec_with(mirror_dir=str(mirror), required=["CommonsenseQA"], optional=[])
    p = prepare_datasets(spec, tmp_path / "out", seed=3)
    entry = p.manifest["datasets"]["CommonsenseQA"]
    assert entry["skipped"] == 1 and "dev_rand_split.jsonl:6" in entry["skipped_examples"][0]
    with pytest.raises(InvalidSpecError, match="dev_rand_split.jsonl:6"):
        prepare_datasets(spec_with(mirror_dir=str(mirror), required=["CommonsenseQA"], optional=[],
                                   on_bad_line="fail"), tmp_path / "out2", seed=3)


def test_an_empty_source_file_is_a_clear_error(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "CommonsenseQA").mkdir(parents=True)
    (mirror / "CommonsenseQA" / "dev_rand_split.jsonl").write_text("")
    spec = spec_with(mirror_dir=str(mirror), required=["CommonsenseQA"], optional=[])
    with pytest.raises(DatasetUnavailableError, match="CommonsenseQA.*no records"):
        prepare_datasets(spec, tmp_path / "out", seed=3)


def test_unknown_dataset_names_are_refused_by_validate():
    with pytest.raises(InvalidSpecError, match="spec.required.*unknown dataset 'GSM9K'"):
        DatasetsRunner().validate(spec_with(required=["GSM9K"]))
    warnings = DatasetsRunner().validate(spec_with(mirror_dir="/nonexistent/mirror"))
    assert any("/nonexistent/mirror does not exist" in w for w in warnings)


def test_the_phase_job_publishes_datasets_and_tokenizer_with_gate_metrics(tmp_path, datasets_dir):
    registry = JobRegistry(get_phase("datasets"), LocalStore(tmp_path / "store"))
    spec = spec_with(mirror_dir=str(datasets_dir))
    job = registry.submit(JobRequest(request_id="d1", phase="datasets", seed=5), spec)
    assert job.done.wait(120)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.metrics["datasets/required_available_fraction"] == 1.0
    assert job.metrics["datasets/tokenizer_roundtrip_rate"] == 1.0
    refs = {r.name: r for r in job.artifacts}
    store = registry.store
    fetched = store.fetch(refs["datasets"], tmp_path / "fetched")
    verify_prepared(fetched / "data")
    tok_dir = store.fetch(refs["tokenizer"], tmp_path / "tok") / "tokenizer"
    tok = load_tokenizer(tok_dir)
    assert len(tok) <= CI.tokenizer.vocab_size
    recorded = json.loads((fetched / "tokenizer_fingerprint.json").read_text())["fingerprint"]
    assert recorded == tokenizer_fingerprint(tok)
    stages = [e.stage for e in registry.watch(job.job_id)]
    assert any(s.startswith("reading ") for s in stages) and "tokenizer" in stages
    registry.shutdown()
