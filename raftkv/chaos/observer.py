"""Watches every node's `/raft-state` during a run: who leads, in which term, who is down.

Theory of operation
-------------------
A poll every `interval_s` asks each node for `/raft-state` (short timeout, all nodes at once) and
hands the answer to the recorder, which keeps a sample only when (state, term, leader) changed.
`leader_now()` is what the nemesis uses to aim at the leader: the node that says it is leader in
the highest term among the latest answers. Polling can miss a leadership that lasted less than
one interval; the judge's election-safety check (at most one leader per term) is therefore a
sampled check, and the authoritative one lives in the deterministic simulator.

The nodes polled are the members of the moment (`members()`, by member id): a member that left is
sampled once more as "removed" and polled no more; one that joined is polled from then on. A node
that answers under another id than the one asked for (a new incarnation on a removed member's
address) counts as no answer for that id.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

import aiohttp

from raftkv.chaos.connect import run_session
from raftkv.chaos.recorder import REMOVED_STATE, Recorder, StateSample
from raftkv.chaos.workload import call

__all__ = ["Observer"]


class Observer:
    def __init__(self, members: Callable[[], Mapping[str, str]], recorder: Recorder, interval_s: float = 0.2,
                 timeout_s: float = 0.5) -> None:
        self.members = members  # {member id: client URL}, as the membership is now
        self.recorder = recorder
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.latest: dict[str, dict | None] = {n: None for n in members()}

    def leader_now(self) -> str | None:
        best: tuple[int, str] | None = None
        for node, state in self.latest.items():
            if state and state.get("state") == "leader":
                term = int(state.get("term") or 0)
                if best is None or term > best[0]:
                    best = (term, node)
        return best[1] if best else None

    async def poll_once(self, session: aiohttp.ClientSession) -> None:
        urls = dict(self.members())
        self._forget_members_gone(urls)

        async def one(node: str, url: str) -> None:
            status, data, _, _ = await call(session, "GET", f"{url}/raft-state", None, self.timeout_s)
            t = self.recorder.now()
            if node not in self.members():
                return  # it left while we asked
            if status == 200 and isinstance(data, dict) and data.get("nodeId", node) == node:
                self.latest[node] = data
                self.recorder.sample(StateSample(t, node, data.get("state"), data.get("term"), data.get("leaderId"),
                                                 data.get("commitIndex"), data.get("lastApplied")))
            else:
                self.latest[node] = None
                self.recorder.sample(StateSample(t, node, None, None, None))

        await asyncio.gather(*(one(n, u) for n, u in urls.items()))

    def _forget_members_gone(self, urls: Mapping[str, str]) -> None:
        for node in sorted(set(self.latest) - set(urls)):
            del self.latest[node]
            self.recorder.sample(StateSample(self.recorder.now(), node, REMOVED_STATE, None, None))

    async def run(self, stop: asyncio.Event) -> None:
        async with run_session() as session:
            while not stop.is_set():
                await self.poll_once(session)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval_s)

    async def wait_stable(self, timeout_s: float, need_all: bool = True) -> tuple[bool, str]:
        """Wait until one leader is agreed by every answering node (all nodes, if `need_all`) and
        they have applied the same index as the leader's commit. (ok, description of the last view)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with run_session() as session:
            while True:
                await self.poll_once(session)
                states = {n: s for n, s in self.latest.items() if s}
                leaders = {s.get("leaderId") for s in states.values()}
                roles = [n for n, s in states.items() if s.get("state") == "leader"]
                applied = {s.get("lastApplied") for s in states.values()}
                commits = {s.get("commitIndex") for s in states.values()}
                polled = len(self.latest)
                complete = len(states) == polled or (not need_all and len(states) > polled // 2)
                if (complete and len(leaders) == 1 and None not in leaders and len(roles) == 1
                        and len(applied) == 1 and applied == commits):
                    return True, f"leader {roles[0]}, applied index {applied.pop()} on {len(states)} nodes"
                if loop.time() >= deadline:
                    view = {n: (s and (s.get("state"), s.get("term"), s.get("leaderId"), s.get("commitIndex"),
                                       s.get("lastApplied"))) for n, s in self.latest.items()}
                    return False, f"no stable leader with converged logs within {timeout_s:g}s: {view}"
                await asyncio.sleep(0.1)
