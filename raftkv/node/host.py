"""A node process's Raft side: the transport, fault injection, metrics and the Raft event stream,
around the process's Raft group.

Theory of operation
-------------------
`NodeHost` builds what a process has once (the TCP transport with its fault layer, the metrics
registry, the event stream) and hands the group its storage and transport; the group builds
nothing of its own. Messages that arrive go to the group; one task publishes the node's status to
the event stream four times a second while someone watches it, and keeps the gauges fresh. The
host is the object the HTTP API serves (raftkv/node_server.py) and the embedded API programs use:
`propose`, `read_barrier` and `kv` are the group's.

Fault injection (`set_partition`, `set_link_quality`) acts on the transport's fault layer, beneath
the group, so a simulated partition looks to Raft exactly like a cut wire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from raftkv.kv import Command, KVStateMachine
from raftkv.storage import DiskStorage, RaftStorage
from raftkv.transport import ALL_PEERS, LinkFaults, TcpTransport, make_mtls_contexts

from .compactor import Compactor, compact_in_steps
from .config import NodeConfig
from .errors import NotAppliedError
from .event_stream import EventHub
from .group import RaftGroup
from .lessor import Lessor
from .log_view import log_view
from .members import MemberService
from .metrics import NodeMetrics
from .observe import GroupObserver
from .preview import KVPreview
from .status import StatusReporter
from .watch import Watcher

__all__ = ["NodeHost"]

log = logging.getLogger("raftkv.node")

STATUS_EVERY_S = 0.25
CHECK_MEMBERSHIP_EVERY_S = 1.0
CHECK_MEMBERSHIP_AFTER_S = 3.0  # without a leader, a node starts asking whether it was removed


class NodeHost:
    def __init__(self, cfg: NodeConfig, storage: RaftStorage | None = None) -> None:
        self.cfg = cfg
        self.id = cfg.node_id
        self.url = cfg.me.url
        self.fault_injection = cfg.enable_fault_injection
        self.hub = EventHub(self.id)
        self.metrics = NodeMetrics(self.id)
        observer = GroupObserver(self.id, self.metrics, self.hub)
        self.faults = LinkFaults(on_drop=observer.on_drop)
        ssl_server = ssl_client = None
        if cfg.tls_ca and cfg.tls_cert and cfg.tls_key:
            ssl_server, ssl_client = make_mtls_contexts(str(cfg.tls_ca), str(cfg.tls_cert), str(cfg.tls_key))
        self.transport = TcpTransport(self.id, *cfg.peer_listen_address(),
                                      {i: (m.host, m.raft_port) for i, m in cfg.peers().items()}, self.faults,
                                      ssl_server=ssl_server, ssl_client=ssl_client)
        self.kv = KVStateMachine()
        storage = storage or DiskStorage(cfg.storage_dir, segment_bytes=cfg.wal_segment_bytes)
        self.group = RaftGroup(cfg, storage, self.transport, self.kv,
                               self.metrics, observer, on_members=lambda: self.members.sync())
        self.metrics.registry.register(self.group.watches)
        self.members = MemberService(cfg, self.group, self.transport, self.metrics, self._removed)
        self.status = StatusReporter(self.group, self.metrics,
                                     lambda: {i: m.url for i, m in self.members.peers().items()})
        self.lessor = Lessor(self.group, self.members.leader_asker)
        self.compactor = Compactor(self.group, cfg.history_retention_revisions, cfg.auto_compaction_retention_s)
        self.removed: str | None = None  # why, once this node learned it is no longer a member
        self._preview = KVPreview(self.kv)
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        await self.transport.start(self.group.deliver)
        await self.group.start()
        self.members.sync()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._publish_status()), loop.create_task(self._check_membership()),
                       loop.create_task(self.lessor.run()), loop.create_task(self.compactor.run()),
                       loop.create_task(self.members.publish())]
        log.info("node started id=%s http=%s raft_port=%d", self.id, self.url, self.cfg.me.raft_port)

    async def stop(self) -> None:
        """Graceful: the group writes out what was handed to its disk; then the links close."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.lessor.stop()
        await self.members.leader_asker.close()
        await self.group.stop()
        await self.transport.close()
        log.info("node stopped id=%s", self.id)

    def _removed(self, why: str) -> None:
        """This node is no longer a member: its Raft group stops (the process stays, and says why)."""
        if self.removed is not None:
            return
        self.removed = why
        log.warning("node %s was removed from the cluster (%s); its Raft group stops", self.id, why)
        self.hub.publish({"type": "removed", "text": f"{self.id} was removed from the cluster: {why}"})
        self._tasks.append(asyncio.get_running_loop().create_task(self.group.stop()))

    async def _check_membership(self) -> None:
        """A node that knew no leader for a while asks whether it was removed (see members.py)."""
        leaderless_since: float | None = None
        while self.removed is None:
            await asyncio.sleep(CHECK_MEMBERSHIP_EVERY_S)
            if self.group.leader_id is not None:
                leaderless_since = None
                continue
            now = time.monotonic()
            leaderless_since = leaderless_since or now
            if now - leaderless_since >= CHECK_MEMBERSHIP_AFTER_S:
                await self.members.check_still_member()

    # ---- what the HTTP API and embedded programs call ------------------------------------------

    def leader_id(self) -> str | None:
        return self.group.leader_id

    def leader_url(self) -> str | None:
        leader = self.group.leader_id
        return self._url_of(leader) if leader else None

    def _url_of(self, member_id: str) -> str | None:
        return self.members.url_of(member_id)

    async def propose(self, command: Command, *, gathered: bool = False) -> dict[str, Any]:
        self._refuse_if_removed()
        return await self.group.propose(command, gathered=gathered)

    async def read_barrier(self, *, gathered: bool = False) -> None:
        self._refuse_if_removed()
        await self.group.read_barrier(gathered=gathered)

    def _refuse_if_removed(self) -> None:
        if self.removed is not None:
            raise NotAppliedError(f"this node was removed from the cluster ({self.removed}); use another member")

    # ---- history, watches, leases ----------------------------------------------------------------

    def watch(self, *, key: str | None = None, prefix: str | None = None, start_revision: int | None = None,
              prev_kv: bool = False) -> Watcher:
        self._refuse_if_removed()
        return self.group.watches.watch(key=key, prefix=prefix, start_revision=start_revision, prev_kv=prev_kv)

    def unwatch(self, watcher: Watcher) -> None:
        self.group.watches.forget(watcher)

    async def compact(self, revision: int) -> dict[str, Any]:
        self._refuse_if_removed()
        return await compact_in_steps(self.group, revision)

    async def grant_lease(self, ttl_s: int, lease_id: int | None = None) -> dict[str, Any]:
        self._refuse_if_removed()
        return await self.lessor.grant(ttl_s, lease_id)

    async def revoke_lease(self, lease_id: int) -> dict[str, Any]:
        self._refuse_if_removed()
        return await self.lessor.revoke(lease_id)

    async def keepalive_lease(self, lease_id: int) -> dict[str, Any]:
        self._refuse_if_removed()
        return await self.lessor.keepalive(lease_id)

    async def lease_info(self, lease_id: int) -> dict[str, Any]:
        self._refuse_if_removed()
        return await self.lessor.time_to_live(lease_id)

    # ---- membership (members.py) ----------------------------------------------------------------

    def members_view(self) -> dict[str, Any]:
        """GET /members: every member, the leader, and the ids removed for good."""
        return {"members": self.members.describe(), "leader": self.group.leader_id,
                "removedIDs": sorted(self.kv.removed_members)}

    async def add_member(self, name: str, client_url: str, peer_url: str, learner: bool = True) -> dict[str, Any]:
        self._refuse_if_removed()
        return await self.members.add(name, client_url, peer_url, learner)

    async def promote_member(self, member_id: str) -> dict[str, Any]:
        self._refuse_if_removed()
        return await self.members.promote(member_id)

    async def move_member(self, member_id: str, peer_url: str) -> dict[str, Any]:
        self._refuse_if_removed()
        return await self.members.move(member_id, peer_url)

    async def remove_member(self, member_id: str) -> dict[str, Any]:
        self._refuse_if_removed()
        return await self.members.remove(member_id)

    async def force_election(self) -> dict[str, Any]:
        return await self.group.force_election()

    def raft_state(self, digest: bool = False) -> dict[str, Any]:
        etcd = {"etcdURL": self.cfg.etcd_endpoint} if self.cfg.etcd_endpoint else {}
        return self.status.raft_state(digest=digest, url=self.url, faults=self.faults.describe(),
                                      transport=self.transport.stats(), removed=self.removed,
                                      faultInjection=self.fault_injection, **etcd)

    def health(self) -> dict[str, Any]:
        return self.status.health()

    def metrics_text(self) -> tuple[bytes, str]:
        self.status.refresh_gauges()
        return self.metrics.render()

    def record_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.metrics.on_http_request(route, method, status, seconds)

    async def raft_events(self) -> AsyncIterator[dict[str, Any]]:
        """The Raft event stream, starting with the current status."""
        self.hub.publish(self._status_event())
        async for event in self.hub.subscribe():
            yield event

    # ---- the lab: true logs, hold-and-step delivery, clocks ------------------------------------

    def raft_log(self, start: int | None, limit: int) -> dict[str, Any]:
        return log_view(self.group.core, start, limit)

    def lab_state(self) -> dict[str, Any]:
        hold = self.transport.hold
        return {"faultInjection": self.fault_injection, "holding": hold.active, "clockHeld": self.group.clock_held,
                "tickMs": self.group.tick_ms,
                "snapshotEvery": self.group.snapshots.every, "held": hold.held(), "heldDroppedFull": hold.dropped_full}

    def set_lab(self, *, holding: bool | None = None, clock_held: bool | None = None, tick_ms: int | None = None,
                snapshot_every: int | None = None) -> dict[str, Any]:
        """Change the lab's settings; leaving hold-and-step releases every held message."""
        if holding is not None:
            self.transport.hold.set_active(holding)
        if clock_held is not None:
            self.group.clock_held = clock_held
        if tick_ms is not None:
            self.group.tick_ms = tick_ms
        if snapshot_every is not None:
            self.group.snapshots.every = snapshot_every
        log.info("lab node=%s holding=%s clock_held=%s tick_ms=%s snapshot_every=%s", self.id, holding, clock_held,
                 tick_ms, snapshot_every)
        state = self.lab_state()
        self.hub.publish({"type": "lab", **{k: v for k, v in state.items() if k != "held"}})
        return state

    def release_held(self, numbers: list[int]) -> int:
        return self.transport.hold.release(numbers)

    def drop_held(self, numbers: list[int]) -> int:
        return self.transport.hold.drop(numbers)

    # ---- fault injection ----------------------------------------------------------------------

    def set_partition(self, partitioned: bool, peers: list[str] | None, direction: str = "both") -> dict[str, Any]:
        """Cut (or restore) Raft traffic with `peers` (all if None); one way with direction
        "outbound" (we stop reaching them) or "inbound" (they stop reaching us)."""
        targets = self._known_peers(peers)
        if not partitioned or direction == "both":
            self.faults.set_partitioned(partitioned, peers)
        else:
            cut = self.faults.cut_outbound if direction == "outbound" else self.faults.cut_inbound
            for peer in targets:
                cut(peer)
        log.info("partition node=%s partitioned=%s peers=%s direction=%s", self.id, partitioned, targets, direction)
        return self._faults_changed()

    def set_link_quality(self, peers: list[str] | None, loss_percent: float | None,
                         delay_ms: float | None) -> dict[str, Any]:
        """Loss and latency on this node's outbound Raft traffic to `peers` (all if None); 0 removes."""
        targets = [ALL_PEERS] if peers is None else self._known_peers(peers)
        for peer in targets:
            if loss_percent is not None:
                self.faults.set_loss(loss_percent, peer)
            if delay_ms is not None:
                self.faults.set_delay(delay_ms, peer)
        log.info("link node=%s peers=%s loss=%s delay_ms=%s", self.id, peers or "all", loss_percent, delay_ms)
        return self._faults_changed()

    def _known_peers(self, peers: list[str] | None) -> list[str]:
        known = self.members.peers()  # the configuration as it is now, not as the node started
        unknown = sorted(set(peers or ()) - set(known))
        if unknown:
            raise ValueError(f"unknown peer ids: {unknown}; peers are {sorted(known)}")
        return list(peers) if peers is not None else list(known)

    def _faults_changed(self) -> dict[str, Any]:
        described = self.faults.describe()
        self.hub.publish({"type": "fault", "faults": described})
        return described

    # ---- status ---------------------------------------------------------------------------------

    async def _publish_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            self.status.refresh_gauges()
            if self.hub.watched:
                self.hub.publish(self._status_event())

    def _status_event(self) -> dict[str, Any]:
        return {"type": "status", "state": self.raft_state(), "kv": self._preview()}
