"""`GET /metrics` on a real 3-node cluster: it parses as Prometheus text, has the families issue 6
lists, and its counters move when the cluster does (an election, writes, fsyncs)."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator

import pytest
from cluster import LocalCluster, http
from prometheus_client.parser import text_string_to_metric_families

# Family names as the parser reports them (counters without their `_total` suffix).
EXPECTED_FAMILIES = {
    "raft_term": "gauge",
    "raft_role": "gauge",
    "raft_is_leader": "gauge",
    "raft_leader_changes": "counter",
    "raft_elections_started": "counter",
    "raft_elections_won": "counter",
    "raft_election_duration_seconds": "histogram",
    "raft_heartbeats_sent": "counter",
    "raft_heartbeats_received": "counter",
    "raft_heartbeat_interval_seconds": "histogram",
    "raft_peer_lag_entries": "gauge",
    "raft_peer_last_contact_seconds": "gauge",
    "raft_leaderless_seconds": "counter",
    "raft_failover_seconds": "histogram",
    "raft_proposals": "counter",
    "raft_propose_to_commit_seconds": "histogram",
    "raft_propose_to_apply_seconds": "histogram",
    "raft_read_index_seconds": "histogram",
    "raft_wal_fsync_seconds": "histogram",
    "raft_wal_fsync_batch_entries": "histogram",
    "raft_snapshots": "counter",
    "raft_snapshot_duration_seconds": "histogram",
    "raft_snapshot_bytes": "gauge",
    "raft_http_requests": "counter",
    "raft_http_request_seconds": "histogram",
}


def scrape(url: str) -> dict[str, dict[str, float]]:
    """family name -> {sample name with sorted labels: value}; also checks the text parses."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    families: dict[str, dict[str, float]] = {}
    types: dict[str, str] = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        samples = families.setdefault(fam.name, {})
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    families["__types__"] = types  # type: ignore[assignment]
    return families


def total(families: dict, family: str, sample: str) -> float:
    """Sum of one sample name across its label sets (e.g. a histogram's `_count`)."""
    return sum(v for k, v in families.get(family, {}).items() if k.split("{", 1)[0] == sample)


def wait_for(what: str, probe, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout_s} s")


@pytest.fixture
def three(tmp_path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path / "data", nodes=3).start()
    try:
        c.wait_for_leader()
        yield c
    finally:
        c.stop()


def test_metrics_parse_and_have_the_listed_families(three: LocalCluster) -> None:
    for node_id, url in three.urls.items():
        families = scrape(url)
        types = families["__types__"]
        missing = sorted(set(EXPECTED_FAMILIES) - set(types))
        assert not missing, f"{node_id} lacks {missing}"
        wrong = {f: (types[f], t) for f, t in EXPECTED_FAMILIES.items() if types[f] != t}
        assert not wrong, f"{node_id}: families of the wrong type (got, want): {wrong}"
        assert total(families, "raft_term", "raft_term") >= 1
    leader = three.wait_for_leader()
    assert total(scrape(three.url(leader)), "raft_is_leader", "raft_is_leader") == 1


def test_an_election_moves_the_election_counters(three: LocalCluster) -> None:
    leader = three.wait_for_leader()
    follower = next(m.id for m in three.members if m.id != leader)
    before = {n: scrape(u) for n, u in three.urls.items()}
    status, body = http("POST", three.url(follower) + "/force-election")
    assert status == 200, body
    assert three.wait_for_leader() == follower

    def moved() -> dict | None:
        after = scrape(three.url(follower))
        started = total(after, "raft_elections_started", "raft_elections_started_total")
        changes = total(after, "raft_leader_changes", "raft_leader_changes_total")
        b = before[follower]
        if started > total(b, "raft_elections_started", "raft_elections_started_total") and changes > total(
            b, "raft_leader_changes", "raft_leader_changes_total"
        ):
            return after
        return None

    after = wait_for("elections_started and leader_changes move on the new leader", moved)
    assert total(after, "raft_elections_won", "raft_elections_won_total") > total(
        before[follower], "raft_elections_won", "raft_elections_won_total"
    )
    assert total(after, "raft_election_duration_seconds", "raft_election_duration_seconds_count") >= 1
    # The old leader saw the leader change too.
    wait_for(
        "leader_changes moves on the old leader",
        lambda: (
            total(scrape(three.url(leader)), "raft_leader_changes", "raft_leader_changes_total")
            > total(before[leader], "raft_leader_changes", "raft_leader_changes_total")
        ),
    )


