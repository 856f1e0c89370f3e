"""`agentforge runs …`: a client of the coordinator's gRPC API.

  runs create (--profile NAME | --config FILE) [--start-phase P --input URI@SHA256:NAME ...] [--reuse]
  runs watch RUN [--after SEQ]    live view: one line per event, a progress bar for the running phase
  runs status RUN | runs list [--state S]
  runs cancel RUN | runs retry RUN PHASE | runs approve RUN PHASE --who W --why TEXT

The coordinator address comes from --address or AGENTFORGE_COORDINATOR_ADDR; the token from
AGENTFORGE_TOKEN.
"""

from __future__ import annotations

import os
import uuid

import grpc

from shared.errors import AgentForgeError, ConfigError, InvalidSpecError, NotFoundError

DEFAULT_ADDR = "127.0.0.1:50050"


def _stub(args):
    from agentforge.v1 import coordinator_pb2_grpc
    from shared.rpc.auth import token_from_env, with_token
    from shared.rpc.server import channel_options

    addr = args.address or os.environ.get("AGENTFORGE_COORDINATOR_ADDR") or DEFAULT_ADDR
    channel = with_token(grpc.insecure_channel(addr, options=channel_options()), token_from_env())
    return coordinator_pb2_grpc.CoordinatorServiceStub(channel)


def _call(fn, request, **kw):
    try:
        return fn(request, timeout=kw.get("timeout", 30))
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.NOT_FOUND:
            raise NotFoundError(exc.details()) from None
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise InvalidSpecError(exc.details()) from None
        if code == grpc.StatusCode.UNAVAILABLE:
            raise AgentForgeError(f"coordinator unreachable: {exc.details()}") from None
        raise AgentForgeError(f"{code.name.lower()}: {exc.details()}") from None


def _parse_input(text: str):
    from agentforge.v1 import common_pb2

    try:
        uri, rest = text.rsplit("@", 1)
        sha, name = rest.split(":", 1)
    except ValueError:
        raise InvalidSpecError(f"expected URI@SHA256:NAME, got {text!r}", field="--input") from None
    return common_pb2.ArtifactRef(uri=uri, sha256=sha, name=name)


def print_run(run) -> None:
    print(f"run {run.run_id}  {run.state}  profile {run.profile}  config {run.config_hash[:12]}")
    if run.error:
        print(f"  {run.error}")
    for ph in run.phases:
        bar = ""
        if ph.state == "running" and ph.HasField("progress"):
            bar = f"  {ph.progress.fraction:5.1%} {ph.progress.stage}"
        gates = ", ".join(f"{g.metric}={'%.4g' % g.value if g.measured else 'n/a'}{'✓' if g.passed else '✗'}"
                          for g in ph.gates)
        print(f"  {ph.phase:<15} {ph.state:<12} attempt {ph.attempt}{bar}{('  ' + gates) if gates else ''}")
        if ph.error and ph.state != "succeeded":
            print(f"  {'':<15} {ph.error}")


def cmd_create(args) -> int:
    from agentforge.v1 import coordinator_pb2

    req = coordinator_pb2.CreateRunRequest(request_id=args.request_id or uuid.uuid4().hex,
                                           start_phase=args.start_phase or "",
                                           inputs=[_parse_input(t) for t in args.input or []],
                                           reuse_finished_phases=args.reuse)
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as f:
                req.config_yaml = f.read()
        except OSError as exc:
            raise ConfigError(f"cannot read the config file: {exc.strerror}", source=args.config) from None
    else:
        req.profile = args.profile
    run = _call(_stub(args).CreateRun, req)
    print(run.run_id)
    return 0


