"""Job states and progress events, and an append-only event log that watchers can follow."""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class Event:
    """One progress event. seq numbers a job's events 1, 2, 3, … without gaps."""

    seq: int
    state: JobState
    stage: str = ""
    fraction: float = 0.0
    step: int = 0
    total_steps: int = 0
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


class EventLog:
    """Append-only list of events with blocking follow; thread-safe."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._cond = threading.Condition()

    def append(self, **fields) -> Event:
        with self._cond:
            event = Event(seq=len(self._events) + 1, **fields)
            self._events.append(event)
            self._cond.notify_all()
            return event

    @property
    def last(self) -> Event | None:
        with self._cond:
            return self._events[-1] if self._events else None

    def follow(self, after_seq: int = 0, *, poll: float = 0.5,
               stop: threading.Event | None = None) -> Iterator[Event]:
        """Yield events with seq > after_seq, waiting for new ones, until a terminal event was yielded.

        `stop` lets the caller end the wait early (e.g. the RPC was cancelled by the client).
        """
        seen = after_seq
        while True:
            with self._cond:
                while len(self._events) <= seen:
                    if stop is not None and stop.is_set():
                        return
                    self._cond.wait(timeout=poll)
                batch = self._events[seen:]
            for event in batch:
                seen = event.seq
                yield event
                if event.state.terminal:
                    return
