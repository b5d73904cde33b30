"""etcd's API with raftkv's users, on a real 3-node cluster serving etcd's gRPC API on every node:
users, roles and `auth enable` set up with Debian's etcdctl; a user with readwrite on a prefix
reads and writes under it, over every kind of RPC, and gets etcd's "permission denied" outside
it; etcd's messages for a wrong password, no user and a bad token; what only an administrator
may do; one replicated set of users for etcd's API and raftkv's; raftkv's bearer tokens as etcd's
`token` metadata and etcd's tokens on raftkv's API; the JSON gateway's Authorization header; and
`auth disable` through etcdctl.

One cluster serves the whole module and each test uses keys of its own. The users, roles and
keys the module starts from are set up once, by whichever test first needs them (`auth_on`,
`auth_off`), so that every test holds run alone or in any order.
"""

from __future__ import annotations

import base64
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cluster import LocalCluster, http

from raftkv.api.auth import range_prefix
from raftkv.etcd.admission import range_need
from raftkv.etcd.auth import etcd_permission, raftkv_permission
from raftkv.etcd.convert import Bounds, prefix_end
from raftkv.etcd.errors import EtcdError
from raftkv.etcd.pb import auth_pb2, rpc_pb2, rpc_pb2_grpc
from raftkv.kv import Access, Permission

pytestmark = [pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl not installed (./dev test does)"),
              pytest.mark.timeout(120)]

