"""The ways a node can refuse or fail a client request, named by what the client may assume.

Theory of operation
-------------------
A client write has exactly three bad endings, and a client must be told which one happened,
because they call for different retries (an acknowledged write is never lost, and an unknown
outcome counts as "may or may not have happened" in a linearizability check):

* `NoLeaderError`: no leader was known for as long as the node would wait, so the command was
  never sent anywhere. Nothing was done: 503 with Retry-After, and a blind retry is safe.
* `NotAppliedError`: the command was definitely *not* applied (the leader refused it, leadership
  changed before its entry committed and its index now holds another entry, the leader stayed
  unreachable while it was held). Nothing was done: 503, and a blind retry is safe.
* `OutcomeUnknownError`: the command was proposed or handed to a leader and then we stopped
  waiting (timeout, shutdown, the leader died before answering). It may commit later: 504; a
  retry is safe only with the same Idempotency-Key (request_id), which the state machine
  deduplicates.

Reads use the same classes: a read that could not be confirmed is NotAppliedError (nothing to
be unsure about) or OutcomeUnknownError (timed out).

The pure core has its own `raftkv.core.NotLeaderError` ("this core is not the leader"), a fact
the node handles itself (it forwards); it never reaches a client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["MembershipRefused", "NoLeaderError", "NodeError", "NotAppliedError", "OutcomeUnknownError",
           "RequestRefused", "fail"]


class NodeError(Exception):
    """Base class: the node could not serve a request. str(exc) is a message for a person."""


class NoLeaderError(NodeError):
    """No leader was known while the request waited for one: nothing was done (503)."""

    def __init__(self, message: str = "no leader") -> None:
        super().__init__(message)


class NotAppliedError(NodeError):
    """Definitely not done (refused, overwritten, never delivered): retry later (503)."""


class RequestRefused(NotAppliedError):
    """A rule refused the request; nothing was done. `status` is the HTTP status that says so,
    `reason` names the rule, `details` are JSON fields for the client."""

    def __init__(self, status: int, reason: str, message: str, **details: object) -> None:
        super().__init__(message)
        self.status, self.reason, self.details = status, reason, details


class MembershipRefused(RequestRefused):
    """A membership change the cluster will not make as asked. `reason`: "unknown" (no such
    member), "duplicate" (that name or address is a member already), "pending" (another change is
    not committed yet), "last_voter", "not_caught_up" (a learner promoted before it holds the log),
    "not_learner", "invalid" (anything else the core refuses); for a voter added by its peer address
    alone (etcd's rules): "not_enough_started" (the started voters would not be a majority with it),
    "unhealthy" (the leader has not heard from every voter lately)."""

    STATUS = {"unknown": 404, "duplicate": 409, "pending": 409, "last_voter": 409, "not_caught_up": 409,
              "not_learner": 409, "invalid": 400, "not_enough_started": 409, "unhealthy": 503}

    def __init__(self, reason: str, message: str, **details: object) -> None:
        super().__init__(self.STATUS.get(reason, 400), reason, message, **details)


class OutcomeUnknownError(NodeError):
    """Proposed, then we stopped waiting: the command may or may not be applied (504)."""


def fail(answers: Iterable[asyncio.Future[Any]], error: Exception) -> None:
    """Answer every future still waiting with `error`."""
    for answer in answers:
        if not answer.done():
            answer.set_exception(error)
