"""The front (raftkv/api/front.py): the key routes served on httptools, everything else handed to
aiohttp, over raw sockets.

Each test speaks HTTP/1.1 by hand to a server built as a node process builds its own
(`NodeServer`: the connection bounds, the front inside), and where it says "as aiohttp answers" it
sends the same bytes to a server of aiohttp alone and compares status, headers and body. Whether
the front or aiohttp answered shows in the `Server` header, which only aiohttp sends.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from test_api import SMALL, FakeNode, NodeServer, checked_app

from raftkv.api.connections import ConnectionLimits
from raftkv.node.forwarding import CALLER_AUTHORIZATION

Answer = tuple[int, dict[str, str], bytes]


def request(method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
            version: str = "1.1") -> bytes:
    payload = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/{version}", "Host: test"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if payload and not any(name.lower() == "transfer-encoding" for name in headers or {}):
        lines.append(f"Content-Length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def read_answer(reader: asyncio.StreamReader, *, to_head: bool = False) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *header_lines = head.decode().split("\r\n")[:-2]
    headers = dict(line.split(": ", 1) for line in header_lines)
    length = int(headers.get("Content-Length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 5) if length and not to_head else b""
    return int(status_line.split()[1]), headers, body


async def exchange(server: TestServer, raw: bytes, answers: int, *, byte_at_a_time: bool = False) -> list[Answer]:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        if byte_at_a_time:
            for i in range(len(raw)):
                writer.write(raw[i:i + 1])
                await writer.drain()
        else:
            writer.write(raw)
        return [await read_answer(reader, to_head=raw.startswith(b"HEAD ")) for _ in range(answers)]
    finally:
        writer.close()


def comparable(answers: list[Answer]) -> list[Answer]:
    """What must be the same whichever server answered: all but the Date and aiohttp's Server."""
    return [(status, {k: v for k, v in headers.items() if k not in ("Date", "Server")}, body)
            for status, headers, body in answers]


def by_front(answer: Answer) -> bool:
    return "Server" not in answer[1]


async def both(raw: bytes, answers: int) -> tuple[list[Answer], list[Answer]]:
    """The answers of aiohttp alone and of a node's server, each on a fresh fake node."""
    out = []
    for kind in (TestServer, NodeServer):
        server = kind(checked_app(FakeNode(), **SMALL))
        await server.start_server()
        try:
            out.append(await exchange(server, raw, answers))
        finally:
            await server.close()
    return out[0], out[1]


KEY_ROUTES = [
    request("PUT", "/kv/a", {"value": 1}),
    request("PUT", "/kv/a", {"value": 2}, {"Idempotency-Key": "k1"}),
    request("PUT", "/kv/a", {"value": 2}, {"Idempotency-Key": "k1"}),  # the replay: Idempotent-Replayed
    request("GET", "/kv/a"),
    request("GET", "/kv/a?stale=true"),
    request("GET", "/kv/missing"),
    request("GET", "/kv/a?bogus=1"),
    request("PUT", "/kv/b", b'{"value": '),
    request("PUT", "/kv/", {"value": 1}),
    request("GET", "/kv/%ff"),
    request("PUT", "/kv/c", {"value": 1, "prev_revision": 99}),
    request("POST", "/txn", {"compare": [{"key": "a", "target": "value", "op": "==", "value": 2}],
                             "success": [{"op": "put", "key": "t", "value": 1}]}),
    request("PUT", "/seed-key", {"value": 3}),
    request("GET", "/seed-key"),
    request("DELETE", "/seed-key"),
    request("DELETE", "/kv/a", headers={"Content-Type": "application/json"}),
]


async def test_the_front_answers_the_key_routes_as_aiohttp_does() -> None:
    alone, node = await both(b"".join(KEY_ROUTES), len(KEY_ROUTES))
    assert comparable(node) == comparable(alone)
    assert all(by_front(answer) for answer in node) and not any(by_front(answer) for answer in alone)
    statuses = [status for status, _, _ in node]
    assert statuses == [200, 200, 200, 200, 200, 404, 400, 400, 400, 404, 412, 200, 200, 200, 200, 200], statuses
    assert node[2][1]["Idempotent-Replayed"] == "true"


async def test_pipelined_requests_are_answered_in_order_across_a_hand_over() -> None:
    """A request the front does not take (GET /health) hands the connection to aiohttp, which
    answers it and the rest once the front has answered what it took before it."""
    raw = [request("PUT", "/kv/p", {"value": 1}), request("GET", "/kv/p"), request("GET", "/health"),
           request("GET", "/kv/p"), request("PUT", "/kv/p", {"value": 2})]
    alone, node = await both(b"".join(raw), len(raw))
    assert comparable(node) == comparable(alone)
    assert [by_front(answer) for answer in node] == [True, True, False, False, False]
    assert json.loads(node[3][2])["value"] == 1 and json.loads(node[4][2])["revision"] == 2


