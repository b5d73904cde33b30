"""etcd's Cluster service (member list, add, remove, promote) and Maintenance service (status,
hashes, alarms, leader moves, snapshots) over the node's member service and Raft state.

A member's clientURLs are its etcd gRPC endpoint (what etcd's clients dial), learned once per
member from its `/raft-state` (`etcdURL`) and remembered: a member's id never changes address.
A member that does not answer yet is listed with no client URL, as etcd lists an unstarted one.

MemberAdd carries a peer URL and whether the member is a learner, no name and no client URL: the
member is added by its peer address (MemberService.add_unstarted: a learner, or a voter at once
under etcd 3.5's strict reconfiguration check) and listed as etcd lists an unstarted member, with
an empty name and no client URLs, until `raftkv node --join ... --advertise-peer` on that address
takes it over and publishes its name and client URL. Only the leader adds members; a follower
relays the request to the leader's JSON gateway (`/v3/cluster/member/add`: raftkv's own
POST /members needs a name), with the caller's credentials, and passes on its etcd error as is.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from google.protobuf import json_format

from raftkv.byte_text import packb
from raftkv.client import Client, ClusterUnreachableError
from raftkv.core import Role
from raftkv.etcd import errors
from raftkv.etcd.errors import translate, unary, unimplemented
from raftkv.etcd.identity import Identity, number_of
from raftkv.etcd.pb import rpc_pb2, rpc_pb2_grpc
from raftkv.node import NodeHost
from raftkv.node.backup import ETCD_ALIGN_BYTES, take_backup
from raftkv.node.forwarding import CALLER_AUTHORIZATION, FORWARD_TIMEOUT_S

__all__ = ["API_VERSION", "ClusterService", "MaintenanceService"]

API_VERSION = "3.5.0"  # the etcd API level served (the pinned protos' release line), for clients that check it
ASK_ENDPOINT_TIMEOUT_S = 1.0
MOVE_LEADER_WAIT_S = 3.0
SNAPSHOT_CHUNK_BYTES = 64 * 1024  # well under any client's largest message
MEMBER_ADD_PATH = "/v3/cluster/member/add"  # the leader's gateway route a follower relays MemberAdd to
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, node: NodeHost, identity: Identity, own_endpoint: str | None) -> None:
        self.node = node
        self.identity = identity
        self._endpoints: dict[str, str] = {node.id: own_endpoint} if own_endpoint else {}

    async def members(self) -> list[rpc_pb2.Member]:
        rows = self.node.members.describe()
        await asyncio.gather(*(self._learn_endpoint(row["id"], row["clientURL"]) for row in rows
                               if row["id"] not in self._endpoints and row["clientURL"]))
        return [rpc_pb2.Member(ID=number_of(row["id"]), name=row["name"], peerURLs=[f"http://{row['peerURL']}"],
                               clientURLs=[self._endpoints[row["id"]]] if row["id"] in self._endpoints else [],
                               isLearner=row["role"] == "learner") for row in rows]

    async def _learn_endpoint(self, member_id: str, client_url: str) -> None:
        try:
            access = self.node.members.access
            async with Client([client_url], timeout_s=ASK_ENDPOINT_TIMEOUT_S, access=access) as client:
                status, state = await client.request("GET", "/raft-state")
        except ClusterUnreachableError:
            return
        if status == 200 and isinstance(state, dict) and state.get("etcdURL"):
            self._endpoints[member_id] = state["etcdURL"]

    @unary
    async def MemberList(self, request: rpc_pb2.MemberListRequest,
                         context: grpc.aio.ServicerContext) -> rpc_pb2.MemberListResponse:
        if request.linearizable:
            await self.node.read_barrier()
        return rpc_pb2.MemberListResponse(header=self.identity.header(), members=await self.members())

    @unary
    async def MemberAdd(self, request: rpc_pb2.MemberAddRequest,
                        context: grpc.aio.ServicerContext) -> rpc_pb2.MemberAddResponse:
        peer = _peer_address(list(request.peerURLs))

        async def relay(leader: str) -> str:
            return await self._relay_member_add(leader, request)

        member_id = await self.node.members.add_unstarted(peer, request.isLearner, relay)
        members = await self.members()
        number = number_of(member_id)
        added = next((m for m in members if number == m.ID), None)
        if added is None:  # (a relayed add is applied here before the relay returns: see _relay_member_add)
            added = rpc_pb2.Member(ID=number, peerURLs=[f"http://{peer}"], isLearner=request.isLearner)
        return rpc_pb2.MemberAddResponse(header=self.identity.header(), member=added, members=members)

    async def _relay_member_add(self, leader: str, request: rpc_pb2.MemberAddRequest) -> str:
        """Have the leader add the member (through its JSON gateway, as the caller); the new member's
        id, once this node has applied the change too."""
        url = self.node.members.url_of(leader)
        if url is None:
            raise errors.NO_LEADER()
        caller = CALLER_AUTHORIZATION.get()
        body = json_format.MessageToDict(request, preserving_proto_field_name=True)
        try:
            async with Client([url], timeout_s=FORWARD_TIMEOUT_S, access=self.node.members.access) as client:
                status, answer = await client.request("POST", MEMBER_ADD_PATH, body,
                                                      headers=None if caller is None else {"Authorization": caller})
        except ClusterUnreachableError:
            raise errors.TIMEOUT() from None  # it may have reached the leader: the add may still happen
        if status != 200 or not isinstance(answer, dict) or "member" not in answer:
            code = _CODES.get(answer.get("code")) if isinstance(answer, dict) else None
            message = answer.get("message") if isinstance(answer, dict) else None
            if code is None or not isinstance(message, str):
                raise errors.EtcdError(grpc.StatusCode.UNAVAILABLE, f"etcdserver: the leader answered {status}")
            raise errors.EtcdError(code, message)
        await self.node.read_barrier()  # so this node's member table has it too
        return self.identity.member_named(int(answer["member"]["ID"]))

    @unary
    async def MemberUpdate(self, request: rpc_pb2.MemberUpdateRequest,
                           context: grpc.aio.ServicerContext) -> rpc_pb2.MemberUpdateResponse:
        member_id = self.identity.member_named(request.ID)
        await self.node.move_member(member_id, _peer_address(list(request.peerURLs)))
        return rpc_pb2.MemberUpdateResponse(header=self.identity.header(), members=await self.members())

    @unary
    async def MemberRemove(self, request: rpc_pb2.MemberRemoveRequest,
                           context: grpc.aio.ServicerContext) -> rpc_pb2.MemberRemoveResponse:
        await self.node.remove_member(self.identity.member_named(request.ID))
        return rpc_pb2.MemberRemoveResponse(header=self.identity.header(), members=await self.members())

    @unary
    async def MemberPromote(self, request: rpc_pb2.MemberPromoteRequest,
                            context: grpc.aio.ServicerContext) -> rpc_pb2.MemberPromoteResponse:
        await self.node.promote_member(self.identity.member_named(request.ID))
        return rpc_pb2.MemberPromoteResponse(header=self.identity.header(), members=await self.members())


class MaintenanceService(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, node: NodeHost, identity: Identity) -> None:
        self.node = node
        self.identity = identity

    @unary
    async def Status(self, request: rpc_pb2.StatusRequest,
                     context: grpc.aio.ServicerContext) -> rpc_pb2.StatusResponse:
        core = self.node.group.core
        size = _disk_bytes(self.node.cfg.storage_dir)
        problems = [f"this node was removed from the cluster: {self.node.removed}"] if self.node.removed else []
        return rpc_pb2.StatusResponse(header=self.identity.header(), version=API_VERSION, dbSize=size,
                                      dbSizeInUse=size, leader=self.identity.leader_number(),
                                      raftIndex=core.log.committed, raftTerm=core.term,
                                      raftAppliedIndex=core.log.applied, errors=problems,
                                      isLearner=self.node.id in core.conf.learners)

    @unary
    async def HashKV(self, request: rpc_pb2.HashKVRequest,
                     context: grpc.aio.ServicerContext) -> rpc_pb2.HashKVResponse:
        kv = self.node.kv
        revision = request.revision or kv.revision
        if revision > kv.revision:
            raise errors.FUTURE_REV()
        items, _ = kv.range(revision=revision)
        digest = 0
        for key, found in items:  # the same keys at the same revision hash the same on every replica
            row = [key, found.value, found.create_revision, found.mod_revision, found.version, found.lease]
            digest = zlib.crc32(packb(row), digest)
        return rpc_pb2.HashKVResponse(header=self.identity.header(), hash=digest,
                                      compact_revision=kv.store.compacted)

    @unary
    async def Hash(self, request: rpc_pb2.HashRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.HashResponse:
        return rpc_pb2.HashResponse(header=self.identity.header(), hash=int(self.node.kv.digest()[:8], 16))

    @unary
    async def Alarm(self, request: rpc_pb2.AlarmRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.AlarmResponse:
        if request.action != rpc_pb2.AlarmRequest.GET:
            raise unimplemented("raising or clearing alarms", "raftkv raises none (it has no space quota)")
        return rpc_pb2.AlarmResponse(header=self.identity.header(), alarms=[])

    @unary
    async def MoveLeader(self, request: rpc_pb2.MoveLeaderRequest,
                         context: grpc.aio.ServicerContext) -> rpc_pb2.MoveLeaderResponse:
        core = self.node.group.core
        if core.role is not Role.LEADER:
            raise errors.EtcdError(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: not leader")
        try:
            target = self.identity.member_named(request.targetID)
        except errors.EtcdError:
            raise errors.BAD_TRANSFEREE() from None  # as etcd: no such member is no transferee
        if target not in core.conf.voters or target == self.node.id:
            raise errors.BAD_TRANSFEREE()
        self.node.group.transfer_leadership(target)
        deadline = time.monotonic() + MOVE_LEADER_WAIT_S  # etcd answers once the target leads
        while core.leader_id != target:
            if time.monotonic() > deadline:
                raise errors.TIMEOUT()
            await asyncio.sleep(0.02)
        return rpc_pb2.MoveLeaderResponse(header=self.identity.header())

    @unary
    async def Defragment(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise unimplemented("Defragment", "the WAL and snapshots have no free pages to reclaim")

    async def Snapshot(self, request: rpc_pb2.SnapshotRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        """raftkv's backup file (node/backup.py, what `raftkv snapshot save` writes and `raftkv snapshot
        restore` reads), not etcd's bolt database, framed as etcd frames its snapshot (padding and a
        sha256 at the end, which etcdctl requires): taken after a read barrier, so every write
        acknowledged before the request is in it."""
        try:
            await self.node.read_barrier()
        except Exception as exc:
            if (error := translate(exc)) is None:
                raise
            await context.abort(error.code, error.message)
        image = await take_backup(self.node.kv, self.node.id)
        header = self.identity.header(image.header.revision)
        padding = bytes(-image.size() % ETCD_ALIGN_BYTES)  # etcd's trailer: see backup._etcd_trailer_holds
        left, digest = image.size() + len(padding) + hashlib.sha256().digest_size, hashlib.sha256()
        for chunk in [*image.chunks(SNAPSHOT_CHUNK_BYTES), padding]:
            digest.update(chunk)
            left -= len(chunk)
            yield rpc_pb2.SnapshotResponse(header=header, remaining_bytes=left, blob=bytes(chunk))
        yield rpc_pb2.SnapshotResponse(header=header, remaining_bytes=0, blob=digest.digest())

    @unary
    async def Downgrade(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise unimplemented("Downgrade", "raftkv has one storage version")


def _peer_address(urls: list[str]) -> str:
    """The host:port of a MemberAdd's or MemberUpdate's peer URLs (etcd: one or more
    http(s)://host:port); a raftkv member has one peer address."""
    if len(urls) > 1:
        raise errors.invalid("raftkv members have one peer address: give one peer URL")
    try:
        parts = urlsplit(urls[0]) if urls else None
        port = parts.port if parts else None
    except ValueError:
        port = None
    if parts is None or port is None or parts.scheme not in ("http", "https") or not parts.hostname \
            or parts.path not in ("", "/") or parts.query:
        raise errors.BAD_MEMBER_URLS()
    return f"{parts.hostname}:{port}"


def _disk_bytes(directory: Path) -> int:
    """What the node's storage (WAL segments and snapshots) takes on disk: blocks allocated, not
    lengths (a WAL segment is made its full length at once, a hole until written)."""
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:  # a segment or snapshot removed while we walked
                continue
    return total
