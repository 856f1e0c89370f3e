"""Proto ⇄ domain conversions shared by every servicer (servicers translate, never compute)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from agentforge.v1 import common_pb2, job_pb2
from shared.runtime.context import JobRequest
from shared.runtime.events import Event, JobState
from shared.runtime.registry import Job
from shared.storage import ArtifactRef

STATE_TO_PROTO = {
    JobState.QUEUED: common_pb2.JOB_STATE_QUEUED,
    JobState.RUNNING: common_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: common_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: common_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: common_pb2.JOB_STATE_CANCELLED,
}
STATE_FROM_PROTO = {v: k for k, v in STATE_TO_PROTO.items()}


def message_to_dict(msg: Message) -> dict[str, Any]:
    """A spec message as the plain dict its config section validates (proto field names, defaults kept)."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def dict_to_message(data: dict[str, Any], cls: type[Message]) -> Message:
    """The inverse: a config section's dict into its spec message (unknown fields are an error)."""
    return json_format.ParseDict(data, cls())


def ref_to_proto(ref: ArtifactRef) -> common_pb2.ArtifactRef:
    return common_pb2.ArtifactRef(uri=ref.uri, sha256=ref.sha256, size=ref.size, name=ref.name)


def ref_from_proto(msg: common_pb2.ArtifactRef) -> ArtifactRef:
    return ArtifactRef(uri=msg.uri, sha256=msg.sha256, size=msg.size, name=msg.name)


def request_from_proto(ctx: job_pb2.JobContext) -> JobRequest:
    return JobRequest(request_id=ctx.request_id, phase=ctx.phase, run_id=ctx.run_id,
                      fencing_token=ctx.fencing_token, inputs=tuple(ref_from_proto(r) for r in ctx.inputs),
                      seed=ctx.seed, device=ctx.device or "cpu", torch_threads=ctx.torch_threads or 1,
                      profile=ctx.profile, config_hash=ctx.config_hash,
                      evaluation=message_to_dict(ctx.evaluation) if ctx.HasField("evaluation") else None)


def request_to_proto(req: JobRequest) -> job_pb2.JobContext:
    msg = job_pb2.JobContext(request_id=req.request_id, phase=req.phase, run_id=req.run_id,
                             fencing_token=req.fencing_token, inputs=[ref_to_proto(r) for r in req.inputs],
                             seed=req.seed, device=req.device, torch_threads=req.torch_threads,
                             profile=req.profile, config_hash=req.config_hash)
    if req.evaluation is not None:
        msg.evaluation.CopyFrom(dict_to_message(req.evaluation, common_pb2.EvaluationSpec))
    return msg


def event_to_proto(job_id: str, event: Event) -> common_pb2.ProgressEvent:
    msg = common_pb2.ProgressEvent(
        job_id=job_id, seq=event.seq, state=STATE_TO_PROTO[event.state], stage=event.stage,
        fraction=event.fraction, step=event.step, total_steps=event.total_steps, message=event.message,
        metrics=[common_pb2.Metric(name=k, value=v, step=event.step) for k, v in sorted(event.metrics.items())])
    msg.time.FromNanoseconds(int(event.time * 1e9))
    return msg


def job_to_status(job: Job, *, events_after_seq: int | None = None) -> job_pb2.JobStatus:
    """A job's status; with `events_after_seq` (Get) also its metric-carrying events after that seq."""
    status = job_pb2.JobStatus(
        job_id=job.job_id, request_id=job.request.request_id, phase=job.request.phase,
        state=STATE_TO_PROTO[job.state],
        metrics=[common_pb2.Metric(name=k, value=v) for k, v in sorted(job.metrics.items())],
        artifacts=[ref_to_proto(r) for r in job.artifacts], error=job.error, error_id=job.error_id,
        resumed_from_step=job.resumed_from_step, fencing_token=job.request.fencing_token,
        event_log_id=job.events.log_id)
    last = job.events.last
    if last is not None:
        status.last_event.CopyFrom(event_to_proto(job.job_id, last))
    if events_after_seq is not None:
        page, more = job.events.metric_events(events_after_seq)
        status.events.extend(event_to_proto(job.job_id, e) for e in page)
        status.more_events = more
    return status
