"""The local-process mode: the deployed shape on a machine without Docker -- every service of
shared/deploy/topology.py as its own process, SeaweedFS as the S3 store, auth on. `agentforge up-local` runs
it in the foreground; the end-to-end tests use `LocalCluster`.

Each service runs exactly its container command (`agentforge serve <name>`, topology.Service.command) with
the environment names compose and k8s give it (topology.common_env + service_env + the secrets), rebased
onto this machine: 127.0.0.1 ports, the SeaweedFS endpoint, state and caches under DIR. One name is added,
AGENTFORGE_TORCH_THREADS=1 (LOCAL_ONLY_ENV): seven torch processes share this machine's cores, where each
container gets its own CPU limit.

DIR holds:
  token, s3-credentials.json, env   secrets, mode 0600, reused when DIR is reused (`source DIR/env`)
  s3/                               SeaweedFS data
  state/coordinator.sqlite          the coordinator's runs
  cache/                            torch extensions, HF, W&B, tmp and kernels/ (a prebuilt BitNet kernel:
                                    `python -m services.bitnet.core.kernel build DIR/cache/kernels`)
  logs/<service>.log, logs/seaweedfs/
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from shared.deploy import topology
from shared.deploy.seaweed import SKIP_REASON, SeaweedServer, find_weed
from shared.errors import AgentForgeError, FailedPreconditionError, InvalidSpecError
from shared.health_cli import check as health_check

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_BASE_PORT = 50050        # the coordinator's port: where `agentforge runs` looks by default
LOCAL_ONLY_ENV = {"AGENTFORGE_TORCH_THREADS": "1"}
_SCRUBBED_PREFIXES = ("AGENTFORGE_", "AWS_")   # the shell's settings must not leak into the services
_OPTIONAL_SECRETS = {name for names in topology.OPTIONAL_SECRET_ENV.values() for name in names}
_MIN_TOKEN = 16                                # shared/rpc/auth.py refuses shorter tokens


class LocalClusterError(AgentForgeError):
    """A service of the local cluster failed to start or could not be reached."""


def _free_port(taken: set[int]) -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port
    raise LocalClusterError(f"no free port on {HOST}")


def _port_in_use(port: int) -> bool:
    """Whether something listens on the port. SO_REUSEADDR as gRPC binds: a closed server's TIME_WAIT
    connections do not count; no SO_REUSEPORT, so another gRPC server (which sets it) does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def _write_secret(path: Path, text: str) -> None:
    """Create or replace `path` readable by its owner only (an existing file's mode is tightened too)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def agentforge_bin_dir() -> Path:
    """The folder holding the `agentforge` script: this interpreter's (the venv's) first, then PATH's."""
    local = Path(sys.executable).parent / "agentforge"
    if local.is_file() and os.access(local, os.X_OK):
        return local.parent
    found = shutil.which("agentforge")
    if found is None:
        raise FailedPreconditionError("the `agentforge` command is not installed; run scripts/install.sh")
    return Path(found).parent


