"""Manifest and ArtifactRef: exact JSON round trip and clear errors on malformed input."""

from __future__ import annotations

import json

import pytest

from shared.errors import InvalidSpecError
from shared.storage import ArtifactRef, FileEntry, Manifest, Producer, config_hash

SHA = "a" * 64


def _manifest(**overrides) -> Manifest:
    args = dict(
        kind="model",
        name="champion",
        files={
            "model.safetensors": FileEntry(sha256=SHA, size=10),
            "tokenizer/tokenizer.json": FileEntry(sha256=SHA, size=3),
        },
        config={"d_model": 128, "lr": 3e-4, "layers": [1, 2]},
        tokenizer="tokenizer",
        metrics={"val_nll": 2.5, "steps": 10},
        parents=[ArtifactRef(uri="s3://b/runs/r/p/m", sha256=SHA, size=5, name="m")],
        producer=Producer(run_id="r1", phase="evomerge", job_id="j1", request_id="q1", fencing_token=4),
        retention="final",
    )
    args.update(overrides)
    return Manifest.create(**args)


def test_round_trip_is_byte_exact() -> None:
    m = _manifest()
    data = m.to_json()
    back = Manifest.from_json(data)
    assert back == m
    assert back.to_json() == data
    assert back.metrics == {"val_nll": 2.5, "steps": 10.0}
    assert back.config_hash == config_hash({"layers": [1, 2], "lr": 3e-4, "d_model": 128})  # key order free
    assert back.total_file_bytes == 13


def test_ref_round_trip_and_validation() -> None:
    ref = ArtifactRef(uri="file:///x/y", sha256=SHA, size=1, name="n")
    assert ArtifactRef.from_dict(ref.to_dict()) == ref
    with pytest.raises(InvalidSpecError, match="sha256"):
        ArtifactRef(uri="file:///x", sha256="xyz", size=1)
    with pytest.raises(InvalidSpecError, match="size"):
        ArtifactRef(uri="file:///x", sha256=SHA, size=-1)
    with pytest.raises(InvalidSpecError, match="unknown"):
        ArtifactRef.from_dict({**ref.to_dict(), "extra": 1})


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(format="other/v9"), "format"),
        (lambda d: d.update(kind="weights"), "kind"),
        (lambda d: d.update(retention="forever"), "retention"),
        (lambda d: d["config"].update(lr=1.0), "config_hash"),
        (lambda d: d["files"].update({"../x": {"sha256": SHA, "size": 1}}), "files"),
        (lambda d: d["files"].update({"manifest.json": {"sha256": SHA, "size": 1}}), "manifest.json"),
        (lambda d: d["files"]["model.safetensors"].update(size=-3), "size"),
        (lambda d: d.update(tokenizer="missing_dir"), "tokenizer"),
        (lambda d: d.update(metrics={"acc": "high"}), "metrics.acc"),
        (lambda d: d.update(created_at="yesterday"), "created_at"),
        (lambda d: d.update(created_at="2025-01-01T00:00:00+02:00"), "UTC"),
        (lambda d: d.pop("producer"), "producer"),
        (lambda d: d.update(surprise=1), "surprise"),
        (lambda d: d["producer"].update(fencing_token="7"), "fencing_token"),
    ],
)
def test_malformed_manifests_name_the_field(mutate, field: str) -> None:
    d = json.loads(_manifest().to_json())
    mutate(d)
    with pytest.raises(InvalidSpecError) as info:
        Manifest.from_json(json.dumps(d), source="s3://b/k/manifest.json")
    assert field in str(info.value)
    assert "s3://b/k/manifest.json" in str(info.value)


def test_nan_metrics_and_non_json_are_refused() -> None:
    with pytest.raises(InvalidSpecError):
        _manifest(metrics={"loss": float("nan")})
    with pytest.raises(InvalidSpecError, match="not valid JSON"):
        Manifest.from_json(b"\x80\x04not json")
