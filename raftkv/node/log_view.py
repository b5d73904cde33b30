"""A node's real log, as `GET /raft/log` serves it: what the dashboard's log table draws.

Each entry is shown as it is in this node's log: its index and term (never inferred), its kind,
a short summary of what it carries (a command's operation and key, a membership change, a new
leader's no-op), and where it stands on this node: on disk (fsynced), committed, applied. Entries
before `firstIndex` were compacted into the snapshot at `snapshotIndex`. The answer says when it
was read, so a reader can tell how old its picture is.
"""

from __future__ import annotations

import json
import time
from typing import Any

from raftkv.core import ConfChange, Entry, EntryKind, RaftCore
from raftkv.kv import (
    AsUser,
    AuthChange,
    Command,
    Compact,
    FoundStore,
    InvalidCommand,
    LeaseGrant,
    LeaseRevoke,
    PublishMember,
    Put,
    Txn,
    decode,
)

from .membership import MemberRecord

__all__ = ["MAX_LOG_ENTRIES", "log_view"]

MAX_LOG_ENTRIES = 500
_SUMMARY_KEY_CHARS = 40


def log_view(core: RaftCore, start: int | None, limit: int) -> dict[str, Any]:
    """Up to `limit` entries from `start` (default: the newest `limit`), with the log's bounds."""
    assert 1 <= limit <= MAX_LOG_ENTRIES
    log = core.log
    first, last = log.first_index(), log.last_index()
    lo = max(first, start if start is not None else last - limit + 1)
    hi = min(last, lo + limit - 1)
    entries = [_entry(log.entry(i), core) for i in range(lo, hi + 1)]
    return {"nodeId": core.id, "term": core.term, "firstIndex": first, "lastIndex": last,
            "snapshotIndex": core.snapshot_index, "commitIndex": log.committed, "appliedIndex": log.applied,
            "stableIndex": core.durable_index, "entries": entries, "readAt": round(time.time(), 3)}


def _entry(e: Entry, core: RaftCore) -> dict[str, Any]:
    return {"index": e.index, "term": e.term, "kind": e.kind.name.lower(), "summary": summarize(e),
            "bytes": len(e.data), "onDisk": e.index <= core.durable_index,
            "committed": e.index <= core.log.committed, "applied": e.index <= core.log.applied}


def summarize(e: Entry) -> str:
    """An entry in a few words: "put saldo (4 B)", "no-op (new leader's first entry)", ..."""
    if e.kind is EntryKind.NOOP:
        return "no-op (a new leader's first entry)"
    if e.kind is EntryKind.CONF_CHANGE:
        change = ConfChange.decode(e.data)
        name = (MemberRecord.decode(change.context).name if change.context else "") or change.node_id
        return f"{change.kind.value.replace('_', ' ')} {name}"
    try:
        cmd = decode(e.data)
    except InvalidCommand:
        return "undecodable command"
    return _command_summary(cmd)


def _command_summary(cmd: Command) -> str:
    if type(cmd) is AsUser:
        return f"{_command_summary(cmd.command)} as {cmd.user}"
    if type(cmd) is AuthChange:
        subject = " ".join(part for part in (cmd.name, cmd.role) if part)
        return f"auth: {cmd.op.value.replace('_', ' ')} {subject}".rstrip()
    if type(cmd) is Txn:
        return f"txn ({len(cmd.compare)} compares, {len(cmd.success)}/{len(cmd.failure)} ops)"
    if type(cmd) is Compact:
        return f"compact to revision {cmd.revision}"
    if type(cmd) is LeaseGrant:
        return f"grant lease {cmd.lease_id:x} (TTL {cmd.ttl_s} s)"
    if type(cmd) is LeaseRevoke:
        return f"{'expire' if cmd.expired else 'revoke'} lease {cmd.lease_id:x}"
    if type(cmd) is FoundStore:
        return "the empty store starts at revision 1 (etcd's first)"
    if type(cmd) is PublishMember:
        return f"publish member {MemberRecord.decode(cmd.details).name or cmd.member_id}"
    key = json.dumps(cmd.key, ensure_ascii=False)
    key = key if len(key) <= _SUMMARY_KEY_CHARS else key[: _SUMMARY_KEY_CHARS - 1] + "…"
    if type(cmd) is Put:
        return f"put {key} ({len(json.dumps(cmd.value, ensure_ascii=False).encode('utf-8', 'surrogatepass'))} B)"
    return f"delete {key}"
