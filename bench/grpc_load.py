"""The closed-loop load driver over etcd's own gRPC API, for raftkv's etcd API and for etcd.

Theory of operation
-------------------
The same loop as `load.py` (`concurrency` clients, each waits for its answer before sending the
next request, uniform keys, fixed-size values, a warm-up outside the measured window), but every
request is an etcd v3 RPC made with the same generated stubs (raftkv/etcd/pb, etcd v3.5's
protocol buffers) over grpc.aio: a write is `KV.Put`, a read a linearizable `KV.Range` of one key.
Clients are pinned to endpoints round-robin ("spread") or all talk to the leader ("leader"), and
the clients of one endpoint share one channel (one HTTP/2 connection), as etcd's clientv3 does.
This is etcd's home ground: its own protocol, its own client library's shape, so the ratio to
etcd here is the honest one for that API.

A system gives `grpc_targets()` ("host:port" of each live member) and `grpc_leader_target()`.
"""

from __future__ import annotations

import asyncio
import random
from typing import Protocol

import grpc

from raftkv.etcd.pb import rpc_pb2, rpc_pb2_grpc

from .load import KEY_SPACE, REQUEST_TIMEOUT_S, LoadResult, Workload, closed_loop, make_value


class GrpcSystem(Protocol):
    name: str

    def grpc_targets(self) -> list[str]: ...
    def grpc_leader_target(self) -> str: ...


async def run_grpc_load(system: GrpcSystem, w: Workload, seed: int = 0, key_space: int = KEY_SPACE) -> LoadResult:
    """One closed-loop measurement of `w` ("write": KV.Put, "read": KV.Range) against `system`."""
    assert w.op in ("write", "read"), w.op
    targets = [system.grpc_leader_target()] if w.target == "leader" else system.grpc_targets()
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    stubs = [rpc_pb2_grpc.KVStub(c) for c in channels]
    value = make_value(w.value_bytes).encode()
    rng = random.Random(seed)
    keys = [f"k{rng.randrange(key_space):05d}".encode() for _ in range(4096)]

    async def request(i: int, n: int) -> bool:
        stub, key = stubs[i % len(stubs)], keys[n % len(keys)]
        try:
            if w.op == "write":
                await stub.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=REQUEST_TIMEOUT_S)
            else:
                await stub.Range(rpc_pb2.RangeRequest(key=key), timeout=REQUEST_TIMEOUT_S)
        except grpc.aio.AioRpcError:
            return False
        return True

    try:
        return await closed_loop(request, w)
    finally:
        await asyncio.gather(*(c.close() for c in channels))
