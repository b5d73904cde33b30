"""etcd's own command line client (Debian's etcdctl, installed by ./dev test) against a real
3-node raftkv cluster serving etcd's v3 gRPC API: keys, ranges and revisions, txn in etcdctl's
interactive syntax, watch across a restart of the watched node, leases with attached keys, lock
and elect (which etcdctl builds from leases, txns and watches on the client side), members,
endpoint status and health, compaction, keys of any bytes and `check perf`'s load, and etcd's error
messages; then the same API through aetcd, a Python client library for etcd, and etcd's JSON
gateway on the client port, as curl and the etcd3gw library use it.

One cluster serves the whole module; each test uses keys of its own.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from click.testing import CliRunner
from cluster import LocalCluster, http

from raftkv.check import Operation, check_history
from raftkv.cli import main as cli_main
from raftkv.etcd.convert import prefix_end
from raftkv.etcd.pb import kv_pb2, rpc_pb2, rpc_pb2_grpc
from raftkv.node.backup import BackupError, read_backup
from raftkv.node.config import Member
from raftkv.supervisor import NodeProcess, Supervisor, free_ports

pytestmark = pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl not installed (./dev test does)")

ETCDCTL_ENV = {"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


class Etcdctl:
    def __init__(self, cluster: LocalCluster, endpoints: dict[str, str]) -> None:
        self.cluster = cluster
        self.endpoints = endpoints  # node id -> host:port of its etcd API

    def args(self, *args: str, endpoint: str | None = None) -> list[str]:
        endpoints = self.endpoints[endpoint] if endpoint else ",".join(self.endpoints.values())
        return ["etcdctl", "--endpoints", endpoints, "--dial-timeout", "10s", "--command-timeout", "10s", *args]

    def run(self, *args: str, stdin: str | None = None, endpoint: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.args(*args, endpoint=endpoint), input=stdin, capture_output=True, text=True,
                              timeout=30, env=ETCDCTL_ENV)
        if check:
            assert done.returncode == 0, f"etcdctl {' '.join(args)}: {done.stderr}"
        return done

    def out(self, *args: str, **kwargs: object) -> str:
        return self.run(*args, **kwargs).stdout  # type: ignore[arg-type]

    def json(self, *args: str, **kwargs: object) -> dict:
        return json.loads(self.out(*args, "-w", "json", **kwargs))

    def background(self, *args: str, endpoint: str | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(self.args(*args, endpoint=endpoint), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=ETCDCTL_ENV)


@pytest.fixture(scope="module")
def etcdctl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcdctl]:
    cluster = LocalCluster(Path(tmp_path_factory.mktemp("etcdctl")), nodes=3)
    endpoints = cluster.serve_etcd()
    cluster.start()
    try:
        cluster.wait_for_leader()
        yield Etcdctl(cluster, endpoints)
    finally:
        cluster.stop()


def _lines(text: str) -> list[str]:
    return text.splitlines()


def _read_lines(proc: subprocess.Popen[str], count: int, timeout_s: float) -> list[str]:
    """The first `count` lines `proc` prints, or those printed within `timeout_s` (it keeps running)."""
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if len(lines) == count:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    return list(lines)


def test_put_get_del_with_prefixes_revisions_and_options(etcdctl: Etcdctl) -> None:
    first = etcdctl.json("put", "kv/a", "1")["header"]["revision"]
    etcdctl.out("put", "kv/b", "2")
    etcdctl.out("put", "kv/a", "one")
    etcdctl.out("put", "kw", "outside")
    assert _lines(etcdctl.out("get", "kv/", "--prefix")) == ["kv/a", "one", "kv/b", "2"]
    assert _lines(etcdctl.out("get", "kv/a", "--rev", str(first))) == ["kv/a", "1"]
    assert _lines(etcdctl.out("get", "kv/", "--prefix", "--keys-only")) == ["kv/a", "", "kv/b", ""]
    assert _lines(etcdctl.out("get", "kv/", "--prefix", "--limit", "1")) == ["kv/a", "one"]
    assert _lines(etcdctl.out("get", "kv/", "--prefix", "--order", "DESCEND", "--sort-by", "MODIFY",
                              "--consistency", "s")) == ["kv/a", "one", "kv/b", "2"]
    assert _lines(etcdctl.out("get", "kv/a", "kv/c")) == ["kv/a", "one", "kv/b", "2"]  # [key, range_end)
    got = etcdctl.json("get", "kv/", "--prefix", "--limit", "1")
    assert got["count"] == 2 and got["more"] is True and got["kvs"][0]["version"] == 2
    assert _lines(etcdctl.out("del", "kv/", "--prefix", "--prev-kv")) == ["2", "kv/a", "one", "kv/b", "2"]
    assert etcdctl.out("get", "kv/", "--prefix") == "" and _lines(etcdctl.out("get", "kw")) == ["kw", "outside"]
    assert etcdctl.out("del", "kv/absent") == "0\n"


def test_a_prefix_of_non_ascii_characters_is_a_range_of_bytes(etcdctl: Etcdctl) -> None:
    """etcdctl ends the prefix ru/п (d0 bf) at ru/ d0 c0, which is not UTF-8: compared as text,
    that end sorted after ru/слово and ru/中文 and `del --prefix` deleted them too."""
    first = etcdctl.json("put", "ru/пример", "1")["header"]["revision"]
    for key in ("ru/привет", "ru/слово", "ru/中文", "ru/zz"):
        etcdctl.out("put", key, "1")
    assert _lines(etcdctl.out("get", "ru/п", "--prefix", "--keys-only")) == ["ru/привет", "", "ru/пример", ""]
    assert _lines(etcdctl.out("get", "ru/", "--prefix", "--keys-only")) == [  # byte order
        "ru/zz", "", "ru/привет", "", "ru/пример", "", "ru/слово", "", "ru/中文", ""]
    watcher = etcdctl.background("watch", "ru/п", "--prefix", "--rev", str(first))
    try:
        assert _read_lines(watcher, 6, timeout_s=20) == ["PUT", "ru/пример", "1", "PUT", "ru/привет", "1"]
        assert etcdctl.out("del", "ru/п", "--prefix") == "2\n"
        assert _read_lines(watcher, 6, timeout_s=20) == ["DELETE", "ru/привет", "", "DELETE", "ru/пример", ""]
    finally:
        watcher.kill()
        watcher.communicate(timeout=10)
    assert _lines(etcdctl.out("get", "ru/", "--prefix", "--keys-only")) == ["ru/zz", "", "ru/слово", "", "ru/中文", ""]


def test_txn_in_interactive_syntax(etcdctl: Etcdctl) -> None:
    etcdctl.out("put", "txn/k", "v1")
    script = ('value("txn/k") = "v1"\nversion("txn/k") = "1"\n\n'  # compares, then the success ops,
              "put txn/k v2\nput txn/other x\nget txn/k\n\nput txn/failed y\n\n")  # then the failure ops
    assert _lines(etcdctl.out("txn", stdin=script)) == ["SUCCESS", "", "OK", "", "OK", "", "txn/k", "v2"]
    again = etcdctl.out("txn", stdin=script)
    assert _lines(again) == ["FAILURE", "", "OK"] and _lines(etcdctl.out("get", "txn/failed")) == ["txn/failed", "y"]
    mod = etcdctl.json("get", "txn/k")["kvs"][0]["mod_revision"]
    by_revision = f'mod("txn/k") = "{mod}"\ncreate("txn/k") < "{mod}"\n\ndel txn/k\n\n\n'
    assert _lines(etcdctl.out("txn", stdin=by_revision))[0] == "SUCCESS" and etcdctl.out("get", "txn/k") == ""


def test_watch_sees_every_change_across_a_restart_of_the_watched_node(etcdctl: Etcdctl) -> None:
    start = etcdctl.json("put", "w/0", "before")["header"]["revision"]
    watched = next(iter(etcdctl.endpoints))
    # Given only the watched node, etcdctl reconnects to it once it is back, and resumes.
    watcher = etcdctl.background("watch", "w/", "--prefix", "--prev-kv", "--rev", str(start), endpoint=watched)
    expected = ["PUT", "w/0", "before", "PUT", "w/1", "one", "PUT", "w/2", "two",
                "DELETE", "w/1", "one", "w/1", "", "PUT", "w/3", "three"]
    try:
        etcdctl.out("put", "w/1", "one")
        assert _read_lines(watcher, 6, timeout_s=20) == expected[:6]  # watching, before the restart
        etcdctl.cluster.supervisor.kill(watched)
        etcdctl.cluster.supervisor.start(watched)
        others = [n for n in etcdctl.endpoints if n != watched]
        etcdctl.out("put", "w/2", "two", endpoint=others[0])
        etcdctl.out("del", "w/1", endpoint=others[1])
        etcdctl.cluster.wait_for_leader()
        etcdctl.out("put", "w/3", "three")
        assert _read_lines(watcher, len(expected) - 6, timeout_s=30) == expected[6:]
    finally:
        watcher.kill()
        watcher.communicate(timeout=10)


def test_leases_grant_keep_alive_revoke_and_expire_with_their_keys(etcdctl: Etcdctl) -> None:
    granted = etcdctl.out("lease", "grant", "60")
    lease = re.match(r"lease ([0-9a-f]+) granted with TTL\(60s\)", granted).group(1)  # type: ignore[union-attr]
    etcdctl.out("put", "lease/a", "x", "--lease", lease)
    etcdctl.out("put", "lease/b", "y", "--lease", lease)
    assert "lease/a" in etcdctl.out("lease", "timetolive", lease, "--keys")
    assert f"lease {lease} keepalived with TTL(60)" in etcdctl.out("lease", "keep-alive", "--once", lease)
    assert lease in etcdctl.out("lease", "list")
    assert f"lease {lease} revoked" in etcdctl.out("lease", "revoke", lease)
    assert etcdctl.out("get", "lease/", "--prefix") == ""
    missing = etcdctl.run("lease", "revoke", lease, check=False)
    assert missing.returncode != 0 and "etcdserver: requested lease not found" in missing.stderr
    assert "already expired" in etcdctl.out("lease", "timetolive", lease)
    # 0 names no lease (etcd's ids are positive): not found, as any lease that is not there
    assert "already expired" in etcdctl.out("lease", "timetolive", "0")
    for args in (("revoke", "0"), ("keep-alive", "--once", "0")):
        missing = etcdctl.run("lease", *args, check=False)
        assert missing.returncode != 0 and "etcdserver: requested lease not found" in missing.stderr, args
    short = re.match(r"lease ([0-9a-f]+)", etcdctl.out("lease", "grant", "1")).group(1)  # type: ignore[union-attr]
    etcdctl.out("put", "lease/short", "z", "--lease", short)
    deadline = time.monotonic() + 10
    while etcdctl.out("get", "lease/short") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert etcdctl.out("get", "lease/short") == ""


def test_lock_is_held_by_one_client_at_a_time(etcdctl: Etcdctl) -> None:
    holder = etcdctl.background("lock", "locks/one")
    try:
        assert holder.stdout is not None and holder.stdout.readline().startswith("locks/one/")
        waiter = etcdctl.background("lock", "locks/one", "echo", "acquired")
        time.sleep(1.5)
        assert waiter.poll() is None  # still waiting for the holder
        holder.terminate()  # its session's lease is revoked as it exits: the lock passes on
        out, err = waiter.communicate(timeout=20)
        assert out.strip() == "acquired", err
    finally:
        holder.kill()


def test_elect_a_leader_and_observe_it(etcdctl: Etcdctl) -> None:
    candidate = etcdctl.background("elect", "elections/one", "first")
    try:
        assert candidate.stdout is not None and candidate.stdout.readline().startswith("elections/one/")
        observer = etcdctl.background("elect", "-l", "elections/one")
        assert observer.stdout is not None
        assert observer.stdout.readline().startswith("elections/one/") and observer.stdout.readline() == "first\n"
        observer.kill()
    finally:
        candidate.kill()


def test_a_campaign_that_is_a_new_clusters_first_write_wins_at_once(tmp_path: Path) -> None:
    """etcd's election recipe waits for the keys created before its own, asking for those created
    at or below its key's create revision - 1, where 0 means no bound. A new cluster's first key is
    at revision 2, as etcd's, so a campaign that is its first write wins at once instead of
    waiting for itself (it did, forever, while the first write was revision 1)."""
    cluster = LocalCluster(tmp_path, nodes=3)
    endpoints = cluster.serve_etcd()
    cluster.start()
    try:
        cluster.wait_for_leader()
        candidate = Etcdctl(cluster, endpoints).background("elect", "first", "me")
        try:
            won = _read_lines(candidate, 1, timeout_s=15)
            assert won and won[0].startswith("first/"), won
        finally:
            candidate.kill()
            candidate.wait()
    finally:
        cluster.stop()


def test_members_status_health_and_hashes(etcdctl: Etcdctl) -> None:
    members = etcdctl.json("member", "list")["members"]
    assert sorted(m["name"] for m in members) == ["node1", "node2", "node3"]
    assert sorted(url for m in members for url in m["clientURLs"]) == sorted(
        f"http://{e}" for e in etcdctl.endpoints.values())
    table = etcdctl.out("endpoint", "status", "-w", "table")
    assert table.count(" true |") == 1 and all(e in table for e in etcdctl.endpoints.values())
    statuses = etcdctl.json("endpoint", "status")
    leader_ids = {s["Status"]["leader"] for s in statuses}
    assert len(leader_ids) == 1 and leader_ids.pop() in {m["ID"] for m in members}
    health = etcdctl.run("endpoint", "health")
    assert health.stdout.count("is healthy") + health.stderr.count("is healthy") == 3
    etcdctl.cluster.wait_converged()
    hashes = {row["HashKV"].get("hash", 0) for row in etcdctl.json("endpoint", "hashkv")}  # 0 is left out
    assert len(hashes) == 1


def test_compaction_refuses_reads_below_it_with_etcds_error(etcdctl: Etcdctl) -> None:
    old = etcdctl.json("put", "compact/k", "1")["header"]["revision"]
    now = etcdctl.json("put", "compact/k", "2")["header"]["revision"]
    assert etcdctl.out("compaction", str(now)) == f"compacted revision {now}\n"
    refused = etcdctl.run("get", "compact/k", "--rev", str(old), check=False)
    assert refused.returncode != 0 and "etcdserver: mvcc: required revision has been compacted" in refused.stderr
    future = etcdctl.run("get", "compact/k", "--rev", str(now + 1000), check=False)
    assert "etcdserver: mvcc: required revision is a future revision" in future.stderr


def test_aetcd_client_library(etcdctl: Etcdctl) -> None:
    """etcd's API through aetcd, a Python client library, over gRPC. It runs in a process of its own:
    aetcd registers its own copy of etcd's protos, whose names clash with raftkv's in one process."""
    if importlib.util.find_spec("aetcd") is None:  # (not imported here: see above)
        pytest.skip("aetcd not installed (the test extra has it)")
    script = Path(__file__).with_name("aetcd_scenario.py")
    done = subprocess.run([sys.executable, str(script), next(iter(etcdctl.endpoints.values()))], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "scenario passed", done.stderr


def test_alarms_and_move_leader(etcdctl: Etcdctl) -> None:
    assert etcdctl.out("alarm", "list") == ""
    leader = etcdctl.cluster.wait_for_leader()
    members = {m["name"]: m["ID"] for m in etcdctl.json("member", "list")["members"]}
    target = next(name for name in members if name != leader)
    unknown = etcdctl.run("move-leader", "abc123", endpoint=leader, check=False)
    assert unknown.returncode != 0 and "etcdserver: bad leader transferee" in unknown.stderr, unknown.stderr
    moved = etcdctl.out("move-leader", f"{members[target]:x}", endpoint=leader)
    assert re.search(rf"Leadership transferred from +{members[leader]:x} to +{members[target]:x}", moved), moved
    assert etcdctl.cluster.wait_for_leader() == target


def _start_joiner(etcdctl: Etcdctl, name: str, ports: tuple[int, int, int]) -> NodeProcess:
    """`raftkv node --join <node1> --name NAME --advertise-peer 127.0.0.1:PEER ...` with etcd's API on a
    port of its own: the node that takes over the member added for its peer address."""
    supervisor, (http_port, raft_port, etcd_port) = etcdctl.cluster.supervisor, ports
    node = NodeProcess(Member(name, "127.0.0.1", http_port, raft_port), supervisor.data_dir / name,
                       extra_args=["--listen-etcd", f"127.0.0.1:{etcd_port}"], join_url=etcdctl.cluster.url("node1"))
    supervisor.nodes[name] = node
    supervisor.start(name)
    return node


def _listed(etcdctl: Etcdctl, number: int) -> dict:
    return next((m for m in etcdctl.json("member", "list")["members"] if m["ID"] == number), {})


def test_member_add_then_the_node_takes_it_over_and_is_promoted_and_removed(etcdctl: Etcdctl) -> None:
    """etcd's way to grow a cluster, asked of a follower (which relays it to the leader): `member add
    NAME --peer-urls --learner` adds a member listed as etcd lists an unstarted one (no name, no client
    URLs); the node started on that peer address takes it over, its name and client URL fill in
    through the replicated member table; etcdctl then promotes it and removes it. Added at a
    mistyped peer URL first, it is moved with `member update` before its node starts."""
    supervisor = etcdctl.cluster.supervisor
    leader = etcdctl.cluster.wait_for_leader()
    follower = next(n for n in etcdctl.endpoints if n != leader)
    *ports, mistyped_port = free_ports(4)
    peer, mistyped = f"http://127.0.0.1:{ports[1]}", f"http://127.0.0.1:{mistyped_port}"
    added = etcdctl.out("member", "add", "node4", f"--peer-urls={mistyped}", "--learner", endpoint=follower)
    member_hex = re.search(r"Member +([0-9a-f]+) added to cluster", added).group(1)  # type: ignore[union-attr]
    assert 'ETCD_NAME="node4"' in added and f"node4={mistyped}" in added, added
    number = int(member_hex, 16)
    try:
        others = [url for m in etcdctl.json("member", "list")["members"] if m["ID"] != number for url in m["peerURLs"]]
        clash = etcdctl.run("member", "update", member_hex, f"--peer-urls={others[0]}", check=False)
        assert clash.returncode != 0 and "etcdserver: Peer URLs already exists" in clash.stderr, clash.stderr
        moved = etcdctl.out("member", "update", member_hex, f"--peer-urls={peer}", endpoint=follower)
        assert re.search(rf"Member +{member_hex} updated in cluster", moved), moved
        unstarted = _listed(etcdctl, number)
        assert unstarted["peerURLs"] == [peer] and unstarted["isLearner"] is True
        assert not unstarted.get("name") and not unstarted.get("clientURLs")
        row = next(m for m in http("GET", etcdctl.cluster.url(follower) + "/members")[1]["members"]
                   if m["peerURL"] == f"127.0.0.1:{ports[1]}")
        assert (row["started"], row["name"], row["clientURL"], row["role"]) == (False, "", "", "learner")
        table = CliRunner().invoke(cli_main, ["member", "list", "--endpoints", etcdctl.cluster.url(follower)]).output
        assert re.search(rf"{row['id']} +\(not started\) +learner +- +- +127.0.0.1:{ports[1]} ", table), table
        taken = etcdctl.run("member", "add", "node5", f"--peer-urls={peer}", check=False)
        assert taken.returncode != 0 and "etcdserver: Peer URLs already exists" in taken.stderr
        early = etcdctl.run("member", "promote", member_hex, check=False)  # it holds nothing of the log yet
        assert early.returncode != 0 and "in sync with leader" in early.stderr

        _start_joiner(etcdctl, "node4", ports)  # type: ignore[arg-type]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (started := _listed(etcdctl, number)).get("clientURLs"):
            time.sleep(0.2)
        assert started["name"] == "node4" and started["clientURLs"] == [f"http://127.0.0.1:{ports[2]}"], started
        members = http("GET", etcdctl.cluster.url(leader) + "/members")[1]["members"]
        row = next(m for m in members if m["id"] == row["id"])
        assert (row["started"], row["name"], row["clientURL"]) == (True, "node4", f"http://127.0.0.1:{ports[0]}")
        while True:  # the cluster promotes a learner only once it holds the log
            promoted = etcdctl.run("member", "promote", member_hex, check=False)
            if promoted.returncode == 0 or time.monotonic() > deadline:
                break
            assert "in sync with leader" in promoted.stderr
            time.sleep(0.3)
        assert re.search(rf"Member +{member_hex} promoted in cluster", promoted.stdout), promoted.stderr
        assert not _listed(etcdctl, number).get("isLearner")
        assert re.search(rf"Member +{member_hex} removed from cluster", etcdctl.out("member", "remove", member_hex))
        assert sorted(m["name"] for m in etcdctl.json("member", "list")["members"]) == ["node1", "node2", "node3"]
        unknown = etcdctl.run("member", "remove", member_hex, check=False)
        assert unknown.returncode != 0 and "etcdserver: member not found" in unknown.stderr
    finally:  # the cluster the next tests share has its three members again, whatever failed
        if _listed(etcdctl, number):
            etcdctl.run("member", "remove", member_hex, check=False)
        if "node4" in supervisor.nodes:
            supervisor.retire("node4", grace_s=5.0)


def test_member_add_of_a_voter_under_etcds_strict_reconfiguration_check(etcdctl: Etcdctl) -> None:
    """Without --learner the member is a voter at once, as etcd 3.5 adds one; while it has not
    started, the leader has not heard from every voter, so etcd's check refuses another voter
    ("unhealthy cluster"). It is removed before it ever starts."""
    leader = etcdctl.cluster.wait_for_leader()
    first, second = (f"http://127.0.0.1:{port}" for port in free_ports(2))
    added = etcdctl.json("member", "add", "v4", f"--peer-urls={first}", endpoint=leader)
    member = added["member"]
    try:
        assert member["peerURLs"] == [first] and not member.get("isLearner") and not member.get("name")
        assert len(added["members"]) == 4 and added["header"]["member_id"] in {m["ID"] for m in added["members"]}
        refused = etcdctl.run("member", "add", "v5", f"--peer-urls={second}", endpoint=leader, check=False)
        assert refused.returncode != 0 and "etcdserver: unhealthy cluster" in refused.stderr
    finally:
        etcdctl.run("member", "remove", f"{member['ID']:x}", endpoint=leader, check=False)
    assert sorted(m["name"] for m in etcdctl.json("member", "list")["members"]) == ["node1", "node2", "node3"]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_json_gateway_as_curl_sees_it(etcdctl: Etcdctl) -> None:
    """etcd's JSON gateway on the client port: protobuf's JSON, bytes in base64, etcd's errors."""
    url = etcdctl.cluster.url("node2")
    assert http("GET", url + "/version")[1] == {"etcdserver": "3.5.0", "etcdcluster": "3.5.0"}
    status, put = http("POST", url + "/v3/kv/put", {"key": _b64("gw/a"), "value": _b64("1")})
    assert status == 200 and int(put["header"]["revision"]) > 0
    status, got = http("POST", url + "/v3/kv/range", {"key": _b64("gw/"), "range_end": _b64("gw0")})
    assert status == 200 and [base64.b64decode(kv["value"]) for kv in got["kvs"]] == [b"1"]
    assert etcdctl.out("get", "gw/a") == "gw/a\n1\n"  # one store, whichever API wrote it
    for body in ({"ID": 42}, {}):
        assert http("POST", url + "/v3/lease/revoke", body) == (404, {
            "error": "etcdserver: requested lease not found", "code": 5,
            "message": "etcdserver: requested lease not found"})
    status, future = http("POST", url + "/v3/kv/range", {"key": _b64("gw/a"), "revision": 10**9})
    assert status == 400 and future["code"] == 11 and "future revision" in future["error"]
    assert http("POST", url + "/v3/kv/range", {"key": _b64("gw/a"), "no_such_field": 1})[0] == 400
    status, refused = http("POST", url + "/v3/cluster/member/add", {"peerURLs": ["http://127.0.0.1"]})  # no port
    assert status == 400 and refused["error"] == "etcdserver: given member URLs are invalid"



def test_json_gateway_refuses_what_etcd_refuses_and_reads_what_etcd_reads(etcdctl: Etcdctl) -> None:
    """Malformed base64 is refused (protobuf's parser alone dropped the characters it did not know:
    "Z3cyL2Ex@@" wrote gw2/a1's neighbour gw2/a); a body that is not a JSON object is a 400, not a
    500; a limit or revision of 0 or less means none, as in etcd; a sort option etcd does not
    have is etcd's error."""
    url = etcdctl.cluster.url("node1")
    for key in ("Z3cyL2Ex@@", "Z3cyL2E"):  # not base64 / not padded
        status, refused = http("POST", url + "/v3/kv/put", {"key": key, "value": _b64("x")})
        assert status == 400 and "illegal base64 data" in refused["error"], refused
    assert etcdctl.out("get", "gw2/", "--prefix") == ""  # nothing was written
    for body in (1, [1], "text"):
        status, refused = http("POST", url + "/v3/kv/range", body)
        assert status == 400 and "a request is a JSON object" in refused["error"], refused
    for key in ("gw2/a", "gw2/b", "gw2/c"):
        http("POST", url + "/v3/kv/put", {"key": _b64(key), "value": _b64("1")})
    whole = {"key": _b64("gw2/"), "range_end": _b64("gw20")}
    for extra in ({"limit": -1}, {"revision": -1}, {"limit": 0, "revision": 0}):
        status, got = http("POST", url + "/v3/kv/range", {**whole, **extra})
        assert status == 200 and len(got["kvs"]) == 3 and not got.get("more"), (extra, got)
    for extra in ({"sort_target": 9}, {"sort_order": 7}):
        status, refused = http("POST", url + "/v3/kv/range", {**whole, **extra})
        assert (status, refused["error"]) == (400, "etcdserver: invalid sort option"), refused
    status, refused = http("POST", url + "/v3/kv/txn", {"compare": [{"key": _b64("gw2/a"), "target": 9}]})
    assert status == 400 and refused["error"] == "etcdserver: unknown compare target 9", refused


def test_etcd3gw_client_over_the_gateway(etcdctl: Etcdctl) -> None:
    etcd3gw = pytest.importorskip("etcd3gw")
    host, _, port = etcdctl.cluster.url("node3").removeprefix("http://").rpartition(":")
    client = etcd3gw.client(host=host, port=int(port))
    assert client.status()["version"] == "3.5.0"
    assert sorted(m["name"] for m in client.members()) == ["node1", "node2", "node3"]
    assert client.put("gw3/a", "1") and client.get("gw3/a") == [b"1"]
    lease = client.lease(30)
    client.put("gw3/leased", "x", lease=lease)
    assert lease.keys() == [b"gw3/leased"] and lease.refresh() == 30
    events, cancel = client.watch_prefix("gw3/")
    try:
        client.put("gw3/b", "2")
        event = next(events)
    finally:
        cancel()
    assert event["kv"]["key"] == b"gw3/b" and event["kv"]["value"] == b"2"
    assert client.replace("gw3/a", "1", "one") and not client.replace("gw3/a", "1", "uno")
    assert lease.revoke() and client.get("gw3/leased") == []
    assert client.delete_prefix("gw3/") and client.get_prefix("gw3/") == []


def test_snapshot_save_writes_a_raftkv_backup(etcdctl: Etcdctl, tmp_path: Path) -> None:
    revision = etcdctl.json("put", "snap/k", "v")["header"]["revision"]
    saved = etcdctl.run("snapshot", "save", str(tmp_path / "backup.snap"), endpoint="node2")
    assert "Snapshot saved at" in saved.stdout + saved.stderr
    image = read_backup(tmp_path / "backup.snap")  # the backup raftkv snapshot restore takes
    assert image.header.revision >= revision and image.state_machine().get("snap/k").value == "v"
    saved_bytes = (tmp_path / "backup.snap").read_bytes()
    assert len(saved_bytes) % 512 == 32  # etcd's framing: padded, then the sha256 etcdctl checked
    (tmp_path / "damaged.snap").write_bytes(saved_bytes[:-1] + bytes([saved_bytes[-1] ^ 1]))
    with pytest.raises(BackupError, match="bytes added"):
        read_backup(tmp_path / "damaged.snap")


async def test_watch_options_over_grpc(etcdctl: Etcdctl) -> None:
    """What etcdctl does not exercise, through etcd's protocol itself: range watches with prev_kv and
    a NODELETE filter, a progress request, a cancel, and a watch from a compacted revision."""
    async with grpc.aio.insecure_channel(etcdctl.endpoints["node1"]) as channel:
        kv, watch = rpc_pb2_grpc.KVStub(channel), rpc_pb2_grpc.WatchStub(channel)
        stream = watch.Watch()
        await stream.write(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=b"wo/", range_end=b"wo0", prev_kv=True, filters=[rpc_pb2.WatchCreateRequest.NODELETE])))
        created = await stream.read()
        assert created.created and not created.canceled
        for key, value in ((b"wo/a", b"1"), (b"wo/a", b"2"), (b"wo/a", None), (b"wox", b"out"), (b"wo/b", b"3")):
            if value is None:
                last = (await kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=key))).header.revision
            else:
                last = (await kv.Put(rpc_pb2.PutRequest(key=key, value=value))).header.revision
        seen = []
        while len(seen) < 3:
            response = await asyncio.wait_for(stream.read(), 10)
            assert response.watch_id == created.watch_id
            seen += [(e.type, e.kv.key, e.kv.value, e.prev_kv.value) for e in response.events]
        assert seen == [(kv_pb2.Event.PUT, b"wo/a", b"1", b""), (kv_pb2.Event.PUT, b"wo/a", b"2", b"1"),
                        (kv_pb2.Event.PUT, b"wo/b", b"3", b"")]  # the delete filtered out, wox out of range
        await stream.write(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))
        progress = await asyncio.wait_for(stream.read(), 10)
        assert progress.watch_id == -1 and not progress.events and progress.header.revision >= last
        await stream.write(rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=created.watch_id)))
        assert (await asyncio.wait_for(stream.read(), 10)).canceled
        await kv.Compact(rpc_pb2.CompactionRequest(revision=last))
        from_start = rpc_pb2.WatchCreateRequest(key=b"wo/a", start_revision=1)
        await stream.write(rpc_pb2.WatchRequest(create_request=from_start))
        assert (await asyncio.wait_for(stream.read(), 10)).created
        refused = await asyncio.wait_for(stream.read(), 10)
        assert refused.canceled and refused.compact_revision == last
        stream.cancel()


async def test_watch_ids_count_up_and_the_watches_etcd_refuses_end_alone(etcdctl: Etcdctl) -> None:
    """As etcd: a watch of no key watches "\\0"; a range that holds no key and an id in use are
    refused (id -1) and the stream goes on; the ids the stream picks are never reused."""
    async with grpc.aio.insecure_channel(etcdctl.endpoints["node1"]) as channel:
        kv, stream = rpc_pb2_grpc.KVStub(channel), rpc_pb2_grpc.WatchStub(channel).Watch()

        async def create(**fields: object) -> rpc_pb2.WatchResponse:
            await stream.write(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(**fields)))
            return await asyncio.wait_for(stream.read(), 10)

        first, no_key = await create(key=b"wi/a"), await create(key=b"")
        assert first.created and no_key.created and not no_key.canceled and no_key.watch_id == first.watch_id + 1
        empty = await create(key=b"wi/b", range_end=b"wi/a")
        assert (empty.watch_id, empty.canceled, empty.cancel_reason) == (-1, True, "mvcc: watcher range is empty")
        taken = await create(key=b"wi/c", watch_id=no_key.watch_id)
        assert (taken.watch_id, taken.canceled) == (-1, True)
        assert taken.cancel_reason == "mvcc: duplicate watch ID provided on the WatchStream"
        await stream.write(rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=first.watch_id)))
        assert (await asyncio.wait_for(stream.read(), 10)).canceled
        again = await create(key=b"wi/a")
        assert again.watch_id == no_key.watch_id + 1  # not the cancelled watch's id
        await kv.Put(rpc_pb2.PutRequest(key=b"wi/a", value=b"1"))
        event = await asyncio.wait_for(stream.read(), 10)
        assert event.watch_id == again.watch_id and [e.kv.key for e in event.events] == [b"wi/a"]
        stream.cancel()
        for call in (kv.Range(rpc_pb2.RangeRequest(key=b"", range_end=b"\0")),
                     kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"", range_end=b"\0"))):
            with pytest.raises(grpc.aio.AioRpcError) as no_key_range:  # not every key from the first on
                await call
            assert no_key_range.value.details() == "etcdserver: key is not provided"
        assert (await kv.Range(rpc_pb2.RangeRequest(key=b"wi/a"))).count == 1


async def test_a_watch_that_asks_for_fragments_gets_a_large_revision_in_parts(etcdctl: Etcdctl) -> None:
    puts = [rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=f"frag/{i:03}".encode(), value=b"x" * 14_000))
            for i in range(100)]  # 1.4 MB: one request; with prev_kv, the second txn's events are twice that
    async with grpc.aio.insecure_channel(etcdctl.endpoints["node3"]) as channel:
        kv, stream = rpc_pb2_grpc.KVStub(channel), rpc_pb2_grpc.WatchStub(channel).Watch()
        await stream.write(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=b"frag/", range_end=b"frag0", prev_kv=True, fragment=True)))
        assert (await stream.read()).created
        await kv.Txn(rpc_pb2.TxnRequest(success=puts))
        revision = (await kv.Txn(rpc_pb2.TxnRequest(success=puts))).header.revision
        parts: list[rpc_pb2.WatchResponse] = []
        while sum(len(p.events) for p in parts) < 200:
            parts.append(await asyncio.wait_for(stream.read(), 20))
        stream.cancel()
    last = [p for p in parts if p.header.revision == revision]
    assert len(last) >= 2 and all(p.fragment for p in last[:-1]) and not last[-1].fragment
    assert [e.kv.key for p in last for e in p.events] == [f"frag/{i:03}".encode() for i in range(100)]
    assert all(e.prev_kv.value == b"x" * 14_000 for p in last for e in p.events)


async def test_kv_and_lease_details_over_grpc(etcdctl: Etcdctl) -> None:
    async with grpc.aio.insecure_channel(etcdctl.endpoints["node2"]) as channel:
        kv, leases = rpc_pb2_grpc.KVStub(channel), rpc_pb2_grpc.LeaseStub(channel)
        lease = await leases.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60))
        first = await kv.Put(rpc_pb2.PutRequest(key=b"kd/a", value=b"1", lease=lease.ID))
        await kv.Put(rpc_pb2.PutRequest(key=b"kd/b", value=b"2"))
        counted = await kv.Range(rpc_pb2.RangeRequest(key=b"kd/", range_end=b"kd0", count_only=True, limit=1))
        assert counted.count == 2 and not counted.kvs and not counted.more  # as etcd: no key returned, no more
        newer = await kv.Range(rpc_pb2.RangeRequest(key=b"kd/", range_end=b"kd0",
                                                    min_mod_revision=first.header.revision + 1))
        assert [k.key for k in newer.kvs] == [b"kd/b"] and newer.count == 2
        leased = rpc_pb2.Compare(key=b"kd/a", target=rpc_pb2.Compare.LEASE, result=rpc_pb2.Compare.EQUAL,
                                 lease=lease.ID)
        moved = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"kd/c", value=b"3", lease=lease.ID))
        txn = await kv.Txn(rpc_pb2.TxnRequest(compare=[leased], success=[moved]))
        assert txn.succeeded and (await kv.Range(rpc_pb2.RangeRequest(key=b"kd/c"))).kvs[0].lease == lease.ID
        with pytest.raises(grpc.aio.AioRpcError) as empty_op:  # an op that asks nothing
            await kv.Txn(rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp()]))
        assert empty_op.value.details() == "etcdserver: key not found"
        twice = rpc_pb2.TxnRequest(success=[moved, moved])
        with pytest.raises(grpc.aio.AioRpcError) as duplicate:
            await kv.Txn(twice)
        assert duplicate.value.details() == "etcdserver: duplicate key given in txn request"
        with pytest.raises(grpc.aio.AioRpcError) as absent:
            await kv.Put(rpc_pb2.PutRequest(key=b"kd/x", value=b"x", lease=12345))
        assert absent.value.code() is grpc.StatusCode.NOT_FOUND
        kept = await kv.Put(rpc_pb2.PutRequest(key=b"kd/a", value=b"new", ignore_lease=True, prev_kv=True))
        still_leased = (await kv.Range(rpc_pb2.RangeRequest(key=b"kd/a"))).kvs[0].lease == lease.ID
        assert kept.prev_kv.value == b"1" and still_leased
        await kv.Put(rpc_pb2.PutRequest(key=b"kd/a", ignore_value=True))  # and now no lease: its value stays
        after = (await kv.Range(rpc_pb2.RangeRequest(key=b"kd/a"))).kvs[0]
        assert (after.value, after.lease, after.version) == (b"new", 0, 3)
        with pytest.raises(grpc.aio.AioRpcError) as too_long:
            await kv.Put(rpc_pb2.PutRequest(key=b"k" * 5000, value=b"x"))
        assert too_long.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "longer than" in too_long.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as nothing_to_keep:
            await kv.Put(rpc_pb2.PutRequest(key=b"kd/none", ignore_value=True))
        assert nothing_to_keep.value.details() == "etcdserver: key not found"
        ttl = await leases.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lease.ID, keys=True))
        assert ttl.keys == [b"kd/c"] and 0 < ttl.TTL <= 60 and ttl.grantedTTL == 60  # kd/a left it above
        with pytest.raises(grpc.aio.AioRpcError) as too_long:
            await leases.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=10**12))
        assert too_long.value.code() is grpc.StatusCode.OUT_OF_RANGE
        auth = await rpc_pb2_grpc.AuthStub(channel).AuthStatus(rpc_pb2.AuthStatusRequest())
        assert auth.enabled is False  # (tests/test_etcd_auth.py turns it on)


async def test_keys_and_values_that_are_not_utf8_come_back_as_the_same_bytes(etcdctl: Etcdctl) -> None:
    keys = [b"bin/\xff\x00", b"bin/\x8a\xc3\xa9", "bin/\u00e9".encode(), b"bin/z"]
    async with grpc.aio.insecure_channel(etcdctl.endpoints["node3"]) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        for key in keys:
            await kv.Put(rpc_pb2.PutRequest(key=key, value=key[4:] + b"\x80"))
        got = await kv.Range(rpc_pb2.RangeRequest(key=b"bin/", range_end=b"bin0"))
        assert sorted(k.key for k in got.kvs) == sorted(keys) and all(k.value == k.key[4:] + b"\x80" for k in got.kvs)
        one = await kv.Range(rpc_pb2.RangeRequest(key=b"bin/\xff\x00"))
        assert [k.key for k in one.kvs] == [b"bin/\xff\x00"]
    listed = etcdctl.json("get", "bin/", "--prefix", endpoint="node1")["kvs"]
    assert sorted(base64.b64decode(k["key"]) for k in listed) == sorted(keys)
    assert etcdctl.out("del", "bin/", "--prefix") == "4\n"


async def test_check_perfs_load_is_stored_counted_and_deleted_by_prefix(etcdctl: Etcdctl) -> None:
    """What `etcdctl check perf` asks of a cluster, without its fixed 60 s: 50 clients on one channel
    per member putting random 8-byte binary keys under its prefix with 1 KiB values, then a count of
    the prefix and a delete of it. Every put is acknowledged; the count and the delete see every key
    put. (etcdctl's own check, its throughput and latency verdicts, runs in `./dev bench`'s
    checkperf phase: bench/check_perf.py.)"""
    prefix, rng = b"/etcdctl-check-perf/", random.Random(7)
    keys = {prefix + rng.randbytes(8) for _ in range(600)}
    assert sum(not _utf8(k) for k in keys) > 500  # binary, as etcdctl's are
    value = rng.randbytes(1024)
    channels = [grpc.aio.insecure_channel(target) for target in etcdctl.endpoints.values()]
    try:
        stubs = [rpc_pb2_grpc.KVStub(channel) for channel in channels]
        todo = sorted(keys)

        async def client(i: int) -> None:
            while todo:
                await stubs[i % len(stubs)].Put(rpc_pb2.PutRequest(key=todo.pop(), value=value), timeout=10)

        await asyncio.gather(*(client(i) for i in range(50)))
        end = prefix_end(prefix)
        counted = await stubs[1].Range(rpc_pb2.RangeRequest(key=prefix, range_end=end, count_only=True))
        assert counted.count == len(keys)
        some = await stubs[2].Range(rpc_pb2.RangeRequest(key=prefix, range_end=end, limit=5))
        assert len(some.kvs) == 5 and all(kv.key in keys and kv.value == value for kv in some.kvs)
        deleted = await stubs[0].DeleteRange(rpc_pb2.DeleteRangeRequest(key=prefix, range_end=end))
        assert deleted.deleted == len(keys)
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    assert etcdctl.out("get", prefix.decode(), "--prefix", "--keys-only") == ""


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


async def _etcd_op(kv: rpc_pb2_grpc.KVStub, client: int, kind: str, key: str, value: int | None,
                   expected: int | None, now: Callable[[], float]) -> Operation:
    """One read, write or compare-and-set through etcd's KV API, as the checker records it. Answers
    mean what etcd's clients take them to mean: "etcdserver: request timed out" and a transport
    failure may or may not have been applied; raftkv's other UNAVAILABLE answers were not."""
    start = now()
    outcome, result = "ok", None
    try:
        if kind == "read":
            found = (await kv.Range(rpc_pb2.RangeRequest(key=key.encode()), timeout=3)).kvs
            result = int(found[0].value) if found else None
        elif kind == "write":
            await kv.Put(rpc_pb2.PutRequest(key=key.encode(), value=str(value).encode()), timeout=3)
        else:
            guard = (rpc_pb2.Compare(key=key.encode(), target=rpc_pb2.Compare.CREATE, create_revision=0)
                     if expected is None else
                     rpc_pb2.Compare(key=key.encode(), target=rpc_pb2.Compare.VALUE, value=str(expected).encode()))
            put = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key.encode(), value=str(value).encode()))
            result = (await kv.Txn(rpc_pb2.TxnRequest(compare=[guard], success=[put]), timeout=3)).succeeded
    except grpc.aio.AioRpcError as e:
        not_applied = e.details().startswith("etcdserver: ") and e.details() != "etcdserver: request timed out"
        outcome = "fail" if kind == "read" or not_applied else "unknown"
    return Operation(client=client, kind=kind, key=key, invoke_time=start,  # type: ignore[arg-type]
                     complete_time=now(), outcome=outcome, value=value, expected=expected,  # type: ignore[arg-type]
                     result=result if outcome == "ok" else None)


async def test_etcd_api_stays_linearizable_when_the_leader_is_killed(etcdctl: Etcdctl) -> None:
    """Clients write, read and compare-and-set a few keys through etcd's API on every node while the
    leader is killed and restarted; raftkv's linearizability checker judges the history."""
    keys, history, stop = ["lin/a", "lin/b"], [], asyncio.Event()
    channels = {n: grpc.aio.insecure_channel(e) for n, e in etcdctl.endpoints.items()}
    began = time.monotonic()

    async def client(index: int) -> None:
        rng, seen, n = random.Random(index), {}, 0
        while not stop.is_set():
            key, node, roll = rng.choice(keys), rng.choice(sorted(channels)), rng.random()
            kind = "read" if roll < 0.4 else "cas" if roll < 0.7 else "write"
            n += 1
            value = None if kind == "read" else index * 1_000_000 + n
            op = await _etcd_op(rpc_pb2_grpc.KVStub(channels[node]), index, kind, key, value,
                                seen.get(key) if kind == "cas" else None, lambda: time.monotonic() - began)
            history.append(op)
            if op.outcome == "ok" and (kind == "write" or op.result is True):
                seen[key] = value
            elif op.outcome == "ok" and kind == "read":
                seen[key] = op.result
            await asyncio.sleep(0.01)

    clients = [asyncio.create_task(client(i)) for i in range(4)]
    try:
        await asyncio.sleep(2)
        leader = await asyncio.to_thread(etcdctl.cluster.wait_for_leader)
        etcdctl.cluster.supervisor.kill(leader)
        await asyncio.sleep(3)
        etcdctl.cluster.supervisor.start(leader)
        await asyncio.sleep(2)
    finally:
        stop.set()
        await asyncio.gather(*clients)
        for channel in channels.values():
            await channel.close()
    await asyncio.to_thread(etcdctl.cluster.wait_for_leader)
    verdict = check_history(history)
    assert verdict.ok, verdict.explain()
    done_after_kill = [op for op in history if op.outcome == "ok" and op.kind != "read" and op.invoke_time > 3]
    assert len(done_after_kill) > 10, f"{len(history)} operations, {len(done_after_kill)} writes done after the kill"


def test_a_node_without_a_quorum_answers_etcds_no_leader(etcdctl: Etcdctl) -> None:
    """Last in this module: two of the three nodes stop, and come back for nothing after it."""
    supervisor = etcdctl.cluster.supervisor
    for node_id in ("node2", "node3"):
        supervisor.kill(node_id)
    try:
        deadline = time.monotonic() + 20
        while (etcdctl.cluster.state("node1") or {}).get("leaderId") is not None and time.monotonic() < deadline:
            time.sleep(0.1)  # check-quorum: a leader that hears from no majority steps down
        refused = etcdctl.run("put", "nl/k", "v", endpoint="node1", check=False)
        assert refused.returncode != 0 and "etcdserver: no leader" in refused.stderr
    finally:
        for node_id in ("node2", "node3"):
            supervisor.start(node_id)
    etcdctl.cluster.wait_for_leader()
    assert etcdctl.out("put", "nl/k", "v") == "OK\n"


def test_open_streams_do_not_hold_up_the_node_stopping(tmp_path: Path) -> None:
    """Watches never end by themselves, nor do lease keep-alive streams; the node ends them when it
    stops, at once (etcd's with etcd's "server stopped"), instead of waiting out the gRPC server's
    grace or aiohttp's shutdown timeout (twice), which a lab stop's grace would not wait for. Its
    own Server-Sent Events watch (GET /watch) too: the dashboard keeps one open."""
    http_port, raft_port, etcd_port = free_ports(3)
    supervisor = Supervisor([Member("node1", "127.0.0.1", http_port, raft_port)], tmp_path,
                            ["--listen-etcd", f"127.0.0.1:{etcd_port}"])
    url = f"http://127.0.0.1:{http_port}"

    async def stop_while_streaming() -> tuple[float, grpc.aio.AioRpcError | None]:
        async with aiohttp.ClientSession() as session, grpc.aio.insecure_channel(f"127.0.0.1:{etcd_port}") as channel, \
                session.post(url + "/v3/watch", json={"create_request": {"key": _b64("a")}}) as gateway_watch, \
                session.get(url + "/watch?key=a") as event_source:
            assert b'"created": true' in await gateway_watch.content.readline()
            assert (await event_source.content.readline()).startswith(b": watching")  # raftkv's own SSE watch
            watch = rpc_pb2_grpc.WatchStub(channel).Watch()
            await watch.write(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"a")))
            assert (await watch.read()).created
            lease = await rpc_pb2_grpc.LeaseStub(channel).LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60))
            keepalive = rpc_pb2_grpc.LeaseStub(channel).LeaseKeepAlive()
            await keepalive.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease.ID))
            assert (await keepalive.read()).TTL == 60
            started = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, supervisor.stop, "node1", 12.0)
            seconds = time.monotonic() - started
            try:
                await watch.read()
            except grpc.aio.AioRpcError as ended:
                return seconds, ended
            return seconds, None

    try:
        supervisor.start("node1")
        deadline = time.monotonic() + 30
        while not _answers(url) and time.monotonic() < deadline:
            time.sleep(0.1)
        seconds, ended = asyncio.run(stop_while_streaming())
        assert supervisor.nodes["node1"].exit_status == "status 0" and seconds < 4, seconds
        assert ended is not None and ended.code() is grpc.StatusCode.UNAVAILABLE
        assert ended.details() == "etcdserver: server stopped"
    finally:
        supervisor.stop_all()


def _answers(url: str) -> bool:
    try:
        return http("GET", url + "/health", timeout=1)[0] == 200
    except OSError:  # not listening yet
        return False
