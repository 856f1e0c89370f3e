"""Phase 3a job: plan work units, work them (here and on any replica), merge them into one artifact.

A unit is (a slice of source problems × one strategy). The job plans every unit with the coordinator (or
a process-local pool when the job belongs to no run), then leases and works units like any other worker
until none is left; replicas of this service lease the same units through the coordinator
(`UnitWorker`, started by `agentforge serve reasoning-data` in services mode). A worker writes a unit's
output under a key of its own lease (…/units/<unit>/u<token>) and completes the unit with that ref; the
pool accepts the completion only from the unit's live lease, so a crashed or stale worker's output is
never merged and a redone unit is counted once. Planning is idempotent (same unit ids and payloads), so a
restarted job finds finished units done and neither redoes them nor spends their cost again.

The merge re-checks every example (format + structural validator), drops exact duplicates and bounds
near-duplicates across the strategies of one problem, splits train/val by source problem, and writes
shards plus one merged file in the checklist's format.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from collections.abc import Iterable
from typing import Any

from shared.canonical import dumps_canonical
from shared.config.schema import ReasoningDataConfig
from shared.data.prepared import verify_prepared
from shared.data.records import Record
from shared.data.special_tokens import SPECIAL_TOKENS, STRATEGIES
from shared.errors import (
    CancelledError,
    FailedPreconditionError,
    InvalidSpecError,
    NotFoundError,
    StaleLeaseError,
)
from shared.runtime import JobResult
from shared.runtime.units import LeasedUnit, UnitService, local_unit_service
from shared.storage import ArtifactRef, ArtifactStore
from shared.storage.keys import staging_key

from services.reasoning_data.core.format import Example, check_example
from services.reasoning_data.core.strategies import is_subquestion

log = logging.getLogger(__name__)

PHASE = "reasoning_data"
FORMAT = "agentforge.reasoning_data/v1"
MERGED_FILE = "reasoning_data.json"


# == which problems, which units ================================================================================

def select_items(records: Iterable[Record], spec: ReasoningDataConfig) -> list[Record]:
    """Every candidate problem of the spec's sources among `records` (the train records the worker cache
    read: never a test split), interleaved round-robin across sources, each source in a seeded order. The
    job takes slices from the front."""
    per_source: dict[str, list[Record]] = {}
    for r in records:
        if r.dataset in spec.sources:
            per_source.setdefault(r.dataset, []).append(r)
    for recs in per_source.values():
        recs.sort(key=lambda r: hashlib.sha256(f"order\x00{spec.seed}\x00{r.id}".encode()).digest())
    queues = [per_source[n] for n in spec.sources if per_source.get(n)]
    out: list[Record] = []
    for i in range(max((len(q) for q in queues), default=0)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


def plan_units(items: list[Record], spec: ReasoningDataConfig, *, datasets_ref: ArtifactRef,
               output_prefix: str, slices: range) -> list[tuple[str, dict]]:
    """(unit_id, payload) for each slice in `slices` × strategy. Payloads are plain JSON strings and string
    lists, so they cross the coordinator's Struct unchanged and re-planning compares equal."""
    spec_json = dumps_canonical(spec.model_dump(mode="json"))
    ref_json = dumps_canonical(datasets_ref.to_dict())
    units = []
    n = spec.items_per_unit
    for s in slices:
        ids = [r.id for r in items[s * n:(s + 1) * n]]
        if not ids:
            break
        for strategy in spec.strategies:
            units.append((f"s{s:04d}-{strategy}", {"items": ids, "strategy": strategy, "spec": spec_json,
                                                    "datasets": ref_json, "output_prefix": output_prefix}))
    return units


# == the data a worker needs ===================================================================================