def cmd_watch(args) -> int:
    from agentforge.v1 import coordinator_pb2
    from shared.telemetry.progress import progress_bar

    stub = _stub(args)
    bar = None
    last_state = ""
    try:
        for ev in stub.WatchRun(coordinator_pb2.WatchRunRequest(run_id=args.run_id, after_seq=args.after)):
            if ev.kind == "metrics":
                continue   # measurements for the run report (agentforge report), not lines to read live
            if ev.kind == "progress":
                if bar is None:
                    bar = progress_bar(total=1000, desc=ev.phase)
                bar.set_description(f"{ev.phase}: {ev.message}"[:60])
                continue
            if bar is not None:
                bar.close()
                bar = None
            print(f"[{ev.seq}] {ev.kind:<15} {ev.phase or '-':<15} {ev.message}")
            if ev.kind == "run_finished":
                last_state = ev.state
            elif ev.kind == "blocked":
                # The stream stays open while a run is blocked, so stop here -- unless this "blocked" is
                # history (the gate was approved or retried since): then keep following the run.
                if _call(stub.GetRun, coordinator_pb2.RunRef(run_id=args.run_id)).state == "blocked":
                    last_state = ev.state
                    break
    except grpc.RpcError as exc:
        raise AgentForgeError(f"watch failed: {exc.details()}") from None
    finally:
        if bar is not None:
            bar.close()
    return 0 if last_state in ("succeeded", "") else 1


def cmd_status(args) -> int:
    from agentforge.v1 import coordinator_pb2

    print_run(_call(_stub(args).GetRun, coordinator_pb2.RunRef(run_id=args.run_id)))
    return 0


def cmd_list(args) -> int:
    from agentforge.v1 import coordinator_pb2

    reply = _call(_stub(args).ListRuns, coordinator_pb2.ListRunsRequest(states=args.state or []))
    for run in reply.runs:
        done = sum(p.state in ("succeeded", "approved", "reused", "skipped") for p in run.phases)
        print(f"{run.run_id}\t{run.state}\t{run.profile}\t{done}/{len(run.phases)} phases")
    return 0


def cmd_cancel(args) -> int:
    from agentforge.v1 import coordinator_pb2

    print_run(_call(_stub(args).CancelRun, coordinator_pb2.RunRef(run_id=args.run_id)))
    return 0


def cmd_retry(args) -> int:
    from agentforge.v1 import coordinator_pb2

    print_run(_call(_stub(args).RetryPhase, coordinator_pb2.PhaseRef(run_id=args.run_id, phase=args.phase)))
    return 0


def cmd_approve(args) -> int:
    from agentforge.v1 import coordinator_pb2

    req = coordinator_pb2.ApproveGateRequest(run_id=args.run_id, phase=args.phase, who=args.who, why=args.why)
    print_run(_call(_stub(args).ApproveGate, req))
    return 0


def add_runs_parser(sub) -> None:
    runs = sub.add_parser("runs", help="create and follow runs on a coordinator")
    runs.add_argument("--address", default=None, help=f"coordinator host:port (default {DEFAULT_ADDR})")
    rs = runs.add_subparsers(dest="runs_command", required=True)
    c = rs.add_parser("create")
    c.add_argument("--profile", default="tiny")
    c.add_argument("--config", default=None)
    c.add_argument("--request-id", default=None)
    c.add_argument("--start-phase", default=None)
    c.add_argument("--input", action="append", help="URI@SHA256:NAME of an input artifact (repeatable)")
    c.add_argument("--reuse", action="store_true", help="reuse finished phases with equal inputs and config")
    c.set_defaults(func=cmd_create)
    w = rs.add_parser("watch")
    w.add_argument("run_id")
    w.add_argument("--after", type=int, default=0)
    w.set_defaults(func=cmd_watch)
    s = rs.add_parser("status")
    s.add_argument("run_id")
    s.set_defaults(func=cmd_status)
    ls = rs.add_parser("list")
    ls.add_argument("--state", action="append")
    ls.set_defaults(func=cmd_list)
    x = rs.add_parser("cancel")
    x.add_argument("run_id")
    x.set_defaults(func=cmd_cancel)
    r = rs.add_parser("retry")
    r.add_argument("run_id")
    r.add_argument("phase")
    r.set_defaults(func=cmd_retry)
    a = rs.add_parser("approve")
    a.add_argument("run_id")
    a.add_argument("phase")
    a.add_argument("--who", required=True)
    a.add_argument("--why", required=True)
    a.set_defaults(func=cmd_approve)
