"""Authentication and authorisation on the client API: who sends a request, and whether they may.

Theory of operation
-------------------
Users, roles and the auth switch are replicated state (raftkv/kv/auth.py); this module reads the
node's copy of it. While auth is off every request passes, as before it existed. While it is on:

1. the middleware calls `Gate.admit` before the handler. Each route has a `Need` (the table
   `ROUTE_NEEDS`; `create_app` asserts every route is in it, so a new route cannot be left out):
   OPEN routes (health, metrics, the OpenAPI document, /raft-state, logging in) need nobody;
   every other route needs a user, identified by `Authorization: Basic` (checked against the
   password hash) or `Authorization: Bearer` (a token from `POST /auth/token`), else 401. ADMIN
   routes then need the admin permission, EVERY_KEY routes (the Raft log and event stream, which
   show every key's writes) read access to every key, else 403. The user is kept on the request;
2. KEYS routes check their keys in the handler, once they know them: reads after the read
   barrier (so a permission revoked before the read began is seen), writes through `propose`,
   which derives what a command needs from the command itself (`needs`), then proposes it
   wrapped as `AsUser(user, auth revision)`. If auth changed before it applied, the state machine
   refuses it untouched and `propose` checks and tries again, with the newer state;
3. the etcd gateway (`/v3/...`) passes the middleware: etcd's services admit their own calls, by
   etcd's rules and with etcd's errors, over gRPC and the gateway alike (raftkv/etcd/admission.py),
   through this same gate (`authenticate_header`, `check`, `propose_as`, tokens and passwords).

Password hashes are argon2id (argon2-cffi). Hashing and checking take tens of milliseconds and
as much memory as they must, so they run on worker threads, at most two at a time, never on the
loop the Raft group shares; a password that checked out is remembered (by a keyed digest, in
memory) until that user's hash changes, so Basic authentication costs one hash per user, not
one per request. Tokens are JWTs (PyJWT, HS256) signed with the replicated token key: any node
checks any node's tokens; a new password or `auth enable` again voids older ones. A node's copy
of the users may trail the cluster's (a node that joined a moment ago is still replaying the log):
credentials it refuses are checked again after a read barrier if its auth state moved meanwhile,
so that a user the cluster knows is not told 401 by a member that has not caught up.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import os
import secrets
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from enum import Enum
from typing import Any

import argon2
import jwt
from aiohttp import web

from raftkv.api.errors import ApiError
from raftkv.api.node import Node
from raftkv.kv import (
    AUTH_CHANGED,
    Access,
    AsUser,
    AuthChange,
    AuthState,
    Command,
    Compact,
    Delete,
    LeaseGrant,
    LeaseRevoke,
    PublishMember,
    Put,
    Txn,
    TxnDelete,
    TxnDeleteRange,
    TxnGet,
    TxnPut,
    TxnRange,
)
from raftkv.node.forwarding import CALLER_AUTHORIZATION

__all__ = ["DEFAULT_TOKEN_TTL_S", "ROUTE_NEEDS", "USER_KEY", "Gate", "Need", "Requirement", "needs", "range_prefix"]

USER_KEY: web.RequestKey[str] = web.RequestKey("user", str)  # the authenticated user, while auth is on
DEFAULT_TOKEN_TTL_S = 600
MAX_TOKEN_TTL_S = 24 * 3600
MAX_PASSWORD_CHARS = 1024
_REMEMBERED_PASSWORDS = 1024
_ATTEMPTS_AT_ONCE = 2  # password hashes computed at once (each takes one core for tens of ms)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="raftkv", Basic realm="raftkv"'}


class Need(Enum):
    OPEN = "open"  # anybody
    USER = "user"  # any authenticated user
    KEYS = "keys"  # a user, with the permissions the handler checks on the keys it touches
    EVERY_KEY = "every_key"  # a user who may read every key
    ADMIN = "admin"  # a user with the admin permission
    ETCD = "etcd"  # etcd's gateway: its services admit each call themselves (raftkv/etcd/admission.py)


_ADMIN_AUTH_ROUTES = ("/auth/enable", "/auth/disable", "/auth/users", "/auth/users/{name}",
                      "/auth/users/{name}/roles/{role}", "/auth/roles", "/auth/roles/{name}",
                      "/auth/roles/{name}/permissions")

ROUTE_NEEDS: dict[str, Need] = {
    "/kv": Need.KEYS, "/kv/{key}": Need.KEYS, "/kv/{key}/history": Need.KEYS, "/txn": Need.KEYS,
    "/{key}": Need.KEYS, "/watch": Need.KEYS,
    "/raft-state": Need.OPEN, "/metrics": Need.OPEN, "/health": Need.OPEN, "/openapi.json": Need.OPEN,
    "/version": Need.OPEN, "/auth/token": Need.OPEN, "/auth/status": Need.OPEN,
    "/force-election": Need.ADMIN, "/simulate-partition": Need.ADMIN, "/simulate-link": Need.ADMIN,
    "/lab/release": Need.ADMIN, "/lab/drop": Need.ADMIN, "/compact": Need.ADMIN, "/snapshot": Need.ADMIN,
    "/members/{id}/promote": Need.ADMIN, "/members/{id}": Need.ADMIN,
    "/raft/events": Need.EVERY_KEY, "/raft/log": Need.EVERY_KEY,
    "/leases": Need.USER, "/leases/{id}/keepalive": Need.USER,
    "/leases/{id}": Need.KEYS,  # GET any user; DELETE writes (deletes) the lease's keys
    **dict.fromkeys(_ADMIN_AUTH_ROUTES, Need.ADMIN),
}
# Routes whose reads and writes need different things.
_WRITE_NEEDS = {"/lab": Need.ADMIN, "/members": Need.ADMIN, "/auth/users/{name}/password": Need.USER}
# The member list is open, as /raft-state is (it names the same members and addresses): a node
# asking another whether it was removed has no user.
_READ_NEEDS = {"/lab": Need.USER, "/members": Need.OPEN, "/auth/users/{name}/password": Need.USER}


# Routes decided on this node's own view of auth: they must answer without a quorum (the lab, the
# Raft log and events, fault injection), or are as frequent as writes (keep-alives).
_DECIDED_LOCALLY = frozenset({"/force-election", "/simulate-partition", "/simulate-link", "/lab", "/lab/release",
                              "/lab/drop", "/raft/events", "/raft/log", "/leases/{id}/keepalive"})


# Routes whose handler makes a read barrier of its own and checks after it (Gate.require).
_OWN_BARRIER = frozenset({"/snapshot"})


def route_need(template: str, method: str) -> Need:
    """What a route needs; KeyError for a route nobody classified (create_app asserts there is none)."""
    if template.startswith("/v3/"):
        return Need.ETCD
    if template in _WRITE_NEEDS:
        return (_READ_NEEDS if method in ("GET", "HEAD") else _WRITE_NEEDS)[template]
    return ROUTE_NEEDS[template]


def range_prefix(prefix: str, start: str = "", end: str | None = None) -> str:
    """The longest prefix every key of a range has: the range's own prefix, or what its start and
    end share (every key between two strings starts with their common prefix), one character
    longer when the end is no further than where the keys with that longer prefix end (etcd's
    `--prefix` sends [app/, app0): every key in it starts with app/, not only with app)."""
    shared = "" if end is None else os.path.commonprefix([start, end])  # noqa: RUF071 (characters are meant)
    if end is not None and len(start) > len(shared) and ord(start[len(shared)]) < sys.maxunicode:
        longer = start[:len(shared) + 1]
        if end <= longer[:-1] + chr(ord(longer[-1]) + 1):  # the first string past every key under `longer`
            shared = longer
    return prefix if len(prefix) >= len(shared) else shared


Requirement = tuple[Access, str | None, str | None]  # access, key, prefix (admin: neither)


def needs(cmd: Command, user: str) -> Iterator[Requirement]:
    """What `user` needs to be allowed `cmd`."""
    t = type(cmd)
    if t is Put or t is Delete:
        yield Access.WRITE, cmd.key, None
    elif t is Txn:
        for c in cmd.compare:
            yield Access.READ, c.key, None
        for op in (*cmd.success, *cmd.failure):
            if type(op) is TxnGet:
                yield Access.READ, op.key, None
            elif type(op) is TxnRange and not op.prefix and op.end == op.start + "\0":
                yield Access.READ, op.start, None  # a range of one key (etcd's range op names one so)
            elif type(op) is TxnRange:
                yield Access.READ, None, range_prefix(op.prefix, op.start, op.end)
            elif type(op) is TxnPut or type(op) is TxnDelete:
                yield Access.WRITE, op.key, None
            else:
                assert type(op) is TxnDeleteRange
                yield Access.WRITE, None, range_prefix("", op.start, op.end)
    elif t is AuthChange and cmd.op.value == "user_passwd" and cmd.name == user:
        return  # anyone may change their own password
    elif t is AuthChange or t is Compact:
        yield Access.ADMIN, None, None
    else:
        # lease routes check their own needs; a node publishes its member details itself, unasked
        assert t is LeaseGrant or t is LeaseRevoke or t is PublishMember, t


class Gate:
    """Admits requests to one node's API while auth is on (see the module's docstring)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._hasher = argon2.PasswordHasher()
        self._attempts = asyncio.Semaphore(_ATTEMPTS_AT_ONCE)
        self._memo_key = secrets.token_bytes(32)
        self._checked: OrderedDict[tuple[str, bytes], str] = OrderedDict()  # (user, digest) -> hash checked

    @property
    def state(self) -> AuthState:
        return self.node.kv.auth

    # ---- the middleware's step -----------------------------------------------------------------

    async def admit(self, request: web.Request, template: str) -> None:
        """Raise 401/403 unless the request may reach its handler; remember its user.

        This node's copy of the auth state may be behind the cluster's (it restarted and is
        replaying its log, or it is cut off): "auth is off" here may be old news. The key routes
        need nothing more (a write checked while auth looked off is refused by the state machine,
        and a read checks again after its read barrier), nor do the lab's and the observers'
        (they must work without a quorum); any other guarded route waits for a read barrier
        first, so that it is decided on auth as the cluster has it."""
        need = route_need(template, request.method)
        if need is Need.OPEN or need is Need.ETCD:
            return
        if not self.state.enabled:
            if (need is Need.KEYS and template != "/leases/{id}") or template in _DECIDED_LOCALLY | _OWN_BARRIER:
                return
            await self.node.read_barrier()
            if not self.state.enabled:
                return
        user = await self.authenticate(request, may_wait=template not in _DECIDED_LOCALLY)
        request[USER_KEY] = user
        CALLER_AUTHORIZATION.set(request.headers["Authorization"])  # for what this node relays to the leader
        if need is Need.ADMIN:
            self.require(request, Access.ADMIN)
        elif need is Need.EVERY_KEY:
            self.require(request, Access.READ, prefix="")

    async def authenticate(self, request: web.Request, *, may_wait: bool = True) -> str:
        """The user the request's credentials name; 401 when there are none or they are wrong."""
        return await self.authenticate_header(request.headers.get("Authorization", ""), may_wait=may_wait)

    async def authenticate_header(self, header: str, *, may_wait: bool = True) -> str:
        """The user an Authorization header's credentials name; 401 when there are none or they are wrong."""
        return await self._as_the_cluster_has_it(lambda: self._credentials_user(header), may_wait)

    async def log_in(self, name: str, password: str) -> str:
        """`name`, if `password` is theirs (to issue a token); 401 if not."""
        return await self._as_the_cluster_has_it(lambda: self.check_password(name, password), True)

    async def _as_the_cluster_has_it(self, check: Callable[[], Awaitable[str]], may_wait: bool) -> str:
        """This node's users may be behind the cluster's (it joined a moment ago and is replaying the
        log, or it missed a new password): credentials it refuses are checked again after a read
        barrier, if the auth state moved meanwhile, unless the caller must not wait for a quorum
        (`may_wait` false: then the refusal stands)."""
        revision = self.state.revision
        try:
            return await check()
        except ApiError as refused:
            if not may_wait or refused.fields.get("reason") == "token_expired":
                raise
            await self.node.read_barrier()
            if self.state.revision == revision:
                raise
        return await check()

    async def _credentials_user(self, header: str) -> str:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "basic":
            name, password = _basic(credentials.strip())
            return await self.check_password(name, password)
        if scheme.lower() == "bearer":
            return self.check_token(credentials.strip())
        raise ApiError(401, "authentication required: send Authorization: Basic (user and password, over TLS) "
                            "or Authorization: Bearer (a token from POST /auth/token)",
                       reason="unauthenticated", headers=_CHALLENGE)

    def require(self, request: web.Request, access: Access, *, key: str | None = None,
                prefix: str | None = None) -> None:
        """403 unless the request's user has `access` (to `key`, or to every key under `prefix`)."""
        self.check(request.get(USER_KEY), access, key=key, prefix=prefix)

    def check(self, user: str | None, access: Access, *, key: str | None = None, prefix: str | None = None) -> None:
        """403 unless `user` has `access`; None is the user of a call that came in while auth
        looked off here (AuthTurnedOn if it is on now: nobody checked who sent it)."""
        if not self.state.enabled:
            return
        if user is None:
            raise AuthTurnedOn()
        if not self.state.permits(user, access, key=key, prefix=prefix):
            raise ApiError(403, _denied(user, access, key, prefix), reason="permission_denied", user=user)

    def stream_refusal(self, request: web.Request, access: Access, *, key: str | None = None,
                       prefix: str | None = None) -> str | None:
        """For a stream already open (a watch, the event stream): why it must end now that auth
        changed (its user lost the permission or was deleted, or auth was turned on after it
        began), or None while it may go on. Call it when `state.revision` moved."""
        state, user = self.state, request.get(USER_KEY)
        if not state.enabled:
            return None
        if user is None:
            return "auth was turned on after this stream began: open it again with credentials"
        if not state.permits(user, access, key=key, prefix=prefix):
            return _denied(user, access, key, prefix) + " (revoked while this stream was open)"
        return None

    # ---- writes on a user's behalf -------------------------------------------------------------

    async def propose(self, request: web.Request, cmd: Command) -> dict[str, Any]:
        """Propose `cmd` as the request's user (checked first), or as is while auth is off. A
        request admitted while auth looked off here, and found on, is authenticated now."""
        try:
            return await self.propose_as(request.get(USER_KEY), cmd)
        except AuthTurnedOn:
            request[USER_KEY] = await self.authenticate(request)
            return await self.propose_as(request[USER_KEY], cmd)

    async def propose_as(self, user: str | None, cmd: Command, also: Iterable[Requirement] = (), *,
                         gathered: bool = False) -> dict[str, Any]:
        """Propose `cmd` as `user`, who needs what `cmd` needs and `also` (what else its answer shows:
        etcd's prev_kv), each checked again if auth changed before it applied; as is while auth is off.
        `gathered`: the caller's writes come one per loop iteration (RaftGroup.propose)."""
        also = tuple(also)
        for _attempt in range(3):
            state = self.state
            if not state.enabled:  # (as this node knows; if it is on, the state machine refuses it)
                result = await self.node.propose(cmd, gathered=gathered)
            else:
                if user is None:
                    raise AuthTurnedOn()
                for access, key, prefix in (*needs(cmd, user), *also):
                    self.check(user, access, key=key, prefix=prefix)
                result = await self.node.propose(AsUser(user, state.revision, cmd), gathered=gathered)
            if result.get("error") != AUTH_CHANGED:
                return result
        raise ApiError(503, "users or roles changed while this write was in flight, three times over: nothing "
                            "was done; retry", reason="auth_changed", headers={"Retry-After": "1"})

    # ---- passwords and tokens ------------------------------------------------------------------

    async def hash_password(self, password: Any) -> str:
        if type(password) is not str or not 1 <= len(password) <= MAX_PASSWORD_CHARS:
            raise ApiError(400, f"password: must be a string of 1 to {MAX_PASSWORD_CHARS} characters")
        async with self._attempts:
            return await asyncio.get_running_loop().run_in_executor(None, self._hasher.hash, password)

    async def check_password(self, name: str, password: str) -> str:
        user = self.state.users.get(name)
        memo = (name, hmac.digest(self._memo_key, password.encode("utf-8", "surrogatepass"), hashlib.sha256))
        if user is not None and self._checked.get(memo) == user.password_hash:
            self._checked.move_to_end(memo)
            return name
        stored = user.password_hash if user is not None else _decoy_hash()  # the same work either way
        async with self._attempts:
            ok = await asyncio.get_running_loop().run_in_executor(None, _verify, self._hasher, stored, password)
        if not ok or user is None or self.state.users.get(name) is not user:
            raise ApiError(401, "wrong user name or password", reason="unauthenticated", headers=_CHALLENGE)
        self._checked[memo] = stored
        while len(self._checked) > _REMEMBERED_PASSWORDS:
            self._checked.popitem(last=False)
        return name

    def issue_token(self, name: str, ttl_s: int) -> dict[str, Any]:
        now = int(time.time())
        user = self.state.users[name]
        claims = {"sub": name, "rev": user.password_revision, "iat": now, "exp": now + ttl_s}
        token = jwt.encode(claims, bytes.fromhex(self.state.token_key), algorithm="HS256")
        return {"token": token, "user": name, "ttl": ttl_s, "expiresAt": now + ttl_s}

    def check_token(self, token: str) -> str:
        state = self.state
        try:
            claims = jwt.decode(token, bytes.fromhex(state.token_key), algorithms=["HS256"],
                                options={"require": ["sub", "exp", "rev"]})
        except jwt.ExpiredSignatureError:
            raise ApiError(401, "the token has expired: ask POST /auth/token for a new one",
                           reason="token_expired", headers=_CHALLENGE) from None
        except jwt.InvalidTokenError as exc:
            raise ApiError(401, f"invalid token ({exc}): ask POST /auth/token for one", reason="unauthenticated",
                           headers=_CHALLENGE) from None
        user = state.users.get(claims["sub"])
        if user is None or user.password_revision != claims["rev"]:
            raise ApiError(401, "the token is void: its user was deleted or changed password since",
                           reason="token_void", headers=_CHALLENGE)
        return str(claims["sub"])


