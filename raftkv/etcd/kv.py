"""etcd's KV service (Range, Put, DeleteRange, Txn, Compact) over a node's state machine.

Theory of operation
-------------------
Writes become the node's own commands (kv/commands.py) and go through `node.propose`, as the
HTTP API's do: a follower forwards them to the leader and answers once the entry is applied here.
A Put is a `Put`; a DeleteRange and a Txn are a `Txn` (a delete of an absent key is no error in
etcd, and a txn's range and delete ops take etcd's [key, range_end) bounds). A Put that keeps
the key's value or lease (ignore_value, ignore_lease) reads them and writes with a txn whose
compare is the key's mod revision, again if another write came between. Reads wait for a
ReadIndex round (`node.read_barrier`) unless the request is `serializable`, then read the local
store, at a past revision if asked. A txn whose ops only read is a read too, as in etcd: its
compares and ranges are evaluated on the local store after a ReadIndex round, with no log entry.
A txn's range is read whole, so that its count and its sort see every key in it, as etcd's do.

What the store does not do itself is done here, over the keys a range read returned: etcd's
sort order and target, the min/max create and mod revision filters, keys_only and count_only,
then the limit. The count is of the keys in the range before those filters, as etcd counts.

While auth is on (admission.py), a read needs read access to its key or range, checked after the
read barrier; a write is proposed as its caller and needs what the command needs (write access to
what it puts and deletes, read access to what a txn compares and reads), and read access to what
its answer shows besides: the previous values of prev_kv, as etcd asks.
"""

from __future__ import annotations

from typing import Any

import grpc

from raftkv.api.auth import Requirement
from raftkv.byte_text import as_text
from raftkv.etcd import errors
from raftkv.etcd.admission import Admission, range_need
from raftkv.etcd.convert import Bounds, key_text, kv_from_result, kv_message, value_bytes
from raftkv.etcd.errors import EtcdError, invalid, unary, unimplemented
from raftkv.etcd.identity import Identity
from raftkv.etcd.pb import rpc_pb2, rpc_pb2_grpc
from raftkv.kv import (
    INVALID,
    MAX_TXN_OPS,
    NOT_FOUND,
    Access,
    Command,
    Compare,
    CompareOp,
    InvalidCommand,
    KeyValue,
    Put,
    Target,
    Txn,
    TxnDelete,
    TxnDeleteRange,
    TxnOp,
    TxnPut,
    TxnRange,
    validate,
)
from raftkv.node import NodeHost

__all__ = ["KVService", "check_result"]

MAX_KEEP_ATTEMPTS = 10  # of a put keeping the current value or lease, while other writes race it

_RESULTS = {rpc_pb2.Compare.EQUAL: CompareOp.EQ, rpc_pb2.Compare.NOT_EQUAL: CompareOp.NE,
            rpc_pb2.Compare.GREATER: CompareOp.GT, rpc_pb2.Compare.LESS: CompareOp.LT}
_TARGETS = {rpc_pb2.Compare.VERSION: (Target.VERSION, "version"),
            rpc_pb2.Compare.CREATE: (Target.CREATE_REVISION, "create_revision"),
            rpc_pb2.Compare.MOD: (Target.MOD_REVISION, "mod_revision"),
            rpc_pb2.Compare.VALUE: (Target.VALUE, "value"),
            rpc_pb2.Compare.LEASE: (Target.LEASE, "lease")}
_SORT_KEYS = {rpc_pb2.RangeRequest.KEY: lambda item: item[0],
              rpc_pb2.RangeRequest.VERSION: lambda item: item[1].version,
              rpc_pb2.RangeRequest.CREATE: lambda item: item[1].create_revision,
              rpc_pb2.RangeRequest.MOD: lambda item: item[1].mod_revision,
              rpc_pb2.RangeRequest.VALUE: lambda item: value_bytes(item[1].value)}


def check_result(result: dict[str, Any]) -> dict[str, Any]:
    """A state machine result, or the etcd error for its failure."""
    if result.get("ok"):
        return result
    if result.get("error") == NOT_FOUND and "lease" in result:
        raise errors.LEASE_NOT_FOUND()
    if result.get("error") == INVALID:
        raise invalid(f"etcdserver: {result.get('message')}")
    raise EtcdError(grpc.StatusCode.FAILED_PRECONDITION, f"etcdserver: {result.get('message') or result}")


