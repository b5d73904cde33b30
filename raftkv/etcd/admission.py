"""Who may call which etcd RPC: etcd's API authenticated and authorised with raftkv's users.

Theory of operation
-------------------
Users, roles and the auth switch are raftkv's own (raftkv/kv/auth.py), and every check goes
through the node's `Gate` (raftkv/api/auth.py), the one its HTTP API uses: the same password
check, the same tokens, the same rules. While auth is off every call passes. While it is on,
every call is admitted before its handler runs, in the call's own task, the same way over gRPC
(an interceptor, server.py) and over the JSON gateway (gateway.py):

1. `RPC_NEEDS` classifies every RPC of etcd's rpc.proto (the server and the gateway assert that
   none is left out): OPEN (Authenticate, AuthStatus, MemberList: raftkv's /auth/status and
   GET /members are open too), USER (any authenticated user: leases, Status; UserGet and RoleGet,
   whose handlers ask admin for another user or a role not one's own), KEYS (the handler checks
   the keys it touches), ADMIN (membership changes, maintenance, users and roles, compaction).
2. The caller is named by the gRPC metadata `token` (what etcd's clients send once Authenticate
   gave them one) or `authorization` (what etcd's gateway passes on from the Authorization
   header): a token from etcd's Authenticate or from raftkv's `POST /auth/token` (one JWT, bare
   or as `Bearer`), or `Basic` name and password. Without: "etcdserver: user name is empty"; a
   bad, expired or void token: "etcdserver: invalid auth token", on which etcd's clients
   authenticate again and retry; a wrong password: "etcdserver: authentication failed, invalid
   user ID or password".
3. The user is kept for the call in `CALLER` (a context variable: the call's task and the tasks
   it starts see it), and its credentials in `CALLER_AUTHORIZATION`, which what the node relays
   to the leader's HTTP API carries (member changes, lease keep-alives), so the leader checks the
   same user. Handlers check keys with `require` (reads after the read barrier, so as of the
   read; a txn that only reads, with `require_for`) and propose writes with `propose`: the gate's
   `propose_as`, which wraps a write as `AsUser(user, auth revision)` and checks again if auth
   changed before it applied, so a permission revoked holds for writes in flight. A check in a
   call that has no user (never admitted, or admitted while auth was off) refuses while auth is
   on (fail closed).

A denial is etcd's "etcdserver: permission denied" (PERMISSION_DENIED), which etcdctl prints as
is and `etcdctl endpoint health` reads as "healthy, not allowed".
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

import grpc

from raftkv.api.auth import Gate, Need, Requirement, needs, range_prefix
from raftkv.api.errors import ApiError
from raftkv.etcd import errors
from raftkv.etcd.convert import Bounds
from raftkv.etcd.errors import EtcdError
from raftkv.etcd.pb import rpc_pb2
from raftkv.kv import Access, AuthState, Command
from raftkv.node.forwarding import CALLER_AUTHORIZATION

__all__ = ["CALLER", "RPC_NEEDS", "Admission", "assert_every_rpc_classified", "range_need", "rpc_name"]

# The user of the etcd call being served: None when auth was off as it was admitted; unset when
# it was never admitted (then every check refuses while auth is on).
CALLER: ContextVar[str | None] = ContextVar("etcd_caller")

_O, _U, _K, _A = Need.OPEN, Need.USER, Need.KEYS, Need.ADMIN
RPC_NEEDS: dict[str, Need] = {
    "KV.Range": _K, "KV.Put": _K, "KV.DeleteRange": _K, "KV.Txn": _K,
    "KV.Compact": _A,  # as raftkv's POST /compact
    "Watch.Watch": _K,
    "Lease.LeaseGrant": _U, "Lease.LeaseKeepAlive": _U, "Lease.LeaseTimeToLive": _U, "Lease.LeaseLeases": _U,
    "Lease.LeaseRevoke": _K,  # deletes the lease's keys: write access to each
    "Cluster.MemberList": _O,  # as raftkv's GET /members
    "Cluster.MemberAdd": _A, "Cluster.MemberRemove": _A, "Cluster.MemberUpdate": _A, "Cluster.MemberPromote": _A,
    # Status as in etcd (any user may ask); listing alarms too (etcdctl endpoint health does; raftkv
    # raises none, and raising or clearing them is not implemented)
    "Maintenance.Status": _U, "Maintenance.Alarm": _U,
    "Maintenance.Defragment": _A, "Maintenance.Hash": _A, "Maintenance.HashKV": _A, "Maintenance.Snapshot": _A,
    "Maintenance.MoveLeader": _A, "Maintenance.Downgrade": _A,
    "Auth.Authenticate": _O, "Auth.AuthStatus": _O,  # logging in; whether auth is on (raftkv's /auth/status)
    "Auth.UserChangePassword": _U,  # one's own; another's needs admin (checked as the change is proposed)
    "Auth.UserGet": _U, "Auth.RoleGet": _U,  # as etcd: oneself and one's own roles; others need admin (handler)
    **{f"Auth.{name}": _A for name in ("AuthEnable", "AuthDisable", "UserAdd", "UserList", "UserDelete",
                                       "UserGrantRole", "UserRevokeRole", "RoleAdd", "RoleList",
                                       "RoleDelete", "RoleGrantPermission", "RoleRevokePermission")},
}
_SERVICES = ("KV", "Watch", "Lease", "Cluster", "Maintenance", "Auth")


def assert_every_rpc_classified() -> None:
    """Every RPC etcd's services define has a need (a new one cannot be served unchecked), and
    every need names an RPC (a misspelt one would leave the real one out)."""
    defined = {f"{service}.{method.name}" for service in _SERVICES
               for method in rpc_pb2.DESCRIPTOR.services_by_name[service].methods}
    assert defined == RPC_NEEDS.keys(), f"not classified: {defined - RPC_NEEDS.keys()}, unknown: " \
                                        f"{RPC_NEEDS.keys() - defined}"


def rpc_name(method: str) -> str:
    """"KV.Range" for gRPC's "/etcdserverpb.KV/Range"."""
    service, _, name = method.rpartition("/")
    return f"{service.rpartition('.')[2]}.{name}"


