"""The dashboard's view of the cluster: one watcher per node, fanned out to every open browser.

Theory of operation
-------------------
For each node the hub keeps a `NodeLink`: a WebSocket to the node's `GET /raft/events` (reconnected
with capped exponential backoff and jitter) and a poller of its `GET /metrics`. Every event a
node publishes (trace events in plain words, messages sent or dropped, periodic status with KV
contents, fault changes) is stamped with a dashboard sequence number and receipt time, recorded,
and sent to each browser. The hub adds events of its own: reachability, per-link message rates,
metric rates for the charts, safety-check results, each node's true log (logwatch.py), the lab's
queue of held messages (lab.py) and what the person did (actions). Failures to reach a node are
told in plain words (words.py).

The set of nodes follows the cluster's membership. When the leader's status shows another
configuration (its voters and learners), the hub reads the leader's `GET /members` and starts
watching each new member under its name, at its client URL; a member the cluster removed (its id
in `removedIDs`) is marked removed, drawn as such for `REMOVED_LINGER_S`, and then no longer
watched. Each change of the set goes to the pages as a `nodes` event, and node texts name members
by name rather than by their long ids (`node4`, not `node4-9f3c...`).

Reachability is the dashboard's own knowledge and is kept apart from the node's: "cannot reach"
means the dashboard's connection failed or went silent (the node may be crashed, paused, or the
dashboard's own network may be at fault); "partitioned" is what the node itself reports about
its Raft links in its status (`faults`). A node can be partitioned yet perfectly reachable.

Everything is bounded, in count and in bytes. An event is encoded to JSON once, when it is
emitted; that text is what is recorded, sent to browsers and exported, and its length is what the
byte bounds count (a node's status is small however large its values: see raftkv/node/preview.py).
The recorder keeps the newest events within `RECORD_MAX_EVENTS` and `RECORD_MAX_BYTES`, dropping
the oldest. A node's status (four a second) is recorded only when something the page draws from
it changed, or `STATUS_RECORD_EVERY_S` after the last one recorded: scrubbing the timeline still
finds each node's picture at any moment, without a copy per quarter second. Every status still goes
to the open pages, marked `"recorded": false` when it was not kept, so a page can keep the same
history. Messages are recorded too, so a replay can draw them: every one while few flow, and under
load one per `MSG_RECORD_EVERY_S` for each link, type and outcome (heartbeats, sent all the time,
one per `HEARTBEAT_RECORD_EVERY_S`), carrying how many like it were
left out (`skipped`), so the page can say the picture is sampled. A newly opened page's `hello`
carries the newest recorded events (not messages or ticks) within `HELLO_MAX_EVENTS` and
`HELLO_MAX_BYTES`. Events go to browsers in batches every `FLUSH_S`
seconds, so a busy cluster is not a frame per message; each browser's queue holds at most
`CLIENT_QUEUE_FRAMES` frames and `CLIENT_QUEUE_BYTES`, and a page that cannot keep up loses its
oldest frames.

Whose credentials a node call carries. The hub watches with the dashboard's own (`access`: what
`raftkv dashboard --user/--token` gave it), on `session`. A call made because a person asked for
something (a write, a partition, the lab, a tour, the load) goes through `act()` on
`action_session`, with the credentials `ACTING_FOR` names: the person logged in on that browser
(sessions.py sets it for each request, and tasks a request starts inherit it), or none at all for a
browser nobody logged in on. Only what the dashboard does of its own accord, with no request behind
it (leaving the lab as it stops), falls back on its own credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import json
import logging
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar
from urllib.parse import urlsplit

import aiohttp

from raftkv import promtext
from raftkv.client import NO_ACCESS, Access, Credentials

from .logwatch import LogWatcher
from .safety import SafetyChecker
from .schema import schema
from .words import plain_error

log = logging.getLogger("raftkv.dashboard")

MIB = 1024 * 1024
RECORD_MAX_EVENTS = 100_000
RECORD_MAX_BYTES = 32 * MIB
STATUS_RECORD_EVERY_S = 2.0  # an unchanged status is still recorded this often
HELLO_MAX_EVENTS = 5000  # recent events (not messages) a newly opened page receives, so its timeline has a past
HELLO_MAX_BYTES = 2 * MIB
CLIENT_QUEUE_FRAMES = 400
CLIENT_QUEUE_BYTES = 16 * MIB
FLUSH_S = 0.05
TICK_S = 0.5
METRICS_EVERY_S = 1.0
SILENT_AFTER_S = 1.5  # connected, yet no status for this long: the node is not answering
REMOVED_LINGER_S = 5.0  # a removed member stays on the page, marked removed, this long
MEMBERS_TIMEOUT_S = 2.0
ADDED_MEMBER_ID = re.compile(r"\b([A-Za-z0-9][A-Za-z0-9_.-]*)-[0-9a-f]{16}\b")
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.2, 3.0
# Status fields that move with nothing happening (clocks, counters): a status that differs from
# the last recorded one only in these shows the page nothing new.
STATUS_CLOCK_FIELDS = frozenset({"electionElapsed", "heartbeatElapsed", "uptime", "transport", "storage"})
PEER_CLOCK_FIELDS = frozenset({"lastContact", "ticksSinceContact", "recentActive"})
NOT_IN_HELLO = frozenset({"msg", "tick"})  # too many to replay usefully
MSG_RECORD_EVERY_S = 0.1  # under load, a link's messages of one type are recorded at most this often
# Heartbeats go out every two ticks whether or not anything happens: kept that often they would fill
# the recorder with one picture repeated, crowding out what does happen.
HEARTBEAT_RECORD_EVERY_S = 1.0
HEARTBEAT_KINDS = frozenset({"HeartbeatRequest", "HeartbeatResponse"})
LOG_REFRESH_KINDS = frozenset({"truncate", "snapshot_installed", "compact"})  # trace kinds that change a log

T = TypeVar("T")


@dataclass(frozen=True)
class Acting:
    """Whom a node call made for a browser request speaks for: a person logged in (their token), or
    nobody (no credentials: the nodes decide as they would for any anonymous client)."""

    user: str | None = None
    credentials: Credentials | None = field(default=None, repr=False)

    def headers(self) -> dict[str, str]:
        return {} if self.credentials is None else {"Authorization": self.credentials.authorization()}


NOBODY = Acting()
# Set for each browser request (sessions.py); None: no request is behind the call (the dashboard's own).
ACTING_FOR: contextvars.ContextVar[Acting | None] = contextvars.ContextVar("raftkv_dashboard_acting_for",
                                                                         default=None)


class BoundedLog(Generic[T]):
    """The newest items, at most `max_items` of them and at most `max_bytes` together; appending
    past either bound drops the oldest. `size(item)` must be cheap and always give the same answer
    for an item (here: the length of a text already encoded)."""

    def __init__(self, max_items: int, max_bytes: int, size: Callable[[T], int]) -> None:
        assert max_items > 0 and max_bytes > 0
        self.max_items, self.max_bytes = max_items, max_bytes
        self._size = size
        self._items: deque[T] = deque()
        self.bytes = 0
        self.dropped = 0

    def append(self, item: T) -> None:
        self._items.append(item)
        self.bytes += self._size(item)
        while len(self._items) > self.max_items or self.bytes > self.max_bytes:
            self.popleft()
            self.dropped += 1

    def popleft(self) -> T:
        item = self._items.popleft()
        self.bytes -= self._size(item)
        return item

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def __reversed__(self) -> Iterator[T]:
        return reversed(self._items)

    def describe(self) -> dict[str, int]:
        return {"events": len(self._items), "bytes": self.bytes, "maxEvents": self.max_items,
                "maxBytes": self.max_bytes, "dropped": self.dropped}


class Recorded(NamedTuple):
    type: str
    json: str  # the event as browsers receive it and the export writes it


def status_picture(state: dict, kv: dict | None) -> tuple:
    """What the page draws from a node's status: all of it but the clocks and counters."""
    still = {k: v for k, v in state.items() if k not in STATUS_CLOCK_FIELDS}
    still["peers"] = [{k: v for k, v in p.items() if k not in PEER_CLOCK_FIELDS} for p in state.get("peers") or ()]
    return still, kv


