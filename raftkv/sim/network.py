"""A virtual network on a virtual clock: loss, delay, reordering, duplication and partitions.

Links are directed. A partition is a set of blocked (src, dst) pairs, so one structure expresses
a symmetric split, a one-way cut (A hears B but B does not hear A) and a partial partition (one
"bridge" node still reaching both sides). Every random choice comes from the injected RNG, so a
seed replays the same deliveries in the same order.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class LinkConditions:
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    min_delay_ms: int = 1
    max_delay_ms: int = 5  # random delays between min and max reorder messages on a link


@dataclass
class VirtualNetwork:
    rng: random.Random
    conditions: LinkConditions = field(default_factory=LinkConditions)
    blocked: set[tuple[str, str]] = field(default_factory=set)
    dropped: int = 0
    delivered: int = 0

    def delays_for(self, src: str, dst: str) -> list[int]:
        """Delivery delays (ms) for one message: [] if it is lost, two if it is duplicated."""
        if (src, dst) in self.blocked or self.rng.random() < self.conditions.drop_rate:
            self.dropped += 1
            return []
        c = self.conditions
        copies = 2 if self.rng.random() < c.duplicate_rate else 1
        return [self.rng.randint(c.min_delay_ms, c.max_delay_ms) for _ in range(copies)]

    def cut(self, side_a: Iterable[str], side_b: Iterable[str], one_way: bool = False) -> None:
        """Block traffic from side_a to side_b (and back, unless one_way)."""
        b = list(side_b)
        for x in side_a:
            for y in b:
                if x != y:
                    self.blocked.add((x, y))
                    if not one_way:
                        self.blocked.add((y, x))

    def can_reach(self, src: str, dst: str) -> bool:
        return (src, dst) not in self.blocked

    def heal(self) -> None:
        self.blocked.clear()
