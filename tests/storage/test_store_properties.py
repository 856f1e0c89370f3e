"""Artifact properties that must hold on every backend (LocalStore and S3Store on SeaweedFS)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from shared.errors import (
    AlreadyExistsError,
    CancelledError,
    IntegrityError,
    InvalidSpecError,
    NotFoundError,
    StorageError,
    UnsafeFormatError,
)
from shared.storage import ArtifactRef, ArtifactStore, FileEntry, Manifest, published_key, sha256_bytes, staging_key
from tests.storage.unsafe import CancelAfter, armed_pickle, armed_torch_save

PRODUCER = {"run_id": "r1", "phase": "cognate", "job_id": "j1", "request_id": "q1", "fencing_token": 3}


def write_model(store: ArtifactStore, key: str, tmp_path: Path, *, seed: int = 0) -> ArtifactRef:
    torch.manual_seed(seed)
    tok = tmp_path / f"tok{seed}"
    (tok / "sub").mkdir(parents=True, exist_ok=True)
    (tok / "tokenizer.json").write_text('{"model": "bpe"}')
    (tok / "sub" / "merges.txt").write_text("a b\n")
    with store.open_artifact(key, kind="model", name=f"m{seed}", config={"d": 8, "seed": seed},
                             producer=PRODUCER, tokenizer="tokenizer") as w:
        w.add_tensors("model.safetensors", {"w": torch.randn(4, 4), "b": torch.zeros(4)}, {"arch": "tiny"})
        w.add_json("config.json", {"d": 8})
        w.add_bytes("notes.txt", b"hello")
        w.add_dir("tokenizer", tok)
        w.set_metrics({"val_nll": 1.25})
    assert w.ref is not None
    return w.ref


def test_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    ref = write_model(store, "runs/r1/cognate/model", tmp_path)
    m = store.read_manifest(ref)
    assert sorted(m.files) == ["config.json", "model.safetensors", "notes.txt", "tokenizer/sub/merges.txt",
                               "tokenizer/tokenizer.json"]
    assert m.producer.fencing_token == 3 and m.metrics == {"val_nll": 1.25} and m.tokenizer == "tokenizer"
    assert ref.size == m.total_file_bytes + len(store.get_bytes("runs/r1/cognate/model/manifest.json"))
    tensors, meta = store.load_tensors(ref, "model.safetensors")
    torch.manual_seed(0)
    assert torch.equal(tensors["w"], torch.randn(4, 4)) and meta == {"arch": "tiny"}
    assert store.load_json(ref, "config.json") == {"d": 8}
    dest = store.fetch(ref, tmp_path / "out")
    assert (dest / "tokenizer" / "sub" / "merges.txt").read_text() == "a b\n"
    assert sha256_bytes((dest / "manifest.json").read_bytes()) == ref.sha256
    assert store.verify(ref).files == 5
    assert store.list_artifacts() == ["runs/r1/cognate/model"]
    assert store.list_refs() == [ref]
    assert store.key_from_uri(ref.uri) == "runs/r1/cognate/model"
    with pytest.raises(InvalidSpecError):
        store.key_from_uri("gs://elsewhere/runs/r1/cognate/model")
    with pytest.raises(AlreadyExistsError):  # artifacts are immutable
        store.open_artifact("runs/r1/cognate/model", kind="model", name="again").__enter__()


def test_manifest_is_written_last(store: ArtifactStore, tmp_path: Path, monkeypatch) -> None:
    order: list[str] = []
    real = store.put_stream

    def recording(key, reader, **kw):
        order.append(key)
        return real(key, reader, **kw)

    monkeypatch.setattr(store, "put_stream", recording)
    write_model(store, "a/m", tmp_path)
    assert order[-1] == "a/m/manifest.json"
    assert len(order) == 6 and "a/m/manifest.json" not in order[:-1]


class Flaky(Exception):
    pass


@pytest.mark.parametrize("error", [OSError(5, "Input/output error"), Flaky("user code broke")])
def test_failure_mid_write_leaves_nothing_visible(store: ArtifactStore, tmp_path: Path, monkeypatch, error) -> None:
    real, calls = store.put_stream, []

    def failing(key, reader, **kw):
        calls.append(key)
        if len(calls) == 3:
            raise error
        return real(key, reader, **kw)

    monkeypatch.setattr(store, "put_stream", failing)
    expected = StorageError if isinstance(error, OSError) else Flaky
    with pytest.raises(expected) as info:
        write_model(store, "a/broken", tmp_path)
    if expected is StorageError:
        assert info.value.__cause__ is error and "a/broken" in str(info.value)
    assert store.list("a/") == []
    assert store.list_artifacts() == []
    with pytest.raises(NotFoundError, match="manifest"):
        store.read_manifest("a/broken")


def test_cancel_mid_write(store: ArtifactStore, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (12 << 20))  # > 2 S3 parts (5 MiB in tests), > 3 local write chunks
    cancel = CancelAfter()
    with pytest.raises(CancelledError):
        with store.open_artifact("a/cancelled", kind="checkpoint", name="c", cancel_event=cancel) as w:
            w.add_bytes("small.json", b"{}")
            cancel.arm(after=3)  # lets the upload start, then cancels between chunks / parts
            w.add_file("big.bin", big)
    assert cancel.calls > 3
    assert store.list("a/") == []
    assert store.list_artifacts() == []


def _overwrite(store: ArtifactStore, key: str, data: bytes) -> None:
    store.put_bytes(key, data)  # an object changed behind the store's back


def test_corrupt_file_is_detected(store: ArtifactStore, tmp_path: Path) -> None:
    ref = write_model(store, "a/m", tmp_path)
    good = store.get_bytes("a/m/model.safetensors")
    _overwrite(store, "a/m/model.safetensors", good[:-1] + bytes([good[-1] ^ 1]))  # same size, one bit
    expected = store.read_manifest(ref).files["model.safetensors"].sha256
    for call in (lambda: store.fetch(ref, tmp_path / "out"), lambda: store.verify(ref),
                 lambda: store.load_tensors(ref, "model.safetensors")):
        with pytest.raises(IntegrityError) as info:
            call()
        assert "model.safetensors" in str(info.value) and expected in str(info.value)
    assert not (tmp_path / "out" / "model.safetensors").exists()  # no unverified file under its name
    assert store.load_json(ref, "config.json") == {"d": 8}  # other files still read fine
    _overwrite(store, "a/m/notes.txt", b"hello, world")  # different size
    with pytest.raises(IntegrityError, match="notes.txt"):
        store.read_file_bytes(ref, "notes.txt")


def test_replaced_manifest_fails_against_the_ref(store: ArtifactStore, tmp_path: Path) -> None:
    ref = write_model(store, "a/m", tmp_path)
    forged = Manifest.from_json(store.get_bytes("a/m/manifest.json"))
    forged = Manifest.create(kind=forged.kind, name=forged.name, files=forged.files, config=forged.config,
                             tokenizer=forged.tokenizer, metrics={"val_nll": 0.01}, producer=forged.producer)
    _overwrite(store, "a/m/manifest.json", forged.to_json())
    for call in (lambda: store.read_manifest(ref), lambda: store.fetch(ref, tmp_path / "o"),
                 lambda: store.load_tensors(ref, "model.safetensors"), lambda: store.verify(ref)):
        with pytest.raises(IntegrityError, match="does not match its ref"):
            call()
    assert store.read_manifest("a/m").metrics == {"val_nll": 0.01}  # without a ref there is nothing to check


@pytest.mark.parametrize("bad", ["../escape", "/abs/key", "a//b", "a\\b", "a/\x01", ""])
def test_bad_keys_are_refused_by_every_operation(store: ArtifactStore, bad: str, tmp_path: Path) -> None:
    for call in (lambda: store.put_bytes(bad, b"x"), lambda: store.get_bytes(bad), lambda: store.delete(bad),
                 lambda: store.open_artifact(bad, kind="model", name="m")):
        with pytest.raises(InvalidSpecError):
            call()
    with store.open_artifact("ok/key", kind="other", name="n") as w:
        with pytest.raises(InvalidSpecError):
            w.add_bytes(bad or "manifest.json", b"x")
        w.add_bytes("fine.txt", b"x")
    assert store.list() == ["ok/key/fine.txt", "ok/key/manifest.json"]


def _plant(store: ArtifactStore, key: str, payload: bytes) -> ArtifactRef:
    """An artifact written by someone else: a manifest whose hash matches the planted bytes."""
    manifest = Manifest.create(kind="model", name="evil",
                               files={"model.safetensors": FileEntry(sha256=sha256_bytes(payload), size=len(payload))})
    store.put_bytes(f"{key}/model.safetensors", payload)
    data = manifest.to_json()
    store.put_bytes(f"{key}/manifest.json", data)
    return ArtifactRef(uri=store.uri_for(key), sha256=sha256_bytes(data), size=len(payload) + len(data), name="evil")


@pytest.mark.parametrize("kind", ["pickle", "torch_save"])
def test_pickles_in_the_store_are_refused_and_never_unpickled(store, tmp_path: Path, kind: str, no_unpickling) -> None:
    marker = tmp_path / "pwned"
    payload = armed_pickle(marker) if kind == "pickle" else armed_torch_save(marker)
    ref = _plant(store, "a/evil", payload)
    assert store.verify(ref).files == 1  # integrity is fine: only the format check can stop it
    with pytest.raises(UnsafeFormatError, match="never unpickled") as info:
        store.load_tensors(ref, "model.safetensors")
    assert "a/evil/model.safetensors" in str(info.value)
    assert not marker.exists()
    with pytest.raises(UnsafeFormatError):  # and the writer refuses to publish one in the first place
        with store.open_artifact("a/evil2", kind="model", name="e") as w:
            w.add_bytes("model.safetensors", payload)
    assert store.list("a/evil2") == []


def test_promote_copies_verifies_and_hides_staging(store: ArtifactStore, tmp_path: Path) -> None:
    staged_key, pub = staging_key("j1", 3, "model"), published_key("r1", "cognate", "model")
    staged = write_model(store, staged_key, tmp_path)
    assert store.list_artifacts("runs/") == []  # a worker's output is not visible as published
    with pytest.raises(NotFoundError):
        store.read_manifest(pub)
    promoted = store.promote(staged, pub)
    assert promoted.uri == store.uri_for(pub) and promoted.name == staged.name
    # the published manifest is the staged one marked final (its parents were not staged: unchanged)
    assert store.read_manifest(promoted) == dataclasses.replace(store.read_manifest(staged), retention="final")
    assert store.list_artifacts("runs/") == [pub] and store.list_refs("runs/") == [promoted]
    assert store.verify(promoted).files == 5
    assert store.promote(staged, pub) == promoted  # idempotent for the same artifact
    other = write_model(store, staging_key("j1", 4, "model"), tmp_path, seed=1)
    with pytest.raises(AlreadyExistsError, match="different artifact"):
        store.promote(other, pub)
    assert store.verify(promoted).files == 5  # the published artifact is untouched


def _stage(store: ArtifactStore, key: str, parents: list[ArtifactRef], seed: int) -> ArtifactRef:
    with store.open_artifact(key, kind="model", name=key.rsplit("/", 1)[-1], config={"seed": seed},
                             producer=PRODUCER, parents=parents, retention="intermediate") as w:
        w.add_tensors("model.safetensors", {"w": torch.full((2,), float(seed))})
    return w.ref


@pytest.mark.parametrize("ancestor_first", [True, False])
def test_promote_points_parents_staged_by_the_same_job_at_their_published_copies(
        store: ArtifactStore, ancestor_first: bool) -> None:
    """Cognate stages an ancestor and variants whose parent is that staged ancestor; once published, the
    variant's parent is the published ancestor (whatever the promotion order), inputs stay as they were."""
    data = store.promote(_stage(store, "jobs/d1/t0/datasets", [], 0), "runs/r1/datasets/datasets")
    ancestor = _stage(store, "jobs/c1/t2/ancestor", [data], 1)
    variant = _stage(store, "jobs/c1/t2/model_a", [ancestor], 2)
    nested = _stage(store, "jobs/c1/t2/more/model_b", [ancestor, data], 3)
    order = [ancestor, variant, nested] if ancestor_first else [nested, variant, ancestor]
    published = {r.name: store.promote(r, f"runs/r1/cognate/{store.key_from_uri(r.uri)[len('jobs/c1/t2/'):]}")
                 for r in order}
    pub_ancestor = store.ref_for("runs/r1/cognate/ancestor")
    assert published["ancestor"] == pub_ancestor
    assert store.read_manifest(published["model_a"]).parents == (pub_ancestor,)
    assert store.read_manifest(published["model_b"]).parents == (pub_ancestor, data)
    assert store.read_manifest(pub_ancestor).parents == (data,)
    for ref in published.values():
        m = store.read_manifest(ref)
        assert m.retention == "final" and all(store.key_from_uri(p.uri).startswith("runs/r1/") for p in m.parents)
        store.verify(ref)
    # idempotent: promoting again returns the same refs and changes nothing
    assert {r.name: store.promote(r, store.key_from_uri(published[r.name].uri)) for r in order} == published
    # the staged copies are untouched (a stale holder's refs still verify against staging)
    assert store.read_manifest(variant).parents == (ancestor,) and store.verify(variant).files == 1


