"""The guided tour: the seed's four demos, and replacing a dead machine, as short scripts of
captioned steps, run for real.

Theory of operation
-------------------
A demo is a list of steps. Each step shows a caption, may do one thing to the real cluster
(through `Controls`, exactly like the buttons), and may wait, with a bound, until the nodes
report the expected outcome (a leader in a higher term, a node back as follower, ...). The
captions that describe an outcome are written after it happened, from what the nodes reported,
so they name the real node and the real term. If an expectation is not met in time the tour says
so and stops; it never pretends.

Without a supervisor (a remote cluster), "crash the leader" becomes "cut the leader off", which
shows the same failover, and the caption says which one happened. Replacing a machine starts a new
node process, so that demo needs the supervisor; without one it says so and stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from raftkv.node.members import PROMOTE_MAX_LAG_ENTRIES

from .controls import ControlError, Controls
from .hub import Hub
from .load import LoadGenerator
from .membership import Membership

DWELL_S = 3.0  # time to read a caption (times the slow-motion factor, capped)
WAIT_S = 15.0  # longest wait for the cluster to do what a step expects (times the slow-motion factor)
REPLACE_WRITERS = 4  # the load that runs through the whole "replace a dead machine" demo
REPLACE_LOAD_S = 90

DEMOS = {
    "election": "1. Leader election",
    "failover": "2. Leader failure",
    "partition": "3. Network partition",
    "consistency": "4. Consistency under failures",
    "replace": "5. Replace a dead machine",
}


class TourFailed(Exception):
    pass


class Tour:
    def __init__(self, hub: Hub, controls: Controls, membership: Membership, load: LoadGenerator) -> None:
        self.hub, self.controls, self.membership, self.load = hub, controls, membership, load
        self.task: asyncio.Task | None = None
        self.demo: str | None = None
        self.step = 0

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self, demo: str) -> dict:
        if demo not in DEMOS and demo != "all":
            raise ValueError(f"demo: one of {[*DEMOS, 'all']}")
        if self.running:
            raise RuntimeError("a tour is already running; stop it first")
        self.task = asyncio.get_running_loop().create_task(self._run(demo))
        return {"started": demo}

    async def stop(self) -> None:
        if self.running and self.task is not None:
            self.task.cancel()
            self._say("Tour stopped.", state="stopped")

    # ------------------------------------------------------------------ helpers ------------------

    def _factor(self) -> float:
        return float(self.controls.slowmo_factor)

    def _say(self, caption: str, state: str = "running") -> None:
        self.step += 1
        self.hub.emit({"type": "tour", "demo": self.demo, "title": DEMOS.get(self.demo or "", "Tour"),
                       "step": self.step, "caption": caption, "state": state})

    async def _dwell(self, seconds: float = DWELL_S) -> None:
        await asyncio.sleep(min(seconds * max(1.0, self._factor() / 3), 20.0))

    async def _wait(self, what: str, pred: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
        deadline = time.monotonic() + timeout_s * max(1.0, self._factor() / 2)
        while time.monotonic() < deadline:
            found = pred()
            if found:
                return found
            await asyncio.sleep(0.1)
        raise TourFailed(f"waited {timeout_s:g} s for {what}, and it did not happen")

    def _states(self) -> dict[str, dict]:
        now = time.time()
        return {n.id: n.status for n in self.hub.members() if n.status and n.reach(now) == "ok"}

    def _leader(self, among: set[str] | None = None, above_term: int = -1) -> tuple[str, int] | None:
        """The node every reachable node (in `among`) agrees leads, in a term above `above_term`."""
        states = {i: s for i, s in self._states().items() if among is None or i in among}
        leaders = [(i, s["term"]) for i, s in states.items() if s.get("state") == "leader" and s["term"] > above_term]
        if len(leaders) != 1:
            return None
        leader, term = leaders[0]
        raft_id = self.hub.links[leader].raft_id
        if all(s.get("leaderId") == raft_id and s["term"] == term for s in states.values()):
            return leader, term
        return None

    async def _agreed_leader(self, among: set[str] | None = None, above_term: int = -1) -> tuple[str, int]:
        return await self._wait("one agreed leader", lambda: self._leader(among, above_term))

    # ------------------------------------------------------------------ the demos --------------

    async def _run(self, demo: str) -> None:
        demos = list(DEMOS) if demo == "all" else [demo]
        try:
            for d in demos:
                self.demo, self.step = d, 0
                self.hub.action(f"🎓 tour: {DEMOS[d]}", kind="tour", demo=d)
                await getattr(self, f"_demo_{d}")()
                self._say("Demo finished.", state="done")
                await self._dwell(1.0)
        except (TourFailed, ControlError) as e:
            self._say(f"The tour stopped: {e}", state="failed")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug in a script must not leave the page waiting forever
            self._say(f"The tour stopped on an unexpected error: {type(e).__name__}: {e}", state="failed")

    async def _demo_election(self) -> None:
        self._say("Each node is a follower (circle), a candidate (diamond) or the leader (crown, with a halo). "
                  "A follower's ring is its election timer: heartbeats from the leader refill it.")
        leader, term = await self._agreed_leader()
        await self._dwell()
        follower = next(i for i in self.hub.links if i != leader)
        self._say(f"{leader} leads term {term}. Now we press 🗳️ Force election on {follower}: it will ask for "
                  "votes in a new, higher term.")
        await self._dwell(2.0)
        await self.controls.force_election(follower)
        new_leader, new_term = await self._agreed_leader(above_term=term)
        self._say(f"{new_leader} won term {new_term}: a majority voted for it. Each node votes at most once per "
                  "term, so there can never be two leaders in one term (the safety panel checks this live).")
        await self._dwell()

    async def _crash_or_cut(self, node: str) -> str:
        if self.controls.supervisor is not None:
            await self.controls.process(node, "crash")
            return "crashed (kill -9)"
        await self.controls.isolate(node)
        return "cut off from the network (no supervisor here to crash it)"

    async def _bring_back(self, node: str) -> None:
        if self.controls.supervisor is not None:
            await self.controls.process(node, "restart")
        else:
            await self.controls.heal()

    async def _demo_failover(self) -> None:
        leader, term = await self._agreed_leader()
        self._say(f"{leader} leads term {term}. We make it fail.")
        await self._dwell(2.0)
        how = await self._crash_or_cut(leader)
        others = set(self.hub.links) - {leader}
        self._say(f"{leader} was {how}. The followers stop hearing heartbeats; watch their election timers run out.")
        new_leader, new_term = await self._agreed_leader(others, above_term=term)
        self._say(f"{new_leader} timed out first, asked for votes and won term {new_term}. Two of three nodes are a "
                  "majority, so the cluster keeps working without any help.")
        await self._dwell()
        await self._bring_back(leader)
        how_back = ("It recovers its log and term from disk" if self.controls.supervisor is not None
                    else "The network is healed")
        self._say(f"{leader} comes back. {how_back}; it hears the leader of term {new_term} and follows it, "
                  "catching up on what it missed.")
        await self._wait(f"{leader} to follow again",
                         lambda: (self._states().get(leader) or {}).get("state") == "follower" and self._leader())
        await self._dwell()

    async def _demo_partition(self) -> None:
        leader, term = await self._agreed_leader()
        self._say(f"🔌 We cut the leader {leader} off from its peers, in both directions. Its messages will "
                  "burst where the network drops them.")
        await self._dwell(2.0)
        await self.controls.isolate(leader)
        others = set(self.hub.links) - {leader}
        new_leader, new_term = await self._agreed_leader(others, above_term=term)
        self._say(f"The majority side elected {new_leader} in term {new_term}. {leader}, alone, cannot commit "
                  "anything: without a majority no write can be acknowledged (consistency over availability).")
        await self._wait(f"{leader} to step down",
                         lambda: (self.hub.links[leader].status or {}).get("state") != "leader")
        self._say(f"{leader} noticed it lost contact with a majority and stepped down (check-quorum).")
        await self._dwell()
        await self.controls.heal()
        self._say("🩹 Healed. With pre-vote, the returning node cannot disrupt the leader with an inflated term: "
                  "it simply follows.")
        await self._wait("the whole cluster to agree on one leader", lambda: self._leader())
        await self._dwell()

    async def _demo_consistency(self) -> None:
        leader, term = await self._agreed_leader()
        key = "saldo_cuenta_123"
        r = await self.controls.kv({"op": "put", "key": key, "value": 1000, "node": leader})
        self._say(f"PUT {key} = 1000 through {leader}: acknowledged at revision {r['revision']} only after a "
                  "majority had it on disk.")
        await self._dwell()
        how = await self._crash_or_cut(leader)
        others = set(self.hub.links) - {leader}
        new_leader, _ = await self._agreed_leader(others, above_term=term)
        self._say(f"{leader} was {how}; {new_leader} took over.")
        r = await self.controls.kv({"op": "put", "key": key, "value": 1500, "node": new_leader})
        self._say(f"PUT {key} = 1500 through {new_leader}: revision {r['revision']}.")
        await self._dwell()
        values = {}
        for node in sorted(others):
            got = await self.controls.kv({"op": "get", "key": key, "node": node})
            values[node] = (got["body"] or {}).get("value") if isinstance(got["body"], dict) else got["body"]
        self._say("GET through every node still in the majority: " + ", ".join(f"{n} → {v}" for n, v in values.items())
                  + ". A linearizable read always returns the latest acknowledged write.")
        await self._dwell()
        await self._bring_back(leader)
        await self._wait(f"{leader} to catch up",
                         lambda: ((self.hub.links[leader].kv or {}).get("items") or {}).get(key) == 1500, 20.0)
        self._say(f"{leader} is back and its store shows {key} = 1500 too: the write was never lost.")
        await self._dwell()

    # ------------------------------------------------------------------ replace a dead machine --

    async def _demo_replace(self) -> None:
        if self.controls.supervisor is None:
            raise TourFailed("replacing a machine starts a new node process, which needs the supervisor of `raftkv up`")
        leader, term = await self._agreed_leader()
        started_load = not self.load.running
        if started_load:
            self.load.start(REPLACE_WRITERS, REPLACE_LOAD_S)
        self._say(f"{leader} leads term {term}. Writes flow through the whole demo: {REPLACE_WRITERS} writers keep "
                  "writing through every member (the load panel counts them).")
        await self._dwell(2.0)
        victim = next(v for v in self._voters() if v != leader)
        await self.controls.process(victim, "crash")
        voters = self._voters()
        self._say(f"💥 {victim}'s machine dies for good (kill -9; it will not come back). {len(voters) - 1} of "
                  f"{len(voters)} voters are left: still a majority, so writes go on, but one more failure would "
                  "stop the cluster.")
        await self._dwell()
        await self.membership.remove(victim)
        await self._wait(f"the leader's configuration without {victim}", lambda: victim not in self._voters(True))
        self._say(f"👋 {victim} is removed from the configuration: the voters are now {', '.join(self._voters())}, "
                  f"and a commit needs a majority of those. {victim}'s data directory stays on disk, unused.")
        await self._dwell()
        new = (await self.membership.add(promote=False))["node"]
        self._say(f"🆕 {new} joins as a learner (the pentagon): it receives the log, or a snapshot first if the "
                  "log was compacted, but does not vote, so it cannot hold up a commit while it catches up.")
        match, last = await self._wait(f"{new} to catch up", lambda: self._caught_up(new))
        self._say(f"{new} has caught up: it holds entry {match} of the leader's {last}.")
        await self._dwell(2.0)
        await self.membership.promote(new)
        await self._wait(f"the leader's configuration with {new} a voter", lambda: new in self._voters())
        self._say(f"⬆️ {new} is a voter now: {len(self._voters())} voters again, so the cluster can lose a machine "
                  "once more.")
        await self._dwell()
        if started_load:
            done = await self.load.stop()
            failed = (f"; not acknowledged: {done['errors']} (a write sent to a dead machine gets no answer)"
                      if done["errors"] else "")
            self._say(f"📈 {done['ok']} writes were acknowledged while the machine was replaced{failed}.")
            await self._dwell()

    def _voters(self, removed_too: bool = False) -> list[str]:
        """The voters' names, as the leader's configuration says (with the members the hub knows
        were removed if `removed_too`: the leader's status may not have caught up with it yet)."""
        links = list(self.hub.links.values()) if removed_too else self.hub.members()
        leader = next((n for n in self.hub.members() if (n.status or {}).get("state") == "leader"), None)
        voters = set((leader.status or {}).get("voters") or ()) if leader else set()
        return sorted(n.id for n in links if n.raft_id in voters)

    def _caught_up(self, node: str) -> tuple[int, int] | None:
        """(its match index, the leader's last index) once the leader sees `node` nearly caught up."""
        link = self.hub.links.get(node)
        states = self._states()
        leader = next((s for s in states.values() if s.get("state") == "leader"), None)
        peer = next((p for p in (leader or {}).get("peers") or () if link and p["id"] == link.raft_id), None)
        if peer is None or "lagEntries" not in peer or peer["lagEntries"] > PROMOTE_MAX_LAG_ENTRIES:
            return None
        return peer["matchIndex"], leader["logLength"]
