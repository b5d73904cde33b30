"""Deliberately broken lessors, each breaking the promise that a lease never expires while an
acknowledged keep-alive is within its TTL, to prove the driver simulation's lease check bites.

Each overrides one seam of the real Lessor, and is installed in the simulation in its place for
the length of a test (through pytest's monkeypatch). Nothing here is importable from the package.
"""

from __future__ import annotations

from raftkv.node.lessor import Lessor


class RenewsExpiringLeases(Lessor):
    """Acknowledges a keep-alive of a lease whose revocation it has already proposed: the
    revocation then commits and cuts short the TTL the keep-alive promised."""

    def _renewable(self, lease_id: int, deadlines: dict[int, float], now: float) -> bool:
        return True


class KeepsDeadlinesAcrossTerms(Lessor):
    """Keeps its deadlines when it stops leading: back in the lead, it expires leases on times set
    before another leader acknowledged keep-alives for them."""

    def _forget_timing(self) -> None:
        pass


BUGS = {"renews-expiring-leases": RenewsExpiringLeases, "keeps-deadlines-across-terms": KeepsDeadlinesAcrossTerms}
