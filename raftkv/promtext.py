"""Reading the nodes' `/metrics` (Prometheus text format) into the numbers the charts show.

It sits at the bottom of the package, beside client.py, because two layers read `/metrics`: the
dashboard (the rates below) and the CLI (`raftkv status`'s headline figures).

Theory of operation
-------------------
Each node exposes cumulative counters and histograms. The dashboard polls them about once a
second and turns two consecutive samples into rates over that interval: writes committed per
second, the median and 99th percentile of propose-to-commit latency (from the histogram's bucket
deltas, the same way Prometheus' `histogram_quantile` interpolates), and the seconds this node
spent without knowing a leader. The leader times every write it commits, whichever node its
client sent it to, so the leader's figures are the cluster's. A counter that went down means
the node restarted; that interval is skipped instead of charting a negative rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Sample = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Sample:
    """{(sample name, sorted labels): value} for every sample, read by prometheus_client's parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def series(sample: Sample, name: str, **labels: str) -> list[float]:
    """The value of every series of `name` whose labels include `labels`."""
    want = set(labels.items())
    return [v for (n, ls), v in sample.items() if n == name and want <= set(ls)]


def value(sample: Sample, name: str, **labels: str) -> float:
    """Sum of every series of `name` whose labels include `labels` (0 if none)."""
    return sum(series(sample, name, **labels))


def mean(sample: Sample, histogram: str) -> float | None:
    """Mean of every observation of `histogram` so far (None before the first)."""
    count = value(sample, histogram + "_count")
    return value(sample, histogram + "_sum") / count if count else None


def buckets(sample: Sample, name: str) -> list[tuple[float, float]]:
    """[(upper bound, cumulative count)] of histogram `name`, sorted by bound."""
    out = []
    for (n, ls), v in sample.items():
        if n == name + "_bucket":
            le = dict(ls).get("le")
            if le is not None:
                out.append((math.inf if le == "+Inf" else float(le), v))
    return sorted(out)


def count_above(bucket_counts: list[tuple[float, float]], bound: float) -> float | None:
    """How many observations exceeded `bound`, one of the histogram's bucket bounds (None before
    the first observation)."""
    cumulative = dict(bucket_counts)
    if not cumulative.get(math.inf):
        return None
    assert bound in cumulative, (bound, list(cumulative))
    return cumulative[math.inf] - cumulative[bound]


def quantile(q: float, bucket_counts: list[tuple[float, float]]) -> float | None:
    """Linear interpolation inside the bucket holding the q-th observation, like histogram_quantile."""
    if not bucket_counts or bucket_counts[-1][1] <= 0:
        return None
    total = bucket_counts[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in bucket_counts:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            in_bucket = count - prev_count
            if in_bucket <= 0:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / in_bucket
        prev_bound, prev_count = bound, count
    return prev_bound


def delta_buckets(now: list[tuple[float, float]], before: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The bucket counts observed between two samples of one histogram."""
    old = dict(before)
    return [(b, c - old.get(b, 0.0)) for b, c in now]


@dataclass
class RateTracker:
    """Turns one node's successive samples into per-interval figures for the charts."""

    last: Sample | None = None
    last_t: float = 0.0
    history: list[dict] = field(default_factory=list)

    def update(self, sample: Sample, t: float) -> dict | None:
        before, before_t = self.last, self.last_t
        self.last, self.last_t = sample, t
        if before is None or t <= before_t:
            return None
        committed = value(sample, "raft_propose_to_commit_seconds_count")
        committed_before = value(before, "raft_propose_to_commit_seconds_count")
        if committed < committed_before:
            return None  # the node restarted: its counters began again from zero
        dt = t - before_t
        commit = delta_buckets(buckets(sample, "raft_propose_to_commit_seconds"),
                                buckets(before, "raft_propose_to_commit_seconds"))
        p50, p99 = quantile(0.5, commit), quantile(0.99, commit)
        leaderless = value(sample, "raft_leaderless_seconds_total") - value(before, "raft_leaderless_seconds_total")
        return {
            "interval": round(dt, 3),
            "writesPerSecond": round((committed - committed_before) / dt, 2),
            "commitP50Ms": None if p50 is None else round(p50 * 1000, 2),
            "commitP99Ms": None if p99 is None else round(p99 * 1000, 2),
            "leaderlessSeconds": round(max(0.0, leaderless), 3),
            "isLeader": value(sample, "raft_is_leader") >= 1,
            "hasLeader": value(sample, "raft_has_leader") >= 1,
            "elections": value(sample, "raft_elections_started_total"),
            "dropped": value(sample, "raft_messages_dropped_total"),
            "fsyncP50Ms": _ms(quantile(0.5, delta_buckets(buckets(sample, "raft_wal_fsync_seconds"),
                                                           buckets(before, "raft_wal_fsync_seconds")))),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)