ENV = {"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
PASSWORDS = {"root": "root-pw", "alice": "alice-pw", "bob": "bob-pw"}
DENIED = "etcdserver: permission denied"
READWRITE = auth_pb2.Permission.READWRITE


class Etcd:
    def __init__(self, lab: LocalCluster, endpoints: dict[str, str]) -> None:
        self.lab = lab
        self.endpoints = endpoints  # node id -> host:port of its etcd gRPC API
        self.set_up: dict[str, str] | None = None  # what etcdctl printed for each step of set_up_with_etcdctl

    def run(self, *args: str, user: str | None = None, password: str | None = None, endpoint: str | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        endpoints = self.endpoints[endpoint] if endpoint else ",".join(self.endpoints.values())
        who = ["--user", f"{user}:{password or PASSWORDS[user]}"] if user else []
        return subprocess.run(["etcdctl", "--endpoints", endpoints, "--dial-timeout", "10s", "--command-timeout",
                               "10s", *who, *args], input=stdin, capture_output=True, text=True, timeout=30, env=ENV)

    def ok(self, *args: str, **kwargs: str | None) -> str:
        done = self.run(*args, **kwargs)
        assert done.returncode == 0, f"etcdctl {' '.join(args)}: {done.stderr}"
        return done.stdout

    def refused(self, *args: str, **kwargs: str | None) -> str:
        """What etcdctl says when the call is refused."""
        done = self.run(*args, **kwargs)
        assert done.returncode != 0, f"etcdctl {' '.join(args)} was not refused: {done.stdout}"
        return done.stderr

    def http(self, method: str, path: str, body: object = None, user: str | None = "root",
             headers: dict[str, str] | None = None) -> tuple[int, object]:
        headers = dict(headers or {})
        if user:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
        return http(method, self.lab.url("node2") + path, body, headers=headers)

    def auth_enabled(self) -> bool:
        status, body = self.http("GET", "/auth/status", user=None)
        assert status == 200, body
        return body["enabled"]

    def set_up_with_etcdctl(self) -> None:
        """Once per cluster: users root and alice, role app (readwrite on the prefix app/, read on the
        key config) granted to alice, the keys config and other, all through etcdctl while auth is
        off (as in etcd, anyone may then), and auth enabled."""
        if self.set_up is not None:
            return
        said = {}
        for user in ("root", "alice"):
            said[f"user add {user}"] = self.ok("user", "add", f"{user}:{PASSWORDS[user]}")
        said["role add app"] = self.ok("role", "add", "app")
        self.ok("role", "grant-permission", "app", "readwrite", "app/", "--prefix")
        self.ok("role", "grant-permission", "app", "read", "config")
        self.ok("user", "grant-role", "alice", "app")
        self.ok("put", "config", "v1")
        self.ok("put", "other", "secret")
        # etcdctl --user asks for a token first, and goes on without one while auth is off
        said["auth enable"] = self.ok("auth", "enable", user="root")
        self.set_up = said


def watching(watcher: subprocess.Popen[str], put: Callable[[], object], timeout_s: float = 10) -> list[str]:
    """The first event (3 lines) `watcher` prints, made by `put` again and again until it shows (the
    watch may begin after a first put)."""
    lines: list[str] = []
    assert watcher.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(watcher.stdout.readline().rstrip("\n") for _ in range(3)),
                              daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    while reader.is_alive() and time.monotonic() < deadline:
        put()
        reader.join(0.2)
    return lines


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    lab = LocalCluster(Path(tmp_path_factory.mktemp("etcd-auth")), nodes=3)
    endpoints = lab.serve_etcd()
    lab.start()
    try:
        lab.wait_for_leader()
        yield Etcd(lab, endpoints)
    finally:
        lab.stop()


@pytest.fixture
def auth_on(etcd: Etcd) -> Etcd:
    """The module's users, roles and keys set up, auth on, and the keys config and other as set up
    (tests change them)."""
    etcd.set_up_with_etcdctl()
    if not etcd.auth_enabled():
        etcd.ok("auth", "enable", user="root")
    etcd.ok("put", "config", "v1", user="root")
    etcd.ok("put", "other", "secret", user="root")
    return etcd


@pytest.fixture
def auth_off(etcd: Etcd) -> Etcd:
    """The module's users, roles and keys set up, and auth off."""
    etcd.set_up_with_etcdctl()
    if etcd.auth_enabled():
        etcd.ok("auth", "disable", user="root")
    return etcd


def test_etcds_ranges_map_to_raftkvs_keys_and_prefixes() -> None:
    assert prefix_end(b"app/") == b"app0" and prefix_end(b"a\xff") == b"b" and prefix_end(b"\xff") == b"\0"
    assert raftkv_permission(READWRITE, b"app/", b"app0") == Permission(Access.READWRITE, "app/", prefix=True)
    assert raftkv_permission(READWRITE, b"config", b"") == Permission(Access.READWRITE, "config")
    assert raftkv_permission(READWRITE, b"\0", b"\0") == Permission(Access.READWRITE, "", prefix=True)
    for key, range_end in ((b"a", b"z"), (b"a", b"\0"), (b"app/", b"app1")):
        with pytest.raises(EtcdError, match="a key or a prefix only"):
            raftkv_permission(READWRITE, key, range_end)
    for permission in (Permission(Access.READ, "app/", prefix=True), Permission(Access.WRITE, "k"),
                       Permission(Access.READ, "", prefix=True)):
        shown = etcd_permission(permission)
        assert shown is not None and raftkv_permission(shown.permType, shown.key, shown.range_end) == permission
    assert etcd_permission(Permission(Access.ADMIN)) is None
    # what a read of a range needs: the prefix --prefix names, or what start and end share
    assert range_prefix("", "app/", "app0") == "app/" and range_prefix("", "app/a", "app/z") == "app/"
    assert range_prefix("", "app/", "app1") == "app" and range_prefix("", "a", None) == ""
    # what --prefix sends needs the prefix a grant by --prefix gives, whatever bytes it ends in
    for prefix in (b"app/", b"q\xff\xff", b"b\xff", b"\xff", b"\xd0\xbf", b"\0", b"\0\xff"):
        granted = raftkv_permission(READWRITE, prefix, prefix_end(prefix))
        assert range_need(Access.READ, Bounds(prefix, prefix_end(prefix))) == (Access.READ, None, granted.key)
    assert range_need(Access.READ, Bounds(b"\0", b"\0")) == (Access.READ, None, "")  # every key
    assert range_need(Access.READ, Bounds(b"q\xff\xff", b"s")) == (Access.READ, None, "")  # wider than q\xff\xff


def test_etcdctl_sets_users_and_roles_up_and_enables_auth(auth_on: Etcd) -> None:
    etcd = auth_on
    assert etcd.set_up == {"user add root": "User root created\n", "user add alice": "User alice created\n",
                           "role add app": "Role app created\n", "auth enable": "Authentication Enabled\n"}
    assert "etcdserver: user name is empty" in etcd.refused("get", "config")
    assert etcd.ok("user", "list", user="root").split() == ["alice", "root"]
    assert etcd.ok("role", "list", user="root").split() == ["app", "root"]
    role = etcd.ok("role", "get", "app", user="root")
    assert "[app/, app0) (prefix app/)" in role and "\tconfig\n" in role, role
    assert etcd.ok("user", "get", "alice", user="root") == "User: alice\nRoles: app\n"


def test_a_user_reads_and_writes_under_her_prefix_on_every_node_and_nothing_else(auth_on: Etcd) -> None:
    etcd = auth_on
    for node in etcd.endpoints:  # followers check what the leader does
        assert etcd.ok("put", "app/u/a", node, user="alice", endpoint=node) == "OK\n"
        assert etcd.ok("get", "config", user="alice", endpoint=node) == "config\nv1\n"
        assert DENIED in etcd.refused("put", "config", "v2", user="alice", endpoint=node)
        assert DENIED in etcd.refused("get", "other", user="alice", endpoint=node)
    assert etcd.ok("get", "app/u/", "--prefix", user="alice") == "app/u/a\nnode3\n"
    assert DENIED in etcd.refused("get", "app", "--prefix", user="alice")  # wider than granted
    assert DENIED in etcd.refused("get", "", "--from-key", user="alice")
    assert etcd.ok("get", "app/u/a", "app/u/z", user="alice") == "app/u/a\nnode3\n"  # a range inside app/
    txn = 'value("config") = "v1"\n\nput app/u/t yes\n\nget other\n\n'  # a read of `other`, even unreached
    assert DENIED in etcd.refused("txn", user="alice", stdin=txn)
    assert etcd.ok("txn", user="alice", stdin='value("config") = "v1"\n\nput app/u/t yes\n\n\n') == "SUCCESS\n\nOK\n"
    reads_only = 'value("config") = "v1"\n\nget app/u/t\n\nget {}\n\n'  # served as a read, checked as one
    assert etcd.ok("txn", user="alice", stdin=reads_only.format("config")) == "SUCCESS\n\napp/u/t\nyes\n"
    assert DENIED in etcd.refused("txn", user="alice", stdin=reads_only.format("other"))
    assert etcd.ok("del", "app/u/", "--prefix", "--prev-kv", user="alice").startswith("2\n")
    assert DENIED in etcd.refused("del", "other", user="alice")


def test_watches_and_leases_follow_the_same_rules(auth_on: Etcd) -> None:
    etcd = auth_on
    args = ["etcdctl", "--endpoints", etcd.endpoints["node1"], "--user", f"alice:{PASSWORDS['alice']}"]
    watcher = subprocess.Popen([*args, "watch", "app/w/", "--prefix"], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert watching(watcher, lambda: etcd.ok("put", "app/w/1", "x", user="alice")) == ["PUT", "app/w/1", "x"]
    finally:
        watcher.kill()
        watcher.communicate(timeout=10)
    refused = subprocess.run([*args, "watch", "other"], capture_output=True, text=True, timeout=30, env=ENV)
    assert DENIED in refused.stdout + refused.stderr, refused

    lease = re.match(r"lease ([0-9a-f]+) granted", etcd.ok("lease", "grant", "60", user="alice")).group(1)
    etcd.ok("put", "app/leased", "x", "--lease", lease, user="alice")
    assert "app/leased" in etcd.ok("lease", "timetolive", lease, "--keys", user="alice")
    assert "keepalived with TTL(60)" in etcd.ok("lease", "keep-alive", "--once", lease, user="alice", endpoint="node3")
    assert f"lease {lease} revoked" in etcd.ok("lease", "revoke", lease, user="alice")
    roots = re.match(r"lease ([0-9a-f]+) granted", etcd.ok("lease", "grant", "60", user="root")).group(1)
    etcd.ok("put", "other-leased", "x", "--lease", roots, user="root")
    assert DENIED in etcd.refused("lease", "revoke", roots, user="alice")  # it would delete other-leased
    assert etcd.ok("get", "other-leased", user="root") == "other-leased\nx\n"
    # etcdctl's lock recipe (a lease, a txn, a range read and a watch) under her prefix, and not outside it
    assert etcd.ok("lock", "app/lock", "echo", "held", user="alice") == "held\n"
    assert DENIED in etcd.refused("lock", "other-lock", "echo", "held", user="alice")


def test_wrong_passwords_unknown_users_and_missing_ones_get_etcds_messages(auth_on: Etcd) -> None:
    etcd = auth_on
    failed = "etcdserver: authentication failed, invalid user ID or password"
    assert failed in etcd.refused("get", "config", user="alice", password="wrong")
    assert failed in etcd.refused("get", "config", user="mallory", password="wrong")
    assert "etcdserver: user name is empty" in etcd.refused("put", "app/x", "1")


def test_only_an_administrator_manages_users_and_the_cluster(auth_on: Etcd) -> None:
    etcd = auth_on
    for args in (["user", "list"], ["role", "add", "x"], ["user", "add", "eve:pw"], ["auth", "disable"],
                 ["compaction", "1"], ["endpoint", "hashkv"], ["snapshot", "save", "/dev/null"],
                 ["user", "get", "root"], ["role", "get", "root"]):
        assert DENIED in etcd.refused(*args, user="alice", endpoint="node1"), args
    assert etcd.ok("user", "get", "alice", user="alice") == "User: alice\nRoles: app\n"  # as etcd: oneself,
    assert "[app/, app0) (prefix app/)" in etcd.ok("role", "get", "app", user="alice")  # and one's own roles
    assert len(etcd.ok("member", "list").splitlines()) == 3  # anyone may list members (as GET /members),
    assert DENIED in etcd.refused("member", "remove", "1", user="alice")  # an admin changes them
    assert "etcdserver: user name is empty" in etcd.refused("endpoint", "status")
    assert etcd.ok("endpoint", "status", user="alice").count("127.0.0.1") == 3  # any user asks for the status
    health = etcd.run("endpoint", "health", user="alice")  # (etcdctl reads "permission denied" as healthy)
    assert (health.stdout + health.stderr).count("is healthy") == 3, health


def test_etcds_users_are_raftkvs_users(auth_on: Etcd) -> None:
    etcd = auth_on
    assert [u["name"] for u in etcd.http("GET", "/auth/users")[1]["users"]] == ["alice", "root"]
    assert {"access": "readwrite", "key": "app/", "prefix": True} in etcd.http("GET", "/auth/roles/app")[1][
        "permissions"]
    assert etcd.http("PUT", "/auth/users/bob", {"password": PASSWORDS["bob"]})[0] == 200
    assert etcd.http("PUT", "/auth/users/bob/roles/app")[0] == 200
    assert etcd.ok("user", "list", user="root").split() == ["alice", "bob", "root"]
    assert etcd.ok("put", "app/by-bob", "1", user="bob") == "OK\n"
    assert etcd.http("GET", "/kv/app/by-bob", user="bob")[1]["value"] == "1"
    etcd.ok("user", "revoke-role", "bob", "app", user="root")  # and a change made over etcd's API holds at once
    assert etcd.http("GET", "/kv/app/by-bob", user="bob")[0] == 403
    assert DENIED in etcd.refused("get", "app/by-bob", user="bob")
    etcd.ok("user", "delete", "bob", user="root")
    assert etcd.http("GET", "/auth/users/bob")[0] == 404


def test_a_permission_is_a_key_or_a_prefix_and_a_grant_replaces_its_type(auth_on: Etcd) -> None:
    etcd = auth_on
    for args in (["a", "z"], ["a", "--from-key"]):
        refused = etcd.refused("role", "grant-permission", "app", "read", *args, user="root")
        assert "raftkv grants permissions on a key or a prefix only" in refused, args
    etcd.ok("role", "add", "reader", user="root")
    etcd.ok("role", "grant-permission", "reader", "read", "", "--prefix", user="root")  # etcd's every key
    assert etcd.http("GET", "/auth/roles/reader")[1]["permissions"] == [{"access": "read", "key": "", "prefix": True}]
    assert etcd.ok("role", "get", "reader", user="root") == "Role reader\nKV Read:\n\t[\x00, <open ended>\nKV Write:\n"
    etcd.ok("role", "grant-permission", "app", "readwrite", "config", user="root")  # replaces read, as in etcd
    assert etcd.ok("put", "config", "v2", user="alice") == "OK\n"
    assert [p for p in etcd.http("GET", "/auth/roles/app")[1]["permissions"] if p["key"] == "config"] == [
        {"access": "readwrite", "key": "config", "prefix": False}]
    watch = ["etcdctl", "--endpoints", etcd.endpoints["node3"], "--user", f"alice:{PASSWORDS['alice']}", "watch"]
    watcher = subprocess.Popen([*watch, "config"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert watching(watcher, lambda: etcd.ok("put", "config", "v3", user="alice")) == ["PUT", "config", "v3"]
        etcd.ok("role", "revoke-permission", "app", "config", user="root")
        assert DENIED in etcd.refused("get", "config", user="alice")
        etcd.ok("put", "config", "v4", user="root")
        out, err = watcher.communicate(timeout=20)  # an open watch ends as its permission does
    finally:
        watcher.kill()
    assert "v4" not in out and "watch is canceled by the server" in err, (out, err)  # (etcdctl drops the reason)
    assert "etcdserver: permission is not granted to the role" in etcd.refused(
        "role", "revoke-permission", "app", "config", user="root")
    etcd.ok("role", "grant-permission", "app", "read", "config", user="root")
    etcd.ok("role", "delete", "reader", user="root")


def test_raftkv_tokens_are_etcd_tokens_and_back(auth_on: Etcd) -> None:
    etcd = auth_on
    status, issued = etcd.http("POST", "/auth/token", {"name": "alice", "password": PASSWORDS["alice"]}, user=None)
    assert status == 200
    with grpc.insecure_channel(etcd.endpoints["node2"]) as channel:
        kv, auth = rpc_pb2_grpc.KVStub(channel), rpc_pb2_grpc.AuthStub(channel)
        token = [("token", issued["token"])]
        kv.Put(rpc_pb2.PutRequest(key=b"app/tok", value=b"1"), metadata=token, timeout=10)
        assert kv.Range(rpc_pb2.RangeRequest(key=b"app/tok"), metadata=token, timeout=10).kvs[0].value == b"1"
        for metadata, code, message in (
                (token, grpc.StatusCode.PERMISSION_DENIED, DENIED),
                ([("token", "not-a-token")], grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token"),
                ([], grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty")):
            with pytest.raises(grpc.RpcError) as refused:
                kv.Range(rpc_pb2.RangeRequest(key=b"other"), metadata=metadata, timeout=10)
            assert (refused.value.code(), refused.value.details()) == (code, message)
        etcds = auth.Authenticate(rpc_pb2.AuthenticateRequest(name="alice", password=PASSWORDS["alice"]),
                                  timeout=10).token
    assert etcd.http("GET", "/kv/app/tok", user=None, headers={"Authorization": f"Bearer {etcds}"})[0] == 200

    def gateway(path: str, body: dict, authorization: str | None) -> tuple[int, object]:
        headers = {"Authorization": authorization} if authorization else {}
        return http("POST", etcd.lab.url("node3") + path, body, headers=headers)

    key = {"key": base64.b64encode(b"app/tok").decode()}
    assert gateway("/v3/kv/range", key, None) == (400, {"error": "etcdserver: user name is empty", "code": 3,
                                                        "message": "etcdserver: user name is empty"})
    status, answer = gateway("/v3/auth/authenticate", {"name": "alice", "password": PASSWORDS["alice"]}, None)
    assert status == 200, answer
    for authorization in (answer["token"], f"Bearer {issued['token']}"):  # etcd's bare token, raftkv's Bearer
        status, got = gateway("/v3/kv/range", key, authorization)
        assert status == 200 and got["count"] == "1", got
    status, denied = gateway("/v3/kv/range", {"key": base64.b64encode(b"other").decode()}, answer["token"])
    assert status == 403 and denied["error"] == DENIED, denied


def test_etcdctl_disables_auth(auth_on: Etcd) -> None:
    etcd = auth_on
    assert DENIED in etcd.refused("auth", "disable", user="alice")
    assert etcd.ok("auth", "disable", user="root") == "Authentication Disabled\n"
    assert etcd.ok("get", "other") == "other\nsecret\n"
    assert etcd.http("GET", "/auth/status", user=None)[1]["enabled"] is False


def test_a_watch_stream_opened_while_auth_was_off_gets_nothing_unchecked_once_it_is_on(auth_off: Etcd) -> None:
    etcd = auth_off
    requests: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()

    def create(key: bytes) -> rpc_pb2.WatchRequest:
        return rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=key))

    with grpc.insecure_channel(etcd.endpoints["node1"]) as channel:
        responses = rpc_pb2_grpc.WatchStub(channel).Watch(iter(requests.get, None), timeout=30)
        requests.put(create(b"other"))
        opened = next(responses)
        assert opened.created and not opened.canceled
        etcd.ok("auth", "enable", user="root")
        try:
            requests.put(create(b"config"))  # on the same stream, which has no user
            refused = next(responses)
            assert refused.canceled and refused.cancel_reason == "etcdserver: user name is empty", refused
            etcd.ok("put", "other", "changed", user="root")
            ended = next(responses)  # the watch opened before ends instead of showing the change
            assert ended.canceled and ended.watch_id == opened.watch_id and not ended.events, ended
            assert "auth was enabled after this watch began" in ended.cancel_reason
        finally:
            requests.put(None)
            etcd.ok("auth", "disable", user="root")
