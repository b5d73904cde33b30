"""The guided tour's runner: captioned steps, done to the real cluster, that wait for the learner.

Theory of operation
-------------------
A demo is a script (classic.py, lab_demos.py, replace.py) of steps written against this runner.
`show(caption)` puts a caption on the page and waits until the person presses Next: a caption is
never replaced by a timer, only by the learner going on. Then the script does one thing to the
real cluster (through `Controls`, the `Lab` and `Membership`, exactly like the buttons) and waits,
with a bound, until the nodes report the expected outcome; while it works, `doing(text)` says what
it is waiting for under the caption, which stays. The captions that describe an outcome are
written after it happened, from what the nodes reported, so they name the real node and term. If
an expectation is not met in time the tour says so and stops; it never pretends.

Going back is the page's: it shows an earlier step's caption and the cluster as it was then, from
the recorded history (nothing is undone on the cluster).

Every demo starts from whatever state the cluster is in: `prepare()` leaves the lab, restores the
snapshot interval, heals the network, resumes paused and restarts stopped nodes (with a supervisor),
and waits for an agreed leader, saying what it had to do. Waits scale with slow motion.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..controls import ControlError, Controls
from ..coordination import CoordinationView
from ..hub import Hub
from ..lab import Lab
from ..load import LoadGenerator
from ..membership import Membership

WAIT_S = 15.0  # longest wait for the cluster to do what a step expects (times the slow-motion factor)

Demo = Callable[["Tour"], Awaitable[None]]


class TourFailed(Exception):
    pass


class Tour:
    def __init__(self, hub: Hub, controls: Controls, lab: Lab, membership: Membership, load: LoadGenerator,
                 coordination: CoordinationView, demos: dict[str, tuple[str, Demo]]) -> None:
        self.hub, self.controls, self.lab, self.membership, self.load = hub, controls, lab, membership, load
        self.coordination = coordination  # the leases, locks and watch the page shows (service discovery)
        self.demos = demos
        self.task: asyncio.Task | None = None
        self.demo: str | None = None
        self.step = 0
        self._caption = ""
        self._next: asyncio.Event | None = None  # set while a caption waits for the learner

    # ------------------------------------------------------------------ the person's side -------

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def titles(self) -> dict[str, str]:
        return {name: title for name, (title, _) in self.demos.items()}

    def start(self, demo: str) -> dict:
        if demo not in self.demos and demo != "all":
            raise ControlError(400, f"demo: one of {[*self.demos, 'all']}", field="demo")
        if self.running:
            raise ControlError(409, "a tour is already running: go on with Next, or stop it first")
        self.task = asyncio.get_running_loop().create_task(self._run(demo))
        return {"started": demo}

    def next(self) -> dict:
        if not self.running:
            raise ControlError(409, "no tour is running: start one first")
        if self._next is None or self._next.is_set():
            raise ControlError(409, "the tour is still carrying out its step; Next works once it waits for you")
        self._next.set()
        return {"step": self.step}

    async def stop(self) -> bool:
        """Whether a tour was running (and is stopped now)."""
        if not self.running:
            return False
        assert self.task is not None
        self.task.cancel()
        # Not the step's caption again: its "Next: ..." would promise what will not happen now.
        self._emit(f"Tour stopped after step {self.step}. The cluster stays as the tour left it: restart or heal "
                   "what it broke, or run a tour, which mends what it finds before it starts.", "stopped")
        return True

    # ------------------------------------------------------------------ for the scripts ---------

    async def show(self, caption: str) -> None:
        """Put `caption` on the page and wait until the learner presses Next."""
        self.step += 1
        self._caption = caption
        self._next = asyncio.Event()
        self._emit(caption, "waiting")
        await self._next.wait()
        self._emit(caption, "working", doing="…")

    def doing(self, text: str) -> None:
        """What the step is doing or waiting for, under the caption (which stays)."""
        self._emit(self._caption, "working", doing=text)

    def speed(self) -> float:
        return float(self.lab.speed)

    async def wait(self, what: str, pred: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
        self.doing(f"waiting for {what}…")
        bound = timeout_s * max(1.0, self.speed() / 2)
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            found = pred()
            if found:
                return found
            await asyncio.sleep(0.05)
        raise TourFailed(f"waited {bound:g} s for {what}, and it did not happen")

    def states(self) -> dict[str, dict]:
        """The latest status of each member the dashboard reaches now."""
        now = time.time()
        return {n.id: n.status for n in self.hub.members() if n.status and n.reach(now) == "ok"}

    def leader(self, among: set[str] | None = None, above_term: int = -1) -> tuple[str, int] | None:
        """The node every reachable member (in `among`) agrees leads, in a term above `above_term`."""
        states = {i: s for i, s in self.states().items() if among is None or i in among}
        leaders = [(i, s["term"]) for i, s in states.items() if s.get("state") == "leader" and s["term"] > above_term]
        if len(leaders) != 1:
            return None
        leader, term = leaders[0]
        raft_id = self.hub.links[leader].raft_id
        if all(s.get("leaderId") == raft_id and s["term"] == term for s in states.values()):
            return leader, term
        return None

    async def agreed_leader(self, among: set[str] | None = None, above_term: int = -1) -> tuple[str, int]:
        return await self.wait("one leader every node agrees on", lambda: self.leader(among, above_term))

    def voters(self, removed_too: bool = False) -> list[str]:
        """The voters' names, as the leader's configuration says (with the members the hub knows
        were removed if `removed_too`: the leader's status may not have caught up with it yet)."""
        links = list(self.hub.links.values()) if removed_too else self.hub.members()
        leader = next((n for n in self.hub.members() if (n.status or {}).get("state") == "leader"), None)
        voters = set((leader.status or {}).get("voters") or ()) if leader else set()
        return sorted(n.id for n in links if n.raft_id in voters)

    def followers(self, leader: str) -> list[str]:
        """The voters other than `leader` that the dashboard reaches."""
        reached = self.states()
        return [v for v in self.voters() if v != leader and v in reached]

    def status(self, node: str) -> dict:
        link = self.hub.links.get(node)
        return (link.status or {}) if link is not None else {}

    def role(self, node: str) -> tuple[str | None, int]:
        s = self.status(node)
        return s.get("state"), int(s.get("term", 0))

    async def ask_state(self, node: str) -> dict:
        """A node's /raft-state, read now (not the status of up to a quarter second ago)."""
        status, state = await self.controls.call(self.controls.link(node), "GET", "/raft-state")
        if status != 200 or not isinstance(state, dict):
            raise TourFailed(f"{node} did not give its state (HTTP {status})")
        return state

    async def crash_or_cut(self, node: str) -> str:
        if self.controls.supervisor is not None:
            await self.controls.process(node, "crash")
            return "crashed (kill -9)"
        await self.controls.isolate(node)
        return "cut off from the network (no supervisor here to crash it)"

    async def bring_back(self, node: str) -> str:
        if self.controls.supervisor is not None:
            await self.controls.process(node, "restart")
            return "It recovered its log and term from its disk"
        await self.controls.heal()
        return "The network is healed"

    def need_supervisor(self, why: str) -> None:
        if self.controls.supervisor is None:
            raise TourFailed(f"this demo {why}, which needs the supervisor of `raftkv up`")

    # ------------------------------------------------------------------ running ------------------

    def _emit(self, caption: str, state: str, doing: str | None = None) -> None:
        title = self.demos[self.demo][0] if self.demo in self.demos else "Tour"
        self.hub.emit({"type": "tour", "demo": self.demo, "title": title, "step": self.step, "caption": caption,
                       "state": state, "doing": doing})

    async def _run(self, demo: str) -> None:
        names = list(self.demos) if demo == "all" else [demo]
        try:
            for k, name in enumerate(names):
                title, script = self.demos[name]
                self.demo, self.step = name, 0
                self.hub.action(f"tour: {title}", kind="tour", icon="tour", demo=name)
                await script(self)
                if k + 1 < len(names):
                    await self.show(f"Demo finished. Next: {self.demos[names[k + 1]][0]}.")
            self.step += 1
            self._emit("Demo finished." if demo != "all" else "The tour is over: every demo ran.", "done")
        except (TourFailed, ControlError) as e:
            self.step += 1
            self._emit(f"The tour stopped: {e}", "failed")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug in a script must not leave the page waiting forever
            self.step += 1
            self._emit(f"The tour stopped on an unexpected error: {type(e).__name__}: {e}", "failed")
        finally:
            self._next = None
            await self.lab.leave_quietly()
            await self.lab.restore_snapshot_every()

    async def prepare(self) -> str:
        """Bring the cluster to health from whatever state it is in; the words say what it took."""
        done: list[str] = []
        if self.lab.active:
            await self.lab.leave_quietly()
            done.append("left the lab")
        await self.lab.restore_snapshot_every()
        if any(_has_faults(s) for s in self.states().values()):
            self.doing("healing the network…")
            await self.controls.heal_quietly()
            done.append("healed the network")
        sup = self.controls.supervisor
        if sup is not None:
            for link in self.hub.members():
                proc = sup.nodes.get(link.id)
                if proc is None:
                    continue
                if proc.paused:
                    await self.controls.process(link.id, "resume")
                    done.append(f"resumed {link.id}")
                elif not proc.running:
                    await self.controls.process(link.id, "start")
                    done.append(f"restarted {link.id}")
        await self.wait("every member to answer", self._all_answer)
        await self.agreed_leader()
        return f"Before the demo the tour {_and(done)}. " if done else ""

    def _all_answer(self) -> bool:
        reached = self.states()
        return all(link.id in reached for link in self.hub.members())


def _has_faults(state: dict) -> bool:
    f = state.get("faults") or {}
    return bool(f.get("isolated") or f.get("partitioned") or f.get("cut_outbound") or f.get("cut_inbound")
                or f.get("loss_percent") or f.get("delay_ms"))


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
