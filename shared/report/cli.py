"""`agentforge report RUN_ID [--state PATH] [--store URI] [--out DIR]`: write a run's report.

The run is read from a coordinator state file: the one `agentforge run` writes (the same default:
$AGENTFORGE_STATE, else .agentforge/embedded.sqlite), or a services-mode coordinator's (run it where that
file is, e.g. inside the coordinator's container, where AGENTFORGE_STATE points at it). The store (for the
datasets manifest) is --store, else $AGENTFORGE_STORE, else the default local store.
"""

from __future__ import annotations

import os

DEFAULT_STATE = ".agentforge/embedded.sqlite"


def cmd_report(args) -> int:
    from shared.report import build_report, load_run, write_report
    from shared.rpc.serve import DEFAULT_STORE
    from shared.storage.factory import store_from_uri

    data = load_run(args.state, args.run_id)
    store = store_from_uri(args.store or os.environ.get("AGENTFORGE_STORE") or DEFAULT_STORE)
    report = build_report(data, store)
    index = write_report(report, args.out or os.path.join(".agentforge", "reports", args.run_id))
    print(f"report of run {data.run.run_id} ({data.run.state}): {index}")
    print(f"  {len(report.figures)} plots, {len(report.tables)} tables; "
          f"{len(report.missing)} missing" + "".join(f"\n  missing: {what}: {why}" for what, why in report.missing))
    return 0


def add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="write a run's report: HTML + PNG plots from its events (no network assets)")
    p.add_argument("run_id")
    p.add_argument("--state", default=os.environ.get("AGENTFORGE_STATE", DEFAULT_STATE),
                   help=f"coordinator state file (default $AGENTFORGE_STATE or {DEFAULT_STATE}, as `agentforge run`)")
    p.add_argument("--store", default=None, help="artifact store URI (default $AGENTFORGE_STORE)")
    p.add_argument("--out", default=None, help="output folder (default .agentforge/reports/RUN_ID)")
    p.set_defaults(func=cmd_report)