def encoded_frame(head: dict, events: list[str]) -> str:
    """`head` as a JSON object with an "events" list of events already encoded (not encoded again)."""
    assert head, "an empty head would leave a comma before events"
    return json.dumps(head, default=str)[:-1] + ',"events":[' + ",".join(events) + "]}"


@dataclass
class NodeLink:
    id: str
    url: str
    raft_id: str
    connected: bool = False
    error: str | None = "not connected yet"
    last_heard: float | None = None  # wall time of the last frame from the node
    connected_since: float | None = None
    status: dict | None = None
    kv: dict | None = None
    rates: promtext.RateTracker = field(default_factory=promtext.RateTracker)
    metrics: dict | None = None
    attempts: int = 0
    newest_t: float = 0.0  # node time of the newest event seen: a reconnect replays the node's recent ring
    replay_before: float = 0.0  # during this connection, events stamped at or before this are replays
    recorded_picture: tuple | None = None  # what the page draws from the last status recorded
    recorded_at: float = 0.0  # monotonic time that status was recorded
    removed_at: float | None = None  # monotonic time the hub learned the cluster removed this member

    def describe(self) -> dict:
        return {"id": self.id, "url": self.url, "raftId": self.raft_id, "removed": self.removed_at is not None}

    def status_worth_recording(self, state: dict, kv: dict | None) -> bool:
        """Whether this status shows the page something new, or the last one recorded is getting old."""
        picture = status_picture(state, kv)
        now = time.monotonic()
        if picture == self.recorded_picture and now - self.recorded_at < STATUS_RECORD_EVERY_S:
            return False
        self.recorded_picture, self.recorded_at = picture, now
        return True

    def reach(self, now: float) -> str:
        if not self.connected:
            return "unreachable"
        if self.last_heard is None or now - self.last_heard > SILENT_AFTER_S:
            return "silent"
        return "ok"


