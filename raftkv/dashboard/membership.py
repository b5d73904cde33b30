"""Growing and shrinking the cluster from the dashboard (and `raftkv lab add|remove|promote`).

Theory of operation
-------------------
Each operation is the cluster's own membership API (`GET /members`, `POST /members/{id}/promote`,
`DELETE /members/{id}` on any reachable member, the leader first) plus, under `raftkv up`, the
supervisor's processes:

* add: the supervisor starts a new node process (`raftkv node --join <a live member's URL> --name
  nodeN ...`), which asks the cluster to add it as a learner; this waits until the cluster lists
  it, then (unless asked not to) promotes it once it holds nearly all of the leader's log. The
  cluster refuses an early promotion ("not_caught_up") and a change while the previous one is
  uncommitted ("pending"); both are retried until `CATCH_UP_WAIT_S`. A node whose process exits
  before the cluster lists it is forgotten, with the last line of its log as the reason.
* remove: the cluster removes the member (the leader hands over leadership first if it is the
  one leaving), then the supervisor stops its process and forgets it, keeping its data directory.
  Without a supervisor (a remote cluster) only the membership changes.
* promote: a learner becomes a voter, as the cluster decides.

One change at a time: a second request waits up to `CHANGE_WAIT_S` for the one that runs (the
page can show a change done a moment before its request has its answer), then is a 409.
The hub is told of every change at once (`Hub.follow_members`), so the page's ring follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from raftkv.client import join_token
from raftkv.supervisor import NameTakenError, last_log_line

from .controls import STOP_GRACE_S, ControlError, Controls, error_text
from .hub import Hub, NodeLink
from .lab import Lab

JOIN_WAIT_S = 30.0  # a new node's process has this long to be listed by the cluster
CATCH_UP_WAIT_S = 60.0  # a learner has this long to catch up and be promoted
POLL_S = 0.2
CHANGE_WAIT_S = 5.0  # a change asked while another ends waits this long for it before a 409
RETRIED_REASONS = frozenset({"not_caught_up", "pending"})  # refusals that time cures


class Membership:
    def __init__(self, hub: Hub, controls: Controls, lab: Lab) -> None:
        self.hub, self.controls, self.lab = hub, controls, lab
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ the operations ----------

    async def add(self, name: str | None = None, promote: bool = True) -> dict[str, Any]:
        """Start a new node that joins as a learner; promote it to voter once caught up if `promote`."""
        sup = self.controls.need_supervisor("start a new node")
        if self.lab.active:
            raise ControlError(409, "hold-and-step is on: a new node's join would wait for messages no one "
                                    "delivers; leave the lab first")
        async with self._one_change():
            view = await self.members()
            join_url = self._join_url(view)
            token = await join_token(self.hub.acting_credentials(), self._ask)  # auth on: an admin's
            add = functools.partial(sup.add_node, name, {m["name"] for m in view["members"]}, join_url,
                                    self.lab.new_node_args(sup), token)
            try:
                node = await asyncio.get_running_loop().run_in_executor(None, add)
            except NameTakenError as e:
                raise ControlError(409, str(e)) from None
            except ValueError as e:
                raise ControlError(400, str(e)) from None
            name = node.member.id
            then = ", then promote it to voter once it has caught up" if promote else ""
            self.hub.action(f"add {name}: a new node joins through {join_url} as a learner{then}",
                            kind="member-add", icon="add", target=name)
            member = await self._listed(name)
            if promote:  # the cluster refuses until the learner caught up: _change retries
                answer = await self._change("POST", f"/members/{quote(member['id'], safe='')}/promote")
                member = answer["member"]
            return {"node": name, "id": member["id"], "role": member["role"], "process": node.describe()}

    async def promote(self, node: str) -> dict[str, Any]:
        async with self._one_change():
            member = self._find(await self.members(), node)
            self.hub.action(f"promote {member['name']} to voter", kind="member-promote", icon="promote",
                            target=member["name"])
            answer = await self._change("POST", f"/members/{quote(member['id'], safe='')}/promote")
            return {"node": member["name"], "id": member["id"], "role": answer["member"]["role"]}

    async def remove(self, node: str) -> dict[str, Any]:
        """Remove the member from the cluster, then stop its process (if the supervisor runs it)."""
        async with self._one_change():
            member = self._find(await self.members(), node)
            name = member["name"]
            self.hub.action(f"remove {name} from the cluster", kind="member-remove", icon="remove", target=name)
            answer = await self._change("DELETE", f"/members/{quote(member['id'], safe='')}", retry_s=JOIN_WAIT_S)
            self.hub.follow_members({"members": answer["members"], "removedIDs": [member["id"]]})
            sup = self.controls.supervisor
            process = None
            if sup is not None and name in sup.nodes:
                retire = functools.partial(sup.retire, name, STOP_GRACE_S)
                process = await asyncio.get_running_loop().run_in_executor(None, retire)
            return {"node": name, "id": member["id"], "removed": True, "process": process}

    # ------------------------------------------------------------------ asking the cluster ------

    async def members(self) -> dict[str, Any]:
        """GET /members from the first reachable member (the leader first)."""
        status, view = await self._ask("GET", "/members")
        if status != 200 or not isinstance(view, dict):
            raise ControlError(503, f"the cluster's members cannot be read: {error_text(view)}")
        self.hub.follow_members(view)
        return view

    async def _change(self, method: str, path: str, retry_s: float = CATCH_UP_WAIT_S) -> dict[str, Any]:
        """A membership change on a reachable member, retried while the cluster says to wait."""
        deadline = time.monotonic() + retry_s
        while True:
            status, answer = await self._ask(method, path)
            if status == 200 and isinstance(answer, dict):
                self.hub.follow_members({"members": answer.get("members", []), "removedIDs": []})
                return answer
            waiting = status == 503 or (isinstance(answer, dict) and answer.get("reason") in RETRIED_REASONS)
            if not waiting or time.monotonic() > deadline:
                fields = {"reason": answer["reason"]} if isinstance(answer, dict) and "reason" in answer else {}
                raise ControlError(status, f"the cluster refused: {error_text(answer)}", **fields)
            await asyncio.sleep(POLL_S)

    async def _ask(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """The answer of the first member that answers (the leader first)."""
        for link in self._asked():
            try:
                return await self.controls.call(link, method, path, body)
            except ControlError:
                continue
        return 503, {"error": "no member of the cluster is reachable"}

    def _asked(self) -> list[NodeLink]:
        return self.controls.reachable_members() or self.hub.members()

    # ------------------------------------------------------------------ helpers -----------------

    @staticmethod
    def _find(view: dict[str, Any], node: str) -> dict[str, Any]:
        member = next((m for m in view["members"] if node in (m["name"], m["id"])), None)
        if member is None:
            names = sorted(m["name"] for m in view["members"])
            raise ControlError(404, f"no member {node!r}; members are {names}")
        return member

    @staticmethod
    def _join_url(view: dict[str, Any]) -> str:
        leader = next((m for m in view["members"] if m["id"] == view.get("leader")), None)
        return (leader or view["members"][0])["clientURL"]

    @contextlib.asynccontextmanager
    async def _one_change(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(CHANGE_WAIT_S):
                await self._lock.acquire()
        except TimeoutError:
            raise ControlError(409, "another membership change is in progress; wait for it to finish") from None
        try:
            yield
        finally:
            self._lock.release()

    async def _listed(self, name: str) -> dict[str, Any]:
        """The new node's member record, once the cluster lists it; forgets a node that cannot join."""
        sup = self.controls.need_supervisor("start a new node")
        node = sup.nodes[name]
        deadline = time.monotonic() + JOIN_WAIT_S
        while node.running and time.monotonic() < deadline:
            member = next((m for m in (await self.members())["members"] if m["name"] == name), None)
            if member is not None:
                return member
            await asyncio.sleep(POLL_S)
        why = last_log_line(node.data_dir / "node.log") or f"it was not listed within {JOIN_WAIT_S:g} s"
        forget = functools.partial(sup.retire, name, STOP_GRACE_S, "could not join")
        await asyncio.get_running_loop().run_in_executor(None, forget)
        raise ControlError(502, f"{name} could not join the cluster: {why}", node=name)
