"""Users, roles and permissions as replicated state: the state machine alone, no processes."""

from __future__ import annotations

import msgpack
import pytest

from raftkv.kv import (
    AUTH_CHANGED,
    NOT_FOUND,
    REFUSED,
    REQUEST_KEY_REUSED,
    ROOT,
    Access,
    AsUser,
    AuthChange,
    AuthChangeOp,
    InvalidCommand,
    KVStateMachine,
    Permission,
    Put,
    decode,
    encode,
)

Op = AuthChangeOp


class Machine:
    """A state machine fed commands in log order, as a replica is."""

    def __init__(self) -> None:
        self.sm = KVStateMachine()
        self.index = 0

    def apply(self, cmd: object) -> dict:
        self.index += 1
        return self.sm.apply(self.index, encode(cmd))  # type: ignore[arg-type]

    def change(self, op: AuthChangeOp, name: str = "", **fields: object) -> dict:
        """An auth change as the API proposes it: as root once auth is on."""
        change = AuthChange(op, name, **fields)  # type: ignore[arg-type]
        return self.apply(AsUser(ROOT, self.sm.auth.revision, change) if self.sm.auth.enabled else change)


def with_users() -> Machine:
    m = Machine()
    assert m.change(Op.USER_ADD, ROOT, password_hash="h-root")["ok"]
    assert m.change(Op.USER_ADD, "alice", password_hash="h-alice")["ok"]
    assert m.change(Op.ROLE_ADD, "app")["ok"]
    assert m.change(Op.ROLE_GRANT, "app", permission=Permission(Access.READWRITE, "app/", prefix=True))["ok"]
    assert m.change(Op.ROLE_GRANT, "app", permission=Permission(Access.READ, "config"))["ok"]
    assert m.change(Op.USER_GRANT_ROLE, "alice", role="app")["ok"]
    return m


def test_auth_cannot_be_enabled_without_a_root_user_and_enabling_makes_root_an_administrator() -> None:
    m = Machine()
    refused = m.change(Op.ENABLE, token_key="ab" * 32)
    assert refused["error"] == REFUSED and "root" in refused["message"]
    assert not m.sm.auth.enabled and m.sm.auth.revision == 0  # a refusal takes no revision
    m.change(Op.USER_ADD, ROOT, password_hash="h")
    assert m.change(Op.ENABLE, token_key="ab" * 32)["ok"]
    auth = m.sm.auth
    assert auth.enabled and auth.token_key == "ab" * 32
    assert auth.permits(ROOT, Access.ADMIN) and auth.permits(ROOT, Access.WRITE, key="anything")
    assert m.change(Op.USER_DELETE, ROOT)["error"] == REFUSED  # would lock every administrator out
    assert m.change(Op.USER_REVOKE_ROLE, ROOT, role=ROOT)["error"] == REFUSED
    assert m.change(Op.ROLE_GRANT, ROOT, permission=Permission(Access.READ, "x"))["error"] == REFUSED


def test_while_auth_is_on_a_client_command_that_nobody_checked_is_refused_untouched() -> None:
    """A node that had not learnt auth was on let it through unwrapped: the state machine, which
    knows, refuses it, and the node checks it again."""
    m = with_users()
    m.change(Op.ENABLE, token_key="ab" * 32)
    before = m.sm.auth.revision
    for unchecked in (Put("app/x", 1), AuthChange(Op.USER_PASSWD, ROOT, password_hash="mine now")):
        assert m.apply(unchecked)["error"] == AUTH_CHANGED
    assert m.sm.get("app/x") is None and m.sm.auth.users[ROOT].password_hash == "h-root"
    assert m.sm.auth.revision == before


def test_permissions_cover_keys_and_prefixes_as_granted_and_no_more() -> None:
    auth = with_users().sm.auth
    assert auth.permits("alice", Access.WRITE, key="app/a")
    assert auth.permits("alice", Access.READ, prefix="app/")
    assert auth.permits("alice", Access.READ, prefix="app/sub/")
    assert not auth.permits("alice", Access.READ, prefix="ap")  # wider than granted
    assert not auth.permits("alice", Access.READ, prefix="")
    assert auth.permits("alice", Access.READ, key="config")
    assert not auth.permits("alice", Access.WRITE, key="config")  # read only
    assert not auth.permits("alice", Access.READ, key="config2")  # an exact key is not a prefix
    assert not auth.permits("alice", Access.ADMIN)
    assert not auth.permits("nobody", Access.READ, key="app/a")


