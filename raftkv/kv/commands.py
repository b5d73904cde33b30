"""Commands: the client writes that travel inside Raft log entries to the key-value state machine.

Theory of operation
-------------------
A write is one command: `Put`, `Delete` or `Txn` (etcd-style: compares, then the `success` or the
`failure` ops), never changed once built. The classes are slotted dataclasses but not frozen: every
replica decodes one per write as it applies it, and a frozen dataclass takes four times as long to
build (its `__init__` sets each field through `object.__setattr__`; bench/PROFILE.md). The HTTP
API builds a command from JSON (`put_from_json`, `delete_from_json`, `txn_from_json`), which raise
`InvalidCommand` with a message a person can act on; the leader `encode`s it into an entry and
every replica `decode`s those same bytes, so only decoding has to be deterministic, never the
proposer's objects.

Wire form: a msgpack array `[tag, field, ...]` of fixed length per tag, no field names. "prev_value
not given" and "prev_value is null" are different requests: in memory the first is the sentinel
`UNSET`; on the wire it is nil, while a given value travels boxed in a one-element array ([nil]).

`decode` runs the same `validate` as the JSON parsers, so a decoded command is always valid and the
state machine answers a bad entry (a bug, a newer node) with an error result instead of raising
halfway through it. `encode` trusts its caller, to keep the leader's hot path short.

Values are JSON values (null, bool, finite numbers within 64 bits, strings, lists, objects with
string keys): the API hands them back as JSON, and msgpack must carry them unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from raftkv.byte_text import canonical, packb, unpackb
from raftkv.kv.auth import Access, AuthChangeOp, Permission, check_name

MAX_KEY_CHARS = 4096
MAX_REQUEST_ID_CHARS = 256
MAX_TXN_OPS = 128  # per list (compare, success, failure); etcd's default --max-txn-ops
MAX_VALUE_DEPTH = 64  # nesting of lists/objects inside one value
DEFAULT_RANGE_LIMIT = 1000
MAX_RANGE_LIMIT = 10_000
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what a msgpack integer can hold


class InvalidCommand(ValueError):
    """A command or its JSON is malformed; str(exc) is a message for the person who sent it."""


class _Unset(Enum):
    UNSET = "UNSET"


UNSET = _Unset.UNSET  # "prev_value was not given" (None would mean "must currently be null")


class Target(StrEnum):
    VALUE = "value"
    VERSION = "version"
    CREATE_REVISION = "create_revision"
    MOD_REVISION = "mod_revision"
    LEASE = "lease"  # the lease the key is attached to (0: none, or an absent key)
    EXISTS = "exists"


class CompareOp(StrEnum):
    EQ = "=="
    NE = "!="
    GT = ">"
    LT = "<"


@dataclass(slots=True)
class Put:
    """Write key=value if every given prev_* holds (compare-and-set). prev_revision is matched against
    mod_revision (0 for an absent key); prev_exist=False is create-only, True update-only."""

    key: str
    value: Any
    prev_value: Any = UNSET
    prev_revision: int | None = None
    prev_exist: bool | None = None
    request_id: str | None = None
    lease: int = 0  # attach the key to this lease (0: none); it is deleted when the lease ends


@dataclass(slots=True)
class Delete:
    key: str
    prev_revision: int | None = None
    request_id: str | None = None


@dataclass(slots=True)
class Compare:
    """A txn guard. An absent key has version/revisions 0 and fails every `value` compare (as etcd)."""

    key: str
    target: Target
    op: CompareOp
    value: Any


@dataclass(slots=True)
class TxnPut:
    key: str
    value: Any
    lease: int = 0  # as Put.lease; a lease that does not exist fails the whole txn, nothing done


@dataclass(slots=True)
class TxnDelete:
    key: str


@dataclass(slots=True)
class TxnDeleteRange:
    """Delete every key from `start` (inclusive) to `end` (exclusive; None: every key from start)."""

    start: str
    end: str | None = None


@dataclass(slots=True)
class TxnGet:
    key: str


@dataclass(slots=True)
class TxnRange:
    """Keys starting with `prefix`, and from `start` (inclusive) to `end` (exclusive; None: no bound);
    at most `limit` of them. None is no limit: etcd's txn answers a range with its count and sorts it
    whole, so its ranges are read whole (the HTTP API's are bounded, MAX_RANGE_LIMIT)."""

    prefix: str = ""
    limit: int | None = DEFAULT_RANGE_LIMIT
    start: str = ""
    end: str | None = None


TxnOp = TxnPut | TxnDelete | TxnGet | TxnRange | TxnDeleteRange


@dataclass(slots=True)
class Txn:
    """If every compare holds, run `success` in order, else `failure`; atomic, one revision.

    typed_compares: '>' or '<' between a number and a string (the stored value and the compare's)
    makes the whole txn invalid, as a client mistake. Txns logged before that rule existed carry
    False (another wire tag), so replaying an old log still takes their failure branch."""

    compare: tuple[Compare, ...] = ()
    success: tuple[TxnOp, ...] = ()
    failure: tuple[TxnOp, ...] = ()
    request_id: str | None = None
    typed_compares: bool = True


@dataclass(slots=True)
class Compact:
    """Forget history at or below `revision` (reads, ranges and watches there are then refused)."""

    revision: int
    request_id: str | None = None


@dataclass(slots=True)
class LeaseGrant:
    """A lease of `ttl_s` seconds under `lease_id` (chosen by the proposer: random, never reused)."""

    lease_id: int
    ttl_s: int
    request_id: str | None = None


@dataclass(slots=True)
class LeaseRevoke:
    """End a lease: its keys are deleted in one revision. `expired`: the leader found it expired."""

    lease_id: int
    expired: bool = False
    request_id: str | None = None


@dataclass(slots=True)
class AuthChange:
    """One change to users, roles or the auth switch (kv/auth.py says what each op needs)."""

    op: AuthChangeOp
    name: str = ""  # the user's or role's name
    role: str = ""  # user_grant_role / user_revoke_role: the role
    password_hash: str = ""  # user_add / user_passwd
    permission: Permission | None = None  # role_grant / role_revoke
    token_key: str = ""  # enable: the key that signs bearer tokens (hex)
    request_id: str | None = None


@dataclass(slots=True)
class AsUser:
    """`command`, on behalf of `user`, whose permission for it was checked at auth revision
    `auth_revision`: the state machine refuses it if auth changed since, and scopes its request_id
    to the user (one user's Idempotency-Key can never replay or block another's)."""

    user: str
    auth_revision: int
    command: Command

    @property
    def request_id(self) -> str | None:
        return self.command.request_id


@dataclass(slots=True)
class PublishMember:
    """New details (name, addresses) for a member in the member table: its node publishes them, as
    etcd's members publish theirs, for a member added by its peer address alone (etcd's MemberAdd),
    which the table lists unstarted until its node starts; or an operator moves a member's peer
    address (etcd's MemberUpdate). Applied only while the table still holds `expected` for
    `member_id`, so of two changes made from the same record only the first applies, and a removed
    member stays out. The details are the node layer's, opaque here (as a membership change's
    context)."""

    member_id: str
    expected: bytes
    details: bytes
    request_id: str | None = None


@dataclass(slots=True)
class FoundStore:
    """A new cluster's last founding entry (node/membership.py): its empty store moves to revision
    1, where etcd's starts, so that no key is ever created at revision 1. etcd's election recipe
    (`etcdctl elect`) waits for the keys created before its own by asking for those created at or
    below its key's create revision - 1, and a bound of 0 means no bound: a first key at revision
    1 would wait for itself forever. A store founded before this entry existed has none in its
    log, and keeps its numbering on every replay."""

    request_id: None = None  # no client sends it


Command = Put | Delete | Txn | Compact | LeaseGrant | LeaseRevoke | AuthChange | AsUser | PublishMember | FoundStore

# ---- wire codec --------------------------------------------------------------------------------

_PUT, _DELETE, _TXN_UNTYPED, _TXN, _COMPACT, _LEASE_GRANT, _LEASE_REVOKE, _AUTH, _AS_USER = 1, 2, 3, 4, 5, 6, 7, 8, 9
_PUBLISH_MEMBER, _FOUND_STORE = 10, 11
MAX_MEMBER_DETAILS_BYTES = 4096  # a name and two addresses
MAX_LEASE_TTL_S = 10 * 365 * 24 * 3600
_MAX_LEASE_ID = 2**63 - 1
# An op is [tag, *fields in order]; trailing fields still at their defaults are left out, so ops
# logged before a field was added (TxnPut.lease, TxnRange.start/end) decode as they were written.
_OP_TAGS: dict[type, int] = {TxnPut: 1, TxnDelete: 2, TxnGet: 3, TxnRange: 4, TxnDeleteRange: 5}


def _field_counts(cls: type) -> tuple[int, int]:
    """How many fields an op of `cls` must carry, and how many it may."""
    fields = dataclasses.fields(cls)
    return sum(f.default is dataclasses.MISSING for f in fields), len(fields)


_OP_CLASSES = {tag: (cls, *_field_counts(cls)) for cls, tag in _OP_TAGS.items()}


def _encode_op(op: TxnOp) -> list[Any]:
    fields = dataclasses.fields(op)
    values = [getattr(op, f.name) for f in fields]
    while len(values) > _OP_CLASSES[_OP_TAGS[type(op)]][1] and values[-1] == fields[len(values) - 1].default:
        values.pop()
    return [_OP_TAGS[type(op)], *values]


def _wire(cmd: Command) -> list[Any]:
    """The command as the msgpack array of its log entry; the request_id is always last."""
    if type(cmd) is Put:
        boxed = None if cmd.prev_value is UNSET else [cmd.prev_value]
        leased = [cmd.lease] if cmd.lease else []  # a put with no lease keeps the older, shorter form
        return [_PUT, cmd.key, cmd.value, boxed, cmd.prev_revision, cmd.prev_exist, *leased, cmd.request_id]
    if type(cmd) is Compact:
        return [_COMPACT, cmd.revision, cmd.request_id]
    if type(cmd) is LeaseGrant:
        return [_LEASE_GRANT, cmd.lease_id, cmd.ttl_s, cmd.request_id]
    if type(cmd) is LeaseRevoke:
        return [_LEASE_REVOKE, cmd.lease_id, cmd.expired, cmd.request_id]
    if type(cmd) is Delete:
        return [_DELETE, cmd.key, cmd.prev_revision, cmd.request_id]
    if type(cmd) is AuthChange:
        p = cmd.permission
        permission = None if p is None else [p.access.value, p.key, p.prefix]
        return [_AUTH, cmd.op.value, cmd.name, cmd.role, cmd.password_hash, permission, cmd.token_key, cmd.request_id]
    if type(cmd) is AsUser:
        return [_AS_USER, cmd.user, cmd.auth_revision, _wire(cmd.command), cmd.request_id]
    if type(cmd) is PublishMember:
        return [_PUBLISH_MEMBER, cmd.member_id, cmd.expected, cmd.details, cmd.request_id]
    if type(cmd) is FoundStore:
        return [_FOUND_STORE, cmd.request_id]
    if type(cmd) is Txn:
        compare = [[c.key, c.target.value, c.op.value, c.value] for c in cmd.compare]
        return [_TXN if cmd.typed_compares else _TXN_UNTYPED, compare, [_encode_op(o) for o in cmd.success],
                [_encode_op(o) for o in cmd.failure], cmd.request_id]
    raise TypeError(f"not a command: {cmd!r}")


def encode(cmd: Command) -> bytes:
    """The bytes of a log entry for `cmd`. Does not validate: build commands with *_from_json."""
    return packb(_wire(cmd))


def fingerprint(cmd: Command) -> bytes:
    """What makes two commands the same request, whatever their request_id: operation, keys and
    body. JSON objects compare by content, not key order (a client that re-serialises its retry
    must still be recognised); 1 and 1.0 differ, as their JSON texts do. A command on a user's
    behalf is the same request at any auth revision."""
    if type(cmd) is AsUser:
        cmd = cmd.command
    text = json.dumps(_wire(cmd)[:-1], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def target(cmd: Command) -> tuple[str, str | None]:
    """The operation and the key it writes ("put", "a"); other commands name no single key."""
    if type(cmd) is Put:
        return "put", cmd.key
    if type(cmd) is Delete:
        return "delete", cmd.key
    if type(cmd) is AsUser:
        return target(cmd.command)
    return _OPERATION_NAMES[type(cmd)], None


_OPERATION_NAMES: dict[type, str] = {Txn: "txn", Compact: "compact", LeaseGrant: "lease_grant",
                                     LeaseRevoke: "lease_revoke", AuthChange: "auth",
                                     PublishMember: "publish_member", FoundStore: "found_store"}


def _decode_op(o: Any, where: str) -> TxnOp:
    ok = type(o) is list and o and type(o[0]) is int  # an unhashable tag must not raise TypeError
    cls, least, most = _OP_CLASSES.get(o[0], (None, 0, 0)) if ok else (None, 0, 0)
    if cls is None or not least <= len(o) - 1 <= most:
        raise InvalidCommand(f"{where}: malformed op")
    return cls(*o[1:])


def _decode_compare(c: Any, where: str) -> Compare:
    if type(c) is not list or len(c) != 4:
        raise InvalidCommand(f"{where}: malformed compare")
    return Compare(c[0], _enum(Target, c[1], f"{where}.target"), _enum(CompareOp, c[2], f"{where}.op"), c[3])


def decode(data: bytes) -> Command:
    """The command in a log entry's bytes; raises InvalidCommand unless it is a valid command."""
    try:
        t = unpackb(data)
    except Exception as exc:  # any parse failure of untrusted bytes is just "invalid"
        raise InvalidCommand(f"undecodable command: {type(exc).__name__}: {exc}") from None
    cmd = _from_wire(t)
    validate(cmd)
    return cmd


def _from_wire(t: Any) -> Command:
    if type(t) is not list or not t or type(t[0]) is not int:  # (True == 1, so check the type)
        raise InvalidCommand("undecodable command: not a tagged array")
    tag, n = t[0], len(t)
    cmd: Command
    if tag == _PUT and n in (7, 8):
        boxed = t[3]
        if boxed is not None and (type(boxed) is not list or len(boxed) != 1):
            raise InvalidCommand("undecodable command: malformed prev_value box")
        cmd = Put(t[1], t[2], UNSET if boxed is None else boxed[0], t[4], t[5], t[-1], t[6] if n == 8 else 0)
    elif tag == _COMPACT and n == 3:
        cmd = Compact(t[1], t[2])
    elif tag == _LEASE_GRANT and n == 4:
        cmd = LeaseGrant(t[1], t[2], t[3])
    elif tag == _LEASE_REVOKE and n == 4:
        cmd = LeaseRevoke(t[1], t[2], t[3])
    elif tag == _DELETE and n == 4:
        cmd = Delete(t[1], t[2], t[3])
    elif tag == _AUTH and n == 8:
        p = t[5]
        if p is not None and (type(p) is not list or len(p) != 3):
            raise InvalidCommand("undecodable command: malformed permission")
        permission = None if p is None else Permission(_enum(Access, p[0], "permission.access"), p[1], p[2])
        cmd = AuthChange(_enum(AuthChangeOp, t[1], "op"), t[2], t[3], t[4], permission, t[6], t[7])
    elif tag == _AS_USER and n == 5:
        cmd = AsUser(t[1], t[2], _from_wire(t[3]))
    elif tag == _PUBLISH_MEMBER and n == 5:
        cmd = PublishMember(t[1], t[2], t[3], t[4])
    elif tag == _FOUND_STORE and n == 2:
        cmd = FoundStore(t[1])
    elif tag in (_TXN, _TXN_UNTYPED) and n == 5:
        if any(type(p) is not list for p in t[1:4]):
            raise InvalidCommand("undecodable command: txn lists are not arrays")
        cmd = Txn(tuple(_decode_compare(c, f"compare[{i}]") for i, c in enumerate(t[1])),
                  tuple(_decode_op(o, f"success[{i}]") for i, o in enumerate(t[2])),
                  tuple(_decode_op(o, f"failure[{i}]") for i, o in enumerate(t[3])), t[4], tag == _TXN)
    else:
        raise InvalidCommand(f"undecodable command: unknown tag {tag!r} with {n} fields")
    return cmd


# ---- validation --------------------------------------------------------------------------------


def _enum(cls: type[StrEnum], v: Any, where: str) -> Any:
    try:
        return cls(v)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in cls)
        raise InvalidCommand(f"{where}: {v!r} is not one of {choices}") from None


def _check_str(s: Any, where: str, *, allow_empty: bool = False, max_chars: int = MAX_KEY_CHARS) -> None:
    if type(s) is not str:
        raise InvalidCommand(f"{where}: must be a string, not {_json_type(s)}")
    if not (s or allow_empty) or len(s) > max_chars:
        raise InvalidCommand(f"{where}: must not be empty" if not s else f"{where}: longer than {max_chars} chars")
    _check_utf8(s, where)


def _check_utf8(s: str, where: str) -> None:
    # json.loads accepts any lone surrogate ("\ud800"); only a canonical escaped byte names bytes.
    why = canonical(s)
    if why is not None:
        raise InvalidCommand(f"{where}: {why}")


def check_value(v: Any, where: str = "value", depth: int = 0) -> None:
    """Raise InvalidCommand unless v is a JSON value that msgpack carries unchanged."""
    t = type(v)
    if t is str:
        _check_utf8(v, where)
    elif t is int and not _INT_MIN <= v <= _INT_MAX:
        raise InvalidCommand(f"{where}: integer out of the 64-bit range")
    elif t is float and not math.isfinite(v):
        raise InvalidCommand(f"{where}: numbers must be finite (no NaN or Infinity)")
    elif t is list or t is dict:
        if depth >= MAX_VALUE_DEPTH:
            raise InvalidCommand(f"{where}: nested deeper than {MAX_VALUE_DEPTH} levels")
        for k, item in enumerate(v) if t is list else v.items():
            if type(k) is not str and t is dict:
                raise InvalidCommand(f"{where}: object keys must be strings")
            check_value(item, f"{where}[{k}]" if t is list else f"{where}.{k}", depth + 1)
    elif t not in (int, float, bool) and v is not None:
        raise InvalidCommand(f"{where}: {t.__name__} is not a JSON value")


def _check_lease_id(v: Any, where: str, *, allow_zero: bool = False) -> None:
    if type(v) is not int or not (0 if allow_zero else 1) <= v <= _MAX_LEASE_ID:
        raise InvalidCommand(f"{where}: must be a lease id, an integer from 1 to {_MAX_LEASE_ID}")


def _check_revision(v: Any, where: str, minimum: int) -> None:
    if type(v) is not int or not minimum <= v <= _INT_MAX:
        raise InvalidCommand(f"{where}: must be an integer >= {minimum}, not {v!r}")


def _check_op(op: Any, where: str) -> None:
    t = type(op)
    if t is TxnRange:
        _check_str(op.prefix, f"{where}.prefix", allow_empty=True)
        if op.limit is not None and (type(op.limit) is not int or not 1 <= op.limit <= MAX_RANGE_LIMIT):
            raise InvalidCommand(f"{where}.limit: must be an integer from 1 to {MAX_RANGE_LIMIT}")
        _check_bounds(op.start, op.end, where)
    elif t is TxnDeleteRange:
        _check_bounds(op.start, op.end, where)
    elif t in (TxnPut, TxnDelete, TxnGet):
        _check_str(op.key, f"{where}.key")
        if t is TxnPut:
            check_value(op.value, f"{where}.value")
            _check_lease_id(op.lease, f"{where}.lease", allow_zero=True)
    else:
        raise InvalidCommand(f"{where}: not a txn op")


def _check_bounds(start: Any, end: Any, where: str) -> None:
    _check_str(start, f"{where}.start", allow_empty=True)
    if end is not None:
        _check_str(end, f"{where}.end")


def _check_compare(c: Any, where: str) -> None:
    if type(c) is not Compare or type(c.target) is not Target or type(c.op) is not CompareOp:
        raise InvalidCommand(f"{where}: not a compare")
    _check_str(c.key, f"{where}.key")
    if c.target is Target.VALUE:
        check_value(c.value, f"{where}.value")
        if c.op in (CompareOp.GT, CompareOp.LT) and (type(c.value) not in (int, float, str)):
            raise InvalidCommand(f"{where}: '{c.op}' compares numbers or strings, not {_json_type(c.value)}")
    elif c.target is Target.EXISTS:
        if type(c.value) is not bool or c.op not in (CompareOp.EQ, CompareOp.NE):
            raise InvalidCommand(f"{where}: 'exists' takes op '==' or '!=' and a true/false value")
    else:
        _check_revision(c.value, f"{where}.value", 0)


def validate(cmd: Command) -> None:
    """Raise InvalidCommand with a human message unless `cmd` is well-formed."""
    t = type(cmd)
    if t is Put:
        _check_str(cmd.key, "key")
        check_value(cmd.value)
        if cmd.prev_value is not UNSET:
            check_value(cmd.prev_value, "prev_value")
        if cmd.prev_revision is not None:
            _check_revision(cmd.prev_revision, "prev_revision", 0)
        if cmd.prev_exist is not None and type(cmd.prev_exist) is not bool:
            raise InvalidCommand("prev_exist: must be true or false")
        if cmd.prev_exist is False and (cmd.prev_value is not UNSET or (cmd.prev_revision or 0) > 0):
            raise InvalidCommand("prev_exist=false (create-only) contradicts prev_value/prev_revision")
        _check_lease_id(cmd.lease, "lease", allow_zero=True)
    elif t is Delete:
        _check_str(cmd.key, "key")
        if cmd.prev_revision is not None:
            _check_revision(cmd.prev_revision, "prev_revision", 1)
    elif t is Compact:
        _check_revision(cmd.revision, "revision", 1)
    elif t is LeaseGrant:
        _check_lease_id(cmd.lease_id, "lease_id")
        if type(cmd.ttl_s) is not int or not 1 <= cmd.ttl_s <= MAX_LEASE_TTL_S:
            raise InvalidCommand(f"ttl: must be an integer number of seconds from 1 to {MAX_LEASE_TTL_S}")
    elif t is LeaseRevoke:
        _check_lease_id(cmd.lease_id, "lease_id")
        if type(cmd.expired) is not bool:
            raise InvalidCommand("expired: must be true or false")
    elif t is AuthChange:
        _check_auth_change(cmd)
    elif t is AsUser:
        if (why := check_name(cmd.user, "user")) is not None:
            raise InvalidCommand(why)
        _check_revision(cmd.auth_revision, "auth_revision", 0)
        if type(cmd.command) is AsUser or type(cmd.command) is FoundStore:
            raise InvalidCommand(f"a command on a user's behalf cannot wrap {type(cmd.command).__name__}")
        validate(cmd.command)
        return
    elif t is PublishMember:
        _check_str(cmd.member_id, "member_id", max_chars=MAX_REQUEST_ID_CHARS)
        for name in ("expected", "details"):
            if type(getattr(cmd, name)) is not bytes or len(getattr(cmd, name)) > MAX_MEMBER_DETAILS_BYTES:
                raise InvalidCommand(f"{name}: must be at most {MAX_MEMBER_DETAILS_BYTES} bytes")
    elif t is FoundStore:
        if cmd.request_id is not None:
            raise InvalidCommand("request_id: a founding entry has none")
    elif t is Txn:
        if type(cmd.typed_compares) is not bool:
            raise InvalidCommand("typed_compares: must be true or false")
        for name in ("compare", "success", "failure"):
            items = getattr(cmd, name)
            if type(items) is not tuple or len(items) > MAX_TXN_OPS:
                raise InvalidCommand(f"{name}: must be a tuple of at most {MAX_TXN_OPS} items")
            check = _check_compare if name == "compare" else _check_op
            for i, item in enumerate(items):
                check(item, f"{name}[{i}]")
    else:
        raise InvalidCommand(f"not a command: {type(cmd).__name__}")
    if cmd.request_id is not None:
        _check_str(cmd.request_id, "request_id", max_chars=MAX_REQUEST_ID_CHARS)


_NAMED_OPS = {AuthChangeOp.USER_ADD, AuthChangeOp.USER_DELETE, AuthChangeOp.USER_PASSWD, AuthChangeOp.USER_GRANT_ROLE,
              AuthChangeOp.USER_REVOKE_ROLE, AuthChangeOp.ROLE_ADD, AuthChangeOp.ROLE_DELETE, AuthChangeOp.ROLE_GRANT,
              AuthChangeOp.ROLE_REVOKE}


def _check_auth_change(cmd: AuthChange) -> None:
    if type(cmd.op) is not AuthChangeOp:
        raise InvalidCommand("op: not an auth change")
    if cmd.op in _NAMED_OPS and (why := check_name(cmd.name, "role" if cmd.op.value.startswith("role") else "user")):
        raise InvalidCommand(why)
    grants_role = cmd.op in (AuthChangeOp.USER_GRANT_ROLE, AuthChangeOp.USER_REVOKE_ROLE)
    if grants_role and (why := check_name(cmd.role, "role")):
        raise InvalidCommand(why)
    if cmd.op in (AuthChangeOp.USER_ADD, AuthChangeOp.USER_PASSWD):
        _check_str(cmd.password_hash, "password_hash", max_chars=MAX_REQUEST_ID_CHARS)
    if cmd.op is AuthChangeOp.ENABLE:
        _check_str(cmd.token_key, "token_key", max_chars=MAX_REQUEST_ID_CHARS)
    p = cmd.permission
    if (cmd.op in (AuthChangeOp.ROLE_GRANT, AuthChangeOp.ROLE_REVOKE)) != (p is not None):
        raise InvalidCommand("permission: given exactly with role_grant and role_revoke")
    if p is not None:
        if type(p.access) is not Access or type(p.prefix) is not bool:
            raise InvalidCommand("permission: malformed")
        _check_str(p.key, "permission.key", allow_empty=p.prefix or p.access is Access.ADMIN)
        if p.access is Access.ADMIN and (p.key or p.prefix):
            raise InvalidCommand("permission: admin names no key")


# ---- from the JSON the HTTP API receives -------------------------------------------------------


_JSON_TYPES = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
               list: "an array", dict: "an object"}