def test_writes_move_commit_latency_and_fsync_counts(three: LocalCluster) -> None:
    leader = three.wait_for_leader()
    before = {n: scrape(u) for n, u in three.urls.items()}
    writes = 20
    for i in range(writes):
        status, body = http("PUT", three.url(leader) + f"/kv/metrics-{i}", {"value": i})
        assert status == 200, body
    after = scrape(three.url(leader))

    def moved(family: str, sample: str, node: str = leader, fams: dict | None = None) -> float:
        return total(fams or after, family, sample) - total(before[node], family, sample)

    assert moved("raft_propose_to_apply_seconds", "raft_propose_to_apply_seconds_count") >= writes
    assert moved("raft_propose_to_commit_seconds", "raft_propose_to_commit_seconds_count") >= writes
    assert moved("raft_proposals", "raft_proposals_total") >= writes
    # The leader writes in parallel with its followers, and two followers alone are a durable
    # majority: a write may be acknowledged just before the leader's own fsync of it completes.
    wait_for(
        "the leader fsyncs every write",
        lambda: (
            moved("raft_wal_fsync_batch_entries", "raft_wal_fsync_batch_entries_sum", leader, scrape(three.url(leader)))
            >= writes
        ),
    )
    assert moved("raft_wal_fsync_seconds", "raft_wal_fsync_seconds_count") >= 1
    assert moved("raft_http_requests", "raft_http_requests_total") >= writes

    # A write sent to a follower is forwarded: the leader times its commit (so the leader's
    # figures, which the dashboard charts, are the cluster's), the follower its client's wait.
    follower = next(m.id for m in three.members if m.id != leader)
    leader_before, follower_before = scrape(three.url(leader)), scrape(three.url(follower))
    for i in range(writes):
        status, body = http("PUT", three.url(follower) + f"/kv/forwarded-{i}", {"value": i})
        assert status == 200 and body["forwardedBy"] == follower, body
    leader_after, follower_after = scrape(three.url(leader)), scrape(three.url(follower))

    def delta(fams_after: dict, fams_before: dict, family: str, sample: str) -> float:
        return total(fams_after, family, sample) - total(fams_before, family, sample)

    commit = ("raft_propose_to_commit_seconds", "raft_propose_to_commit_seconds_count")
    applied = ("raft_propose_to_apply_seconds", "raft_propose_to_apply_seconds_count")
    assert delta(leader_after, leader_before, *commit) >= writes
    assert delta(follower_after, follower_before, *commit) == 0
    assert delta(follower_after, follower_before, *applied) >= writes
    assert delta(follower_after, follower_before, "raft_proposals", "raft_proposals_total") >= writes
    # Followers fsync what they replicate too.
    for m in three.members:
        if m.id != leader:
            wait_for(
                f"{m.id} fsyncs the replicated writes",
                lambda n=m.id: (
                    moved("raft_wal_fsync_seconds", "raft_wal_fsync_seconds_count", n, scrape(three.url(n))) >= 1
                ),
            )


def test_per_peer_lag_seconds_and_rtt(three: LocalCluster) -> None:
    leader = three.wait_for_leader()
    time.sleep(0.5)  # a few heartbeat round trips
    text = urllib.request.urlopen(three.url(leader) + "/metrics", timeout=10).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    rtt = {s.labels["peer"]: s.value for s in families["raft_peer_rtt_seconds"].samples if s.name.endswith("_count")}
    assert set(rtt) == {n for n in three.urls if n != leader} and all(v > 0 for v in rtt.values()), rtt
    lag = {s.labels["peer"]: s.value for s in families["raft_peer_lag_seconds"].samples}
    assert set(lag) == set(rtt) and all(0 <= v < 5 for v in lag.values()), lag