async def test_what_one_request_sets_in_a_context_variable_never_reaches_the_next() -> None:
    """Each request runs in a fresh copy of its connection's context: the caller's credentials a
    request relays to the leader (node/forwarding.py) are not the next request's, pipelined or not."""
    seen: list[str | None] = []

    @web.middleware
    async def relays(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(CALLER_AUTHORIZATION.get())
        CALLER_AUTHORIZATION.set(f"Basic {request.path}")
        return await handler(request)

    app = checked_app(FakeNode(), **SMALL)
    app.middlewares.append(relays)
    server = NodeServer(app)
    await server.start_server()
    try:
        raw = [request("PUT", "/kv/a", {"value": 1}), request("GET", "/kv/a")]
        answers = await exchange(server, b"".join(raw), 2)  # pipelined: both taken before either is answered
        answers += await exchange(server, raw[1], 1)
    finally:
        await server.close()
    assert all(by_front(answer) and answer[0] == 200 for answer in answers), answers
    assert seen == [None, None, None]


async def test_a_request_sent_a_byte_at_a_time() -> None:
    server = NodeServer(checked_app(FakeNode(), **SMALL))
    await server.start_server()
    try:
        raw = request("PUT", "/kv/slow", {"value": "v"}) + request("GET", "/kv/slow")
        put, get = await exchange(server, raw, 2, byte_at_a_time=True)
    finally:
        await server.close()
    assert put[0] == 200 and get[0] == 200 and json.loads(get[2])["value"] == "v"
    assert by_front(put) and by_front(get)


TAKEN_BY_AIOHTTP = {
    "chunked": request("PUT", "/kv/a", b"c\r\n{\"value\": 1}\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"}),
    "HTTP/1.0": request("GET", "/kv/a", version="1.0"),
    "Connection: close": request("PUT", "/kv/a", {"value": 1}, {"Connection": "close"}),
    "HEAD": request("HEAD", "/kv/a"),
    "OPTIONS preflight": request("OPTIONS", "/kv/a", headers={"Access-Control-Request-Method": "PUT",
                                                              "Origin": "http://x"}),
    "body over the limit": request("PUT", "/kv/a", {"value": "v" * SMALL["max_body_bytes"]}),
    "two Content-Lengths": b"PUT /kv/a HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n1",
    "a bad request line": b"PUT /kv/a HTTP/1.1 extra\r\nHost: t\r\n\r\n",
    "a head over 8 KiB": request("GET", "/kv/a", headers={"X-Long": "x" * 9000}),
    "a percent-encoded first segment": request("PUT", "/k%76/a", {"value": 1}),  # the key "a", as from /kv/a
    "a key's history": request("GET", "/kv/a/history"),
    "a reserved name at the root": request("PUT", "/health", {"value": 1}),
    "absolute form": request("GET", "http://test/kv/a"),
    "bare LF line ends": b"GET /kv/a HTTP/1.1\nHost: t\n\n",
}


async def test_requests_the_front_does_not_take_are_answered_as_aiohttp_answers_them() -> None:
    for name, raw in TAKEN_BY_AIOHTTP.items():
        alone, node = await both(raw, 1)
        assert comparable(node) == comparable(alone), name
        assert not by_front(node[0]), name
        if name == "a percent-encoded first segment":
            assert node[0][0] == 200 and json.loads(node[0][2])["key"] == "a"


class QuickNodeServer(NodeServer):
    limits = ConnectionLimits(max_connections=10, header_timeout_s=0.3, body_timeout_s=0.3, idle_timeout_s=0.5,
                              send_timeout_s=1)


async def test_a_head_or_a_body_that_stalls_is_cut_with_408_and_an_idle_connection_closed() -> None:
    server = QuickNodeServer(checked_app(FakeNode(), **SMALL))
    await server.start_server()
    try:
        for partial, reason in [(b"PUT /kv/a HTTP/1.1\r\nHost: t\r\n", "header_timeout"),
                                (b"PUT /kv/a HTTP/1.1\r\nHost: t\r\nContent-Length: 20\r\n\r\n{\"va", "body_timeout")]:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(partial)
            status, _, body = await read_answer(reader)
            assert status == 408 and json.loads(body)["reason"] == reason
            writer.close()
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(request("GET", "/kv/a"))
        assert (await read_answer(reader))[0] == 404
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b"", "the idle connection is closed"
        assert 0.3 < time.monotonic() - started < 3
        writer.close()
    finally:
        await server.close()


async def test_shutdown_answers_what_the_front_took_and_closes_idle_connections() -> None:
    node = FakeNode()
    node.propose_delay_seconds = 0.5
    server = NodeServer(checked_app(node, **SMALL))
    await server.start_server()
    idle_reader, idle_writer = await asyncio.open_connection(server.host, server.port)
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(request("PUT", "/kv/late", {"value": 1}))
    await asyncio.sleep(0.1)  # the front has taken it; the write is in flight
    closing = asyncio.ensure_future(server.close())
    status, headers, _ = await read_answer(reader)
    assert status == 200 and by_front((status, headers, b""))
    assert await asyncio.wait_for(reader.read(), 5) == b"" and await asyncio.wait_for(idle_reader.read(), 5) == b""
    await closing
    assert node.kv.get("late") is not None
    writer.close()
    idle_writer.close()
