"""The key-value clients of `--workload etcd`: workload.py's reads, writes and compare-and-sets,
sent through each node's etcd v3 gRPC API (`--listen-etcd`) instead of raftkv's HTTP API.

Theory of operation
-------------------
The same loop as workload.py (seeded choices of key, operation and node among the members of the
moment, unique integer values, no retries), on keys of their own (`chaos-e0`, ...) so that both
kinds of client can run in one run and one history, each key judged by the same checker:

    read    KV.Range (linearizable: the default); odd-     ok, the value (absent: None)
            numbered clients a KV.Txn of one range op
            (a txn that only reads is served as a read)
    write   KV.Put                                        ok
    cas     KV.Txn: compare value == expected (absent     ok, succeeded True or False
            expected: create_revision == 0), put on success

Values travel as the decimal text of the integer (etcd's values are bytes; raftkv keeps them as
text) and are read back as integers. Each node's etcd address is its `/raft-state` `etcdURL`,
learned once per member id (a member the member nemesis adds back is a new id). One channel per
node is shared by every client, with gRPC's own retries off (a client never retries) and a short
reconnect backoff (a restarted node is reached again within a second). With auth on, the clients
send etcd's `token` metadata: the run's token, or one etcd's Authenticate gives the run's user,
asked again once a node answers "invalid auth token".

How an answer becomes an outcome (the checker's semantics, as workload.py's for HTTP):

    OK                                      ok
    UNAVAILABLE "failed to connect to all   fail: the call never left (gRPC's retries are off, so
      addresses" (no connection was up)       nothing resends it)
    DEADLINE_EXCEEDED, CANCELLED, UNKNOWN,  unknown: the call may have reached the node; only the
      INTERNAL, any other UNAVAILABLE         answer was lost (a stream broken after sending, a
      from the transport                      paused node, a node killed mid-call)
    "etcdserver: request timed out ..."     unknown: proposed, then the node stopped waiting
    "etcdserver: leader changed",           unknown: etcd gives these for a call cut short, which
      "etcdserver: server stopped"            may still commit
    "etcdserver: no leader", and the other  fail: refused before it was proposed, or definitely not
      UNAVAILABLE "etcdserver: ..."           applied (raftkv/etcd/errors.py: NoLeaderError and
                                              NotAppliedError)
    INVALID_ARGUMENT, FAILED_PRECONDITION,  fail: refused before anything was done (the auth check
      PERMISSION_DENIED, UNAUTHENTICATED,     runs before the call's handler)
      NOT_FOUND, OUT_OF_RANGE, ...

A read that does not answer OK observed nothing: "fail", which the checker drops (as over HTTP).

Final reads (`final_reads`): every key on every final member, linearizably into the history, and
serializably (the member's local state, etcd's `--consistency s`) for the divergence check.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from raftkv.chaos.connect import run_session
from raftkv.chaos.recorder import Recorder
from raftkv.chaos.workload import REFUSED_BACKOFF_S, ClientPlan, WorkloadConfig, call
from raftkv.check import Operation
from raftkv.client import Access
from raftkv.etcd.pb import rpc_pb2, rpc_pb2_grpc

__all__ = ["EtcdNodes", "final_reads", "outcome_of", "perform", "run_clients"]

ASK_TIMEOUT_S = 1.0
CHANNEL_OPTIONS = [
    ("grpc.enable_retries", 0),  # a client never retries: not even gRPC's transparent retries
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
NEVER_SENT = ("failed to connect to all addresses", "connections to all backends failing")
MAYBE_APPLIED = ("etcdserver: request timed out", "etcdserver: leader changed", "etcdserver: server stopped")
_REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE,
            grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED,
            grpc.StatusCode.ABORTED}
INVALID_TOKEN = "etcdserver: invalid auth token"


def outcome_of(code: grpc.StatusCode, details: str) -> str:
    """"fail" or "unknown" for a write or cas that ended with this gRPC status (see the table above)."""
    if code is grpc.StatusCode.UNAVAILABLE:
        if details.startswith(MAYBE_APPLIED):
            return "unknown"
        if details.startswith("etcdserver: ") or any(phrase in details for phrase in NEVER_SENT):
            return "fail"
        return "unknown"
    return "fail" if code in _REFUSED else "unknown"


class EtcdNodes:
    """How the clients reach each member's etcd API: its address (learned from `/raft-state`), one
    channel per address (TLS as the run's Access says), and the auth token the calls carry."""

    def __init__(self, access: Access, timeout_s: float) -> None:
        self.access = access
        self.timeout_s = timeout_s
        self.addresses: dict[str, str] = {}  # member id -> etcdURL
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._token: str | None = access.credentials.token if access.credentials is not None else None
        self._token_lock = asyncio.Lock()

    async def learn(self, urls: Mapping[str, str]) -> list[str]:
        """Ask every member not known yet for its etcd address; the ids that serve none (or did not answer)."""
        missing = []
        async with run_session() as session:
            for member_id, url in sorted(urls.items()):
                if member_id in self.addresses:
                    continue
                status, state, _, _ = await call(session, "GET", f"{url}/raft-state", None, ASK_TIMEOUT_S)
                if status == 200 and isinstance(state, dict) and state.get("etcdURL"):
                    self.addresses[member_id] = state["etcdURL"]
                else:
                    missing.append(member_id)
        return missing

    def channel(self, member_id: str) -> grpc.aio.Channel:
        address = self.addresses[member_id]
        channel = self._channels.get(address)
        if channel is None:
            target = address.split("://", 1)[-1]
            if address.startswith("https://"):
                channel = grpc.aio.secure_channel(target, self._credentials(), options=CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
            self._channels[address] = channel
        return channel

    def _credentials(self) -> grpc.ChannelCredentials:
        tls = self.access.tls
        cert = tls.cert.read_bytes() if tls.cert is not None else None
        key = tls.key.read_bytes() if tls.key is not None else cert  # (a key may be in the certificate's file)
        return grpc.ssl_channel_credentials(root_certificates=tls.ca.read_bytes() if tls.ca is not None else None,
                                            private_key=key, certificate_chain=cert)

    async def metadata(self) -> list[tuple[str, str]] | None:
        """The calls' metadata: etcd's `token`, asked of etcd's Authenticate with the run's user if
        need be; None when the run has no credentials. Raises grpc.aio.AioRpcError when no member
        gives a token."""
        credentials = self.access.credentials
        if credentials is None:
            return None
        async with self._token_lock:
            if self._token is None:
                assert credentials.user is not None
                self._token = await self._authenticate(credentials.user, credentials.password or "")
        return [("token", self._token)]

    async def _authenticate(self, user: str, password: str) -> str:
        error: grpc.aio.AioRpcError | None = None
        for member_id in sorted(self.addresses):
            try:
                answer = await rpc_pb2_grpc.AuthStub(self.channel(member_id)).Authenticate(
                    rpc_pb2.AuthenticateRequest(name=user, password=password), timeout=self.timeout_s)
                return answer.token
            except grpc.aio.AioRpcError as e:
                error = e
        assert error is not None, "no member's etcd address is known"
        raise error

    def forget_token(self, token: list[tuple[str, str]] | None) -> None:
        """A node refused this token (expired, or signed before auth was turned on again): ask anew,
        unless the run was given its token (then there is no other)."""
        credentials = self.access.credentials
        if token is not None and credentials is not None and credentials.user is not None \
                and self._token == dict(token).get("token"):
            self._token = None

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


def _value(raw: bytes) -> Any:
    text = raw.decode()
    try:
        return int(text)
    except ValueError:
        return text  # not a value these clients write: the checker will say so


async def perform(nodes: EtcdNodes, recorder: Recorder, client: str, node: str, kind: str, key: str, value: Any,
                  expected: Any, timeout_s: float, serializable: bool = False,
                  read_by_txn: bool = False) -> tuple[Operation, dict[str, Any]]:
    """Send one call, record it (with its node and gRPC status); return both. `serializable`: a
    read of the node's local state, not recorded (the final divergence check's). `read_by_txn`: a
    read as a txn of one range op, not a Range."""
    stub, key_bytes = rpc_pb2_grpc.KVStub(nodes.channel(node)), key.encode()
    outcome, result, code, details, sent = "ok", None, grpc.StatusCode.OK, "", True
    try:
        metadata = await nodes.metadata()
    except grpc.aio.AioRpcError as e:  # no token: the call is not sent
        metadata, code, details, sent = None, e.code(), f"authenticating: {e.details()}", False
    start = recorder.now()
    try:
        if not sent:
            pass
        elif kind == "read":
            request = rpc_pb2.RangeRequest(key=key_bytes, serializable=serializable)
            if read_by_txn:
                assert not serializable, "a txn has no serializable form"
                read = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_range=request)])
                answer = await stub.Txn(read, timeout=timeout_s, metadata=metadata)
                found = answer.responses[0].response_range.kvs
            else:
                found = (await stub.Range(request, timeout=timeout_s, metadata=metadata)).kvs
            result = _value(found[0].value) if found else None
        elif kind == "write":
            await stub.Put(rpc_pb2.PutRequest(key=key_bytes, value=str(value).encode()), timeout=timeout_s,
                           metadata=metadata)
        else:
            guard = (rpc_pb2.Compare(key=key_bytes, target=rpc_pb2.Compare.CREATE, result=rpc_pb2.Compare.EQUAL,
                                     create_revision=0) if expected is None else
                     rpc_pb2.Compare(key=key_bytes, target=rpc_pb2.Compare.VALUE, result=rpc_pb2.Compare.EQUAL,
                                     value=str(expected).encode()))
            put = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key_bytes, value=str(value).encode()))
            answer = await stub.Txn(rpc_pb2.TxnRequest(compare=[guard], success=[put]), timeout=timeout_s,
                                    metadata=metadata)
            result = answer.succeeded
    except grpc.aio.AioRpcError as e:
        code, details = e.code(), e.details() or ""
        if details == INVALID_TOKEN:
            nodes.forget_token(metadata)
    end = recorder.now()
    if code is not grpc.StatusCode.OK:
        outcome, result = ("fail" if kind == "read" or not sent else outcome_of(code, details)), None
    op = Operation(client=client, kind=kind, key=key, invoke_time=start, complete_time=end,  # type: ignore[arg-type]
                   outcome=outcome, value=value if kind != "read" else None,  # type: ignore[arg-type]
                   expected=expected if kind == "cas" else None, result=result)
    meta: dict[str, Any] = {"node": node, "grpc": code.name}
    if details:
        meta["error"] = details[:200]
    if not serializable:
        recorder.record(op, **meta)
    return op, meta


