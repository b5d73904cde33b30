"""Changing a live cluster's membership, and following the changes (etcd's `member add/promote/remove`).

Theory of operation
-------------------
A change is proposed on the leader, one at a time (the core refuses a second while the first is
uncommitted, and a new leader's until it committed an entry of its own term), and answered once
committed and applied. Any node accepts a request: a follower hands it to the leader's client API
and relays the answer, so the leader's checks and the leader's view of the configuration decide.

- add: a new member joins as a learner by default (it receives the log but neither votes nor
  counts towards a commit), under a fresh id (membership.py); its name, client URL and peer
  address must not belong to a member already, and its client URL's scheme is the cluster's
  (https when the members serve client TLS: node/config.py).
- add by peer address alone (`add_unstarted`, etcd's MemberAdd, which carries no name and no
  client URL): the member is listed unstarted (no name, no client URL, `started: false`) until a
  node started with `--join ... --advertise-peer` on that address takes it over (startup.py) and
  publishes its name and client URL through the log (`publish`, a `PublishMember` command), as
  etcd's members publish theirs. A voter is added at once, as etcd 3.5 adds one, unless its
  strict reconfiguration check refuses: the started voters would not be a majority with it, or
  the leader has not heard from every voter within an election timeout.
- promote: only once the learner holds nearly all of the leader's log (`PROMOTE_MAX_LAG_ENTRIES`),
  and has acknowledged some of it (an unstarted learner has nothing), or the new voter would make
  commits wait for it to catch up (etcd: "learner not in sync").
- remove: of the leader, leadership is first handed to the most caught-up other voter, then the
  new leader removes it; the last voter cannot be removed.
- move (etcd's MemberUpdate): a member gets a new peer address, through the log (`PublishMember`
  over the record it had), so every node dials it there from the moment the change applies. Its
  node must then be restarted listening there (`--listen-peer`); until it is, the others cannot
  reach it, as with etcd.

Every node follows the applied configuration (`sync`, called after each membership entry, member
details change and snapshot it applies): links open to new members, move to new addresses and
close to removed ones, and `/raft-state` lists them.

A removed node usually never applies its own removal: the configuration takes effect when the
entry is appended, and the leader stops replicating to it at once. It cannot disturb the others
(pre-vote and check-quorum refuse a node that no leader answers), but it would campaign in vain
for ever. So a node that has known no leader for a while asks a peer (`check_still_member`);
the cluster remembers removed ids, and ids are never reused, so "removed" is a final answer, and
the node stops its Raft group and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import quote, urlsplit

from raftkv.client import Client, ClusterUnreachableError
from raftkv.core import ConfChange, ConfChangeKind, Role
from raftkv.kv import PublishMember
from raftkv.transport import Transport

from .config import Member, NodeConfig
from .errors import MembershipRefused, NodeError, NotAppliedError
from .forwarding import LeaderAsker
from .group import RaftGroup
from .membership import MemberRecord, new_member_id
from .metrics import NodeMetrics

__all__ = ["PROMOTE_MAX_LAG_ENTRIES", "MemberService"]

log = logging.getLogger("raftkv.node")

PROMOTE_MAX_LAG_ENTRIES = 100
TRANSFER_WAIT_S = 3.0
PUBLISH_RETRY_S = 1.0
UNSTARTED_NAME = "member"  # the name part of an id given before the member's name is known (membership.new_member_id)


class MemberService:
    def __init__(self, cfg: NodeConfig, group: RaftGroup, transport: Transport, metrics: NodeMetrics,
                 on_removed: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.group = group
        self.transport = transport
        self.metrics = metrics
        self._on_removed = on_removed
        self._peers: dict[str, Member] = {}
        self._membership_applied = asyncio.Event()  # set by sync: `publish` looks at the table again
        # How this node relays to the leader, by the address book (the lessor relays through it too).
        self.access = cfg.member_access  # how it calls the other members' client APIs
        self.leader_asker = LeaderAsker(self.url_of, self.access)

    # ---- who is in the cluster --------------------------------------------------------------

    def address_book(self) -> dict[str, Member]:
        """Every member as others reach it: the replicated member table over the members this node
        was started with, less those removed. The start-up list matters for a node that joined: its
        table fills as it applies the log from index 1 (or a snapshot), and until the table names
        the member that leads now, this is how it answers that leader. It is also the whole book of
        a data directory from before the table existed. Client URLs have this node's scheme
        (node/config.py: client TLS is the whole cluster's). A member the table lists unstarted
        keeps what this node was told of it, if anything: a node that took such a member over knows
        its own details before the table does."""
        removed = self.group.kv.removed_members
        tls = self.cfg.serves_client_tls
        book = {member_id: m for member_id, m in self.cfg.members.items() if member_id not in removed}
        for member_id, details in self.group.kv.members.items():
            record = MemberRecord.decode(details)
            if record.started or member_id not in book:
                book[member_id] = replace(record.as_member(member_id), client_tls=tls)
        return book

    def peers(self) -> dict[str, Member]:
        return {i: m for i, m in self.address_book().items() if i != self.cfg.node_id}

    def url_of(self, member_id: str) -> str | None:
        """A member's client URL; None while unknown, or while it has not started."""
        member = self.address_book().get(member_id)
        return member.url or None if member is not None else None

    def describe(self) -> list[dict[str, Any]]:
        """Each member with its role and, on the leader, how far behind it is."""
        core = self.group.core
        leading = core.role is Role.LEADER
        rows = []
        for member_id, member in sorted(self.address_book().items()):
            role = "voter" if member_id in core.conf.voters else "learner"
            row: dict[str, Any] = {"id": member_id, "name": member.display_name if member.started else "",
                                   "clientURL": member.url, "peerURL": f"{member.host}:{member.raft_port}",
                                   "role": role, "isLeader": member_id == core.leader_id, "started": member.started}
            pr = core.progress.get(member_id)
            if leading and pr is not None:
                row.update(matchIndex=pr.match, lagEntries=core.log.last_index() - pr.match)
            rows.append(row)
        return rows

    def sync(self) -> None:
        """Follow the applied configuration: open links to new members, close them to removed ones."""
        wanted = self.peers()
        for peer_id, member in wanted.items():
            if self._peers.get(peer_id) != member:
                self.transport.add_peer(peer_id, (member.host, member.raft_port))
        for gone in set(self._peers) - set(wanted):
            self.transport.remove_peer(gone)
        self._peers = wanted
        self._refresh_gauges()
        self._membership_applied.set()
        if self.cfg.node_id in self.group.kv.removed_members:
            self._on_removed("its removal was applied here")

    def _refresh_gauges(self) -> None:
        conf = self.group.core.conf
        self.metrics.members.labels("voter").set(len(conf.voters))
        self.metrics.members.labels("learner").set(len(conf.learners))

    async def check_still_member(self) -> None:
        """Ask the peers, one after another, whether this node's id was removed; the first that
        answers decides (its table is the cluster's, up to its applied index, and removals are final)."""
        for peer in self.peers().values():
            if not peer.started:
                continue  # nothing to ask yet
            try:
                async with Client([peer.url], timeout_s=2.0, access=self.access) as client:
                    status, answer = await client.request("GET", "/members")
            except ClusterUnreachableError:
                continue
            if status == 200 and isinstance(answer, dict):
                if self.cfg.node_id in answer.get("removedIDs", ()):
                    self._on_removed(f"{answer.get('node', peer.id)} says this member was removed from the cluster")
                return

    async def publish(self) -> None:
        """Fill in this node's record if the member table lists it unstarted (it took over a member
        added by its peer address: startup.py): propose its name and client URL (`PublishMember`,
        applied only over the unstarted record), again until the table shows them. Runs until then;
        on every other node it returns as soon as the table holds its record, started."""
        while True:
            details = self.group.kv.members.get(self.cfg.node_id)
            if details is None:  # not applied yet (or a data directory from before the table)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._membership_applied.wait(), PUBLISH_RETRY_S)
                self._membership_applied.clear()
                continue
            listed = MemberRecord.decode(details)
            if listed.started:
                return
            me = self.cfg.me
            mine = MemberRecord(me.display_name, me.url, listed.peer_host, listed.peer_port)
            try:
                result = await self.group.propose(PublishMember(self.cfg.node_id, details, mine.encode()))
            except NodeError as e:
                log.info("could not publish this member's name and client URL yet (%s); retrying", e)
                await asyncio.sleep(PUBLISH_RETRY_S)
                continue
            if result.get("ok"):
                log.info("published this member's name %s and client URL %s", mine.name, mine.client_url)
            else:  # the record changed before it applied: look again, after a while
                await asyncio.sleep(PUBLISH_RETRY_S)

    # ---- changing it ------------------------------------------------------------------------

    async def add(self, name: str, client_url: str, peer_url: str, learner: bool = True) -> dict[str, Any]:
        if not await self._leading():
            return await self._forward("POST", "/members", {"name": name, "clientURL": client_url,
                                                             "peerURL": peer_url, "learner": learner})
        record = _record(name, client_url, peer_url)
        scheme = "https" if self.cfg.serves_client_tls else "http"
        if not record.client_url.startswith(f"{scheme}://"):
            serves = "over TLS" if self.cfg.serves_client_tls else "without TLS"
            raise MembershipRefused("invalid", f"clientURL: this cluster serves its client API {serves}, so a "
                                               f"member's URL is {scheme}://host:port, not {client_url!r}",
                                    field="clientURL")
        for member_id, member in self.address_book().items():
            taken = {"name": member.display_name == name, "clientURL": member.url == record.client_url,
                     "peerURL": (member.host, member.raft_port) == (record.peer_host, record.peer_port)}
            if clash := [what for what, same in taken.items() if same]:
                raise MembershipRefused("duplicate", f"{clash[0]} is already {member_id}'s", member=member_id,
                                        field=clash[0])
        member_id = new_member_id(name)
        kind = ConfChangeKind.ADD_LEARNER if learner else ConfChangeKind.ADD_VOTER
        await self.group.change_membership(ConfChange(kind, member_id, record.encode()))
        return self._answer(member_id)

    async def add_unstarted(self, peer_address: str, learner: bool,
                            relay: Callable[[str], Awaitable[str]]) -> str:
        """Add a member known only by its peer address (`host:port`), as etcd's MemberAdd does; its
        id. On a follower, `relay(leader id)` hands the request to the leader in the caller's own
        protocol (raftkv's POST /members needs a name and client URL) and returns the id it made."""
        leader = await self.group.await_leader()
        if leader != self.cfg.node_id:
            return await relay(leader)
        host, port = _peer(peer_address)
        for member_id, member in self.address_book().items():
            if (member.host, member.raft_port) == (host, port):
                raise MembershipRefused("duplicate", f"peerURL is already {member_id}'s", member=member_id,
                                        field="peerURL")
        if not learner:
            self._check_voter_may_join()
        member_id = new_member_id(UNSTARTED_NAME)
        kind = ConfChangeKind.ADD_LEARNER if learner else ConfChangeKind.ADD_VOTER
        await self.group.change_membership(ConfChange(kind, member_id, MemberRecord.unstarted(host, port).encode()))
        return member_id

    def _check_voter_may_join(self) -> None:
        """etcd's strict reconfiguration check for a voter that has not started: the voters that
        have would still be a majority with it (etcd lets a cluster of one grow to two), and the
        leader heard from every voter within an election timeout (never, from one not started)."""
        core, book = self.group.core, self.address_book()
        voters = core.conf.voters
        started = sum(1 for v in voters if (m := book.get(v)) is not None and m.started)
        if not (started == 1 and len(voters) == 1) and started < (len(voters) + 1) // 2 + 1:
            raise MembershipRefused("not_enough_started", f"only {started} of {len(voters)} voters have started: "
                                                          "with one more that has not, they would not be a majority")
        quiet = sorted(v for v in voters if v != self.cfg.node_id and (  # never heard from one not started
            (m := book.get(v)) is None or not m.started or (pr := core.progress.get(v)) is None
            or pr.ticks_since_contact > core.config.election_timeout_ticks))
        if quiet:
            raise MembershipRefused("unhealthy", f"the leader has not heard from {', '.join(quiet)} lately")

    async def promote(self, member_id: str) -> dict[str, Any]:
        core = self.group.core
        if not await self._leading():
            return await self._forward("POST", f"/members/{quote(member_id, safe='')}/promote", None)
        if member_id not in core.conf.members():
            raise MembershipRefused("unknown", f"no member {member_id!r}", members=sorted(core.conf.members()))
        if member_id in core.conf.voters:
            raise MembershipRefused("not_learner", f"{member_id} is a voter already, not a learner")
        pr = core.progress.get(member_id)
        lag = core.log.last_index() - (pr.match if pr else 0)
        if lag > PROMOTE_MAX_LAG_ENTRIES or pr is None or pr.match == 0:  # match 0: it acknowledged nothing yet
            raise MembershipRefused("not_caught_up", f"learner {member_id} is not in sync: it lacks {lag} entries "
                                                     f"(at most {PROMOTE_MAX_LAG_ENTRIES} to be promoted); retry once "
                                                     "it has caught up", lagEntries=lag)
        await self.group.change_membership(ConfChange(ConfChangeKind.ADD_VOTER, member_id))
        return self._answer(member_id)

    async def move(self, member_id: str, peer_url: str) -> dict[str, Any]:
        """Give a member a new peer address, keeping its name and client URL."""
        if not await self._leading():
            return await self._forward("PATCH", f"/members/{quote(member_id, safe='')}", {"peerURL": peer_url})
        host, port = _peer(peer_url)
        details = self.group.kv.members.get(member_id)
        if details is None or member_id not in self.group.core.conf.members():
            raise MembershipRefused("unknown", f"no member {member_id!r}",
                                    members=sorted(self.group.core.conf.members()))
        for other_id, member in self.address_book().items():
            if other_id != member_id and (member.host, member.raft_port) == (host, port):
                raise MembershipRefused("duplicate", f"peerURL is already {other_id}'s", member=other_id,
                                        field="peerURL")
        record = MemberRecord.decode(details)
        moved = replace(record, peer_host=host, peer_port=port)
        if moved != record:
            result = await self.group.propose(PublishMember(member_id, details, moved.encode()))
            if not result.get("ok"):
                raise MembershipRefused("pending", f"{member_id}'s details changed while this change was made; "
                                                   "retry")
            log.info("member %s moved its peer address to %s", member_id, moved.peer_address())
        return self._answer(member_id)

    async def remove(self, member_id: str) -> dict[str, Any]:
        core = self.group.core
        if not await self._leading():
            return await self._forward("DELETE", f"/members/{quote(member_id, safe='')}", None)
        if member_id not in core.conf.members():
            raise MembershipRefused("unknown", f"no member {member_id!r}", members=sorted(core.conf.members()))
        if core.conf.voters == (member_id,):
            raise MembershipRefused("last_voter", f"{member_id} is the last voter; a cluster needs one")
        if member_id == self.cfg.node_id:
            await self._hand_over_leadership()
            return await self._forward("DELETE", f"/members/{quote(member_id, safe='')}", None)
        await self.group.change_membership(ConfChange(ConfChangeKind.REMOVE, member_id))
        return {"removed": member_id, "members": self.describe()}

    def _answer(self, member_id: str) -> dict[str, Any]:
        members = self.describe()
        return {"member": next(m for m in members if m["id"] == member_id), "members": members}

    async def _hand_over_leadership(self) -> None:
        """Before the leader removes itself: lead no more, so the removal is some other voter's."""
        core = self.group.core
        others = [v for v in core.conf.voters if v != self.cfg.node_id]
        target = max(others, key=lambda v: core.progress[v].match if v in core.progress else -1)
        self.group.transfer_leadership(target)
        deadline = time.monotonic() + TRANSFER_WAIT_S
        while core.role is Role.LEADER or core.leader_id in (None, self.cfg.node_id):
            if time.monotonic() > deadline:
                raise NotAppliedError(f"could not hand leadership to {target} before removing this node; retry")
            await asyncio.sleep(0.02)

    async def _leading(self) -> bool:
        """Whether this node makes the change itself: it leads (once a reachable leader is known)."""
        return await self.group.await_leader() == self.cfg.node_id

    async def _forward(self, method: str, path: str, body: Any) -> dict[str, Any]:
        """Have the leader make the change, and relay its answer (or its refusal)."""
        return await self.leader_asker.ask(await self.group.await_leader(), method, path, body)


def _record(name: str, client_url: str, peer_url: str) -> MemberRecord:
    """The details of a new member, checked: a name, an http(s) client URL, a host:port peer address."""
    if not name or any(c in name for c in "@,/ ") or len(name) > 64:
        raise MembershipRefused("invalid", "name: 1 to 64 characters, none of '@', ',', '/' or space")
    try:
        client = urlsplit(client_url)
        client_port = client.port
    except ValueError:  # a "[" without its "]", a port past 65535: a 400 as any bad URL, never a 500
        client_port = None
    if client_port is None or client.scheme not in ("http", "https") or not client.hostname:
        raise MembershipRefused("invalid", f"clientURL: expected http://host:port, not {client_url!r}")
    return MemberRecord(name, f"{client.scheme}://{client.hostname}:{client_port}", *_peer(peer_url))


def _peer(peer_url: str) -> tuple[str, int]:
    host, _, port = peer_url.removeprefix("tcp://").rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:  # isdigit alone: "²"
        raise MembershipRefused("invalid", f"peerURL: expected host:port, not {peer_url!r}")
    return host, int(port)
