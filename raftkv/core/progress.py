"""What the leader knows about each follower's log, and the flow control that bounds it.

A follower is in one of three states (as in etcd-io/raft's tracker):
- PROBE: the leader does not know where the logs agree; it sends one AppendRequest and waits
  for its answer (or the next heartbeat) before sending another, walking `next` back on rejects.
- REPLICATE: the logs agree up to `match`; the leader streams entries optimistically, advancing
  `next` as it sends, with at most `max_inflight` requests unacknowledged (pipelining).
- SNAPSHOT: the entries the follower needs were compacted away; an InstallSnapshot is in flight
  and nothing else is sent until it is acknowledged (or the leader gives up and probes again).
"""

from __future__ import annotations

from collections import deque
from enum import Enum


class ProgressState(Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = (
        "inflight",
        "match",
        "max_inflight",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "snapshot_ticks",
        "state",
        "ticks_since_contact",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.recent_active = False
        self.ticks_since_contact = 0
        self.snapshot_ticks = 0  # ticks since the pending InstallSnapshot left
        self.max_inflight = max_inflight
        self.inflight: deque[int] = deque()  # last index of each unacknowledged AppendRequest

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            # Resume right after the snapshot, if it may have been installed.
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index
        self.snapshot_ticks = 0

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def maybe_update(self, index: int) -> bool:
        """Record an acknowledgement up to `index`; False if it tells nothing new."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return updated

    def sent(self, last_index: int) -> None:
        """An AppendRequest ending at `last_index` left for this follower."""
        if self.state is ProgressState.REPLICATE:
            if last_index >= self.next:
                self.next = last_index + 1
                self.inflight.append(last_index)
        else:
            self.probe_sent = True

    def describe(self) -> dict:
        return {
            "matchIndex": self.match,
            "nextIndex": self.next,
            "state": self.state.value,
            "inflight": len(self.inflight),
            "recentActive": self.recent_active,
            "ticksSinceContact": self.ticks_since_contact,
        }
