"""Tests of the HTTP API layer (raftkv.api) against a fake node.

`FakeNode` implements the node interface the API programs against over a real in-memory
KVStateMachine, applying each proposal at once (a one-node "cluster" with no Raft), and lets a
test make `propose` / `read_barrier` raise any node error. This tests the API's own job: routes,
validation, status mapping, forwarding, errors. The real node is exercised end to end elsewhere.

Every test's requests are recorded through the node's `record_request` hook; the fixture then
checks that each (route, method, status) seen is documented in /openapi.json, and every JSON
answer is validated against the schema the document gives for it (`checked_app`), so the
document cannot drift from the behaviour.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import Any

import aiohttp
import argon2
import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from raftkv.api import create_app, openapi_document
from raftkv.api.connections import BoundedRunner, ConnectionLimits
from raftkv.kv import ROOT, Access, AsUser, AuthChange, AuthChangeOp, Command, KVStateMachine, Permission, Put, encode
from raftkv.node import FORWARDED_TO
from raftkv.node.errors import MembershipRefused, NoLeaderError, NotAppliedError, OutcomeUnknownError

SMALL = {"max_body_bytes": 64 * 1024, "max_key_bytes": 64, "max_value_bytes": 1024}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


class FakeNode:
    """The node interface over an in-memory state machine; errors are injected per test."""

    def __init__(self, node_id: str = "n1", url: str = "http://fake-n1") -> None:
        self.id, self.url = node_id, url
        self.fault_injection = True  # a lab node; tests/test_security.py covers a node without it
        self.kv = KVStateMachine()
        self.index = 0
        self.term = 1
        self.leader: str | None = node_id
        self.propose_error: Exception | None = None
        self.forwarded_to: str | None = None  # as if a follower's node forwarded every write there
        self.read_error: Exception | None = None
        self.propose_delay_seconds = 0.0
        self.proposals: list[Command] = []
        self.barriers = 0
        self.partition: dict[str, Any] = {"partitioned": False, "peers": None}
        self.link: dict[str, Any] = {}
        self.events: list[dict[str, Any]] | None = [{"type": "status", "term": 1}, {"type": "commit", "index": 1}]
        self.watch_closed = asyncio.Event()
        self.requests: list[tuple[str, str, int]] = []
        self.gathered: list[bool] = []  # per proposal: whether the write may wait to be gathered
        self.gathered_reads: list[bool] = []  # the same, per read barrier

    def leader_id(self) -> str | None:
        return self.leader

    def leader_url(self) -> str | None:
        return self.url if self.leader == self.id else None

    async def propose(self, command: Command, *, gathered: bool = False) -> dict:
        self.proposals.append(command)
        self.gathered.append(gathered)
        if self.propose_delay_seconds:
            await asyncio.sleep(self.propose_delay_seconds)
        if self.propose_error is not None:
            raise self.propose_error
        self.index += 1
        result = self.kv.apply(self.index, encode(command))
        return result if self.forwarded_to is None else {**result, FORWARDED_TO: self.forwarded_to}

    async def read_barrier(self, *, gathered: bool = False) -> None:
        self.barriers += 1
        self.gathered_reads.append(gathered)
        if self.read_error is not None:
            raise self.read_error

    def raft_state(self, digest: bool = False) -> dict:
        return {
            "nodeId": self.id,
            "state": "leader",
            "term": self.term,
            "votedFor": self.id,
            "logLength": self.index,
            "commitIndex": self.index,
            "lastApplied": self.index,
            "leaderId": self.leader,
            "snapshotIndex": 0,
            "peers": [{"id": "n2", "matchIndex": 0}],
        }

    async def force_election(self) -> dict:
        self.term += 1
        return {"nodeId": self.id, "term": self.term, "state": "candidate"}

    def set_partition(self, partitioned: bool, peers: list[str] | None, direction: str = "both") -> dict:
        if unknown := set(peers or ()) - {"n2", "n3"}:
            raise ValueError(f"unknown peer ids: {sorted(unknown)}")
        self.partition = {"partitioned": partitioned, "peers": peers, "direction": direction}
        return dict(self.partition)

    def set_link_quality(self, peers: list[str] | None, loss_percent: float | None, delay_ms: float | None) -> dict:
        if unknown := set(peers or ()) - {"n2", "n3"}:
            raise ValueError(f"unknown peer ids: {sorted(unknown)}")
        self.link = {"peers": peers, "loss_percent": loss_percent, "delay_ms": delay_ms}
        return dict(self.link)

    def health(self) -> dict:
        if self.leader is None:
            return {"status": "unavailable", "reason": "no leader is known", "leader": None, "hasLeader": False}
        return {"status": "ok", "leader": self.leader, "hasLeader": True}

    def metrics_text(self) -> tuple[bytes, str]:
        return b"# TYPE raftkv_up gauge\nraftkv_up 1\n", "text/plain; version=0.0.4; charset=utf-8"

    async def raft_events(self) -> AsyncIterator[dict]:
        try:
            if self.events is None:  # a live stream that never ends on its own
                while True:
                    yield {"type": "tick"}
                    await asyncio.sleep(0.01)
            for event in self.events:
                yield event
        finally:
            self.watch_closed.set()

    def record_request(self, route: str, method: str, status: int, seconds: float) -> None:
        assert seconds >= 0
        self.requests.append((route, method, status))

    def members_view(self) -> dict:
        return {"members": [{"id": self.id, "name": self.id, "clientURL": self.url, "peerURL": "h:1", "role": "voter",
                             "isLeader": True}], "leader": self.leader, "removedIDs": []}

    async def add_member(self, name: str, client_url: str, peer_url: str, learner: bool = True) -> dict:
        member = {"id": f"{name}-1", "name": name, "clientURL": client_url, "peerURL": peer_url,
                  "role": "learner" if learner else "voter", "isLeader": False}
        return {"member": member, "members": [*self.members_view()["members"], member]}

    async def promote_member(self, member_id: str) -> dict:
        raise MembershipRefused("not_caught_up", f"learner {member_id} is not in sync", lagEntries=500)

    async def move_member(self, member_id: str, peer_url: str) -> dict:
        if peer_url == "h:4001":
            raise MembershipRefused("duplicate", "peerURL is already n2's", member="n2", field="peerURL")
        moved = {**self.members_view()["members"][0], "peerURL": peer_url}
        return {"member": moved, "members": [moved]}

    async def remove_member(self, member_id: str) -> dict:
        raise MembershipRefused("unknown", f"no member {member_id!r}")


def assert_documented(requests: list[tuple[str, str, int]]) -> None:
    paths = openapi_document(max_body_bytes=1, max_key_bytes=1, max_value_bytes=1)["paths"]
    for route, method, status in requests:
        if route in paths and method.lower() in paths[route]:
            documented = paths[route][method.lower()]["responses"]
            assert str(status) in documented, f"{method} {route} answered {status}, not in /openapi.json"


def checked_app(node: FakeNode, **limits: int) -> web.Application:
    """The API app with an outermost middleware that validates every JSON answer of a documented
    operation against the schema /openapi.json gives for its status."""
    app = create_app(node, **limits)
    doc = openapi_document(**(limits or SMALL))

    @web.middleware
    async def validate(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        resource = request.match_info.route.resource
        operation = doc["paths"].get(resource.canonical if resource else "", {}).get(request.method.lower())
        if operation is None or not isinstance(response, web.Response) or response.content_type != "application/json":
            return response
        documented = operation["responses"].get(str(response.status))
        assert documented is not None, f"{request.method} {resource.canonical} answered {response.status}, undocumented"
        if "content" not in documented:  # HEAD: no body to check
            return response
        schema = documented["content"]["application/json"]["schema"]
        try:
            jsonschema.validate(json.loads(response.body), {**schema, "components": doc["components"]})
        except jsonschema.ValidationError as exc:
            raise AssertionError(f"{request.method} {request.path} {response.status}: {exc.message}") from None
        return response

    app.middlewares.insert(0, validate)
    return app


class NodeServer(TestServer):
    """Serves as a node process does: every connection through the connection bounds, and the key
    routes through the front (raftkv/api/front.py), which hands anything else to aiohttp."""

    limits = ConnectionLimits(max_connections=100, header_timeout_s=5, body_timeout_s=5, idle_timeout_s=30,
                              send_timeout_s=5)

    async def _make_runner(self, **kwargs: Any) -> BoundedRunner:
        return BoundedRunner(self.app, self.limits, "n1", **kwargs)


@pytest.fixture(params=["aiohttp", "node"])
def serving(request: pytest.FixtureRequest) -> type[TestServer]:
    """Each test of the API runs twice: on aiohttp alone, and as a node process serves it."""
    return TestServer if request.param == "aiohttp" else NodeServer


@pytest.fixture
async def api(serving: type[TestServer]) -> AsyncIterator[tuple[FakeNode, TestClient]]:
    node = FakeNode()
    async with TestClient(serving(checked_app(node, **SMALL))) as client:
        yield node, client
    assert_documented(node.requests)


async def call(
    client: TestClient,
    method: str,
    path: str | URL,
    body: Any = None,
    *,
    raw: bytes | str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict, Any]:
    """(status, JSON body, headers); every response of these routes must be JSON naming the node."""
    data = raw if raw is not None else (None if body is None else json.dumps(body))
    async with client.request(method, path, data=data, headers=headers) as resp:
        assert resp.content_type == "application/json", (resp.status, await resp.text())
        payload = await resp.json()
        assert "node" in payload
        return resp.status, payload, resp.headers


# ---- keys: happy paths ---------------------------------------------------------------------------


async def test_put_get_delete_on_kv_routes(api: tuple[FakeNode, TestClient]) -> None:
    node, client = api
    status, body, _ = await call(client, "PUT", "/kv/a", {"value": {"n": 1}})
    assert status == 200
    assert body["key"] == "a" and body["value"] == {"n": 1} and body["revision"] == 1
    assert body["node"] == "n1" and body["leader"] == "n1" and body["prev"] is None
    status, body, _ = await call(client, "GET", "/kv/a")
    assert status == 200 and node.barriers == 1
    assert body == {
        "key": "a",
        "value": {"n": 1},
        "create_revision": 1,
        "mod_revision": 1,
        "version": 1,
        "revision": 1,
        "node": "n1",
        "leader": "n1",
    }
    status, body, _ = await call(client, "DELETE", "/kv/a")
    assert status == 200 and body["revision"] == 2 and body["prev"]["value"] == {"n": 1}
    status, body, _ = await call(client, "GET", "/kv/a")
    assert status == 404 and body["key"] == "a" and "error" in body
    status, body, _ = await call(client, "DELETE", "/kv/a")
    assert status == 404 and node.kv.revision == 2


async def test_keys_may_contain_slashes_and_unicode(api: tuple[FakeNode, TestClient]) -> None:
    node, client = api
    for path, key in (
        ("/kv/dir/sub/leaf", "dir/sub/leaf"),
        ("/kv/ma%C3%B1ana%20x", "mañana x"),
        ("/cuenta/123", "cuenta/123"),
    ):
        status, body, _ = await call(client, "PUT", path, {"value": key})
        assert status == 200 and body["key"] == key
        assert node.kv.get(key).value == key


async def test_a_key_is_its_percent_decoded_bytes_and_has_one_spelling(api: tuple[FakeNode, TestClient]) -> None:
    """The first-hour report: /kv/%ff%fe wrote the key "%ff%fe", which /kv/%25ff%25fe also named.
    Now /kv/%ff%fe names the key of the bytes ff fe (as etcd's API does), held as escaped bytes."""
    node, client = api
    for path, key in (("/kv/%ff%fe", "\udcff\udcfe"), ("/%ff", "\udcff"), ("/kv/ok%C3", "ok\udcc3"),
                      ("/kv/%25ff%3F%23", "%ff?#"), ("/kv/%C3%A9", "é")):
        status, body, _ = await call(client, "PUT", URL(path, encoded=True), {"value": path})
        assert status == 200 and body["key"] == key, (path, body)
        status, body, _ = await call(client, "GET", URL(path, encoded=True))
        assert status == 200 and body["key"] == key and body["value"] == path, (path, body)
    assert len(node.kv) == 5
    status, body, _ = await call(client, "GET", URL("/kv?prefix=%ff", encoded=True))  # a query names bytes too
    assert status == 200 and [item["key"] for item in body["items"]] == ["\udcff", "\udcff\udcfe"], body
    # In a JSON body an escaped byte is its lone surrogate; one that spells UTF-8 ("é") or holds no
    # byte is refused, so a key has one spelling there too.
    status, body, _ = await call(client, "POST", "/txn", {"success": [{"op": "get", "key": "\udcff\udcfe"}]})
    assert status == 200 and body["responses"][0]["kv"]["value"] == "/kv/%ff%fe", body
    for bad, why in (("\udcc3\udca9", "spell valid UTF-8"), ("\ud800", "lone surrogate")):
        status, body, _ = await call(client, "POST", "/txn", {"success": [{"op": "put", "key": bad, "value": 1}]})
        assert status == 400 and why in body["error"], body
    assert len(node.kv) == 5


async def test_seed_root_routes(api: tuple[FakeNode, TestClient]) -> None:
    node, client = api
    # The seed's curl sends application/x-www-form-urlencoded: the body is JSON regardless.
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, body, _ = await call(client, "PUT", "/saldo_cuenta_123", raw='{"value":1000}', headers=form)
    assert status == 200 and body["key"] == "saldo_cuenta_123" and body["value"] == 1000
    status, body, _ = await call(client, "GET", "/saldo_cuenta_123")
    assert status == 200 and body["value"] == 1000
    status, body, _ = await call(client, "GET", "/kv/saldo_cuenta_123")
    assert status == 200 and body["value"] == 1000
    status, body, _ = await call(client, "DELETE", "/saldo_cuenta_123")
    assert status == 200 and node.kv.get("saldo_cuenta_123") is None
    status, body, _ = await call(client, "GET", "/nothing-here")
    assert status == 404


async def test_seed_curl_commands_verbatim(api: tuple[FakeNode, TestClient]) -> None:
    # curl is part of the set-up (`./dev test` installs Debian's curl). Without it this skips with
    # the reason, except under CI (CI=...), where it fails: CI must run the seed's commands.
    if shutil.which("curl") is None:
        import os  # only this test reads the environment

        reason = "curl is missing (install Debian's curl: ./dev test does)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the seed's curl commands, but {reason}")
        pytest.skip(reason)
    node, client = api
    base = str(client.make_url("")).rstrip("/")

    async def curl(*args: str) -> dict:
        proc = await asyncio.create_subprocess_exec("curl", "-s", *args, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        return json.loads(out)

    assert (await curl("-X", "PUT", f"{base}/key1", "-d", '{"value":"value$i"}'))["revision"] == 1
    assert (await curl(f"{base}/key1"))["value"] == "value$i"
    assert (await curl("-X", "POST", f"{base}/force-election"))["term"] == 2
    assert (await curl("-X", "POST", f"{base}/simulate-partition", "-d", '{"partitioned": true}'))["partitioned"]
    assert node.partition == {"partitioned": True, "peers": None, "direction": "both"}
    assert (await curl("-X", "POST", f"{base}/simulate-partition", "-d", '{"partitioned": false}'))["node"] == "n1"
    assert (await curl(f"{base}/raft-state"))["nodeId"] == "n1"


async def test_stale_read_skips_the_barrier(api: tuple[FakeNode, TestClient]) -> None:
    node, client = api
    await call(client, "PUT", "/kv/a", {"value": 1})
    node.read_error = NotAppliedError("no leader could confirm this read")
    status, _, headers = await call(client, "GET", "/kv/a")
    assert status == 503 and headers["Retry-After"] == "1"
    for query in ("stale=true", "stale", "stale=1"):
        status, body, _ = await call(client, "GET", f"/kv/a?{query}")
        assert status == 200 and body["value"] == 1
        status, body, _ = await call(client, "GET", f"/kv?prefix=a&{query}")
        assert status == 200 and body["count"] == 1
    assert node.barriers == 1


async def test_range(api: tuple[FakeNode, TestClient]) -> None:
    _, client = api
    for key in ("b", "a2", "a1", "a3", "c"):
        await call(client, "PUT", f"/kv/{key}", {"value": key})
    status, body, _ = await call(client, "GET", "/kv?prefix=a&limit=2")
    assert status == 200 and body["more"] is True and body["count"] == 2
    assert [i["key"] for i in body["items"]] == ["a1", "a2"] and body["items"][0]["value"] == "a1"
    status, body, _ = await call(client, "GET", "/kv")
    assert [i["key"] for i in body["items"]] == ["a1", "a2", "a3", "b", "c"] and body["more"] is False
    assert body["revision"] == 5 and "next" not in body


async def test_range_pages_with_start_and_next_and_stops_at_end(api: tuple[FakeNode, TestClient]) -> None:
    _, client = api
    for i in range(7):
        await call(client, "PUT", f"/kv/p/{i}", {"value": i})
    await call(client, "PUT", "/kv/q", {"value": "other prefix"})
    seen, start = [], ""
    while True:
        status, body, _ = await call(client, "GET", f"/kv?prefix=p/&limit=3&start={start}")
        assert status == 200 and body["count"] == len(body["items"]) <= 3
        seen += [item["key"] for item in body["items"]]
        if not body["more"]:
            break
        start = body["next"]
    assert seen == [f"p/{i}" for i in range(7)]
    status, body, _ = await call(client, "GET", "/kv?start=p/2&end=p/5")
    assert [item["key"] for item in body["items"]] == ["p/2", "p/3", "p/4"] and body["more"] is False
    assert (await call(client, "GET", "/kv?prefix=" + "k" * 65))[0] == 413


async def test_a_txn_ordering_a_number_against_a_string_is_400_and_changes_nothing(
        api: tuple[FakeNode, TestClient]) -> None:
    node, client = api
    await call(client, "PUT", "/kv/stock", {"value": 5})
    status, body, _ = await call(client, "POST", "/txn", {
        "compare": [{"key": "stock", "target": "value", "op": ">", "value": "0"}],
        "success": [{"op": "put", "key": "stock", "value": 4}], "failure": [{"op": "put", "key": "x", "value": 1}]})
    assert status == 400 and "holds a number" in body["error"] and "a string" in body["error"]
    assert node.kv.get("stock").value == 5 and node.kv.get("x") is None and node.kv.revision == 1


async def test_head_answers_like_get_without_a_body(api: tuple[FakeNode, TestClient]) -> None:
    _, client = api
    await call(client, "PUT", "/kv/a", {"value": "x" * 100})
    for path, status in (("/kv/a", 200), ("/a", 200), ("/kv/absent", 404), ("/health", 200), ("/raft-state", 200)):
        async with client.head(path) as resp:
            assert resp.status == status and await resp.read() == b"", path
            assert int(resp.headers["Content-Length"]) > 0
    assert (await call(client, "GET", "/raft-state?digest=1"))[0] == 200
    assert (await call(client, "GET", "/raft-state?digest=maybe"))[0] == 400
    assert (await call(client, "GET", "/raft-state?x=1"))[0] == 400


async def test_txn(api: tuple[FakeNode, TestClient]) -> None:
    node, client = api
    await call(client, "PUT", "/kv/from", {"value": 100})
    txn = {
        "compare": [{"key": "from", "target": "value", "op": ">", "value": 30}],
        "success": [
            {"op": "put", "key": "from", "value": 70},
            {"put": {"key": "to", "value": 30}},
            {"op": "get", "key": "to"},
        ],
        "failure": [{"op": "get", "key": "from"}],
    }
    status, body, _ = await call(client, "POST", "/txn", txn)
    assert status == 200 and body["succeeded"] is True and body["revision"] == 2 and body["leader"] == "n1"
    assert body["responses"][2]["kv"]["value"] == 30
    assert node.kv.get("from").value == 70 and node.kv.get("to").value == 30
    status, body, _ = await call(
        client, "POST", "/txn", txn | {"compare": [{"key": "from", "target": "value", "op": ">", "value": 100}]}
    )
    assert status == 200 and body["succeeded"] is False and body["responses"][0]["kv"]["value"] == 70
    assert node.kv.revision == 2


# ---- compare-and-set and exactly-once ------------------------------------------------------------


@pytest.mark.parametrize(
    "precondition", [{"prev_value": 2}, {"prev_revision": 7}, {"prev_revision": 0}, {"prev_exist": False}]
)
async def test_failed_cas_is_412_and_writes_nothing(api: tuple[FakeNode, TestClient], precondition: dict) -> None:
    node, client = api
    await call(client, "PUT", "/kv/a", {"value": 1})
    status, body, _ = await call(client, "PUT", "/kv/a", {"value": 99, **precondition})
    assert status == 412 and "precondition failed" in body["error"]
    assert body["current"]["value"] == 1 and body["current"]["mod_revision"] == 1 and body["key"] == "a"
    assert node.kv.get("a").value == 1 and node.kv.revision == 1


async def test_cas_success_and_create_only(api: tuple[FakeNode, TestClient]) -> None:
    node, client = api
    assert (await call(client, "PUT", "/kv/a", {"value": 1, "prev_exist": False}))[0] == 200
    status, body, _ = await call(client, "PUT", "/kv/a", {"value": 2, "prev_revision": 1, "prev_value": 1})
    assert status == 200 and body["revision"] == 2
    status, body, _ = await call(client, "PUT", "/kv/nope", {"value": 1, "prev_exist": True})
    assert status == 412 and body["current"] is None
    status, _, _ = await call(client, "DELETE", "/kv/a?prev_revision=1")
    assert status == 412 and node.kv.get("a").value == 2
    status, _, _ = await call(client, "DELETE", "/kv/a", {"prev_revision": 2})
    assert status == 200 and node.kv.get("a") is None


async def test_idempotency_key_makes_retries_exactly_once(api: tuple[FakeNode, TestClient]) -> None:
    node, client = api
    headers = {"Idempotency-Key": "req-42"}
    first = await call(client, "PUT", "/kv/a", {"value": 1}, headers=headers)
    retry = await call(client, "PUT", "/kv/a", {"value": 1}, headers=headers)
    assert first[0] == retry[0] == 200 and first[1] == retry[1] and first[1]["revision"] == 1
    assert "Idempotent-Replayed" not in first[2] and retry[2]["Idempotent-Replayed"] == "true"
    assert node.kv.get("a").value == 1 and node.kv.revision == 1
    assert node.proposals[0].request_id == "req-42"
    in_body = await call(client, "DELETE", "/kv/a", {"request_id": "req-43"})
    assert in_body[0] == 200 and (await call(client, "DELETE", "/kv/a", {"request_id": "req-43"}))[1] == in_body[1]


async def test_a_reused_request_key_is_422_naming_the_first_use_and_changes_nothing(
        api: tuple[FakeNode, TestClient]) -> None:
    """The first-hour report: a key reused for another request answered 200 with the earlier
    result and silently dropped the new operation."""
    node, client = api
    assert (await call(client, "PUT", "/kv/a", {"value": 1}, headers={"Idempotency-Key": "k1"}))[0] == 200
    status, body, _ = await call(client, "PUT", "/kv/b", {"value": 2}, headers={"Idempotency-Key": "k1"})
    assert status == 422 and body["mismatch"] == "key" and body["first_use"] == {"op": "put", "key": "a"}
    assert 'first used for a put of key "a"' in body["error"] and 'a put of key "b"' in body["error"]
    assert (await call(client, "GET", "/kv/b"))[0] == 404
    status, body, _ = await call(client, "DELETE", "/kv/a", raw='{"request_id": "k1"}',
                                 headers={"Content-Type": "application/json"})
    assert status == 422 and body["mismatch"] == "operation"
    status, body, _ = await call(client, "PUT", "/kv/a", {"value": 3}, headers={"Idempotency-Key": "k1"})
    assert status == 422 and body["mismatch"] == "body" and body["first_index"] == 1
    status, body, _ = await call(client, "POST", "/txn", {"success": [{"op": "put", "key": "a", "value": 1}],
                                                          "request_id": "k1"})
    assert status == 422 and body["mismatch"] == "operation"
    assert node.kv.get("a").value == 1 and node.kv.revision == 1
    status, body, _ = await call(client, "PUT", "/kv/a", {"value": 1, "request_id": "k2"},
                                 headers={"Idempotency-Key": "k1"})
    assert status == 400 and "'k2'" in body["error"] and "'k1'" in body["error"]


async def test_a_504_advises_a_retry_with_the_same_key_only_when_the_write_had_one(
        api: tuple[FakeNode, TestClient]) -> None:
    node, client = api
    node.propose_error = OutcomeUnknownError("not applied within 5 s")
    status, body, _ = await call(client, "PUT", "/kv/a", {"value": 1}, headers={"Idempotency-Key": "k9"})
    assert status == 504 and "same Idempotency-Key ('k9')" in body["error"]
    status, body, _ = await call(client, "POST", "/txn", {"request_id": "k10"})
    assert status == 504 and "('k10')" in body["error"]
    status, body, _ = await call(client, "PUT", "/kv/a", {"value": 1})
    assert status == 504 and "Idempotency-Key" in body["error"] and "same Idempotency-Key" not in body["error"]
    assert "read the key" in body["error"]


# ---- bad input: 4xx, JSON, nothing proposed -------------------------------------------------------

BAD_INPUT = [
    ("PUT", "/kv/a", b"{not json", {}, 400, "malformed JSON"),
    ("PUT", "/kv/a", b'{"value": NaN}', {}, 400, "malformed JSON"),
    ("PUT", "/kv/a", b'{"value": 1e999}', {}, 400, "finite"),
    ("PUT", "/kv/a", b'{"value": ' + b"9" * 5000 + b"}", {}, 400, "malformed JSON"),
    ("PUT", "/kv/a", b"[" * 20_000 + b"]" * 20_000, {}, 400, "nested too deeply"),
    ("PUT", "/kv/a", b'"\xff\xfe"', {}, 400, ""),
    ("PUT", "/kv/a", b"[1, 2]", {}, 400, "must be a JSON object"),
    ("PUT", "/kv/a", b"", {}, 400, "missing"),
    ("PUT", "/kv/a", b'{"val": 1}', {}, 400, "unknown field 'val'"),
    ("PUT", "/kv/a", b'{"prev_value": 1}', {}, 400, "missing field 'value'"),
    ("PUT", "/kv/a", b'{"value": 1, "prev_revision": "3"}', {}, 400, "prev_revision"),
    ("PUT", "/kv/a", b'{"value": 1, "prev_revision": -1}', {}, 400, "prev_revision"),
    ("PUT", "/kv/a", b'{"value": 1, "prev_exist": "no"}', {}, 400, "prev_exist"),
    # null is not a way to leave a field out (these were taken as absent: a put without its precondition)
    ("PUT", "/kv/a", b'{"value": 1, "prev_revision": null}', {}, 400, "prev_revision"),
    ("PUT", "/kv/a", b'{"value": 1, "prev_exist": null}', {}, 400, "prev_exist"),
    ("PUT", "/kv/a", b'{"value": 1, "request_id": null}', {}, 400, "request_id"),
    ("DELETE", "/kv/a", b'{"prev_revision": null}', {}, 400, "prev_revision"),
    ("POST", "/txn", b'{"request_id": null}', {}, 400, "request_id"),
    ("POST", "/leases", b'{"ttl": 1, "id": null}', {}, 400, "id"),
    ("PUT", "/kv/a", b'{"value": "\\ud800"}', {}, 400, "surrogate"),
    ("PUT", "/kv/a?x=1", b'{"value": 1}', {}, 400, "unknown query parameter"),
    ("PUT", "/kv/", b'{"value": 1}', {}, 400, "must not be empty"),
    ("GET", "/kv/", None, {}, 400, "must not be empty"),
    ("PUT", "/kv/a", b'{"value": 1}', {"Idempotency-Key": "x" * 300}, 400, "request_id"),
    ("PUT", "/kv/" + "k" * 65, b'{"value": 1}', {}, 413, "limit of 64"),
    ("GET", "/kv/" + "k" * 65, None, {}, 413, "limit of 64"),
    ("PUT", "/" + "ñ" * 33, b'{"value": 1}', {}, 413, "66 bytes"),
    ("PUT", "/kv/a", json.dumps({"value": "v" * 1100}).encode(), {}, 413, "value"),
    ("PUT", "/kv/a", b'{"value": 1}' + b" " * 70_000, {}, 413, "body"),
    ("DELETE", "/kv/a", b'{"prev_revision": true}', {}, 400, "prev_revision"),
    ("DELETE", "/kv/a?prev_revision=abc", None, {}, 400, "prev_revision"),
    ("DELETE", "/kv/a", b"null", {}, 400, "JSON object"),  # was taken for no body
    ("DELETE", "/kv/a?prev_revision=1", b'{"prev_revision": 1}', {}, 400, "both"),
    ("GET", "/kv?limit=0", None, {}, 400, "limit"),
    ("GET", "/kv?prefix=a&prefix=b", None, {}, 400, "query parameter 'prefix' given more than once"),
    ("GET", "/health?x=1", None, {}, 400, "unknown query parameter 'x' (allowed: none)"),
    ("GET", "/metrics?x=1", None, {}, 400, "unknown query parameter 'x'"),
    ("GET", "/openapi.json?x=1", None, {}, 400, "unknown query parameter 'x'"),
    ("GET", "/kv?limit=10001", None, {}, 400, "limit"),
    ("GET", "/kv?limit=ten", None, {}, 400, "limit"),
    ("GET", "/kv?prefx=a", None, {}, 400, "unknown query parameter 'prefx'"),
    ("GET", "/kv/a?stale=maybe", None, {}, 400, "stale"),
    ("POST", "/txn", b"{}" + b"x", {}, 400, "malformed JSON"),
    ("POST", "/txn", b'{"success": [{"op": "explode"}]}', {}, 400, "success[0].op"),
    ("POST", "/txn", b'{"compare": 5}', {}, 400, "compare"),
    ("POST", "/txn", json.dumps({"success": [{"op": "put", "key": "k" * 65, "value": 1}]}).encode(), {}, 413, "key"),
    (
        "POST",
        "/txn",
        json.dumps({"success": [{"op": "put", "key": "a", "value": "v" * 1100}]}).encode(),
        {},
        413,
        "success[0].value",
    ),
    ("POST", "/compact", b'{"revision": 0}', {}, 400, "revision"),
    ("POST", "/compact", b'{"revision": 99999999999999999999}', {}, 400, "revision"),  # past 64 bits: was a 500
    ("POST", "/simulate-partition", b"", {}, 400, "missing"),
    ("POST", "/simulate-partition", b'{"partitioned": "yes"}', {}, 400, "partitioned"),
    ("POST", "/simulate-partition", b'{"partitioned": 1}', {}, 400, "partitioned"),
    ("POST", "/simulate-partition", b"{}", {}, 400, "partitioned"),
    ("POST", "/simulate-partition", b'{"partitioned": true, "peers": "n2"}', {}, 400, "peers"),
    ("POST", "/simulate-partition", b'{"partitioned": true, "peers": [2]}', {}, 400, "peers"),
    ("POST", "/simulate-partition", b'{"partitioned": true, "peers": ["n9"]}', {}, 400, "unknown peer"),
    ("POST", "/simulate-partition", b'{"partitioned": true, "oops": 1}', {}, 400, "unknown field"),
    ("POST", "/simulate-partition", b"[true]", {}, 400, "JSON object"),
    ("POST", "/simulate-partition", b'{"partitioned": true, "direction": "sideways"}', {}, 400, "direction"),
    ("POST", "/simulate-link", b"{}", {}, 400, "loss_percent and/or delay_ms"),
    ("POST", "/simulate-link", b'{"loss_percent": 101}', {}, 400, "loss_percent"),
    ("POST", "/simulate-link", b'{"loss_percent": "lots"}', {}, 400, "loss_percent"),
    ("POST", "/simulate-link", b'{"delay_ms": -1}', {}, 400, "delay_ms"),
    ("POST", "/simulate-link", b'{"delay_ms": 5, "peers": ["n9"]}', {}, 400, "unknown peer"),
    ("POST", "/simulate-link", b'{"delay_ms": 5, "jitter": 1}', {}, 400, "unknown field"),
    # a path that ends in /history is a key's history, only read (GET could not read such a key back)
    ("PUT", "/kv/app/history", b'{"value": 1}', {}, 405, "written and read as /kv/app%2Fhistory"),
    ("DELETE", "/app/history", None, {}, 405, "/app%2Fhistory"),
    # an Idempotency-Key on a write that is not deduplicated by it (a retry would be done twice)
    ("POST", "/leases", b'{"ttl": 5}', {"Idempotency-Key": "k5"}, 400, "is not applied at most once by its key"),
    ("POST", "/compact", b'{"revision": 1}', {"Idempotency-Key": "k6"}, 400, "Idempotency-Key: POST /compact"),
    # a body its Content-Encoding does not decode, or in one the API does not decode
    ("PUT", "/kv/a", b'{"value": 1}', {"Content-Encoding": "gzip"}, 400, "not gzip as its Content-Encoding says"),
    ("POST", "/leases", b'{"ttl": 5}', {"Content-Encoding": "deflate"}, 400, "not deflate"),
    ("PUT", "/kv/a", b'{"value": 1}', {"Content-Encoding": "bogus"}, 415, "decodes gzip and deflate bodies only"),
]


@pytest.mark.parametrize(
    ("method", "path", "raw", "headers", "status", "message"),
    BAD_INPUT,
    ids=[f"{m} {p[:40]} {(r or b'')[:24]!r}" for m, p, r, *_ in BAD_INPUT],
)
async def test_bad_input_is_4xx_json_and_changes_nothing(
    method: str, path: str, raw: bytes | None, headers: dict, status: int, message: str, serving: type[TestServer]
) -> None:
    node = FakeNode()
    async with TestClient(serving(checked_app(node, **SMALL))) as client:
        got, body, _ = await call(client, method, path, raw=raw, headers=headers)
    assert got == status, body
    assert message in body["error"] and body["node"] == "n1"
    assert node.proposals == [] and node.kv.revision == 0 and node.partition["partitioned"] is False
    assert node.link == {}
    assert_documented(node.requests)


@pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")  # the test client's
async def test_default_limits(serving: type[TestServer]) -> None:
    node = FakeNode()
    async with TestClient(serving(checked_app(node))) as client:
        # Over aiohttp's own 1 MiB default but under our 2 MiB body limit: accepted.
        status, _, _ = await call(client, "PUT", "/kv/a", raw=b'{"value": 1}' + b" " * (3 << 19))
        assert status == 200
        status, body, _ = await call(client, "PUT", "/kv/b", {"value": "v" * (1 << 20)})
        assert status == 413 and "value" in body["error"]
        status, body, _ = await call(client, "PUT", "/kv/b", raw=b'{"value": 1}' + b" " * (2 << 20))
        assert status == 413 and "body" in body["error"]
        status, _, _ = await call(client, "PUT", "/kv/" + "k" * 1025, {"value": 1})
        assert status == 413
        status, _, _ = await call(client, "PUT", "/kv/" + "k" * 1024, {"value": 1})
        assert status == 200
    assert node.kv.revision == 2


async def test_chunked_body_over_the_limit_is_413_json(api: tuple[FakeNode, TestClient]) -> None:
    node, client = api

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: aiohttp's client_max_size catches it
        yield b'{"value": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    status, body, _ = await call(client, "PUT", "/kv/a", raw=chunks())  # type: ignore[arg-type]
    assert status == 413 and "body" in body["error"] and node.proposals == []


# ---- routing: reserved names, 404, 405 ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/raft-state", "GET, HEAD"),
        ("PUT", "/raft-state", "GET, HEAD"),
        ("DELETE", "/health", "GET, HEAD"),
        ("GET", "/force-election", "POST"),
        ("PUT", "/simulate-partition", "POST"),
        ("PUT", "/kv", "GET, HEAD"),
        ("GET", "/txn", "POST"),
        ("PUT", "/metrics", "GET, HEAD"),
        ("PATCH", "/kv/a", "DELETE, GET, HEAD, PUT"),
        ("POST", "/some-key", "DELETE, GET, HEAD, PUT"),
        ("PUT", "/members/node3", "DELETE, PATCH"),  # a route with a parameter, not a key under a reserved name
        ("GET", "/members/node3/promote", "POST"),
    ],
)
async def test_wrong_method_is_405_json_with_allow(
    api: tuple[FakeNode, TestClient], method: str, path: str, allow: str
) -> None:
    node, client = api
    status, body, headers = await call(client, method, path, raw=b'{"value": 1}')
    assert status == 405 and headers["Allow"] == allow and method in body["error"]
    assert node.proposals == [] and len(node.kv) == 0