def _authorization(metadata: Iterable[Any]) -> str | None:
    """The caller's credentials as an Authorization header (a bare token is a Bearer one)."""
    found: dict[str, str] = {}
    for key, value in metadata:
        if key in ("token", "authorization") and key not in found:
            found[key] = value.decode() if isinstance(value, bytes) else str(value)
    credentials = (found.get("token") or found.get("authorization") or "").strip()
    if not credentials:
        return None
    scheme = credentials.partition(" ")[0].lower()
    return credentials if scheme in ("basic", "bearer") else f"Bearer {credentials}"


class Admission:
    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        assert_every_rpc_classified()

    @property
    def state(self) -> AuthState:
        return self.gate.state

    async def admit(self, rpc: str, metadata: Iterable[Any]) -> None:
        """Let the call of `rpc` ("KV.Range") in, or raise the etcd error that says why not; keep
        its user for the call."""
        need = RPC_NEEDS[rpc]
        CALLER.set(None)
        if not self.state.enabled or need is Need.OPEN:
            return
        header = _authorization(metadata)
        if header is None:
            raise errors.USER_EMPTY()
        try:
            user = await self.gate.authenticate_header(header)
        except ApiError:
            basic = header.partition(" ")[0].lower() == "basic"
            raise (errors.AUTH_FAILED() if basic else errors.INVALID_AUTH_TOKEN()) from None
        CALLER.set(user)
        CALLER_AUTHORIZATION.set(header)
        if need is Need.ADMIN:
            self.require(Access.ADMIN)

    def caller(self) -> str | None:
        """The admitted user; None while auth is off. A call never admitted, or admitted while auth
        was off (a watch stream opened before `auth enable` that asks for a new watch), has no user
        once it is on: refused rather than served unchecked."""
        try:
            user = CALLER.get()
        except LookupError:
            user = None
        if user is None and self.state.enabled:
            raise errors.USER_EMPTY()
        return user

    def refusal(self, access: Access, key: str | None = None, prefix: str | None = None) -> str | None:
        """For a watch already open, asked when auth changed: why it must end (its user lost the
        permission, or auth was turned on after it began), or None while it may go on."""
        if not self.state.enabled:
            return None
        try:
            user = CALLER.get()
        except LookupError:
            user = None
        if user is None:
            return "etcdserver: auth was enabled after this watch began: watch again with a user"
        return None if self.state.permits(user, access, key=key, prefix=prefix) else errors.PERMISSION_DENIED().message

    def require(self, access: Access, key: str | None = None, prefix: str | None = None) -> None:
        """PERMISSION_DENIED unless the caller has `access` (to `key`, or every key under `prefix`)."""
        try:
            self.gate.check(self.caller(), access, key=key, prefix=prefix)
        except ApiError:
            raise errors.PERMISSION_DENIED() from None

    def require_for(self, cmd: Command) -> None:
        """PERMISSION_DENIED unless the caller may do all that `cmd` does (a txn read here, not proposed)."""
        user = self.caller()
        if user is not None:  # (None: auth is off)
            for access, key, prefix in needs(cmd, user):
                self.require(access, key, prefix)

    async def propose(self, cmd: Command, also: Iterable[Requirement] = ()) -> dict[str, Any]:
        """The state machine's result for `cmd` proposed as the caller, who needs what it needs and
        `also` (what else the answer shows, etcd's prev_kv)."""
        try:
            # grpc.aio hands calls to their handlers one per loop iteration: the leader gathers them
            return await self.gate.propose_as(self.caller(), cmd, also, gathered=True)
        except ApiError as e:
            raise _etcd_error(e) from None


def _etcd_error(e: ApiError) -> EtcdError:
    if e.status == 403:
        return errors.PERMISSION_DENIED()
    if e.status == 503:  # auth changed under the write each time it was tried: nothing was done
        return EtcdError(grpc.StatusCode.UNAVAILABLE, f"etcdserver: {e}")
    if e.status == 400:
        return errors.invalid(f"etcdserver: {e}")
    return EtcdError(grpc.StatusCode.FAILED_PRECONDITION, f"etcdserver: {e}")


def range_need(access: Access, bounds: Bounds) -> Requirement:
    """What `access` to an etcd key or [key, range_end) range needs: the key, or every key under the
    longest prefix the range's keys share (the key itself, for what `--prefix` sends)."""
    if bounds.single:
        return access, bounds.start, None
    return access, None, bounds.prefix if bounds.prefix is not None else range_prefix("", bounds.start, bounds.end)
