"""Service discovery with a lease: a service registers itself, its machine dies, its lease expires
and a watcher sees its key vanish.

The service is real, and as small as such a client gets: it grants a lease with a short TTL through
one node (the node on its own machine), puts its address under `services/` attached to that lease,
and keeps the lease alive every TTL/3 through that node. The dashboard's watch, shown on the page,
is set to `services/` from the current revision, so it sees the registration and whatever follows.
Then the machine dies: the node is crashed (kill -9) and the service's keep-alives stop with it,
without a revoke. The leader's clock runs the lease out, the leader proposes its revocation, every
replica deletes the key at the same revision, and the watch delivers that delete. Without a
supervisor (a remote cluster) only the service dies; the lesson is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from ..controls import ControlError, Controls, error_text
from .runner import Tour, TourFailed

SERVICE_KEY = "services/web"
SERVICE_ADDRESS = "10.0.0.7:8080"
TTL_S = 4  # short, so that the learner does not wait long for the expiry
EXPIRY_WAIT_S = 20.0  # the TTL, the leader's check, a commit and the watch's delivery fit in this


class Service:
    """A service that registers itself through one node and keeps its lease alive through it."""

    def __init__(self, controls: Controls, node: str) -> None:
        self.controls, self.node = controls, node
        self.lease_id = 0
        self.last_acknowledged = 0.0  # monotonic time the last acknowledged keep-alive was sent
        self._keep_alive: asyncio.Task | None = None

    async def register(self) -> int:
        """Grant the lease, put the address attached to it, start the keep-alives; the put's revision."""
        grant = await self._call("POST", "/leases", {"ttl": TTL_S})
        self.lease_id = int(grant["id"])
        self.last_acknowledged = time.monotonic()
        put = await self._call("PUT", f"/kv/{SERVICE_KEY}", {"value": SERVICE_ADDRESS, "lease": self.lease_id})
        self._keep_alive = asyncio.get_running_loop().create_task(self._renew())
        return int(put["revision"])

    def die(self) -> None:
        """The process is gone: no more keep-alives, and no revoke."""
        if self._keep_alive is not None:
            self._keep_alive.cancel()

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(TTL_S / 3)
            sent = time.monotonic()
            with contextlib.suppress(TourFailed, ControlError):  # missed: the TTL covers the next tries
                await self._call("POST", f"/leases/{self.lease_id}/keepalive")
                self.last_acknowledged = sent

    async def _call(self, method: str, path: str, body: Any = None) -> dict:
        status, answer = await self.controls.call(self.controls.link(self.node), method, path, body)
        if status != 200 or not isinstance(answer, dict):
            raise TourFailed(f"the service's {method} {path} through {self.node} answered {status}: "
                             f"{error_text(answer)}")
        return answer


async def service_discovery(t: Tour) -> None:
    before = await t.prepare()
    leader, _ = await t.agreed_leader()
    node = t.followers(leader)[0]
    machine = t.controls.supervisor is not None
    await t.show(f"{before}Service discovery with a lease. A service, web, runs on {node}'s machine and talks to the "
                 f"cluster through {node}. It registers itself: a lease with a TTL of {TTL_S} s, which it keeps "
                 f"alive every {TTL_S / 3:.1f} s, and its address under {SERVICE_KEY} attached to that lease. Whoever "
                 "looks for web watches services/: the Watch feed below is such a watcher. Next: the dashboard "
                 "watches services/, and web registers.")
    t.doing("watching services/ from the current revision…")
    view = t.coordination
    start = await view.current_revision() + 1
    await view.watch("services/", start)
    service = Service(t.controls, node)
    try:
        t.doing(f"web registers through {node}…")
        put_at = await service.register()
        lease = f"{service.lease_id:x}"
        await t.wait(f"the watcher to see PUT {SERVICE_KEY}", lambda: view.seen(SERVICE_KEY, "put", start - 1))
        await t.wait(f"the Leases panel to show lease {lease}", lambda: _lease_shown(t, lease))
        await t.show(f"web registered through {node}: lease {lease} (TTL {TTL_S} s) holds {SERVICE_KEY} = "
                     f"{SERVICE_ADDRESS}, put at revision {put_at}, and the watcher saw that PUT. In Leases the "
                     f"TTL counts down by the leader's ({leader}'s) clock and jumps back at every keep-alive. Next: "
                     + (f"{node}'s machine dies: the node and web with it (kill -9: web never revokes its lease)."
                        if machine else "web's process dies (kill -9: it never revokes its lease)."))
        t.doing("the machine dies…" if machine else "web dies…")
        service.die()
        if machine:
            await t.controls.process(node, "crash")
        who = f"{node} and web are" if machine else "web is"
        await t.show(f"{who} gone. Nobody renews lease {lease} now: the leader counts it down to zero by its own "
                     f"clock (Leases), then proposes its revocation through the log. Watch the feed: {SERVICE_KEY} "
                     "vanishes when the lease expires. Next: see when and how it went.")
        deleted = await t.wait(f"the watcher to see DELETE {SERVICE_KEY}",
                               lambda: view.seen(SERVICE_KEY, "delete", put_at), EXPIRY_WAIT_S)
    finally:
        service.die()
    seen_at, revision = deleted
    after = max(seen_at - service.last_acknowledged, 0.0)
    await t.show(f"Lease {lease} expired: the watcher saw DELETE {SERVICE_KEY} at revision {revision}, "
                 f"{after:.1f} s after the last keep-alive web had acknowledged (TTL {TTL_S} s, then the leader's "
                 "check, a commit and the delivery). The revocation is one entry in the log, so every replica deletes "
                 "the key at the same revision. Whoever watched services/ learned that web is gone, with no health "
                 "check of its own." + (f" Next: {node} comes back." if machine else ""))
    if not machine:
        return
    committed = int((await t.ask_state((await t.agreed_leader())[0]))["commitIndex"])  # the delete's entry, and more
    t.doing(f"restarting {node}…")
    await t.controls.process(node, "restart")
    await t.wait(f"{node} to apply the log up to index {committed}",
                 lambda: int(t.status(node).get("lastApplied", 0)) >= committed and t.states().get(node), 20.0)
    own = await t.controls.kv({"op": "get", "key": SERVICE_KEY, "node": node, "stale": True})
    if own["status"] != 404:
        raise TourFailed(f"{node}'s own store answered {own['status']} for {SERVICE_KEY} after applying index "
                         f"{committed}: {own['body']}")
    await t.show(f"{node} restarted and applied the log up to index {committed}, the revocation included: its own "
                 f"store has no {SERVICE_KEY} either (a stale read of {node} alone: 404). A service that comes back "
                 "registers again, with a new lease.")


def _lease_shown(t: Tour, lease: str) -> bool:
    picture = t.coordination.picture or {}
    return any(x["hex"] == lease for x in picture.get("leases") or ())