class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(self, node: NodeHost, identity: Identity, admission: Admission) -> None:
        self.node = node
        self.identity = identity
        self.admission = admission

    # ---- reads ----------------------------------------------------------------------------------

    @unary
    async def Range(self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.RangeResponse:
        bounds = Bounds(request.key, request.range_end)
        _check_sort(request)
        if not request.serializable:
            await self.node.read_barrier(gathered=True)  # grpc.aio hands calls over one per loop iteration
        self.admission.require(*range_need(Access.READ, bounds))  # after the barrier: auth as of the read
        kv = self.node.kv
        revision = request.revision if request.revision > 0 else None  # etcd: 0 or less reads now
        if revision is not None and revision > kv.revision:
            raise errors.FUTURE_REV()
        items, _ = kv.range("", None, bounds.start, bounds.stop, revision)
        return self._range_response(request, items, kv.revision)

    def _range_response(self, request: rpc_pb2.RangeRequest, items: list[tuple[str, KeyValue]],
                        revision: int) -> rpc_pb2.RangeResponse:
        """etcd's filters, sort, limit, keys_only and count_only over every key of a range."""
        count = len(items)
        if request.count_only:  # as etcd: the count alone, and no `more`, since no key is returned
            return rpc_pb2.RangeResponse(header=self.identity.header(revision), count=count)
        items = [(k, v) for k, v in items if _passes(request, v)]
        if request.sort_order != rpc_pb2.RangeRequest.NONE or request.sort_target != rpc_pb2.RangeRequest.KEY:
            descending = request.sort_order == rpc_pb2.RangeRequest.DESCEND
            items.sort(key=_SORT_KEYS[request.sort_target], reverse=descending)
        more = request.limit > 0 and len(items) > request.limit  # etcd: 0 or less is no limit
        if more:
            items = items[: request.limit]
        kvs = [kv_message(k, v, request.keys_only) for k, v in items]
        return rpc_pb2.RangeResponse(header=self.identity.header(revision), kvs=kvs, more=more, count=count)

    # ---- writes ---------------------------------------------------------------------------------

    async def _propose(self, cmd: Command, also: tuple[Requirement, ...] = ()) -> dict[str, Any]:
        """The state machine's result for `cmd`, proposed as the caller (who needs what `cmd` needs,
        and `also`). Checked here first, as the HTTP API checks its commands: a malformed one is
        refused before it reaches the log, the same on every node."""
        _validate(cmd)
        return check_result(await self.admission.propose(cmd, also))

    async def _read(self, cmd: Txn) -> dict[str, Any]:
        """The result of a txn that only reads, answered as etcd answers one: from this node's
        store once a read of it is linearizable, with no log entry (nor its cost on every node)."""
        _validate(cmd)
        await self.node.read_barrier(gathered=True)
        self.admission.require_for(cmd)  # after the barrier: auth as of the read
        return check_result(self.node.kv.read_txn(cmd))

    @unary
    async def Put(self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.PutResponse:
        if request.ignore_value or request.ignore_lease:
            revision, prev = await self._put_keeping(request)
        else:
            cmd = Put(key_text(request.key), as_text(request.value), lease=request.lease)
            result = await self._propose(cmd, _shown_put(request))
            revision, prev = result["revision"], result.get("prev")
        return rpc_pb2.PutResponse(header=self.identity.header(revision),
                                   prev_kv=kv_from_result(prev) if prev and request.prev_kv else None)

    async def _put_keeping(self, request: rpc_pb2.PutRequest) -> tuple[int, dict[str, Any]]:
        """A put that keeps the key's current value (ignore_value) or lease (ignore_lease): read it,
        then write on condition that the key is still that version, until no write came between."""
        if request.ignore_value and request.value:
            raise errors.VALUE_PROVIDED()
        if request.ignore_lease and request.lease:
            raise errors.LEASE_PROVIDED()
        key = key_text(request.key)
        self.admission.require(Access.WRITE, key)  # (the txn below reads the key too, and needs to)
        for _ in range(MAX_KEEP_ATTEMPTS):
            await self.node.read_barrier(gathered=True)  # a call's read, as Range's
            current = self.node.kv.get(key)
            if current is None:
                raise errors.KEY_NOT_FOUND()
            value = current.value if request.ignore_value else as_text(request.value)
            lease = current.lease if request.ignore_lease else request.lease
            unchanged = Compare(key, Target.MOD_REVISION, CompareOp.EQ, current.mod_revision)
            result = await self._propose(Txn((unchanged,), (TxnPut(key, value, lease),)), _shown_put(request))
            if result["succeeded"]:
                return result["revision"], result["responses"][0]["prev"]
        raise errors.TIMEOUT()  # written by others each time; the client may retry

    @unary
    async def DeleteRange(self, request: rpc_pb2.DeleteRangeRequest,
                          context: grpc.aio.ServicerContext) -> rpc_pb2.DeleteRangeResponse:
        result = await self._propose(Txn(success=(_delete_op(request),)), _shown_delete(request))
        return self._delete_response(request, result["responses"][0], result["revision"])

    def _delete_response(self, request: rpc_pb2.DeleteRangeRequest, answer: dict[str, Any],
                         revision: int) -> rpc_pb2.DeleteRangeResponse:
        prevs = answer["prevs"] if answer["op"] == "delete_range" else [answer["prev"]] if answer["deleted"] else []
        return rpc_pb2.DeleteRangeResponse(header=self.identity.header(revision), deleted=len(prevs),
                                           prev_kvs=[kv_from_result(p) for p in prevs] if request.prev_kv else [])

    @unary
    async def Txn(self, request: rpc_pb2.TxnRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.TxnResponse:
        if max(len(request.compare), len(request.success), len(request.failure)) > MAX_TXN_OPS:
            raise errors.TOO_MANY_OPS()
        cmd = Txn(tuple(_compare(c) for c in request.compare), _ops(request.success), _ops(request.failure))
        if _reads_only(request):
            result = await self._read(cmd)
        else:
            result = await self._propose(cmd, _shown_by_ops((*request.success, *request.failure)))
        branch = request.success if result["succeeded"] else request.failure
        responses = [self._op_response(op, answer, result["revision"])
                     for op, answer in zip(branch, result["responses"], strict=True)]
        return rpc_pb2.TxnResponse(header=self.identity.header(result["revision"]), succeeded=result["succeeded"],
                                   responses=responses)

    def _op_response(self, op: rpc_pb2.RequestOp, answer: dict[str, Any], revision: int) -> rpc_pb2.ResponseOp:
        kind = op.WhichOneof("request")
        if kind == "request_range":
            items = [(shown["key"], _key_value(shown)) for shown in answer["items"]]
            return rpc_pb2.ResponseOp(response_range=self._range_response(op.request_range, items, revision))
        if kind == "request_put":
            prev = answer["prev"] if op.request_put.prev_kv else None
            return rpc_pb2.ResponseOp(response_put=rpc_pb2.PutResponse(
                header=self.identity.header(revision), prev_kv=kv_from_result(prev) if prev else None))
        return rpc_pb2.ResponseOp(response_delete_range=self._delete_response(op.request_delete_range, answer,
                                                                              revision))

    @unary
    async def Compact(self, request: rpc_pb2.CompactionRequest,
                      context: grpc.aio.ServicerContext) -> rpc_pb2.CompactionResponse:
        kv = self.node.kv
        if request.revision > kv.revision:
            raise errors.FUTURE_REV()
        if request.revision <= kv.store.compacted:
            raise errors.COMPACTED()
        result = await self.node.compact(request.revision)
        if not result.get("ok"):  # the store moved on or compacted meanwhile: say which, as etcd would
            raise errors.FUTURE_REV() if request.revision > kv.revision else errors.COMPACTED()
        return rpc_pb2.CompactionResponse(header=self.identity.header(result["revision"]))


def _validate(cmd: Command) -> None:
    try:
        validate(cmd)
    except InvalidCommand as e:
        raise invalid(f"etcdserver: {e}") from None


def _reads_only(request: rpc_pb2.TxnRequest) -> bool:
    return all(op.WhichOneof("request") == "request_range" for op in (*request.success, *request.failure))


def _passes(request: rpc_pb2.RangeRequest, kv: KeyValue) -> bool:
    return ((not request.min_mod_revision or kv.mod_revision >= request.min_mod_revision)
            and (not request.max_mod_revision or kv.mod_revision <= request.max_mod_revision)
            and (not request.min_create_revision or kv.create_revision >= request.min_create_revision)
            and (not request.max_create_revision or kv.create_revision <= request.max_create_revision))


def _key_value(shown: dict[str, Any]) -> KeyValue:
    return KeyValue(shown["value"], shown["create_revision"], shown["mod_revision"], shown["version"],
                    shown.get("lease", 0))


def _shown_put(request: rpc_pb2.PutRequest) -> tuple[Requirement, ...]:
    """What a put's answer shows besides what it writes: the previous value, for prev_kv."""
    return ((Access.READ, key_text(request.key), None),) if request.prev_kv else ()


def _shown_delete(request: rpc_pb2.DeleteRangeRequest) -> tuple[Requirement, ...]:
    return (range_need(Access.READ, Bounds(request.key, request.range_end)),) if request.prev_kv else ()


def _shown_by_ops(ops: Any) -> tuple[Requirement, ...]:
    """What the puts and deletes of a txn's branches show with prev_kv (both branches: what the
    txn may do is checked before it is known which runs)."""
    shown: list[Requirement] = []
    for op in ops:
        kind = op.WhichOneof("request")
        if kind == "request_put":
            shown += _shown_put(op.request_put)
        elif kind == "request_delete_range":
            shown += _shown_delete(op.request_delete_range)
    return tuple(shown)


def _refuse_ignore(request: rpc_pb2.PutRequest) -> None:
    if request.ignore_value or request.ignore_lease:
        raise unimplemented("ignore_value and ignore_lease in a txn",
                            "keeping the current value needs the state machine to read it as the txn applies")


def _delete_op(request: rpc_pb2.DeleteRangeRequest) -> TxnOp:
    bounds = Bounds(request.key, request.range_end)
    return TxnDelete(bounds.start) if bounds.single else TxnDeleteRange(bounds.start, bounds.end)


def _check_sort(request: rpc_pb2.RangeRequest) -> None:
    if request.sort_order not in rpc_pb2.RangeRequest.SortOrder.values() or request.sort_target not in _SORT_KEYS:
        raise errors.INVALID_SORT_OPTION()


def _compare(c: rpc_pb2.Compare) -> Compare:
    if c.range_end:
        raise unimplemented("Compare.range_end", "a compare names one key")
    if c.target not in _TARGETS:
        raise invalid(f"etcdserver: unknown compare target {c.target}")
    if c.result not in _RESULTS:
        raise invalid(f"etcdserver: unknown compare result {c.result}")
    target, field = _TARGETS[c.target]
    if c.WhichOneof("target_union") not in (field, None):
        raise invalid(f"etcdserver: a {field} compare carries {c.WhichOneof('target_union')}")
    value = as_text(c.value) if target is Target.VALUE else getattr(c, field)
    return Compare(key_text(c.key), target, _RESULTS[c.result], value)


def _ops(ops: Any) -> tuple[TxnOp, ...]:
    """A branch's ops as the state machine's. As in etcd, a branch may not put a key twice, nor put
    a key it also deletes (overlapping deletes are fine)."""
    converted: list[TxnOp] = []
    puts: set[str] = set()
    deletes: list[Bounds] = []
    for op in ops:
        kind = op.WhichOneof("request")
        if kind == "request_range":
            r = op.request_range
            if r.revision > 0:
                raise unimplemented("RangeRequest.revision inside a txn", "a txn reads the store as it is")
            _check_sort(r)
            bounds = Bounds(r.key, r.range_end)
            converted.append(TxnRange(limit=None, start=bounds.start, end=bounds.stop))  # count and sort see all
        elif kind == "request_put":
            _refuse_ignore(op.request_put)
            key = key_text(op.request_put.key)
            if key in puts or any(b.contains(key) for b in deletes):
                raise errors.DUPLICATE_KEY()
            puts.add(key)
            converted.append(TxnPut(key, as_text(op.request_put.value), op.request_put.lease))
        elif kind == "request_delete_range":
            bounds = Bounds(op.request_delete_range.key, op.request_delete_range.range_end)
            if any(bounds.contains(key) for key in puts):
                raise errors.DUPLICATE_KEY()
            deletes.append(bounds)
            converted.append(_delete_op(op.request_delete_range))
        elif kind is None:
            raise errors.KEY_NOT_FOUND()  # etcd's answer to an op that asks nothing
        else:
            raise unimplemented("nested txns (RequestOp.request_txn)", "a txn's ops are puts, deletes and ranges")
    return tuple(converted)
