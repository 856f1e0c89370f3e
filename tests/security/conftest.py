"""Fixtures of the security tests: a phase service on the session's SeaweedFS bucket, as deployed."""

from __future__ import annotations

import grpc
import pytest

from shared.rpc.auth import TOKEN_ENV, with_token
from tests.security.helpers import PHASES, TOKEN, new_bucket, s3_env, s3_store, start_server


@pytest.fixture
def bitnet_on_s3(seaweed, tmp_path):
    """(definition, authenticated channel, the service's S3Store seen from outside, bucket) for the bitnet
    service: its first step is to fetch its `model` input, so it shows how a job treats a bad input."""
    bucket = new_bucket()
    store = s3_store(seaweed, bucket)
    server, close = start_server("bitnet", tmp_path, {TOKEN_ENV: TOKEN, "AGENTFORGE_REQUIRE_AUTH": "1",
                                                      **s3_env(seaweed, bucket)})
    channel = grpc.insecure_channel(server.address)
    yield PHASES["bitnet"], with_token(channel, TOKEN), store, bucket
    channel.close()
    close()
