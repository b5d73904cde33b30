"""etcd's v3 JSON gateway on the client port: `POST /v3/kv/put`, `/v3/kv/range`, `/v3/watch`, ...

Theory of operation
-------------------
etcd serves its gRPC API as JSON too (grpc-gateway): each RPC is a POST whose body is the
request message in protobuf's JSON mapping (bytes as base64, 64-bit integers as strings, field
names as in the .proto) and whose answer is the response message likewise. This gateway calls the
very service objects the gRPC server runs (kv.py, lease.py, ...), so the two cannot differ.

Streams: `/v3/watch` and `/v3/lease/keepalive` take one or more request messages in the body and
answer newline-delimited `{"result": <response>}` objects as they come, as grpc-gateway does; a
watch goes on until the client closes the connection, or the node shuts down. Errors are grpc-gateway's
`{"error", "code", "message"}` with the HTTP status grpc-gateway gives the gRPC code.
`GET /version` says which etcd API level is served (clients such as etcd3gw read it to choose the
gateway's path).

Auth: `/v3/auth/*` as etcd's gateway routes them. Every call is admitted as over gRPC
(admission.py), with the token of `/v3/auth/authenticate` (or of raftkv's `POST /auth/token`) in
the `Authorization` header, bare as etcd's gateway takes it or as `Bearer`; raftkv's HTTP
middleware lets `/v3/...` through to this check (api/auth.py, Need.ETCD).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from raftkv.etcd.cluster import API_VERSION
from raftkv.etcd.errors import EtcdError
from raftkv.etcd.pb import rpc_pb2
from raftkv.etcd.services import Services

__all__ = ["add_gateway_routes"]

# path -> (service, RPC); the kv/lease/* paths are etcd's older spellings of lease/*.
ROUTES: dict[str, tuple[str, str]] = {
    "/v3/kv/range": ("kv", "Range"), "/v3/kv/put": ("kv", "Put"), "/v3/kv/deleterange": ("kv", "DeleteRange"),
    "/v3/kv/txn": ("kv", "Txn"), "/v3/kv/compaction": ("kv", "Compact"),
    "/v3/watch": ("watch", "Watch"),
    "/v3/lease/grant": ("lease", "LeaseGrant"), "/v3/lease/revoke": ("lease", "LeaseRevoke"),
    "/v3/kv/lease/revoke": ("lease", "LeaseRevoke"), "/v3/lease/keepalive": ("lease", "LeaseKeepAlive"),
    "/v3/lease/timetolive": ("lease", "LeaseTimeToLive"), "/v3/kv/lease/timetolive": ("lease", "LeaseTimeToLive"),
    "/v3/lease/leases": ("lease", "LeaseLeases"), "/v3/kv/lease/leases": ("lease", "LeaseLeases"),
    "/v3/cluster/member/list": ("cluster", "MemberList"), "/v3/cluster/member/add": ("cluster", "MemberAdd"),
    "/v3/cluster/member/remove": ("cluster", "MemberRemove"),
    "/v3/cluster/member/update": ("cluster", "MemberUpdate"),
    "/v3/cluster/member/promote": ("cluster", "MemberPromote"),
    "/v3/maintenance/alarm": ("maintenance", "Alarm"), "/v3/maintenance/status": ("maintenance", "Status"),
    "/v3/maintenance/defragment": ("maintenance", "Defragment"), "/v3/maintenance/hash": ("maintenance", "Hash"),
    "/v3/maintenance/hashkv": ("maintenance", "HashKV"), "/v3/maintenance/snapshot": ("maintenance", "Snapshot"),
    "/v3/maintenance/transfer-leadership": ("maintenance", "MoveLeader"),
    "/v3/maintenance/downgrade": ("maintenance", "Downgrade"),
    "/v3/auth/enable": ("auth", "AuthEnable"), "/v3/auth/disable": ("auth", "AuthDisable"),
    "/v3/auth/status": ("auth", "AuthStatus"), "/v3/auth/authenticate": ("auth", "Authenticate"),
    "/v3/auth/user/add": ("auth", "UserAdd"), "/v3/auth/user/get": ("auth", "UserGet"),
    "/v3/auth/user/list": ("auth", "UserList"), "/v3/auth/user/delete": ("auth", "UserDelete"),
    "/v3/auth/user/changepw": ("auth", "UserChangePassword"), "/v3/auth/user/grant": ("auth", "UserGrantRole"),
    "/v3/auth/user/revoke": ("auth", "UserRevokeRole"), "/v3/auth/role/add": ("auth", "RoleAdd"),
    "/v3/auth/role/get": ("auth", "RoleGet"), "/v3/auth/role/list": ("auth", "RoleList"),
    "/v3/auth/role/delete": ("auth", "RoleDelete"), "/v3/auth/role/grant": ("auth", "RoleGrantPermission"),
    "/v3/auth/role/revoke": ("auth", "RoleRevokePermission"),
}
_SERVICE_NAMES = {"kv": "KV", "watch": "Watch", "lease": "Lease", "cluster": "Cluster", "maintenance": "Maintenance",
                  "auth": "Auth"}

# grpc-gateway's HTTP status for each gRPC code (runtime.HTTPStatusFromCode)
_HTTP_STATUS = {grpc.StatusCode.CANCELLED: 408, grpc.StatusCode.UNKNOWN: 500, grpc.StatusCode.INVALID_ARGUMENT: 400,
                grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.NOT_FOUND: 404,
                grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.PERMISSION_DENIED: 403,
                grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
                grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.ABORTED: 409,
                grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNIMPLEMENTED: 501,
                grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DATA_LOSS: 500}


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class _Context:
    """What the services ask of a gRPC call's context, for a call that came over HTTP: aborting."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Aborted(code, details)


