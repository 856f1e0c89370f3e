"""`agentforge runs …` against a real coordinator on loopback gRPC: what the user sees for a run that
succeeds, one that a gate blocks, one that is cancelled or retried, and for every kind of mistake."""

import re
import threading

import pytest
import yaml

from agentforge.v1 import coordinator_pb2
from shared.cli import EXIT_FAILED, EXIT_USAGE, main
from shared.config.load import CONFIG_DIR
from tests.coordinator.cluster import TOKEN, Cluster, passing_metrics

PHASES = ("datasets", "cognate", "evomerge", "reasoning_data", "quietstar", "bitnet")


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTFORGE_TOKEN", TOKEN)
    monkeypatch.delenv("AGENTFORGE_COORDINATOR_ADDR", raising=False)
    c = Cluster(tmp_path)
    yield c
    c.close()


@pytest.fixture
def runs(cluster, capsys):
    """`agentforge runs --address <cluster> ARGS…` in process -> (exit code, stdout, stderr)."""

    def call(*args, address=None):
        capsys.readouterr()
        rc = main(["runs", "--address", address or cluster.server.address, *args])
        out, err = capsys.readouterr()
        return rc, out, err

    return call


def one_error(err: str) -> str:
    """The single `error:` line of a failed command (and no traceback)."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def status_rows(out: str) -> dict[str, str]:
    """{phase: state} from `runs status` output."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in PHASES and len(parts) > 1:
            rows[parts[0]] = parts[1]
    return rows


def blocked_on_cognate(cluster) -> None:
    metrics = passing_metrics("cognate")
    metrics.pop("cognate/memory_diversity")
    cluster.behaviour["cognate"].metrics = metrics


# -- the happy path --------------------------------------------------------------------------------
def test_create_watch_status_and_list_follow_a_run_to_success(cluster, runs):
    rc, out, _ = runs("create", "--profile", "ci")
    assert rc == 0
    run_id = out.strip()
    assert re.fullmatch(r"run-[0-9a-f]{12}", run_id)

    rc, out, _ = runs("watch", run_id)           # follows the live stream until run_finished
    assert rc == 0
    lines = [line for line in out.splitlines() if line.startswith("[")]
    seqs = [int(re.match(r"\[(\d+)]", line).group(1)) for line in lines]
    events = cluster.stub.WatchRun(coordinator_pb2.WatchRunRequest(run_id=run_id), timeout=10)
    expected = [e for e in events if e.kind != "progress"]   # progress goes to the bar, not to lines
    assert seqs == [e.seq for e in expected] and seqs == sorted(seqs)
    assert [line.split()[1] for line in lines] == [e.kind for e in expected]
    assert lines[0].split()[1] == "run_created" and lines[-1].split()[1] == "run_finished"
    assert cluster.run(run_id).state == "succeeded"

    rc, out, _ = runs("status", run_id)
    assert rc == 0
    assert out.splitlines()[0].startswith(f"run {run_id}  succeeded  profile ci")
    assert status_rows(out) == {p: "succeeded" for p in PHASES}

    rc, out, _ = runs("list")
    assert rc == 0
    (row,) = [line.split("\t") for line in out.splitlines() if line.startswith(run_id)]
    assert row == [run_id, "succeeded", "ci", "6/6 phases"]
    rc, out, _ = runs("list", "--state", "blocked")
    assert rc == 0 and run_id not in out


def test_watch_after_a_seq_prints_only_later_events(cluster, runs):
    run_id = cluster.create()
    cluster.wait_run(run_id)
    rc, out, _ = runs("watch", run_id, "--after", "3")
    assert rc == 0
    seqs = [int(re.match(r"\[(\d+)]", line).group(1)) for line in out.splitlines() if line.startswith("[")]
    events = cluster.stub.WatchRun(coordinator_pb2.WatchRunRequest(run_id=run_id), timeout=10)
    assert seqs == [e.seq for e in events if e.seq > 3 and e.kind != "progress"]
    assert out.splitlines()[-1].split()[1] == "run_finished"


# -- gates -----------------------------------------------------------------------------------------
def test_a_blocked_run_shows_the_unmeasured_metric_and_approve_lets_it_finish(cluster, runs):
    blocked_on_cognate(cluster)
    rc, out, _ = runs("create", "--profile", "ci")
    run_id = out.strip()
    cluster.wait_run(run_id, states=("blocked",))

    rc, out, _ = runs("watch", run_id)
    assert rc != 0                                # a blocked run is not a success
    assert out.splitlines()[-1].split()[1:3] == ["blocked", "cognate"]

    rc, out, _ = runs("status", run_id)
    assert rc == 0
    assert out.splitlines()[0].startswith(f"run {run_id}  blocked")
    assert "cognate/memory_diversity was not reported" in out
    assert "cognate/memory_diversity=n/a✗" in out
    for metric, value in passing_metrics("cognate").items():
        if metric != "cognate/memory_diversity":
            assert f"{metric}={value:.4g}✓" in out
    rows = status_rows(out)
    assert rows["cognate"] == "gate_failed" and rows["evomerge"] == "pending"

    rc, out, _ = runs("approve", run_id, "cognate", "--who", "x", "--why", "y")
    assert rc == 0
    assert status_rows(out)["cognate"] == "approved"
    cluster.wait_run(run_id)
    assert cluster.state.approvals(run_id)[0]["who"] == "x"
    assert [len(cluster.behaviour[p].calls) for p in PHASES] == [1] * 6

    # once approved and finished, the historic "blocked" event no longer decides watch's exit code
    rc, out, _ = runs("watch", run_id)
    assert rc == 0 and out.splitlines()[-1].split()[1] == "run_finished"


