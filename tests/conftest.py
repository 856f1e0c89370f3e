"""Test-wide settings: offline hub, one torch thread, W&B offline, and a summary of skips with reasons."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

# Set before anything imports transformers/datasets/wandb/torch.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DIR", tempfile.mkdtemp(prefix="agentforge-wandb-"))  # offline runs stay out of the repo
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
DATASETS_DIR = SHARED_DIR / "datasets"
GPT2_DIR = SHARED_DIR / "tokenizers" / "gpt2"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory):
    """One real S3 server (SeaweedFS) for the whole session; each test makes its own bucket."""
    from tests.s3_server import SKIP_REASON, SeaweedServer, find_weed

    if find_weed() is None:
        pytest.skip(SKIP_REASON)
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any call into the unpicklers fails the test loudly, on top of the marker-file check."""
    import pickle

    def forbidden(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    class ForbiddenUnpickler(pickle.Unpickler):  # a class: torch subclasses pickle.Unpickler on import
        def __init__(self, *args, **kwargs):
            forbidden()

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", ForbiddenUnpickler)
    monkeypatch.setattr(torch, "load", forbidden)


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    if not DATASETS_DIR.is_dir():
        pytest.skip(f"the shared dataset mirror is absent ({DATASETS_DIR}); CI has it beside the clone")
    return DATASETS_DIR


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        terminalreporter.write_line("skipped: 0")
        return
    reasons: Counter[str] = Counter()
    for report in skipped:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    terminalreporter.write_line(f"skipped: {len(skipped)}")
    for reason, n in reasons.most_common():
        terminalreporter.write_line(f"  {n} x {reason}")
