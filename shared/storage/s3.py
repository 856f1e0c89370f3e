"""S3Store: the artifact store on any S3 API (MinIO in compose/k8s, SeaweedFS in tests) via the minio SDK.

Retries: the SDK's own urllib3 retries are switched off so that one policy (tenacity: exponential backoff
with jitter, a bounded number of attempts) governs every call, and it retries only what can succeed on a
second try: connection errors, 5xx, SlowDown/RequestTimeout. Auth errors and missing keys fail at once.

Uploads: objects up to one part go in a single PUT; larger ones use multipart calls driven here rather
than by `put_object`, so each part is retried on its own, the cancel event is checked between parts, and
every failure or cancellation aborts the upload, so no orphaned parts stay behind (they would be billed
and invisible). This uses the SDK's `_create_multipart_upload`/`_upload_part`/`_complete_multipart_upload`
/`_abort_multipart_upload`; minio is pinned (requirements.txt) because these are not public API.

The secret key is handed to the SDK and never stored on this object, logged or put in a message.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource, CopySource
from minio.datatypes import Part
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import check_bucket_name
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from shared.errors import InvalidSpecError, NotFoundError, StorageError
from shared.storage.base import ArtifactStore
from shared.storage.keys import validate_key, validate_prefix
from shared.storage.streams import CHUNK, CancelEvent, check_cancel

log = logging.getLogger(__name__)

T = TypeVar("T")
MIN_PART_SIZE = 5 << 20  # the S3 minimum for every part but the last
_AUTH_CODES = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "InvalidToken", "ExpiredToken"}
_TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "RequestTimeTooSkewed"}


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    attempts: int = 5
    """Total tries per call (first try included)."""
    initial_backoff_s: float = 0.5
    """Wait before the second try; doubles each time, plus up to `jitter_s` of random jitter."""
    max_backoff_s: float = 8.0
    jitter_s: float = 0.5


def is_transient(exc: BaseException) -> bool:
    """True for failures that another attempt may cure; never for auth errors or missing objects."""
    if isinstance(exc, S3Error):
        status = exc.response.status if exc.response is not None else 0
        return exc.code in _TRANSIENT_CODES or (status >= 500 and exc.code not in _AUTH_CODES)
    if isinstance(exc, ServerError):
        return exc.status_code >= 500
    if isinstance(exc, InvalidResponseError):  # e.g. a proxy's HTML 502 page
        return getattr(exc, "_code", 0) >= 500
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


class S3Store(ArtifactStore):
    """Objects in one S3 bucket; URIs are `s3://<bucket>/<key>`."""

    scheme = "s3"

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        region: str | None = None,
        part_size: int = 16 << 20,
        create_bucket: bool = True,
        retry: RetryPolicy = RetryPolicy(),
        timeout_s: float = 60.0,
    ):
        if endpoint.startswith(("http://", "https://")):
            secure = endpoint.startswith("https://")
            endpoint = endpoint.split("://", 1)[1]
        endpoint = endpoint.rstrip("/")
        if not endpoint or "/" in endpoint:
            raise InvalidSpecError(f"must be host[:port], got {endpoint!r}", field="endpoint")
        if part_size < MIN_PART_SIZE:
            raise InvalidSpecError(f"must be at least {MIN_PART_SIZE} bytes (S3 minimum), got {part_size}",
                                   field="part_size")
        try:
            check_bucket_name(bucket)
        except ValueError as exc:
            raise InvalidSpecError(f"{exc} (S3 bucket names: 3-63 lowercase letters, digits, '.', '-')",
                                   field="bucket") from None
        if not access_key or not secret_key:
            raise InvalidSpecError("S3 access key and secret key must both be set", field="access_key")
        self.endpoint, self.access_key, self.bucket = endpoint, access_key, bucket
        self.part_size, self.retry = part_size, retry
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout_s, 10.0), read=timeout_s),
            maxsize=10,
            retries=False,  # tenacity owns retries; stacked retry loops would multiply the waits
        )
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure,
                            region=region, http_client=http)
        if create_bucket:
            self._ensure_bucket()

    def __repr__(self) -> str:
        return f"S3Store(endpoint={self.endpoint!r}, bucket={self.bucket!r}, access_key={self.access_key!r})"

    # --- error handling --------------------------------------------------------------------------------

    def _translate(self, exc: BaseException, what: str, key: str | None) -> Exception:
        if isinstance(exc, S3Error):
            if exc.code in _AUTH_CODES:
                return StorageError(
                    f"the S3 credentials were rejected by {self.endpoint} ({exc.code}) for access key id "
                    f"{self.access_key!r} while trying to {what}; check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
                )
            if exc.code in ("NoSuchKey", "NoSuchUpload") and key is not None:
                return NotFoundError(f"no object {key!r} in s3://{self.bucket} ({self.endpoint})")
            if exc.code == "NoSuchBucket":
                return NotFoundError(f"bucket {self.bucket!r} does not exist on {self.endpoint}")
            return StorageError(f"S3 {what} on {self.endpoint} failed: {exc.code}: {exc.message}")
        if is_transient(exc):
            return StorageError(
                f"S3 {what} on {self.endpoint} failed after {self.retry.attempts} attempts "
                f"(server unreachable or failing): {type(exc).__name__}: {exc}"
            )
        return StorageError(f"S3 {what} on {self.endpoint} failed: {type(exc).__name__}: {exc}")

    def _log_retry(self, what: str) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning("S3 %s on %s failed (%s: %s); attempt %d/%d, retrying in %.1f s", what, self.endpoint,
                        type(exc).__name__, exc, state.attempt_number, self.retry.attempts, wait)

        return before_sleep

    def _call(self, what: str, fn: Callable[[], T], key: str | None = None) -> T:
        """Run one S3 call under the retry policy; translate its failure into our exceptions."""
        retrying = Retrying(
            stop=stop_after_attempt(self.retry.attempts),
            wait=wait_exponential_jitter(multiplier=self.retry.initial_backoff_s, max=self.retry.max_backoff_s,
                                         jitter=self.retry.jitter_s),
            retry=retry_if_exception(is_transient),
            before_sleep=self._log_retry(what),
            reraise=True,
        )
        try:
            return retrying(fn)
        except (S3Error, ServerError, InvalidResponseError, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._translate(exc, what, key) from exc

    def _ensure_bucket(self) -> None:
        if self._call(f"check bucket {self.bucket}", lambda: self.client.bucket_exists(self.bucket)):
            return
        try:
            self._call(f"create bucket {self.bucket}", lambda: self.client.make_bucket(self.bucket))
        except StorageError as exc:  # another process created it between our check and our create
            if not isinstance(exc.__cause__, S3Error) or exc.__cause__.code not in (
                "BucketAlreadyOwnedByYou", "BucketAlreadyExists"
            ):
                raise

    # --- uploads ---------------------------------------------------------------------------------------

    def put_stream(self, key: str, reader: BinaryIO, *, cancel_event: CancelEvent | None = None) -> int:
        key = validate_key(key)
        what = f"upload {key}"
        check_cancel(cancel_event, f"uploading {self.uri_for(key)}")
        # read one byte past a part to learn whether a single PUT suffices
        first = _read_full(reader, self.part_size + 1)
        if len(first) <= self.part_size:
            self._call(what, lambda: self.client.put_object(self.bucket, key, io.BytesIO(first), len(first)), key)
            return len(first)
        return self._multipart(key, first[: self.part_size], first[self.part_size:], reader, cancel_event)

    def _multipart(self, key: str, part: bytes, carry: bytes, reader: BinaryIO,
                   cancel_event: CancelEvent | None) -> int:
        what = f"multipart upload {key}"
        upload_id = self._call(what, lambda: self.client._create_multipart_upload(self.bucket, key, _headers()),
                               key)
        parts: list[Part] = []
        total = 0
        try:
            number = 1
            while part:
                check_cancel(cancel_event, f"uploading {self.uri_for(key)}")
                etag = self._call(f"{what} (part {number})", lambda data=part, n=number: self.client._upload_part(
                    self.bucket, key, data, None, upload_id, n), key)
                parts.append(Part(number, etag))
                total += len(part)
                number += 1
                part = carry + _read_full(reader, self.part_size - len(carry))
                carry = b""
            check_cancel(cancel_event, f"uploading {self.uri_for(key)}")
            self._call(f"{what} (complete)", lambda: self.client._complete_multipart_upload(
                self.bucket, key, upload_id, parts), key)
        except BaseException:
            self._abort_upload(key, upload_id)
            raise
        return total

    def _abort_upload(self, key: str, upload_id: str) -> None:
        try:
            self._call(f"abort multipart upload {key}",
                       lambda: self.client._abort_multipart_upload(self.bucket, key, upload_id), key)
        except (StorageError, NotFoundError) as exc:
            log.warning("could not abort multipart upload %s of s3://%s/%s (parts may remain): %s",
                        upload_id, self.bucket, key, exc)

    # --- downloads --------------------------------------------------------------------------------------

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        key = validate_key(key)
        response = self._call(f"download {key}", lambda: self.client.get_object(self.bucket, key), key)
        return self._stream(key, response, chunk_size)

    def _stream(self, key: str, response: urllib3.BaseHTTPResponse, chunk_size: int) -> Iterator[bytes]:
        """Yield the body; if the connection drops mid-way, resume from the last byte with a Range GET.

        The resume carries If-Match with the first response's ETag, so bytes of a replaced object are
        never spliced onto the old one (the server answers 412 and the read fails instead).
        """
        pos, failures = 0, 0
        size = int(response.headers.get("content-length", -1))
        etag = response.headers.get("etag")
        resume_headers = {"If-Match": etag} if etag else None
        while True:
            try:
                for chunk in response.stream(chunk_size):
                    pos += len(chunk)
                    yield chunk
                if size < 0 or pos >= size:
                    return
                raise urllib3.exceptions.ProtocolError(f"body ended at {pos} of {size} bytes")
            except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
                failures += 1
                if failures >= self.retry.attempts:
                    raise self._translate(exc, f"download {key}", key) from exc
                log.warning("S3 download of %s interrupted at byte %d (%s); resuming", key, pos, exc)
            finally:
                response.close()
                response.release_conn()
            response = self._call(f"download {key}",
                                  lambda at=pos: self.client.get_object(self.bucket, key, offset=at,
                                                                        request_headers=resume_headers), key)

    # --- the rest ---------------------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        key = validate_key(key)
        try:
            self._call(f"stat {key}", lambda: self.client.stat_object(self.bucket, key), key)
        except NotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        prefix = validate_prefix(prefix)
        objects = self._call(
            f"list {prefix or '/'}",
            lambda: [o.object_name for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)],
        )
        return sorted(name for name in objects if name and not name.endswith("/"))

    def delete(self, key: str) -> None:
        key = validate_key(key)
        try:
            self._call(f"delete {key}", lambda: self.client.remove_object(self.bucket, key), key)
        except NotFoundError:
            pass

    def delete_keys(self, keys: list[str]) -> None:
        """Batch delete (one request per 1000 keys, the DeleteObjects limit) instead of one per key."""
        keys = [validate_key(k) for k in keys]
        for start in range(0, len(keys), 1000):
            batch = [DeleteObject(k) for k in keys[start : start + 1000]]
            errors = self._call(f"delete {len(batch)} objects",
                                lambda batch=batch: list(self.client.remove_objects(self.bucket, batch)))
            if errors:
                raise StorageError(f"deleting from s3://{self.bucket} failed for {len(errors)} objects, "
                                   f"e.g. {errors[0].name}: {errors[0].code} {errors[0].message}")

    def copy(self, src: str, dst: str) -> None:
        src, dst = validate_key(src), validate_key(dst)

        def do_copy() -> None:
            try:
                self.client.copy_object(self.bucket, dst, CopySource(self.bucket, src))
            except ValueError:  # sources over 5 GiB need a multipart (compose) copy
                self.client.compose_object(self.bucket, dst, [ComposeSource(self.bucket, src)])

        self._call(f"copy {src} -> {dst}", do_copy, src)

    def list_multipart_uploads(self, prefix: str = "") -> list[tuple[str, str]]:
        """(key, upload id) of unfinished multipart uploads: for tests and for cleaning up after crashes."""
        result = self._call("list multipart uploads", lambda: self.client._list_multipart_uploads(
            self.bucket, prefix=prefix))
        return [(u.object_name, u.upload_id) for u in result.uploads]

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def key_from_uri(self, uri: str) -> str:
        base = f"s3://{self.bucket}/"
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            raise InvalidSpecError(f"{uri!r} is not an s3:// URI, so it is not in {self!r}", field="uri")
        if not uri.startswith(base):
            raise InvalidSpecError(f"{uri!r} is in another bucket than {self.bucket!r}", field="uri")
        return validate_key(uri[len(base):], field="uri")


def _read_full(reader: BinaryIO, size: int) -> bytes:
    """Read exactly `size` bytes unless EOF comes first: a short read from a pipe or socket is not EOF,
    and mistaking it for one would silently truncate the object."""
    chunks, need = [], size
    while need > 0:
        chunk = reader.read(need)
        if not chunk:
            break
        chunks.append(chunk)
        need -= len(chunk)
    return b"".join(chunks)


def _headers() -> dict[str, str | list[str] | tuple[str]]:
    return {"Content-Type": "application/octet-stream"}
