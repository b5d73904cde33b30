"""Messages between node drivers: not Raft, but they ride the same links as Raft's messages.

A follower hands its clients' writes to the leader it knows (etcd forwards MsgProp the same way)
and the leader answers with where it put them; the drivers handle both, the core never steps
them. They are registered with the transport's codec under their own stable wire tags.
"""

from __future__ import annotations

from dataclasses import dataclass

from raftkv.core import Message
from raftkv.transport import codec

__all__ = ["PEER_MESSAGE_TYPES", "ProposeAnswer", "ProposeForward"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProposeForward(Message):
    """A follower's writes for the leader: one message per batch, instead of an HTTP hop per write."""

    ticket: int  # the follower's number for this batch, echoed in the answer
    datas: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProposeAnswer(Message):
    """Where the leader put a forwarded batch: entries `index` .. `index + n - 1` of `term`.
    `index` 0 means it appended nothing, and `error` says why."""

    ticket: int
    index: int
    error: str = ""


PEER_MESSAGE_TYPES: tuple[type[Message], ...] = (ProposeForward, ProposeAnswer)

codec.register_message_type(ProposeForward, 12)
codec.register_message_type(ProposeAnswer, 13)
