"""The etcd v3 gRPC server of one node: KV, Watch, Lease, Cluster, Maintenance and Auth over the
node's own functions and users.

It runs on the node's event loop beside the HTTP API (grpc.aio), on an address of its own
(`--listen-etcd`), so etcdctl and etcd's client libraries reach a node as they reach etcd. Every
call is admitted (admission.py) by an interceptor that wraps its handler: the check runs in the
call's own task, before the handler, so the user it finds is the handler's.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from raftkv.etcd.admission import Admission, rpc_name
from raftkv.etcd.errors import EtcdError
from raftkv.etcd.pb import rpc_pb2_grpc
from raftkv.etcd.services import Services

__all__ = ["MAX_REQUEST_BYTES", "start_etcd_server"]

log = logging.getLogger("raftkv.etcd")

MAX_REQUEST_BYTES = int(1.5 * 1024 * 1024) + 512  # etcd's default --max-request-bytes, plus gRPC framing


class _Admitting(grpc.aio.ServerInterceptor):
    """Each call admitted (or refused with etcd's error) before its handler runs."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    async def intercept_service(self, continuation: Any, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        rpc, admission = rpc_name(handler_call_details.method), self._admission

        async def admit(context: grpc.aio.ServicerContext) -> None:
            try:
                await admission.admit(rpc, context.invocation_metadata() or ())
            except EtcdError as e:
                await context.abort(e.code, e.message)

        streaming = (handler.request_streaming, handler.response_streaming)
        inner = {(False, False): handler.unary_unary, (False, True): handler.unary_stream,
                 (True, False): handler.stream_unary, (True, True): handler.stream_stream}[streaming]

        async def answer(request_or_stream: Any, context: grpc.aio.ServicerContext) -> Any:
            await admit(context)
            return await inner(request_or_stream, context)

        async def answers(request_or_stream: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await admit(context)
            async with contextlib.aclosing(inner(request_or_stream, context)) as stream:  # its finally runs
                async for message in stream:
                    yield message

        wrap = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}
        return wrap[streaming](answers if handler.response_streaming else answer,
                               request_deserializer=handler.request_deserializer,
                               response_serializer=handler.response_serializer)


async def start_etcd_server(services: Services, listen: tuple[str, int],
                            credentials: grpc.ServerCredentials | None = None) -> grpc.aio.Server:
    """Serve etcd's gRPC API on `listen`; over TLS with `credentials` (the client API's, as etcd
    serves both with its --cert-file)."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES)],
                             interceptors=[_Admitting(services.admission)])
    rpc_pb2_grpc.add_KVServicer_to_server(services.kv, server)
    rpc_pb2_grpc.add_WatchServicer_to_server(services.watch, server)
    rpc_pb2_grpc.add_LeaseServicer_to_server(services.lease, server)
    rpc_pb2_grpc.add_ClusterServicer_to_server(services.cluster, server)
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(services.maintenance, server)
    rpc_pb2_grpc.add_AuthServicer_to_server(services.auth, server)
    host, port = listen
    address = f"{host}:{port}"
    bound = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"cannot listen for etcd's API on {host}:{port}")
    await server.start()
    log.info("etcd API (gRPC) listening on %s:%d", host, port)
    return server
