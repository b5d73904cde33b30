"""What a node says about itself: the `/raft-state` and `/health` JSON, and the gauges of `/metrics`.

Theory of operation
-------------------
Everything here is read from the group (its core, state machine and trackers), the transport and
the storage at the moment of asking; nothing is kept but one fact per peer that no snapshot of
state can give: when the peer last held the leader's whole log, for the replication-lag gauge.
The JSON keeps the seed's names (`nodeId`, `state`, `term`, `votedFor`, `logLength`,
`commitIndex`) and adds the rest in the same camelCase; `/openapi.json` documents it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from raftkv.core import Progress

from .group import RaftGroup
from .metrics import NodeMetrics

__all__ = ["StatusReporter"]


def _progress_json(pr: Progress) -> dict[str, Any]:
    return {"matchIndex": pr.match, "nextIndex": pr.next, "state": pr.state.value, "inflight": len(pr.inflight),
            "recentActive": pr.recent_active, "ticksSinceContact": pr.ticks_since_contact}


class StatusReporter:
    def __init__(self, group: RaftGroup, metrics: NodeMetrics, peer_urls: Callable[[], dict[str, str]]) -> None:
        self.group = group
        self.metrics = metrics
        self.peer_urls = peer_urls  # peer id -> its client URL, as the configuration is now
        self._caught_up_at: dict[str, float] = {}  # peer -> when it last held the leader's whole log
        self.started_at = time.time()

    def raft_state(self, *, digest: bool = False, **extra: Any) -> dict[str, Any]:
        """/raft-state: the seed's fields and more; `extra` adds the host's (faults, transport);
        `digest` adds a hash of the whole state machine (costs a full snapshot)."""
        group = self.group
        core, kv, tick_s = group.core, group.kv, group.tick_ms / 1000
        peers = []
        for peer_id, url in self.peer_urls().items():
            entry: dict[str, Any] = {"id": peer_id, "url": url}
            pr = core.progress.get(peer_id)
            if pr is not None:
                entry.update(_progress_json(pr), lastContact=round(pr.ticks_since_contact * tick_s, 3),
                             lagEntries=core.log.last_index() - pr.match)
            peers.append(entry)
        state = {
            "nodeId": core.id, "state": core.role.value, "term": core.term, "votedFor": core.voted_for,
            "leaderId": core.leader_id, "logLength": core.log.last_index(), "lastLogTerm": core.log.last_term(),
            "commitIndex": core.log.committed, "lastApplied": core.log.applied, "snapshotIndex": core.snapshot_index,
            "firstIndex": core.log.first_index(), "stableIndex": core.durable_index,
            "voters": list(core.conf.voters), "learners": list(core.conf.learners),
            "electionElapsed": core.election_elapsed, "electionTimeout": core.randomized_election_timeout,
            "heartbeatElapsed": core.heartbeat_elapsed, "transferTarget": core.transfer_target,
            "votes": dict(core.votes), "peers": peers, "tickMs": group.tick_ms, "keys": len(kv),
            "revision": kv.revision, "requestKeys": kv.dedup_stats(),
            "storage": dataclasses.asdict(group.pump.storage.stats), "uptime": round(time.time() - self.started_at, 3),
            **extra,
        }
        if digest:
            state["kvDigest"] = kv.digest()
        return state

    def health(self) -> dict[str, Any]:
        """Alive, and whether a leader is known: "ok", or "unavailable" with the reason (a 503)."""
        core = self.group.core
        leader = core.leader_id
        health: dict[str, Any] = {"status": "ok" if leader is not None else "unavailable", "node": core.id,
                                  "leader": leader, "hasLeader": leader is not None, "term": core.term}
        if leader is None:
            health["reason"] = "no leader is known"
        return health

    def refresh_gauges(self) -> None:
        m, core, kv = self.metrics, self.group.core, self.group.kv
        m.term.set(core.term)
        m.commit_index.set(core.log.committed)
        m.applied_index.set(kv.applied_index)
        last = core.log.last_index()
        m.last_log_index.set(last)
        m.keys.set(len(kv))
        tick_s = self.group.tick_ms / 1000
        now = time.monotonic()
        for peer in self.peer_urls():
            pr = core.progress.get(peer)
            if pr is None or pr.match >= last:
                self._caught_up_at[peer] = now
            m.peer_lag_entries.labels(peer).set(last - pr.match if pr else 0)
            m.peer_lag_seconds.labels(peer).set(now - self._caught_up_at.get(peer, now))
            m.peer_last_contact.labels(peer).set(pr.ticks_since_contact * tick_s if pr else 0)
        for learner in core.conf.learners:
            pr = core.progress.get(learner)
            if pr is not None:  # only the leader tracks progress
                m.learner_lag_entries.labels(learner).set(last - pr.match)
