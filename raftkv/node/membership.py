"""Who is in the cluster: member identities, their addresses, and how a cluster's log begins.

Theory of operation
-------------------
The core knows members only by id. Everything else about a member (its name, the client URL
people use, the peer address other nodes dial) travels as a `MemberRecord` in the context of the
membership change that added it, so every replica learns it from the log itself and keeps it in
the state machine's member table, which snapshots carry. The log is self-describing: a new
cluster's log *begins* with one ADD_VOTER entry per founding member (as etcd bootstraps a cluster),
identical on every founding node and committed from the start, so a node that joins later with an
empty disk rebuilds exactly the configuration everyone else has, from index 1 or from a snapshot.
One more founding entry starts the empty store at revision 1, as etcd's (kv.FoundStore).

Identity: a founding member's id is its name (`node1`); a member added later gets a fresh id
(`node4-9f3c2a1b`), so a name removed and added again, on a wiped disk, is a new incarnation whose
votes, acknowledgements and messages can never be mistaken for the old one's (a member added by
its peer address alone, through etcd's MemberAdd, has no name yet: `member-9f3c2a1b...`, its
record unstarted until its node publishes its name and client URL). A node keeps its own
id in its data directory (`<data-dir>/MEMBER`), and from then on that file, not its command line, says
who it is; a command line that contradicts it is refused.

Data directories written before membership was replicated have a log that does not begin with
these entries: their configuration is the command line's (`legacy`), and their member table is
empty until a change adds to it.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

import msgpack

from raftkv.core import ConfChange, ConfChangeKind, DurableState, Entry, EntryKind, HardState
from raftkv.kv import FoundStore, encode

from .config import ConfigError, Member

__all__ = ["BOOTSTRAP_TERM", "Identity", "MemberRecord", "bootstrap_state", "is_self_describing", "new_member_id"]

BOOTSTRAP_TERM = 1  # the founding entries' term: the first election is for term 2, as in etcd
IDENTITY_FILE = "MEMBER"


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """What the cluster knows of one member besides its id."""

    name: str
    client_url: str  # http://host:port (https:// over TLS), as clients and the CLI reach it
    peer_host: str  # where peers dial its Raft port
    peer_port: int

    def encode(self) -> bytes:
        return msgpack.packb([self.name, self.client_url, self.peer_host, self.peer_port])

    @classmethod
    def decode(cls, data: bytes) -> MemberRecord:
        name, client_url, peer_host, peer_port = msgpack.unpackb(data)
        return cls(name, client_url, peer_host, peer_port)

    @classmethod
    def of(cls, member: Member) -> MemberRecord:
        return cls(member.display_name, member.url, member.host, member.raft_port)

    @classmethod
    def unstarted(cls, peer_host: str, peer_port: int) -> MemberRecord:
        """A member added by its peer address alone (etcd's MemberAdd carries no name and no client
        URL): its node fills in the rest when it starts (kv.PublishMember), as etcd's members do."""
        return cls("", "", peer_host, peer_port)

    @property
    def started(self) -> bool:
        return bool(self.client_url)

    def as_member(self, member_id: str) -> Member:
        """A `Member` (what transports and configs use) for this record under `member_id`."""
        if not self.started:
            return Member(member_id, self.peer_host, 0, self.peer_port, started=False)
        host, _, port = self.client_url.removeprefix("http://").removeprefix("https://").rpartition(":")
        return Member(member_id, self.peer_host, int(port), self.peer_port, client_host=host, name=self.name,
                      client_tls=self.client_url.startswith("https://"))

    def peer_address(self) -> str:
        return f"{self.peer_host}:{self.peer_port}"


def new_member_id(name: str) -> str:
    """A fresh id for a new incarnation of the member called `name` (64 random bits, as etcd's)."""
    return f"{name}-{secrets.token_hex(8)}"


def bootstrap_state(founders: dict[str, Member]) -> DurableState:
    """The durable state every founding node of a new cluster starts from: one committed
    ADD_VOTER entry per founder, in id order, so all of them hold the same log, and then the entry
    that starts the empty store at revision 1, as etcd's (kv.FoundStore)."""
    entries = [Entry(BOOTSTRAP_TERM, index, EntryKind.CONF_CHANGE,
                     ConfChange(ConfChangeKind.ADD_VOTER, member_id, MemberRecord.of(member).encode()).encode())
               for index, (member_id, member) in enumerate(sorted(founders.items()), start=1)]
    entries.append(Entry(BOOTSTRAP_TERM, len(entries) + 1, EntryKind.NORMAL, encode(FoundStore())))
    return DurableState(HardState(BOOTSTRAP_TERM, None, len(entries)), None, entries)


def is_self_describing(durable: DurableState) -> bool:
    """Whether a data directory's log carries its own configuration (a snapshot, or founding
    entries); a fresh directory counts as not (it is about to be bootstrapped or to join)."""
    if durable.snapshot is not None:
        return True
    return bool(durable.entries) and durable.entries[0].index == 1 and durable.entries[0].kind is EntryKind.CONF_CHANGE


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a data directory's node is: its member id and name, the cluster it was made for (the
    founding members' `id@host:http:raft` list, or the URL it joined through), and for a node that
    joined, the members the cluster listed then. A joiner's log starts empty: until it has applied
    the entries (or the snapshot) that name its peers, those addresses are how it answers the
    leader, also after a restart."""

    member_id: str
    name: str
    origin: str
    joined_members: dict[str, list] = field(default_factory=dict)  # id -> [name, client URL, peer host, port]

    @classmethod
    def load(cls, data_dir: Path) -> Identity | None:
        path = data_dir / IDENTITY_FILE
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_text())
            identity = cls(raw["member_id"], raw["name"], raw["origin"], raw.get("joined_members", {}))
            identity.members()  # malformed addresses are refused here, not at first use
            return identity
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a member identity ({exc}); it says who this node is, do not edit it") \
                from None

    def members(self) -> dict[str, Member]:
        return {member_id: MemberRecord(str(name), str(url), str(host), int(port)).as_member(member_id)
                for member_id, (name, url, host, port) in self.joined_members.items()}

    def save(self, data_dir: Path) -> None:
        """Written once, atomically and durably: a node must never forget who it is."""
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = data_dir / (IDENTITY_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(asdict(self), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, data_dir / IDENTITY_FILE)
        dir_fd = os.open(data_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
