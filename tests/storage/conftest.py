"""Fixtures for the storage tests: one SeaweedFS server per session, a fresh bucket per test.

`seaweed` lives here (not in tests/conftest.py) but builds on tests/s3_server.py so other test folders
can reuse the same helper.
"""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path

import pytest
import torch

from shared.storage import ArtifactStore, LocalStore, RetryPolicy, S3Store
from tests.s3_server import SKIP_REASON, SeaweedServer, find_weed

# tests wait on a real server restart, so back off quickly but keep trying for ~15 s
FAST_RETRY = RetryPolicy(attempts=10, initial_backoff_s=0.2, max_backoff_s=2.0, jitter_s=0.2)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory):
    if find_weed() is None:
        pytest.skip(SKIP_REASON)
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    server.start()
    yield server
    server.stop()


def new_bucket() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def s3_store(seaweed: SeaweedServer) -> S3Store:
    return S3Store(seaweed.endpoint, seaweed.access_key, seaweed.secret_key, new_bucket(),
                   part_size=5 << 20, retry=FAST_RETRY)


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest) -> ArtifactStore:
    """Both backends, so every artifact property is checked against each."""
    return request.getfixturevalue("local_store" if request.param == "local" else "s3_store")


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any call into the unpicklers fails the test loudly, on top of the marker-file check."""

    def forbidden(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    class ForbiddenUnpickler(pickle.Unpickler):  # a class: torch subclasses pickle.Unpickler on import
        def __init__(self, *args, **kwargs):
            forbidden()

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", ForbiddenUnpickler)
    monkeypatch.setattr(torch, "load", forbidden)
