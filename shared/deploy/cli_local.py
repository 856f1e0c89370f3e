"""`agentforge up-local`: the local-process mode (shared/deploy/local.py) in the foreground.

  agentforge up-local [--dir DIR] [--base-port P] [--token-file F] [--cache-dir C]

Starts SeaweedFS and every service, prints where the coordinator is and how to use it, then waits; Ctrl-C
(SIGINT) or SIGTERM stops every service and SeaweedFS. Secrets are written 0600 under DIR, never printed.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from pathlib import Path

from shared.errors import ConfigError

DEFAULT_DIR = ".agentforge/local"


def _read_token(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the token file: {exc.strerror}", source=path) from None


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def print_usage(cluster) -> None:
    d = shlex.quote(str(cluster.dir))
    print(f"Agent Forge local cluster in {cluster.dir} (auth on; S3 on SeaweedFS at {cluster.s3_endpoint})")
    for name in cluster.services:
        print(f"  {name:<15} {cluster.address(name):<16} pid {str(cluster.pid(name)):<8} log {cluster.log_path(name)}")
    coordinator = cluster.address("coordinator")
    print("From another shell:")
    print(f"  source {shlex.quote(str(cluster.env_path))}    # coordinator address, token and S3 settings "
          f"(keep it private)")
    print("  agentforge runs create --profile tiny")
    print(f"or: AGENTFORGE_COORDINATOR_ADDR={coordinator} AGENTFORGE_TOKEN=$(cat {d}/token) agentforge runs list")
    print("Ctrl-C stops every service and SeaweedFS.", flush=True)


def cmd_up_local(args) -> int:
    from shared.deploy.local import LocalCluster

    token = _read_token(args.token_file) if args.token_file else None
    cluster = LocalCluster(args.dir, base_port=args.base_port or None, token=token, cache_dir=args.cache_dir)
    wake, stopping = threading.Event(), threading.Event()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)}
    # while starting, a signal interrupts start(), which stops what it already started
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        cluster.start()
        print_usage(cluster)

        def request_stop(signum, frame):
            stopping.set()
            wake.set()

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGCHLD, lambda *_: wake.set())   # a service ended: report it
        reported: set[str] = set()
        while not stopping.is_set():
            wake.wait(timeout=5.0)
            wake.clear()
            for name, code in cluster.exited().items():
                if name not in reported:
                    reported.add(name)
                    print(f"error: {name} exited with code {code}; its log: {cluster.log_path(name)}",
                          file=sys.stderr, flush=True)
        print("stopping every service and SeaweedFS", flush=True)
        cluster.stop()
        print("stopped", flush=True)
        return 0
    except KeyboardInterrupt:
        print("error: interrupted while starting", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not cut the shutdown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


def add_up_local_parser(sub) -> None:
    p = sub.add_parser("up-local", help="run every service as a local process, SeaweedFS as S3, auth on "
                                        "(the distributed shape without Docker)")
    p.add_argument("--dir", default=DEFAULT_DIR,
                   help=f"state, secrets (0600), logs and caches (default {DEFAULT_DIR}); reusing it keeps runs, "
                        "artifacts and the token")
    p.add_argument("--base-port", type=int, default=50050,
                   help="the coordinator's port; the other services take the next six (default 50050, where "
                        "`agentforge runs` looks; 0 picks free ports)")
    p.add_argument("--token-file", default=None, help="use the bearer token in this file (default: DIR/token, "
                                                      "generated on first use)")
    p.add_argument("--cache-dir", default=None, help="torch extensions, HF, W&B, tmp (default DIR/cache); share "
                                                     "one across DIRs to build the BitNet kernel once")
    p.set_defaults(func=cmd_up_local)
