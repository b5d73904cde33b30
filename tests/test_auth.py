"""Authentication and authorisation on a real three-node cluster: with auth on, every route but the
open ones answers 401 to a client without credentials and 403 to a user without the permission,
and neither changes anything; permissions on keys and prefixes hold on every node; tokens work
on any node and die with their user's password; auth survives a restart of every node."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cluster import LocalCluster, http, wait_healthy

from raftkv.api import openapi_document
from raftkv.api.auth import Need, route_need
from raftkv.supervisor import free_ports

pytestmark = pytest.mark.timeout(120)

PASSWORDS = {"root": "root-secret", "alice": "alice-secret", "bob": "bob-secret", "viewer": "viewer-secret"}
DOCUMENT = openapi_document(max_body_bytes=1 << 20, max_key_bytes=1024, max_value_bytes=1 << 20)


def basic(user: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Cluster:
    def __init__(self, lab: LocalCluster, etcd_endpoint: str) -> None:
        self.lab = lab
        self.etcd_endpoint = etcd_endpoint  # node1's etcd gRPC API

    @property
    def urls(self) -> list[str]:
        return list(self.lab.urls.values())

    def call(self, method: str, path: str, body: Any = None, user: str | None = None, node: int = 0,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return http(method, self.urls[node] + path, body, headers={**(basic(user) if user else {}), **(headers or {})})

    def ok(self, method: str, path: str, body: Any = None, user: str | None = "root", node: int = 0) -> Any:
        status, answer = self.call(method, path, body, user, node)
        assert status == 200, (method, path, status, answer)
        return answer

    def digest(self) -> str:
        self.lab.wait_converged()
        return self.ok("GET", "/raft-state?digest=true", user=None)["kvDigest"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    lab = LocalCluster(tmp_path_factory.mktemp("auth"), nodes=3)
    (etcd_port,) = free_ports(1)
    lab.supervisor.nodes["node1"].extra_args += ["--listen-etcd", f"127.0.0.1:{etcd_port}"]
    lab.start()
    try:
        lab.wait_for_leader()
        c = Cluster(lab, f"127.0.0.1:{etcd_port}")
        for user in PASSWORDS:  # while auth is off, anyone may set users and roles up (as in etcd)
            c.ok("PUT", f"/auth/users/{user}", {"password": PASSWORDS[user]}, user=None)
        c.ok("PUT", "/auth/roles/app", user=None)
        c.ok("POST", "/auth/roles/app/permissions", {"access": "readwrite", "key": "app/", "prefix": True}, user=None)
        c.ok("POST", "/auth/roles/app/permissions", {"access": "read", "key": "config"}, user=None)
        c.ok("PUT", "/auth/users/alice/roles/app", user=None)
        c.ok("PUT", "/auth/roles/all-reader", user=None)
        c.ok("POST", "/auth/roles/all-reader/permissions", {"access": "read", "key": "", "prefix": True}, user=None)
        c.ok("PUT", "/auth/users/viewer/roles/all-reader", user=None)
        c.ok("PUT", "/kv/config", {"value": "v1"}, user=None)
        c.ok("PUT", "/kv/other", {"value": "secret"}, user=None)
        c.ok("POST", "/auth/enable", user=None)
        yield c
    finally:
        lab.stop()


# ---- every route ---------------------------------------------------------------------------------

PATH_VALUES = {"key": "app/x", "id": "1", "name": "alice", "role": "app"}
SAMPLE_BODIES: dict[tuple[str, str], Any] = {
    ("put", "/kv/{key}"): {"value": 1}, ("put", "/{key}"): {"value": 1},
    ("post", "/txn"): {"success": [{"op": "put", "key": "other", "value": 2}]},
    ("post", "/compact"): {"revision": 1}, ("post", "/simulate-partition"): {"partitioned": True},
    ("post", "/simulate-link"): {"loss_percent": 50}, ("post", "/lab"): {"holding": True},
    ("post", "/lab/release"): {"numbers": [1]}, ("post", "/lab/drop"): {"numbers": [1]},
    ("post", "/members"): {"name": "n9", "clientURL": "http://127.0.0.1:9", "peerURL": "127.0.0.1:9"},
    ("post", "/leases"): {"ttl": 30}, ("post", "/auth/token"): {"name": "alice", "password": "x"},
    ("put", "/auth/users/{name}"): {"password": "p"}, ("post", "/auth/users/{name}/password"): {"password": "p"},
    ("post", "/auth/roles/{name}/permissions"): {"access": "read", "key": "k"},
    ("delete", "/auth/roles/{name}/permissions"): {"access": "read", "key": "k"},
}
OPERATIONS = sorted((method, path) for path, ops in DOCUMENT["paths"].items() for method in ops
                    if route_need(path, method.upper()) is not Need.OPEN)


def request_for(method: str, path: str) -> tuple[str, str, Any]:
    concrete = path
    for name, value in PATH_VALUES.items():
        concrete = concrete.replace(f"{{{name}}}", value)
    if path == "/kv/{key}/history":
        concrete = "/kv/other/history"
    if path == "/watch":
        concrete = "/watch?prefix=other"
    if path == "/kv":
        concrete = "/kv?prefix=other"
    return method.upper(), concrete, SAMPLE_BODIES.get((method, path))


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m.upper()} {p}" for m, p in OPERATIONS])
def test_every_route_but_the_open_ones_is_401_without_credentials(cluster: Cluster, method: str, path: str) -> None:
    verb, concrete, body = request_for(method, path)
    status, answer = cluster.call(verb, concrete, body)
    assert status == 401, (verb, concrete, status, answer)
    if verb != "HEAD":
        assert answer["reason"] == "unauthenticated" and "Authorization" in answer["error"], answer


# What a user with no role at all may still do: these need only to be someone.
ANY_USER = {("get", "/leases"), ("head", "/leases"), ("post", "/leases"), ("post", "/leases/{id}/keepalive"),
            ("get", "/leases/{id}"), ("head", "/leases/{id}"), ("get", "/lab"), ("head", "/lab")}
FORBIDDEN = [op for op in OPERATIONS if op not in ANY_USER and op[1] != "/leases/{id}"]


@pytest.mark.parametrize(("method", "path"), FORBIDDEN, ids=[f"{m.upper()} {p}" for m, p in FORBIDDEN])
def test_every_route_needing_a_permission_is_403_for_a_user_without_it(cluster: Cluster, method: str,
                                                                       path: str) -> None:
    verb, concrete, body = request_for(method, path)
    status, answer = cluster.call(verb, concrete, body, user="bob")
    assert status == 403, (verb, concrete, status, answer)
    if verb != "HEAD":
        assert answer["reason"] == "permission_denied", answer


def test_revoking_a_lease_needs_write_access_to_each_of_its_keys(cluster: Cluster) -> None:
    lease = cluster.ok("POST", "/leases", {"ttl": 60}, user="root")["id"]
    cluster.ok("PUT", "/kv/leased-secret", {"value": 1, "lease": lease}, user="root")
    status, answer = cluster.call("DELETE", f"/leases/{lease}", user="alice")
    assert status == 403 and "leased-secret" in answer["error"], answer
    assert cluster.ok("GET", f"/leases/{lease}", user="alice")["keys"] == ["leased-secret"]
    cluster.ok("DELETE", f"/leases/{lease}", user="root")


def test_nothing_a_client_without_credentials_or_rights_sends_changes_anything(cluster: Cluster) -> None:
    before = cluster.digest()
    for method, path in OPERATIONS:
        verb, concrete, body = request_for(method, path)
        assert cluster.call(verb, concrete, body)[0] == 401
        if (method, path) in FORBIDDEN:
            assert cluster.call(verb, concrete, body, user="bob")[0] == 403
    for wrong in ({"Authorization": "Basic " + base64.b64encode(b"alice:wrong").decode()},
                  {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic !!!"}):
        status, answer = cluster.call("PUT", "/kv/app/x", {"value": 1}, headers=wrong)
        assert status == 401, answer
    assert cluster.digest() == before


# ---- keys ------------------------------------------------------------------------------------------


def test_a_role_grants_exactly_its_keys_and_prefixes_on_every_node(cluster: Cluster) -> None:
    for node in range(3):  # followers check what the leader does
        assert cluster.ok("PUT", "/kv/app/a", {"value": node}, user="alice", node=node)["value"] == node
        assert cluster.ok("GET", "/kv/config", user="alice", node=node)["value"] == "v1"
        assert cluster.call("PUT", "/kv/config", {"value": 2}, user="alice", node=node)[0] == 403
        assert cluster.call("GET", "/kv/other", user="alice", node=node)[0] == 403
        assert cluster.ok("GET", "/kv?prefix=app/", user="alice", node=node)["items"]
        assert cluster.call("GET", "/kv?prefix=ap", user="alice", node=node)[0] == 403  # wider than granted
        assert cluster.call("GET", "/kv", user="alice", node=node)[0] == 403
    assert cluster.ok("GET", "/kv?start=app/a&end=app/z", user="alice")["items"]  # inside app/
    txn = {"compare": [{"key": "config", "target": "value", "op": "==", "value": "v1"}],
           "success": [{"op": "put", "key": "app/b", "value": 1}]}
    assert cluster.ok("POST", "/txn", txn, user="alice")["succeeded"]
    txn["failure"] = [{"op": "get", "key": "other"}]  # a read of a key alice may not read, even unreached
    assert cluster.call("POST", "/txn", txn, user="alice")[0] == 403
    assert cluster.ok("GET", "/kv/app/a/history", user="alice")["versions"]
    assert cluster.call("GET", "/raft/log", user="alice")[0] == 403  # the log shows every key's writes
    assert cluster.ok("GET", "/raft/log?limit=5", user="viewer")["entries"]  # who reads every key may see it
    assert cluster.call("PUT", "/kv/app/v", {"value": 1}, user="viewer")[0] == 403


def test_a_revoked_permission_holds_at_once_on_every_node(cluster: Cluster) -> None:
    grant = {"access": "write", "key": "temp"}
    cluster.ok("POST", "/auth/roles/app/permissions", grant)
    cluster.ok("PUT", "/kv/temp", {"value": 1}, user="alice", node=2)
    cluster.ok("DELETE", "/auth/roles/app/permissions", grant)
    for node in range(3):  # a write checks the auth state as of its commit, whichever node takes it
        status, answer = cluster.call("PUT", "/kv/temp", {"value": 2}, user="alice", node=node)
        assert status == 403 and answer["reason"] == "permission_denied", answer


async def test_open_streams_end_when_their_permission_is_revoked(cluster: Cluster) -> None:
    """A watch and the Raft event stream are checked when they open and again whenever users or
    roles change: a revoked permission ends them (etcd keeps such watches going)."""
    grant = {"access": "read", "key": "live/", "prefix": True}
    cluster.ok("POST", "/auth/roles/app/permissions", grant)
    cluster.ok("PUT", "/auth/users/bob/roles/all-reader")
    async with aiohttp.ClientSession() as session:
        watch = await session.get(cluster.urls[1] + "/watch?prefix=live/", headers=basic("alice"))
        assert watch.status == 200
        events = await session.ws_connect(cluster.urls[2] + "/raft/events", headers=basic("bob"))
        cluster.ok("PUT", "/kv/live/1", {"value": 1})
        assert b"live/1" in await asyncio.wait_for(watch.content.readuntil(b"live/1"), 10)
        cluster.ok("DELETE", "/auth/roles/app/permissions", grant)
        cluster.ok("DELETE", "/auth/users/bob/roles/all-reader")
        second = cluster.ok("PUT", "/kv/live/2", {"value": 2})
        rest = await asyncio.wait_for(watch.content.read(), 10)  # the stream ends
        assert b"event: cancelled" in rest and b"revoked while this stream was open" in rest, rest
        assert b"live/2" not in rest
        # Where a watch opened again (by someone still allowed) resumes: live/2, never sent here.
        ended = json.loads(rest.split(b"event: cancelled\ndata: ", 1)[1].split(b"\n", 1)[0])
        assert ended["resumeRevision"] == second["revision"], (ended, second)
        while (message := await asyncio.wait_for(events.receive(), 10)).type is aiohttp.WSMsgType.TEXT:
            pass
        assert message.data == 1008 and "may not read every key" in str(message.extra), message
        watch.close()


def test_one_users_request_key_never_replays_or_blocks_anothers(cluster: Cluster) -> None:
    cluster.ok("PUT", "/auth/users/bob/roles/app")
    try:
        key = {"Idempotency-Key": "same-key"}
        a = cluster.call("PUT", "/kv/app/by-alice", {"value": "a"}, user="alice", headers=key)
        b = cluster.call("PUT", "/kv/app/by-bob", {"value": "b"}, user="bob", headers=key)
        assert a[0] == b[0] == 200 and "Idempotent-Replayed" not in str(b[1]), (a, b)
        assert cluster.ok("GET", "/kv/app/by-bob", user="bob")["value"] == "b"
        again = cluster.call("PUT", "/kv/app/by-alice", {"value": "a"}, user="alice", headers=key)
        assert again[0] == 200 and again[1]["revision"] == a[1]["revision"]  # alice's retry: her first answer
    finally:
        cluster.ok("DELETE", "/auth/users/bob/roles/app")


@pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl not installed (./dev test does)")
def test_etcds_api_checks_the_same_users_with_etcds_errors(cluster: Cluster) -> None:
    """etcd's gRPC API and its /v3 gateway authenticate and authorise with raftkv's users and rules
    (tests/test_etcd_auth.py has the rest)."""
    def etcdctl(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        who = ["--user", f"{user}:{PASSWORDS[user]}"] if user else []
        return subprocess.run(["etcdctl", "--endpoints", cluster.etcd_endpoint, "--command-timeout", "5s", *who,
                               *args], capture_output=True, text=True, timeout=30)

    for args in (["get", "config"], ["put", "app/x", "1"], ["watch", "app/"]):
        done = etcdctl(*args)
        assert done.returncode != 0 and "etcdserver: user name is empty" in done.stderr, (args, done)
    assert etcdctl("get", "config", user="alice").stdout == "config\nv1\n"
    denied = etcdctl("put", "config", "2", user="alice")
    assert denied.returncode != 0 and "etcdserver: permission denied" in denied.stderr, denied
    config = {"key": base64.b64encode(b"config").decode()}
    status, answer = cluster.call("POST", "/v3/kv/range", config)
    assert status == 400 and answer["error"] == "etcdserver: user name is empty", answer
    token = cluster.ok("POST", "/auth/token", {"name": "alice", "password": PASSWORDS["alice"]}, user=None)["token"]
    status, answer = cluster.call("POST", "/v3/kv/range", config, headers=bearer(token))
    assert status == 200 and answer["count"] == "1", answer


# ---- tokens and passwords ----------------------------------------------------------------------------


def test_a_token_from_one_node_works_on_every_node_until_it_expires(cluster: Cluster) -> None:
    issued = cluster.ok("POST", "/auth/token", {"name": "alice", "password": PASSWORDS["alice"], "ttl": 2},
                        user=None)
    assert issued["user"] == "alice" and issued["ttl"] == 2
    for node in range(3):
        assert cluster.call("PUT", "/kv/app/t", {"value": node}, node=node, headers=bearer(issued["token"]))[0] == 200
    who = http("GET", cluster.urls[1] + "/auth/status", headers=bearer(issued["token"]))[1]
    assert who["user"] == "alice" and who["admin"] is False and who["readsEveryKey"] is False, who
    time.sleep(3.1)
    status, answer = cluster.call("GET", "/kv/app/t", headers=bearer(issued["token"]))
    assert status == 401 and answer["reason"] == "token_expired", answer


def test_wrong_passwords_and_unknown_users_get_the_same_401(cluster: Cluster) -> None:
    wrong = cluster.call("POST", "/auth/token", {"name": "alice", "password": "nope"})
    unknown = cluster.call("POST", "/auth/token", {"name": "mallory", "password": "nope"})
    assert wrong[0] == unknown[0] == 401 and wrong[1]["error"] == unknown[1]["error"], (wrong, unknown)


def test_a_new_password_voids_older_tokens_and_a_user_may_change_only_their_own(cluster: Cluster) -> None:
    old = cluster.ok("POST", "/auth/token", {"name": "bob", "password": PASSWORDS["bob"]}, user=None)["token"]
    assert cluster.call("POST", "/auth/users/alice/password", {"password": "x"}, user="bob")[0] == 403
    cluster.ok("POST", "/auth/users/bob/password", {"password": "bob-new"}, user="bob")
    try:
        status, answer = cluster.call("GET", "/leases", headers=bearer(old))
        assert status == 401 and answer["reason"] == "token_void", answer
        assert cluster.call("GET", "/leases", user="bob")[0] == 401  # the old password
    finally:
        new = {"Authorization": "Basic " + base64.b64encode(b"bob:bob-new").decode()}
        assert cluster.call("POST", "/auth/users/bob/password", {"password": PASSWORDS["bob"]}, headers=new)[0] == 200


def test_root_cannot_be_deleted_while_auth_is_on(cluster: Cluster) -> None:
    status, answer = cluster.call("DELETE", "/auth/users/root", user="root")
    assert status == 409 and "root" in answer["error"], answer


def test_a_new_node_joins_with_an_admin_token_and_is_refused_without(cluster: Cluster, tmp_path: Path) -> None:
    http_port, raft_port = free_ports(2)
    command = [sys.executable, "-m", "raftkv", "node", "--join", cluster.urls[0], "--name", "node4",
               "--advertise-client", f"http://127.0.0.1:{http_port}", "--advertise-peer", f"127.0.0.1:{raft_port}",
               "--data-dir", str(tmp_path / "node4")]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "(401)" in refused.stderr, refused.stderr[-2000:]
    token = cluster.ok("POST", "/auth/token", {"name": "root", "password": PASSWORDS["root"]}, user=None)["token"]
    with open(tmp_path / "node4.log", "wb") as log:
        joiner = subprocess.Popen([*command, "--join-token", token], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{http_port}", timeout_s=30, why=(tmp_path / "node4.log").read_text())
        joined = [m for m in cluster.ok("GET", "/members", user=None)["members"] if m["name"] == "node4"]
        assert joined, "node4 is not a member"
        # It caught up, and serves reads with the same users (it learnt them from the log).
        url = f"http://127.0.0.1:{http_port}"
        assert http("GET", url + "/kv/config", headers=basic("alice"))[1]["value"] == "v1"
        assert http("GET", url + "/kv/other", headers=basic("alice"))[0] == 403
    finally:
        joiner.terminate()
        joiner.wait(10)
    cluster.ok("DELETE", f"/members/{joined[0]['id']}")


def test_a_node_that_has_not_learnt_auth_is_on_lets_nothing_through(cluster: Cluster) -> None:
    """A follower that cannot hear the cluster (inbound cut: it still sends) believes auth is off
    after the others turned it on. What it lets through unchecked is refused when applied, by
    state machines that know; what needs a quorum to decide waits for one rather than trust it."""
    cluster.ok("POST", "/auth/disable")
    states = {i: cluster.ok("GET", "/raft-state", user=None, node=i) for i in range(3)}
    stale = next(i for i, state in states.items() if state["state"] == "follower")
    other = next(i for i in range(3) if i != stale)
    cut = {"partitioned": True, "direction": "inbound"}
    cluster.ok("POST", "/simulate-partition", cut, user=None, node=stale)
    try:
        cluster.ok("POST", "/auth/enable", user=None, node=other)
        assert cluster.ok("GET", "/auth/status", user=None, node=stale)["enabled"] is False  # it has not heard
        status, answer = cluster.call("PUT", "/kv/app/unchecked", {"value": 1}, node=stale)
        assert status in (503, 504), answer  # never done: the others refuse the entry it forwarded
        assert cluster.call("GET", "/snapshot", node=stale)[0] in (503, 504)  # waits for a quorum, none
    finally:
        cluster.ok("POST", "/simulate-partition", {"partitioned": False}, node=stale)
    cluster.lab.wait_converged()
    for node in range(3):
        assert cluster.call("GET", "/kv/app/unchecked", user="alice", node=node)[0] == 404
    assert cluster.call("PUT", "/kv/app/unchecked", {"value": 1}, node=stale)[0] == 401


# ---- restarts, then off again ------------------------------------------------------------------------


def test_users_roles_and_the_switch_survive_a_restart_of_every_node(cluster: Cluster) -> None:
    cluster.ok("PUT", "/kv/app/restarted", {"value": "kept"}, user="alice")
    cluster.lab.stop()
    cluster.lab.start()
    cluster.lab.wait_for_leader()
    assert cluster.call("GET", "/kv/app/restarted")[0] == 401
    assert cluster.ok("GET", "/kv/app/restarted", user="alice")["value"] == "kept"
    assert cluster.call("GET", "/kv/other", user="alice")[0] == 403


def test_disabling_auth_opens_the_api_again(cluster: Cluster) -> None:
    assert cluster.call("POST", "/auth/disable", user="alice")[0] == 403
    cluster.ok("POST", "/auth/disable")
    assert cluster.ok("GET", "/kv/other", user=None)["value"] == "secret"
    assert cluster.ok("GET", "/auth/status", user=None)["enabled"] is False
    cluster.ok("POST", "/auth/enable", user=None)  # (for any test that runs after)


def test_enabling_auth_needs_a_root_user(tmp_path: Path) -> None:
    lab = LocalCluster(tmp_path / "data", nodes=1).start()
    try:
        lab.wait_for_leader()
        url = lab.url(lab.members[0].id)
        status, answer = http("POST", url + "/auth/enable")
        assert status == 409 and "root" in answer["error"], answer
        assert http("GET", url + "/auth/status")[1]["enabled"] is False
    finally:
        lab.stop()