async def test_an_event_stream_whose_client_vanished_ends_quietly() -> None:
    """A WebSocket of /raft/events whose client is gone (a paused dashboard resumed, a reset) fails
    its last send and its close: an ordinary end, not an error with a traceback in the log."""
    import aiohttp

    from raftkv.api.http import _pump_events

    class Gone:
        async def send_str(self, _text: str) -> None:
            raise ConnectionResetError("reset by peer")

        async def close(self, **_: Any) -> None:
            raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")

    async def events() -> AsyncIterator[dict]:
        yield {"type": "status"}

    await _pump_events(Gone(), events(), lambda: 0, lambda: None)  # type: ignore[arg-type]


async def test_reserved_names_are_not_root_keys(api: tuple[FakeNode, TestClient]) -> None:
    node, client = api
    for path in ("/metrics/x", "/watch/a/b", "/raft/x", "/events", "/dashboard"):
        status, body, _ = await call(client, "PUT", path, {"value": 1})
        assert status == 404 and "reserved" in body["error"]
    status, _, _ = await call(client, "PUT", "/kv/health", {"value": 1})  # reachable under /kv/
    assert status == 200 and node.kv.get("health").value == 1
    status, body, _ = await call(client, "GET", "/")
    assert status == 404 and "openapi" in body["error"]
    status, body, _ = await call(client, "POST", "/members/node3/frob", {})  # no route: not a 405 for a key's methods
    assert status == 404 and body["error"] == "no route /members/node3/frob; see /openapi.json"


