"""Job states and progress events, and an append-only event log that watchers can follow."""

from __future__ import annotations

import enum
import threading
import time
import uuid
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


# At most this many events per page of EventLog.metric_events (one Get): a page stays far below the gRPC
# message limit even when every event carries a phase's whole final metric set (~100 metrics).
METRIC_EVENTS_PAGE = 256


class EventLog:
    """Append-only list of events with blocking follow; thread-safe.

    `log_id` names this log: a job resubmitted to a restarted worker gets a new log whose seqs start at 1
    again, and a poller that remembers (log_id, seq) can tell the two apart."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._cond = threading.Condition()
        self.log_id = uuid.uuid4().hex

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

    def metric_events(self, after_seq: int = 0, *, limit: int | None = None) -> tuple[list[Event], bool]:
        """The progress events (state RUNNING) that carry metrics with seq > after_seq, oldest first, at most
        `limit` (default METRIC_EVENTS_PAGE) of them, and whether more such events follow the last one."""
        limit = METRIC_EVENTS_PAGE if limit is None else limit
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        with self._cond:
            tail = self._events[max(0, after_seq):]
        page: list[Event] = []
        for event in tail:
            if event.metrics and event.state is JobState.RUNNING:
                if len(page) == limit:
                    return page, True
                page.append(event)
        return page, False

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
