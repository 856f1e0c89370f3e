"""A whole coordinator + six phase services on loopback gRPC, with fake phase cores, for contract tests.

Each fake phase core writes one artifact named "<phase>_out", reports metrics that pass (or, when told,
fail or omit) the ci profile's gates, checkpoints every step so it can resume, and records what it saw
(inputs, fencing token, start/stop times) so tests can check order, serialization and lineage.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field

import grpc
import torch

from agentforge.v1 import coordinator_pb2, coordinator_pb2_grpc
from services.coordinator.core.engine import Coordinator
from services.coordinator.core.state import StateStore
from services.coordinator.remote import GrpcExecutor
from services.coordinator.servicer import CoordinatorServicer
from shared.config import load_profile
from shared.rpc.auth import with_token
from shared.rpc.serve import start_phase_server
from shared.rpc.server import ServiceBinding, build_server
from shared.runtime import JobResult
from shared.runtime.phase import discover_phases
from shared.storage import LocalStore

TOKEN = "cluster-test-token-0123456789"
CI = load_profile("ci")


def passing_metrics(phase: str) -> dict[str, float]:
    out = {}
    for gate in getattr(CI.gates, phase):
        delta = 1.0 if gate.op in (">=", ">") else -1.0
        out[gate.metric] = gate.threshold + delta
    return out


@dataclass
class Behaviour:
    steps: int = 2
    step_delay: float = 0.0
    hold: threading.Event | None = None     # when given, the job waits at step 1 until it is set
    metrics: dict[str, float] | None = None  # None -> passing metrics for the phase's ci gates
    pause_after: int = 0                      # when > 0, the job waits after this step until `pause` is set
    pause: threading.Event = field(default_factory=threading.Event)
    paused: threading.Event = field(default_factory=threading.Event)
    calls: list[dict] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    step_metrics: bool = False                # each step's progress carries {"<phase>/fake_step": step}
    linger: threading.Event | None = None     # when given, a cancelled job goes on (a long GPU step) until it is set
    lingering: threading.Event = field(default_factory=threading.Event)
    error: str = ""                           # when set, the job fails with this message after its steps


class FakePhaseRunner:
    def __init__(self, phase: str, behaviour: Behaviour):
        self.phase = phase
        self.b = behaviour

    def validate(self, spec):
        return []

    def run(self, ctx):
        record = {"request_id": ctx.request.request_id, "token": ctx.request.fencing_token,
                  "inputs": sorted(r.name for r in ctx.request.inputs), "start": time.monotonic()}
        self.b.calls.append(record)
        self.b.started.set()
        first = 1
        ckpt = ctx.latest_checkpoint()
        if ckpt is not None:
            first = ckpt.step + 1
            ctx.resumed_from_step = ckpt.step
        for step in range(first, self.b.steps + 1):
            if self.b.hold is not None:
                while not self.b.hold.wait(0.01):
                    self._check_cancelled(ctx, record)
            time.sleep(self.b.step_delay)
            ctx.progress("work", fraction=step / self.b.steps, step=step, total_steps=self.b.steps,
                         metrics={f"{self.phase}/fake_step": float(step)} if self.b.step_metrics else None)
            ctx.save_checkpoint(step, tensors={"state": {"x": torch.full((2,), float(step))}}, state={})
            if step == self.b.pause_after:
                self.b.paused.set()
                while not self.b.pause.wait(0.01):
                    self._check_cancelled(ctx, record)
        if self.b.error:
            raise RuntimeError(self.b.error)
        with ctx.open_artifact(f"{self.phase}_out", kind="other", parents=ctx.request.inputs) as w:
            w.add_json("out.json", {"phase": self.phase, "inputs": record["inputs"]})
        record["end"] = time.monotonic()
        metrics = passing_metrics(self.phase) if self.b.metrics is None else dict(self.b.metrics)
        return JobResult(artifacts=(w.ref,), metrics=metrics)

    def _check_cancelled(self, ctx, record: dict) -> None:
        """Stop when cancelled, after `linger` is set if the behaviour has one; record when it stopped."""
        if not ctx.cancelled:
            return
        if self.b.linger is not None:
            self.b.lingering.set()
            self.b.linger.wait()
        record["stopped"] = time.monotonic()
        ctx.check_cancelled()


class Cluster:
    """Phase services + coordinator, all in process on loopback gRPC."""

    def __init__(self, tmp_path, *, accelerators: int = 1, lease_ttl_s: float = 30.0, unit_ttl_s: float = 30.0,
                 poll_s: float = 0.02):
        self.tmp = tmp_path
        self.store = LocalStore(tmp_path / "store")
        self.defs = discover_phases()
        self.behaviour = {name: Behaviour() for name in self.defs}
        self.workers: dict[str, tuple] = {}
        self.channels: dict[str, grpc.Channel] = {}
        for name in self.defs:
            self.start_worker(name)
        self.accelerators, self.lease_ttl_s, self.unit_ttl_s, self.poll_s = accelerators, lease_ttl_s, unit_ttl_s, poll_s
        self.coordinator = None
        self.start_coordinator()

    # -- workers --
    def start_worker(self, name: str) -> None:
        d = dataclasses.replace(self.defs[name], runner_factory=lambda n=name: FakePhaseRunner(n, self.behaviour[n]))
        port = self.workers[name][0].port if name in self.workers else 0
        server, registry = start_phase_server(d, port=port, store_uri=str(self.tmp / "store"),
                                              env={"AGENTFORGE_TOKEN": TOKEN})
        self.workers[name] = (server, registry)
        if name not in self.channels:
            self.channels[name] = with_token(grpc.insecure_channel(server.address), TOKEN)

    def kill_worker(self, name: str) -> None:
        """Like kill -9 for the test's purposes: the server goes away and its jobs are abandoned."""
        server, registry = self.workers[name]
        registry.shutdown(cancel_running=True, wait=False)
        server.server.stop(None)

    # -- coordinator --
    def start_coordinator(self) -> None:
        executors = {n: GrpcExecutor(d, self.channels[n], timeout_s=5) for n, d in self.defs.items()}
        self.state = StateStore(self.tmp / "coordinator.sqlite")
        self.coordinator = Coordinator(self.state, self.store, self.defs, executors,
                                       accelerators=self.accelerators, lease_ttl_s=self.lease_ttl_s,
                                       unit_ttl_s=self.unit_ttl_s)
        binding = ServiceBinding(coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server,
                                 CoordinatorServicer(self.coordinator), "agentforge.v1.CoordinatorService")
        self.server = build_server([binding], token=TOKEN)
        self.stub = coordinator_pb2_grpc.CoordinatorServiceStub(
            with_token(grpc.insecure_channel(self.server.address), TOKEN))
        self.coordinator.start(self.poll_s)

    def kill_coordinator(self) -> None:
        self.coordinator.stop()
        self.server.server.stop(None)
        self.state.close()

    # -- helpers --
    def create(self, profile: str = "ci", **kw) -> str:
        return self.stub.CreateRun(coordinator_pb2.CreateRunRequest(profile=profile, **kw), timeout=10).run_id

    def run(self, run_id: str):
        return self.stub.GetRun(coordinator_pb2.RunRef(run_id=run_id), timeout=10)

    def phase(self, run_id: str, phase: str):
        return next(p for p in self.run(run_id).phases if p.phase == phase)

    def wait(self, predicate, timeout: float = 30.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")

    def wait_run(self, run_id: str, states=("succeeded",), timeout: float = 30.0):
        return self.wait(lambda: (r := self.run(run_id)).state in states and r, timeout,
                         f"run {run_id} to be {states}")

    def close(self) -> None:
        try:
            self.kill_coordinator()
        except Exception:  # noqa: BLE001 - already stopped by the test
            pass
        for server, registry in self.workers.values():
            registry.shutdown(cancel_running=True, wait=False)
            server.server.stop(None)