def test_retry_after_a_failed_gate_reruns_the_phase(cluster, runs):
    blocked_on_cognate(cluster)
    run_id = cluster.create()
    cluster.wait_run(run_id, states=("blocked",))
    cluster.behaviour["cognate"].metrics = None   # the rerun reports every metric
    rc, out, _ = runs("retry", run_id, "cognate")
    assert rc == 0
    assert out.splitlines()[0].startswith(f"run {run_id}  running")
    cluster.wait_run(run_id)
    first, second = cluster.behaviour["cognate"].calls
    assert first["request_id"].endswith(".a1") and second["request_id"].endswith(".a2")
    rc, out, _ = runs("status", run_id)
    assert status_rows(out) == {p: "succeeded" for p in PHASES}
    assert re.search(r"cognate\s+succeeded\s+attempt 2", out)


def test_cancel_of_a_held_run(cluster, runs):
    cluster.behaviour["cognate"].hold = threading.Event()   # never released
    run_id = cluster.create()
    cluster.wait(lambda: cluster.behaviour["cognate"].started.is_set(), what="cognate start")
    rc, out, _ = runs("cancel", run_id)
    assert rc == 0
    assert out.splitlines()[0].startswith(f"run {run_id}  cancelled")
    assert cluster.run(run_id).state == "cancelled"
    cluster.wait(lambda: cluster.coordinator.leases.free_slots() == 1, what="the lease released once the job stopped")
    rc, out, _ = runs("status", run_id)
    rows = status_rows(out)
    assert rows["cognate"] == "cancelled" and rows["bitnet"] == "cancelled"
    assert rows["datasets"] == "succeeded"
    # cancelling twice is refused with a reason, not a traceback
    rc, _, err = runs("cancel", run_id)
    assert rc == EXIT_FAILED and "already cancelled" in one_error(err)


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [("status", "run-nope0000000"), ("cancel", "run-nope0000000"),
                                  ("retry", "run-nope0000000", "cognate"), ("watch", "run-nope0000000")])
def test_an_unknown_run_is_one_line_naming_it(cluster, runs, args):
    rc, out, err = runs(*args)
    assert rc != 0 and out == ""
    assert "run-nope0000000" in one_error(err)


def test_a_wrong_token_is_one_line_about_the_bearer_token(cluster, runs, monkeypatch):
    monkeypatch.setenv("AGENTFORGE_TOKEN", "not-the-cluster-token-42")
    for args in (("create", "--profile", "ci"), ("list",)):
        rc, out, err = runs(*args)
        line = one_error(err)
        assert rc == EXIT_FAILED and out == ""
        assert "unauthenticated" in line and "invalid bearer token" in line
        assert "not-the-cluster-token-42" not in err
    monkeypatch.delenv("AGENTFORGE_TOKEN")
    rc, _, err = runs("list")
    assert rc == EXIT_FAILED and "missing bearer token" in one_error(err)
    assert cluster.coordinator.list_runs() == []


def test_an_unreachable_coordinator_is_one_line(runs):
    rc, out, err = runs("status", "run-x", address="127.0.0.1:1")
    assert rc == EXIT_FAILED and out == ""
    assert "unreachable" in one_error(err)


@pytest.mark.parametrize("bad", ["file:///x", "file:///x@abc", "no-at-sign:name"])
def test_a_bad_input_format_is_a_usage_error(cluster, runs, bad):
    rc, out, err = runs("create", "--profile", "ci", "--start-phase", "evomerge", "--input", bad)
    line = one_error(err)
    assert rc == EXIT_USAGE and out == ""
    assert "--input" in line and "URI@SHA256:NAME" in line and repr(bad) in line
    assert cluster.coordinator.list_runs() == []


def test_a_malformed_profile_file_is_a_usage_error_naming_the_key(cluster, runs, tmp_path):
    data = yaml.safe_load((CONFIG_DIR / "ci.yaml").read_text())
    data["phases"]["cognate"]["batch_sise"] = 4          # typo of batch_size
    bad = tmp_path / "typo.yaml"
    bad.write_text(yaml.safe_dump(data))
    rc, out, err = runs("create", "--config", str(bad))
    line = one_error(err)
    assert rc == EXIT_USAGE and out == ""
    assert "phases.cognate.batch_sise" in line and "unknown key" in line

    data["phases"]["cognate"].pop("batch_sise")
    data["phases"]["cognate"]["batch_size"] = 0
    bad.write_text(yaml.safe_dump(data))
    rc, _, err = runs("create", "--config", str(bad))
    assert rc == EXIT_USAGE and "phases.cognate.batch_size" in one_error(err)

    bad.write_text("name: x\nseed: [1\n")
    rc, _, err = runs("create", "--config", str(bad))
    assert rc == EXIT_USAGE and "YAML" in one_error(err)

    rc, _, err = runs("create", "--config", str(tmp_path / "missing.yaml"))
    assert rc == EXIT_USAGE and "missing.yaml" in one_error(err)
    assert cluster.coordinator.list_runs() == []