# ---- node failures -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (NotAppliedError("leadership changed before the write committed"), 503, "leadership changed"),
        (NoLeaderError(), 503, "no leader"),
        (OutcomeUnknownError("not applied within 2 s"), 504, "may or may not have been applied"),
    ],
)
async def test_node_errors_on_writes(
    api: tuple[FakeNode, TestClient], error: Exception, status: int, message: str
) -> None:
    node, client = api
    node.propose_error = error
    for method, path, body in (("PUT", "/kv/a", {"value": 1}), ("DELETE", "/kv/a", None), ("POST", "/txn", {})):
        got, payload, headers = await call(client, method, path, body)
        assert got == status and message in payload["error"]
        assert ("Retry-After" in headers) == (status == 503)
        if status == 503:
            assert headers["Retry-After"] == "1"


async def test_node_errors_on_reads(api: tuple[FakeNode, TestClient]) -> None:
    node, client = api
    node.read_error = OutcomeUnknownError("the read could not be confirmed in time")
    for path in ("/kv/a", "/kv?prefix=", "/a"):
        status, body, _ = await call(client, "GET", path)
        assert status == 504 and "read" in body["error"]
    for path in ("/kv/a?revision=0", "/kv?revision=x"):  # bad input is a 400 whatever the cluster's state
        status, body, _ = await call(client, "GET", path)
        assert status == 400 and "revision" in body["error"], body


