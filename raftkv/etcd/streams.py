"""The long-lived calls a node is serving (watches, lease keep-alive streams), so that it can end
them when it stops: a watch never ends by itself, and left open it holds the node's shutdown for
the gRPC server's grace, or aiohttp's shutdown timeout twice, past what a supervisor waits before
it kills the node. Each is ended as etcd ends its streams when it stops, with UNAVAILABLE
"etcdserver: server stopped", and its client reconnects to another node."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import grpc

__all__ = ["OpenStreams", "unless_ending"]

T = TypeVar("T")
SERVER_STOPPED = "etcdserver: server stopped"


class OpenStreams:
    def __init__(self) -> None:
        self._ending: set[asyncio.Event] = set()

    @contextlib.contextmanager
    def held(self) -> Iterator[asyncio.Event]:
        """While a stream is served: the event set when it must end."""
        ending = asyncio.Event()
        self._ending.add(ending)
        try:
            yield ending
        finally:
            self._ending.discard(ending)

    def end_all(self) -> None:
        for ending in list(self._ending):
            ending.set()


async def unless_ending(step: Awaitable[T], ending: asyncio.Event, context: Any) -> T:
    """What `step` gives; the stream aborted with etcd's "server stopped" as soon as `ending` is
    set, before `step` is done."""
    work = asyncio.ensure_future(step)
    stop = asyncio.ensure_future(ending.wait())
    try:
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if work.done():
        return work.result()
    work.cancel()
    await context.abort(grpc.StatusCode.UNAVAILABLE, SERVER_STOPPED)
    raise AssertionError("abort returned")  # context.abort always raises
