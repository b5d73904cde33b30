"""Prometheus metrics of one node, through the official prometheus_client.

Each node owns a registry (tests run several nodes in one process). The driver records what it
sees happen: role and term changes, elections, heartbeats, commits, fsyncs, snapshots, reads
and proposals; the HTTP layer records requests. `/metrics` renders the registry and the
dashboard's charts read the same numbers.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from raftkv.core import Role

FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ELECTION_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
Series = TypeVar("Series")

ROLE_VALUE = {Role.FOLLOWER: 0, Role.PRE_CANDIDATE: 1, Role.CANDIDATE: 2, Role.LEADER: 3}


class _LoopFamily(Generic[Series]):
    """A metric for the hot paths (per entry, per request, per message), updated and collected on
    the event loop's thread only, so it needs no lock: prometheus_client's Histogram takes one per
    bucket and per sum, which at 30k entries/s cost more than the Raft work of an entry. A custom
    collector (the library's extension point). With `labelnames`, `labels(...)` gives one series
    to update (look it up once, keep it); without, the one series is shown from the start, at
    zero, as prometheus_client's own are."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry, labelnames: Sequence[str],
                 new_series: Callable[[], Series]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self._new_series = new_series
        self._series: dict[tuple[str, ...], Series] = {}
        if not labelnames:
            self.labels()
        registry.register(self)

    def labels(self, *values: str) -> Series:
        assert len(values) == len(self.labelnames), (values, self.labelnames)
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = self._new_series()
        return series


class LoopHistogram(_LoopFamily["_Buckets"]):
    """A lock-free histogram (see _LoopFamily), exposed exactly as prometheus_client's."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry,
                 labelnames: Sequence[str] = ()) -> None:
        self._bounds = [*buckets, math.inf]
        super().__init__(name, documentation, registry, labelnames, lambda: _Buckets(self._bounds))

    def observe(self, value: float, times: int = 1) -> None:
        """Of a histogram without labels."""
        self._series[()].observe(value, times)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, series in list(self._series.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(self._bounds, series.counts, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            family.add_metric(list(values), buckets, series.sum)
        yield family


class _Buckets:
    """One series of a LoopHistogram."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += times  # the first bucket with value <= le
        self.sum += value * times


class LoopCounter(_LoopFamily[list[float]]):
    """A lock-free counter (see _LoopFamily), exposed exactly as prometheus_client's Counter is,
    `_total` suffix included. A series is its one-element total: add to `[0]`."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry,
                 labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, registry, labelnames, lambda: [0.0])

    def inc(self, amount: float = 1) -> None:
        """Of a counter without labels."""
        self._series[()][0] += amount

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, (count,) in list(self._series.items()):
            family.add_metric(list(values), count)
        yield family


class NodeMetrics:
    def __init__(self, node_id: str) -> None:
        r = self.registry = CollectorRegistry()
        labels = {"node": node_id}
        self.term = Gauge("raft_term", "Current Raft term", registry=r)
        self.role = Gauge("raft_role", "0 follower, 1 pre-candidate, 2 candidate, 3 leader", registry=r)
        self.is_leader = Gauge("raft_is_leader", "1 if this node is the leader", registry=r)
        self.has_leader = Gauge("raft_has_leader", "1 if this node knows a leader", registry=r)
        self.commit_index = Gauge("raft_commit_index", "Highest committed log index", registry=r)
        self.applied_index = Gauge("raft_applied_index", "Highest applied log index", registry=r)
        self.last_log_index = Gauge("raft_last_log_index", "Last index in the log", registry=r)
        self.leader_changes = Counter("raft_leader_changes", "Times the known leader changed", registry=r)
        self.elections_started = Counter("raft_elections_started", "Elections this node started", registry=r)
        self.elections_won = Counter("raft_elections_won", "Elections this node won", registry=r)
        self.election_seconds = Histogram(
            "raft_election_duration_seconds",
            "From starting a campaign to winning it",
            buckets=ELECTION_BUCKETS,
            registry=r,
        )
        self.leaderless_seconds = Counter("raft_leaderless_seconds", "Time this node knew no leader", registry=r)
        self.failover_seconds = Histogram(
            "raft_failover_seconds",
            "From losing the leader to knowing a new one",
            buckets=ELECTION_BUCKETS,
            registry=r,
        )
        # Per message: these and the peers' round trips below take no lock (LoopCounter, LoopHistogram).
        self.heartbeats_sent = LoopCounter("raft_heartbeats_sent", "Heartbeat requests sent", r)
        self.heartbeats_received = LoopCounter("raft_heartbeats_received", "Heartbeat requests received", r)
        self.heartbeat_interval = LoopHistogram("raft_heartbeat_interval_seconds", "Time between heartbeats received",
                                                FAST_BUCKETS, r)
        # How late each tick fired: how long the event loop was kept from it (a long turn, a
        # collection, a big store's snapshot being cut). A leader late by an election timeout loses
        # its followers to an election.
        self.tick_lateness = LoopHistogram("raft_tick_lateness_seconds",
                                           "How late the node's tick fired: time its event loop spent elsewhere",
                                           FAST_BUCKETS, r)
        self.messages_sent = LoopCounter("raft_messages_sent", "Raft messages sent", r, ["type"])
        self.messages_dropped = Counter(
            "raft_messages_dropped", "Raft messages dropped by the fault layer", ["direction"], registry=r
        )
        self.peer_lag_entries = Gauge(
            "raft_peer_lag_entries", "Leader's last index minus the peer's match", ["peer"], registry=r
        )
        self.peer_last_contact = Gauge(
            "raft_peer_last_contact_seconds", "Since the leader heard from the peer", ["peer"], registry=r
        )
        self.peer_lag_seconds = Gauge(
            "raft_peer_lag_seconds",
            "Since the peer last held the leader's whole log (0: caught up)",
            ["peer"],
            registry=r,
        )
        self.peer_rtt_seconds = LoopHistogram("raft_peer_rtt_seconds", "Heartbeat round trip to the peer",
                                              FAST_BUCKETS, r, ["peer"])
        self.proposals = Counter("raft_proposals", "Client commands proposed", ["outcome"], registry=r)
        # Children looked up once: these are bumped per applied entry, on the node's hot path.
        self.proposals_applied = self.proposals.labels("applied")
        self.proposals_lost = self.proposals.labels("lost")
        self.proposals_unknown = self.proposals.labels("unknown")
        self.commit_seconds = LoopHistogram(
            "raft_propose_to_commit_seconds",
            "On the leader, from proposing a write (its own or one a follower forwarded) to its commit",
            FAST_BUCKETS, r
        )
        self.apply_seconds = LoopHistogram(
            "raft_propose_to_apply_seconds", "From propose to applied on the node that took the write", FAST_BUCKETS, r
        )
        self.read_index_seconds = Histogram(
            "raft_read_index_seconds", "From a read request to its safe read point", buckets=FAST_BUCKETS, registry=r
        )
        self.fsync_seconds = Histogram("raft_wal_fsync_seconds", "WAL sync duration", buckets=FAST_BUCKETS, registry=r)
        self.fsync_batch = Histogram(
            "raft_wal_fsync_batch_entries", "Entries made durable by one sync", buckets=BATCH_BUCKETS, registry=r
        )
        self.snapshots = Counter("raft_snapshots", "Snapshots taken or installed", ["kind"], registry=r)
        self.snapshot_seconds = Histogram(
            "raft_snapshot_duration_seconds", "Time to take and save a snapshot", buckets=ELECTION_BUCKETS, registry=r
        )
        self.snapshot_bytes = Gauge("raft_snapshot_bytes", "Size of the newest snapshot", registry=r)
        self.http_requests = LoopCounter("raft_http_requests", "HTTP requests", r, ["route", "method", "status"])
        self.http_seconds = LoopHistogram("raft_http_request_seconds", "HTTP request latency", FAST_BUCKETS, r,
                                          ["route", "method"])
        self.conf_changes = Counter("raft_conf_changes", "Membership changes applied", registry=r)
        self.members = Gauge("raft_members", "Members of the configuration", ["role"], registry=r)
        self.learner_lag_entries = Gauge("raft_learner_lag_entries", "Entries a learner lacks (leader only)",
                                         ["learner"], registry=r)
        self.keys = Gauge("raft_kv_keys", "Keys in the state machine", registry=r)
        self.info = Gauge("raft_node_info", "Constant 1, labelled with the node id", ["node"], registry=r)
        self.info.labels(**labels).set(1)
        self._leaderless_since: float | None = time.monotonic()
        self._campaign_started: float | None = None
        self._last_heartbeat: float | None = None
        # (route, method, status) -> the two children; label lookups cost more than the update
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    # ---- events the driver reports ----------------------------------------------------------

    def on_soft_state(self, role: Role, leader: str | None, term: int, previous_leader: str | None) -> None:
        now = time.monotonic()
        self.term.set(term)
        self.role.set(ROLE_VALUE[role])
        self.is_leader.set(1 if role is Role.LEADER else 0)
        self.has_leader.set(1 if leader else 0)
        if leader != previous_leader:
            self.leader_changes.inc()
        if leader is None and self._leaderless_since is None:
            self._leaderless_since = now
        elif leader is not None and self._leaderless_since is not None:
            gap = now - self._leaderless_since
            self.leaderless_seconds.inc(gap)
            self.failover_seconds.observe(gap)
            self._leaderless_since = None
        if role is Role.CANDIDATE:
            self._campaign_started = self._campaign_started or now
        elif role is Role.LEADER and self._campaign_started is not None:
            self.elections_won.inc()
            self.election_seconds.observe(now - self._campaign_started)
            self._campaign_started = None
        elif role is Role.FOLLOWER:
            self._campaign_started = None

    def on_http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        children = self._http_children.get((route, method, status))
        if children is None:
            children = (self.http_requests.labels(route, method, str(status)), self.http_seconds.labels(route, method))
            self._http_children[route, method, status] = children
        children[0][0] += 1
        children[1].observe(seconds)

    def on_heartbeat_received(self) -> None:
        now = time.monotonic()
        self.heartbeats_received.inc()
        if self._last_heartbeat is not None:
            self.heartbeat_interval.observe(now - self._last_heartbeat)
        self._last_heartbeat = now

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