async def test_unexpected_exception_is_json_500_and_logged(
    api: tuple[FakeNode, TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    node, client = api

    def broken(digest: bool = False) -> dict:
        raise RuntimeError("bug")

    node.raft_state = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="raftkv.api"):
        status, body, _ = await call(client, "GET", "/raft-state")
    assert status == 500 and body["error"] == "internal error: RuntimeError"
    record = next(r for r in caplog.records if r.name == "raftkv.api")
    assert record.exc_info is not None and record.event == "api.unhandled"  # type: ignore[attr-defined]
    assert (await call(client, "GET", "/health"))[0] == 200  # still serving
    node.raft_state = lambda digest=False: {  # type: ignore[method-assign]
        **FakeNode.raft_state(node), "voters": {"n1"}, "dir": PurePosixPath("/d")}
    status, body, _ = await call(client, "GET", "/raft-state")  # not JSON types: shown, not a 500
    assert status == 200 and body["voters"] == ["n1"] and body["dir"] == "/d"


# ---- writes a follower forwarded to the leader ------------------------------------------------------


async def test_a_forwarded_write_names_the_leader_and_the_follower(serving: type[TestServer]) -> None:
    """The node forwards (over the Raft link); the API only says so: "node" is the leader that
    took the write, "forwardedBy" this node, for answers and for errors alike."""
    follower = FakeNode("n2")
    follower.leader = follower.forwarded_to = "n1"
    async with TestClient(serving(checked_app(follower, **SMALL))) as client:
        status, body, _ = await call(client, "PUT", "/kv/dir/a%20b", {"value": 1}, headers={"Idempotency-Key": "abc"})
        assert status == 200 and body["node"] == "n1" and body["forwardedBy"] == "n2" and body["revision"] == 1
        assert FORWARDED_TO not in body and follower.proposals[0].request_id == "abc"
        status, body, _ = await call(client, "PUT", "/kv/dir/a%20b", {"value": 5, "prev_value": 7})
        assert status == 412 and body["current"]["value"] == 1 and body["node"] == "n1" and body["forwardedBy"] == "n2"
        status, body, _ = await call(client, "DELETE", "/kv/nothing")
        assert status == 404 and body["node"] == "n1" and body["forwardedBy"] == "n2"
        status, body, _ = await call(client, "POST", "/txn", {"success": [{"op": "delete", "key": "dir/a b"}]})
        assert status == 200 and body["succeeded"] and body["forwardedBy"] == "n2"
        # Reads never go through the forwarding path: the node answers from its own state.
        status, body, _ = await call(client, "GET", "/kv/dir/a%20b")
        assert status == 404 and body["node"] == "n2" and "forwardedBy" not in body and follower.barriers == 1
    assert_documented(follower.requests)


async def test_a_follower_without_a_leader_is_503(api: tuple[FakeNode, TestClient]) -> None:
    node, client = api
    node.leader = None
    node.propose_error = NoLeaderError()
    status, body, headers = await call(client, "PUT", "/kv/a", {"value": 1})
    assert status == 503 and headers["Retry-After"] == "1" and body["error"] == "no leader" and body["leader"] is None


# ---- the node's own routes -----------------------------------------------------------------------


async def test_operations_that_take_no_body_refuse_one_that_says_anything(api: tuple[FakeNode, TestClient]) -> None:
    """Every operation /openapi.json lists without a request body answers 400 to a body with
    anything in it, before it acts (ignored, `{"ttl": 5}` to a keep-alive would be answered 200
    for a renewal of the lease's own TTL); an empty body and {} are no body."""
    node, client = api
    doc = openapi_document(**SMALL)
    bodiless = [(path, method) for path, operations in doc["paths"].items() for method, operation in operations.items()
                if method in {"post", "put", "delete", "patch"} and "requestBody" not in operation]
    assert ("/force-election", "post") in bodiless and ("/leases/{id}/keepalive", "post") in bodiless
    for path, method in bodiless:
        url = path.replace("{id}", "5").replace("{name}", "alice").replace("{role}", "reader")
        for body, got in (({"ttl": 5}, "field 'ttl'"), ([1], "a JSON array"), ("node2", "a JSON string")):
            status, answer, _ = await call(client, method.upper(), url, body)
            assert status == 400, (method, url, body, status, answer)
            assert answer["error"] == f"body: {method.upper()} {url} takes no body (got {got}); send none"
    assert node.proposals == [] and node.term == 1  # nothing was proposed, no election began
    for none in ("", " \n", "{}"):
        status, answer, _ = await call(client, "POST", "/force-election", raw=none)
        assert status == 200 and answer["term"] == node.term
    assert node.term == 4


async def test_admin_routes(api: tuple[FakeNode, TestClient]) -> None:
    node, client = api
    status, body, _ = await call(client, "GET", "/raft-state")
    assert status == 200 and body["nodeId"] == "n1" and body["node"] == "n1" and "peers" in body
    status, body, _ = await call(client, "POST", "/force-election")
    assert status == 200 and body == {"nodeId": "n1", "term": 2, "state": "candidate", "node": "n1"}
    status, body, _ = await call(client, "POST", "/simulate-partition", {"partitioned": True, "peers": ["n2"]})
    assert status == 200 and body["partitioned"] is True and body["peers"] == ["n2"]
    assert node.partition == {"partitioned": True, "peers": ["n2"], "direction": "both"}
    status, body, _ = await call(
        client, "POST", "/simulate-partition", {"partitioned": True, "peers": ["n3"], "direction": "outbound"}
    )
    assert status == 200 and node.partition["direction"] == "outbound"
    status, body, _ = await call(
        client, "POST", "/simulate-link", {"peers": ["n2"], "loss_percent": 30, "delay_ms": 50}
    )
    assert status == 200 and node.link == {"peers": ["n2"], "loss_percent": 30, "delay_ms": 50}
    status, body, _ = await call(client, "POST", "/simulate-link", {"delay_ms": 0})
    assert status == 200 and node.link == {"peers": None, "loss_percent": None, "delay_ms": 0}
    status, body, _ = await call(client, "GET", "/health")
    assert status == 200 and body["hasLeader"] is True
    node.leader = None
    status, body, _ = await call(client, "GET", "/health")
    assert status == 503 and body["hasLeader"] is False and body["node"] == "n1"
    async with client.get("/metrics") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        assert "raftkv_up 1" in await resp.text()


async def test_metrics_hook_sees_route_templates(api: tuple[FakeNode, TestClient]) -> None:
    node, client = api
    await call(client, "PUT", "/kv/a/b", {"value": 1})
    await call(client, "GET", "/c")
    await call(client, "POST", "/raft-state")
    assert node.requests == [("/kv/{key}", "PUT", 200), ("/{key}", "GET", 404), ("unmatched", "POST", 405)]


async def test_cors(api: tuple[FakeNode, TestClient]) -> None:
    _, client = api
    async with client.get("/health", headers={"Origin": "http://localhost:8080"}) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
    preflight = {
        "Origin": "http://localhost:8080",
        "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "content-type,idempotency-key",
    }
    async with client.options("/kv/a", headers=preflight) as resp:
        assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "PUT" in resp.headers["Access-Control-Allow-Methods"]
        assert resp.headers["Access-Control-Allow-Headers"] == "content-type,idempotency-key"
    status, _, headers = await call(client, "GET", "/kv/missing", headers={"Origin": "http://x"})
    assert status == 404 and headers["Access-Control-Allow-Origin"] == "*"


async def test_the_raft_event_stream_streams_events_then_closes(api: tuple[FakeNode, TestClient]) -> None:
    node, client = api
    async with client.ws_connect("/raft/events") as ws:
        received = [await ws.receive_json(timeout=5), await ws.receive_json(timeout=5)]
        closing = await ws.receive(timeout=5)
    assert received == node.events
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    status, body, _ = await call(client, "GET", "/raft/events")  # not an upgrade
    assert status == 400 and "WebSocket" in body["error"]


async def test_the_raft_event_stream_unsubscribes_when_the_client_leaves(api: tuple[FakeNode, TestClient]) -> None:
    node, client = api
    node.events = None
    async with client.ws_connect("/raft/events") as ws:
        assert (await ws.receive_json(timeout=5)) == {"type": "tick"}
    await asyncio.wait_for(node.watch_closed.wait(), 5)


# ---- the OpenAPI document ------------------------------------------------------------------------


def test_openapi_lists_exactly_the_served_routes() -> None:
    app = create_app(FakeNode())
    served = {(resource.canonical, route.method.lower()) for resource in app.router.resources() for route in resource}
    doc = openapi_document(max_body_bytes=1, max_key_bytes=1, max_value_bytes=1)
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops if method in HTTP_METHODS}
    assert served == documented


