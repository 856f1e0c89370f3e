"""Fixtures for the storage tests: a fresh bucket per test on the session's SeaweedFS server.

`seaweed` (the server) and `no_unpickling` live in tests/conftest.py, so other folders share them.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from shared.storage import ArtifactStore, LocalStore, RetryPolicy, S3Store
from tests.s3_server import SeaweedServer

# tests wait on a real server restart, so back off quickly but keep trying for ~15 s
FAST_RETRY = RetryPolicy(attempts=10, initial_backoff_s=0.2, max_backoff_s=2.0, jitter_s=0.2)


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

