"""The watch, lease and lock workloads of one run (`--workload kv,watch,lease,lock`): started
beside the key-value clients, settled at the end, judged from what they recorded.

Theory of operation
-------------------
Every workload writes under one prefix (`PREFIX`: the key-value clients' keys, `lease/...`,
`lock/...` and `fence`), and the watchers follow that prefix, so one set of streams is judged
against everything that committed there. The lease and lock judges need those streams (the time a
watcher received a revision bounds when it committed), so `lease` and `lock` bring the watchers
along even when `watch` is not asked for; its findings are then reported too.

    start:   read the prefix (state and revision R0); watchers from R0 + 1; lease and lock clients
    stop:    the lease and lock clients end with the key-value clients (bounded)
    settle:  after the cluster healed and converged: wait until every lease the run made is gone
             (they all lapse: nobody renews them any more), wait for convergence again, read the
             prefix's final state and every key's history on every final member, give the
             watchers a bounded time to reach the last revision, stop them
    judge:   `judge_coordination(record)`, from the JSON kept in run.json (so `--recheck` works)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from raftkv.chaos.histories import live_keys, read_histories
from raftkv.chaos.judge import SideCheck
from raftkv.chaos.leases import LEASE_TTL_S, LeaseClient, judge_leases, leases_alive
from raftkv.chaos.locks import LOCK_TTL_S, LockClients, judge_locks
from raftkv.chaos.recorder import Recorder
from raftkv.chaos.watchers import Watchers, first_seen, judge_watches

__all__ = ["PREFIX", "WORKLOADS", "Coordination", "judge_coordination"]

WORKLOADS = ("kv", "etcd", "watch", "lease", "lock")  # etcd: the key-value clients through etcd's gRPC API
PREFIX = "chaos-"  # the key-value clients' keys are chaos-k0, chaos-k1, ... (etcd's: chaos-e0, ...)
CLIENTS_STOP_S = 15.0  # a lock client's release retries while the cluster has no leader
LEASES_GONE_S = max(LEASE_TTL_S, LOCK_TTL_S) + 15.0  # the last TTL, and a leader change or two
WATCHERS_CATCH_UP_S = 20.0  # more than a silent stream's reconnect (raftkv.client.STREAM_SILENCE_S)


class Coordination:
    def __init__(self, workloads: tuple[str, ...], recorder: Recorder, seed: int, op_timeout_s: float,
                 kv_keys: list[str]) -> None:
        self.workloads = workloads
        self.recorder = recorder
        self.seed = seed
        self.op_timeout_s = op_timeout_s
        self.kv_keys = kv_keys
        self.watchers: Watchers | None = None
        self.leases: LeaseClient | None = None
        self.locks: LockClients | None = None
        self.initial: dict[str, Any] = {}
        self.start_revision = 0
        self.record: dict[str, Any] = {"workloads": list(workloads), "prefix": PREFIX}
        self._tasks: list[asyncio.Task] = []

    @property
    def active(self) -> bool:
        return bool({"watch", "lease", "lock"} & set(self.workloads))

    async def start(self, members: Callable[[], Mapping[str, str]], stop: asyncio.Event) -> None:
        if not self.active:
            return
        urls = members()
        self.initial, revision = await live_keys([urls[n] for n in sorted(urls)], PREFIX)
        self.start_revision = revision + 1
        self.watchers = Watchers(PREFIX, self.start_revision, urls, self.recorder)
        self.watchers.start()
        if "lease" in self.workloads:
            self.leases = LeaseClient(PREFIX, members, self.recorder, self.seed, self.op_timeout_s)
            self._tasks.append(asyncio.create_task(self.leases.run(stop)))
        if "lock" in self.workloads:
            self.locks = LockClients(PREFIX, urls, self.recorder, self.seed, self.op_timeout_s)
            self._tasks.append(asyncio.create_task(self.locks.run(stop)))

    async def stop_clients(self) -> None:
        """The lease and lock clients end once `stop` is set (bounded: then they are cancelled)."""
        if not self._tasks:
            return
        _, late = await asyncio.wait(self._tasks, timeout=CLIENTS_STOP_S)
        for task in late:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for task in self._tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    def lease_ids(self) -> set[int]:
        """Every lease this run granted or may have granted (the lease client's and the lock sessions')."""
        ids = {r.id for r in self.leases.records} if self.leases else set()
        return ids | (self.locks.lease_ids() if self.locks else set())

    def keys(self) -> set[str]:
        """Every key the run wrote, read or was told of under the prefix (deleted ones included)."""
        keys = set(self.kv_keys) | set(self.initial)
        if self.watchers:
            keys |= {key for s in self.watchers.streams for b in s.batches for _, key, _ in b[2]}
        if self.leases:
            keys |= {k[0] for r in self.leases.records for k in r.keys}
        if self.locks:
            keys |= {h.key for h in self.locks.holdings if h.key} | {self.locks.fence}
        return keys

    async def settle(self, final_members: Mapping[str, str], leader_url: str | None,
                     wait_converged: Callable[[], Awaitable[tuple[bool, str]]]) -> None:
        """Everything the judges need from the cluster at the end, into `record`."""
        if self.watchers is None:
            return
        url = leader_url or final_members[sorted(final_members)[0]]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEASES_GONE_S
        alive = await leases_alive(url, self.lease_ids())
        while alive != set() and loop.time() < deadline:
            await asyncio.sleep(0.2)
            alive = await leases_alive(url, self.lease_ids())
        converged, _ = await wait_converged()  # every member applied the expiries
        histories = await read_histories(final_members, self.keys())
        try:
            final, revision = await live_keys([url, *(u for _, u in sorted(final_members.items()) if u != url)],
                                              PREFIX)
        except RuntimeError as e:  # a liveness problem after healing: nothing to judge against
            await self.watchers.stop(0, 0.0)
            self.record["error"] = str(e)
            return
        last_change = max((v["revision"] for h in histories.values() for versions in h["keys"].values()
                           if isinstance(versions, list) for v in versions), default=0)
        await self.watchers.stop(last_change, WATCHERS_CATCH_UP_S)
        self.record.update({
            "startRevision": self.start_revision, "initial": self.initial, "final": final, "finalRevision": revision,
            "histories": histories, "converged": converged, "streams": self.watchers.to_json(),
            "stillAlive": None if alive is None else sorted(alive),
            "leases": self.leases.to_json() if self.leases else None,
            "locks": self.locks.to_json() if self.locks else None,
            "fence": self.locks.fence if self.locks else None,
        })


def judge_coordination(record: dict[str, Any] | None) -> list[SideCheck]:
    """The watch, lease and lock judgements of a run's `coordination` record (empty: none ran)."""
    if record and record.get("error"):
        return [SideCheck("watch", inconclusive=[f"the final state could not be read: {record['error']}"])]
    if not record or "streams" not in record:
        return []
    streams, histories = record["streams"], record["histories"]
    notes = []
    if not record.get("converged", True) and histories:
        # A replica still catching up holds a shorter history: that is no divergence, so only one
        # node's word is taken (the run's liveness note already says it did not converge).
        reference = sorted(histories)[0]
        histories = {reference: histories[reference]}
        notes.append(f"the replicas did not converge: histories judged on {reference} only")
    checks = [judge_watches(streams, record["prefix"], record["initial"], record["final"], histories)]
    checks[0].inconclusive += notes
    if record.get("leases") is not None:
        checks.append(judge_leases(record["leases"], histories, first_seen(streams), record["stillAlive"]))
    if record.get("locks") is not None:
        checks.append(judge_locks(record["locks"], record["fence"], histories))
    return checks
