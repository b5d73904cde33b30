"""The span of a client request, while tracing is on (raftkv/node/tracing.py says what is traced).

`request_spans(tracing)` is an aiohttp middleware, the outermost, installed by `create_app` only
while tracing is on: with tracing off no request pays for it. It traces the key-value routes
only (the dashboard polls /health, /metrics and /raft-state many times a second; those would
bury the writes). It first decides whether the request is sampled (`Sampling.decide`: the
sampler the OTEL_* variables name, by the trace id it draws, or by the caller's W3C `traceparent`
under the parent-based samplers; always when the caller asks with `X-Raftkv-Trace: 1`); a request
not sampled goes straight to its handler, with no span, no context and nothing for the group to
look at. A sampled one gets a SERVER span named after the route (`PUT /kv/{key}`), the child of
the caller's `traceparent` if it sent one, current while the handler runs, so the group finds it
when the handler proposes or reads, and the node's log lines written meanwhile carry its ids. Its
answer names its trace in `X-Raftkv-Trace-Id`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, StatusCode, use_span

from raftkv.node.tracing import ASKED_ATTRIBUTE, TRACE_HEADER, TRACE_ID_HEADER, Tracing

__all__ = ["TRACED_ROUTES", "TRACE_ID_HEADER", "request_spans"]

log = logging.getLogger("raftkv.api")

TRACED_ROUTES = frozenset({"/kv", "/kv/{key}", "/txn", "/{key}"})
_YES = frozenset({"1", "true", "yes", "on"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_spans(tracing: Tracing) -> Callable[..., Any]:
    tracer, decide, ids = tracing.tracer, tracing.sampling.decide, tracing.ids

    @web.middleware
    async def traced(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = None if resource is None else resource.canonical
        if route not in TRACED_ROUTES:
            return await handler(request)
        headers = request.headers
        asked = headers.get(TRACE_HEADER, "").strip().lower() in _YES
        trace_id = decide(headers.get("traceparent"), asked)
        if trace_id is None:
            return await handler(request)  # not sampled: nothing of OpenTelemetry is made for it
        if ids is not None:
            ids.next_trace_id = trace_id  # the id the decision drew (0: the caller's, or the SDK's to draw)
        try:
            span = tracer.start_span(
                f"{request.method} {route}", propagate.extract(headers), SpanKind.SERVER,
                attributes={"http.request.method": request.method, "http.route": route, "url.path": request.path,
                            "raftkv.node": tracing.node_id, ASKED_ATTRIBUTE: asked})
        finally:
            if ids is not None:
                ids.next_trace_id = 0  # a caller's parent, found by the SDK's propagator, left it unused
        with use_span(span, end_on_exit=True):
            response = await handler(request)
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(StatusCode.ERROR)
            sc = span.get_span_context()
            if sc.trace_flags.sampled:
                # One line per traced request, with its ids (node/tracing.py adds them to log lines).
                log.info("traced request method=%s route=%s status=%d", request.method, route, response.status)
                if not response.prepared:
                    response.headers[TRACE_ID_HEADER] = f"{sc.trace_id:032x}"
            return response

    return traced