async def _client_loop(index: int, cfg: WorkloadConfig, members: Callable[[], Mapping[str, str]],
                       recorder: Recorder, stop: asyncio.Event, nodes: EtcdNodes) -> None:
    plan = ClientPlan(cfg, index, "etcd-client")
    while not stop.is_set():
        urls = members()
        planned = plan.next(urls)
        node, pause_s = planned.node, planned.pause_s
        if node not in nodes.addresses and await nodes.learn({node: urls[node]}):
            pause_s += REFUSED_BACKOFF_S  # a new member not answering yet: nothing was sent
        else:
            op, meta = await perform(nodes, recorder, f"e{index}", node, planned.kind, planned.key, planned.value,
                                     planned.expected, cfg.op_timeout_s, read_by_txn=index % 2 == 1)
            plan.learn(planned, op)
            if op.outcome == "fail" and any(phrase in meta.get("error", "") for phrase in NEVER_SENT):
                pause_s += REFUSED_BACKOFF_S  # a node is down: do not flood the history with refusals
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), pause_s)


async def run_clients(cfg: WorkloadConfig, members: Callable[[], Mapping[str, str]], recorder: Recorder,
                      stop: asyncio.Event, nodes: EtcdNodes) -> None:
    """Run `cfg.clients` etcd clients until `stop` is set and each one's last call has finished."""
    await asyncio.gather(*(_client_loop(i, cfg, members, recorder, stop, nodes) for i in range(cfg.clients)))


async def final_reads(nodes: EtcdNodes, urls: Mapping[str, str], keys: list[str], recorder: Recorder,
                      timeout_s: float = 5.0) -> dict[str, dict[str, Any]]:
    """Every key on every member: linearizable reads into the history (client "final"), and
    {key: {member: its local value, or "<error ...>"}} from serializable ones."""
    local: dict[str, dict[str, Any]] = {k: {} for k in keys}
    unknown = set(await nodes.learn(urls))
    for key in keys:
        for node in sorted(urls):
            if node in unknown:
                local[key][node] = "<error: its etcd API did not answer>"
                continue
            await perform(nodes, recorder, "final", node, "read", key, None, None, timeout_s)
            op, meta = await perform(nodes, recorder, "final", node, "read", key, None, None, timeout_s,
                                     serializable=True)
            local[key][node] = op.result if op.outcome == "ok" else f"<error {meta['grpc']} {meta.get('error', '')}>"
    return local

