"""`agentforge run` end to end in one process, with every phase "available" through fake runners: the
summary, the published artifacts, a failing gate that stops the pipeline, and the accelerator lease.

The real phases are not implemented yet, so the phase definitions are swapped for fakes
(tests/coordinator/cluster.py) wherever discovery is looked up; the coordinator, the job registries, the
store and the state file are the real ones.
"""

import dataclasses
import re

import pytest
import yaml

from shared.cli import EXIT_FAILED, main
from shared.config.load import CONFIG_DIR
from shared.runtime.phase import discover_phases
from shared.storage import LocalStore
from tests.coordinator.cluster import Behaviour, FakePhaseRunner

PHASES = ("datasets", "cognate", "evomerge", "reasoning_data", "quietstar", "bitnet")
LEASED = ("cognate", "evomerge", "quietstar", "bitnet")   # needs_accelerator in the ci profile


@pytest.fixture
def fakes(monkeypatch):
    """Every phase available with a FakePhaseRunner; returns (behaviour per phase, depends_on per phase --
    edit it before the run to rewire the graph)."""
    real = discover_phases()
    behaviour = {name: Behaviour() for name in real}
    graph = {name: d.depends_on for name, d in real.items()}

    def definitions():
        return {name: dataclasses.replace(d, depends_on=graph[name],
                                          runner_factory=lambda n=name: FakePhaseRunner(n, behaviour[n]))
                for name, d in real.items()}

    import services.coordinator.app
    import shared.runtime
    import shared.runtime.phase

    for module in (shared.runtime.phase, shared.runtime, services.coordinator.app):
        monkeypatch.setattr(module, "discover_phases", definitions)
    return behaviour, graph


def run_cli(tmp_path, capsys, *args):
    capsys.readouterr()
    rc = main(["run", *args, "--store", str(tmp_path / "store"), "--state", str(tmp_path / "s.sqlite")])
    out, err = capsys.readouterr()
    return rc, out, err


def run_id_of(out: str) -> str:
    (run_id,) = set(re.findall(r"^run (run-[0-9a-f]{12})", out, flags=re.M))
    return run_id


def overlaps(behaviour, phases):
    """Pairs of phases whose runs overlapped in time."""
    spans = sorted((behaviour[p].calls[0]["start"], behaviour[p].calls[0]["end"], p) for p in phases)
    return [(a[2], b[2]) for a, b in zip(spans, spans[1:]) if b[0] < a[1]]


def test_run_executes_every_phase_and_publishes_under_the_run(tmp_path, capsys, fakes):
    behaviour, _ = fakes
    rc, out, err = run_cli(tmp_path, capsys, "--profile", "ci")
    assert rc == 0, err
    run_id = run_id_of(out)
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()
            if line.split() and line.split()[0] in PHASES and "after" not in line}
    assert rows == {p: "succeeded" for p in PHASES}
    # the phase table before the run says every phase is ready
    assert all(re.search(rf"^\s+{p}\s+after .*ready$", out, flags=re.M) for p in PHASES)
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"run {run_id} succeeded in ") and f"runs/{run_id}/" in last
    assert not [line for line in err.splitlines() if line.startswith("error:")]

    store = LocalStore(tmp_path / "store")
    for phase in PHASES:
        assert len(behaviour[phase].calls) == 1
        (key,) = store.list_artifacts(f"runs/{run_id}/{phase}/")
        assert key == f"runs/{run_id}/{phase}/{phase}_out"
        store.verify(store.ref_for(key))
        assert store.read_manifest(key).producer["run_id"] == run_id
    # lineage: each phase was handed its dependencies' published outputs
    assert sorted(behaviour["quietstar"].calls[0]["inputs"]) == ["datasets_out", "evomerge_out", "reasoning_data_out"]


def test_a_failing_gate_stops_the_pipeline_and_names_metric_value_and_threshold(tmp_path, capsys, fakes):
    behaviour, _ = fakes
    behaviour["evomerge"].metrics = {"evomerge/improvement": 0.002}   # needs >= 0.01
    rc, out, err = run_cli(tmp_path, capsys, "--profile", "ci")
    assert rc == EXIT_FAILED
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "blocked" in line and "evomerge/improvement = 0.002, needs >= 0.01" in line
    assert re.search(r"^evomerge\s+gate_failed .*evomerge/improvement=0\.002 FAIL", out, flags=re.M)
    assert behaviour["quietstar"].calls == [] and behaviour["bitnet"].calls == []
    assert len(behaviour["evomerge"].calls) == 1
    # a gate-failed phase's output is not published; its upstream's is
    store = LocalStore(tmp_path / "store")
    run_id = run_id_of(out)
    assert store.list_artifacts(f"runs/{run_id}/evomerge/") == []
    assert store.list_artifacts(f"runs/{run_id}/cognate/") == [f"runs/{run_id}/cognate/cognate_out"]


@pytest.mark.parametrize("accelerators, serialized", [(1, True), (2, False)])
def test_the_accelerator_lease_serializes_phases_in_embedded_mode(tmp_path, capsys, fakes, accelerators,
                                                                  serialized):
    behaviour, graph = fakes
    # Let evomerge start right after datasets, like cognate: only the lease can keep them apart now.
    graph["evomerge"] = ("datasets",)
    for phase in PHASES:
        behaviour[phase].step_delay = 0.1
    profile = yaml.safe_load((CONFIG_DIR / "ci.yaml").read_text())
    profile["coordinator"]["accelerators"] = accelerators
    profile["coordinator"]["poll_interval_s"] = 0.05
    config = tmp_path / "ci.yaml"
    config.write_text(yaml.safe_dump(profile))

    rc, out, err = run_cli(tmp_path, capsys, "--config", str(config))
    assert rc == 0, err
    clash = overlaps(behaviour, LEASED)
    if serialized:
        assert clash == [], f"lease-holding phases overlapped: {clash}"
    else:  # the check above can see an overlap when the capacity allows one
        assert ("cognate", "evomerge") in clash or ("evomerge", "cognate") in clash
