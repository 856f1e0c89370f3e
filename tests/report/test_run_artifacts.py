"""A real run's artifacts (the small pipeline of tests/report/pipeline.py, every phase executed by the embedded
coordinator): published lineage stays published, and `artifacts gc --run` keeps exactly what was published.

Workers stage under jobs/<job>/t<token>/ and the coordinator promotes; Cognate's variants are staged with the
staged ancestor as parent, so promotion must point them at the published ancestor -- otherwise deleting the
run's staging (gc) breaks the lineage of every later model."""

import dataclasses
import shutil

import pytest

from shared.cli import main
from shared.report import load_run
from shared.storage import ArtifactRef, LocalStore

pytestmark = pytest.mark.slow     # shares the pipeline run of tests/report/conftest.py
PUBLISHED_STATES = ("succeeded", "approved")
MODEL_PHASES = ("bitnet", "quietstar", "evomerge", "cognate")


def _final_model(pipeline) -> ArtifactRef:
    """The last model phase's published model (bitnet's, unless its gate failed and could not be approved)."""
    phases = load_run(pipeline.state_path, pipeline.run_id).phases
    for phase in MODEL_PHASES:
        ph = phases[phase]
        if ph.state in PUBLISHED_STATES:
            refs = [ArtifactRef.from_dict(a) for a in ph.artifacts]
            return next(r for r in refs if r.name in ("model", "champion", "model_reasoning"))
    raise AssertionError(f"no model phase published: { {p: ph.state for p, ph in phases.items()} }")


def _lineage(store: LocalStore, ref: ArtifactRef, *, written_in: LocalStore | None = None) -> dict[str, object]:
    """key -> manifest of every artifact reachable through parents, each read through the ref its child
    recorded (a swapped or missing parent fails here) and every file re-hashed. `written_in`: the store the
    refs' URIs name, when `store` is a copy of it (a file:// URI names its root)."""
    seen, todo = {}, [ref]
    while todo:
        r = todo.pop()
        key = (written_in or store).key_from_uri(r.uri)
        if key in seen:
            continue
        r = dataclasses.replace(r, uri=store.uri_for(key))
        seen[key] = store.read_manifest(r)
        store.verify(r)
        todo.extend(seen[key].parents)
    return seen


def test_published_artifacts_name_only_published_parents(pipeline):
    store = LocalStore(pipeline.store_path)
    run = pipeline.run_id
    published = store.list_artifacts(f"runs/{run}/")
    assert published
    for key in published:
        m = store.read_manifest(key)
        assert m.retention == "final", key
        for parent in m.parents:
            assert store.key_from_uri(parent.uri).startswith(f"runs/{run}/"), f"{key} -> {parent.uri}"
    # Cognate's three variants descend from the published ancestor (they were staged pointing at the staged one)
    ancestor = store.ref_for(f"runs/{run}/cognate/ancestor")
    for variant in ("model_reasoning", "model_memory", "model_speed"):
        assert store.read_manifest(f"runs/{run}/cognate/{variant}").parents == (ancestor,)
    # and the final model's lineage reaches the datasets through published keys only
    graph = _lineage(store, _final_model(pipeline))
    assert all(k.startswith(f"runs/{run}/") for k in graph), sorted(graph)
    assert f"runs/{run}/cognate/ancestor" in graph and f"runs/{run}/datasets/datasets" in graph
    assert {m.producer.phase for m in graph.values() if not m.parents} == {"datasets"}


def test_gc_of_the_run_keeps_its_published_artifacts_and_their_lineage(pipeline, tmp_path, capsys):
    src = LocalStore(pipeline.store_path)
    run = pipeline.run_id
    root = tmp_path / "store"
    shutil.copytree(pipeline.store_path, root)        # the report tests read the original
    store, uri = LocalStore(root), f"file://{root}"
    published = set(store.list_artifacts(f"runs/{run}/"))
    mine = {k for k in store.list_artifacts("") if not k.startswith("runs/")
            and store.read_manifest(k).producer.run_id == run}
    assert any(k.startswith("jobs/") for k in mine) and any(k.startswith("checkpoints/") for k in mine)
    before = sorted(store.list())

    assert main(["artifacts", "--store", uri, "gc", "--run", run, "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert {line.removeprefix("would delete ") for line in out if line.startswith("would delete ")} == mine
    assert sorted(store.list()) == before

    assert main(["artifacts", "--store", uri, "gc", "--run", run]) == 0
    out = capsys.readouterr().out.splitlines()
    assert {line.removeprefix("deleted ") for line in out if line.startswith("deleted ")} == mine
    assert set(store.list_artifacts("")) == published
    assert not store.list("jobs/") and not store.list("checkpoints/")   # no file of a deleted artifact is left
    final = _final_model(pipeline)
    assert _lineage(store, final, written_in=src).keys() == _lineage(src, final).keys()
