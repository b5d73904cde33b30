"""The client's promise about a request whose answer was lost: a write that reached a node and got
no answer may have been applied there, so it is never sent to a second node (where it could be
applied twice) and is reported as "may have been applied"; one that never reached a node, or a
read, goes on to the next endpoint. A node relaying to its leader reports the same difference as
504 (outcome unknown) against 503 (not applied). In-process: two small local servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from raftkv.client import NO_ACCESS, Client, ClusterUnreachableError
from raftkv.node import NotAppliedError, OutcomeUnknownError
from raftkv.node.forwarding import LeaderAsker
from raftkv.supervisor import free_ports


class Servers:
    """`hangs_up`: reads a request and closes the connection unanswered; `answers`: a node that
    answers 200 and counts what it was asked; `refuses`: a port nothing listens on."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.hung_up = 0

    async def _hang_up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.hung_up += 1
        writer.close()

    async def _answer(self, request: web.Request) -> web.Response:
        self.asked.append(f"{request.method} {request.path}")
        return web.json_response({"ok": True})

    async def start(self) -> None:
        hang_up_port, answer_port, refused_port = free_ports(3)
        self._hanging = await asyncio.start_server(self._hang_up, "127.0.0.1", hang_up_port)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", answer_port).start()
        self.hangs_up = f"http://127.0.0.1:{hang_up_port}"
        self.answers = f"http://127.0.0.1:{answer_port}"
        self.refuses = f"http://127.0.0.1:{refused_port}"

    async def stop(self) -> None:
        self._hanging.close()
        await self._runner.cleanup()


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    s = Servers()
    await s.start()
    yield s
    await s.stop()


async def test_a_write_whose_answer_was_lost_is_not_sent_to_another_node(servers: Servers) -> None:
    async with Client([servers.hangs_up, servers.answers], timeout_s=5) as client:
        with pytest.raises(ClusterUnreachableError, match="may or may not have been applied") as lost:
            await client.put("k", 1)
        assert lost.value.may_have_arrived and servers.hung_up == 1 and servers.asked == []
        # The node that failed goes to the back: the next request asks the other first.
        assert client.endpoints == [servers.answers, servers.hangs_up]
        assert (await client.put("k", 2))[0] == 200 and servers.asked == ["PUT /kv/k"]


async def test_a_read_whose_answer_was_lost_and_a_write_never_sent_go_to_the_next_node(servers: Servers) -> None:
    async with Client([servers.hangs_up, servers.answers], timeout_s=5) as client:
        assert (await client.get("k"))[0] == 200
    async with Client([servers.refuses, servers.answers], timeout_s=5) as client:
        assert (await client.put("k", 1))[0] == 200
    assert servers.asked == ["GET /kv/k", "PUT /kv/k"]
    async with Client([servers.refuses], timeout_s=5) as client:
        with pytest.raises(ClusterUnreachableError) as refused:
            await client.put("k", 1)
        assert not refused.value.may_have_arrived


async def test_a_relay_to_the_leader_whose_answer_was_lost_is_504_one_never_sent_503(servers: Servers) -> None:
    """A member added through a follower, the leader's answer lost: it may have been added."""
    urls = {"hangs-up": servers.hangs_up, "refuses": servers.refuses}
    asker = LeaderAsker(urls.get, NO_ACCESS)
    try:
        with pytest.raises(OutcomeUnknownError, match="did not answer"):
            await asker.ask("hangs-up", "POST", "/members", {"id": "node4"})
        with pytest.raises(NotAppliedError, match="cannot be reached"):
            await asker.ask("refuses", "POST", "/members", {"id": "node4"})
    finally:
        await asker.close()
