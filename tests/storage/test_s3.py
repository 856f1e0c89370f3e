"""S3-specific behaviour against a real SeaweedFS: multipart, credentials, retries, cancellation."""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from pathlib import Path

import pytest
import urllib3
from minio.error import S3Error

from shared.errors import CancelledError, InvalidSpecError, NotFoundError, StorageError
from shared.storage import LocalStore, S3Store, sha256_file, store_from_uri
from shared.storage.s3 import is_transient
from tests.s3_server import SeaweedServer
from tests.storage.conftest import FAST_RETRY, new_bucket
from tests.storage.unsafe import CancelAfter

pytestmark = pytest.mark.s3


def test_50mb_artifact_multipart_round_trip(s3_store: S3Store, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(50 << 20))
    with s3_store.open_artifact("runs/r/p/big", kind="checkpoint", name="big", retention="intermediate") as w:
        w.add_file("blob.bin", src)
    assert w.ref is not None and w.ref.size > 50 << 20
    s3_store.fetch(w.ref, tmp_path / "out")  # verifies the sha256 of every file on the way in
    assert sha256_file(tmp_path / "out" / "blob.bin") == sha256_file(src)
    s3_store.get_file("runs/r/p/big/blob.bin", tmp_path / "direct.bin")
    assert sha256_file(tmp_path / "direct.bin") == sha256_file(src)
    assert s3_store.list_multipart_uploads() == []


def test_missing_object_is_not_found_naming_the_key(s3_store: S3Store) -> None:
    with pytest.raises(NotFoundError, match="no/such/key"):
        s3_store.get_bytes("no/such/key")
    assert not s3_store.exists("no/such/key")
    s3_store.delete("no/such/key")  # deleting a missing object is fine


@pytest.mark.parametrize(("access_key", "code"), [(None, "SignatureDoesNotMatch"), ("nobody", "InvalidAccessKeyId")])
def test_wrong_credentials_give_a_clear_error_without_the_secret(
    seaweed: SeaweedServer, caplog: pytest.LogCaptureFixture, access_key: str | None, code: str
) -> None:
    secret = "wrong-secret-0123456789"
    key_id = access_key or seaweed.access_key
    caplog.set_level(logging.DEBUG)
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        S3Store(seaweed.endpoint, key_id, secret, new_bucket(), retry=FAST_RETRY)
    message = str(info.value)
    assert "credentials were rejected" in message and code in message
    assert seaweed.endpoint in message and key_id in message
    assert secret not in message and secret not in caplog.text
    assert time.monotonic() - start < 2.0  # auth errors are not retried
    store = S3Store(seaweed.endpoint, key_id, secret, new_bucket(), create_bucket=False)
    assert secret not in repr(store)
    with pytest.raises(StorageError, match="credentials were rejected"):
        store.list()


def test_server_restart_between_calls_is_retried(
    seaweed: SeaweedServer, s3_store: S3Store, caplog: pytest.LogCaptureFixture
) -> None:
    s3_store.put_bytes("k/before", b"survives a restart")
    seaweed.stop()
    restarter = threading.Thread(target=seaweed.restart)
    restarter.start()  # the server comes back while the next call is already retrying
    try:
        with caplog.at_level(logging.WARNING, logger="shared.storage.s3"):
            assert s3_store.get_bytes("k/before") == b"survives a restart"
    finally:
        restarter.join()
    assert "retrying" in caplog.text
    s3_store.put_bytes("k/after", b"x")
    assert s3_store.list("k/") == ["k/after", "k/before"]


def test_cancel_mid_multipart_upload_aborts_it(s3_store: S3Store, tmp_path: Path, monkeypatch) -> None:
    # control: the listing really shows an unfinished multipart upload
    upload_id = s3_store.client._create_multipart_upload(s3_store.bucket, "probe/obj", {})
    assert s3_store.list_multipart_uploads("probe/") == [("probe/obj", upload_id)]
    s3_store.client._abort_multipart_upload(s3_store.bucket, "probe/obj", upload_id)

    parts: list[int] = []
    real = s3_store.client._upload_part
    monkeypatch.setattr(s3_store.client, "_upload_part", lambda *a: (parts.append(a[5]), real(*a))[1])
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(16 << 20))  # four 5 MiB parts
    cancel = CancelAfter()
    with pytest.raises(CancelledError):
        with s3_store.open_artifact("jobs/j/t1/ckpt", kind="checkpoint", name="c", cancel_event=cancel) as w:
            cancel.arm(after=3)  # writer check, upload start, part 1 pass; part 2 sees the cancel
            w.add_file("state.bin", src)
    assert parts == [1]  # it was cancelled mid-upload, after a part had been sent
    assert s3_store.list_multipart_uploads() == []
    assert s3_store.list() == []


