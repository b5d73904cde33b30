"""The dashboard's trace receiver: OTLP over HTTP from the nodes of `raftkv up --trace`.

Theory of operation
-------------------
`raftkv up --trace` starts its nodes with OTEL_EXPORTER_OTLP_ENDPOINT pointing here, so each
node's OTLP exporter (node/tracing.py) POSTs its spans to `/v1/traces` as an
ExportTraceServiceRequest (protobuf, or OTLP's JSON form), decoded with opentelemetry-proto. Only
callers on this machine may post: the nodes of `raftkv up` talk to the dashboard over loopback.

`TraceStore` keeps what arrived as plain dicts, by trace, bounded: at most MAX_TRACES traces (the
oldest forgotten first) of at most MAX_SPANS_PER_TRACE spans. `GET /api/traces` lists the newest
traces; `GET /api/traces/{trace_id}` gives one trace's spans, and the batched spans of other traces
that link to it (an fsync that served this write among others lives in the first write's trace and
links to the rest: node/tracing.py), with the waterfall the page draws of them (waterfall.py).

The page learns which traces are here without asking: the store notes the traces each export
touched (`take_touched`), and the server tells the open pages, with whether tracing is on
(`tracing_state`: from the OTEL_* variables the supervisor gives its nodes, or, for a dashboard
attached to a remote cluster, from spans having arrived at all), so the write form's switch says
how to turn tracing on instead of pretending.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from raftkv.node.tracing import Sampling, wanted

from .waterfall import waterfall

__all__ = ["MAX_SPANS_PER_TRACE", "MAX_TRACES", "TRACES_KEY", "TraceStore", "add_trace_routes", "announce",
           "node_environment", "tracing_state"]

MAX_TRACES = 500
MAX_SPANS_PER_TRACE = 2000
LIST_LIMIT = 100
MAX_TOUCHED = 100  # trace ids told to the pages at once (the newest)
ANNOUNCE_EVERY_S = 0.5

_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_STATUS = {0: "unset", 1: "ok", 2: "error"}


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which)


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


class TraceStore:
    def __init__(self, max_traces: int = MAX_TRACES, max_spans: int = MAX_SPANS_PER_TRACE) -> None:
        self.max_traces, self.max_spans = max_traces, max_spans
        self.traces: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self.received = 0  # spans, since start
        self._touched: dict[str, None] = {}  # traces that got a span (or a link to them) since take_touched

    def add(self, request: ExportTraceServiceRequest) -> int:
        """Keep the request's spans; how many were kept."""
        kept = 0
        for rs in request.resource_spans:
            resource = _attributes(rs.resource.attributes)
            node = resource.get("raftkv.node") or resource.get("service.instance.id") or resource.get("service.name")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    kept += self._keep(node, s)
        self.received += kept
        return kept

    def _keep(self, node: Any, s: Any) -> int:
        trace_id = s.trace_id.hex()
        spans = self.traces.get(trace_id)
        if spans is None:
            spans = self.traces[trace_id] = []
            while len(self.traces) > self.max_traces:
                self.traces.popitem(last=False)
        if len(spans) >= self.max_spans:
            return 0
        for tid in (trace_id, *(ln.trace_id.hex() for ln in s.links)):
            self._touched.pop(tid, None)  # newest last
            self._touched[tid] = None
            if len(self._touched) > MAX_TOUCHED:
                del self._touched[next(iter(self._touched))]
        spans.append({
            "traceId": trace_id, "spanId": s.span_id.hex(), "parentSpanId": s.parent_span_id.hex() or None,
            "name": s.name, "kind": _KINDS.get(s.kind, str(s.kind)), "node": node,
            "startNs": s.start_time_unix_nano, "endNs": s.end_time_unix_nano,
            "attributes": _attributes(s.attributes),
            "events": [{"name": e.name, "timeNs": e.time_unix_nano, "attributes": _attributes(e.attributes)}
                       for e in s.events],
            "links": [{"traceId": ln.trace_id.hex(), "spanId": ln.span_id.hex()} for ln in s.links],
            "status": _STATUS.get(s.status.code, str(s.status.code)), "statusMessage": s.status.message,
        })
        return 1

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """The trace's spans, and the spans of other traces that link to it, by start time."""
        own = list(self.traces.get(trace_id, ()))
        linked = [s for tid, spans in self.traces.items() if tid != trace_id for s in spans
                  if any(ln["traceId"] == trace_id for ln in s["links"])]
        return sorted(own + linked, key=lambda s: s["startNs"])

    def take_touched(self) -> list[str]:
        """The traces that got spans since the last call (at most MAX_TOUCHED, the newest)."""
        touched, self._touched = list(self._touched), {}
        return touched

    def ids(self) -> list[str]:
        return list(self.traces)

    def summaries(self, limit: int = LIST_LIMIT) -> list[dict[str, Any]]:
        out = []
        for trace_id in reversed(self.traces):
            spans = self.traces[trace_id]
            ids = {s["spanId"] for s in spans}
            roots = [s for s in spans if s["parentSpanId"] is None or s["parentSpanId"] not in ids]
            root = min(roots or spans, key=lambda s: s["startNs"])
            out.append({"traceId": trace_id, "name": root["name"], "node": root["node"], "startNs": root["startNs"],
                        "durationMs": (max(s["endNs"] for s in spans) - min(s["startNs"] for s in spans)) / 1e6,
                        "spans": len(spans), "nodes": sorted({str(s["node"]) for s in spans})})
            if len(out) >= limit:
                break
        return out


