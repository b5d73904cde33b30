"""What a Raft group needs from a transport: the interface `TcpTransport` and `MemoryTransport` share.

A group is given its transport and never builds one, so the same driver runs over real TCP
connections in a node process and over in-memory links in fast tests and simulations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from raftkv.core import Message

__all__ = ["Transport", "TransportWrapper"]


class Transport(Protocol):
    async def start(self, on_message: Callable[[Message], None]) -> None:
        """Begin accepting messages; each is handed to `on_message` on the event loop."""

    def send(self, messages: list[Message]) -> None:
        """Queue messages for their peers; returns at once, never awaits the network."""

    def reachable(self, peer_id: str) -> bool:
        """Whether what is sent to the peer now can arrive (its connection is up)."""

    def add_peer(self, peer_id: str, addr: Any) -> None: ...

    def remove_peer(self, peer_id: str) -> None: ...

    async def close(self) -> None: ...

    def stats(self) -> dict[str, Any]:
        """Per-peer counters and state, JSON-able, for /raft-state."""


class TransportWrapper:
    """A Transport that hands everything to `inner`: a base for wrappers that change one thing
    (when messages arrive, what is checked as they leave) and pass the rest through."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner

    async def start(self, on_message: Callable[[Message], None]) -> None:
        await self.inner.start(on_message)

    def send(self, messages: list[Message]) -> None:
        self.inner.send(messages)

    def reachable(self, peer_id: str) -> bool:
        return self.inner.reachable(peer_id)

    def add_peer(self, peer_id: str, addr: Any) -> None:
        self.inner.add_peer(peer_id, addr)

    def remove_peer(self, peer_id: str) -> None:
        self.inner.remove_peer(peer_id)

    async def close(self) -> None:
        await self.inner.close()

    def stats(self) -> dict[str, Any]:
        return self.inner.stats()
