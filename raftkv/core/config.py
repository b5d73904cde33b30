"""Configuration of one Raft core.

All time is counted in ticks: the driver calls `tick()` at a fixed interval (the real node every
`tick_interval` seconds, the simulator on its virtual clock), so the core itself never reads a
clock. Everything that could grow without bound has a limit here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class ReadMode(Enum):
    # Confirm leadership with a heartbeat round to a majority before answering (Raft thesis 6.4).
    SAFE = "safe"
    # Skip the round while the leader heard from a majority within the last election timeout.
    # Safe only if clocks run at nearly the same rate on every node: a follower that heard from
    # this leader refuses to vote for anyone else for one election timeout (check-quorum's
    # leader stickiness), so no other leader can exist while the lease holds. A paused leader
    # process (SIGSTOP, GC) or a fast clock elsewhere breaks that assumption. (The leader's lease
    # on its leadership, not the key leases clients grant, kv/leases.py.)
    LEADER_LEASE = "leader-lease"


@dataclass(frozen=True, slots=True)
class Config:
    node_id: str
    # The founding members, used only when the durable state holds no configuration yet.
    voters: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()
    # A follower campaigns after a random number of ticks in [election, 2*election).
    election_timeout_ticks: int = 10
    heartbeat_interval_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    read_mode: ReadMode = ReadMode.SAFE
    # Flow control: at most this many AppendRequests unacknowledged per follower, each carrying at
    # most this many entries / bytes of entry data.
    max_inflight_appends: int = 64
    max_entries_per_append: int = 512
    max_bytes_per_append: int = 1 << 20
    # Back-pressure: refuse proposals while this many entries are appended but not committed.
    max_uncommitted_entries: int = 16384
    # At most this many committed entries handed out in one Ready.
    max_committed_per_ready: int = 8192
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks:
            raise ValueError("election_timeout_ticks must exceed heartbeat_interval_ticks")
        if self.heartbeat_interval_ticks < 1:
            raise ValueError("heartbeat_interval_ticks must be at least 1")
        if self.max_inflight_appends < 1 or self.max_entries_per_append < 1:
            raise ValueError("flow-control limits must be at least 1")
