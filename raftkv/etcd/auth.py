"""etcd's Auth service (users, roles, permissions, the switch, logging in) over raftkv's users.

Theory of operation
-------------------
There is one set of users and roles: raftkv's, replicated through the log (raftkv/kv/auth.py).
Every change is an `AuthChange` proposed as the caller (admission.py: AsUser, checked again if
auth changed meanwhile), exactly as raftkv's `/auth` routes propose it, so a user etcdctl adds is
in `GET /auth/users` and one raftkv adds is in `etcdctl user list`. Passwords are hashed, checked
and tokens issued by the node's Gate (raftkv/api/auth.py): etcd's Authenticate answers the same
JWT as raftkv's `POST /auth/token`, which either API takes.

What differs between the two models, and how it is bridged:
- etcd grants a permission on a key or a [key, range_end) range; raftkv on a key or a prefix. A
  range_end that is the key's prefix end (what `--prefix` sends) is raftkv's prefix, an empty
  one a single key, key and range_end "\\0" (etcd's every key) the empty prefix; any other range
  is refused with INVALID_ARGUMENT.
- etcd holds one permission per key or range, and granting it again replaces its type; raftkv
  holds each (access, key) pair apart. A grant here replaces as etcd's does (the new one is
  granted first, then the others on that key or prefix revoked), and a revoke, which names no
  type in etcd, revokes every type on that key or prefix.
- raftkv's `root` role is built in, with every permission; `auth enable` gives it to the user
  root. Adding a role named root is "role name already exists", changing it "invalid auth
  management". raftkv's admin permission has no form in etcd's Permission: RoleGet leaves it out
  (raftkv's `GET /auth/roles` shows it).
- Changes that find things as asked (enabling auth that is on, granting a role the user has) are
  done, as etcd answers them; raftkv's own refusals become etcd's errors.
"""

from __future__ import annotations

import secrets
from typing import Any

import grpc

from raftkv.api.auth import DEFAULT_TOKEN_TTL_S
from raftkv.api.errors import ApiError
from raftkv.byte_text import as_bytes
from raftkv.etcd import errors
from raftkv.etcd.admission import Admission
from raftkv.etcd.convert import ALL_FROM, key_text, prefix_end
from raftkv.etcd.errors import EtcdError, invalid, unary
from raftkv.etcd.identity import Identity
from raftkv.etcd.pb import auth_pb2, rpc_pb2, rpc_pb2_grpc
from raftkv.kv import ROOT, Access, AuthChange, AuthChangeOp, InvalidCommand, Permission, check_name, validate
from raftkv.node import NodeHost

__all__ = ["AuthService", "etcd_permission", "raftkv_permission"]

_ACCESS = {auth_pb2.Permission.READ: Access.READ, auth_pb2.Permission.WRITE: Access.WRITE,
           auth_pb2.Permission.READWRITE: Access.READWRITE}
_TYPE = {access: perm_type for perm_type, access in _ACCESS.items()}
_ONLY_KEYS_AND_PREFIXES = ("etcdserver: raftkv grants permissions on a key or a prefix only: give no range_end "
                           "(one key), the key's prefix end (--prefix), or key and range_end \"\\0\" (every key)")


def raftkv_permission(perm_type: int, key: bytes, range_end: bytes) -> Permission:
    """etcd's permission on a key or range as raftkv's on a key or prefix (INVALID_ARGUMENT for a range
    that is neither)."""
    if perm_type not in _ACCESS:
        raise invalid(f"etcdserver: unknown permission type {perm_type}")
    return Permission(_ACCESS[perm_type], *_key_or_prefix(key, range_end))


def _key_or_prefix(key: bytes, range_end: bytes) -> tuple[str, bool]:
    if key in (b"", ALL_FROM) and range_end == ALL_FROM:
        return "", True
    if not range_end:
        return key_text(key), False
    if key and range_end == prefix_end(key):
        return key_text(key), True
    raise invalid(_ONLY_KEYS_AND_PREFIXES)


