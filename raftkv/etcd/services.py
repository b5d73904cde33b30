"""The etcd services of one node, built once and shared by the gRPC server and the JSON gateway,
with the admission of their calls (admission.py) over the node's Gate, which its HTTP API shares."""

from __future__ import annotations

from dataclasses import dataclass

from raftkv.api.auth import Gate
from raftkv.etcd.admission import Admission
from raftkv.etcd.auth import AuthService
from raftkv.etcd.cluster import ClusterService, MaintenanceService
from raftkv.etcd.identity import Identity
from raftkv.etcd.kv import KVService
from raftkv.etcd.lease import LeaseService
from raftkv.etcd.streams import OpenStreams
from raftkv.etcd.watch import WatchService
from raftkv.node import NodeHost

__all__ = ["Services", "etcd_services"]


@dataclass(frozen=True)
class Services:
    kv: KVService
    watch: WatchService
    lease: LeaseService
    cluster: ClusterService
    maintenance: MaintenanceService
    auth: AuthService
    admission: Admission  # who may call what, over gRPC and the gateway alike
    streams: OpenStreams  # the watches and keep-alive streams being served, over gRPC or the gateway


def etcd_services(node: NodeHost, endpoint: str | None, gate: Gate) -> Services:
    """`endpoint`: where this node's gRPC API is reached (None: not served; the gateway still is);
    `gate`: the node's, which its HTTP API uses too."""
    identity, streams, admission = Identity(node), OpenStreams(), Admission(gate)
    return Services(KVService(node, identity, admission), WatchService(node, identity, streams, admission),
                    LeaseService(node, identity, streams, admission), ClusterService(node, identity, endpoint),
                    MaintenanceService(node, identity), AuthService(node, identity, admission), admission, streams)
