"""The in-process coordinator cluster (tests/coordinator/cluster.py) most coordinator tests start from."""

import pytest

from tests.coordinator.cluster import Cluster


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()
