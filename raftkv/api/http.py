"""The HTTP API of one raftkv node: JSON over aiohttp, per the README's API table (/openapi.json documents every route).

Theory of operation
-------------------
`create_app(node)` builds a `web.Application` around an object with the node interface
(`propose`, `read_barrier`, `kv`, `raft_state`, ...; see `Node`). The API owns no replicated
state. Each data request goes through the same steps:

1. validate everything that can be validated locally (key size, body size, JSON, field types,
   value size, query parameters) with the kv module's own parsers, so bad input is a 4xx before
   anything reaches Raft, and a follower rejects it exactly as the leader would;
2. writes: `node.propose(command)` returns the state machine's result once the entry is committed
   and applied here; the result's `ok`/`error` picks 200, 404 or 412. Reads: `await
   node.read_barrier()` (ReadIndex) and then read `node.kv` locally; `?stale=true` skips the barrier;
3. a follower's node forwards writes to the leader itself, over the Raft link (see the node
   driver), and answers from its own state machine once the entry is applied here; the answer
   says so: `"node": <the leader that took it>, "forwardedBy": <this node>`. Linearizable reads
   never leave the node but for the ReadIndex round with the leader;
4. every failure is an exception that `errors.error_response` maps to a JSON error
   (503 = definitely not done, 504 = may or may not be done).

The seed's routes `PUT|GET|DELETE /{key}` share the handlers of `/kv/{key}`. They are registered
last, so fixed routes win; a key whose first segment is a reserved name (`RESERVED_NAMES`) is
refused at the root (405 if it is exactly a fixed route, else 404) so that `PUT /health` can
never write a key called "health". Such keys remain reachable as `/kv/health`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import WSCloseCode, web

from raftkv.api.auth import Gate, range_prefix, route_need
from raftkv.api.auth_routes import AuthRoutes
from raftkv.api.coordination import Coordination, at_revision
from raftkv.api.errors import (
    REQUEST_ID_KEY,
    ApiError,
    check_query,
    error_response,
    json_response,
    parse_command,
    query_flag,
    query_integer,
)
from raftkv.api.front import FRONT, FrontConfig, FrontRequest
from raftkv.api.node import Node
from raftkv.api.openapi import openapi_document
from raftkv.api.requests import RequestReader, path_key
from raftkv.api.tracing import TRACE_ID_HEADER, request_spans
from raftkv.kv import (
    DEFAULT_RANGE_LIMIT,
    INVALID,
    MAX_RANGE_LIMIT,
    NOT_FOUND,
    PRECONDITION_FAILED,
    REFUSED,
    REQUEST_KEY_REUSED,
    Access,
    Command,
    Txn,
    TxnPut,
    delete_from_json,
    kv_to_dict,
    put_from_json,
    txn_from_json,
)
from raftkv.node import FORWARDED_TO
from raftkv.node import tracing as node_tracing
from raftkv.node.backup import take_backup
from raftkv.node.log_view import MAX_LOG_ENTRIES
from raftkv.transport.hold import MAX_HELD_MESSAGES

log = logging.getLogger("raftkv.api")

DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
DEFAULT_MAX_KEY_BYTES = 1024
DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
MAX_PARTITION_PEERS = 1000
MAX_LINK_DELAY_MS = 10_000
MAX_LAB_TICK_MS = 1000
IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"  # on the answer to a retry: this is the first answer, again

# First path segments that are never keys at the root (`/{key}`): today's routes plus names kept
# for routes to come, so adding one later cannot silently shadow a user's key.
RESERVED_NAMES = frozenset({
    "kv", "txn", "raft-state", "force-election", "simulate-partition", "simulate-link", "metrics", "health",
    "openapi.json", "watch", "raft", "lab", "leases", "compact", "events", "dashboard", "static", "members",
    "transfer-leader", "snapshot", "admin", "api", "favicon.ico", "auth",
    "v3", "version",  # etcd's JSON gateway (raftkv/etcd/gateway.py)
})

_CORS_HEADERS = {"Access-Control-Allow-Origin": "*",
                 "Access-Control-Expose-Headers": f"Retry-After, Allow, {REPLAYED_HEADER}, {TRACE_ID_HEADER}"}
_CORS_METHODS = "GET, HEAD, PUT, POST, DELETE, OPTIONS"
_KNOWN_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH"})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(node: Node, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
               max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
               more_routes: Callable[[web.Application], None] | None = None,
               gate: Gate | None = None) -> web.Application:
    """The aiohttp application serving `node`'s client API (run it with web.AppRunner/TCPSite).
    `more_routes` adds routes served beside it (a node process's etcd gateway), before the keys
    at the root, under first path segments that are RESERVED_NAMES. `gate`: who may do what (a
    node process shares its gate with its etcd API: one cache of checked passwords, one bound on
    the hashing at once)."""
    assert max_body_bytes > 0 and max_key_bytes > 0 and max_value_bytes > 0
    gate = Gate(node) if gate is None else gate
    api = _Api(node, gate, max_body_bytes, max_key_bytes, max_value_bytes)
    middlewares = [_middleware(node, gate, max_body_bytes, api.fixed_route_methods)]
    if node_tracing.active is not None:  # outermost, and only while tracing is on (api/tracing.py)
        middlewares.insert(0, request_spans(node_tracing.active))
    app = web.Application(
        client_max_size=max_body_bytes,  # aiohttp's own default (1 MiB) would cut bodies short
        middlewares=middlewares)
    add = app.router.add_route
    get = app.router.add_get  # with HEAD too (curl -I): GET's status and headers, no body
    get("/kv", api.range)
    get("/kv/{key:.*}", api.get_key)  # ".*": an empty key gets a 400 that says so, not a 404
    add("PUT", "/kv/{key:.*}", api.put_key)
    add("DELETE", "/kv/{key:.*}", api.delete_key)
    add("POST", "/txn", api.txn)
    get("/raft-state", api.raft_state)
    add("POST", "/force-election", api.fault_injection(api.force_election))
    add("POST", "/simulate-partition", api.fault_injection(api.simulate_partition))
    add("POST", "/simulate-link", api.fault_injection(api.simulate_link))
    get("/metrics", api.metrics)
    get("/health", api.health)
    get("/openapi.json", api.openapi)
    get("/raft/events", api.raft_events, allow_head=False)  # a WebSocket
    get("/raft/log", api.raft_log)
    get("/lab", api.lab)
    add("POST", "/lab", api.fault_injection(api.set_lab))
    add("POST", "/lab/release", api.fault_injection(api.release_held))
    add("POST", "/lab/drop", api.fault_injection(api.drop_held))
    api.coordination.routes(app)
    get("/members", api.members)
    add("POST", "/members", api.add_member)
    add("POST", "/members/{id}/promote", api.promote_member)
    add("DELETE", "/members/{id}", api.remove_member)
    add("PATCH", "/members/{id}", api.move_member)
    get("/snapshot", api.snapshot)
    AuthRoutes(node, api.read, gate, api._propose).routes(app)
    if more_routes is not None:
        more_routes(app)
    root = _RootKeys(api)  # last: every fixed route above must win over the catch-all
    get("/{key:.+}", root.get_key)
    add("PUT", "/{key:.+}", root.put_key)
    add("DELETE", "/{key:.+}", root.delete_key)
    for resource in app.router.resources():
        if isinstance(resource, web.PlainResource):
            # Each fixed route must be reserved, or PUT /<route> would write a key of that name.
            assert resource.canonical[1:].split("/")[0] in RESERVED_NAMES, resource.canonical
        matches = _matcher(resource)
        if resource.canonical == "/{key}":  # the seed's catch-all: the route of paths under no reserved name
            matches = functools.partial(_unreserved, matches)
        api.fixed.append((matches, {route.method for route in resource}))
        for route in resource:
            route_need(resource.canonical, route.method)  # raises KeyError for a route auth does not cover
    app[FRONT] = FrontConfig(max_body_bytes, RESERVED_NAMES)  # for a server that serves the key routes itself
    return app


class _Api:
    def __init__(self, node: Node, gate: Gate, max_body_bytes: int, max_key_bytes: int,
                 max_value_bytes: int) -> None:
        self.node = node
        self.gate = gate
        self.read = RequestReader(max_body_bytes, max_key_bytes, max_value_bytes)
        self.fixed: list[tuple[Callable[[str], bool], set[str]]] = []  # each route's paths, and its methods
        self.doc = openapi_document(max_body_bytes=max_body_bytes, max_key_bytes=max_key_bytes,
                                    max_value_bytes=max_value_bytes)
        self.one_snapshot_at_a_time = asyncio.Lock()  # each holds a copy of the whole store in memory
        self.coordination = Coordination(node, self.read, gate)

    def fixed_route_methods(self, path: str) -> set[str] | None:
        """The methods of the routes at `path` (/members/{id} as /raft-state; the seed's /{key}
        only where no reserved name begins the path); None when no route is there."""
        methods = {method for matches, route_methods in self.fixed if matches(path) for method in route_methods}
        return methods or None

    # ---- keys ------------------------------------------------------------------------------------

    async def get_key(self, request: web.Request) -> web.StreamResponse:
        if request.rel_url.raw_path.endswith("/history"):  # (a key ending so is written .../%2Fhistory)
            return await self.coordination.history(request)
        key = self.read.key(request)
        query = check_query(request, {"stale", "revision"})
        if not key:
            raise ApiError(400, "key: must not be empty (to list keys use GET /kv?prefix=...)")
        asked = _asked_revision(query)
        if not query_flag(query.get("stale"), "stale"):
            await self.node.read_barrier()
        self.gate.require(request, Access.READ, key=key)  # after the barrier: auth as of the read
        kv_store = self.node.kv
        revision = self._revision(asked)
        kv = kv_store.get(key) if revision is None else at_revision(lambda: kv_store.store.get_at(key, revision))
        if kv is None:
            raise ApiError(404, "key not found", key=key, revision=kv_store.revision, leader=self._leader())
        payload = kv_to_dict(key, kv)
        payload.update(revision=kv_store.revision, leader=self._leader())
        return json_response(self.node.id, payload)

    def _revision(self, asked: int | None) -> int | None:
        """`?revision=N`: read as of a past revision (not one the store has not reached)."""
        if asked is not None and asked > self.node.kv.revision:
            raise ApiError(400, f"revision {asked} is in the future: the store is at {self.node.kv.revision}")
        return asked

    async def put_key(self, request: web.Request) -> web.StreamResponse:
        _refuse_history_write(request)
        key = self.read.key(request)
        check_query(request, set())
        body = await self.read.body(request, required=True)
        cmd = parse_command(put_from_json, key, body, _request_id(request))
        self.read.check_value_size(cmd.value, "value")
        return await self._propose(request, cmd)

    async def delete_key(self, request: web.Request) -> web.StreamResponse:
        _refuse_history_write(request)
        key = self.read.key(request)
        query = check_query(request, {"prev_revision"})
        body = await self.read.body(request, required=False)
        if body is None and (await request.read()).strip():  # JSON's null: a body, and no object
            raise ApiError(400, 'body: must be a JSON object such as {"prev_revision": 3}, or left out')
        if "prev_revision" in query and (body is None or type(body) is dict):
            if body and "prev_revision" in body:
                raise ApiError(400, "prev_revision: given both in the query and in the body")
            body = {**(body or {}), "prev_revision": query_integer(query["prev_revision"], "prev_revision", 1)}
        cmd = parse_command(delete_from_json, key, body, _request_id(request))
        return await self._propose(request, cmd)

    async def range(self, request: web.Request) -> web.StreamResponse:
        query = check_query(request, {"prefix", "start", "end", "limit", "stale", "revision"})
        limit = DEFAULT_RANGE_LIMIT
        if "limit" in query:
            limit = query_integer(query["limit"], "limit", 1, MAX_RANGE_LIMIT)
        for name in ("prefix", "start", "end"):
            self.read.check_key_size(query.get(name, ""), name)
        asked = _asked_revision(query)
        if not query_flag(query.get("stale"), "stale"):
            await self.node.read_barrier()
        self.gate.require(request, Access.READ, prefix=range_prefix(query.get("prefix", ""), query.get("start", ""),
                                                                     query.get("end")))
        kv_store = self.node.kv
        revision = self._revision(asked)
        # One key more than asked for: if it exists, it is where the next page starts.
        items, _ = at_revision(lambda: kv_store.range(query.get("prefix", ""), limit + 1, query.get("start", ""),
                                                       query.get("end"), revision))
        page = {"items": [kv_to_dict(k, kv) for k, kv in items[:limit]], "more": len(items) > limit,
                "count": min(len(items), limit), "revision": kv_store.revision, "leader": self._leader()}
        if len(items) > limit:
            page["next"] = items[limit][0]
        return json_response(self.node.id, page)

    async def txn(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        body = await self.read.body(request, required=True)
        cmd: Txn = parse_command(txn_from_json, body, _request_id(request))
        for name in ("compare", "success", "failure"):
            for i, item in enumerate(getattr(cmd, name)):
                if (key := getattr(item, "key", None)) is not None:
                    self.read.check_key_size(key, f"{name}[{i}].key")
                if type(item) is TxnPut:
                    self.read.check_value_size(item.value, f"{name}[{i}].value")
        return await self._propose(request, cmd)

    # ---- the node's own operations ---------------------------------------------------------------

    async def raft_state(self, request: web.Request) -> web.StreamResponse:
        digest = query_flag(check_query(request, {"digest"}).get("digest"), "digest")
        return json_response(self.node.id, dict(self.node.raft_state(digest=digest)))

    def fault_injection(self, handler: Handler) -> Handler:
        """`handler`, answering 403 unless the node was started with fault injection on: forcing
        elections, cutting links and holding messages are lab tools, not for a production node."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self.node.fault_injection:
                raise ApiError(403, f"fault injection is off on {self.node.id}: start the node with "
                                    "--enable-fault-injection to use it (raftkv up turns it on for its local lab)",
                               reason="fault_injection_off")
            return await handler(request)

        return guarded

    async def force_election(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        await self.read.no_body(request)  # the seed's button sends none
        return json_response(self.node.id, dict(await self.node.force_election()))

    async def simulate_partition(self, request: web.Request) -> web.StreamResponse:
        body = await self.read.object(request, ("partitioned", "peers", "direction"), '{"partitioned": true}')
        partitioned, peers = body.get("partitioned"), _peers(body)
        if type(partitioned) is not bool:
            raise ApiError(400, "partitioned: must be true or false" + ("" if "partitioned" in body else " (missing)"))
        direction = body.get("direction", "both")
        if direction not in ("both", "outbound", "inbound"):
            raise ApiError(400, 'direction: must be "both", "outbound" or "inbound"')
        try:
            faults = self.node.set_partition(partitioned, peers, direction)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return json_response(
            self.node.id, {"partitioned": partitioned, "peers": peers, "direction": direction, "faults": faults}
        )

    async def simulate_link(self, request: web.Request) -> web.StreamResponse:
        body = await self.read.object(request, ("peers", "loss_percent", "delay_ms"),
                                  '{"loss_percent": 30, "delay_ms": 50}')
        peers = _peers(body)
        loss, delay = body.get("loss_percent"), body.get("delay_ms")
        if loss is None and delay is None:
            raise ApiError(400, "give loss_percent and/or delay_ms")
        if loss is not None and (type(loss) not in (int, float) or not 0 <= loss <= 100):
            raise ApiError(400, "loss_percent: must be a number from 0 to 100")
        if delay is not None and (type(delay) not in (int, float) or not 0 <= delay <= MAX_LINK_DELAY_MS):
            raise ApiError(400, f"delay_ms: must be a number from 0 to {MAX_LINK_DELAY_MS}")
        try:
            faults = self.node.set_link_quality(peers, loss, delay)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return json_response(self.node.id, {"peers": peers, "loss_percent": loss, "delay_ms": delay, "faults": faults})

    # ---- the lab ---------------------------------------------------------------------------------

    async def raft_log(self, request: web.Request) -> web.StreamResponse:
        query = check_query(request, {"start", "limit"})
        start = query_integer(query["start"], "start", 1) if "start" in query else None
        limit = query_integer(query.get("limit", "100"), "limit", 1, MAX_LOG_ENTRIES)
        return json_response(self.node.id, dict(self.node.raft_log(start, limit)))

    async def lab(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        return json_response(self.node.id, dict(self.node.lab_state()))

    async def set_lab(self, request: web.Request) -> web.StreamResponse:
        body = await self.read.object(request, ("holding", "clockHeld", "tickMs", "snapshotEvery"),
                                  '{"holding": true, "clockHeld": true}')
        for name in ("holding", "clockHeld"):
            if name in body and type(body[name]) is not bool:
                raise ApiError(400, f"{name}: must be true or false")
        numbers = {"tickMs": (1, MAX_LAB_TICK_MS), "snapshotEvery": (1, 10_000_000)}
        for name, (low, high) in numbers.items():
            if name in body and (type(body[name]) is not int or not low <= body[name] <= high):
                raise ApiError(400, f"{name}: must be an integer from {low} to {high}")
        state = self.node.set_lab(holding=body.get("holding"), clock_held=body.get("clockHeld"),
                                  tick_ms=body.get("tickMs"), snapshot_every=body.get("snapshotEvery"))
        return json_response(self.node.id, dict(state))

    async def release_held(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.node.id, {"released": self.node.release_held(await self._numbers(request))})

    async def drop_held(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.node.id, {"dropped": self.node.drop_held(await self._numbers(request))})

    async def _numbers(self, request: web.Request) -> list[int]:
        body = await self.read.object(request, ("numbers",), '{"numbers": [3, 1]}')
        numbers = body.get("numbers")
        if type(numbers) is not list or len(numbers) > MAX_HELD_MESSAGES or not all(type(n) is int for n in numbers):
            raise ApiError(400, "numbers: must be an array of held messages' numbers (GET /lab lists them)")
        return numbers

    # ---- membership ------------------------------------------------------------------------------

    async def members(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        return json_response(self.node.id, dict(self.node.members_view()))

    async def add_member(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        body = await self.read.object(request, ("name", "clientURL", "peerURL", "learner"),
                                  '{"name": "node4", "clientURL": "http://10.0.0.4:3000", "peerURL": "10.0.0.4:4000"}')
        for field in ("name", "clientURL", "peerURL"):
            if type(body.get(field)) is not str:
                raise ApiError(400, f"{field}: must be a string" + ("" if field in body else " (missing)"))
        learner = body.get("learner", True)
        if type(learner) is not bool:
            raise ApiError(400, "learner: must be true or false")
        answer = await self.node.add_member(body["name"], body["clientURL"], body["peerURL"], learner)
        return json_response(self.node.id, dict(answer))

    async def promote_member(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        await self.read.no_body(request)
        return json_response(self.node.id, dict(await self.node.promote_member(request.match_info["id"])))

    async def move_member(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        body = await self.read.object(request, ("peerURL",), '{"peerURL": "10.0.0.9:4000"}')
        if type(body.get("peerURL")) is not str:
            raise ApiError(400, "peerURL: must be a string" + ("" if "peerURL" in body else " (missing)"))
        answer = await self.node.move_member(request.match_info["id"], body["peerURL"])
        return json_response(self.node.id, dict(answer))

    async def remove_member(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        await self.read.no_body(request)
        return json_response(self.node.id, dict(await self.node.remove_member(request.match_info["id"])))

    # ---- backup ----------------------------------------------------------------------------------

    async def snapshot(self, request: web.Request) -> web.StreamResponse:
        """A backup file (node/backup.py) of the store as this replica has it right after a read
        barrier: every write acknowledged before the request is in it, and it is one cut."""
        check_query(request, set())
        async with self.one_snapshot_at_a_time:
            await self.node.read_barrier()
            self.gate.require(request, Access.ADMIN)  # as of the barrier (auth may have been turned on)
            image = await take_backup(self.node.kv, self.node.id)
            response = web.StreamResponse(headers={
                **_CORS_HEADERS,  # the middleware cannot add them to a response already sent
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="raftkv-{image.header.revision}.snap"'})
            response.content_length = image.size()
            await response.prepare(request)
            if request.method == "HEAD":
                return response
            try:
                for chunk in image.chunks():
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionError:
                pass  # the client went away; a partial file is never taken for a whole one (its checksum)
        return response

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        body, content_type = self.node.metrics_text()
        # Passed as a header: web.Response(content_type=...) rejects Prometheus' "; version=..." params.
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def health(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        health = dict(self.node.health())
        return json_response(self.node.id, health, 200 if health.get("hasLeader") else 503)

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        # Served as is: a "node" field is not allowed at the root of an OpenAPI document.
        return web.json_response(self.doc)

    async def raft_events(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=30.0)
        if not ws.can_prepare(request).ok:
            raise ApiError(400, "GET /raft/events is a WebSocket: send an Upgrade: websocket request")
        await ws.prepare(request)
        events = self.node.raft_events()
        pump = asyncio.create_task(_pump_events(ws, events, lambda: self.gate.state.revision,
                                                lambda: self.gate.stream_refusal(request, Access.READ, prefix="")))
        try:
            async for _msg in ws:  # clients send nothing we need; this ends when either side closes
                pass
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            await events.aclose()  # unsubscribe now, not whenever the generator is collected
        return ws

    # ---- shared steps ----------------------------------------------------------------------------

    def _leader(self) -> str | None:
        return self.node.leader_id()

    async def _propose(self, request: web.Request, cmd: Command) -> web.StreamResponse:
        # Kept on the request so that a 504 can say whether a retry is safe (errors.node_error).
        request[REQUEST_ID_KEY] = cmd.request_id
        return self._result(await self.gate.propose(request, cmd))

    def _result(self, result: Mapping[str, Any]) -> web.StreamResponse:
        """The answer for a write's state machine result; a forwarded write names both nodes."""
        via = result.get(FORWARDED_TO)
        where = {"leader": self._leader()}
        if via is not None:
            where.update(node=via, forwardedBy=self.node.id)
        if result.get("ok"):
            payload = {k: v for k, v in result.items() if k not in _NOT_ANSWERED}
            payload.update(where)
            return json_response(self.node.id, payload,
                                 headers={REPLAYED_HEADER: "true"} if result.get("replayed") else None)
        error = result.get("error")
        if error == REQUEST_KEY_REUSED:
            first, this = result["first_use"], {"op": result.get("op"), "key": result.get("key")}
            rid, mismatch = result.get("request_id"), result.get("mismatch")
            raise ApiError(422, f"Idempotency-Key {rid!r} was first used for {_described(first)}, but this request "
                                f"is {_described(this)} (the {mismatch} differs). Nothing was done: use a new key "
                                "for a new request", request_id=rid, mismatch=mismatch, first_use=first,
                           first_index=result.get("first_index"), **where)
        if error == PRECONDITION_FAILED:
            raise ApiError(412, f"precondition failed: {result.get('reason')}", key=result.get("key"),
                           reason=result.get("reason"), current=result.get("current"),
                           revision=result.get("revision"), **where)
        if error == NOT_FOUND:
            raise ApiError(404, str(result.get("message") or "key not found"), key=result.get("key"),
                           revision=result.get("revision"), **where)
        if error == REFUSED:
            raise ApiError(409, str(result.get("message")), reason="refused", **where)
        if error == INVALID:  # validated before proposing, so only a newer/buggy peer gets here
            raise ApiError(400, str(result.get("message") or "invalid command"), **where)
        raise RuntimeError(f"unexpected state machine result: {result!r}")


_NOT_ANSWERED = ("ok", "replayed", FORWARDED_TO)  # result fields that are the node's business, not the client's


def _described(use: Mapping[str, Any]) -> str:
    """'a put of key "a"' for a request_key_reused result's first_use."""
    if use.get("key") is None:
        return f"a {use.get('op')}"
    return f"a {use.get('op')} of key {json.dumps(use['key'], ensure_ascii=False)}"


def _peers(body: dict[str, Any]) -> list[str] | None:
    peers = body.get("peers")
    if peers is not None and (type(peers) is not list or len(peers) > MAX_PARTITION_PEERS
                              or not all(type(p) is str and p for p in peers)):
        raise ApiError(400, "peers: must be an array of peer ids (non-empty strings), or omitted for all peers")
    return peers


def _matcher(resource: web.AbstractResource) -> Callable[[str], bool]:
    """Whether a path is one of `resource`'s (its fixed path, or its pattern's)."""
    info = resource.get_info()
    if "path" in info:
        fixed = info["path"]
        return lambda path: path == fixed
    pattern = info["pattern"]
    return lambda path: pattern.fullmatch(path) is not None


def _unreserved(matches: Callable[[str], bool], path: str) -> bool:
    return matches(path) and path[1:].split("/", 1)[0] not in RESERVED_NAMES


class _RootKeys:
    """The seed's `/{key}` routes: the /kv/{key} handlers, after refusing reserved names."""

    def __init__(self, api: _Api) -> None:
        self.api = api

    def _check(self, request: web.Request) -> None:
        key = path_key(request)
        if key.split("/", 1)[0] in RESERVED_NAMES:
            if (methods := self.api.fixed_route_methods(request.path)) is not None:
                raise ApiError(405, f"method {request.method} is not allowed on {request.path}",
                               headers={"Allow": ", ".join(sorted(methods))}, allowed=sorted(methods))
            raise ApiError(404, f"{request.path} is under a reserved name, not a key; use /kv/{key}", path=request.path)

    async def get_key(self, request: web.Request) -> web.StreamResponse:
        self._check(request)
        return await self.api.get_key(request)

    async def put_key(self, request: web.Request) -> web.StreamResponse:
        self._check(request)
        return await self.api.put_key(request)

    async def delete_key(self, request: web.Request) -> web.StreamResponse:
        self._check(request)
        return await self.api.delete_key(request)


# ---- helpers ---------------------------------------------------------------------------------------


def _request_id(request: web.Request) -> str | None:
    return request.headers.get(IDEMPOTENCY_HEADER)


def _asked_revision(query: Mapping[str, str]) -> int | None:
    """`?revision=N` parsed before the read barrier, so that a malformed one is a 400 even when no
    quorum answers (a 503 or 504 would say to retry); whether the store reached it is known after."""
    return query_integer(query["revision"], "revision", 1) if "revision" in query else None


async def _pump_events(ws: web.WebSocketResponse, events: AsyncIterator[dict[str, Any]],
                       auth_revision: Callable[[], int], refusal: Callable[[], str | None]) -> None:
    """Send `events` until either side ends; or until `refusal` (asked whenever the auth revision
    moves) says the stream's user may no longer see them (closed with 1008, policy violation)."""
    checked_at, why = auth_revision(), None
    try:
        async for event in events:
            if auth_revision() != checked_at:
                checked_at = auth_revision()
                if why := refusal():
                    break
            await ws.send_str(json.dumps(event, default=str))
    except (ConnectionError, aiohttp.ClientError):
        pass  # the client went away; the handler's receive loop ends too
    finally:
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):  # a client gone already: nothing to close
            if why:
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=why[:120].encode())
            else:
                await ws.close()


def _route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else resource.canonical  # bounded label values


def _middleware(node: Node, gate: Gate, max_body_bytes: int,
                allowed: Callable[[str], set[str] | None]) -> Callable[..., Any]:
    """Around every request, in one frame (each aiohttp middleware costs a frame and a partial):
    browsers' CORS preflights, authentication (while auth is on), errors as JSON, CORS headers,
    and the request metrics."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        start = time.perf_counter()
        status = 500
        template = _route_template(request)
        try:
            if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                response: web.StreamResponse = _preflight(request)
            else:
                try:
                    if template != "unmatched":  # (no route, or not this method: aiohttp's 404 or 405 first)
                        _check_content_encoding(request)
                        _check_idempotency_key(request, template)
                        await gate.admit(request, template)
                    response = await handler(request)
                except Exception as exc:
                    response = error_response(node, request, exc, max_body_bytes, allowed)
            if not response.prepared:  # (a WebSocket is; CORS does not apply to it)
                for name, value in _CORS_HEADERS.items():
                    response.headers.setdefault(name, value)
            status = response.status
            return response
        except asyncio.CancelledError:
            status = 499  # client closed the connection (nginx's convention)
            raise
        finally:
            method = request.method if request.method in _KNOWN_METHODS else "OTHER"
            try:
                node.record_request(template, method, status, time.perf_counter() - start)
            except Exception:  # metrics must never fail a request
                log.exception("record_request failed", extra={"event": "api.metrics_failed"})

    return middleware


def _refuse_history_write(request: web.Request) -> None:
    """A path ending in /history names a key's history (GET reads it), for every method: written to,
    it would name a key that GET could never read back by the same path."""
    raw = request.rel_url.raw_path
    if raw.endswith("/history"):
        spelt = raw[: -len("/history")] + "%2Fhistory"
        raise ApiError(405, f"{raw} is a key's history, which is only read; a key that ends in /history is "
                            f"written and read as {spelt}", headers={"Allow": "GET, HEAD"}, allowed=["GET", "HEAD"])


_DEDUPLICATED_ROUTES = frozenset({"/kv/{key}", "/txn", "/{key}"})  # whose writes carry a request_id


def _check_idempotency_key(request: web.Request, template: str) -> None:
    """A write the state machine cannot deduplicate refuses an Idempotency-Key: ignored, a client's
    retry of it (a lease grant, a compaction) would be done twice while the client counted on once."""
    # (the route first: the front's requests, all on deduplicated routes, decode their headers only when read)
    if template not in _DEDUPLICATED_ROUTES and request.method not in ("GET", "HEAD") \
            and IDEMPOTENCY_HEADER in request.headers:
        raise ApiError(400, f"{IDEMPOTENCY_HEADER}: {request.method} {template} is not applied at most once by its "
                            "key: only writes to keys (PUT and DELETE /kv/{key}) and POST /txn are; send it without "
                            "one, and check before retrying")


_DECODED_ENCODINGS = frozenset({"gzip", "deflate", "identity"})  # zlib's; br and zstd need libraries not installed


def _check_content_encoding(request: web.Request) -> None:
    """415 for a body in an encoding the node does not decode: ignored, it would be read as JSON
    and refused for what it is not (or, were it plain text, applied while its client thought it
    compressed). Brotli and zstd bodies do not get here: aiohttp refuses them as it parses them."""
    if isinstance(request, FrontRequest):  # the front takes none with a Content-Encoding (front.py), and
        return  # decodes a request's headers only when they are read: 4 us of a 26 us key read
    encoding = request.headers.get("Content-Encoding")
    if encoding is not None and encoding.strip().lower() not in _DECODED_ENCODINGS:
        raise ApiError(415, f"Content-Encoding {encoding!r}: the API decodes gzip and deflate bodies only; send the "
                            "body so, or uncompressed", headers={"Accept-Encoding": "gzip, deflate"})  # RFC 7694


def _preflight(request: web.Request) -> web.Response:
    # The dashboard runs on another port (another origin): answer browsers' preflights for any path.
    allow_headers = request.headers.get("Access-Control-Request-Headers", f"Content-Type, {IDEMPOTENCY_HEADER}")
    return web.Response(status=204, headers={"Access-Control-Allow-Methods": _CORS_METHODS,
                                             "Access-Control-Allow-Headers": allow_headers,
                                             "Access-Control-Max-Age": "600"})
