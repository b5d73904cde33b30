"""What the leader knows about each follower's log, and the flow control that bounds it.

A follower is in one of three states (as in etcd-io/raft's tracker):
- PROBE: the leader does not know where the logs agree; it sends one AppendRequest and waits
  for its answer (or the next heartbeat) before sending another, walking `next` back on rejects.
- REPLICATE: the logs agree up to `match`; the leader streams entries optimistically, advancing
  `next` as it sends, with at most `max_inflight` requests unacknowledged (pipelining).
- SNAPSHOT: the entries the follower needs were compacted away; an InstallSnapshot is in flight
  and nothing else is sent until it is acknowledged (or the leader gives up and probes again).

Invariants (asserted): match < next, so the next append always starts after what is known to
match; `next` moves backwards only when the leader starts probing again (a rejection, a lost
snapshot, a follower that lost entries), and `match` only when a follower proves it lost
entries (the core lowers it then); `inflight` holds at most `max_inflight` strictly increasing
indexes, which is what lets an acknowledgement release a prefix of it.
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
        assert next_index >= 1 and max_inflight >= 1, (next_index, max_inflight)
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
        assert self.match < self.next, f"match {self.match} must stay below next {self.next}"

    def maybe_update(self, index: int) -> bool:
        """Record an acknowledgement up to `index`; False if it tells nothing new."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        assert self.match < self.next, f"match {self.match} must stay below next {self.next}"
        return updated

    def sent(self, last_index: int) -> None:
        """An AppendRequest ending at `last_index` left for this follower."""
        # Nothing is sent while paused (a snapshot in flight, a full window), and every append
        # starts at next: an empty one ends at next - 1, a full one after it.
        assert self.state is not ProgressState.SNAPSHOT, "an append sent while a snapshot is in flight"
        assert last_index >= self.next - 1, f"an append ending at {last_index} skipped next {self.next}"
        if self.state is ProgressState.REPLICATE:
            if last_index >= self.next:
                assert len(self.inflight) < self.max_inflight, f"{self.max_inflight} appends already in flight"
                self.next = last_index + 1
                self.inflight.append(last_index)
        else:
            self.probe_sent = True
