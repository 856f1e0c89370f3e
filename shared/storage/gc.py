"""Garbage collection of one run: keep what the coordinator published, delete what only led up to it.

Only the coordinator publishes (DESIGN.md §4): `ArtifactStore.promote` copies a job's output to
`runs/<run>/<phase>/<name>`, marks it final and points its parents at published artifacts. Everything
else a run writes is intermediate: its jobs' staging (`jobs/<job>/t<token>/...`: copies already
published, outputs of fenced or failed attempts, Cognate's segment checkpoints, the reasoning-data work
units) and its checkpoints (`checkpoints/<request_id>/...`). So collecting a run keeps every artifact
under `runs/<run>/` and any other one its writer marked final, and deletes every other artifact whose
producer is the run. Published lineage survives it: a published artifact's parents are published.

A phase blocked at a failed gate keeps its outputs in staging until the gate is approved; collect a run
once it has finished (or after approving or retrying the phase), or those outputs are gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from shared.errors import IntegrityError, InvalidSpecError, NotFoundError
from shared.storage.base import ArtifactStore
from shared.storage.keys import published_prefix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GcPlan:
    """What collecting a run does: keys to delete, keys kept (with why), manifests that could not be read."""

    run_id: str
    delete: tuple[str, ...]
    keep: tuple[tuple[str, str], ...]
    """(key, reason): "published" (under runs/<run>/) or "final" (marked so by its writer)."""
    unreadable: tuple[str, ...] = ()


def plan_gc(store: ArtifactStore, run_id: str) -> GcPlan:
    """Sort the run's artifacts into kept and deleted; reads manifests, deletes nothing."""
    if not isinstance(run_id, str) or not run_id.strip():
        raise InvalidSpecError("name the run whose intermediates to delete", field="run")
    published = published_prefix(run_id)
    delete, keep, unreadable = [], [], []
    for key in store.list_artifacts(""):
        if key.startswith(published):
            keep.append((key, "published"))
            continue
        if key.startswith("runs/"):  # another run's published artifact; never this run's to delete
            continue
        try:
            manifest = store.read_manifest(key)
        except NotFoundError:  # deleted meanwhile
            continue
        except IntegrityError as exc:  # not ours to judge: leave it, say so
            log.warning("gc: skipping unreadable artifact %s: %s", store.uri_for(key), exc)
            unreadable.append(key)
            continue
        if manifest.producer.run_id != run_id:
            continue
        if manifest.retention == "final":
            keep.append((key, "final"))
        else:
            delete.append(key)
    return GcPlan(run_id, tuple(delete), tuple(keep), tuple(unreadable))


def collect(store: ArtifactStore, plan: GcPlan, on_deleted: Callable[[str], None] | None = None) -> None:
    """Delete the plan's artifacts, each manifest first (so none is ever half visible); `on_deleted(key)`
    after each."""
    for key in plan.delete:
        store.delete_artifact(key)
        log.info("gc %s: deleted %s", plan.run_id, store.uri_for(key))
        if on_deleted is not None:
            on_deleted(key)
