"""The phase-worker runtime: job registry, job context, checkpoints and resume (no gRPC here)."""

from shared.runtime.context import JobContext, JobRequest, JobResult
from shared.runtime.events import Event, JobState
from shared.runtime.phase import PhaseDefinition, PhaseRunner, discover_phases, get_phase
from shared.runtime.registry import Job, JobRegistry

__all__ = [
    "Event", "Job", "JobContext", "JobRegistry", "JobRequest", "JobResult", "JobState", "PhaseDefinition",
    "PhaseRunner", "discover_phases", "get_phase",
]
