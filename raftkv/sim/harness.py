"""A hand-driven cluster for scenario tests: you decide every tick and every delivery.

Where the randomized simulation explores, this harness replays a story exactly as the Raft paper
tells it ("n1 is elected, its entry reaches only n2, n1 crashes, ..."). Messages wait in
`in_flight` until delivered or dropped; cuts block links; crashes keep only the durable state.
Every Ready goes through the same Replica and SafetyMonitor the randomized simulator uses.

Observers (the interaction-script runner, raftkv.sim.script) watch without steering: `listener`
receives the cores' trace events, `on_ready` sees each Ready before it is carried out, and
`on_delivery` sees each message the network takes out of flight and whether it arrived.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from raftkv.core import Config, Listener, Message, RaftCore, Ready, Role

from .invariants import SafetyMonitor
from .replica import CoreFactory, Replica, encode_command


class Harness:
    def __init__(
        self,
        ids: Iterable[str] = ("n1", "n2", "n3"),
        core_factory: CoreFactory = RaftCore,
        snapshot_every: int = 0,
        listener: Listener | None = None,
        **config: Any,
    ) -> None:
        self.ids = list(ids)
        config.setdefault("election_timeout_ticks", 10)
        self._founders = tuple(self.ids)
        self._core_factory = core_factory
        self._snapshot_every = snapshot_every
        self._listener = listener
        self._config = config
        self.replicas = {node: self._new_replica(node) for node in self.ids}
        self.monitor = SafetyMonitor()
        self.in_flight: list[Message] = []
        self.blocked: set[tuple[str, str]] = set()
        self.applied: dict[str, list[tuple[int, int, bytes]]] = {n: [] for n in self.ids}
        self.read_results: dict[str, list[tuple[bytes, int, bool]]] = {n: [] for n in self.ids}
        self.on_ready: Callable[[str, Ready], None] | None = None
        self.on_delivery: Callable[[Message, bool], None] | None = None

    def _new_replica(self, node: str) -> Replica:
        config = Config(node, voters=self._founders, **self._config)
        return Replica(config, 7, self._core_factory, self._listener, self._snapshot_every)

    # ---- looking ------------------------------------------------------------------------------

    def core(self, node: str) -> RaftCore:
        core = self.replicas[node].core
        assert core is not None, f"{node} is down"
        return core

    def role(self, node: str) -> Role:
        return self.core(node).role

    def leaders(self) -> list[str]:
        return [n for n, r in self.replicas.items() if r.core is not None and r.core.role is Role.LEADER]

    def log_terms(self, node: str) -> list[int]:
        """Terms of the entries in `node`'s log, index 1 first (the paper's figures draw logs so)."""
        log = self.core(node).log
        return [log.term(i) for i in range(log.first_index(), log.last_index() + 1)]

    def values(self, node: str) -> dict:
        return self.replicas[node].sm.values

    # ---- acting ------------------------------------------------------------------------------

    def act(self, node: str, fn: Callable[[RaftCore], Any]) -> Any:
        """Run `fn` on a node's core, then carry out whatever Ready it produced."""
        result = fn(self.core(node))
        self.process(node)
        return result

    def process(self, node: str) -> None:
        r = self.replicas[node]
        while r.core is not None and r.core.has_ready():
            rd = r.core.ready()
            if self.on_ready:
                self.on_ready(node, rd)
            self.monitor.before_persist(node, r.core, rd)
            self.in_flight.extend(rd.early_messages)
            r.persist(rd)
            applied = r.finish(rd)
            for e, _ in applied.results:
                self.monitor.on_apply(node, e)
                self.applied[node].append((e.index, e.term, e.data))
            self.read_results[node].extend((rs.ctx, rs.index, rs.ok) for rs in applied.read_states)
            self.in_flight.extend(rd.messages)

    def tick(self, node: str, ticks: int = 1) -> None:
        for _ in range(ticks):
            self.act(node, RaftCore.tick)

    def tick_all(self, ticks: int = 1) -> None:
        for _ in range(ticks):
            for node in self.ids:
                if self.replicas[node].alive:
                    self.tick(node)

    def timeout(self, node: str) -> None:
        """Tick `node` until its election timer fires (it campaigns, with pre-vote if enabled)."""
        core = self.core(node)
        # At least one tick: right after expire_leases() the elapsed time may already equal the
        # timeout, and the timer only fires inside tick().
        self.tick(node, max(1, core.randomized_election_timeout - core.election_elapsed))

    def expire_leases(self) -> None:
        """Let every live node's leader lease lapse, as if an election timeout passed silently."""
        for node in self.ids:
            core = self.replicas[node].core
            if core is not None and core.role is not Role.LEADER:
                core.election_elapsed = max(core.election_elapsed, core.config.election_timeout_ticks)

    def elect(self, node: str) -> None:
        """Let `node` time out and deliver everything until the election settles."""
        self.expire_leases()
        self.timeout(node)
        self.stabilize()

    def propose(self, node: str, *values: str, key: str = "k") -> tuple[int, int]:
        data = [encode_command(f"{node}-{v}", "write", key, v) for v in values]
        return self.act(node, lambda c: c.propose(data))

    def add_node(self, node: str) -> None:
        """Boot a brand-new server that knows only the founding configuration, as a joining
        process does; it takes part once a membership change adds it."""
        self.replicas[node] = self._new_replica(node)
        self.ids.append(node)
        self.applied[node] = []
        self.read_results[node] = []

    def crash(self, node: str) -> None:
        self.replicas[node].crash()
        self.in_flight = [m for m in self.in_flight if m.dst != node]

    def restart(self, node: str) -> None:
        self.replicas[node].start()

    def isolate(self, node: str) -> None:
        for other in self.ids:
            if other != node:
                self.blocked |= {(node, other), (other, node)}

    def cut(self, a: str, b: str, one_way: bool = False) -> None:
        self.blocked.add((a, b))
        if not one_way:
            self.blocked.add((b, a))

    def heal(self) -> None:
        self.blocked.clear()

    # ---- the network -------------------------------------------------------------------------

    def matching(self, src: str | None = None, dst: str | None = None, kind: type | None = None) -> list[Message]:
        """The in-flight messages from `src`, to `dst` and of type `kind` (None matches any)."""
        return [
            m
            for m in self.in_flight
            if (src is None or m.src == src) and (dst is None or m.dst == dst) and (kind is None or isinstance(m, kind))
        ]

    def deliver(self, src: str | None = None, dst: str | None = None, kind: type | None = None) -> int:
        """Deliver the in-flight messages that match (all by default); returns how many."""
        chosen = self.matching(src, dst, kind)
        self.in_flight = [m for m in self.in_flight if m not in chosen]
        delivered = 0
        for m in chosen:
            arrives = (m.src, m.dst) not in self.blocked and self.replicas[m.dst].alive
            if self.on_delivery:
                self.on_delivery(m, arrives)
            if not arrives:
                continue
            delivered += 1
            self.act(m.dst, lambda c, m=m: c.step(m))
        return delivered

    def drop(self, src: str | None = None, dst: str | None = None, kind: type | None = None) -> None:
        dropped = self.matching(src, dst, kind)
        self.in_flight = [m for m in self.in_flight if m not in dropped]

    def stabilize(self, max_rounds: int = 200) -> None:
        for _ in range(max_rounds):
            if not self.deliver():
                return
        raise AssertionError("messages still flowing after stabilize()")