class AuthTurnedOn(ApiError):
    """A request admitted while this node had not yet learnt that auth is on: nobody checked who
    sent it, so nothing was done. Sent again, it is checked."""

    def __init__(self) -> None:
        super().__init__(503, "auth is on, and this node had not learnt it yet when the request came in: nothing "
                              "was done; send it again (with credentials)", reason="auth_changed",
                         headers={"Retry-After": "1"})


def _basic(credentials: str) -> tuple[str, str]:
    try:
        name, sep, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        sep = ""
    if not sep:
        raise ApiError(401, "malformed Basic credentials: expected base64 of user:password",
                       reason="unauthenticated", headers=_CHALLENGE)
    return name, password


def _verify(hasher: argon2.PasswordHasher, stored: str, password: str) -> bool:
    try:
        return hasher.verify(stored, password)
    except argon2.exceptions.VerificationError:
        return False
    except argon2.exceptions.InvalidHashError:
        return False


@functools.cache
def _decoy_hash() -> str:
    """A hash no password matches, checked for an unknown user so that it takes as long as a known one."""
    return argon2.PasswordHasher().hash(secrets.token_urlsafe(16))


def _denied(user: str, access: Access, key: str | None, prefix: str | None) -> str:
    if access is Access.ADMIN:
        return f"permission denied: user {user} needs the admin permission for this"
    where = f"key {key!r}" if key is not None else "every key" if not prefix else f"every key under {prefix!r}"
    return f"permission denied: user {user} may not {access.value} {where}"