TRACES_KEY = web.AppKey("traces", TraceStore)
NAMED_KEY: web.AppKey[Callable[[str], str]] = web.AppKey("trace_names")


# ---- is tracing on? ------------------------------------------------------------------------------

TURN_ON = ("tracing is off: start the cluster with `raftkv up --trace` (every request traced) or `raftkv up "
           "--trace --trace-ratio 0` (only the writes this switch asks for), and this dashboard draws each "
           "traced write's waterfall")


def tracing_state(node_env: Mapping[str, str] | None, store: TraceStore, here: tuple[str, int] | None) -> dict:
    """Whether the nodes send their traces to this dashboard, in words for the page.

    `node_env`: the environment the supervisor starts its nodes with (None: no supervisor, a
    dashboard attached to a remote cluster, whose nodes' variables it cannot know); `here`: the
    host and port this dashboard listens on."""
    if node_env is None:
        if store.received:
            return {"on": True, "here": True, "ratio": None,
                    "text": "tracing is on: the nodes send their traces here (at a ratio this dashboard does not "
                            "know; this switch makes sure a write is traced)"}
        where = f"http://{here[0]}:{here[1]}" if here else "this dashboard's address"
        return {"on": False, "here": False, "ratio": None,
                "text": f"no node has sent this dashboard a trace: start the nodes with "
                        f"OTEL_EXPORTER_OTLP_ENDPOINT={where} (or the cluster with `raftkv up --trace`)"}
    if not wanted(node_env):
        return {"on": False, "here": False, "ratio": None, "text": TURN_ON}
    kind = node_env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    endpoint = node_env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
        node_env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").rstrip("/") + "/v1/traces")
    ratio = _ratio(node_env)
    if kind != "otlp" or not _is_here(endpoint, here):
        to = "the console" if kind == "console" else endpoint
        return {"on": True, "here": False, "ratio": ratio,
                "text": f"the nodes trace, but send their spans to {to}, not to this dashboard: a traced write's "
                        "trace id is in its answer; look for it there"}
    if ratio == 0:
        text = ("tracing is on for the requests that ask for it (X-Raftkv-Trace: 1, as this switch does), and "
                "the nodes send their traces here")
    else:
        share = ("the requests their sampler picks" if ratio is None else "every request" if ratio >= 1
                 else f"{ratio * 100:g}% of requests")
        text = (f"tracing is on: the nodes send the traces of {share} here"
                + ("" if ratio is not None and ratio >= 1 else "; this switch makes sure this write is traced"))
    return {"on": True, "here": True, "ratio": ratio, "text": text}


