"""Users, roles and permissions in the replicated state: who may read or write which keys, and who
may administer the cluster (etcd's model).

Theory of operation
-------------------
A user has a password hash and roles; a role has permissions; a permission grants `read`, `write`
or `readwrite` on one key or on every key under a prefix (the empty prefix: every key), or
`admin` (membership, fault injection, compaction, backups, users and roles). The built-in role
`root` has every permission and cannot be changed; `auth enable` needs a user named `root` and
gives it that role, so that enabling auth can never lock every administrator out.

All of it changes only through `AuthChange` commands in the Raft log, so every replica holds the
same users and roles after the same index, and they survive restarts and snapshots as the keys
do. Nothing here is secret but the token key, which signs the bearer tokens nodes issue
(raftkv/api/auth.py): it is chosen by the node that proposes `auth enable`, so disabling and
enabling auth again voids every token. A password hash is computed by the node that takes the
request (hashing is salted and random, so it cannot run in `apply`); `apply` only stores it.

`revision` counts auth changes. A write made on a user's behalf travels wrapped with the
revision its permission was checked at (commands.AsUser); the state machine refuses it when auth
changed in between, so a permission revoked while a write was in flight cannot let it through
(the node checks again and retries). `password_revision` is the revision of a user's last
password: tokens issued before it are void.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

__all__ = ["ROOT", "Access", "AuthChangeOp", "AuthState", "Permission", "Refusal", "User", "check_name"]

ROOT = "root"  # the user `auth enable` needs, and the role with every permission
MAX_NAME_CHARS = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")


class Access(StrEnum):
    READ = "read"
    WRITE = "write"
    READWRITE = "readwrite"
    ADMIN = "admin"


class AuthChangeOp(StrEnum):
    ENABLE = "enable"
    DISABLE = "disable"
    USER_ADD = "user_add"
    USER_DELETE = "user_delete"
    USER_PASSWD = "user_passwd"
    USER_GRANT_ROLE = "user_grant_role"
    USER_REVOKE_ROLE = "user_revoke_role"
    ROLE_ADD = "role_add"
    ROLE_DELETE = "role_delete"
    ROLE_GRANT = "role_grant"
    ROLE_REVOKE = "role_revoke"


def check_name(name: Any, what: str) -> str | None:
    """Why `name` cannot be a user's or role's name, or None if it can."""
    if type(name) is not str or not _NAME.fullmatch(name) or len(name) > MAX_NAME_CHARS:
        return (f"{what}: must be 1 to {MAX_NAME_CHARS} letters, digits or . _ @ - "
                "(starting with a letter or digit)")
    return None


@dataclass(frozen=True, slots=True)
class Permission:
    """`access` to `key`, or with `prefix` to every key that starts with it. Admin names no key."""

    access: Access
    key: str = ""
    prefix: bool = False

    def grants(self, access: Access) -> bool:
        if self.access is Access.ADMIN or access is Access.ADMIN:
            return self.access is access
        return self.access is Access.READWRITE or self.access is access

    def covers_key(self, key: str) -> bool:
        return key.startswith(self.key) if self.prefix else key == self.key

    def covers_prefix(self, prefix: str) -> bool:
        """Whether every key that starts with `prefix` is covered."""
        return self.prefix and prefix.startswith(self.key)

    def to_json(self) -> dict[str, Any]:
        if self.access is Access.ADMIN:
            return {"access": self.access.value}
        return {"access": self.access.value, "key": self.key, "prefix": self.prefix}


_EVERYTHING = (Permission(Access.ADMIN), Permission(Access.READWRITE, "", prefix=True))


class Refusal(NamedTuple):
    """Why an auth change was not made: `missing` when a user or role it names does not exist."""

    message: str
    missing: bool = False


@dataclass(slots=True)
class User:
    password_hash: str
    password_revision: int
    roles: set[str] = field(default_factory=set)


class AuthState:
    def __init__(self) -> None:
        self.enabled = False
        self.revision = 0
        self.users: dict[str, User] = {}
        self.roles: dict[str, list[Permission]] = {}  # the built-in root role is not stored
        self.token_key = ""  # hex; set by `auth enable`

    # ---- questions -----------------------------------------------------------------------------

    def permissions(self, user: str) -> tuple[Permission, ...]:
        found = self.users.get(user)
        if found is None:
            return ()
        if ROOT in found.roles:
            return _EVERYTHING
        return tuple(p for role in sorted(found.roles) for p in self.roles.get(role, ()))

    def permits(self, user: str, access: Access, *, key: str | None = None, prefix: str | None = None) -> bool:
        """Whether `user` has `access` to `key`, to every key under `prefix`, or (neither) admin."""
        assert (key is None or prefix is None) and (access is Access.ADMIN) == (key is None and prefix is None)
        for p in self.permissions(user):
            if p.grants(access) and (access is Access.ADMIN or (
                    p.covers_key(key) if key is not None else p.covers_prefix(prefix or ""))):
                return True
        return False

    def user_view(self, name: str) -> dict[str, Any]:
        user = self.users[name]
        return {"name": name, "roles": sorted(user.roles)}

    def role_view(self, name: str) -> dict[str, Any]:
        permissions = _EVERYTHING if name == ROOT else self.roles[name]
        return {"name": name, "builtin": name == ROOT, "permissions": [p.to_json() for p in permissions]}

    def role_names(self) -> list[str]:
        return sorted({ROOT, *self.roles})

    # ---- changes (from committed AuthChange commands only) --------------------------------------

    def apply(self, op: AuthChangeOp, name: str, role: str, password_hash: str, permission: Permission | None,
              token_key: str) -> Refusal | None:
        """Carry out one change; None when done, or why it is refused (nothing changed then).
        Every change that is done takes a new auth revision."""
        refusal = self._refusal(op, name, role, permission)
        if refusal is not None:
            return refusal
        self.revision += 1
        if op is AuthChangeOp.ENABLE:
            self.enabled, self.token_key = True, token_key
            self.users[ROOT].roles.add(ROOT)
        elif op is AuthChangeOp.DISABLE:
            self.enabled = False
        elif op is AuthChangeOp.USER_ADD:
            self.users[name] = User(password_hash, self.revision)
        elif op is AuthChangeOp.USER_DELETE:
            del self.users[name]
        elif op is AuthChangeOp.USER_PASSWD:
            self.users[name].password_hash, self.users[name].password_revision = password_hash, self.revision
        elif op is AuthChangeOp.USER_GRANT_ROLE:
            self.users[name].roles.add(role)
        elif op is AuthChangeOp.USER_REVOKE_ROLE:
            self.users[name].roles.discard(role)
        elif op is AuthChangeOp.ROLE_ADD:
            self.roles[name] = []
        elif op is AuthChangeOp.ROLE_DELETE:
            del self.roles[name]
            for user in self.users.values():
                user.roles.discard(name)
        elif op is AuthChangeOp.ROLE_GRANT:
            assert permission is not None
            self.roles[name].append(permission)
        else:
            assert op is AuthChangeOp.ROLE_REVOKE and permission is not None
            self.roles[name] = [p for p in self.roles[name] if p != permission]
        return None

    def _refusal(self, op: AuthChangeOp, name: str, role: str, permission: Permission | None) -> Refusal | None:
        users, roles = self.users, self.roles
        if op is AuthChangeOp.ENABLE:
            if ROOT not in users:
                return Refusal("auth enable needs a user named root first (raftkv user add root)")
            return Refusal("auth is already enabled") if self.enabled else None
        if op is AuthChangeOp.DISABLE:
            return None if self.enabled else Refusal("auth is already disabled")
        if op is AuthChangeOp.USER_ADD:
            return Refusal(f"user {name} exists already") if name in users else None
        if op in (AuthChangeOp.ROLE_ADD, AuthChangeOp.ROLE_DELETE, AuthChangeOp.ROLE_GRANT, AuthChangeOp.ROLE_REVOKE):
            return self._role_refusal(op, name, permission)
        if name not in users:
            return Refusal(f"user {name} does not exist", missing=True)
        if self.enabled and name == ROOT and (op is AuthChangeOp.USER_DELETE or (
                op is AuthChangeOp.USER_REVOKE_ROLE and role == ROOT)):
            return Refusal("root cannot lose the root role while auth is enabled (disable auth first)")
        if op is AuthChangeOp.USER_GRANT_ROLE:
            if role != ROOT and role not in roles:
                return Refusal(f"role {role} does not exist", missing=True)
            return Refusal(f"user {name} has role {role} already") if role in users[name].roles else None
        if op is AuthChangeOp.USER_REVOKE_ROLE and role not in users[name].roles:
            return Refusal(f"user {name} does not have role {role}", missing=True)
        return None

    def _role_refusal(self, op: AuthChangeOp, name: str, permission: Permission | None) -> Refusal | None:
        roles = self.roles
        if name == ROOT:
            return Refusal("the root role is built in and cannot be changed")
        if op is AuthChangeOp.ROLE_ADD:
            return Refusal(f"role {name} exists already") if name in roles else None
        if name not in roles:
            return Refusal(f"role {name} does not exist", missing=True)
        if op is AuthChangeOp.ROLE_GRANT and permission in roles[name]:
            return Refusal(f"role {name} has that permission already")
        if op is AuthChangeOp.ROLE_REVOKE and permission not in roles[name]:
            return Refusal(f"role {name} has no such permission", missing=True)
        return None

    # ---- snapshots -----------------------------------------------------------------------------

    def rows(self) -> list[Any]:
        """Canonical plain data (sorted), for the state machine's snapshot."""
        users = [[name, u.password_hash, u.password_revision, sorted(u.roles)]
                 for name, u in sorted(self.users.items())]
        roles = [[name, [[p.access.value, p.key, p.prefix] for p in perms]]
                 for name, perms in sorted(self.roles.items())]
        return [self.enabled, self.revision, self.token_key, users, roles]

    @classmethod
    def from_rows(cls, rows: list[Any]) -> AuthState:
        state = cls()
        state.enabled, state.revision, state.token_key, users, roles = rows
        if type(state.enabled) is not bool or type(state.revision) is not int or type(state.token_key) is not str:
            raise ValueError("malformed auth state")
        state.users = {name: User(password_hash, revision, set(user_roles))
                       for name, password_hash, revision, user_roles in users}
        state.roles = {name: [Permission(Access(access), key, prefix) for access, key, prefix in perms]
                       for name, perms in roles}
        return state
