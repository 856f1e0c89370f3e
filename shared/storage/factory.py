"""Build a store from a URI, the way every entry point configures storage.

`file:///abs/path` or a plain path gives a LocalStore; `s3://bucket` gives an S3Store whose endpoint and
credentials come from the environment (never from the URI, so a secret cannot end up in a config file,
a run record or a log line that prints the URI).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from shared.errors import InvalidSpecError
from shared.storage.base import ArtifactStore
from shared.storage.local import LocalStore
from shared.storage.s3 import S3Store

ENV_ENDPOINT = "AGENTFORGE_S3_ENDPOINT"
ENV_ACCESS_KEY = "AWS_ACCESS_KEY_ID"
ENV_SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_SECURE = "AGENTFORGE_S3_SECURE"
ENV_REGION = "AGENTFORGE_S3_REGION"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def _required(env: Mapping[str, str], name: str, uri: str) -> str:
    value = env.get(name)
    if not value:
        raise InvalidSpecError(f"environment variable {name} must be set to use {uri}", field=name)
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidSpecError(f"must be true/false (1/0, yes/no), got {env[name]!r}", field=name)


def store_from_uri(uri: str, env: Mapping[str, str] = os.environ) -> ArtifactStore:
    """LocalStore for `file:///path` or a plain path; S3Store for `s3://bucket` (settings from `env`)."""
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidSpecError("must be a store URI such as file:///data/artifacts or s3://bucket", field="store")
    if "://" not in uri:
        return LocalStore(uri)
    scheme, rest = uri.split("://", 1)
    if scheme == "file":
        if not rest.startswith("/"):
            raise InvalidSpecError(f"file URIs must be absolute (file:///path), got {uri!r}", field="store")
        return LocalStore(rest)
    if scheme == "s3":
        bucket = rest.rstrip("/")
        if not bucket or "/" in bucket:
            raise InvalidSpecError(f"must be s3://<bucket> with no path, got {uri!r}", field="store")
        return S3Store(
            _required(env, ENV_ENDPOINT, uri),
            _required(env, ENV_ACCESS_KEY, uri),
            _required(env, ENV_SECRET_KEY, uri),
            bucket,
            secure=_flag(env, ENV_SECURE),
            region=env.get(ENV_REGION) or None,
        )
    raise InvalidSpecError(f"unsupported store scheme {scheme!r} in {uri!r}; use file:// or s3://", field="store")
