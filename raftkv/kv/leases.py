"""Leases in the replicated state: which leases exist, their TTLs, and the keys attached to them.

A lease is granted with a TTL and an id the proposer chose; keys put with that lease are attached
to it (a later put without it, or with another, detaches the key; deleting the key detaches it);
revoking the lease deletes all its keys in one revision. Time is not here: when a lease expires is
the leader's to decide (raftkv/node/leases.py), and it says so through the log (a LeaseRevoke
with expired=True), so every replica deletes the same keys at the same revision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Lease", "LeaseTable"]


@dataclass(slots=True)
class Lease:
    lease_id: int
    ttl_s: int
    granted_revision: int
    keys: set[str] = field(default_factory=set)


class LeaseTable:
    def __init__(self) -> None:
        self.leases: dict[int, Lease] = {}
        self._owner: dict[str, int] = {}  # key -> the lease it is attached to

    def grant(self, lease_id: int, ttl_s: int, revision: int) -> Lease:
        assert lease_id not in self.leases, lease_id
        lease = self.leases[lease_id] = Lease(lease_id, ttl_s, revision)
        return lease

    def revoke(self, lease_id: int) -> Lease:
        """Remove the lease; the caller deletes its keys."""
        lease = self.leases.pop(lease_id)
        for key in lease.keys:
            del self._owner[key]
        return lease

    def attach(self, key: str, lease_id: int) -> None:
        """`key` now belongs to `lease_id` (0: to no lease)."""
        self.detach(key)
        if lease_id:
            self.leases[lease_id].keys.add(key)
            self._owner[key] = lease_id

    def detach(self, key: str) -> None:
        owner = self._owner.pop(key, None)
        if owner is not None:
            self.leases[owner].keys.discard(key)

    def __contains__(self, lease_id: int) -> bool:
        return lease_id in self.leases

    def rows(self) -> list[list[object]]:
        """Canonical rows for a snapshot: [id, ttl, granted revision, sorted keys], by id."""
        return [[lease.lease_id, lease.ttl_s, lease.granted_revision, sorted(lease.keys)]
                for lease in sorted(self.leases.values(), key=lambda lease: lease.lease_id)]

    @classmethod
    def from_rows(cls, rows: list[list[object]]) -> LeaseTable:
        table = cls()
        for lease_id, ttl_s, revision, keys in rows:
            assert type(lease_id) is int and type(ttl_s) is int and type(revision) is int and type(keys) is list
            table.leases[lease_id] = Lease(lease_id, ttl_s, revision, set(keys))
            for key in keys:
                table._owner[key] = lease_id
        return table