def _json_type(v: Any) -> str:
    return _JSON_TYPES.get(type(v), type(v).__name__)


def _fields(obj: Any, where: str, required: set[str], optional: set[str]) -> dict[str, Any]:
    """obj as a dict, after rejecting unknown and missing fields (typos must not pass silently)."""
    if type(obj) is not dict:
        raise InvalidCommand(f"{where}: must be a JSON object, not {_json_type(obj)}")
    if unknown := obj.keys() - required - optional:
        allowed = ", ".join(sorted(required | optional))
        raise InvalidCommand(f"{where}: unknown field {sorted(unknown)[0]!r} (allowed: {allowed})")
    if missing := required - obj.keys():
        raise InvalidCommand(f"{where}: missing field {sorted(missing)[0]!r}")
    return obj


def _not_null(fields: dict[str, Any], names: tuple[str, ...]) -> None:
    """These fields are given or left out; a null would pass for left out, as a typo would."""
    for name in names:
        if name in fields and fields[name] is None:
            raise InvalidCommand(f"{name}: must not be null (leave the field out instead)")


def _request_id(fields: dict[str, Any], header_id: str | None) -> str | None:
    """The request_id from the body or from the Idempotency-Key header; both must agree."""
    body_id = fields.get("request_id")
    if body_id is not None and header_id is not None and body_id != header_id:
        raise InvalidCommand(f"request_id: the body says {body_id!r} but the Idempotency-Key header says "
                             f"{header_id!r}; give one, or the same in both")
    return header_id if body_id is None else body_id


