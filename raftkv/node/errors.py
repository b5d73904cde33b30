"""The ways a node can refuse or fail a client request, as seen by the HTTP API.

Theory of operation
-------------------
A client write has exactly three bad endings, and a client must be told which one happened,
because they call for different retries (DESIGN.md: "never an acknowledged write that is later
lost", and unknown outcomes count as "may or may not have happened" in linearizability checks):

* `NotLeaderError`: this node cannot do it at all: it is not the leader and knows none to forward
  the write to (the node forwards writes itself when it knows one). Nothing was proposed: 503,
  with the leader's id and client URL when known, and the client retries.
* `NoQuorumError`: the command was definitely *not* applied (no leader known, the leader refused
  the proposal, leadership changed before the entry committed and its index now holds another
  entry). Safe to retry blindly: 503 with Retry-After.
* `OutcomeUnknownError`: the command was proposed and then we stopped waiting (timeout, shutdown,
  caught up from a snapshot). It may commit later. 504; a retry is safe only with the same
  Idempotency-Key (request_id), which the state machine deduplicates.

Reads use the same classes: a read barrier that cannot be confirmed is NoQuorumError (nothing to
be unsure about) or OutcomeUnknownError (timed out).

This module imports nothing from raftkv so both the node and the API can depend on it without
import cycles.
"""

from __future__ import annotations

__all__ = ["NoQuorumError", "NodeError", "NotLeaderError", "OutcomeUnknownError"]


class NodeError(Exception):
    """Base class: the node could not serve a request. str(exc) is a message for a person."""


class NotLeaderError(NodeError):
    """This node cannot serve the request itself; `leader_id` / `leader_url` may be None."""

    def __init__(self, leader_id: str | None, leader_url: str | None) -> None:
        self.leader_id = leader_id
        self.leader_url = leader_url
        if leader_id is None:
            msg = "this node is not the leader and no leader is known"
        else:
            msg = f"this node is not the leader; the leader is {leader_id}" + (
                f" at {leader_url}" if leader_url else "")
        super().__init__(msg)

    def __reduce__(self) -> tuple[type, tuple[str | None, str | None]]:
        # Exception's default pickling passes args=(msg,) back to __init__, which takes two.
        return (type(self), (self.leader_id, self.leader_url))


class NoQuorumError(NodeError):
    """Definitely not done (no leader, proposal refused, entry overwritten): retry later (503)."""


class OutcomeUnknownError(NodeError):
    """Proposed, then we stopped waiting: the command may or may not be applied (504)."""
