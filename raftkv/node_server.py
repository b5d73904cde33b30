"""Run one node process: its HTTP API around its NodeHost, until SIGTERM or Ctrl-C.

Shutdown order matters: first stop accepting HTTP requests and let in-flight ones finish (their
writes commit or time out), then stop the Raft loop (which completes the Ready in progress, so
everything acknowledged is fsynced), then close the WAL. Event streams (`/raft/events` WebSockets, the
dashboard's among them) and key watches (`/watch`, Server-Sent Events) never finish by themselves:
they are closed as shutdown begins, or aiohttp would wait for them twice `shutdown_timeout` (10 s)
before the node could exit. etcd's streams are ended the same way (raftkv/etcd/streams.py).

With client TLS (node/config.py), the HTTP port and the etcd gRPC port serve it with the same
certificate, and both require a client certificate when a client CA is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import weakref
from pathlib import Path

import grpc
from aiohttp import WSCloseCode, web

from raftkv.api.auth import Gate
from raftkv.api.connections import BoundedRunner, ConnectionLimits
from raftkv.api.http import create_app
from raftkv.etcd import add_gateway_routes, etcd_services, start_etcd_server
from raftkv.node import NodeConfig, NodeHost, tracing
from raftkv.node.heap import HeapWatch, tune_gc
from raftkv.tls import server_context

log = logging.getLogger("raftkv.node")

HEAP_CHECK_EVERY_S = 60.0


async def collect_when_grown(heap: HeapWatch) -> None:
    """The node's rare full garbage collection (node/heap.py), checked once a minute."""
    while True:
        await asyncio.sleep(HEAP_CHECK_EVERY_S)
        if (seconds := heap.collect_if_grown()) is not None:
            log.info("full garbage collection took %.0f ms; %d objects remain", seconds * 1000, heap.baseline)


def close_event_streams_on_shutdown(app: web.Application) -> None:
    streams: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
    # Server-Sent Events (GET /watch) have no close of their own: their handlers are cancelled,
    # and end the stream as when the client goes away.
    event_sources: weakref.WeakSet[asyncio.Task] = weakref.WeakSet()

    async def remember(_request: web.Request, response: web.StreamResponse) -> None:
        if isinstance(response, web.WebSocketResponse):
            streams.add(response)
        elif response.content_type == "text/event-stream" and (task := asyncio.current_task()) is not None:
            event_sources.add(task)

    async def close(_app: web.Application) -> None:
        for ws in list(streams):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"node shutting down")
        for task in list(event_sources):
            task.cancel()

    app.on_response_prepare.append(remember)
    app.on_shutdown.append(close)


async def serve(cfg: NodeConfig) -> None:
    tracing.setup_from_env(cfg.node_id)  # only if the OTEL_* variables ask (node/tracing.py)
    node = NodeHost(cfg)
    heap = tune_gc()
    gate = Gate(node)  # one for the HTTP API and etcd's: the same users, passwords checked once
    etcd = etcd_services(node, cfg.etcd_endpoint, gate)
    app = create_app(node, more_routes=lambda app: add_gateway_routes(app, etcd), gate=gate)
    close_event_streams_on_shutdown(app)
    # Connections held at once, and how long a slow client may hold one (api/connections.py).
    runner = BoundedRunner(app, ConnectionLimits.of(cfg), cfg.node_id, access_log=None,
                           shutdown_timeout=cfg.proposal_timeout_s)
    node.metrics.registry.register(runner.stats)
    await runner.setup()
    tls = None
    if cfg.client_tls_cert is not None and cfg.client_tls_key is not None:
        tls = server_context(cfg.client_tls_cert, cfg.client_tls_key, cfg.client_tls_ca)
    await web.TCPSite(runner, *cfg.client_listen_address(), reuse_address=True, ssl_context=tls).start()
    # Both client ports listen before the group starts: a client that finds one answering finds the
    # other too (gRPC's reconnect backoff would otherwise turn a refused first dial into seconds).
    etcd_address = cfg.etcd_listen_address()
    grpc_server = await start_etcd_server(etcd, etcd_address, _grpc_credentials(cfg)) if etcd_address else None
    await node.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    failed = node.group.failed
    assert failed is not None
    collecting = asyncio.ensure_future(collect_when_grown(heap))
    try:
        await asyncio.wait([asyncio.ensure_future(stop.wait()), failed], return_when=asyncio.FIRST_COMPLETED)
    finally:
        collecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collecting
        log.info("shutting down node=%s", cfg.node_id)
        etcd.streams.end_all()  # watches never end by themselves (etcd/streams.py)
        if grpc_server is not None:
            await grpc_server.stop(grace=cfg.proposal_timeout_s)
        await runner.cleanup()
        await node.stop()  # a failed group only halts: nothing more is written
        await asyncio.get_running_loop().run_in_executor(None, tracing.shutdown)  # export what is buffered
    if failed.done():
        raise SystemExit(f"node {cfg.node_id} stopped: {failed.result()!r} (see the log above)")


def _grpc_credentials(cfg: NodeConfig) -> grpc.ServerCredentials | None:
    """The client API's TLS for the etcd gRPC port: the same certificate, and the same demand for
    client certificates."""
    if cfg.client_tls_cert is None or cfg.client_tls_key is None:
        return None
    ca = cfg.client_tls_ca
    key, cert = Path(cfg.client_tls_key).read_bytes(), Path(cfg.client_tls_cert).read_bytes()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=Path(ca).read_bytes() if ca else None,
                                       require_client_auth=ca is not None)


def run(cfg: NodeConfig) -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (not on every platform)
        asyncio.run(serve(cfg))
    else:
        uvloop.run(serve(cfg))
