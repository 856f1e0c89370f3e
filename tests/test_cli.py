"""The `agentforge` CLI: run says plainly what is missing, errors are one line, artifacts ls/verify/gc."""

import subprocess
import sys

import torch

from shared.cli import EXIT_UNAVAILABLE, EXIT_USAGE, main
from shared.storage.local import LocalStore


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_run_names_every_unavailable_phase_and_never_pretends(monkeypatch, capsys):
    """Every shipped phase has a runner; a phase without one (as before its issue lands) stops `run` before
    anything starts, named with its issue."""
    import dataclasses

    from shared.runtime import phase as phase_mod

    real = phase_mod.discover_phases()
    fake = {n: dataclasses.replace(d, runner_factory=None) if n == "bitnet" else d for n, d in real.items()}
    monkeypatch.setattr(phase_mod, "discover_phases", lambda: fake)
    assert main(["run", "--profile", "ci"]) == EXIT_UNAVAILABLE
    out, err = capsys.readouterr()
    assert "profile ci" in out
    for phase in ("datasets", "cognate", "evomerge", "reasoning_data", "quietstar", "bitnet"):
        assert phase in out
    assert "not available yet (issue #10)" in out and out.count("not available yet") == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot run the pipeline") and "bitnet" in lines[0]


def test_bad_profile_is_one_line_and_usage_exit(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    result = run_cli("run", "--config", str(bad))
    assert result.returncode == EXIT_USAGE
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing key" in lines[0] and "bad.yaml" in lines[0]
    assert "Traceback" not in result.stderr


def _artifact(store, key, run_id, retention):
    with store.open_artifact(key, kind="model", name=key.rsplit("/", 1)[-1], config={"a": 1},
                             producer={"run_id": run_id, "phase": "cognate", "job_id": "j",
                                       "request_id": "r", "fencing_token": 1},
                             parents=[], retention=retention) as w:
        w.add_tensors("model.safetensors", {"w": torch.ones(3)}, None)
    return w.ref


def test_artifacts_ls_verify_and_gc_keep_what_the_run_published(tmp_path, capsys):
    """gc deletes a run's job staging and checkpoints and keeps what the coordinator published (promotion
    marks it final), whatever retention its staged copy had; other runs are untouched.
    tests/storage/test_gc.py has the whole rule on both backends."""
    store = LocalStore(tmp_path / "store")
    uri = f"file://{tmp_path / 'store'}"
    staged = _artifact(store, "jobs/j/t1/model_a", "r1", "intermediate")
    store.promote(staged, "runs/r1/cognate/model_a")
    _artifact(store, "checkpoints/r/step-0000000001", "r1", "intermediate")
    final = _artifact(store, "runs/r1/bitnet/final", "r1", "final")
    _artifact(store, "runs/r2/cognate/model_a", "r2", "intermediate")

    assert main(["artifacts", "--store", uri, "ls", "runs/"]) == 0
    out = capsys.readouterr().out
    assert out.count("runs/") == 3 and "runs/r1/cognate/model_a\tmodel\tfinal" in out

    assert main(["artifacts", "--store", uri, "verify", final.uri]) == 0
    assert "ok:" in capsys.readouterr().out

    assert main(["artifacts", "--store", uri, "gc", "--run", "r1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would delete jobs/j/t1/model_a" in out and "would delete checkpoints/r/step-0000000001" in out
    assert len(store.list_artifacts("")) == 5

    assert main(["artifacts", "--store", uri, "gc", "--run", "r1"]) == 0
    out = capsys.readouterr().out
    assert "deleted jobs/j/t1/model_a" in out and "kept runs/r1/cognate/model_a (published)" in out
    assert sorted(store.list_artifacts("")) == ["runs/r1/bitnet/final", "runs/r1/cognate/model_a",
                                                "runs/r2/cognate/model_a"]


def test_verify_of_a_corrupt_artifact_fails_with_one_line(tmp_path, capsys):
    store = LocalStore(tmp_path / "store")
    ref = _artifact(store, "runs/r1/x/model", "r1", "final")
    path = tmp_path / "store" / "runs/r1/x/model/model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert main(["artifacts", "--store", f"file://{tmp_path / 'store'}", "verify", ref.uri]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "model.safetensors" in err[0]


def test_serve_unknown_service_is_a_clear_error():
    result = run_cli("serve", "nonsense", "--port", "0")
    assert result.returncode == 1
    assert "unknown phase or service 'nonsense'" in result.stderr