class _Child:
    def __init__(self, service: topology.Service, port: int, log_path: Path):
        self.service, self.port, self.log_path = service, port, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class LocalCluster:
    """SeaweedFS plus one `agentforge serve <name>` process per service, on 127.0.0.1.

    base_port: the coordinator's port, the other services take the next ones in topology order; None picks
        free ports. token: the bearer token (default: DIR/token, generated on first use). services: which to
        start (default all; the coordinator is always told every phase service's address). extra_env:
        {service: {NAME: value}} applied last (e.g. a short AGENTFORGE_LEASE_TTL_S in fault tests).
    """

    def __init__(self, directory: str | os.PathLike[str], *, base_port: int | None = None, token: str | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, services: Sequence[str] | None = None,
                 extra_env: Mapping[str, Mapping[str, str]] | None = None, ready_timeout_s: float = 120.0,
                 stop_grace_s: float = 10.0):
        self.dir = Path(directory).resolve()
        self.cache_dir = Path(cache_dir).resolve() if cache_dir is not None else self.dir / "cache"
        self.log_dir = self.dir / "logs"
        self.token_path = self.dir / "token"
        self.env_path = self.dir / "env"
        self.ready_timeout_s, self.stop_grace_s = ready_timeout_s, stop_grace_s
        if token is not None and len(token) < _MIN_TOKEN:
            raise InvalidSpecError(f"must be at least {_MIN_TOKEN} characters", field="token")
        self._token = token
        unknown = sorted(set(services or ()) - {s.name for s in topology.SERVICES})
        unknown += sorted(set(extra_env or {}) - {s.name for s in topology.SERVICES})
        if unknown:
            raise InvalidSpecError(f"unknown services {unknown}; known: {[s.name for s in topology.SERVICES]}",
                                   field="services")
        self._selected = [s for s in topology.SERVICES if services is None or s.name in services]
        self._extra_env = {name: dict(env) for name, env in (extra_env or {}).items()}
        if base_port is not None and not 1024 <= base_port <= 65535 - len(topology.SERVICES):
            raise InvalidSpecError(f"must be in 1024..{65535 - len(topology.SERVICES)}, got {base_port}",
                                   field="base_port")
        self._fixed_ports = base_port is not None
        ports: list[int] = []
        for i in range(len(topology.SERVICES)):
            ports.append(base_port + i if base_port is not None else _free_port(set(ports)))
        self._children = {s.name: _Child(s, port, self.log_dir / f"{s.name}.log")
                          for s, port in zip(topology.SERVICES, ports, strict=True)}
        self._seaweed: SeaweedServer | None = None
        self._s3: dict[str, str] = {}

    # -- what clients need ------------------------------------------------------------------------------
    @property
    def token(self) -> str:
        if self._token is None:
            raise LocalClusterError("the token is set when the cluster starts; call start() first")
        return self._token

    @property
    def services(self) -> list[str]:
        """The services this cluster runs, in topology order."""
        return [s.name for s in self._selected]

    @property
    def s3_endpoint(self) -> str:
        if self._seaweed is None:
            raise LocalClusterError("SeaweedFS is not running; call start() first")
        return self._seaweed.endpoint

    def address(self, service: str) -> str:
        return f"{HOST}:{self._child(service).port}"

    def log_path(self, service: str) -> Path:
        return self._child(service).log_path

    def env_for_client(self) -> dict[str, str]:
        """What `agentforge runs ...` and `agentforge artifacts ...` need to reach this cluster."""
        return {topology.COORDINATOR_ADDR_ENV: self.address("coordinator"), "AGENTFORGE_TOKEN": self.token,
                "AGENTFORGE_STORE": topology.STORE_URI, "AGENTFORGE_S3_ENDPOINT": self.s3_endpoint,
                "AWS_ACCESS_KEY_ID": self._s3["access_key"], "AWS_SECRET_ACCESS_KEY": self._s3["secret_key"]}

    def pid(self, service: str) -> int | None:
        """The service's process id, None once it has exited (or before it started)."""
        child = self._child(service)
        return child.proc.pid if child.running() else None

    def exited(self) -> dict[str, int]:
        """{service: exit code} for every started service whose process has ended."""
        return {name: c.proc.returncode for name, c in self._children.items()
                if c.proc is not None and c.proc.poll() is not None}

    def serving(self, service: str, timeout_s: float = 1.0) -> bool:
        """Whether the service answers SERVING on the gRPC health service (no token needed)."""
        return health_check(self.address(service), "", timeout_s)[0]

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> LocalCluster:
        """SeaweedFS and its bucket, then every service at once; returns when all answer SERVING. Any
        failure (or Ctrl-C) stops whatever already started."""
        if self._seaweed is not None:
            return self
        try:
            self._prepare()
            self._start_seaweed()
            for s in self._selected:
                self._spawn(self._children[s.name])
            self._wait_serving(self.services)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM every service, SIGKILL what is left after the grace period, then stop SeaweedFS (last, so
        a service can still write while it shuts down). Safe to call twice.

        The coordinator's clients (reasoning-data workers) go first, while it still answers: a worker whose
        lease call meets a stopped coordinator retries it for a minute before it notices the SIGTERM."""
        started = [c for c in self._children.values() if c.proc is not None]
        self._terminate([c for c in started if c.service.name in topology.COORDINATOR_CLIENTS])
        self._terminate([c for c in started if c.service.name not in topology.COORDINATOR_CLIENTS])
        seaweed, self._seaweed = self._seaweed, None
        if seaweed is not None:
            seaweed.stop()

    def kill(self, service: str, sig: int = signal.SIGKILL, *, wait: bool = True) -> None:
        """Send `sig` to the service's process group; with `wait`, until the process has exited (pass
        wait=False for a signal that does not end it, e.g. SIGSTOP)."""
        child = self._child(service)
        if not child.running():
            raise LocalClusterError(f"{service} is not running")
        os.killpg(child.proc.pid, sig)
        if wait:
            child.proc.wait(timeout=self.stop_grace_s + 10)

    def restart(self, service: str) -> int:
        """Stop the service if it runs, start it again (same command, port and environment) and wait until
        it answers SERVING; returns its new pid."""
        child = self._child(service)
        self._terminate([child])
        self._spawn(child)
        self._wait_serving([service])
        return child.proc.pid

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------------------------
    def _child(self, service: str) -> _Child:
        try:
            return self._children[service]
        except KeyError:
            raise InvalidSpecError(f"unknown service {service!r}; known: {list(self._children)}",
                                   field="service") from None

    def _prepare(self) -> None:
        if find_weed() is None:
            raise FailedPreconditionError(f"SeaweedFS is the local S3 store: {SKIP_REASON}, "
                                          f"or run scripts/install.sh --dev")
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.log_dir.mkdir(exist_ok=True)
        if self._fixed_ports:
            for s in self._selected:
                port = self._children[s.name].port
                if _port_in_use(port):
                    raise FailedPreconditionError(f"port {port} for {s.name} is in use (another up-local?); "
                                                  f"stop it or pick other ports with --base-port")
        if self._token is None and self.token_path.is_file():
            self._token = self.token_path.read_text().strip()   # a reused DIR keeps its token
            if len(self._token) < _MIN_TOKEN:
                raise InvalidSpecError(f"holds a token shorter than {_MIN_TOKEN} characters; delete it to get a "
                                       f"new one", field=str(self.token_path))
        self._token = self._token or secrets.token_urlsafe(32)
        _write_secret(self.token_path, self._token + "\n")
        creds = self.dir / "s3-credentials.json"
        if creds.is_file():
            self._s3 = json.loads(creds.read_text())            # the data in DIR/s3 was written with these
        else:
            self._s3 = {"access_key": f"agentforge-{secrets.token_hex(6)}", "secret_key": secrets.token_urlsafe(32)}
            _write_secret(creds, json.dumps(self._s3) + "\n")

    def _start_seaweed(self) -> None:
        ours = {c.port for c in self._children.values()}
        for _ in range(10):   # its ports are picked when it is built; keep ours out of them
            seaweed = SeaweedServer(self.dir / "s3", access_key=self._s3["access_key"],
                                    secret_key=self._s3["secret_key"], log_dir=self.log_dir / "seaweedfs")
            if not ours & {p + d for p in seaweed.ports.values() for d in (0, 10000)}:
                break
        self._seaweed = seaweed.start()
        client = seaweed.client()
        if not client.bucket_exists(topology.BUCKET):
            client.make_bucket(topology.BUCKET)
        lines = [f"export {k}={shlex.quote(v)}" for k, v in self.env_for_client().items()]
        _write_secret(self.env_path, "# agentforge up-local: `source` this file to use the cluster (it holds "
                                     "the token and S3 secret)\n" + "\n".join(lines) + "\n")
        log.info("SeaweedFS S3 at %s, bucket %s", seaweed.endpoint, topology.BUCKET)

    def _rebase(self, value: str) -> str:
        """A container path (topology) as its place on this machine."""
        for container, local in ((topology.KERNEL_DIR, self.cache_dir / "kernels"),
                                 (topology.CACHE_DIR, self.cache_dir), (topology.STATE_DIR, self.dir / "state")):
            if value == container or value.startswith(container + "/"):
                return str(local) + value[len(container):]
        return value

    def child_env(self, service: str) -> dict[str, str]:
        """The deployment's variables for `service` (names as in compose and k8s), with local values; an
        optional secret (topology.OPTIONAL_SECRET_ENV) comes from this process's environment, as compose's does."""
        child = self._child(service)
        deployed = {**topology.common_env(), **topology.service_env(child.service, self.address)}
        env = {name: self._rebase(value) for name, value in deployed.items()}
        env.update(AGENTFORGE_HOST=HOST, AGENTFORGE_PORT=str(child.port), AGENTFORGE_S3_ENDPOINT=self.s3_endpoint,
                   AGENTFORGE_TOKEN=self.token, AWS_ACCESS_KEY_ID=self._s3["access_key"],
                   AWS_SECRET_ACCESS_KEY=self._s3["secret_key"])
        env.update({name: os.environ.get(name, "") for name in topology.OPTIONAL_SECRET_ENV.get(service, ())})
        env.update(LOCAL_ONLY_ENV)
        env.update(self._extra_env.get(service, {}))
        return env

    def _spawn(self, child: _Child) -> None:
        name = child.service.name
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(_SCRUBBED_PREFIXES) and k not in _OPTIONAL_SECRETS}   # only who needs it
        env.update(self.child_env(name))
        for key, value in topology.common_env().items():
            if value.startswith(topology.CACHE_DIR + "/"):
                Path(env[key]).mkdir(parents=True, exist_ok=True)   # TMPDIR must exist before Python starts
        # the exact container command; PATH finds the venv's `agentforge` first
        env["PATH"] = f"{agentforge_bin_dir()}{os.pathsep}{env.get('PATH', os.defpath)}"
        with open(child.log_path, "ab") as out:
            out.write(f"==== {' '.join(child.service.command)} at {time.strftime('%Y-%m-%d %H:%M:%S')} "
                      f"on {self.address(name)}\n".encode())
            out.flush()
            # its own session: a Ctrl-C in the terminal reaches up-local, which stops the services in order
            child.proc = subprocess.Popen(child.service.command, env=env, cwd=self.dir, stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        log.info("started %s (pid %d) on %s, log %s", name, child.proc.pid, self.address(name), child.log_path)

    def _wait_serving(self, names: Sequence[str]) -> None:
        pending = list(names)
        deadline = time.monotonic() + self.ready_timeout_s
        while pending:
            for name in list(pending):
                child = self._children[name]
                if child.proc.poll() is not None:
                    raise LocalClusterError(f"{name} exited with code {child.proc.returncode} while starting; "
                                            f"its log: {child.log_path}\n{child.log_tail()}")
                # a fresh channel per probe (health_check): a channel that failed to connect backs off
                if self.serving(name, timeout_s=0.5):
                    pending.remove(name)
            if pending and time.monotonic() > deadline:
                logs = ", ".join(str(self._children[n].log_path) for n in pending)
                raise LocalClusterError(f"{', '.join(pending)} not SERVING after {self.ready_timeout_s:.0f} s; "
                                        f"logs: {logs}")
            if pending:
                time.sleep(0.2)

    def _terminate(self, children: Sequence[_Child]) -> None:
        live = [c for c in children if c.running()]
        for c in live:
            try:
                os.killpg(c.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.stop_grace_s
        for c in live:
            try:
                c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s of SIGTERM; killing it", c.service.name,
                            self.stop_grace_s)
                try:
                    os.killpg(c.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                c.proc.wait(timeout=10)