class _DatasetCache:
    """Each worker process fetches (and verifies) a datasets artifact once and keeps only its parsed train
    records of the offline sources; the fetched files are deleted at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Record]] = {}

    def records(self, store: ArtifactStore, ref: ArtifactRef) -> dict[str, Record]:
        """id -> train record of every offline source in the artifact."""
        from services.reasoning_data.core.offline import SOURCES, source_items

        with self._lock:
            if ref.sha256 not in self._records:
                with tempfile.TemporaryDirectory(prefix="agentforge-reasoning-data-") as tmp:
                    root = store.fetch(ref, tmp)
                    data_dir = root / "data" if (root / "data").is_dir() else root
                    verify_prepared(data_dir, required=[])
                    self._records[ref.sha256] = {r.id: r for r in source_items(data_dir, SOURCES)}
            return self._records[ref.sha256]


_CACHE = _DatasetCache()


# == backends =================================================================================================

def make_backend(spec: ReasoningDataConfig, budget, env=os.environ):
    """The backend the spec names, with its uniform `run(records, strategy) -> (examples, rejections, usage)`."""
    if spec.backend == "offline":
        from services.reasoning_data.core.offline import OfflineBackend

        backend = OfflineBackend()

        def run(records, strategy):
            examples, rejected = backend.generate(records, strategy, seed=spec.seed)
            return examples, Counter(rejected), {}
        return run
    if spec.backend == "openai":
        from services.reasoning_data.core.budget import Price
        from services.reasoning_data.core.http_backend import OpenAICompatibleBackend

        price = next(p for p in spec.prices if p.model == spec.model)
        backend = OpenAICompatibleBackend(
            spec.api_base, spec.model, price=Price(price.input_per_mtok, price.output_per_mtok), budget=budget,
            concurrency=spec.concurrency, api_key_env=spec.api_key_env, timeout_s=spec.request_timeout_s,
            max_retries=spec.max_retries, max_tokens=spec.max_completion_tokens, env=env)
    else:
        from services.reasoning_data.core.local_backend import LocalHFBackend

        backend = LocalHFBackend(spec.model, max_new_tokens=spec.max_completion_tokens)

    def run_teacher(records, strategy):
        res = backend.generate(records, strategy)
        usage = {"calls": res.calls, "retries": res.retries, "billed_usd": res.billed_usd,
                 "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                 "refused_by_budget": res.refused_by_budget}
        return list(res.examples), Counter(res.rejections), usage
    return run_teacher


# == working one unit ===========================================================================================

def _heartbeats(service: UnitService, unit: LeasedUnit, every_s: float, lost: threading.Event,
                done: threading.Event) -> threading.Thread:
    def beat():
        while not done.wait(every_s):
            try:
                service.heartbeat(unit)
            except StaleLeaseError:
                lost.set()
                return
            except Exception:  # the coordinator is briefly unreachable: the lease may survive; keep trying
                log.warning("heartbeat of unit %s failed; retrying", unit.unit_id, exc_info=True)
    t = threading.Thread(target=beat, name=f"heartbeat-{unit.unit_id}", daemon=True)
    t.start()
    return t


def work_unit(store: ArtifactStore, service: UnitService, unit: LeasedUnit, *, worker: str,
              heartbeat_s: float = 10.0, cancel_event: threading.Event | None = None,
              env=os.environ) -> bool:
    """Do one leased unit: generate, write the output under this lease's key, complete. Returns whether the
    pool took the completion (False: the lease was lost meanwhile and another worker owns the unit)."""
    p = unit.payload
    spec = ReasoningDataConfig.model_validate(json.loads(p["spec"]))
    ref = ArtifactRef.from_dict(json.loads(p["datasets"]))
    by_id = _CACHE.records(store, ref)
    missing = [i for i in p["items"] if i not in by_id]
    if missing:
        raise NotFoundError(f"unit {unit.unit_id}: {len(missing)} source items are not in the datasets "
                            f"artifact (first: {missing[0]})")
    records = [by_id[i] for i in p["items"]]
    lost, done = threading.Event(), threading.Event()
    beat = _heartbeats(service, unit, heartbeat_s, lost, done)
    t0 = time.monotonic()
    try:
        budget = service.budget(unit.run_id, PHASE, spec.cost_limit_usd) if spec.backend == "openai" else None
        examples, rejected, usage = make_backend(spec, budget, env)(records, p["strategy"])
    finally:
        done.set()
        beat.join()
    if cancel_event is not None and cancel_event.is_set():
        raise CancelledError(f"unit {unit.unit_id} cancelled")
    if lost.is_set():
        log.warning("unit %s: lease lost while working; its output is discarded", unit.unit_id)
        return False
    key = f"{p['output_prefix']}/units/{unit.unit_id}/u{unit.token}"
    if store.exists(f"{key}/manifest.json"):
        store.delete_artifact(key)
    report = {"unit_id": unit.unit_id, "strategy": p["strategy"], "items": len(records), "worker": worker,
              "examples": len(examples), "short_questions": sum(is_subquestion(e.id) for e in examples),
              "rejected": dict(rejected), "usage": usage,
              "seconds": time.monotonic() - t0}
    with store.open_artifact(key, kind="dataset", name=unit.unit_id, config={"unit": unit.unit_id},
                             producer={"run_id": unit.run_id, "phase": PHASE, "job_id": worker,
                                       "request_id": unit.unit_id, "fencing_token": unit.token},
                             parents=[ref], retention="intermediate") as w:
        w.add_json("examples.json", [e.to_dict() for e in examples])
        w.add_json("report.json", report)
    try:
        return service.complete(unit, w.ref.to_dict())
    except StaleLeaseError:
        log.warning("unit %s: completion refused (lease no longer current); output discarded", unit.unit_id)
        return False


class UnitWorker:
    """Leases and works units of this phase until stopped. `run_id` "" = any running run (a replica)."""

    def __init__(self, store: ArtifactStore, service: UnitService, *, run_id: str = "", name: str | None = None,
                 idle_s: float = 1.0, heartbeat_s: float = 10.0, env=os.environ):
        self.store, self.service, self.run_id, self.env = store, service, run_id, env
        self.name = name or f"reasoning-data-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.idle_s, self.heartbeat_s = idle_s, heartbeat_s
        self.stop_event = threading.Event()
        self.completed = 0
        self._thread: threading.Thread | None = None

    def step(self) -> bool:
        """Lease and work one unit; False when there was none."""
        unit = self.service.lease(self.run_id, PHASE, self.name)
        if unit is None:
            return False
        if work_unit(self.store, self.service, unit, worker=self.name, heartbeat_s=self.heartbeat_s,
                     cancel_event=self.stop_event, env=self.env):
            self.completed += 1
        return True

    def loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                if not self.step():
                    self.stop_event.wait(self.idle_s)
            except CancelledError:
                return
            except Exception:
                log.exception("reasoning-data worker %s: a unit failed; it will be leased again", self.name)
                self.stop_event.wait(self.idle_s)

    def start(self) -> "UnitWorker":
        self._thread = threading.Thread(target=self.loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def background_worker(store: ArtifactStore, env=os.environ) -> UnitWorker | None:
    """What `agentforge serve reasoning-data` starts beside the job server in services mode: a replica's
    worker that leases units of any run from the coordinator. None without a coordinator address."""
    from shared.rpc.unit_client import ADDRESS_ENV, GrpcUnitService

    if not env.get(ADDRESS_ENV):
        return None
    return UnitWorker(store, GrpcUnitService.from_env(env)).start()


# == merging ====================================================================================================

def _trigrams(text: str) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i:i + 3]) for i in range(max(1, len(words) - 2))}


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _structure_problem(ex: Example) -> str | None:
    if not ex.structure:
        return None
    from services.reasoning_data.core.strategies import validate_structure

    return validate_structure(ex)


def merge(examples: list[Example], spec: ReasoningDataConfig) -> tuple[list[Example], Counter, dict[str, Any]]:
    """Re-check, dedup, bound near-duplicates per question (a source problem's prompt: every strategy variant
    of one problem shares it; a step's short question (offline.subquestion) has its own); returns (kept,
    rejections, figures)."""
    rejected: Counter = Counter()
    checked = valid = 0
    kept: list[Example] = []
    seen_ids: set[str] = set()
    seen_content: set[tuple[str, str]] = set()
    shingles: dict[tuple[str, str], list[set]] = {}
    for ex in sorted(examples, key=lambda e: e.id):
        checked += 1
        reason = check_example(ex) or _structure_problem(ex)
        if reason:
            rejected[f"merge_{reason}"] += 1
            continue
        valid += 1
        content = (ex.prompt.strip(), ex.reasoning.strip())
        if ex.id in seen_ids or content in seen_content:
            rejected["duplicate"] += 1
            continue
        grams = _trigrams(ex.reasoning)
        others = shingles.setdefault((ex.source_id, ex.prompt.strip()), [])
        if any(_jaccard(grams, g) > spec.near_duplicate_threshold for g in others):
            rejected["near_duplicate"] += 1
            continue
        others.append(grams)
        seen_ids.add(ex.id)
        seen_content.add(content)
        kept.append(ex)
    return kept, rejected, {"checked": checked, "valid": valid}


def split_of(source_id: str, spec: ReasoningDataConfig) -> str:
    """By source problem (every strategy variant of one problem on the same side), seeded."""
    # salted apart from select_items' order, which takes the smallest hashes of another key first
    h = int.from_bytes(hashlib.sha256(f"split\x00{spec.seed}\x00{source_id}".encode()).digest()[:8], "big") / 2**64
    return "val" if h < spec.val_fraction else "train"


def build_metrics(kept: list[Example], rejected: Counter, figures: dict, spec: ReasoningDataConfig,
                  usage: Counter, units: list) -> dict[str, float]:
    by_strategy = Counter(e.strategy for e in kept)
    with_gold = [e for e in kept if e.gold]
    math_set = [e for e in kept if e.source in ("GSM8K", "SVAMP", "ASDiv")]
    m: dict[str, float] = {
        "reasoning_data/total_examples": float(len(kept)),
        "reasoning_data/valid_fraction": figures["valid"] / figures["checked"] if figures["checked"] else 0.0,
        "reasoning_data/strategies_covered": float(sum(1 for s in STRATEGIES if by_strategy[s] > 0)),
        "reasoning_data/train_examples": float(sum(1 for e in kept if split_of(e.source_id, spec) == "train")),
        "reasoning_data/val_examples": float(sum(1 for e in kept if split_of(e.source_id, spec) == "val")),
        "reasoning_data/source_items": float(len({e.source_id for e in kept})),
        "reasoning_data/units": float(len(units)),
        "reasoning_data/units_redone": float(sum(1 for u in units if u.attempts > 1)),
        "reasoning_data/rejected_total": float(sum(rejected.values())),
    }
    if with_gold:
        m["reasoning_data/answer_verification_rate"] = sum(e.verified for e in with_gold) / len(with_gold)
    if math_set:
        m["reasoning_data/math_verification_rate"] = sum(e.verified for e in math_set) / len(math_set)
    if kept:
        shares = [by_strategy[s] / len(kept) for s in spec.strategies]
        m["reasoning_data/strategy_balance"] = min(shares) / max(shares) if max(shares) else 0.0
    for s in spec.strategies:
        m[f"reasoning_data/strategy/{s}"] = float(by_strategy[s])
    for reason, n in sorted(rejected.items()):
        m[f"reasoning_data/rejected/{reason}"] = float(n)
    for k in ("calls", "retries", "billed_usd", "prompt_tokens", "completion_tokens", "refused_by_budget"):
        if k in usage:
            m[f"reasoning_data/{k}"] = float(usage[k])
    return m


# == the runner ===============================================================================================

def unit_service_for(run_id: str, env=os.environ) -> UnitService:
    """The coordinator's pool for a job of a run (over gRPC in services mode, in process when embedded);
    a process-local pool for a job of no run."""
    from services.coordinator.core.unit_service import memory_unit_service
    from shared.rpc.unit_client import ADDRESS_ENV, GrpcUnitService

    if run_id:
        if env.get(ADDRESS_ENV):
            return GrpcUnitService.from_env(env)
        local = local_unit_service()
        if local is not None:
            return local
    return memory_unit_service()


class ReasoningDataRunner:
    def __init__(self, service: UnitService | None = None, *, poll_s: float = 0.5, heartbeat_s: float = 10.0,
                 env=os.environ):
        self._service = service
        self.poll_s, self.heartbeat_s, self.env = poll_s, heartbeat_s, env
        self._reports: dict[tuple[str, str], dict] = {}

    def validate(self, spec: ReasoningDataConfig) -> list[str]:
        unknown = [s for s in spec.strategies if s not in STRATEGIES]
        if unknown:
            raise InvalidSpecError(f"unknown strategies {unknown}; known: {', '.join(STRATEGIES)}", field="strategies")
        if spec.backend == "openai" and not self.env.get(spec.api_key_env):
            raise InvalidSpecError(f"backend openai reads its API key from ${spec.api_key_env}, which is not set; "
                                   f"export it (or name another variable in api_key_env)", field="api_key_env")
        if spec.backend == "local" and not Path(spec.model).is_dir():
            raise InvalidSpecError(f"backend local needs a Hugging Face model folder; {spec.model!r} is not one",
                                   field="model")
        return []

    def run(self, ctx) -> JobResult:
        spec: ReasoningDataConfig = ctx.spec
        self.validate(spec)
        req = ctx.request
        run_id = req.run_id or f"job-{req.request_id}"
        service = self._service or unit_service_for(req.run_id, self.env)
        datasets_ref = req.input("datasets")
        ctx.progress("selecting problems", fraction=0.01)
        items = select_items(_CACHE.records(ctx.store, datasets_ref).values(), spec)
        if not items:
            raise FailedPreconditionError(f"the datasets artifact has no train records of {spec.sources}")
        prefix = staging_key(f"reasoning-data-{run_id}", 0, "work")
        n_slices = math.ceil(len(items) / spec.items_per_unit)
        worker = UnitWorker(ctx.store, service, run_id=run_id, name=f"{ctx.job_id}-worker",
                            heartbeat_s=self.heartbeat_s, env=self.env)
        # Rounds: plan enough slices for the target at the yield seen so far (80% assumed at first), work them
        # all, and plan more only while short of the target and problems remain. Deterministic, so a
        # restarted job plans the same units and finds the finished ones done. The target counts the strategies'
        # examples of source problems; the short questions of their steps (strategies.subquestions) come on top,
        # so they never take a source problem's place.
        want = spec.target_examples * 1.1  # the merge may still drop near-duplicates
        planned, produced = 0, 0
        while True:
            yield_per_slice = produced / planned if planned else 0.8 * spec.items_per_unit * len(spec.strategies)
            more = math.ceil((want - produced) / max(yield_per_slice, 1.0))
            upto = min(n_slices, planned + max(1, more))
            units = plan_units(items, spec, datasets_ref=datasets_ref, output_prefix=prefix,
                               slices=range(planned, upto))
            added = service.plan(run_id, PHASE, units)
            log.info("reasoning_data: slices %d..%d planned (%d units, %d new)", planned, upto - 1, len(units), added)
            planned = upto
            statuses = self._work_until_done(ctx, service, worker, run_id)
            produced = sum(r["examples"] - r.get("short_questions", 0)
                           for r in (self._report(ctx.store, u) for u in statuses))
            if produced >= want or planned >= n_slices:
                break
        return self._publish(ctx, spec, statuses, datasets_ref)

    def _work_until_done(self, ctx, service: UnitService, worker: "UnitWorker", run_id: str) -> list:
        while True:
            ctx.check_cancelled()
            statuses = service.list_units(run_id, PHASE)
            done = sum(1 for u in statuses if u.state == "done")
            ctx.progress("generating", fraction=0.05 + 0.85 * done / max(1, len(statuses)), step=done,
                         total_steps=len(statuses))
            if done == len(statuses):
                return statuses
            if not worker.step():
                time.sleep(self.poll_s)  # the rest are leased by other workers

    def _report(self, store: ArtifactStore, unit) -> dict:
        key = (unit.unit_id, unit.artifact["sha256"])
        if key not in self._reports:
            self._reports[key] = store.load_json(ArtifactRef.from_dict(unit.artifact), "report.json")
        return self._reports[key]

    def _publish(self, ctx, spec: ReasoningDataConfig, statuses, datasets_ref: ArtifactRef) -> JobResult:
        ctx.progress("merging", fraction=0.92)
        examples: list[Example] = []
        rejected: Counter = Counter()
        usage: Counter = Counter()
        for u in statuses:
            ref = ArtifactRef.from_dict(u.artifact)
            examples += [Example.from_dict(d) for d in ctx.store.load_json(ref, "examples.json")]
            report = self._report(ctx.store, u)
            rejected.update(report["rejected"])
            usage.update({k: v for k, v in report["usage"].items() if isinstance(v, int | float)})
        kept, merge_rejected, figures = merge(examples, spec)
        rejected.update(merge_rejected)
        metrics = build_metrics(kept, rejected, figures, spec, usage, statuses)
        by_split = {"train": [], "val": []}
        for e in kept:
            by_split[split_of(e.source_id, spec)].append(e)
        records = [{**e.to_dict(), "split": split_of(e.source_id, spec)} for e in kept]
        metadata = {
            "format": FORMAT, "total_examples": len(kept), "strategies": list(spec.strategies),
            "backend": spec.backend, "model": spec.model, "sources": list(spec.sources), "seed": spec.seed,
            "splits": {s: len(v) for s, v in by_split.items()}, "split_by": "source_id",
            "per_strategy": {s: int(metrics[f"reasoning_data/strategy/{s}"]) for s in spec.strategies},
            "rejections": dict(sorted(rejected.items())), "units": len(statuses),
        }
        shards = []
        with ctx.open_artifact("reasoning_data", kind="dataset", parents=[datasets_ref]) as w:
            w.add_json(MERGED_FILE, {"metadata": metadata, "special_tokens": list(SPECIAL_TOKENS),
                                     "examples": records})
            for split, exs in by_split.items():
                for i in range(0, len(exs), spec.shard_size):
                    name = f"shards/{split}-{i // spec.shard_size:05d}.json"
                    w.add_json(name, [e.to_dict() for e in exs[i:i + spec.shard_size]])
                    shards.append({"file": name, "split": split, "count": len(exs[i:i + spec.shard_size])})
            w.add_json("shards.json", {"format": FORMAT, "shards": shards})
            w.set_metrics(metrics)
        ctx.progress("done", fraction=1.0, metrics=metrics)
        return JobResult(artifacts=(w.ref,), metrics=metrics)


def load_reasoning_data(store: ArtifactStore, ref: ArtifactRef) -> dict[str, Any]:
    """The merged artifact (what Phase 3b reads), after the checklist's validation."""
    data = store.load_json(ref, MERGED_FILE)
    problems = validate_reasoning_data(data)
    if problems:
        raise FailedPreconditionError(f"reasoning data {ref.uri} fails validation: {problems[:3]}")
    return data


def validate_reasoning_data(data: dict[str, Any], target: int | None = None) -> list[str]:
    """The checklist's checks: count ≥ target, 10 strategies, 12 special tokens, every example well formed."""
    problems = []
    meta = data.get("metadata", {})
    exs = data.get("examples", [])
    if meta.get("total_examples") != len(exs):
        problems.append(f"metadata.total_examples {meta.get('total_examples')} != {len(exs)} examples")
    if target is not None and len(exs) < target:
        problems.append(f"{len(exs)} examples < target {target}")
    if len(meta.get("strategies", [])) != 10:
        problems.append(f"metadata.strategies has {len(meta.get('strategies', []))} strategies, expected 10")
    if list(data.get("special_tokens", [])) != list(SPECIAL_TOKENS):
        problems.append("special_tokens are not the 12 Phase-3 tokens")
    for d in exs:
        reason = check_example(Example.from_dict(d))
        if reason:
            problems.append(f"{d.get('id')}: {reason}")
    return problems