def put_from_json(key: str, body: Any, request_id: str | None = None) -> Put:
    """`PUT /kv/{key}` with body {"value", "prev_value"?, "prev_revision"?, "prev_exist"?, "lease"?,
    "request_id"?}."""
    f = _fields(body, "body", {"value"}, {"prev_value", "prev_revision", "prev_exist", "lease", "request_id"})
    _not_null(f, ("prev_revision", "prev_exist", "request_id"))  # prev_value may be null: a null value
    cmd = Put(key, f["value"], f.get("prev_value", UNSET), f.get("prev_revision"), f.get("prev_exist"),
              _request_id(f, request_id), f.get("lease", 0))
    validate(cmd)
    return cmd


def delete_from_json(key: str, body: Any = None, request_id: str | None = None) -> Delete:
    """`DELETE /kv/{key}` with an optional body {"prev_revision"?, "request_id"?}."""
    f = {} if body is None else _fields(body, "body", set(), {"prev_revision", "request_id"})
    _not_null(f, ("prev_revision", "request_id"))
    cmd = Delete(key, f.get("prev_revision"), _request_id(f, request_id))
    validate(cmd)
    return cmd


_OPS_JSON: dict[str, tuple[type, set[str], set[str]]] = {  # op name: (class, required, optional)
    "put": (TxnPut, {"key", "value"}, set()), "delete": (TxnDelete, {"key"}, set()),
    "get": (TxnGet, {"key"}, set()), "range": (TxnRange, set(), {"prefix", "limit"})}


