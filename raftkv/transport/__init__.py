"""Peer-to-peer transport for Raft messages, with fault injection beneath it.

`TcpTransport` (persistent TCP/mTLS connections, length-prefixed msgpack frames, pipelined) and
its in-process twin `MemoryTransport` share one interface: ``await start(on_message)``,
``send(messages)`` (never blocks), ``reachable(peer)``, ``add_peer``, ``remove_peer``,
``await close()``, ``stats()``.
Both consult a `LinkFaults` on every message, so a simulated partition looks like a cut wire.
"""

from raftkv.transport.base import Transport, TransportWrapper
from raftkv.transport.codec import CodecError, decode, encode
from raftkv.transport.faults import ALL_PEERS, Direction, LinkFaults
from raftkv.transport.memory import MemoryNetwork, MemoryTransport
from raftkv.transport.tcp import TcpOptions, TcpTransport, make_mtls_contexts

__all__ = [
    "ALL_PEERS",
    "CodecError",
    "Direction",
    "LinkFaults",
    "MemoryNetwork",
    "MemoryTransport",
    "TcpOptions",
    "TcpTransport",
    "Transport",
    "TransportWrapper",
    "decode",
    "encode",
    "make_mtls_contexts",
]
