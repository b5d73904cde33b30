"""The `/auth` routes: logging in (`POST /auth/token`), the auth switch, users and roles.

Every change is an `AuthChange` proposed through the Raft log like a key write (raftkv/kv/auth.py
holds the rules); these handlers only parse, validate and hash. While auth is off anyone may
manage users and roles (as in etcd: set them up, then enable); once it is on, the admin
permission is needed (api/auth.py's route table), except to change one's own password.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from raftkv.api.auth import DEFAULT_TOKEN_TTL_S, MAX_TOKEN_TTL_S, Gate
from raftkv.api.errors import ApiError, check_query, json_response
from raftkv.api.node import Node
from raftkv.api.requests import RequestReader
from raftkv.kv import Access, AuthChange, AuthChangeOp, Command, Permission, check_name

__all__ = ["AuthRoutes"]

Propose = Callable[[web.Request, Command], Awaitable[web.StreamResponse]]
_ACCESS = ", ".join(repr(a.value) for a in Access)


class AuthRoutes:
    def __init__(self, node: Node, read: RequestReader, gate: Gate, propose: Propose) -> None:
        self.node = node
        self.read = read
        self.gate = gate
        self.propose = propose

    def routes(self, app: web.Application) -> None:
        add, get = app.router.add_route, app.router.add_get
        get("/auth/status", self.status)
        add("POST", "/auth/token", self.token)
        add("POST", "/auth/enable", self.enable)
        add("POST", "/auth/disable", self.disable)
        get("/auth/users", self.users)
        get("/auth/users/{name}", self.user)
        add("PUT", "/auth/users/{name}", self.add_user)
        add("DELETE", "/auth/users/{name}", self.delete_user)
        add("POST", "/auth/users/{name}/password", self.change_password)
        add("PUT", "/auth/users/{name}/roles/{role}", self.grant_role)
        add("DELETE", "/auth/users/{name}/roles/{role}", self.revoke_role)
        get("/auth/roles", self.roles)
        get("/auth/roles/{name}", self.role)
        add("PUT", "/auth/roles/{name}", self.add_role)
        add("DELETE", "/auth/roles/{name}", self.delete_role)
        add("POST", "/auth/roles/{name}/permissions", self.grant_permission)
        add("DELETE", "/auth/roles/{name}/permissions", self.revoke_permission)

    # ---- logging in ----------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.StreamResponse:
        """Whether auth is on and, for a request that carries credentials, whose they are and what
        that user may do (a dashboard greys what it may not)."""
        check_query(request, set())
        state = self.gate.state
        answer: dict[str, Any] = {"enabled": state.enabled, "authRevision": state.revision}
        if state.enabled and "Authorization" in request.headers:
            user = await self.gate.authenticate(request)
            answer.update(user=user, roles=sorted(state.users[user].roles), admin=state.permits(user, Access.ADMIN),
                          readsEveryKey=state.permits(user, Access.READ, prefix=""),
                          permissions=[p.to_json() for p in state.permissions(user)])
        return json_response(self.node.id, answer)

    async def token(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        body = await self.read.object(request, ("name", "password", "ttl"), '{"name": "alice", "password": "..."}')
        name, password, ttl = body.get("name"), body.get("password"), body.get("ttl", DEFAULT_TOKEN_TTL_S)
        if type(name) is not str or type(password) is not str:
            raise ApiError(400, "name and password: must be strings")
        if type(ttl) is not int or not 1 <= ttl <= MAX_TOKEN_TTL_S:
            raise ApiError(400, f"ttl: must be an integer number of seconds from 1 to {MAX_TOKEN_TTL_S}")
        if not self.gate.state.enabled:
            raise ApiError(409, "auth is off: requests need no token (raftkv auth enable turns it on)",
                           reason="auth_disabled")
        user = await self.gate.log_in(name, password)
        return json_response(self.node.id, self.gate.issue_token(user, ttl))

    # ---- the switch ----------------------------------------------------------------------------

    async def enable(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        await self.read.no_body(request)
        return await self.propose(request, AuthChange(AuthChangeOp.ENABLE, token_key=secrets.token_hex(32)))

    async def disable(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        await self.read.no_body(request)
        return await self.propose(request, AuthChange(AuthChangeOp.DISABLE))

    # ---- users ---------------------------------------------------------------------------------

    async def users(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        state = self.gate.state
        return json_response(self.node.id, {"users": [state.user_view(name) for name in sorted(state.users)]})

    async def user(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        name = _name(request, "name", "user")
        if name not in self.gate.state.users:
            raise ApiError(404, f"user {name} does not exist")
        return json_response(self.node.id, self.gate.state.user_view(name))

    async def add_user(self, request: web.Request) -> web.StreamResponse:
        return await self._password_change(request, AuthChangeOp.USER_ADD)

    async def change_password(self, request: web.Request) -> web.StreamResponse:
        return await self._password_change(request, AuthChangeOp.USER_PASSWD)

    async def _password_change(self, request: web.Request, op: AuthChangeOp) -> web.StreamResponse:
        check_query(request, set())
        name = _name(request, "name", "user")
        body = await self.read.object(request, ("password",), '{"password": "..."}')
        if "password" not in body:
            raise ApiError(400, "password: missing")
        password_hash = await self.gate.hash_password(body["password"])
        return await self.propose(request, AuthChange(op, name, password_hash=password_hash))

    async def delete_user(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        await self.read.no_body(request)
        return await self.propose(request, AuthChange(AuthChangeOp.USER_DELETE, _name(request, "name", "user")))

    async def grant_role(self, request: web.Request) -> web.StreamResponse:
        return await self._user_role(request, AuthChangeOp.USER_GRANT_ROLE)

    async def revoke_role(self, request: web.Request) -> web.StreamResponse:
        return await self._user_role(request, AuthChangeOp.USER_REVOKE_ROLE)

    async def _user_role(self, request: web.Request, op: AuthChangeOp) -> web.StreamResponse:
        check_query(request, set())
        await self.read.no_body(request)
        name, role = _name(request, "name", "user"), _name(request, "role", "role")
        return await self.propose(request, AuthChange(op, name, role=role))

    # ---- roles ---------------------------------------------------------------------------------

    async def roles(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        state = self.gate.state
        return json_response(self.node.id, {"roles": [state.role_view(name) for name in state.role_names()]})

    async def role(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        name = _name(request, "name", "role")
        if name not in self.gate.state.role_names():
            raise ApiError(404, f"role {name} does not exist")
        return json_response(self.node.id, self.gate.state.role_view(name))

    async def add_role(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        await self.read.no_body(request)
        return await self.propose(request, AuthChange(AuthChangeOp.ROLE_ADD, _name(request, "name", "role")))

    async def delete_role(self, request: web.Request) -> web.StreamResponse:
        check_query(request, set())
        await self.read.no_body(request)
        return await self.propose(request, AuthChange(AuthChangeOp.ROLE_DELETE, _name(request, "name", "role")))

    async def grant_permission(self, request: web.Request) -> web.StreamResponse:
        return await self._permission(request, AuthChangeOp.ROLE_GRANT)

    async def revoke_permission(self, request: web.Request) -> web.StreamResponse:
        return await self._permission(request, AuthChangeOp.ROLE_REVOKE)

    async def _permission(self, request: web.Request, op: AuthChangeOp) -> web.StreamResponse:
        check_query(request, set())
        name = _name(request, "name", "role")
        body = await self.read.object(request, ("access", "key", "prefix"),
                                      '{"access": "readwrite", "key": "app/", "prefix": true}')
        permission = self._parse_permission(body)
        return await self.propose(request, AuthChange(op, name, permission=permission))

    def _parse_permission(self, body: dict[str, Any]) -> Permission:
        try:
            access = Access(body.get("access"))
        except ValueError:
            raise ApiError(400, f"access: must be one of {_ACCESS}") from None
        key, prefix = body.get("key", ""), body.get("prefix", False)
        if type(prefix) is not bool:
            raise ApiError(400, "prefix: must be true or false")
        if access is Access.ADMIN:
            if key or prefix:
                raise ApiError(400, "admin names no key: give only {\"access\": \"admin\"}")
            return Permission(access)
        if type(key) is not str or not (key or prefix):
            raise ApiError(400, "key: must be a non-empty string (or, with prefix: true, any string; \"\" is "
                                "every key)")
        self.read.check_key_size(key, "key")
        return Permission(access, key, prefix)


def _name(request: web.Request, field: str, what: str) -> str:
    name = request.match_info[field]
    why = check_name(name, what)
    if why is not None:
        raise ApiError(400, why)
    return name
