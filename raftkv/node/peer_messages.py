"""Messages between node drivers: not Raft, but they ride the same links as Raft's messages.

A follower hands its clients' writes to the leader it knows (etcd forwards MsgProp the same way)
and the leader answers with where it put them; the drivers handle both, the core never steps
them. They are registered with the transport's codec under their own stable wire tags.

Two more carry trace context (tracing.py) and are sent only while tracing is on and a write in
them is sampled, so a cluster that does not trace never sends them: `TracedProposeForward` is a
forward with each write's W3C `traceparent`, and `EntryTraces` tells every follower, just before
the AppendRequests that carry them on the same link, which new entries belong to which trace.
The core's AppendRequest stays as it is: trace context is the driver's business.
"""

from __future__ import annotations

from dataclasses import dataclass

from raftkv.core import Message
from raftkv.transport import codec

__all__ = ["FORWARD_TYPES", "PEER_MESSAGE_TYPES", "EntryTraces", "ProposeAnswer", "ProposeForward",
           "TracedProposeForward"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProposeForward(Message):
    """A follower's writes for the leader: one message per batch, instead of an HTTP hop per write."""

    ticket: int  # the follower's number for this batch, echoed in the answer
    datas: tuple[bytes, ...]
    # The follower's oldest ticket still unanswered (this one if none is): the leader may forget
    # its answers to older ones (ForwardLedger).
    oldest: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ProposeAnswer(Message):
    """Where the leader put a forwarded batch: entries `index` .. `index + n - 1` of `term`.
    `index` 0 means it appended nothing, and `error` says why."""

    ticket: int
    index: int
    error: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TracedProposeForward(ProposeForward):
    """A forward some of whose writes are traced: `traceparents[i]` is the W3C traceparent of
    `datas[i]`'s request (b"": not traced)."""

    traceparents: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryTraces(Message):
    """The leader's word on whose traces its new entries belong to: `traceparents[i]` is the
    traceparent of the leader's span for entry `first_index + i` (b"": not traced). A follower
    makes its spans for writing, syncing and acknowledging those entries children of it."""

    first_index: int
    traceparents: tuple[bytes, ...]


PEER_MESSAGE_TYPES: tuple[type[Message], ...] = (ProposeForward, ProposeAnswer, TracedProposeForward, EntryTraces)
FORWARD_TYPES: frozenset[type[Message]] = frozenset({ProposeForward, TracedProposeForward})

codec.register_message_type(ProposeForward, 12)
codec.register_message_type(ProposeAnswer, 13)
codec.register_message_type(TracedProposeForward, 14)
codec.register_message_type(EntryTraces, 15)
