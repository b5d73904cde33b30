"""Who answers: etcd's numeric cluster and member ids over raftkv's text ids, and the response
header every etcd answer carries.

raftkv's member ids are text ("node1", "node4-8ac3793dab3f35b8"); etcd's are 64-bit numbers that
clients print in hex and send back (`etcdctl member remove 8e9e05c52164694d`). A member's number
is a hash of its id, the same on every node; a number is turned back into an id by looking it up
among the current members. The cluster id is a hash of the ids of the members a node was started
with (a founding member's --cluster, or the members a joiner was told of when it joined).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from raftkv.etcd.errors import MEMBER_NOT_FOUND
from raftkv.etcd.pb import rpc_pb2

if TYPE_CHECKING:
    from raftkv.node import NodeHost

__all__ = ["Identity", "number_of"]


def number_of(text: str) -> int:
    """A 64-bit number for a text id (never 0: etcd reads 0 as "none")."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") or 1


class Identity:
    def __init__(self, node: NodeHost) -> None:
        self.node = node
        self.cluster_id = number_of(",".join(sorted(node.cfg.members)))
        self.member_id = number_of(node.id)

    def header(self, revision: int | None = None) -> rpc_pb2.ResponseHeader:
        """The header of an answer: `revision` is the store's revision it reflects (default: now)."""
        return rpc_pb2.ResponseHeader(cluster_id=self.cluster_id, member_id=self.member_id,
                                      revision=self.node.kv.revision if revision is None else revision,
                                      raft_term=self.node.group.core.term)

    def member_named(self, number: int) -> str:
        """The id of the current member whose number is `number`."""
        for member_id in self.node.members.address_book():
            if number_of(member_id) == number:
                return member_id
        raise MEMBER_NOT_FOUND()

    def leader_number(self) -> int:
        leader = self.node.leader_id()
        return number_of(leader) if leader else 0
