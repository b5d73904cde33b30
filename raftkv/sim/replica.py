"""One simulated server: a Raft core, the state it has made durable, and a tiny state machine.

The replica carries out a `Ready` in two halves so the simulator can put time between them:
`persist()` writes what the Ready says to its `MemoryStorage` and syncs, and `finish()` applies
committed entries, advances the core and reports the write as durable (`on_persisted`); the
caller sends `early_messages` before `persist()` and `messages` after it. A crash between the two
halves loses the Ready entirely, which is how an unsynced write is lost. The disk is the node's
own storage twin, so the simulated servers keep their logs by the very rules a real node's
storage follows (truncation on append, what a snapshot leaves of the log): a crash keeps the
storage (`MemoryStorage.crash()` forgets whatever was not synced) and a restart loads from it.

The state machine is a map of registers with write and compare-and-set, enough for clients whose
histories the linearizability checker judges. Commands are canonical JSON so every replica
applies byte-identical data.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raftkv.core import Config, DurableState, Entry, EntryKind, Listener, RaftCore, ReadState, Ready
from raftkv.storage.memory import MemoryStorage

CoreFactory = Callable[[Config, random.Random, DurableState, Listener | None], RaftCore]


def encode_command(op_id: str, kind: str, key: str, value: Any = None, expected: Any = None) -> bytes:
    return json.dumps([op_id, kind, key, value, expected], separators=(",", ":")).encode()


@dataclass
class RegisterMachine:
    """Registers keyed by name; absent keys read as None."""

    values: dict[str, Any] = field(default_factory=dict)
    applied: int = 0

    def apply(self, entry: Entry) -> tuple[str, Any] | None:
        """Apply one committed entry; returns (op_id, result) for client commands."""
        self.applied = entry.index
        if entry.kind is not EntryKind.NORMAL:
            return None
        op_id, kind, key, value, expected = json.loads(entry.data)
        if kind == "write":
            self.values[key] = value
            return op_id, None
        if kind == "cas":
            if self.values.get(key) == expected:
                self.values[key] = value
                return op_id, True
            return op_id, False
        raise ValueError(f"unknown command kind {kind!r}")

    def snapshot(self) -> bytes:
        return json.dumps(self.values, sort_keys=True).encode()

    def restore(self, data: bytes, index: int) -> None:
        self.values = json.loads(data) if data else {}
        self.applied = index


@dataclass
class Applied:
    """What finishing a Ready produced, for the simulator to route."""

    results: list[tuple[Entry, tuple[str, Any] | None]]
    read_states: list[ReadState]


class Replica:
    def __init__(
        self,
        config: Config,
        seed: int,
        core_factory: CoreFactory = RaftCore,
        listener: Listener | None = None,
        snapshot_every: int = 0,
    ) -> None:
        self.id = config.node_id
        self.config = config
        self._seed = seed
        self._restarts = 0
        self._core_factory = core_factory
        self._listener = listener
        self.snapshot_every = snapshot_every  # 0: never
        self.storage = MemoryStorage()
        self.core: RaftCore | None = None
        self.sm = RegisterMachine()
        self.start()

    @property
    def alive(self) -> bool:
        return self.core is not None

    @property
    def durable(self) -> DurableState:
        """What the disk holds (a copy): everything persisted, as a restart would load it."""
        return self.storage.load()

    @durable.setter
    def durable(self, state: DurableState) -> None:
        """Swap in a made-up disk (a hand-written log, a wiped data directory) for the next start."""
        self.storage = MemoryStorage(state)

    def start(self) -> None:
        """Boot from durable state alone, as a restarted process would."""
        durable = self.storage.load()
        rng = random.Random(f"{self._seed}/{self.id}/{self._restarts}")
        self._restarts += 1
        self.core = self._core_factory(self.config, rng, durable, self._listener)
        self.sm = RegisterMachine()
        if durable.snapshot is not None:
            self.sm.restore(durable.snapshot.data, durable.snapshot.meta.index)

    def crash(self) -> None:
        self.core = None
        self.storage.crash()

    def persist(self, rd: Ready) -> None:
        storage = self.storage
        if rd.snapshot is not None:
            storage.save_snapshot(rd.snapshot)
        if rd.entries:
            storage.append(rd.entries)
        if rd.hard_state is not None:
            storage.set_hard_state(rd.hard_state)
        storage.sync()

    def finish(self, rd: Ready) -> Applied:
        assert self.core is not None
        if rd.snapshot is not None:
            self.sm.restore(rd.snapshot.data, rd.snapshot.meta.index)
        results = [(e, self.sm.apply(e)) for e in rd.committed_entries]
        self.core.advance(rd)
        if rd.entries:
            self.core.on_persisted(rd.entries[-1].index, rd.entries[-1].term)
        self._maybe_snapshot()
        return Applied(results, rd.read_states)

    def _maybe_snapshot(self) -> None:
        assert self.core is not None
        base = self.storage.stats.snapshot_index
        if self.snapshot_every and self.sm.applied - base >= self.snapshot_every:
            snap = self.core.make_snapshot(self.sm.applied, self.sm.snapshot())
            self.storage.save_snapshot(snap)
            # Keep a few entries so a briefly lagging follower still gets appends, not a snapshot.
            self.core.compact(snap, retain_entries=self.snapshot_every // 4)