def etcd_permission(p: Permission) -> auth_pb2.Permission | None:
    """raftkv's permission in etcd's form; None for admin, which etcd's Permission cannot say."""
    if p.access is Access.ADMIN:
        return None
    if p.prefix and not p.key:
        return auth_pb2.Permission(permType=_TYPE[p.access], key=ALL_FROM, range_end=ALL_FROM)
    key = as_bytes(p.key)
    return auth_pb2.Permission(permType=_TYPE[p.access], key=key, range_end=prefix_end(key) if p.prefix else b"")


class AuthService(rpc_pb2_grpc.AuthServicer):
    def __init__(self, node: NodeHost, identity: Identity, admission: Admission) -> None:
        self.node = node
        self.identity = identity
        self.admission = admission
        self.gate = admission.gate

    # ---- the switch and logging in ------------------------------------------------------------

    @unary
    async def AuthEnable(self, request: rpc_pb2.AuthEnableRequest,
                         context: grpc.aio.ServicerContext) -> rpc_pb2.AuthEnableResponse:
        await self._change(AuthChange(AuthChangeOp.ENABLE, token_key=secrets.token_hex(32)))
        return rpc_pb2.AuthEnableResponse(header=self.identity.header())

    @unary
    async def AuthDisable(self, request: rpc_pb2.AuthDisableRequest,
                          context: grpc.aio.ServicerContext) -> rpc_pb2.AuthDisableResponse:
        await self._change(AuthChange(AuthChangeOp.DISABLE))
        return rpc_pb2.AuthDisableResponse(header=self.identity.header())

    @unary
    async def AuthStatus(self, request: rpc_pb2.AuthStatusRequest,
                         context: grpc.aio.ServicerContext) -> rpc_pb2.AuthStatusResponse:
        state = self.gate.state
        return rpc_pb2.AuthStatusResponse(header=self.identity.header(), enabled=state.enabled,
                                          authRevision=state.revision)

    @unary
    async def Authenticate(self, request: rpc_pb2.AuthenticateRequest,
                           context: grpc.aio.ServicerContext) -> rpc_pb2.AuthenticateResponse:
        if not self.gate.state.enabled:
            raise errors.AUTH_NOT_ENABLED()  # (etcd's clients go on without a token)
        try:
            user = await self.gate.log_in(request.name, request.password)
        except ApiError:
            raise errors.AUTH_FAILED() from None
        token = self.gate.issue_token(user, DEFAULT_TOKEN_TTL_S)["token"]
        return rpc_pb2.AuthenticateResponse(header=self.identity.header(), token=token)

    # ---- users --------------------------------------------------------------------------------

    @unary
    async def UserAdd(self, request: rpc_pb2.AuthUserAddRequest,
                      context: grpc.aio.ServicerContext) -> rpc_pb2.AuthUserAddResponse:
        name = _name(request.name, "user")
        if request.options.no_password:
            raise invalid("etcdserver: raftkv's users have passwords (no_password users, named by a client "
                          "certificate, are not supported)")
        password_hash = await self._hash(request.password, request.hashedPassword)
        await self._change(AuthChange(AuthChangeOp.USER_ADD, name, password_hash=password_hash))
        return rpc_pb2.AuthUserAddResponse(header=self.identity.header())

    @unary
    async def UserGet(self, request: rpc_pb2.AuthUserGetRequest,
                      context: grpc.aio.ServicerContext) -> rpc_pb2.AuthUserGetResponse:
        caller = self.admission.caller()
        if caller is not None and caller != request.name:  # as etcd: a user may look at itself
            self.admission.require(Access.ADMIN)
        user = self.gate.state.users.get(request.name)
        if user is None:
            raise errors.USER_NOT_FOUND()
        return rpc_pb2.AuthUserGetResponse(header=self.identity.header(), roles=sorted(user.roles))

    @unary
    async def UserList(self, request: rpc_pb2.AuthUserListRequest,
                       context: grpc.aio.ServicerContext) -> rpc_pb2.AuthUserListResponse:
        return rpc_pb2.AuthUserListResponse(header=self.identity.header(), users=sorted(self.gate.state.users))

    @unary
    async def UserDelete(self, request: rpc_pb2.AuthUserDeleteRequest,
                         context: grpc.aio.ServicerContext) -> rpc_pb2.AuthUserDeleteResponse:
        await self._change(AuthChange(AuthChangeOp.USER_DELETE, _name(request.name, "user")))
        return rpc_pb2.AuthUserDeleteResponse(header=self.identity.header())

    @unary
    async def UserChangePassword(self, request: rpc_pb2.AuthUserChangePasswordRequest,
                                 context: grpc.aio.ServicerContext) -> rpc_pb2.AuthUserChangePasswordResponse:
        name = _name(request.name, "user")
        password_hash = await self._hash(request.password, request.hashedPassword)
        await self._change(AuthChange(AuthChangeOp.USER_PASSWD, name, password_hash=password_hash))
        return rpc_pb2.AuthUserChangePasswordResponse(header=self.identity.header())

    @unary
    async def UserGrantRole(self, request: rpc_pb2.AuthUserGrantRoleRequest,
                            context: grpc.aio.ServicerContext) -> rpc_pb2.AuthUserGrantRoleResponse:
        name, role = _name(request.user, "user"), _name(request.role, "role")
        await self._change(AuthChange(AuthChangeOp.USER_GRANT_ROLE, name, role=role))
        return rpc_pb2.AuthUserGrantRoleResponse(header=self.identity.header())

    @unary
    async def UserRevokeRole(self, request: rpc_pb2.AuthUserRevokeRoleRequest,
                             context: grpc.aio.ServicerContext) -> rpc_pb2.AuthUserRevokeRoleResponse:
        name, role = _name(request.name, "user"), _name(request.role, "role")
        await self._change(AuthChange(AuthChangeOp.USER_REVOKE_ROLE, name, role=role))
        return rpc_pb2.AuthUserRevokeRoleResponse(header=self.identity.header())

    # ---- roles --------------------------------------------------------------------------------

    @unary
    async def RoleAdd(self, request: rpc_pb2.AuthRoleAddRequest,
                      context: grpc.aio.ServicerContext) -> rpc_pb2.AuthRoleAddResponse:
        await self._change(AuthChange(AuthChangeOp.ROLE_ADD, _name(request.name, "role")))
        return rpc_pb2.AuthRoleAddResponse(header=self.identity.header())

    @unary
    async def RoleGet(self, request: rpc_pb2.AuthRoleGetRequest,
                      context: grpc.aio.ServicerContext) -> rpc_pb2.AuthRoleGetResponse:
        state = self.gate.state
        caller = self.admission.caller()
        held = state.users[caller].roles if caller is not None and caller in state.users else ()
        if caller is not None and request.role not in held:  # as etcd: a user may look at its own roles
            self.admission.require(Access.ADMIN)
        if request.role not in state.role_names():
            raise errors.ROLE_NOT_FOUND()
        permissions = [Permission(Access(p["access"]), p.get("key", ""), p.get("prefix", False))
                       for p in state.role_view(request.role)["permissions"]]
        shown = [p for p in map(etcd_permission, permissions) if p is not None]
        return rpc_pb2.AuthRoleGetResponse(header=self.identity.header(), perm=shown)

    @unary
    async def RoleList(self, request: rpc_pb2.AuthRoleListRequest,
                       context: grpc.aio.ServicerContext) -> rpc_pb2.AuthRoleListResponse:
        return rpc_pb2.AuthRoleListResponse(header=self.identity.header(), roles=self.gate.state.role_names())

    @unary
    async def RoleDelete(self, request: rpc_pb2.AuthRoleDeleteRequest,
                         context: grpc.aio.ServicerContext) -> rpc_pb2.AuthRoleDeleteResponse:
        await self._change(AuthChange(AuthChangeOp.ROLE_DELETE, _name(request.role, "role")))
        return rpc_pb2.AuthRoleDeleteResponse(header=self.identity.header())

    @unary
    async def RoleGrantPermission(self, request: rpc_pb2.AuthRoleGrantPermissionRequest,
                                  context: grpc.aio.ServicerContext) -> rpc_pb2.AuthRoleGrantPermissionResponse:
        name = _name(request.name, "role")
        perm = request.perm
        granted = raftkv_permission(perm.permType, perm.key, perm.range_end)
        await self._change(AuthChange(AuthChangeOp.ROLE_GRANT, name, permission=granted))
        for other in self._same_place(name, granted):  # one permission per key or prefix, as in etcd
            if other != granted:
                await self._change(AuthChange(AuthChangeOp.ROLE_REVOKE, name, permission=other))
        return rpc_pb2.AuthRoleGrantPermissionResponse(header=self.identity.header())

    @unary
    async def RoleRevokePermission(self, request: rpc_pb2.AuthRoleRevokePermissionRequest,
                                   context: grpc.aio.ServicerContext) -> rpc_pb2.AuthRoleRevokePermissionResponse:
        name = _name(request.role, "role")
        key, prefix = _key_or_prefix(request.key, request.range_end)
        place = Permission(Access.READ, key, prefix)
        if name == ROOT:
            raise errors.INVALID_AUTH_MGMT()
        if name not in self.gate.state.roles:
            raise errors.ROLE_NOT_FOUND()
        held = self._same_place(name, place)
        if not held:
            raise errors.PERMISSION_NOT_GRANTED()
        for permission in held:
            await self._change(AuthChange(AuthChangeOp.ROLE_REVOKE, name, permission=permission))
        return rpc_pb2.AuthRoleRevokePermissionResponse(header=self.identity.header())

    def _same_place(self, role: str, like: Permission) -> list[Permission]:
        """The role's permissions on the key or prefix `like` names, of any type but admin."""
        return [p for p in self.gate.state.roles.get(role, ()) if p.access is not Access.ADMIN
                and (p.key, p.prefix) == (like.key, like.prefix)]

    # ---- proposing changes ----------------------------------------------------------------------

    async def _hash(self, password: str, hashed: str) -> str:
        if hashed and not password:
            raise invalid("etcdserver: raftkv hashes the password itself (argon2id): send the password, not a "
                          "bcrypt hash")
        try:
            return await self.gate.hash_password(password)
        except ApiError as e:
            raise invalid(f"etcdserver: {e}") from None

    async def _change(self, cmd: AuthChange) -> None:
        """Propose `cmd` as the caller; done, or done already as asked, or etcd's error for why not."""
        try:
            validate(cmd)
        except InvalidCommand as e:
            raise invalid(f"etcdserver: {e}") from None
        result = await self.admission.propose(cmd)
        if not result.get("ok"):
            error = self._refusal(cmd, result)
            if error is not None:
                raise error

    def _refusal(self, cmd: AuthChange, result: dict[str, Any]) -> EtcdError | None:
        """etcd's error for a change the state machine refused (None: etcd calls it done)."""
        state, op, missing = self.gate.state, cmd.op, result.get("error") == "not_found"
        if result.get("op") != "auth":
            return EtcdError(grpc.StatusCode.FAILED_PRECONDITION, f"etcdserver: {result.get('message') or result}")
        if op is AuthChangeOp.ENABLE:
            return errors.ROOT_USER_NOT_EXIST() if ROOT not in state.users else None  # else: on already
        if op is AuthChangeOp.DISABLE:
            return None  # off already
        if op is AuthChangeOp.USER_ADD:
            return errors.USER_EXISTS()
        if op is AuthChangeOp.ROLE_ADD:
            return errors.ROLE_EXISTS()  # (root too: it is built in)
        if op in (AuthChangeOp.ROLE_DELETE, AuthChangeOp.ROLE_GRANT, AuthChangeOp.ROLE_REVOKE):
            if cmd.name == ROOT:
                return errors.INVALID_AUTH_MGMT()
            if missing:
                return errors.ROLE_NOT_FOUND() if cmd.name not in state.roles else errors.PERMISSION_NOT_GRANTED()
            return None  # granted already
        if missing:  # a user op: the user, or the role it names
            if cmd.name not in state.users:
                return errors.USER_NOT_FOUND()
            return errors.ROLE_NOT_GRANTED() if op is AuthChangeOp.USER_REVOKE_ROLE else errors.ROLE_NOT_FOUND()
        user = state.users.get(cmd.name)
        if op is AuthChangeOp.USER_GRANT_ROLE and user is not None and cmd.role in user.roles:
            return None  # granted already
        return errors.INVALID_AUTH_MGMT()  # root losing the root role while auth is on


def _name(name: str, what: str) -> str:
    if not name:
        raise errors.USER_EMPTY() if what == "user" else errors.ROLE_EMPTY()
    why = check_name(name, what)
    if why is not None:
        raise invalid(f"etcdserver: raftkv's names: {why}")
    return name
