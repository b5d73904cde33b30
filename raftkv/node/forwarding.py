"""Asking the leader over its client API: for what only the leader may do (membership changes,
lease keep-alives), a follower relays the request and the leader's answer, or its refusal.

One HTTP session per node carries every relayed request, kept alive between them: a client that
renews its leases through a follower every few seconds must not cost a TCP connection each time."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from raftkv.client import Access, Client, ClusterUnreachableError

from .errors import NoLeaderError, NotAppliedError, OutcomeUnknownError, RequestRefused

__all__ = ["CALLER_AUTHORIZATION", "FORWARD_TIMEOUT_S", "LeaderAsker"]

FORWARD_TIMEOUT_S = 10.0
# The Authorization header of the client request being served (set by the API while auth is on):
# a relay carries it, so that the leader checks the same user this node did.
CALLER_AUTHORIZATION: ContextVar[str | None] = ContextVar("caller_authorization", default=None)


class LeaderAsker:
    def __init__(self, url_of: Callable[[str], str | None], access: Access) -> None:
        self._url_of = url_of  # a member id -> its client URL, None while unknown
        self._access = access  # the TLS this node trusts and presents to other members (config.member_access)
        self._client: Client | None = None

    async def ask(self, leader: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """The leader's JSON answer; its refusal as RequestRefused (with its status and reason), a
        503 or a leader that could not be reached as NotAppliedError, a 504 or a request whose
        answer was lost as OutcomeUnknownError."""
        url = self._url_of(leader)
        if url is None:
            raise NoLeaderError(f"the leader {leader}'s address is not in this node's member table yet")
        if self._client is None:
            self._client = await Client([url], timeout_s=FORWARD_TIMEOUT_S, access=self._access).__aenter__()
        try:
            caller = CALLER_AUTHORIZATION.get()
            headers = None if caller is None else {"Authorization": caller}
            status, answer = await self._client.request(method, path, body, endpoint=url, headers=headers)
        except ClusterUnreachableError as e:
            if e.may_have_arrived:
                raise OutcomeUnknownError(f"the leader {leader} did not answer: {e}") from None
            raise NotAppliedError(f"the leader {leader} cannot be reached: {e}") from None
        return _answer(status, answer)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
            self._client = None


def _answer(status: int, answer: Any) -> dict[str, Any]:
    if status == 200 and isinstance(answer, dict):
        return answer
    detail = dict(answer) if isinstance(answer, dict) else {"error": str(answer)}
    message = str(detail.pop("error", f"the leader answered {status}"))
    detail.pop("node", None)
    if status == 504:
        raise OutcomeUnknownError(message)
    if status == 503:
        raise NotAppliedError(message)
    raise RequestRefused(status, str(detail.pop("reason", "refused")), message, **detail)
