"""The etcd v3 gRPC server of one node: KV, Watch, Lease, Cluster and Maintenance over the node's
own functions, and Auth answering UNIMPLEMENTED (raftkv has no users or roles yet).

It runs on the node's event loop beside the HTTP API (grpc.aio), on an address of its own
(`--listen-etcd`), so etcdctl and etcd's client libraries reach a node as they reach etcd.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from raftkv.etcd.pb import rpc_pb2, rpc_pb2_grpc
from raftkv.etcd.services import Services

__all__ = ["MAX_REQUEST_BYTES", "start_etcd_server"]

log = logging.getLogger("raftkv.etcd")

MAX_REQUEST_BYTES = int(1.5 * 1024 * 1024) + 512  # etcd's default --max-request-bytes, plus gRPC framing
_AUTH_WHY = "raftkv has no users, roles or tokens yet; connect without --user"


def _auth_refusals() -> grpc.GenericRpcHandler:
    """Every Auth RPC, each answering UNIMPLEMENTED with why (not gRPC's bare "Method not found")."""
    service = rpc_pb2.DESCRIPTOR.services_by_name["Auth"]

    def refuse(name: str) -> Any:
        async def handler(_request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"raftkv does not implement Auth.{name}: {_AUTH_WHY}")
        return handler

    handlers = {}
    for method in service.methods:
        request_type = getattr(rpc_pb2, method.input_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            refuse(method.name), request_deserializer=request_type.FromString,
            response_serializer=lambda message: message.SerializeToString())
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


async def start_etcd_server(services: Services, listen: tuple[str, int]) -> grpc.aio.Server:
    """Serve etcd's gRPC API on `listen`."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES)])
    rpc_pb2_grpc.add_KVServicer_to_server(services.kv, server)
    rpc_pb2_grpc.add_WatchServicer_to_server(services.watch, server)
    rpc_pb2_grpc.add_LeaseServicer_to_server(services.lease, server)
    rpc_pb2_grpc.add_ClusterServicer_to_server(services.cluster, server)
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(services.maintenance, server)
    server.add_generic_rpc_handlers((_auth_refusals(),))
    host, port = listen
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot listen for etcd's API on {host}:{port}")
    await server.start()
    log.info("etcd API (gRPC) listening on %s:%d", host, port)
    return server