def test_openapi_refs_resolve_and_statuses_are_complete() -> None:
    doc = openapi_document(max_body_bytes=1, max_key_bytes=1, max_value_bytes=1)
    assert doc["openapi"].startswith("3.1")
    text = json.dumps(doc)
    for name in {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert name in doc["components"]["schemas"], name
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "500" in op["responses"] and op["summary"], (path, method)
            path_params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            named = {name for name in ("key", "id", "name", "role") if f"{{{name}}}" in path}
            assert path_params == named, (path, method)


async def test_openapi_is_served(api: tuple[FakeNode, TestClient]) -> None:
    _, client = api
    async with client.get("/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["paths"].keys() == openapi_document(**SMALL)["paths"].keys()
    assert "64 bytes" in doc["info"]["description"]


def test_head_is_served_exactly_where_get_is_but_on_the_websocket() -> None:
    app = create_app(FakeNode())
    methods: dict[str, set[str]] = {}
    for resource in app.router.resources():
        methods.setdefault(resource.canonical, set()).update(route.method for route in resource)
    assert {path for path, m in methods.items() if "HEAD" in m} == {
        path for path, m in methods.items() if "GET" in m} - {"/raft/events", "/watch"}


async def test_membership_routes_answer_and_refuse_in_json(api: tuple[FakeNode, TestClient]) -> None:
    """The routes' shapes and refusals (the real changes run on real clusters in test_members.py)."""
    _, client = api
    assert (await call(client, "GET", "/members"))[1]["members"][0]["role"] == "voter"
    status, body, _ = await call(client, "POST", "/members", {"name": "node4", "clientURL": "http://h:3003",
                                                              "peerURL": "h:4003"})
    assert status == 200 and body["member"]["role"] == "learner"
    for bad in ({"name": "node4"}, {"name": 4, "clientURL": "x", "peerURL": "y"}, [1],
                {"name": "n", "clientURL": "x", "peerURL": "y", "learner": "yes"},
                {"name": "n", "clientURL": "x", "peerURL": "y", "extra": 1}):
        assert (await call(client, "POST", "/members", bad))[0] == 400, bad
    status, body, _ = await call(client, "POST", "/members/node4-1/promote")
    assert status == 409 and body["reason"] == "not_caught_up" and body["lagEntries"] == 500
    status, body, _ = await call(client, "DELETE", "/members/nobody")
    assert status == 404 and body["reason"] == "unknown"
    status, body, _ = await call(client, "PATCH", "/members/n1", {"peerURL": "h:4009"})
    assert status == 200 and body["member"]["peerURL"] == "h:4009", body
    status, body, _ = await call(client, "PATCH", "/members/n1", {"peerURL": "h:4001"})
    assert status == 409 and body["field"] == "peerURL", body
    for bad in ({}, {"peerURL": 4009}, {"peerURL": "h:1", "name": "x"}, ["h:1"]):
        assert (await call(client, "PATCH", "/members/n1", bad))[0] == 400, bad


async def test_a_replica_that_has_not_yet_learnt_a_user_checks_again_after_a_read_barrier(
    serving: type[TestServer],
) -> None:
    """A node that joined a moment ago knows auth is on but has not replayed alice's creation: it
    must not tell her 401. Her credentials are checked again once a read barrier has brought it up
    to date; a wrong password is still 401."""
    node = FakeNode()
    hashed = argon2.PasswordHasher().hash
    committed_elsewhere = [
        AuthChange(AuthChangeOp.USER_ADD, ROOT, password_hash=hashed("root-pw")),
        AuthChange(AuthChangeOp.ENABLE, token_key="ab" * 32),
        AuthChange(AuthChangeOp.USER_ADD, "alice", password_hash=hashed("alice-pw")),
        AuthChange(AuthChangeOp.ROLE_ADD, "reader"),
        AuthChange(AuthChangeOp.ROLE_GRANT, "reader", permission=Permission(Access.READ, "config")),
        AuthChange(AuthChangeOp.USER_GRANT_ROLE, "alice", role="reader"),
        Put("config", "v1"),
    ]

    def apply_next() -> None:
        command = committed_elsewhere.pop(0)
        auth = node.kv.auth
        node.index += 1
        as_root = AsUser(ROOT, auth.revision, command) if auth.enabled else command
        assert node.kv.apply(node.index, encode(as_root))["ok"]

    async def read_barrier() -> None:  # the barrier's ReadIndex is the end of the log: apply up to it
        node.barriers += 1
        while committed_elsewhere:
            apply_next()

    apply_next(), apply_next()  # as far as it has replayed: root, and auth on
    node.read_barrier = read_barrier  # type: ignore[method-assign]
    alice = {"Authorization": "Basic " + base64.b64encode(b"alice:alice-pw").decode()}
    wrong = {"Authorization": "Basic " + base64.b64encode(b"alice:nope").decode()}
    async with TestClient(serving(checked_app(node, **SMALL))) as client:
        status, answer, _ = await call(client, "GET", "/kv/config", headers=alice)
        assert status == 200 and answer["value"] == "v1", answer
        status, answer, _ = await call(client, "GET", "/kv/config", headers=wrong)
        assert status == 401 and answer["reason"] == "unauthenticated", answer