class MessageSampler:
    """Which message events the recorder keeps: all while few flow; under load, one per
    `MSG_RECORD_EVERY_S` for each (source, destination, type, dropped), heartbeats one per
    `HEARTBEAT_RECORD_EVERY_S`, with the count left out."""

    def __init__(self) -> None:
        self._last: dict[tuple, float] = {}
        self._skipped: dict[tuple, int] = {}
        self.kept = 0
        self.skipped = 0

    def keep(self, ev: dict) -> bool:
        key = (ev.get("src"), ev.get("dst"), ev.get("kind"), bool(ev.get("dropped")), bool(ev.get("preVote")))
        now, count = time.monotonic(), int(ev.get("count", 1))
        every = HEARTBEAT_RECORD_EVERY_S if ev.get("kind") in HEARTBEAT_KINDS else MSG_RECORD_EVERY_S
        if now - self._last.get(key, -every) < every:
            self._skipped[key] = self._skipped.get(key, 0) + count
            self.skipped += count
            return False
        self._last[key] = now
        ev["skipped"] = self._skipped.pop(key, 0)  # like it since the one recorded before, not recorded
        self.kept += count
        return True

    def describe(self) -> dict:
        return {"everyS": MSG_RECORD_EVERY_S, "heartbeatEveryS": HEARTBEAT_RECORD_EVERY_S, "kept": self.kept,
                "skipped": self.skipped}


class BrowserClient:
    """The frames waiting to go to one open page; a page that cannot keep up loses its oldest."""

    def __init__(self) -> None:
        self._frames: BoundedLog[str] = BoundedLog(CLIENT_QUEUE_FRAMES, CLIENT_QUEUE_BYTES, len)
        self._offered = asyncio.Event()

    def offer(self, frame: str) -> None:
        self._frames.append(frame)
        self._offered.set()

    async def next_frame(self) -> str:
        while not self._frames:
            self._offered.clear()
            await self._offered.wait()
        return self._frames.popleft()


