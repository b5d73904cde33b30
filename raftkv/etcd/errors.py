"""etcd's gRPC errors: the status codes and messages etcd's clients recognise, and the mapping
from raftkv's node errors to them.

Clients match these exact messages (clientv3's rpctypes turns a status's message back into a
typed error, and its retry policy reads the code), so they are etcd's words, not ours. A refusal
of raftkv's own that etcd has no word for keeps raftkv's message under the closest code.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from raftkv.kv import CompactedError
from raftkv.node.errors import MembershipRefused, NodeError, NoLeaderError, OutcomeUnknownError, RequestRefused

__all__ = ["EtcdError", "unary"]

T = TypeVar("T")


class EtcdError(Exception):
    """An answer that is an etcd error: `code` and the message etcd gives it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _err(code: grpc.StatusCode, message: str) -> Callable[[], EtcdError]:
    return lambda: EtcdError(code, message)


EMPTY_KEY = _err(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")
KEY_NOT_FOUND = _err(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key not found")
VALUE_PROVIDED = _err(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: value is provided")
LEASE_PROVIDED = _err(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: lease is provided")
TOO_MANY_OPS = _err(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: too many operations in txn request")
DUPLICATE_KEY = _err(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")
COMPACTED = _err(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
INVALID_SORT_OPTION = _err(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: invalid sort option")
FUTURE_REV = _err(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
LEASE_NOT_FOUND = _err(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
LEASE_EXISTS = _err(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists")
LEASE_TTL_TOO_LARGE = _err(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")
MEMBER_NOT_FOUND = _err(grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
MEMBER_NOT_LEARNER = _err(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: can only promote a learner member")
LEARNER_NOT_READY = _err(grpc.StatusCode.FAILED_PRECONDITION,
                         "etcdserver: can only promote a learner member which is in sync with leader")
PEER_URL_EXISTS = _err(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: Peer URLs already exists")
BAD_MEMBER_URLS = _err(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: given member URLs are invalid")
NOT_ENOUGH_STARTED = _err(grpc.StatusCode.FAILED_PRECONDITION,
                          "etcdserver: re-configuration failed due to not enough started members")
UNHEALTHY = _err(grpc.StatusCode.UNAVAILABLE, "etcdserver: unhealthy cluster")
NO_LEADER = _err(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
TIMEOUT = _err(grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out")
BAD_TRANSFEREE = _err(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: bad leader transferee")
# auth (clients match these: "invalid auth token" makes clientv3 authenticate again and retry)
ROOT_USER_NOT_EXIST = _err(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: root user does not exist")
USER_EXISTS = _err(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: user name already exists")
USER_EMPTY = _err(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty")
USER_NOT_FOUND = _err(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: user name not found")
ROLE_EXISTS = _err(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: role name already exists")
ROLE_NOT_FOUND = _err(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: role name not found")
ROLE_EMPTY = _err(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: role name is empty")
AUTH_FAILED = _err(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password")
PERMISSION_DENIED = _err(grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
ROLE_NOT_GRANTED = _err(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: role is not granted to the user")
PERMISSION_NOT_GRANTED = _err(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: permission is not granted to the role")
AUTH_NOT_ENABLED = _err(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: authentication is not enabled")
INVALID_AUTH_TOKEN = _err(grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")
INVALID_AUTH_MGMT = _err(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: invalid auth management")


def invalid(message: str) -> EtcdError:
    """A request etcd would take and raftkv cannot (say which and why), or a malformed one."""
    return EtcdError(grpc.StatusCode.INVALID_ARGUMENT, message)


def unimplemented(what: str, why: str) -> EtcdError:
    return EtcdError(grpc.StatusCode.UNIMPLEMENTED, f"raftkv does not implement {what}: {why}")


_MEMBERSHIP = {"unknown": MEMBER_NOT_FOUND, "not_learner": MEMBER_NOT_LEARNER, "not_caught_up": LEARNER_NOT_READY,
               "not_enough_started": NOT_ENOUGH_STARTED, "unhealthy": UNHEALTHY}


def translate(exc: BaseException) -> EtcdError | None:
    """The etcd error for a node-level failure (None: not one we know, a bug to surface as is)."""
    if isinstance(exc, EtcdError):
        return exc
    if isinstance(exc, CompactedError):
        return COMPACTED()
    if isinstance(exc, RequestRefused) and exc.reason == "duplicate" and exc.details.get("field") == "peerURL":
        return PEER_URL_EXISTS()  # refused here, or by the leader this node relayed the change to
    if isinstance(exc, MembershipRefused):
        known = _MEMBERSHIP.get(exc.reason)
        if known is not None:
            return known()
        code = grpc.StatusCode.INVALID_ARGUMENT if exc.reason == "invalid" else grpc.StatusCode.FAILED_PRECONDITION
        return EtcdError(code, f"etcdserver: {exc}")
    if isinstance(exc, RequestRefused):  # the leader's answer to what this node relayed (with the caller's credentials)
        if exc.status == 401:
            return INVALID_AUTH_TOKEN()
        if exc.status == 403 and exc.reason == "permission_denied":
            return PERMISSION_DENIED()
        if exc.status == 404 and "lease" in exc.details:
            return LEASE_NOT_FOUND()
        if exc.reason in _MEMBERSHIP:  # a membership change the leader refused (a promote relayed by this node)
            return _MEMBERSHIP[exc.reason]()
        if exc.reason == "no_leader":
            return NO_LEADER()
        return EtcdError(grpc.StatusCode.FAILED_PRECONDITION, f"etcdserver: {exc}")
    if isinstance(exc, NoLeaderError):
        return NO_LEADER()
    if isinstance(exc, OutcomeUnknownError):
        return TIMEOUT()
    if isinstance(exc, NodeError):  # NotAppliedError: definitely not done, so a retry is safe
        return EtcdError(grpc.StatusCode.UNAVAILABLE, f"etcdserver: {exc}")
    return None


def is_lease_not_found(error: EtcdError | None) -> bool:
    return error is not None and error.message == LEASE_NOT_FOUND().message


def unary(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """A unary RPC handler whose node-level failures reach the client as etcd's errors."""

    @functools.wraps(method)
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await method(self, request, context)
        except Exception as exc:
            error = translate(exc)
            if error is None:
                raise
            await context.abort(error.code, error.message)
            raise AssertionError("abort returned") from exc  # context.abort always raises

    return handler