def test_changes_that_name_missing_users_or_roles_are_not_found_and_change_nothing() -> None:
    m = with_users()
    before = m.sm.auth.revision
    assert m.change(Op.USER_DELETE, "bob")["error"] == NOT_FOUND
    assert m.change(Op.USER_GRANT_ROLE, "alice", role="ghost")["error"] == NOT_FOUND
    assert m.change(Op.ROLE_REVOKE, "app", permission=Permission(Access.WRITE, "config"))["error"] == NOT_FOUND
    assert m.change(Op.USER_ADD, "alice", password_hash="x")["error"] == REFUSED
    assert m.sm.auth.revision == before


def test_deleting_a_role_takes_it_from_its_users() -> None:
    m = with_users()
    assert m.change(Op.ROLE_DELETE, "app")["ok"]
    assert m.sm.auth.users["alice"].roles == set()
    assert not m.sm.auth.permits("alice", Access.READ, key="config")


def test_a_write_checked_at_an_older_auth_revision_is_refused_and_changes_nothing() -> None:
    m = with_users()
    m.change(Op.ENABLE, token_key="cd" * 32)
    checked_at = m.sm.auth.revision
    m.change(Op.ROLE_REVOKE, "app", permission=Permission(Access.READWRITE, "app/", prefix=True))
    result = m.apply(AsUser("alice", checked_at, Put("app/x", 1)))
    assert result["error"] == AUTH_CHANGED and result["authRevision"] == checked_at + 1
    assert m.sm.get("app/x") is None and m.sm.revision == 0
    assert m.apply(AsUser("alice", m.sm.auth.revision, Put("app/x", 1)))["ok"]


def test_request_keys_are_scoped_per_user() -> None:
    m = with_users()
    m.change(Op.USER_ADD, "bob", password_hash="h-bob")
    revision = m.sm.auth.revision
    first = m.apply(AsUser("alice", revision, Put("app/a", 1, request_id="k1")))
    assert first["ok"]
    # The same key from another user is another request: it is done, not refused or replayed.
    other = m.apply(AsUser("bob", revision, Put("app/b", 2, request_id="k1")))
    assert other["ok"] and "replayed" not in other
    # The same user retrying gets the first answer back; reusing it for another write is refused.
    assert m.apply(AsUser("alice", revision, Put("app/a", 1, request_id="k1")))["replayed"]
    reused = m.apply(AsUser("alice", revision, Put("app/c", 3, request_id="k1")))
    assert reused["error"] == REQUEST_KEY_REUSED and reused["request_id"] == "k1"
    assert m.sm.get("app/c") is None


def test_auth_state_and_scoped_request_keys_survive_a_snapshot_byte_for_byte() -> None:
    m = with_users()
    m.change(Op.ENABLE, token_key="ef" * 32)
    m.apply(AsUser("alice", m.sm.auth.revision, Put("app/a", 1, request_id="k1")))
    copy = KVStateMachine()
    copy.restore(m.sm.snapshot())
    assert copy == m.sm
    assert copy.auth.enabled and copy.auth.permits("alice", Access.WRITE, key="app/z")
    m2 = Machine()
    m2.sm, m2.index = copy, m.index
    assert m2.apply(AsUser("alice", copy.auth.revision, Put("app/a", 1, request_id="k1")))["replayed"]


def test_a_snapshot_from_before_auth_restores_with_auth_off() -> None:
    sm = KVStateMachine()
    sm.apply(1, encode(Put("a", 1)))
    _format, *fields = msgpack.unpackb(sm.snapshot())
    older = msgpack.packb([4, *fields[:-1]])  # format 4: the same fields, without the auth state
    restored = KVStateMachine()
    restored.restore(older)
    assert restored.get("a") is not None and not restored.auth.enabled and restored.auth.users == {}


@pytest.mark.parametrize("cmd", [
    AuthChange(Op.USER_ADD, "has space", password_hash="h"),
    AuthChange(Op.USER_ADD, "", password_hash="h"),
    AuthChange(Op.USER_ADD, "alice", password_hash=""),
    AuthChange(Op.ROLE_GRANT, "app"),  # no permission
    AuthChange(Op.ROLE_GRANT, "app", permission=Permission(Access.ADMIN, "k")),  # admin names no key
    AuthChange(Op.ROLE_GRANT, "app", permission=Permission(Access.READ, "")),  # an empty exact key
    AsUser("alice", 1, AsUser("alice", 1, Put("k", 1))),
])
def test_malformed_auth_commands_never_decode(cmd: object) -> None:
    with pytest.raises(InvalidCommand):
        decode(encode(cmd))  # type: ignore[arg-type]


def test_auth_commands_travel_the_log_unchanged() -> None:
    for cmd in (AuthChange(Op.ROLE_GRANT, "app", permission=Permission(Access.WRITE, "p/", prefix=True)),
                AuthChange(Op.ENABLE, token_key="01" * 32, request_id="r"),
                AsUser("alice", 7, Put("k", {"v": [1]}, request_id="r2"))):
        assert decode(encode(cmd)) == cmd