async def announce(store: TraceStore, emit: Callable[[dict], Any], node_env: Mapping[str, str] | None,
                   here: tuple[str, int] | None, every_s: float = ANNOUNCE_EVERY_S) -> None:
    """Tell the open pages, at most every `every_s`, which traces got spans and whether tracing is
    on: an event they do not record (the page keeps the ids, to offer only traces that are here)."""
    last: dict | None = None
    while True:
        await asyncio.sleep(every_s)
        state, touched = tracing_state(node_env, store, here), store.take_touched()
        if touched or state != last:
            emit({"type": "traces", "ids": touched, "tracing": state, "recorded": False})
            last = state


def _ratio(env: Mapping[str, str]) -> float | None:
    """The share of new traces the nodes sample, as node/tracing.py reads their variables (without
    OTEL_TRACES_SAMPLER: raftkv's default, 1%)."""
    return Sampling.from_env(env).ratio


def _is_here(endpoint: str, here: tuple[str, int] | None) -> bool:
    if here is None:
        return False
    try:
        url = urlsplit(endpoint)
        host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    except ValueError:
        return False
    if port != here[1]:
        return False
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    return host == here[0] or loopback or here[0] in ("0.0.0.0", "::", "")


def node_environment(supervisor: Any) -> dict[str, str] | None:
    """The variables the supervisor's node processes run with (its own `env` over this process's)."""
    return None if supervisor is None else {**os.environ, **getattr(supervisor, "env", {})}


def _from_this_machine(request: web.Request) -> bool:
    """From loopback, or from the very address it reached (a dashboard listening on one address)."""
    peer = request.remote
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    try:
        return peer is not None and (ipaddress.ip_address(peer.split("%")[0]).is_loopback
                                     or (sockname is not None and peer == sockname[0]))
    except ValueError:
        return False


async def receive(request: web.Request) -> web.Response:
    """POST /v1/traces: OTLP/HTTP, protobuf or JSON."""
    if not _from_this_machine(request):
        raise web.HTTPForbidden(text="traces are taken from this machine's nodes only")
    body = await request.read()
    export = ExportTraceServiceRequest()
    try:
        if request.content_type == "application/json":
            json_format.Parse(body, export)
        else:
            export.ParseFromString(body)
    except (DecodeError, json_format.ParseError) as e:
        raise web.HTTPBadRequest(text=f"not an OTLP ExportTraceServiceRequest: {e}") from None
    request.app[TRACES_KEY].add(export)
    if request.content_type == "application/json":
        return web.json_response({})
    return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf")


async def list_traces(request: web.Request) -> web.Response:
    store = request.app[TRACES_KEY]
    return web.json_response({"traces": store.summaries(), "spansReceived": store.received})


async def one_trace(request: web.Request) -> web.Response:
    trace_id = request.match_info["trace_id"].lower()
    spans = request.app[TRACES_KEY].trace(trace_id)
    if not spans:
        raise web.HTTPNotFound(text=f"no spans of trace {trace_id} have arrived")
    return web.json_response({"traceId": trace_id, "spans": spans,
                              "waterfall": waterfall(trace_id, spans, request.app.get(NAMED_KEY, str))})


def add_trace_routes(app: web.Application, store: TraceStore | None = None,
                     named: Callable[[str], str] | None = None) -> TraceStore:
    """The receiver and the two views, on `app`; the store they share. `named`: a node id as the
    page names it."""
    store = app[TRACES_KEY] = store or TraceStore()
    if named is not None:
        app[NAMED_KEY] = named
    app.router.add_post("/v1/traces", receive)
    app.router.add_get("/api/traces", list_traces)
    app.router.add_get("/api/traces/{trace_id}", one_trace)
    return store