def test_failed_part_aborts_the_upload(s3_store: S3Store, tmp_path: Path, monkeypatch) -> None:
    real = s3_store.client._upload_part

    def fail_second(*args):
        if args[5] == 2:
            raise urllib3.exceptions.ProtocolError("connection reset")
        return real(*args)

    monkeypatch.setattr(s3_store.client, "_upload_part", fail_second)
    monkeypatch.setattr(s3_store, "retry", type(s3_store.retry)(attempts=2, initial_backoff_s=0.01))
    with pytest.raises(StorageError, match="after 2 attempts"):
        s3_store.put_bytes("a/obj", os.urandom(11 << 20))
    assert s3_store.list_multipart_uploads() == [] and s3_store.list() == []


def test_interrupted_download_resumes_with_a_range_request(s3_store: S3Store, monkeypatch) -> None:
    data = os.urandom(3 << 20)
    s3_store.put_bytes("a/obj", data)
    real, offsets = s3_store.client.get_object, []

    class DropsAfterOneChunk:
        def __init__(self, response):
            self._r, self.headers = response, response.headers

        def stream(self, n):
            it = self._r.stream(n)
            yield next(it)
            raise urllib3.exceptions.ProtocolError("connection broken mid-body")

        def close(self):
            self._r.close()

        def release_conn(self):
            self._r.release_conn()

    def get_object(bucket, key, offset=0, **kw):
        offsets.append(offset)
        response = real(bucket, key, offset=offset, **kw)
        return DropsAfterOneChunk(response) if len(offsets) == 1 else response

    monkeypatch.setattr(s3_store.client, "get_object", get_object)
    assert s3_store.get_bytes("a/obj") == data
    assert offsets == [0, 1 << 20]

    offsets.clear()  # the object is replaced between the first GET and the resume: no splicing

    def stream_then_replace(self, n):
        it = self._r.stream(n)
        yield next(it)
        s3_store.client.put_object(s3_store.bucket, "a/obj", io.BytesIO(b"new" * 100), 300)
        raise urllib3.exceptions.ProtocolError("connection broken mid-body")

    monkeypatch.setattr(DropsAfterOneChunk, "stream", stream_then_replace)
    with pytest.raises(StorageError, match="PreconditionFailed"):
        s3_store.get_bytes("a/obj")


def _s3_error(code: str, status: int) -> S3Error:
    response = urllib3.HTTPResponse(body=b"", status=status)
    return S3Error(response, code, "msg", "/b/k", "req", "host")


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (_s3_error("SlowDown", 503), True),
        (_s3_error("RequestTimeout", 400), True),
        (_s3_error("InternalError", 500), True),
        (_s3_error("SignatureDoesNotMatch", 403), False),
        (_s3_error("InvalidAccessKeyId", 403), False),
        (_s3_error("NoSuchKey", 404), False),
        (urllib3.exceptions.NewConnectionError(None, "refused"), True),
        (ConnectionResetError(), True),
        (ValueError("bug"), False),
    ],
)
def test_only_transient_errors_are_retried(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_store_from_uri(seaweed: SeaweedServer, tmp_path: Path) -> None:
    assert isinstance(store_from_uri(str(tmp_path / "a")), LocalStore)
    local = store_from_uri(f"file://{tmp_path}/b")
    assert isinstance(local, LocalStore) and local.root == tmp_path / "b"
    env = {"AGENTFORGE_S3_ENDPOINT": seaweed.endpoint, "AWS_ACCESS_KEY_ID": seaweed.access_key,
           "AWS_SECRET_ACCESS_KEY": seaweed.secret_key, "AGENTFORGE_S3_SECURE": "false"}
    bucket = new_bucket()
    s3 = store_from_uri(f"s3://{bucket}", env)
    assert isinstance(s3, S3Store) and s3.uri_for("x") == f"s3://{bucket}/x"
    for missing in ("AGENTFORGE_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        with pytest.raises(InvalidSpecError, match=missing):
            store_from_uri(f"s3://{bucket}", {k: v for k, v in env.items() if k != missing})
    for bad in ("gs://x", "s3://", "s3://b/with/path", "file://relative", ""):
        with pytest.raises(InvalidSpecError):
            store_from_uri(bad, env)
    with pytest.raises(InvalidSpecError, match="AGENTFORGE_S3_SECURE"):
        store_from_uri(f"s3://{bucket}", {**env, "AGENTFORGE_S3_SECURE": "maybe"})
    with pytest.raises(InvalidSpecError, match="bucket"):
        store_from_uri("s3://No_Such_Bucket!", env)