@dataclass(frozen=True)
class _Rpc:
    name: str  # "KV.Range", as admission.py names it
    handler: Callable[..., Any]
    request_type: type[Message]
    streaming: bool


def _rpcs(services: Services) -> dict[str, _Rpc]:
    rpcs = {}
    for path, (service, name) in ROUTES.items():
        method = rpc_pb2.DESCRIPTOR.services_by_name[_SERVICE_NAMES[service]].methods_by_name[name]
        rpcs[path] = _Rpc(f"{_SERVICE_NAMES[service]}.{name}", getattr(getattr(services, service), name),
                          getattr(rpc_pb2, method.input_type.name), method.client_streaming)
    return rpcs


def add_gateway_routes(app: web.Application, services: Services) -> None:
    rpcs = _rpcs(services)

    async def call(request: web.Request) -> web.StreamResponse:
        rpc = rpcs[request.path]
        try:
            authorization = request.headers.get("Authorization")
            await services.admission.admit(rpc.name, [("authorization", authorization)] if authorization else [])
            messages = _messages(await request.text(), rpc.request_type)
            if rpc.streaming:
                return await _stream(request, rpc, messages)
            if len(messages) != 1:
                raise _Aborted(grpc.StatusCode.INVALID_ARGUMENT, "the body must be one JSON request")
            return web.json_response(_as_json(await rpc.handler(messages[0], _Context())))
        except (_Aborted, EtcdError) as e:
            return _error(e.code, e.message)

    async def version(_request: web.Request) -> web.StreamResponse:
        return web.json_response({"etcdserver": API_VERSION, "etcdcluster": API_VERSION})

    async def end_streams(_app: web.Application) -> None:
        services.streams.end_all()  # (streams.py says why)

    for path in rpcs:
        app.router.add_route("POST", path, call)
    app.router.add_get("/version", version)
    app.on_shutdown.append(end_streams)


def _messages(body: str, request_type: type[Message]) -> list[Message]:
    """The request messages of a body: one JSON object, or several one after another (a stream);
    an empty body is one empty request."""
    decoder, objects, text = json.JSONDecoder(), [], body.strip()
    try:
        while text:
            obj, end = decoder.raw_decode(text)
            objects.append(obj)
            text = text[end:].lstrip()
        for obj in objects:
            if type(obj) is not dict:
                raise ValueError(f"a request is a JSON object, not {json.dumps(obj)[:40]}")
            _check_base64(obj, request_type.DESCRIPTOR)
        return [json_format.ParseDict(obj, request_type()) for obj in objects or [{}]]
    except (ValueError, json_format.ParseError) as e:
        raise _Aborted(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {e}") from None


def _check_base64(obj: dict[str, Any], descriptor: Descriptor) -> None:
    """Every bytes field of `obj` (and of the messages in it) is base64 as etcd's gateway reads it,
    padded, in the standard or the URL alphabet: protobuf's own parser drops the characters it
    does not know and pads what is short, so "Zm9v@@" would name the key foo."""
    fields = {**descriptor.fields_by_name, **{f.json_name: f for f in descriptor.fields}}
    for name, value in obj.items():
        field = fields.get(name)
        if field is None:
            continue  # an unknown field: ParseDict says so
        values = value if field.is_repeated and type(value) is list else [value]
        for one in values:
            if field.type == field.TYPE_BYTES and type(one) is str:
                try:
                    base64.b64decode(one, altchars=b"-_" if "-" in one or "_" in one else None, validate=True)
                except binascii.Error:
                    raise ValueError(f"{name}: illegal base64 data {one[:40]!r}") from None
            elif field.type == field.TYPE_MESSAGE and type(one) is dict:
                _check_base64(one, field.message_type)


async def _stream(request: web.Request, rpc: _Rpc, messages: list[Message]) -> web.StreamResponse:
    async def requests() -> AsyncIterator[Message]:
        for message in messages:
            yield message

    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    answers = rpc.handler(requests(), _Context())
    try:
        async with contextlib.aclosing(answers):
            async for answer in answers:
                await response.write(json.dumps({"result": _as_json(answer)}).encode() + b"\n")
    except _Aborted as e:
        await response.write(json.dumps({"error": _error_body(e.code, e.message)}).encode() + b"\n")
    except ConnectionResetError:
        return response  # the client went away: the watch ends with it
    await response.write_eof()
    return response


def _as_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _error_body(code: grpc.StatusCode, message: str) -> dict[str, Any]:
    return {"error": message, "code": code.value[0], "message": message}


def _error(code: grpc.StatusCode, message: str) -> web.Response:
    return web.json_response(_error_body(code, message), status=_HTTP_STATUS.get(code, 500))
