"""The job protocol servicer, one class for every phase service (Validate, Submit, Watch, Cancel, Get).

It only translates: proto spec -> the phase's config section (errors name the field), proto context ->
JobRequest, domain Job -> JobStatus. The work happens in shared.runtime.JobRegistry and the phase core.
"""

from __future__ import annotations

import threading

import grpc

from agentforge.v1 import job_pb2
from shared.errors import InvalidSpecError
from shared.rpc.convert import event_to_proto, job_to_status, message_to_dict, request_from_proto
from shared.rpc.server import ServiceBinding
from shared.runtime.registry import JobRegistry


class JobServicer:
    def __init__(self, registry: JobRegistry):
        self.registry = registry

    def Validate(self, request, context):
        spec = self.registry.parse_spec(message_to_dict(request))
        warnings, spec_hash = self.registry.validate(spec)
        return job_pb2.ValidateResponse(ok=True, warnings=warnings, spec_hash=spec_hash)

    def Submit(self, request, context):
        spec = self.registry.parse_spec(message_to_dict(request.spec))
        job = self.registry.submit(request_from_proto(request.context), spec)
        return job_to_status(job)

    def Watch(self, request, context: grpc.ServicerContext):
        stop = threading.Event()
        context.add_callback(stop.set)  # the client went away: stop waiting for events
        for event in self.registry.watch(request.job_id, request.after_seq, stop=stop):
            yield event_to_proto(request.job_id, event)

    def Cancel(self, request, context):
        return job_to_status(self.registry.cancel(request.job_id))

    def Get(self, request, context):
        if request.events_after_seq < 0:
            raise InvalidSpecError(f"must be >= 0, got {request.events_after_seq}", field="events_after_seq")
        return job_to_status(self.registry.get(request.job_id), events_after_seq=request.events_after_seq)


def binding_for(registry: JobRegistry) -> ServiceBinding:
    definition = registry.definition
    return ServiceBinding(add=definition.add_servicer, servicer=JobServicer(registry),
                          full_name=definition.grpc_service)
