"""Asking the leader over its client API: for what only the leader may do (membership changes,
lease keep-alives), a follower relays the request and the leader's answer, or its refusal."""

from __future__ import annotations

from typing import Any

from raftkv.client import Client, ClusterUnreachableError

from .errors import NotAppliedError, OutcomeUnknownError, RequestRefused

__all__ = ["FORWARD_TIMEOUT_S", "ask_leader"]

FORWARD_TIMEOUT_S = 10.0


async def ask_leader(leader: str, url: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
    """The leader's JSON answer; its refusal as RequestRefused (with its status and reason), a 503
    or an unreachable leader as NotAppliedError, a 504 as OutcomeUnknownError."""
    try:
        async with Client([url], timeout_s=FORWARD_TIMEOUT_S) as client:
            status, answer = await client.request(method, path, body)
    except ClusterUnreachableError as e:
        raise NotAppliedError(f"the leader {leader} cannot be reached: {e}") from None
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
