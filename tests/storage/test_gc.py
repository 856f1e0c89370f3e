"""`agentforge artifacts gc --run RUN` on both backends: a run's published artifacts (and anything marked final)
stay, its job staging, checkpoints and work units go, other runs are untouched, the published lineage still
resolves afterwards, and --dry-run lists exactly what gc deletes and deletes nothing."""

from __future__ import annotations

import pytest
import torch

from shared import cli
from shared.errors import InvalidSpecError
from shared.storage import ArtifactRef, ArtifactStore, checkpoint_prefix, published_key, staging_key
from shared.storage.gc import collect, plan_gc


def _write(store: ArtifactStore, key: str, run: str, phase: str, *, kind: str = "model",
           parents: list[ArtifactRef] = (), retention: str = "intermediate", job: str = "j",
           token: int = 1) -> ArtifactRef:
    with store.open_artifact(key, kind=kind, name=key.rsplit("/", 1)[-1], config={"key": key},
                             producer={"run_id": run, "phase": phase, "job_id": job, "request_id": f"{job}-q",
                                       "fencing_token": token},
                             parents=list(parents), retention=retention) as w:
        w.add_tensors("model.safetensors", {"w": torch.ones(2)})
    return w.ref


def _publish(store: ArtifactStore, run: str, phase: str, staged: list[ArtifactRef]) -> dict[str, ArtifactRef]:
    """What the coordinator does on success: promote each staged output to runs/<run>/<phase>/<name>."""
    return {r.name: store.promote(r, published_key(run, phase, r.name)) for r in staged}


def _make_run(store: ArtifactStore, run: str) -> tuple[set[str], set[str], ArtifactRef]:
    """A run as the phases and the coordinator leave it. Returns (published keys, intermediate keys, the
    final model's published ref)."""
    def stage(job, token, name, phase, **kw):
        return _write(store, staging_key(job, token, name), run, phase, job=job, token=token, **kw)

    ds = _publish(store, run, "datasets", [stage(f"datasets-{run}", 1, "datasets", "datasets", kind="dataset"),
                                           stage(f"datasets-{run}", 1, "tokenizer", "datasets", kind="tokenizer")])
    cj = f"cognate-{run}"
    stage(cj, 0, "ancestor", "cognate", parents=[ds["datasets"]])            # a fenced attempt's leftover
    ancestor = stage(cj, 1, "ancestor", "cognate", parents=[ds["datasets"], ds["tokenizer"]])
    variants = [stage(cj, 1, f"model_{v}", "cognate", parents=[ancestor]) for v in ("reasoning", "memory", "speed")]
    stage(cj, 1, "segment-warmup", "cognate", kind="checkpoint")               # Cognate's segment checkpoint
    _write(store, f"{checkpoint_prefix(f'{cj}-q')}step-0000000008", run, "cognate", kind="checkpoint", job=cj)
    cog = _publish(store, run, "cognate", [ancestor, *variants])
    champion = _publish(store, run, "evomerge", [stage(f"evomerge-{run}", 1, "champion", "evomerge",
                                                       parents=[cog["ancestor"], *(cog[f"model_{v}"] for v in
                                                                                   ("reasoning", "memory", "speed"))])])
    unit = _write(store, staging_key(f"reasoning-data-{run}", 0, "work/units/u-0000/u1"), run, "reasoning_data",
                  kind="dataset", parents=[ds["datasets"]], job="worker-1")
    rd = _publish(store, run, "reasoning_data", [stage(f"reasoning-data-{run}", 1, "reasoning_data",
                                                       "reasoning_data", kind="dataset", parents=[ds["datasets"]])])
    qs = _publish(store, run, "quietstar", [stage(f"quietstar-{run}", 1, "model", "quietstar",
                                                  parents=[champion["champion"], rd["reasoning_data"]])])
    bn = _publish(store, run, "bitnet", [stage(f"bitnet-{run}", 1, "model", "bitnet", parents=[qs["model"]])])
    published = set(store.list_artifacts(f"runs/{run}/"))
    assert len(published) == 2 + 4 + 1 + 1 + 1 + 1
    staged = {k for prefix in ("jobs/", "checkpoints/") for k in store.list_artifacts(prefix)
              if store.read_manifest(k).producer.run_id == run}
    assert store.key_from_uri(unit.uri) in staged and len(staged) == 2 + 6 + 1 + 1 + 1 + 1 + 1 + 1
    return published, staged, bn["model"]


def _published_lineage(store: ArtifactStore, ref: ArtifactRef) -> set[str]:
    """Keys reachable through parents, each manifest read through the ref its child recorded."""
    seen, todo = set(), [ref]
    while todo:
        r = todo.pop()
        key = store.key_from_uri(r.uri)
        if key not in seen:
            seen.add(key)
            todo.extend(store.read_manifest(r).parents)
    return seen


@pytest.fixture
def cli_on(monkeypatch):
    def use(store: ArtifactStore):
        monkeypatch.setattr(cli, "_store", lambda args: store)
    return use


def test_gc_keeps_exactly_what_the_run_published(store: ArtifactStore, cli_on, capsys) -> None:
    published, staged, final = _make_run(store, "r1")
    other_published, other_staged, _ = _make_run(store, "r2")
    mine = _write(store, "exports/r1/summary", "r1", "report", kind="report", retention="final")
    foreign = _write(store, "imports/corpus", None, None, kind="dataset")   # no producing run: never a run's
    before = set(store.list())
    lineage = _published_lineage(store, final)
    assert lineage <= published and {k.split("/")[2] for k in lineage} == \
        {"datasets", "cognate", "evomerge", "reasoning_data", "quietstar", "bitnet"}

    plan = plan_gc(store, "r1")
    assert set(plan.delete) == staged
    assert dict(plan.keep) == {**{k: "published" for k in published}, "exports/r1/summary": "final"}
    assert plan.unreadable == ()

    cli_on(store)
    assert cli.main(["artifacts", "gc", "--run", "r1", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sorted(line.removeprefix("would delete ") for line in out if line.startswith("would delete ")) \
        == sorted(staged)
    assert set(store.list()) == before                                      # a dry run deletes nothing

    assert cli.main(["artifacts", "gc", "--run", "r1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sorted(line.removeprefix("deleted ") for line in out if line.startswith("deleted ")) == sorted(staged)
    assert {line for line in out if line.startswith("kept ")} == \
        {f"kept {k} (published)" for k in published} | {"kept exports/r1/summary (final)"}
    left = set(store.list_artifacts(""))
    assert left == published | other_published | other_staged | {store.key_from_uri(mine.uri),
                                                                  store.key_from_uri(foreign.uri)}
    assert not any(k.startswith(tuple(f"{s}/" for s in staged)) for k in store.list())   # no file left behind
    # the final model's lineage still resolves, hash-checked, through published artifacts only
    assert _published_lineage(store, final) == lineage
    for key in lineage:
        store.verify(store.ref_for(key))
    # collecting again finds nothing more to delete
    assert plan_gc(store, "r1").delete == ()
    collect(store, plan_gc(store, "r1"))
    assert set(store.list_artifacts("")) == left


def test_gc_needs_a_run(store: ArtifactStore) -> None:
    with pytest.raises(InvalidSpecError) as info:
        plan_gc(store, " ")
    assert info.value.field == "run"