def test_promote_of_a_corrupt_staged_artifact_publishes_nothing(store: ArtifactStore, tmp_path: Path) -> None:
    staged = write_model(store, "jobs/j1/t1/model", tmp_path)
    _overwrite(store, "jobs/j1/t1/model/notes.txt", b"HELLO")
    with pytest.raises(IntegrityError, match="notes.txt"):
        store.promote(staged, "runs/r1/p/model")
    assert store.list("runs/") == []


def test_list_artifacts_hides_incomplete_ones(store: ArtifactStore, tmp_path: Path) -> None:
    done = write_model(store, "runs/r/p/done", tmp_path)
    store.put_bytes("runs/r/p/crashed/model.safetensors", b"partial")  # a writer died before its manifest
    with store.open_artifact("runs/r/p/inflight", kind="dataset", name="d") as w:
        w.add_bytes("data.jsonl", b"{}\n")
        assert store.list_artifacts("runs/") == ["runs/r/p/done"]  # files uploaded, manifest not yet written
        assert store.list_refs("runs/") == [done]
    assert store.list_artifacts("runs/") == ["runs/r/p/done", "runs/r/p/inflight"]
    assert [r.name for r in store.list_refs("runs/")] == ["m0", "d"]
    # a file that happens to be named manifest.json inside an artifact is not a second artifact
    with store.open_artifact("runs/r/q/outer", kind="report", name="o") as w:
        w.add_bytes("sub/manifest.json", b"{}")
    assert store.list_artifacts("runs/r/q/") == ["runs/r/q/outer"]
    with store.open_artifact("runs/r/p/crashed", kind="other", name="fresh") as w:  # leftovers are cleared
        w.add_bytes("x", b"1")
    assert store.read_manifest("runs/r/p/crashed").files.keys() == {"x"}
    assert not store.exists("runs/r/p/crashed/model.safetensors")


def test_delete_removes_manifest_first(store: ArtifactStore, tmp_path: Path, monkeypatch) -> None:
    ref = write_model(store, "a/m", tmp_path)
    order: list[str] = []
    real = store.delete
    monkeypatch.setattr(store, "delete", lambda key: (order.append(key), real(key))[1])
    store.delete_artifact(ref)
    assert order[0] == "a/m/manifest.json"
    assert store.list() == [] and store.list_artifacts() == []
    with pytest.raises(NotFoundError):
        store.read_manifest(ref)


def test_artifacts_cannot_nest(store: ArtifactStore, tmp_path: Path) -> None:
    inner = write_model(store, "runs/r/p/model", tmp_path)
    with pytest.raises(AlreadyExistsError, match="already exists"):  # clearing runs/r would delete it
        store.open_artifact("runs/r", kind="other", name="outer").__enter__()
    with pytest.raises(AlreadyExistsError, match="inside artifact"):
        store.open_artifact("runs/r/p/model/extra", kind="other", name="inner").__enter__()
    with pytest.raises(AlreadyExistsError):
        store.promote(inner, "runs")
    assert store.verify(inner).files == 5
