"""The guided tour: demos of Raft done to the real cluster, captioned, one step per press of Next.

The runner (runner.py) says how a demo runs; the demos are the seed's four (classic.py), three that
need the lab (lab_demos.py), service discovery with a lease (service_discovery.py) and replacing a
dead machine (replace.py). `DEMOS` is their order.
"""

from __future__ import annotations

from . import classic, lab_demos, replace, service_discovery
from .runner import Demo, Tour, TourFailed

__all__ = ["DEMOS", "Tour", "TourFailed"]

DEMOS: dict[str, tuple[str, Demo]] = {
    "election": ("1. Leader election", classic.election),
    "failover": ("2. Leader failure", classic.failover),
    "partition": ("3. Network partition", classic.partition),
    "consistency": ("4. Consistency under failures", classic.consistency),
    "split-vote": ("5. Split vote", lab_demos.split_vote),
    "divergence": ("6. Log divergence and repair", lab_demos.divergence),
    "snapshot": ("7. Snapshots and InstallSnapshot", lab_demos.snapshot),
    "service-discovery": ("8. Service discovery with a lease", service_discovery.service_discovery),
    "replace": ("9. Replace a dead machine", replace.replace),  # last: it changes the membership for good
}