class Hub:
    def __init__(self, links: list[NodeLink], supervisor: Any = None, access: Access = NO_ACCESS) -> None:
        self.links = {link.id: link for link in links}
        self.supervisor = supervisor
        self.access = access  # how every connection to a node is made: TLS, credentials
        self.safety = SafetyChecker()
        self.recorder: BoundedLog[Recorded] = BoundedLog(RECORD_MAX_EVENTS, RECORD_MAX_BYTES, lambda r: len(r.json))
        self.clients: set[BrowserClient] = set()
        self._seq = itertools.count(1)
        self._pending: list[str] = []  # encoded events for the next batch
        self._link_counts: dict[tuple[str, str, str], list[int]] = {}
        self._tasks: list[asyncio.Task] = []
        self._link_tasks: dict[str, list[asyncio.Task]] = {}
        self._conf_seen: tuple | None = None  # the leader's (voters, learners) the node set last followed
        self._members_refresh: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None
        self._action_session: aiohttp.ClientSession | None = None
        self.logs = LogWatcher(lambda: self.session, self.emit)
        self.sampler = MessageSampler()
        self.listeners: list[Callable[[NodeLink, dict], None]] = []  # told of every node event (the lab's)
        self.extra_reach: Callable[[], dict] | None = None
        self.started_at = time.time()

    # ------------------------------------------------------------------ lifecycle ---------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=1.0),
                                              connector=self.access.connector(), headers=self.access.headers())
        # No credentials of its own: each call carries the ones ACTING_FOR names (act()).
        self._action_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=1.0),
                                                     connector=self.access.connector())
        loop = asyncio.get_running_loop()
        for link in self.links.values():
            self._watch_link(link)
        self._tasks.append(loop.create_task(self._flusher()))
        self._tasks.append(loop.create_task(self._ticker()))
        self.logs.start()

    async def stop(self) -> None:
        tasks = [*self._tasks, *(t for ts in self._link_tasks.values() for t in ts), self._members_refresh]
        tasks = [t for t in tasks if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.logs.stop()
        for session in (self._session, self._action_session):
            if session is not None:
                await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The watcher's session: the dashboard's own credentials."""
        assert self._session is not None, "the hub is not started"
        return self._session

    @property
    def action_session(self) -> aiohttp.ClientSession:
        """A session with no credentials of its own (act() adds them per call)."""
        assert self._action_session is not None, "the hub is not started"
        return self._action_session

    def acting_headers(self) -> dict[str, str]:
        """The Authorization a call made now carries: the person's ACTING_FOR names, none for a browser
        nobody logged in on, the dashboard's own when no request is behind the call."""
        acting = ACTING_FOR.get()
        return self.access.headers() if acting is None else acting.headers()

    def acting_credentials(self) -> Credentials | None:
        """The credentials a call made now carries (see acting_headers)."""
        acting = ACTING_FOR.get()
        return self.access.credentials if acting is None else acting.credentials

    def act(self, method: str, url: str, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        """A request to a node on behalf of whoever ACTING_FOR names (an aiohttp request context)."""
        return self.action_session.request(method, url, headers={**(headers or {}), **self.acting_headers()},
                                           **kwargs)

    def link(self, node_id: str) -> NodeLink:
        if node_id not in self.links:
            raise KeyError(node_id)
        return self.links[node_id]

    def by_raft_id(self, raft_id: str) -> NodeLink | None:
        return next((n for n in self.links.values() if n.raft_id == raft_id), None)

    def members(self) -> list[NodeLink]:
        """The links of nodes that are members (not removed)."""
        return [n for n in self.links.values() if n.removed_at is None]

    def node_list(self) -> list[dict]:
        return [n.describe() for n in self.links.values()]

    # ------------------------------------------------------------------ the node set ------------

    def follow_members(self, view: dict) -> None:
        """Watch every member of a `GET /members` answer, under its name; mark the removed ones."""
        removed_ids = set(view.get("removedIDs") or ())
        for member in view.get("members") or ():
            self._follow_member(member)
        for link in self.members():
            if link.raft_id in removed_ids:
                link.removed_at = time.monotonic()
                self._nodes_changed(f"{link.id} was removed from the cluster")

    def _follow_member(self, member: dict) -> None:
        if self.by_raft_id(member["id"]) is not None or not member.get("clientURL"):
            return  # watched already, or not started (added by its peer address alone): nothing to watch yet
        name = member.get("name") or member["id"]
        known = self.links.get(name)
        if known is not None and known.removed_at is None:  # watched before the cluster gave its id
            known.raft_id = member["id"]
            return
        if known is not None:  # the name of a removed member, now a new member's
            self._unwatch(known)
        link = NodeLink(name, member["clientURL"].rstrip("/"), member["id"])
        self.links[name] = link
        if self._session is not None:
            self._watch_link(link)
        self._nodes_changed(f"{name} joined the cluster as a {member.get('role', 'member')}; the dashboard "
                            f"watches it at {link.url}")

    def _drop_removed(self) -> None:
        now = time.monotonic()
        for link in list(self.links.values()):
            if link.removed_at is not None and now - link.removed_at > REMOVED_LINGER_S:
                self._unwatch(link)
                self._nodes_changed(f"the dashboard no longer watches {link.id}, which left the cluster")

    def _watch_link(self, link: NodeLink) -> None:
        loop = asyncio.get_running_loop()
        self._link_tasks[link.id] = [loop.create_task(self._watch(link)), loop.create_task(self._poll_metrics(link))]

    def _unwatch(self, link: NodeLink) -> None:
        for task in self._link_tasks.pop(link.id, []):
            task.cancel()
        self.links.pop(link.id, None)
        self.logs.forget(link.id)

    def _nodes_changed(self, text: str) -> None:
        self.emit({"type": "nodes", "nodes": self.node_list(), "text": text})

    def _notice_configuration(self, link: NodeLink, state: dict) -> None:
        """A leader's status with another configuration than the node set follows: read the members."""
        conf = (tuple(state.get("voters") or ()), tuple(state.get("learners") or ()))
        refreshing = self._members_refresh is not None and not self._members_refresh.done()
        if conf == self._conf_seen or refreshing:
            return
        self._conf_seen = conf
        self._members_refresh = asyncio.get_running_loop().create_task(self._read_members(link))

    async def _read_members(self, link: NodeLink) -> None:
        try:
            async with self.session.get(link.url.rstrip("/") + "/members",
                                        timeout=aiohttp.ClientTimeout(total=MEMBERS_TIMEOUT_S)) as resp:
                view = await resp.json() if resp.status == 200 else None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            view = None
        if isinstance(view, dict):
            self.follow_members(view)
            if any(not m.get("clientURL") for m in view.get("members") or ()):
                self._conf_seen = None  # a member not started yet: read again until it has (its URL is not known)
        else:
            self._conf_seen = None  # the next leader status tries again

    def named(self, text: str) -> str:
        """A node's text with added members' long ids replaced by their names: the watched ones' by
        their links, any other (the new member a configuration event names before the hub has read
        the members) by its id's form, `name-<16 hex digits>` (node/membership.py: new_member_id)."""
        for link in self.links.values():
            if link.raft_id != link.id and link.raft_id in text:
                text = text.replace(link.raft_id, link.id)
        return ADDED_MEMBER_ID.sub(r"\1", text)

    # ------------------------------------------------------------------ events ------------------

    def emit(self, event: dict) -> dict:
        """Stamp, encode, record (unless marked `"recorded": false`) and queue one event for every browser."""
        event["seq"] = next(self._seq)
        event["rt"] = round(time.time(), 4)
        text = json.dumps(event, default=str)
        if event.get("recorded", True):
            self.recorder.append(Recorded(event["type"], text))
        self._pending.append(text)
        return event

    def action(self, text: str, **fields: Any) -> dict:
        """Something a person (or the tour) did: shown in the feed and on the timeline, with the
        name of the person logged in who asked for it."""
        acting = ACTING_FOR.get()
        if acting is not None and acting.user is not None:
            text, fields["user"] = f"{acting.user}: {text}", acting.user
        log.info("dashboard action: %s", text)
        return self.emit({"type": "action", "text": text, **fields})

    def hello(self, features: dict) -> str:
        """The first frame a newly opened page receives: the nodes, what it can do (`features`) and
        the newest recorded events, within HELLO_MAX_EVENTS and HELLO_MAX_BYTES, to give its timeline a past.
        Events still waiting for the next batch are left out: a page added to `clients` as its hello
        is made receives them in that batch, so each event reaches it exactly once."""
        head = {
            "type": "hello",
            "nodes": self.node_list(),
            "supervisor": self.supervisor is not None,
            "safety": self.safety.describe(),
            "reach": self.reach(),
            "now": time.time(),
            "schema": schema(),
            "sampling": self.sampler.describe(),
            **features,
        }
        return encoded_frame(head, self._newest_for_hello())

    def _newest_for_hello(self) -> list[str]:
        newest_first: list[str] = []
        total_bytes = 0
        in_next_batch = set(self._pending)
        for rec in reversed(self.recorder):
            if rec.type in NOT_IN_HELLO or rec.json in in_next_batch:
                continue
            if len(newest_first) == HELLO_MAX_EVENTS or total_bytes + len(rec.json) > HELLO_MAX_BYTES:
                break
            newest_first.append(rec.json)
            total_bytes += len(rec.json)
        return newest_first[::-1]

    def reach(self) -> dict:
        now = time.time()
        sup = {}
        if self.supervisor is not None:
            with contextlib.suppress(Exception):
                sup = {d["id"]: d for d in self.supervisor.describe()}
        out = {}
        for n in self.links.values():
            out[n.id] = {
                "reach": n.reach(now),
                "error": n.error,
                "lastHeard": n.last_heard,
                "connectedSince": n.connected_since,
                "process": sup.get(n.raft_id) or sup.get(n.id),
                # whether the node serves the lab's routes (None: no status from it yet)
                "faultInjection": (n.status or {}).get("faultInjection"),
            }
        return out

    def _on_node_event(self, link: NodeLink, ev: dict) -> None:
        kind = ev.get("type")
        t = ev.get("t")
        if isinstance(t, (int, float)):
            if kind != "status" and t <= link.replay_before:
                return  # already seen before the reconnect (the node replays its recent events)
            link.newest_t = max(link.newest_t, float(t))
        if kind == "status":
            state = ev.get("state") or {}
            link.status, link.kv = state, ev.get("kv")
            ev["recorded"] = link.status_worth_recording(state, link.kv)
            if state.get("nodeId"):
                link.raft_id = state["nodeId"]
            if state.get("state") == "leader":
                self._notice_configuration(link, state)
            self.logs.on_status(link.id, link.url, state)
            if self.safety.observe_status(link.id, state):
                self.emit({"type": "safety", "checks": self.safety.describe(), "broken": True})
        elif kind == "trace" and ev.get("kind") == "role" and (ev.get("detail") or {}).get("role") == "leader":
            if self.safety.observe_leader(link.id, int(ev.get("term", 0))):
                self.emit({"type": "safety", "checks": self.safety.describe(), "broken": True})
        elif kind == "trace" and ev.get("kind") in LOG_REFRESH_KINDS:
            self.logs.refresh(link.id, link.url)
        elif kind == "msg":
            ev["recorded"] = self.sampler.keep(ev)
            key = (ev.get("src", "?"), ev.get("dst", "?"), ev.get("kind", "?"))
            counts = self._link_counts.setdefault(key, [0, 0, 0])
            counts[0] += int(ev.get("count", 1))
            counts[1] += int(ev.get("entries", 0) or 0)
            counts[2] += int(ev.get("count", 1)) if ev.get("dropped") else 0
        if isinstance(ev.get("text"), str):
            ev["text"] = self.named(ev["text"])
        ev["via"] = link.id
        for listener in self.listeners:
            listener(link, ev)
        self.emit(ev)

    # ------------------------------------------------------------------ tasks -------------------

    async def _watch(self, link: NodeLink) -> None:
        backoff = BACKOFF_FIRST_S
        ws_url = link.url.rstrip("/") + "/raft/events"
        while True:
            link.attempts += 1
            try:
                async with self.session.ws_connect(ws_url, heartbeat=5.0, timeout=aiohttp.ClientWSTimeout(
                        ws_close=2.0), max_msg_size=16 * 1024 * 1024) as ws:
                    link.connected, link.error = True, None
                    link.replay_before = link.newest_t
                    link.connected_since = time.time()
                    backoff = BACKOFF_FIRST_S
                    self.emit({"type": "reach", "node": link.id, "reach": "ok", "text":
                               f"the dashboard is connected to {link.id}"})
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        link.last_heard = time.time()
                        try:
                            ev = json.loads(msg.data)
                        except ValueError:
                            continue
                        if isinstance(ev, dict):
                            self._on_node_event(link, ev)
                    link.error = "the node closed the event stream"
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                link.error = plain_error(e)
            except Exception as e:  # never let one node's stream kill the dashboard
                log.exception("watching %s failed", link.id)
                link.error = plain_error(e)
            if link.connected:
                self.emit({"type": "reach", "node": link.id, "reach": "unreachable",
                           "text": f"the dashboard cannot reach {link.id} ({link.error})"})
            link.connected = False
            await asyncio.sleep(backoff * (0.75 + random.random() / 2))
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    async def _poll_metrics(self, link: NodeLink) -> None:
        while True:
            await asyncio.sleep(METRICS_EVERY_S)
            if not link.connected:
                continue
            try:
                async with self.session.get(link.url.rstrip("/") + "/metrics",
                                            timeout=aiohttp.ClientTimeout(total=1.0)) as resp:
                    sample = promtext.parse(await resp.text())
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                continue  # unreachable, or not metrics text: the next poll tries again
            figures = link.rates.update(sample, time.time())
            if figures is not None:
                link.metrics = figures
                self.emit({"type": "metrics", "node": link.id, **figures})

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            self.flush()

    def flush(self) -> None:
        """Send the events emitted since the last batch to every open page, as one batch."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        if self.clients:
            frame = encoded_frame({"type": "batch"}, batch)
            for c in list(self.clients):
                c.offer(frame)

    async def _ticker(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            dt, last = now - last, now
            self._drop_removed()
            counts, self._link_counts = self._link_counts, {}
            rates: dict[str, dict[str, float]] = {}
            for (src, dst, kind), (n, entries, dropped) in counts.items():
                r = rates.setdefault(f"{src}>{dst}", {"messages": 0.0, "entries": 0.0, "dropped": 0.0, "kinds": {}})
                r["messages"] += n / dt
                r["entries"] += entries / dt
                r["dropped"] += dropped / dt
                r["kinds"][kind] = round(n / dt, 1)
            for r in rates.values():
                for k in ("messages", "entries", "dropped"):
                    r[k] = round(r[k], 1)
            self.emit({"type": "tick", "reach": self.reach(), "links": rates, "safety": self.safety.describe(),
                       "sampling": self.sampler.describe(), **(self.extra_reach() if self.extra_reach else {})})

    def export_header(self) -> str:
        """The first line of an exported trace: what a page needs to replay the events after it."""
        return json.dumps({"type": "export", "rt": round(time.time(), 4), "nodes": self.node_list(),
                           "schema": schema(), "sampling": self.sampler.describe()})


def label_for(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or url


async def resolve_ids(node_urls: list[str], supervisor: Any, access: Access = NO_ACCESS,
                      timeout_s: float = 3.0) -> list[NodeLink]:
    """Node ids for the given URLs: from the supervisor, else from any reachable node's /raft-state."""
    urls = [u.rstrip("/") for u in node_urls]
    ids: dict[str, str] = {}
    if supervisor is not None:
        for node_id, proc in supervisor.nodes.items():
            ids[proc.member.url.rstrip("/")] = node_id
    missing = [u for u in urls if u not in ids]
    if missing:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0), connector=access.connector(),
                                         headers=access.headers()) as s:
            while missing and time.monotonic() < deadline:
                for u in urls:
                    try:
                        async with s.get(u + "/raft-state") as resp:
                            state = await resp.json()
                    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                        continue
                    if isinstance(state, dict) and state.get("nodeId"):
                        ids[u] = state["nodeId"]
                        for p in state.get("peers", []):
                            if p.get("url") and p.get("id"):
                                ids.setdefault(p["url"].rstrip("/"), p["id"])
                missing = [u for u in urls if u not in ids]
                if missing:
                    await asyncio.sleep(0.2)
    return [NodeLink(ids.get(u, label_for(u)), u, ids.get(u, label_for(u))) for u in urls]
