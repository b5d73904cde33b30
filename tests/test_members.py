"""Membership on real processes: grow and shrink a live cluster under write load, replace a dead
machine, and a learner that never counts toward a quorum.

New members join as the runbook says: `raftkv node --join URL --name N --advertise-client ...
--advertise-peer ...` on fresh ports and a fresh data directory, then `POST /members/{id}/promote`
once caught up. Every acknowledged write must be readable, with its value, on every member at
the end.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cluster import LocalCluster, Writer, http

from raftkv.supervisor import free_ports

pytestmark = pytest.mark.timeout(240)


class Joiner:
    """A node started with --join, ended by its PID."""

    def __init__(self, name: str, join_url: str, data_dir: Path, ports: tuple[int, int] | None = None) -> None:
        self.name = name
        http_port, raft_port = ports or free_ports(2)
        self.url = f"http://127.0.0.1:{http_port}"
        self.log_path = data_dir.parent / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "raftkv", "node", "--join", join_url, "--name", name,
                 "--advertise-client", self.url, "--advertise-peer", f"127.0.0.1:{raft_port}",
                 "--data-dir", str(data_dir), "--enable-fault-injection"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def listed_as_learner(self, cluster_url: str) -> bool:
        """Whether the cluster lists this node as a learner; a node that gave up fails the test with its log."""
        if self.proc.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
        return any(m["name"] == self.name and m["role"] == "learner" for m in members(cluster_url)["members"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def joiners() -> Iterator[list[Joiner]]:
    started: list[Joiner] = []
    yield started
    for joiner in started:
        joiner.stop()


def members(url: str) -> dict:
    status, body = http("GET", f"{url}/members")
    assert status == 200, body
    return body


def member_id(url: str, name: str) -> str:
    return next(m["id"] for m in members(url)["members"] if m["name"] == name)


def until(what: str, check: object, timeout_s: float = 30.0) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()  # type: ignore[operator]
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.1)


def join_and_promote(cluster_url: str, joiner: Joiner) -> str:
    until(f"{joiner.name} listed as a learner", lambda: joiner.listed_as_learner(cluster_url))
    new_id = member_id(cluster_url, joiner.name)

    def promoted() -> bool:
        status, body = http("POST", f"{cluster_url}/members/{new_id}/promote", timeout=10)
        assert status in (200, 409), body  # 409: not caught up yet (or a change pending); retried
        return status == 200

    until(f"{joiner.name} promoted", promoted)
    return new_id


def all_readable(urls: list[str], acknowledged: dict[str, int]) -> None:
    for url in urls:
        for key, value in acknowledged.items():
            status, body = http("GET", f"{url}/kv/{key}")
            assert status == 200 and body["value"] == value, (url, key, status, body)


def test_grow_3_to_5_then_shrink_to_3_removing_the_leader_under_write_load(
        cluster: LocalCluster, joiners: list[Joiner], tmp_path: Path) -> None:
    cluster.wait_for_leader()
    first = cluster.url("node1")
    writer = Writer(list(cluster.urls.values()))
    writer.start()
    for name in ("node4", "node5"):
        joiners.append(Joiner(name, first, tmp_path / name))
        join_and_promote(first, joiners[-1])
    view = members(first)
    assert sorted(m["role"] for m in view["members"]) == ["voter"] * 5

    leader = view["leader"]
    assert leader in cluster.urls, leader  # a founding member leads: removing it tests the hand-over
    status, body = http("DELETE", f"{first}/members/{leader}", timeout=15)
    assert status == 200 and body["removed"] == leader, body
    other = next(n for n in cluster.urls if n != leader)
    status, body = http("DELETE", f"{joiners[0].url}/members/{other}", timeout=15)
    assert status == 200, body
    survivors = [u for n, u in cluster.urls.items() if n not in (leader, other)] + [j.url for j in joiners]
    writer.urls = survivors
    time.sleep(1)  # writes keep flowing through the three that remain
    acknowledged = writer.stop()

    view = members(survivors[0])
    assert len(view["members"]) == 3 and {leader, other} <= set(view["removedIDs"])
    assert view["leader"] not in (leader, other)
    for removed in (leader, other):  # a removed node learns it and says why
        until(f"{removed} knows it was removed", lambda r=removed: (cluster.state(r) or {}).get("removed"), 20)
    all_readable(survivors, acknowledged)


def test_replace_a_dead_machine_and_every_acknowledged_write_survives(
        cluster: LocalCluster, joiners: list[Joiner], tmp_path: Path) -> None:
    """The runbook: kill -9 a node, wipe its disk, remove it, add a new one under the same name,
    promote it once caught up. The new incarnation has a new id: the old one can never count."""
    cluster.wait_for_leader()
    first = cluster.url("node1")
    writer = Writer([first, cluster.url("node2")])
    writer.start()
    time.sleep(0.5)
    cluster.supervisor.kill("node3")
    shutil.rmtree(cluster.data_dir / "node3")
    status, body = http("DELETE", f"{first}/members/node3", timeout=15)
    assert status == 200, body
    joiners.append(Joiner("node3", first, tmp_path / "node3-new"))
    new_id = join_and_promote(first, joiners[0])
    assert new_id != "node3" and new_id.startswith("node3-")
    acknowledged = writer.stop()
    view = members(first)
    assert "node3" in view["removedIDs"] and sorted(m["role"] for m in view["members"]) == ["voter"] * 3
    all_readable([first, cluster.url("node2"), joiners[0].url], acknowledged)


def test_a_learner_never_counts_toward_a_quorum(cluster: LocalCluster, joiners: list[Joiner], tmp_path: Path) -> None:
    """Three voters and a learner: cut the learner off and writes still commit with the same
    voters; with two voters down, the leader and the learner are two of four nodes but one of
    three voters, so nothing may commit."""
    leader = cluster.wait_for_leader()
    joiners.append(Joiner("learner", cluster.url(leader), tmp_path / "learner"))
    until("the learner caught up", lambda: any(
        m["name"] == "learner" and m.get("lagEntries") == 0 for m in members(cluster.url(leader))["members"]))
    until("the learner answers", lambda: _answers(joiners[0].url))
    assert http("POST", joiners[0].url + "/simulate-partition", {"partitioned": True})[0] == 200
    status, body = http("PUT", f"{cluster.url(leader)}/kv/without-the-learner", {"value": 1}, timeout=10)
    assert status == 200, body
    assert http("POST", joiners[0].url + "/simulate-partition", {"partitioned": False})[0] == 200
    for node in cluster.urls:
        if node != leader:
            cluster.supervisor.kill(node)
    status, body = http("PUT", f"{cluster.url(leader)}/kv/needs-two-voters", {"value": 1}, timeout=15)
    assert status in (503, 504), (status, body)
    status, body = http("GET", f"{joiners[0].url}/kv/needs-two-voters?stale=true")
    assert status == 404, body  # not applied anywhere, the learner included


def test_a_node_joins_as_the_member_added_for_it(cluster: LocalCluster, joiners: list[Joiner], tmp_path: Path) -> None:
    """`raftkv member add` first, then the node's own --join with the same name and addresses:
    the node takes over the member added for it instead of being refused as a duplicate."""
    leader = cluster.wait_for_leader()
    http_port, raft_port = free_ports(2)
    status, added = http("POST", cluster.url(leader) + "/members", {
        "name": "node4", "clientURL": f"http://127.0.0.1:{http_port}", "peerURL": f"127.0.0.1:{raft_port}"})
    assert status == 200, added
    joiners.append(Joiner("node4", cluster.url(leader), tmp_path / "node4", (http_port, raft_port)))
    until("node4 serves as the member added for it",
          lambda: (http("GET", joiners[0].url + "/raft-state")[1] or {}).get("nodeId") == added["member"]["id"]
          if _answers(joiners[0].url) else False)
    assert [m["name"] for m in members(cluster.url(leader))["members"]].count("node4") == 1


def test_a_joiner_asks_again_while_the_cluster_cannot_add_it_and_joins_once_it_can(
        cluster: LocalCluster, joiners: list[Joiner], tmp_path: Path) -> None:
    """With both followers cut off, nothing commits and soon no node leads: the cluster answers a
    join 503 or 504, which pass by themselves. The joining node says so, keeps asking, and joins
    once the followers are back, instead of exiting on the first refusal."""
    leader = cluster.wait_for_leader()
    followers = [n for n in cluster.urls if n != leader]
    for node in followers:
        assert http("POST", cluster.url(node) + "/simulate-partition", {"partitioned": True})[0] == 200
    joiners.append(Joiner("node4", cluster.url(leader), tmp_path / "node4"))
    until("node4 says it asks again", lambda: "asking again" in joiners[0].log_path.read_text())
    assert joiners[0].proc.poll() is None, joiners[0].log_path.read_text()
    for node in followers:
        assert http("POST", cluster.url(node) + "/simulate-partition", {"partitioned": False})[0] == 200
    until("node4 listed as a learner", lambda: joiners[0].listed_as_learner(cluster.url(leader)))


def _answers(url: str) -> bool:
    try:
        return http("GET", url + "/health", timeout=1)[0] in (200, 503)
    except OSError:
        return False


def test_a_joiner_replaying_the_log_from_the_start_answers_a_leader_added_later(
        cluster: LocalCluster, joiners: list[Joiner], tmp_path: Path) -> None:
    """No snapshot yet, so node5 replays the log from index 1, whose first entries name only the
    founders; node4, added later, leads. The writes before node4's addition make the log arrive in
    several appends (512 entries each), so node5 applies the founders' entries well before the one
    that names node4: it must answer node4 from the member list it joined with until then, and
    again after a restart."""
    first = cluster.url(cluster.wait_for_leader())
    with ThreadPoolExecutor(16) as pool:
        statuses = set(pool.map(lambda i: http("PUT", f"{first}/kv/before-{i}", {"value": i}, timeout=10)[0],
                                range(1200)))
    assert statuses == {200}, statuses
    joiners.append(Joiner("node4", first, tmp_path / "node4"))
    node4_id = join_and_promote(first, joiners[0])
    until("node4 answers", lambda: _answers(joiners[0].url))

    def node4_leads() -> bool:
        if members(first)["leader"] != node4_id:
            http("POST", f"{joiners[0].url}/force-election", timeout=10)
            time.sleep(0.5)
        return members(first)["leader"] == node4_id

    until("node4 leads", node4_leads)
    node5_ports = free_ports(2)
    node5 = Joiner("node5", joiners[0].url, tmp_path / "node5", node5_ports)
    joiners.append(node5)
    node5_id = join_and_promote(joiners[0].url, node5)
    until("node5 answers", lambda: _answers(node5.url))
    status, body = http("PUT", f"{node5.url}/kv/through-node5", {"value": 5}, timeout=10)
    assert status == 200, body

    node5.stop()
    joiners.append(Joiner("node5", joiners[0].url, tmp_path / "node5", node5_ports))
    until("node5 answers again", lambda: _answers(joiners[-1].url))
    until("node5 follows node4 again", lambda: http("GET", joiners[-1].url + "/raft-state")[1]["leaderId"] == node4_id)
    status, body = http("GET", f"{joiners[-1].url}/kv/through-node5", timeout=10)  # a ReadIndex round with node4
    assert status == 200 and body["value"] == 5, body
    assert http("GET", joiners[-1].url + "/raft-state")[1]["nodeId"] == node5_id


def test_a_member_moved_to_a_new_peer_address_is_reached_there_once_its_node_listens_there(
        cluster: LocalCluster) -> None:
    """etcd's `member update`: the cluster records the new address through the log and every node
    dials it there; the member's node, restarted with --listen-peer on it, catches up over it. The
    change may be asked of any node (a follower hands it to the leader)."""
    leader = cluster.wait_for_leader()
    moved, asked = [m.id for m in cluster.members if m.id != leader]
    new_port, taken = free_ports(1)[0], cluster.supervisor.nodes[leader].member.raft_port
    status, body = http("PATCH", f"{cluster.url(asked)}/members/{moved}", {"peerURL": f"127.0.0.1:{taken}"})
    assert status == 409 and body["reason"] == "duplicate" and body["field"] == "peerURL", body
    assert http("PATCH", f"{cluster.url(asked)}/members/nobody", {"peerURL": f"127.0.0.1:{new_port}"})[0] == 404
    status, body = http("PATCH", f"{cluster.url(asked)}/members/{moved}", {"peerURL": f"127.0.0.1:{new_port}"},
                        timeout=15)
    assert status == 200 and body["member"]["peerURL"] == f"127.0.0.1:{new_port}", body
    cluster.supervisor.kill(moved)
    status, body = http("PUT", f"{cluster.url(leader)}/kv/after-the-move", {"value": 1}, timeout=10)
    assert status == 200, body
    cluster.supervisor.nodes[moved].extra_args += ["--listen-peer", f"127.0.0.1:{new_port}"]
    cluster.supervisor.start(moved)
    until(f"{moved} has the write made while it was down, through its new address",
          lambda: _answers(cluster.url(moved))
          and http("GET", f"{cluster.url(moved)}/kv/after-the-move?stale=true")[0] == 200)
    # It acknowledges new entries over the new address: with the other follower down, the leader
    # and it are the majority.
    cluster.supervisor.kill(asked)
    status, body = http("PUT", f"{cluster.url(leader)}/kv/with-the-moved-member", {"value": 2}, timeout=15)
    assert status == 200, body
    listed = next(m for m in members(cluster.url(moved))["members"] if m["id"] == moved)
    assert listed["peerURL"] == f"127.0.0.1:{new_port}", listed
