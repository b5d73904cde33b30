"""etcd's Lease service over the node's lessor (node/lessor.py).

Grants and revocations go through the log; a keep-alive and a time-to-live question are the
leader's (a follower's lessor relays them), so a lease's deadline is one clock's. As etcd does, a
keep-alive or time-to-live of a lease that does not exist is an answer, not an error (TTL 0 on the
keep-alive stream, TTL -1 for time-to-live): clients read those as "expired or revoked".

While auth is on any user may grant, keep alive, list and ask about leases, as over raftkv's HTTP
API; revoking one deletes its keys, so it needs write access to each (admission.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from raftkv.byte_text import as_bytes
from raftkv.etcd import errors
from raftkv.etcd.admission import Admission
from raftkv.etcd.errors import translate, unary
from raftkv.etcd.identity import Identity
from raftkv.etcd.kv import check_result
from raftkv.etcd.pb import rpc_pb2, rpc_pb2_grpc
from raftkv.etcd.streams import OpenStreams, unless_ending
from raftkv.kv import MAX_LEASE_TTL_S, Access
from raftkv.node import NodeHost

__all__ = ["LeaseService"]

MIN_TTL_S = 1


class LeaseService(rpc_pb2_grpc.LeaseServicer):
    def __init__(self, node: NodeHost, identity: Identity, streams: OpenStreams, admission: Admission) -> None:
        self.node = node
        self.identity = identity
        self.streams = streams
        self.admission = admission

    @unary
    async def LeaseGrant(self, request: rpc_pb2.LeaseGrantRequest,
                         context: grpc.aio.ServicerContext) -> rpc_pb2.LeaseGrantResponse:
        if request.TTL > MAX_LEASE_TTL_S:
            raise errors.LEASE_TTL_TOO_LARGE()
        if request.ID < 0:
            raise errors.invalid("etcdserver: a lease ID is positive")
        if request.ID and request.ID in self.node.kv.leases:
            raise errors.LEASE_EXISTS()
        result = await self.node.grant_lease(max(request.TTL, MIN_TTL_S), request.ID or None)
        if not result.get("ok"):  # granted meanwhile under the same ID
            raise errors.LEASE_EXISTS()
        return rpc_pb2.LeaseGrantResponse(header=self.identity.header(result["revision"]), ID=result["lease"],
                                          TTL=result["ttl"])

    @unary
    async def LeaseRevoke(self, request: rpc_pb2.LeaseRevokeRequest,
                          context: grpc.aio.ServicerContext) -> rpc_pb2.LeaseRevokeResponse:
        if request.ID <= 0:  # no lease's id (etcd's ids are positive; 0 is "no lease")
            raise errors.LEASE_NOT_FOUND()
        lease = self.node.kv.leases.leases.get(request.ID)
        for key in sorted(lease.keys) if lease is not None else ():
            self.admission.require(Access.WRITE, key)
        result = check_result(await self.node.revoke_lease(request.ID))
        return rpc_pb2.LeaseRevokeResponse(header=self.identity.header(result["revision"]))

    async def LeaseKeepAlive(self, requests: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest],
                             context: grpc.aio.ServicerContext) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
        with self.streams.held() as ending:
            while (request := await unless_ending(anext(aiter(requests), None), ending, context)) is not None:
                if request.ID <= 0:
                    yield rpc_pb2.LeaseKeepAliveResponse(header=self.identity.header(), ID=request.ID, TTL=0)
                    continue
                try:
                    ttl = (await self.node.keepalive_lease(request.ID))["ttl"]
                except Exception as exc:
                    error = translate(exc)
                    if error is None:
                        raise
                    if not errors.is_lease_not_found(error):
                        await context.abort(error.code, error.message)
                    ttl = 0
                yield rpc_pb2.LeaseKeepAliveResponse(header=self.identity.header(), ID=request.ID, TTL=ttl)

    @unary
    async def LeaseTimeToLive(self, request: rpc_pb2.LeaseTimeToLiveRequest,
                              context: grpc.aio.ServicerContext) -> rpc_pb2.LeaseTimeToLiveResponse:
        if request.ID <= 0:
            return rpc_pb2.LeaseTimeToLiveResponse(header=self.identity.header(), ID=request.ID, TTL=-1)
        try:
            info: dict[str, Any] = await self.node.lease_info(request.ID)
        except Exception as exc:
            if not errors.is_lease_not_found(translate(exc)):
                raise
            return rpc_pb2.LeaseTimeToLiveResponse(header=self.identity.header(), ID=request.ID, TTL=-1)
        keys = [as_bytes(key) for key in info["keys"]] if request.keys else []
        return rpc_pb2.LeaseTimeToLiveResponse(header=self.identity.header(), ID=request.ID,
                                               TTL=int(info["remaining"]),  # etcd's whole seconds left, rounded
                                               grantedTTL=info["ttl"], keys=keys)  # down: 59 just after a grant of 60

    @unary
    async def LeaseLeases(self, request: rpc_pb2.LeaseLeasesRequest,
                          context: grpc.aio.ServicerContext) -> rpc_pb2.LeaseLeasesResponse:
        await self.node.read_barrier()
        leases = [rpc_pb2.LeaseStatus(ID=lease_id) for lease_id in sorted(self.node.kv.leases.leases)]
        return rpc_pb2.LeaseLeasesResponse(header=self.identity.header(), leases=leases)
