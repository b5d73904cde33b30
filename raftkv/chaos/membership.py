"""Who the cluster's members are now: what the clients, the observer and the final reads address.

Theory of operation
-------------------
A chaos run with the member nemesis removes members and adds them back under new ids, so "the
nodes" are not the ones the run started with. `MemberView` re-reads `GET /members` every
`interval_s` and keeps the answer of a node that knows a leader, asking the observer's leader
first (a cut-off or removed node answers from an old table). Removals are final (ids are never
reused), so the ids any answer reported removed are kept for good and filtered out of every
later answer: a stale table can hide a member that was just added for a moment, but never bring
back one that left. The member nemesis also tells the view of a removal at once (`note_removed`),
so nobody aims at a member whose process is about to stop.

Ids and names: a founding member's id is its name (`node2`); a member added later gets a new id
under the same name (`node2-9f3c2a1b77d0e5c4`). The history and the Raft samples name members by
id, so a new incarnation is a node of its own in the record and the timeline. Processes are known
by their slot in the `ChaosCluster` (`slot_of`): the name on a cluster this run started, the id on
an attached one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from raftkv.chaos.connect import run_session
from raftkv.chaos.workload import call

__all__ = ["MemberInfo", "MemberView"]

REFRESH_INTERVAL_S = 0.5
ASK_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class MemberInfo:
    """One member as `GET /members` lists it (how far behind it is only when the leader answered)."""

    id: str
    name: str
    url: str
    voter: bool
    match_index: int | None = None
    lag_entries: int | None = None


class MemberView:
    def __init__(self, founding: Mapping[str, str], leader_hint: Callable[[], str | None] = lambda: None,
                 interval_s: float = REFRESH_INTERVAL_S) -> None:
        self.members = {i: MemberInfo(i, i, url, True) for i, url in founding.items()}
        self.removed_ids: set[str] = set()
        self.answered_by: str | None = None  # the URL of the last node whose table was taken: alive then
        self.leader_hint = leader_hint  # the observer's "who leads now": whose table to read first
        self.interval_s = interval_s

    def urls(self) -> dict[str, str]:
        """{member id: client URL} of the members of the moment."""
        return {i: m.url for i, m in sorted(self.members.items())}

    def voters(self) -> list[MemberInfo]:
        return [m for _, m in sorted(self.members.items()) if m.voter]

    def by_name(self, name: str) -> MemberInfo | None:
        return next((m for m in self.members.values() if m.name == name), None)

    def member_of(self, slot: str) -> MemberInfo | None:
        """The current member in a cluster slot: the member with that id, else with that name."""
        return self.members.get(slot) or self.by_name(slot)

    def slot_of(self, member_id: str, slots: Mapping[str, Any]) -> str | None:
        """The cluster slot of a member id (`slots`: the cluster's slot -> URL), None if none holds it."""
        if member_id in slots:
            return member_id
        member = self.members.get(member_id)
        return member.name if member is not None and member.name in slots else None

    def note_removed(self, member_id: str) -> None:
        self.removed_ids.add(member_id)
        self.members.pop(member_id, None)

    def _accept(self, answer: Mapping[str, Any]) -> None:
        """Take a `GET /members` answer as the membership of the moment (less the ids known removed)."""
        self.removed_ids |= set(answer.get("removedIDs", ()))
        self.members = {m["id"]: MemberInfo(m["id"], m["name"], m["clientURL"], m["role"] == "voter",
                                            m.get("matchIndex"), m.get("lagEntries"))
                        for m in answer["members"] if m["id"] not in self.removed_ids
                        and m["clientURL"]}  # (one not started yet has no client URL to aim at)

    async def refresh(self, session: aiohttp.ClientSession) -> bool:
        """Read `GET /members` from the leader first, then the others; True when a node that knows a
        leader answered (a table without one may be a cut-off or removed node's old one)."""
        hint = self.leader_hint()
        urls = sorted(self.urls().items(), key=lambda item: (item[0] != hint, item[0]))
        for _, url in urls:
            status, data, _, _ = await call(session, "GET", f"{url}/members", None, ASK_TIMEOUT_S)
            if status == 200 and isinstance(data, dict) and data.get("leader") and "members" in data:
                self._accept(data)
                self.answered_by = url
                return True
        return False

    async def refresh_now(self) -> bool:
        async with run_session() as session:
            return await self.refresh(session)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the membership until `stop` is set."""
        async with run_session() as session:
            while not stop.is_set():
                await self.refresh(session)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval_s)