def _op_from_json(item: Any, where: str) -> TxnOp:
    # Two spellings: flat {"op": "put", "key": ..} and etcd-like {"put": {"key": ..}}.
    if type(item) is dict and len(item) == 1 and "op" not in item:
        ((name, inner),) = item.items()
        if name in _OPS_JSON and type(inner) is dict and "op" not in inner:
            item = {"op": name, **inner}
    if type(item) is not dict:
        raise InvalidCommand(f"{where}: must be a JSON object, not {_json_type(item)}")
    name = item.get("op")
    if type(name) is not str or name not in _OPS_JSON:
        got = "missing" if "op" not in item else f"{name!r}"
        raise InvalidCommand(f"{where}.op: must be one of 'put', 'delete', 'get', 'range' ({got})")
    cls, required, optional = _OPS_JSON[name]
    f = _fields(item, where, required | {"op"}, optional)
    if "limit" in f and f["limit"] is None:  # no limit is for etcd's txn ranges; the HTTP API's are bounded
        raise InvalidCommand(f"{where}.limit: must be an integer from 1 to {MAX_RANGE_LIMIT}")
    return cls(**{k: v for k, v in f.items() if k != "op"})  # only known fields are left


def txn_from_json(obj: Any, request_id: str | None = None) -> Txn:
    """`POST /txn` with {"compare": [...], "success": [...], "failure": [...], "request_id"?}.

    compare items are {"key", "target", "op", "value"}; ops are put {key, value}, delete {key},
    get {key} and range {prefix?, limit?}. Raises InvalidCommand naming the offending item.
    """
    f = _fields(obj, "txn", set(), {"compare", "success", "failure", "request_id"})
    _not_null(f, ("request_id",))
    lists = {name: f.get(name, []) for name in ("compare", "success", "failure")}
    for name, items in lists.items():
        if type(items) is not list or len(items) > MAX_TXN_OPS:  # bounded before any parsing
            raise InvalidCommand(f"{name}: must be an array of at most {MAX_TXN_OPS} items, not "
                                 + (_json_type(items) if type(items) is not list else f"{len(items)}"))
    names = ("key", "target", "op", "value")
    compare = (_decode_compare([_fields(c, f"compare[{i}]", set(names), set())[n] for n in names],
                               f"compare[{i}]") for i, c in enumerate(lists["compare"]))
    cmd = Txn(tuple(compare),
              tuple(_op_from_json(o, f"success[{i}]") for i, o in enumerate(lists["success"])),
              tuple(_op_from_json(o, f"failure[{i}]") for i, o in enumerate(lists["failure"])),
              _request_id(f, request_id))
    validate(cmd)
    for name in ("success", "failure"):
        _check_distinct_writes(getattr(cmd, name), name)
    return cmd


def _check_distinct_writes(ops: tuple[TxnOp, ...], where: str) -> None:
    """One branch may write a key once (as etcd: "duplicate key given in txn request"): two puts
    of one key in one revision would leave a version history no reader could have seen. Checked on
    the JSON only, never on decode: an old log entry that did it must still replay as it applied."""
    first: dict[str, int] = {}
    for i, op in enumerate(ops):
        if type(op) in (TxnPut, TxnDelete):
            if op.key in first:
                raise InvalidCommand(f"{where}[{i}]: key {op.key!r} is already written by {where}[{first[op.key]}]; "
                                     "a txn writes each key at most once per branch")
            first[op.key] = i
