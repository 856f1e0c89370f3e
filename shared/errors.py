"""The project's exception hierarchy.

Every error a request, a file or a configuration can trigger is one of these. Each carries a message a
person can act on (what was wrong, which field/file/value, what to do). `shared.rpc.status` maps each
class to exactly one gRPC status code, so servers never leak tracebacks and clients get a stable code.
"""

from __future__ import annotations


class AgentForgeError(Exception):
    """Base class for every error the project raises on purpose."""


class InvalidSpecError(AgentForgeError, ValueError):
    """A request, spec or config value is wrong. `field` names the offending field (dotted path)."""

    def __init__(self, message: str, *, field: str | None = None):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class ConfigError(InvalidSpecError):
    """A config file or profile is malformed: unknown key, wrong type or out-of-range value."""

    def __init__(self, message: str, *, field: str | None = None, source: str | None = None):
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + (f"{field}: {message}" if field else message))
        self.field = field


class NotFoundError(AgentForgeError, LookupError):
    """An artifact, object, job or run that was asked for does not exist."""


class AlreadyExistsError(AgentForgeError):
    """A create/submit conflicts with an existing object (e.g. same request id, different spec)."""


class FailedPreconditionError(AgentForgeError):
    """The system is not in a state that allows the operation (e.g. approving a gate that passed)."""


class UnavailablePhaseError(AgentForgeError):
    """A pipeline phase exists in the contract but its implementation has not landed yet."""

    def __init__(self, phase: str, issue: int | None = None):
        self.phase = phase
        self.issue = issue
        where = f" (tracked in issue #{issue})" if issue else ""
        super().__init__(f"phase '{phase}' is not implemented yet{where}")


class AuthenticationError(AgentForgeError):
    """A missing or wrong bearer token."""


class ResourceExhaustedError(AgentForgeError):
    """A message, object or request exceeds a configured limit."""


class IntegrityError(AgentForgeError):
    """Stored bytes do not match their recorded hash or size: the artifact is corrupt or was replaced."""


class UnsafeFormatError(AgentForgeError):
    """A file is in a format we refuse to load (pickle / torch.save zip). It is never unpickled."""


class StorageError(AgentForgeError):
    """The artifact store failed (permissions, credentials, server unreachable after retries, disk full)."""


class InsufficientStorageError(StorageError):
    """Not enough free disk space for a phase."""


class AcceleratorUnavailableError(AgentForgeError):
    """No usable accelerator (none present, or none became free before the timeout)."""


class CancelledError(AgentForgeError):
    """A job was cancelled; raised inside the job to unwind it."""


class StaleLeaseError(AgentForgeError):
    """A lease holder presented a fencing token that is no longer current."""
