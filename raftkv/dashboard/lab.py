"""The lab: hold-and-step delivery, held clocks, slow motion and the snapshot interval, on real nodes.

Theory of operation
-------------------
Every node offers the lab's routes (`GET /lab`, `POST /lab`, `/lab/release`, `/lab/drop`: see
raftkv/node/host.py); this module drives them for the whole cluster at once.

* Hold-and-step: `enter()` sets `holding` and `clockHeld` on every member. From then on each
  node's outgoing Raft messages wait, numbered, at the sender, and nothing times out. While the lab
  is on, every member's `GET /lab` is read every `POLL_S`; their held messages are merged into one
  queue, oldest first, and sent to the pages as a `lab` event whenever it changes. The person (or a
  tour) delivers or drops any message of the queue, in any order, one at a time, or lets them flow
  at a rate (`set_rate`: a number a second, or "live", which turns holding off while the lab stays
  on). A delivered message is sent on by its node and reported to the pages as a `msg` event marked
  `lab: "delivered"`, so the page draws it travelling only then. `leave()` turns holding and the
  held clocks off everywhere (the nodes send what they still held) and the cluster carries on.
* A held vote message says whether it is a pre-vote (its term is then the one its sender would
  use), so the queue labels and draws it apart from a vote.
* A held clock can be let go for one node until it starts a campaign (`time_out`): that is how a
  person makes a chosen follower time out, or two at once for a split vote.
* Slow motion: the tick length of every member, at run time (`set_speed`): no restart, no new term.
  A node added later starts at the same speed (`new_node_args`); a node restarted meanwhile is set
  to it as soon as its status shows another tick. Likewise, while the lab is on, a member that came
  back is made to hold its messages and its clock like the others (`_conform`).
* The snapshot interval of every member (`set_snapshot_every`), lowered for the snapshot demo and
  restored afterwards (`restore_snapshot_every`).

The lab needs the supervisor of `raftkv up`: it is for a cluster the dashboard runs, not for one it
only watches. One change at a time; a person's change while another runs is a 409.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from .controls import REFUSED, ControlError, Controls, error_text
from .hub import Hub, NodeLink
from .schema import message_label

__all__ = ["SLOWMO_MAX_FACTOR", "Lab"]

POLL_S = 0.15
QUEUE_SHOWN = 80  # held messages sent to the pages (the count says how many more)
DEFAULT_TICK_MS = 20  # raftkv node's --tick-ms
MAX_TICK_MS = 1000  # the nodes' own bound (POST /lab tickMs)
SLOWMO_MAX_FACTOR = MAX_TICK_MS // DEFAULT_TICK_MS
TIME_OUT_WAIT_S = 5.0  # a node whose clock was let go campaigns within two election timeouts
RATES = ("step", 0.5, 1, 2, 5, "live")

NO_SUPERVISOR = ("the lab (hold-and-step, held clocks, slow motion, the snapshot interval) is for a cluster that "
                 "`raftkv up` runs; this dashboard only watches a cluster it did not start")


class Lab:
    def __init__(self, hub: Hub, controls: Controls) -> None:
        self.hub, self.controls = hub, controls
        self.active = False
        self.clock_held = False
        self.rate: str | float = "step"
        self.queue: list[dict] = []
        self.speed = 1  # slow-motion factor
        self.snapshot_every: int | None = None  # lowered by the lab, until restored
        self._snapshot_every_before: dict[str, int] = {}
        self._campaigned: dict[str, asyncio.Event] = {}
        self._retuning: set[str] = set()  # nodes whose tick is being set to the cluster's speed
        self._poller: asyncio.Task | None = None
        self._flow: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        hub.listeners.append(self._on_node_event)

    # ------------------------------------------------------------------ what the page sees ------

    @property
    def available(self) -> bool:
        return self.controls.supervisor is not None

    def describe(self) -> dict[str, Any]:
        return {"available": self.available, "why": None if self.available else NO_SUPERVISOR,
                "active": self.active, "clockHeld": self.clock_held, "rate": self.rate, "rates": list(RATES),
                "speed": self.speed, "maxSpeed": SLOWMO_MAX_FACTOR,
                "snapshotEvery": self.snapshot_every}

    def slowmo_info(self) -> dict[str, Any]:
        """The slow-motion part, as /api/state and each tick carry it."""
        return {"slowmo": {"factor": self.speed, "busy": False, "available": self.available,
                           "why": None if self.available else NO_SUPERVISOR}}

    def for_page(self) -> dict[str, Any]:
        """The lab's settings and its queue (the oldest `QUEUE_SHOWN` held messages, and how many)."""
        return {**self.describe(), "queue": self.queue[:QUEUE_SHOWN], "held": len(self.queue)}

    def _publish(self) -> None:
        self.hub.emit({"type": "lab", **self.for_page()})

    # ------------------------------------------------------------------ hold-and-step -----------

    async def enter(self) -> dict:
        async with self._one_change():
            self.hub.action("lab: hold-and-step on. Every Raft message now waits at its sender until it is "
                            "delivered or dropped, and no node's clock moves", kind="lab", icon="lab")
            try:
                await self._set_all({"holding": True, "clockHeld": True})
            except ControlError:  # a node refused: the ones that did not must not go on holding
                with contextlib.suppress(ControlError):
                    await self._set_all({"holding": False, "clockHeld": False})
                raise
            self.active, self.clock_held, self.rate = True, True, "step"
            self._start_poller()
            self._publish()
            return self.describe()

    async def leave(self) -> dict:
        async with self._one_change():
            await self._leave()
            return self.describe()

    async def leave_quietly(self) -> None:
        """Leave the lab if it is on (a tour starting, the dashboard stopping)."""
        if self.active:
            async with self._lock:
                with contextlib.suppress(ControlError):  # refused: nothing more a quiet leave can do
                    await self._leave()

    async def _leave(self) -> None:
        self.hub.action("lab: hold-and-step off; every held message is sent and the clocks run again",
                        kind="lab", icon="lab")
        self._stop_flow()
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        await self._set_all({"holding": False, "clockHeld": False})
        self.active, self.clock_held, self.rate, self.queue = False, False, "step", []
        self._publish()

    async def set_clock(self, held: bool) -> dict:
        async with self._one_change():
            self._need_active()
            self.hub.action("lab: the clocks are held: nothing times out" if held
                            else "lab: the clocks run: timers tick again", kind="lab", icon="clock")
            self.clock_held = held  # first: the poller makes members conform to it (_conform)
            await self._set_all({"clockHeld": held})
            self._publish()
            return self.describe()

    async def time_out(self, node: str) -> dict:
        """Let `node`'s clock run until it starts a campaign, then hold it again."""
        async with self._one_change():
            self._need_active()
            link = self.controls.link(node)
            self.hub.action(f"lab: {node}'s clock runs until it times out and campaigns", kind="lab",
                            icon="clock", target=node)
            started = self._campaigned[link.raft_id] = asyncio.Event()
            await self._post(link, "/lab", {"clockHeld": False})
            try:
                await asyncio.wait_for(started.wait(), TIME_OUT_WAIT_S * self.speed)
            except TimeoutError:
                raise ControlError(409, f"{node} did not time out within {TIME_OUT_WAIT_S * self.speed:g} s "
                                        "(a learner or a leader never does)") from None
            finally:
                self._campaigned.pop(link.raft_id, None)
                if self.clock_held:
                    await self._post(link, "/lab", {"clockHeld": True})
            return {"node": node, "campaigned": True}

    async def hold_clock_of(self, node: str, held: bool) -> None:
        """One node's clock held or let go, outside hold-and-step (a cut-off leader whose clock is
        held never notices it lost its majority, so it goes on accepting writes it cannot commit)."""
        self._need_supervisor()
        async with self._lock:
            self.hub.action(f"lab: {node}'s clock is held: nothing times out on it" if held
                            else f"lab: {node}'s clock runs again", kind="lab", icon="clock", target=node)
            await self._post(self.controls.link(node), "/lab", {"clockHeld": held})

    async def set_rate(self, rate: Any) -> dict:
        if rate not in RATES:
            raise ControlError(400, f"rate: one of {list(RATES)} (messages a second, step by hand, or live)",
                               field="rate")
        async with self._one_change():
            self._need_active()
            was_live = self.rate == "live"
            self._stop_flow()
            self.rate = rate  # first: the poller makes members conform to it (_conform)
            if rate == "live" and not was_live:
                await self._set_all({"holding": False})
            elif rate != "live" and was_live:
                await self._set_all({"holding": True})
            if isinstance(rate, (int, float)):
                self._flow = asyncio.get_running_loop().create_task(self._flow_at(float(rate)))
            words = {"step": "one at a time, by hand", "live": "as they are sent (live)"}.get(str(rate),
                                                                                                f"{rate} a second")
            self.hub.action(f"lab: held messages are delivered {words}", kind="lab", icon="lab")
            self._publish()
            return self.describe()

    async def deliver(self, ids: list[str]) -> dict:
        """Send these held messages on, in the order given."""
        async with self._one_change():
            self._need_active()
            return {"delivered": await self._deliver(ids)}

    async def drop(self, ids: list[str]) -> dict:
        async with self._one_change():
            self._need_active()
            dropped = 0
            for held in self._chosen(ids):
                status, answer = await self._call(held["node"], "POST", "/lab/drop", {"numbers": [held["number"]]})
                if status == 200 and answer.get("dropped"):
                    dropped += 1
                    self.hub.action(f"lab: dropped {held['srcName']}'s {held['label']} to {held['dstName']} "
                                    f"(term {held['term']})", kind="lab-drop", icon="drop")
            await self._poll_once()
            return {"dropped": dropped}

    async def _deliver(self, ids: list[str]) -> int:
        delivered = 0
        for held in self._chosen(ids):
            status, answer = await self._call(held["node"], "POST", "/lab/release", {"numbers": [held["number"]]})
            if status == 200 and answer.get("released"):
                delivered += 1
                self.hub.emit({"type": "msg", "src": held["src"], "dst": held["dst"], "kind": held["type"],
                               "count": 1, "entries": held["entries"], "term": held["term"], "dropped": False,
                               "preVote": held["preVote"], "lab": "delivered", "via": held["node"],
                               "text": f"lab: delivered {held['srcName']}'s {held['label']} to {held['dstName']} "
                                       f"(term {held['term']})"})
        await self._poll_once()
        return delivered

    def _chosen(self, ids: list[str]) -> list[dict]:
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ControlError(400, "ids: a list of held messages' ids, as the queue shows them", field="ids")
        by_id = {h["id"]: h for h in self.queue}
        return [by_id[i] for i in ids if i in by_id]

    def oldest(self, match: Callable[[dict], bool] = lambda _: True) -> dict | None:
        """The oldest held message that `match`es (a tour picks what it delivers)."""
        return next((h for h in self.queue if match(h)), None)

    async def _flow_at(self, per_second: float) -> None:
        while True:
            await asyncio.sleep(1 / per_second)
            head = self.oldest()
            if head is not None:
                async with self._lock:
                    await self._deliver([head["id"]])

    def _stop_flow(self) -> None:
        if self._flow is not None:
            self._flow.cancel()
            self._flow = None

    # ------------------------------------------------------------------ the queue ---------------

    def _start_poller(self) -> None:
        async def poll() -> None:
            while True:
                await self._poll_once()
                await asyncio.sleep(POLL_S)

        self._poller = asyncio.get_running_loop().create_task(poll())

    async def _poll_once(self) -> None:
        members = [link for link in self.hub.members() if link.reach(time.time()) == "ok"]
        reads = await asyncio.gather(*(self._read_lab(link) for link in members))
        queue = [self._held_view(link, h) for link, read in zip(members, reads, strict=True)
                 for h in (read or {}).get("held", [])]
        queue.sort(key=lambda h: (h["heldAt"], h["node"], h["number"]))
        if [(h["id"], h["preVote"]) for h in queue] != [(h["id"], h["preVote"]) for h in self.queue]:
            self.queue = queue
            self._publish()

    async def _read_lab(self, link: NodeLink) -> dict | None:
        with contextlib.suppress(ControlError):
            status, answer = await self.controls.call(link, "GET", "/lab", timeout_s=1.0)
            if status == 200 and isinstance(answer, dict):
                await self._conform(link, answer)
                return answer
        return None

    async def _conform(self, link: NodeLink, read: dict) -> None:
        """A member that came back (restarted, or added) gets the lab's settings: holding as the
        others do, its clock held (unless it is being let time out), the cluster's speed."""
        want = {"holding": self.rate != "live", "clockHeld": self.clock_held and link.raft_id not in self._campaigned,
                "tickMs": self._base_tick() * self.speed}
        change = {k: v for k, v in want.items() if k in read and read[k] != v}
        if change:
            with contextlib.suppress(ControlError):
                await self._post(link, "/lab", change)

    def _held_view(self, link: NodeLink, held: dict) -> dict:
        pre_vote = bool(held.get("preVote"))
        label, glyph = message_label(held["type"], pre_vote)
        return {"id": f"{link.id}:{held['number']}", "node": link.id, "number": held["number"], "type": held["type"],
                "src": held["src"], "dst": held["dst"], "srcName": self._name(held["src"]),
                "dstName": self._name(held["dst"]), "term": held["term"], "entries": held["entries"],
                "heldAt": held["heldAt"], "preVote": pre_vote, "label": label, "glyph": glyph}

    def _name(self, raft_id: str) -> str:
        link = self.hub.by_raft_id(raft_id)
        return link.id if link is not None else self.hub.named(raft_id)

    def _on_node_event(self, link: NodeLink, ev: dict) -> None:
        if ev.get("type") == "trace" and ev.get("kind") == "campaign":
            started = self._campaigned.get(link.raft_id)
            if started is not None:
                started.set()
        elif ev.get("type") == "status" and self.speed != 1 and link.id not in self._retuning:
            # A node restarted in slow motion comes back at its configured tick: slow it down too.
            tick = (ev.get("state") or {}).get("tickMs")
            if tick is not None and tick != self._base_tick() * self.speed:
                self._retuning.add(link.id)
                task = asyncio.get_running_loop().create_task(self._retune(link))
                task.add_done_callback(lambda _: self._retuning.discard(link.id))

    async def _retune(self, link: NodeLink) -> None:
        with contextlib.suppress(ControlError):
            await self._post(link, "/lab", {"tickMs": self._base_tick() * self.speed})

    # ------------------------------------------------------------------ slow motion -------------

    async def set_speed(self, factor: int) -> dict:
        """Every member's tick `factor` times its normal length, at run time: no restart, no new term."""
        self._need_supervisor()
        if not 1 <= factor <= SLOWMO_MAX_FACTOR:
            raise ControlError(400, f"factor: an integer from 1 to {SLOWMO_MAX_FACTOR}", field="factor")
        async with self._one_change():
            word = "normal speed" if factor == 1 else f"slow motion x{factor}"
            self.hub.action(f"{word}: every node's tick is now {DEFAULT_TICK_MS * factor} ms, changed while it runs "
                            "(no restart, no new term)", kind="slowmo", icon="slow", factor=factor)
            before, self.speed = self.speed, factor  # first: a status with the old tick is then retuned
            tick, done = self._base_tick() * factor, {}
            for link in self.hub.members():
                try:
                    await self._post(link, "/lab", {"tickMs": tick})
                    done[link.id] = tick
                except ControlError as e:  # a node that is down gets it when it is back; a refusal is said
                    if e.status in REFUSED and not done:
                        self.speed = before
                        raise
            self._publish()
            return {"factor": factor, "tickMs": done}

    def _base_tick(self) -> int:
        sup = self.controls.supervisor
        return tick_ms(sup.node_args) if sup is not None else DEFAULT_TICK_MS

    def new_node_args(self, sup: Any) -> list[str]:
        """A new node's arguments: the supervisor's, at the cluster's current speed."""
        return at_speed(sup.node_args, self.speed)

    # ------------------------------------------------------------------ snapshots ---------------

    async def set_snapshot_every(self, entries: int) -> dict:
        """Every member takes a snapshot each `entries` applied entries (until restored)."""
        self._need_supervisor()
        if not isinstance(entries, int) or isinstance(entries, bool) or not 1 <= entries <= 10_000_000:
            raise ControlError(400, "every: an integer from 1 to 10000000", field="every")
        async with self._one_change():
            self.hub.action(f"lab: every node takes a snapshot each {entries} entries", kind="lab", icon="snap")
            for link in self.hub.members():
                status, answer = await self._call(link.id, "GET", "/lab")
                if status == 200 and link.id not in self._snapshot_every_before:
                    self._snapshot_every_before[link.id] = answer["snapshotEvery"]
                await self._post(link, "/lab", {"snapshotEvery": entries})
            self.snapshot_every = entries
            self._publish()
            return self.describe()

    async def restore_snapshot_every(self) -> None:
        async with self._lock:
            before, self._snapshot_every_before = self._snapshot_every_before, {}
            self.snapshot_every = None
            for node, entries in before.items():
                if node in self.hub.links:
                    with contextlib.suppress(ControlError):
                        await self._post(self.hub.links[node], "/lab", {"snapshotEvery": entries})
            if before:
                self.hub.action("lab: each node's snapshot interval is back to what it was", kind="lab", icon="snap")
                self._publish()

    # ------------------------------------------------------------------ helpers -----------------

    def _need_supervisor(self) -> None:
        if not self.available:
            raise ControlError(501, NO_SUPERVISOR, unavailable="lab")

    def _need_active(self) -> None:
        self._need_supervisor()
        if not self.active:
            raise ControlError(409, "the lab is off: turn hold-and-step on first")

    def _one_change(self) -> asyncio.Lock:
        self._need_supervisor()
        if self._lock.locked():
            raise ControlError(409, "the lab is already changing something; wait for it to finish")
        return self._lock

    async def _set_all(self, body: dict) -> None:
        """POST /lab to every member the dashboard reaches (a crashed one holds nothing). A node
        that refuses the person (401, 403: no permission, or fault injection off) is not a node
        that is down: that refusal is raised, after the others were asked."""
        refusal = None
        for link in self.hub.members():
            if link.reach(time.time()) != "unreachable":
                try:
                    await self._post(link, "/lab", body)
                except ControlError as e:
                    refusal = refusal or (e if e.status in REFUSED else None)
        if refusal is not None:
            raise refusal

    async def _post(self, link: NodeLink, path: str, body: dict) -> dict:
        status, answer = await self.controls.call(link, "POST", path, body)
        if status >= 400:
            raise ControlError(status, f"{link.id} refused the lab's change: {error_text(answer)}", node=link.id)
        return answer

    async def _call(self, node: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        try:
            return await self.controls.call(self.controls.link(node), method, path, body)
        except ControlError as e:
            return e.status, {"error": e.message}


def tick_ms(args: list[str]) -> int:
    return int(args[args.index("--tick-ms") + 1]) if "--tick-ms" in args else DEFAULT_TICK_MS


def at_speed(original: list[str], factor: int) -> list[str]:
    """A node's arguments with its tick `factor` times its original one."""
    args, skip = [], False
    for a in original:
        if skip or a == "--tick-ms":
            skip = not skip
            continue
        args.append(a)
    if factor != 1 or "--tick-ms" in original:
        args += ["--tick-ms", str(tick_ms(original) * factor)]
    return args

