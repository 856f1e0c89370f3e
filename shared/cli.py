"""The `agentforge` command line.

  agentforge run [--profile tiny | --config FILE]    the whole pipeline, embedded (one process)
  agentforge serve <service> [--host H --port P]      one service over gRPC (what containers run)
  agentforge runs create|watch|status|list|cancel|retry|approve   a coordinator's runs (see cli_runs)
  agentforge health [--address HOST:PORT] [--service NAME]   gRPC health check: exit 0 only when SERVING
  agentforge up-local [--dir DIR] [--base-port P]     every service as a local process, SeaweedFS as S3, auth on
  agentforge report RUN [--state F] [--store U] [--out DIR]   a run's report: HTML + PNG plots from its events
  agentforge reasoning-data --output FILE [--profile P] [--cost-limit USD] [--target N] [--backend B]
                                                      Phase 3a alone (datasets first): the checklist's JSON
  agentforge artifacts ls [PREFIX]                    complete artifacts in the store
  agentforge artifacts verify KEY|URI                 re-hash every file of an artifact
  agentforge artifacts gc --run RUN [--dry-run]       delete a run's intermediates, keep its finals

Errors print one line (the cause) and exit non-zero: 1 for a failure, 2 for bad usage/config, 3 when the
pipeline cannot run because phases are not implemented yet.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from shared.errors import AgentForgeError, ConfigError, InvalidSpecError

log = logging.getLogger("agentforge")

EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3


def _store(args):
    from shared.rpc.serve import DEFAULT_STORE
    from shared.storage.factory import store_from_uri

    return store_from_uri(args.store or os.environ.get("AGENTFORGE_STORE") or DEFAULT_STORE)


# -- run --------------------------------------------------------------------------------------------
def cmd_run(args) -> int:
    from shared.config import config_hash, load_profile
    from shared.runtime.phase import discover_phases

    profile = load_profile(args.config or args.profile)
    phases = discover_phases()
    print(f"profile {profile.name} (config hash {config_hash(profile)[:12]}): {profile.description}")
    width = max(len(p) for p in phases)
    for name, d in phases.items():
        after = ", ".join(d.depends_on) or "-"
        state = "ready" if d.available else f"not available yet (issue #{d.issue})"
        print(f"  {name:<{width}}  after {after:<27} {state}")
    missing = [name for name, d in phases.items() if not d.available]
    if missing:
        print(f"error: cannot run the pipeline: phases not available yet: {', '.join(missing)}",
              file=sys.stderr)
        return EXIT_UNAVAILABLE
    return run_embedded(profile, store=_store(args), state_path=args.state, approve_reason=args.approve_failed_gates)


def cmd_reasoning_data(args) -> int:
    """The datasets phase, then reasoning_data, in this process; the merged artifact copied to --output."""
    import json
    from pathlib import Path

    from shared.config import load_profile, profile_from_dict
    from shared.runtime import JobRegistry, JobRequest, JobState, get_phase

    profile = load_profile(args.config or args.profile)
    section = profile.phases.reasoning_data.model_dump(mode="json")
    for key, value in (("backend", args.backend), ("target_examples", args.target),
                       ("cost_limit_usd", args.cost_limit), ("model", args.model)):
        if value is not None:
            section[key] = value
    data = profile.model_dump(mode="json")
    data["phases"]["reasoning_data"] = section
    spec = profile_from_dict(data, source="command line").phases.reasoning_data
    out = Path(args.output)
    if out.exists() and out.is_dir():
        raise InvalidSpecError(f"{out} is a folder; give a file path", field="--output")
    store = _store(args)
    jobs = {}
    for phase, phase_spec, inputs in (("datasets", profile.phases.datasets, ()), ("reasoning_data", spec, None)):
        reg = JobRegistry(get_phase(phase), store)
        req = JobRequest(request_id=f"cli-{phase}-{os.getpid()}", phase=phase, seed=profile.seed,
                         inputs=inputs if inputs is not None else jobs["datasets"].artifacts)
        job = reg.submit(req, phase_spec)
        job.done.wait()
        reg.shutdown()
        if job.state is not JobState.SUCCEEDED:
            print(f"error: {phase} failed: {job.error}", file=sys.stderr)
            return EXIT_FAILED
        jobs[phase] = job
    ref = jobs["reasoning_data"].artifacts[0]
    merged = store.read_file_bytes(ref, "reasoning_data.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_bytes(merged)
    tmp.replace(out)  # never a half-written file at --output
    meta = json.loads(merged)["metadata"]
    print(f"{meta['total_examples']} examples ({meta['splits']}) across {len(meta['strategies'])} strategies "
          f"written to {out}")
    return 0


APPROVER = "agentforge run --approve-failed-gates"


def approve_failed_gates(coordinator, run_id: str, reason: str) -> list[str]:
    """Approve every failed gate of a blocked run whose failed metrics all allow approval (ApproveGate, recorded
    with who and why); returns the phases approved. A gate with a metric that may not be approved stays failed."""
    from services.coordinator.core.engine import GATE_FAILED
    from shared.errors import FailedPreconditionError

    approved = []
    for ph in coordinator.get_run(run_id)[1]:
        if ph.state != GATE_FAILED:
            continue
        try:
            coordinator.approve_gate(run_id, ph.phase, APPROVER, reason)
        except FailedPreconditionError as exc:
            print(f"gate of {ph.phase} not approved: {exc}", file=sys.stderr)
            continue
        approved.append(ph.phase)
        print(f"gate of {ph.phase} FAILED and was approved ({reason})")
    return approved


def run_embedded(profile, *, store, state_path: str, approve_reason: str | None = None) -> int:
    """The whole pipeline in this process: the coordinator's state machine with in-process runners, torch set
    as the profile's runtime says (torch_threads, deterministic). approve_reason: approve failed gates that
    allow it (recorded overrides, listed in the summary)."""
    import time
    from pathlib import Path

    import torch

    from services.coordinator.app import embedded_coordinator

    torch.set_num_threads(profile.runtime.torch_threads)
    torch.use_deterministic_algorithms(profile.runtime.deterministic)

    Path(state_path).parent.mkdir(parents=True, exist_ok=True)
    c = profile.coordinator
    coordinator, registries = embedded_coordinator(state_path, store, accelerators=c.accelerators,
                                                   lease_ttl_s=c.lease_ttl_s, unit_ttl_s=c.unit_ttl_s)
    started = time.monotonic()
    try:
        run = coordinator.create_run(profile)
        print(f"run {run.run_id}")
        run = coordinator.run_until_done(run.run_id, poll_interval_s=c.poll_interval_s)
        while run.state == "blocked" and approve_reason and approve_failed_gates(coordinator, run.run_id,
                                                                                approve_reason):
            run = coordinator.run_until_done(run.run_id, poll_interval_s=c.poll_interval_s)
    finally:
        for registry in registries.values():
            registry.shutdown(cancel_running=True, wait=False)
    seconds = time.monotonic() - started
    write_run_report(state_path, run.run_id, store)
    print_summary(coordinator, run.run_id, seconds)
    if run.state != "succeeded":
        print(f"error: run {run.run_id} {run.state}: {run.error}", file=sys.stderr)
        return EXIT_FAILED
    return 0


# Shown in the summary beside the gates (when the phase reported them): what each phase produced.
KEY_METRICS = {
    "cognate": ("cognate/reasoning/val_loss", "cognate/memory/val_loss", "cognate/speed/val_loss"),
    "evomerge": ("evomerge/best_fitness", "evomerge/generations", "evomerge/champion_vs_best_parent"),
    "quietstar": ("quietstar/gsm8k_acc", "quietstar/gsm8k_acc_no_thoughts", "quietstar/rl_steps",
                  "quietstar/rl_rollbacks"),
    "bitnet": ("bitnet/bitlinear_compression_ratio", "bitnet/model_size_mb", "bitnet/gsm8k_acc", "bitnet/arc_acc",
               "bitnet/piqa_acc", "bitnet/thinking_tokens_present", "bitnet/short_question_format_rate"),
}


def print_summary(coordinator, run_id: str, seconds: float) -> None:
    run, phases = coordinator.get_run(run_id)
    print(f"\n{'phase':<15} {'state':<12} {'time':>8}  gates (FAIL = failed; approved phases list who and why below)")
    for ph in phases:
        took = (ph.finished_at - ph.started_at) if ph.finished_at and ph.started_at else 0.0
        outcomes = (ph.gate or {}).get("outcomes", [])
        gates = ", ".join(f"{o['metric']}={o['value']:.4g}{'' if o['passed'] else ' FAIL'}" if o["measured"]
                          else f"{o['metric']}=n/a FAIL" for o in outcomes)
        print(f"{ph.phase:<15} {ph.state:<12} {took:7.1f}s  {gates}")
        metrics = ph.metrics or {}
        shown = [f"{k}={metrics[k]:.4g}" for k in KEY_METRICS.get(ph.phase, ()) if k in metrics]
        if shown:
            print(f"{'':<37}{', '.join(shown)}")
    for event in coordinator.state.events(run_id):
        if event.kind == "approved":
            print(f"approved: {event.phase}: {event.payload.get('message', '')}")
    final = next((ph for ph in reversed(phases) if ph.artifacts), None)
    if final is not None:
        keys = ", ".join(a.get("uri", "") for a in final.artifacts)
        print(f"final artifact ({final.phase}): {keys}")
    print(f"run {run.run_id} {run.state} in {seconds:.1f}s; artifacts under runs/{run.run_id}/ in the store")


def write_run_report(state_path: str, run_id: str, store) -> None:
    """The run's report (agentforge report) at .agentforge/reports/RUN_ID; a failure here never hides the run's
    own outcome, it is printed."""
    from shared.report import build_report, load_run, write_report

    try:
        report = build_report(load_run(state_path, run_id), store)
        index = write_report(report, os.path.join(".agentforge", "reports", run_id))
    except Exception as exc:  # noqa: BLE001 - the report is a by-product; say why it is missing
        print(f"report not written: {type(exc).__name__}: {exc}", file=sys.stderr)
        return
    print(f"report: {index} ({len(report.figures)} plots; {len(report.missing)} missing series listed on the page)")


# -- serve ------------------------------------------------------------------------------------------
def cmd_serve(args) -> int:
    from shared.rpc.serve import serve

    serve(args.service, host=args.host, port=args.port, store_uri=args.store)
    return 0


# -- artifacts --------------------------------------------------------------------------------------
def _key(store, key_or_uri: str) -> str:
    return store.key_from_uri(key_or_uri) if "://" in key_or_uri else key_or_uri


def cmd_artifacts_ls(args) -> int:
    store = _store(args)
    keys = store.list_artifacts(args.prefix)
    for key in keys:
        m = store.read_manifest(key)
        size = sum(f["size"] for f in m.files.values())
        print(f"{key}\t{m.kind}\t{m.retention}\t{size / 2**20:.2f} MB\t{len(m.files)} files")
    print(f"{len(keys)} artifacts", file=sys.stderr)
    return 0


def cmd_artifacts_verify(args) -> int:
    store = _store(args)
    ref = store.ref_for(_key(store, args.artifact))
    report = store.verify(ref)
    print(f"ok: {ref.uri} ({report})")
    return 0


def cmd_artifacts_fetch(args) -> int:
    """Download an artifact's files into a new folder, each file's hash checked as it arrives."""
    from pathlib import Path

    out = Path(args.dest)
    if out.exists() and any(out.iterdir()):
        raise InvalidSpecError(f"{out} exists and is not empty; give a new folder", field="dest")
    store = _store(args)
    ref = store.ref_for(_key(store, args.artifact))
    store.fetch(ref, out)
    print(f"fetched {ref.uri} into {out}")
    return 0


def cmd_artifacts_gc(args) -> int:
    """The checklist's cleanup step: keep what the run published (and anything marked final), delete the
    rest it wrote -- job staging, checkpoints, work units (shared/storage/gc.py has the rule)."""
    from shared.storage.gc import collect, plan_gc

    store = _store(args)
    plan = plan_gc(store, args.run)
    if args.dry_run:
        for key in plan.delete:
            print(f"would delete {key}")
    else:
        collect(store, plan, on_deleted=lambda key: print(f"deleted {key}", flush=True))
    for key, why in plan.keep:
        print(f"kept {key} ({why})")
    for key in plan.unreadable:
        print(f"skipped {key} (manifest unreadable)", file=sys.stderr)
    if not plan.delete and not plan.keep:
        print(f"no artifacts of run '{args.run}'", file=sys.stderr)
    else:
        print(f"{len(plan.delete)} artifacts {'would be ' if args.dry_run else ''}deleted, {len(plan.keep)} kept",
              file=sys.stderr)
    return 0


# -- generate / chat / export-hf ----------------------------------------------------------------------
def _generation_arguments(p) -> None:
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--show-thoughts", action="store_true", help="print each hidden thought before its token")
    p.add_argument("--no-thoughts", action="store_true", help="plain decoding, without hidden thoughts")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0)


def _load_for_generation(args):
    from pathlib import Path

    from services.bitnet.core.packed import load_any

    folder = Path(args.model)
    if not folder.is_dir():
        raise InvalidSpecError(f"{folder} is not a folder; fetch the artifact first "
                               f"(agentforge artifacts fetch KEY DIR)", field="--model")
    if args.max_new_tokens < 1:
        raise InvalidSpecError(f"must be >= 1, got {args.max_new_tokens}", field="--max-new-tokens")
    return load_any(folder)


def _answer(qs, prompt: str, args) -> str:
    return qs.generate(prompt, max_new_tokens=args.max_new_tokens, show_thoughts=args.show_thoughts,
                       thoughts=not args.no_thoughts and qs.head is not None, temperature=args.temperature,
                       seed=args.seed)


def cmd_generate(args) -> int:
    qs = _load_for_generation(args)
    print(_answer(qs, args.prompt, args))
    return 0


def cmd_chat(args) -> int:
    qs = _load_for_generation(args)
    for line in sys.stdin:
        prompt = line.strip()
        if prompt in ("exit", "quit"):
            break
        if prompt:
            print(_answer(qs, prompt, args), flush=True)
    return 0


def cmd_export_hf(args) -> int:
    from pathlib import Path

    from services.bitnet.core.packed import dequantize, is_packed, load_packed
    from shared.data.tokenizer import load_tokenizer, save_tokenizer
    from shared.model import save_model

    src, out = Path(args.model), Path(args.out)
    if not is_packed(src):
        raise InvalidSpecError(f"{src} is not a packed bitnet model folder (no bitnet.json)", field="--model")
    if out.exists():
        raise InvalidSpecError(f"{out} exists; give a new folder", field="--out")
    tmp = out.with_name(out.name + ".partial")
    model = dequantize(load_packed(src))
    save_model(model, tmp)
    save_tokenizer(load_tokenizer(src / "tokenizer"), tmp / "tokenizer")
    tmp.rename(out)      # never a half-written folder at --out
    print(f"dequantized model written to {out}")
    return 0


# -- parser -----------------------------------------------------------------------------------------
def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    # here, not in shared.rpc.serve: building the parser must not import torch (`agentforge health` is a
    # container health probe run every 30 s)
    parser.add_argument("service", help="coordinator, dataset, cognate, evomerge, reasoning-data, quietstar or bitnet")
    parser.add_argument("--host", default=os.environ.get("AGENTFORGE_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("AGENTFORGE_PORT", "50051")))
    parser.add_argument("--store", default=None, help="artifact store URI (default: $AGENTFORGE_STORE)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentforge", description="Agent Forge pipeline")
    parser.add_argument("--log-level", default=os.environ.get("AGENTFORGE_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole pipeline embedded")
    run.add_argument("--profile", default="tiny", help="shipped profile name (ci, tiny, default)")
    run.add_argument("--config", default=None, help="path to a profile YAML (overrides --profile)")
    run.add_argument("--store", default=None, help="artifact store URI (default $AGENTFORGE_STORE)")
    run.add_argument("--state", default=os.environ.get("AGENTFORGE_STATE", ".agentforge/embedded.sqlite"),
                     help="coordinator state file")
    run.add_argument("--approve-failed-gates", metavar="REASON", default=None,
                     help="approve failed gates that allow approval (ApproveGate with this reason, recorded and "
                          "listed in the summary) instead of stopping; gates that may not be approved still stop")
    run.set_defaults(func=cmd_run)

    serve = sub.add_parser("serve", help="serve one phase over gRPC")
    add_serve_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    rd = sub.add_parser("reasoning-data", help="generate Phase 3a reasoning data into one JSON file "
                        "(the checklist's phase3_data_generator)")
    rd.add_argument("--output", required=True, help="where to write the merged JSON")
    rd.add_argument("--profile", default="tiny")
    rd.add_argument("--config", default=None, help="path to a profile YAML (overrides --profile)")
    rd.add_argument("--backend", default=None, choices=["offline", "openai", "local"])
    rd.add_argument("--target", type=int, default=None, help="target examples (profile's by default)")
    rd.add_argument("--cost-limit", type=float, default=None, help="USD across all workers (backend openai)")
    rd.add_argument("--model", default=None, help="teacher model id or folder")
    rd.add_argument("--store", default=None, help="artifact store URI (default $AGENTFORGE_STORE)")
    rd.set_defaults(func=cmd_reasoning_data)

    gen = sub.add_parser("generate", help="generate from a Phase-3 or packed Phase-4 model folder")
    gen.add_argument("--model", required=True, help="a model folder (a fetched quietstar or bitnet `model` artifact)")
    gen.add_argument("--prompt", required=True)
    _generation_arguments(gen)
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser("chat", help="read prompts from stdin, one per line, and answer each")
    chat.add_argument("--model", required=True, help="a model folder (a fetched quietstar or bitnet `model` artifact)")
    _generation_arguments(chat)
    chat.set_defaults(func=cmd_chat)

    export = sub.add_parser("export-hf", help="write a packed model dequantized as a Hugging Face folder")
    export.add_argument("--model", required=True, help="a packed bitnet model folder")
    export.add_argument("--out", required=True, help="the folder to write (must not exist)")
    export.set_defaults(func=cmd_export_hf)

    from shared.cli_runs import add_runs_parser
    from shared.health_cli import add_health_parser

    add_runs_parser(sub)
    add_health_parser(sub)

    from shared.report.cli import add_report_parser

    add_report_parser(sub)

    from shared.deploy.cli_local import add_up_local_parser

    add_up_local_parser(sub)

    art = sub.add_parser("artifacts", help="inspect and clean the artifact store")
    art.add_argument("--store", default=None, help="store URI (default $AGENTFORGE_STORE)")
    art_sub = art.add_subparsers(dest="artifacts_command", required=True)
    ls = art_sub.add_parser("ls", help="list complete artifacts")
    ls.add_argument("prefix", nargs="?", default="")
    ls.set_defaults(func=cmd_artifacts_ls)
    verify = art_sub.add_parser("verify", help="re-hash an artifact's files")
    verify.add_argument("artifact", help="key or URI")
    verify.set_defaults(func=cmd_artifacts_verify)
    fetch = art_sub.add_parser("fetch", help="download an artifact into a folder (hashes checked)")
    fetch.add_argument("artifact", help="key or URI")
    fetch.add_argument("dest", help="a new (or empty) folder")
    fetch.set_defaults(func=cmd_artifacts_fetch)
    gc = art_sub.add_parser("gc", help="delete a run's intermediates (staging, checkpoints), keep what it published")
    gc.add_argument("--run", required=True)
    gc.add_argument("--dry-run", action="store_true")
    gc.set_defaults(func=cmd_artifacts_gc)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from shared.telemetry.logs import configure_logging

    configure_logging(args.log_level)
    try:
        return args.func(args)
    except (ConfigError, InvalidSpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AgentForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
