"""The etcd services of one node, built once and shared by the gRPC server and the JSON gateway."""

from __future__ import annotations

from dataclasses import dataclass

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
    streams: OpenStreams  # the watches and keep-alive streams being served, over gRPC or the gateway


def etcd_services(node: NodeHost, endpoint: str | None) -> Services:
    """`endpoint`: where this node's gRPC API is reached (None: not served; the gateway still is)."""
    identity, streams = Identity(node), OpenStreams()
    return Services(KVService(node, identity), WatchService(node, identity, streams),
                    LeaseService(node, identity, streams), ClusterService(node, identity, endpoint),
                    MaintenanceService(node, identity), streams)
