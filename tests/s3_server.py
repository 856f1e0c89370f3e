"""The SeaweedFS S3 server for tests and benchmarks; it lives in shared/deploy/seaweed.py because the
local-process mode (`agentforge up-local`) runs it too. Kept here so test and bench imports stay short."""

from shared.deploy.seaweed import SKIP_REASON, SeaweedServer, find_weed, free_ports

__all__ = ["SKIP_REASON", "SeaweedServer", "find_weed", "free_ports"]
