"""`raftkv member list|add|promote|remove` as a person types them, against a real cluster.

A node joins the way the runbook says (`raftkv node --join ...` in its own process, on free
ports), shows up as a learner with its lag, is promoted by name and removed by name; the table
and `--json` come from the leader, which alone knows how far behind each member is. Refusals
print the cluster's own message and exit 1; no endpoint answering is one clear line and exit 1.
Every test leaves the cluster as it found it (three voters), so they share one.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import LocalCluster

from raftkv.supervisor import free_ports

pytestmark = pytest.mark.timeout(120)

MEMBER_ID = re.compile(r"^node\d-[0-9a-f]{16}$")


def raftkv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raftkv", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def wait_until(what: str, check: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout_s} s (last: {last!r})")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("members") / "data", nodes=3).start()
    try:
        c.wait_for_leader(30)
        yield c
    finally:
        c.stop()


@pytest.fixture
def member(cluster: LocalCluster) -> Callable[..., subprocess.CompletedProcess]:
    """`raftkv member ...` against every node of the cluster."""
    endpoints = ",".join(url.removeprefix("http://") for url in cluster.urls.values())
    return lambda *args: raftkv("member", *args, "--endpoints", endpoints)


def listed(member: Callable[..., subprocess.CompletedProcess]) -> dict[str, dict]:
    """`member list --json`: the members by name."""
    out = member("list", "--json")
    assert out.returncode == 0, out
    return {m["name"]: m for m in json.loads(out.stdout)["members"]}


def test_list_prints_each_member_with_role_leader_urls_and_lag(
        member: Callable[..., subprocess.CompletedProcess], cluster: LocalCluster) -> None:
    leader = cluster.wait_for_leader()
    out = member("list")
    assert out.returncode == 0, out
    header, *rows = out.stdout.splitlines()
    assert re.split(r"\s{2,}", header) == ["ID", "NAME", "ROLE", "LEADER", "CLIENT URL", "PEER URL", "MATCH", "LAG"]
    # members the module's other tests added and removed are named on a last line of their own
    removed = rows.pop().removeprefix("removed for good: ").split(", ") if rows[-1].startswith("removed ") else []
    assert len(rows) == 3, out.stdout
    for row, m in zip(rows, cluster.members, strict=True):
        cells = row.split()
        assert cells[:3] == [m.id, m.id, "voter"], row
        assert cells[3] == ("yes" if m.id == leader else "-"), row
        assert cells[4:6] == [m.url, f"127.0.0.1:{m.raft_port}"], row
        if m.id == leader:  # the leader is what the others' lag is measured against
            assert cells[6:] == ["-", "-"], row
        else:
            assert cells[6].isdigit() and cells[7].isdigit(), f"the lag comes from the leader: {row}"
    view = json.loads(member("list", "--json").stdout)
    assert view["leader"] == leader and view["node"] == leader and view["removedIDs"] == removed


def test_a_joining_node_is_listed_as_a_learner_then_promoted_and_removed_by_name(
        member: Callable[..., subprocess.CompletedProcess], cluster: LocalCluster, tmp_path: Path) -> None:
    http_port, raft_port = free_ports(2)
    url = f"http://127.0.0.1:{http_port}"
    log = open(tmp_path / "node4.log", "wb")  # noqa: SIM115 - handed to the child process
    joiner = subprocess.Popen(
        [sys.executable, "-m", "raftkv", "node", "--join", cluster.url("node1"), "--name", "node4",
         "--advertise-client", url, "--advertise-peer", f"127.0.0.1:{raft_port}", "--data-dir", str(tmp_path / "n4")],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    try:
        learner = wait_until("node4 listed as a learner", lambda: listed(member).get("node4"))
        assert learner["role"] == "learner" and MEMBER_ID.match(learner["id"]) and learner["clientURL"] == url
        assert isinstance(learner["lagEntries"], int), learner
        table = member("list").stdout
        assert re.search(rf"^{learner['id']}\s+node4\s+learner\s+-\s+{url}\s+127\.0\.0\.1:{raft_port}\s+\d+\s+\d+$",
                         table, re.M), table

        promoted = wait_until("node4 promoted once caught up", lambda: (out := member("promote", "node4"))
                              .returncode == 0 and out)
        assert promoted.stdout == f"promoted node4 ({learner['id']}) to voter\n"
        assert listed(member)["node4"]["role"] == "voter"

        removed = member("remove", "node4")
        assert removed.returncode == 0, removed
        assert removed.stdout.startswith(f"removed {learner['id']} from the cluster; members now: node1 (voter), ")
        out = member("list")
        *table, removed_line = out.stdout.splitlines()  # with any the module's other tests removed
        assert "node4" not in "\n".join(table), out.stdout
        assert learner["id"] in removed_line.removeprefix("removed for good: ").split(", "), out.stdout
    finally:
        joiner.terminate()
        joiner.wait(15)
    assert set(listed(member)) == {"node1", "node2", "node3"}


def test_add_prints_the_new_id_and_the_command_that_starts_the_node(
        member: Callable[..., subprocess.CompletedProcess], cluster: LocalCluster) -> None:
    http_port, raft_port = free_ports(2)
    out = member("add", "node5", "--client-url", f"http://127.0.0.1:{http_port}",
                 "--peer-url", f"127.0.0.1:{raft_port}")
    assert out.returncode == 0, out
    first, intro, command = out.stdout.splitlines()
    new_id = first.removeprefix("added node5 as a learner: id ")
    assert MEMBER_ID.match(new_id), first
    assert intro == "start it on its machine with:"
    assert re.fullmatch(rf"  raftkv node --join http://127\.0\.0\.1:\d+ --name node5 --advertise-client "
                        rf"http://127\.0\.0\.1:{http_port} --advertise-peer 127\.0\.0\.1:{raft_port}", command), command
    assert listed(member)["node5"]["role"] == "learner"
    assert member("remove", new_id).returncode == 0  # by id, as printed

    voter = member("add", "node6", "--voter", "--json", "--client-url", f"http://127.0.0.1:{http_port}",
                   "--peer-url", f"127.0.0.1:{raft_port}")
    assert voter.returncode == 0, voter
    assert json.loads(voter.stdout)["member"]["role"] == "voter"
    assert member("remove", "node6").returncode == 0
    assert set(listed(member)) == {"node1", "node2", "node3"}


def test_update_moves_a_member_to_a_new_peer_address_and_says_how_to_restart_it(
        member: Callable[..., subprocess.CompletedProcess]) -> None:
    http_port, raft_port, new_port = free_ports(3)
    assert member("add", "node8", "--client-url", f"http://127.0.0.1:{http_port}",
                  "--peer-url", f"127.0.0.1:{raft_port}").returncode == 0
    try:
        out = member("update", "node8", "--peer-url", f"127.0.0.1:{new_port}")
        assert out.returncode == 0, out
        moved, intro, command = out.stdout.splitlines()
        assert re.fullmatch(rf"node8 \(node8-[0-9a-f]{{16}}\) is now reached by its peers at 127\.0\.0\.1:{new_port}",
                            moved), moved
        assert intro.startswith("restart its node listening there")
        assert command == f"  raftkv node ... --listen-peer 127.0.0.1:{new_port}"
        assert listed(member)["node8"]["peerURL"] == f"127.0.0.1:{new_port}"
    finally:
        assert member("remove", "node8").returncode == 0


@pytest.mark.parametrize(("args", "status", "message"), [
    (("promote", "node1"), "409 (not_learner)", "node1 is a voter already, not a learner"),
    (("remove", "node9"), "404 (unknown)", "no member 'node9'"),
    (("add", "node1", "--client-url", "http://127.0.0.1:1", "--peer-url", "127.0.0.1:2"), "409 (duplicate)",
     "name is already node1's"),
    (("add", "node7", "--client-url", "ftp://x", "--peer-url", "127.0.0.1:2"), "400 (invalid)",
     "clientURL: expected http://host:port"),
    (("update", "node9", "--peer-url", "127.0.0.1:3"), "404 (unknown)", "no member 'node9'"),
    (("update", "node1", "--peer-url", "nowhere"), "400 (invalid)", "peerURL: expected host:port"),
])
def test_a_refusal_prints_the_clusters_message_and_exits_1(
        member: Callable[..., subprocess.CompletedProcess], args: tuple[str, ...], status: str, message: str) -> None:
    out = member(*args)
    assert out.returncode == 1 and out.stdout == "", out
    assert out.stderr.startswith(f"error {status}: ") and message in out.stderr, out.stderr


def test_no_endpoint_reachable_is_one_clear_line_and_exit_1() -> None:
    endpoint = f"127.0.0.1:{free_ports(1)[0]}"
    for args in (("list",), ("remove", "node2"), ("add", "n", "--client-url", "http://a:1", "--peer-url", "a:2")):
        out = raftkv("member", *args, "--endpoints", endpoint)
        assert out.returncode == 1 and out.stdout == "", out
        [line] = out.stderr.splitlines()
        assert line.startswith(f"Error: no endpoint answered: http://{endpoint}: "), line
