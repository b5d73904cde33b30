"""Spans of a write and of a read (OpenTelemetry), made by the driver around the pure core.

Theory of operation
-------------------
Tracing is off unless the standard OTEL_* variables ask for it: an OTLP endpoint
(OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), or OTEL_TRACES_EXPORTER set
to `otlp` or `console`; OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none turn it off. Only then
does `setup_from_env` build the SDK's TracerProvider with a BatchSpanProcessor and the OTLP/HTTP
exporter (both configured by their own OTEL_* variables) and set `active`. While `active` is None
nothing here runs: the group, the disk pump and the API each test one attribute and go on.

Which requests are traced is the sampler OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG name, as
the SDK defines the six standard ones, except the default: without OTEL_TRACES_SAMPLER raftkv
samples `parentbased_traceidratio` at OTEL_TRACES_SAMPLER_ARG, or DEFAULT_RATIO (0.2%) without it
(the SDK's own default traces every request, which about doubles a node's CPU per write). One
addition (`AskedSampler`): a request with `X-Raftkv-Trace: 1` is always traced, as is one whose
W3C `traceparent` has the sampled flag under the parent-based samplers.

The decision is taken once, at a request's entry, before any OpenTelemetry object is made
(`Sampling.decide`, from the request's two headers and a trace id drawn there, judged by the same
rule the SDK's sampler applies: the low 64 bits of the trace id against the ratio's bound). A
request not sampled costs one test in the API and nothing after it: no span, no context attached,
and every hook below returns before doing any per-entry work while nothing traced is held. A
sampled one's span is then made with that very trace id (`_EntryIds`), so the SDK's sampler, built
from the same `Sampling`, agrees with the entry.

The spans of a write, and where each is made:

    request node   PUT /kv/{key}        api/tracing.py: the request, until its answer is ready
    follower       forward to leader    ProposeForward sent .. ProposeAnswer back (one per forward,
                                        linked to every traced write it carries)
    follower       wait for commit      the leader's answer .. the entry committed here
    leader         propose              core.propose .. committed; an event per acknowledgement
    every node     write log, fsync     the disk pump: one span per batch (below)
    follower       acknowledge          sending the append acknowledgement after that fsync
    leader, and    apply                the state machine applying the entry
    request node

and of a linearizable read: `read index` (one per ReadIndex round, linked to the traced reads it
serves) and `wait for apply` (the round's answer .. this replica has applied that far).

Batched work is one span: a fsync that serves forty writes is one `fsync` span, the child of the
first traced write's span and linked (OTel span links) to every traced write it serves, never
forty spans. A span of a write on another node is the child of a span that node was told about
in a driver message (peer_messages.py): a follower's forward carries each write's traceparent
(`TracedProposeForward`), and the leader tells every follower, just before the AppendRequests that
carry them, the traceparent of its `propose` span for each new entry (`EntryTraces`); so one write
is one trace across every node. The core and its AppendRequest know nothing of any of it.

Time: spans made after the fact (the disk pump's, `apply`) are given wall-clock start and end
times in nanoseconds; everything else starts and ends when its event happens. Everything held is
bounded: at most MAX_HELD traced writes, forwards and rounds (past that a new one is not traced)
and MAX_HELD entries' contexts (past that the oldest is forgotten: one a follower never wrote,
because its EntryTraces came after the entry, must not hold a place for ever).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from raftkv.core import Entry, ReadState

__all__ = ["ASKED_ATTRIBUTE", "DEFAULT_RATIO", "TRACE_HEADER", "TRACE_ID_HEADER", "AskedSampler", "Sampling",
           "Tracing", "active", "setup_from_env", "shutdown", "wanted"]

log = logging.getLogger("raftkv.node")

TRACE_HEADER = "X-Raftkv-Trace"  # a request with this header set to 1 is always traced
TRACE_ID_HEADER = "X-Raftkv-Trace-Id"  # a traced request's answer names its trace (api/tracing.py)
ASKED_ATTRIBUTE = "raftkv.trace.asked"
MAX_HELD = 10_000  # traced writes, entries, forwards and read rounds held at once, each
_TRUE = frozenset({"1", "true", "yes", "on"})
DEFAULT_SAMPLER = "parentbased_traceidratio"  # without OTEL_TRACES_SAMPLER (the SDK's: parentbased_always_on)
# Its ratio without OTEL_TRACES_SAMPLER_ARG: one the write c=64 row stays within 3% at
# (bench/trace_ab.py --together: 0.002 cost it 2.3%, 0.01 cost it 4.5%).
DEFAULT_RATIO = 0.002
SAMPLERS = frozenset({"always_on", "always_off", "traceidratio",
                      "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"})
_LOW_64 = (1 << 64) - 1  # the part of a trace id the ratio samplers judge (TraceIdRatioBased)
_TRACEPARENT = re.compile(  # the W3C header, as the SDK's TraceContextTextMapPropagator reads it
    r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$")
_W3C_PROPAGATORS = frozenset({"tracecontext", "baggage"})

_propagator = TraceContextTextMapPropagator()

active: Tracing | None = None  # set by setup_from_env; None: tracing is off and costs nothing
_provider: Any = None


# ---- turning it on -------------------------------------------------------------------------------


def wanted(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* variables ask this process to export traces."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup_from_env(node_id: str, env: Mapping[str, str] = os.environ) -> Tracing | None:
    """Build the SDK's provider and exporter from the OTEL_* variables, if they ask for traces;
    the process's `Tracing` (also in `active`), or None."""
    global active, _provider
    if not wanted(env):
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    sampling = Sampling.from_env(env)
    attributes = {"service.instance.id": node_id, "raftkv.node": node_id}
    if str(Resource.create({}).attributes.get("service.name", "")).startswith("unknown_service"):
        attributes["service.name"] = "raftkv"  # unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name it
    ids = entry_ids()
    provider = TracerProvider(sampler=AskedSampler(sampling.sdk_sampler()), resource=Resource.create(attributes),
                              id_generator=ids)
    exporter: SpanExporter
    kind = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if kind == "console":
        exporter = ConsoleSpanExporter()
    else:
        if kind != "otlp" or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") != "http/protobuf":
            log.warning("tracing: only OTLP over HTTP (http/protobuf) is built in; exporting with it")
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        exporter = OTLPSpanExporter()  # its endpoint, headers, timeout and compression from OTEL_EXPORTER_OTLP_*
    provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_* tune it
    trace.set_tracer_provider(provider)
    _provider = provider
    active = Tracing(provider.get_tracer("raftkv"), node_id, sampling, ids)
    _log_trace_ids()
    log.info("tracing on node=%s sampler=%s", node_id, provider.sampler.get_description())
    return active


def entry_ids() -> Any:
    """The SDK's id generator, except that a request's span gets the trace id its entry drew and
    sampled by (`Sampling.decide`, set in `next_trace_id` just before the span is started), so
    that the SDK's sampler judges the id the entry judged."""
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class EntryIds(RandomIdGenerator):
        def __init__(self) -> None:
            self.next_trace_id = 0

        def generate_trace_id(self) -> int:
            trace_id, self.next_trace_id = self.next_trace_id, 0
            return trace_id or super().generate_trace_id()

    return EntryIds()


def shutdown() -> None:
    """Export what is still buffered (at a graceful stop)."""
    global active, _provider
    if _provider is not None:
        _provider.shutdown()
    active, _provider = None, None


@dataclass(frozen=True, slots=True)
class Sampling:
    """The sampler the OTEL_* variables name (raftkv's default without one), as a decision a
    request's entry takes before any OpenTelemetry object exists, and as the SDK's sampler."""

    sampler: str  # one of SAMPLERS
    ratio: float  # the share of new traces sampled: the traceidratio samplers' argument, else 1 or 0
    w3c_only: bool = True  # the propagators read only W3C headers: a traceparent is the only parent

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Sampling:
        named = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
        if named and named not in SAMPLERS:
            log.warning("tracing: unknown OTEL_TRACES_SAMPLER %r; using %s", named, DEFAULT_SAMPLER)
        sampler = named if named in SAMPLERS else DEFAULT_SAMPLER
        if sampler.endswith("always_on"):
            ratio = 1.0
        elif sampler.endswith("always_off"):
            ratio = 0.0
        else:
            try:
                ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", ""))
                if not 0 <= ratio <= 1:
                    raise ValueError(ratio)
            except ValueError:
                # The SDK's own fallback for a ratio sampler named with no usable argument is 1.0.
                ratio = 1.0 if named in SAMPLERS else DEFAULT_RATIO
        propagators = {p.strip().lower() for p in env.get("OTEL_PROPAGATORS", "tracecontext,baggage").split(",")}
        return cls(sampler, ratio, propagators <= _W3C_PROPAGATORS)

    @property
    def parent_based(self) -> bool:
        return self.sampler.startswith("parentbased_")

    @property
    def bound(self) -> int:
        """TraceIdRatioBased's: a trace is sampled if the low 64 bits of its id are below it."""
        return round(self.ratio * (_LOW_64 + 1))

    def sdk_sampler(self) -> Any:
        """The SDK's sampler that decides as `decide` does."""
        from opentelemetry.sdk.trace import sampling as s
        root = {1.0: s.ALWAYS_ON, 0.0: s.ALWAYS_OFF}[self.ratio] if "always" in self.sampler \
            else s.TraceIdRatioBased(self.ratio)
        return s.ParentBased(root) if self.parent_based else root

    def decide(self, traceparent: str | None, asked: bool) -> int | None:
        """A request's sampling, from its `traceparent` header and whether it asked for a trace
        (X-Raftkv-Trace): None, not sampled (make nothing); 0, sampled, or one the SDK must judge
        (another propagator than W3C's may find a parent), its span the child of the caller's;
        else sampled, a new trace with this id."""
        if not self.w3c_only:
            return 0
        parent = _parse_traceparent(traceparent) if traceparent else None
        if parent is not None:
            trace_id, sampled = parent
            if asked or (sampled if self.parent_based else trace_id & _LOW_64 < self.bound):
                return 0
            return None
        trace_id = random.getrandbits(128) or 1  # the SDK's RandomIdGenerator draws the same way
        return trace_id if asked or trace_id & _LOW_64 < self.bound else None


def _parse_traceparent(header: str) -> tuple[int, bool] | None:
    """(trace id, sampled) of a valid W3C traceparent, by the SDK propagator's rules; else None."""
    if len(header) > 512 or (m := _TRACEPARENT.match(header)) is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or int(trace_id, 16) == 0 or int(span_id, 16) == 0:
        return None
    return int(trace_id, 16), bool(int(flags, 16) & TraceFlags.SAMPLED)


class AskedSampler:
    """The sampler the OTEL_* variables chose, except that a request that asked for a trace
    (ASKED_ATTRIBUTE, from the X-Raftkv-Trace header) is always sampled."""

    def __init__(self, otherwise: Any) -> None:
        self.otherwise = otherwise

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str, kind: SpanKind | None = None,
                      attributes: Mapping[str, Any] | None = None, links: Sequence[Link] | None = None,
                      trace_state: Any = None) -> Any:
        from opentelemetry.sdk.trace.sampling import Decision, SamplingResult
        if attributes and attributes.get(ASKED_ATTRIBUTE):
            parent = trace.get_current_span(parent_context).get_span_context()
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes,
                                  parent.trace_state if parent.is_valid else None)
        return self.otherwise.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"AskedOr{{{self.otherwise.get_description()}}}"


# ---- the spans -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    """A log entry that belongs to a trace: the span context its spans on this node are children
    of, and on the leader the `propose` span itself (None on a follower)."""

    context: SpanContext
    span: Span | None = None
    term: int = 0
    acked_by: set[str] = field(default_factory=set)
    written: bool = False  # the disk pump wrote it here


class Tracing:
    def __init__(self, tracer: trace.Tracer, node_id: str, sampling: Sampling | None = None,
                 ids: Any = None) -> None:
        self.tracer = tracer
        self.node_id = node_id
        self.sampling = sampling or Sampling(DEFAULT_SAMPLER, DEFAULT_RATIO)
        self.ids = ids  # setup_from_env's id generator: its next_trace_id is a sampled request's trace id
        self._requests: dict[asyncio.Future, SpanContext] = {}  # a traced write's or read's answer -> its span
        self._waits: dict[asyncio.Future, Span] = {}  # "wait for commit" / "wait for apply", by answer
        self._entries: dict[int, _Entry] = {}  # by log index
        self._forwards: dict[int, Span] = {}  # by ticket
        self._rounds: dict[bytes, tuple[Span, list[tuple[asyncio.Future, SpanContext]]]] = {}  # by context

    # ---- what is held ----------------------------------------------------------------------------
    # The group and the disk pump ask these before any per-write or per-entry work: while nothing
    # traced is in flight (every request unsampled), each hook costs that one test.

    def holds_requests(self) -> bool:
        return bool(self._requests)

    def holds_entries(self) -> bool:
        return bool(self._entries)

    # ---- requests --------------------------------------------------------------------------------

    def track(self, answer: asyncio.Future) -> None:
        """A write or read is submitted in the current context: remember its span if it is traced."""
        sc = trace.get_current_span().get_span_context()
        if not sc.trace_flags.sampled or len(self._requests) >= MAX_HELD:
            return
        self._requests[answer] = sc
        answer.add_done_callback(self._answered)

    def _answered(self, answer: asyncio.Future) -> None:
        self._requests.pop(answer, None)
        wait = self._waits.pop(answer, None)
        if wait is not None:
            if answer.cancelled() or answer.exception() is not None:
                wait.set_status(StatusCode.ERROR, "cancelled" if answer.cancelled() else str(answer.exception()))
            wait.end()

    def traced(self, answer: asyncio.Future) -> SpanContext | None:
        return self._requests.get(answer)

    # ---- a follower forwards ---------------------------------------------------------------------

    def forwarding(self, ticket: int, leader: str, answers: Sequence[asyncio.Future]) -> tuple[bytes, ...] | None:
        """A forward of these writes leaves: the traceparent of each (b"": not traced), or None if
        none is traced."""
        if not self._requests:
            return None
        traced = [self._requests.get(a) for a in answers]
        firsts = [(a, sc) for a, sc in zip(answers, traced, strict=True) if sc is not None]
        if not firsts or len(self._forwards) >= MAX_HELD:
            return None
        span = self.tracer.start_span("forward to leader", _parent(firsts[0][1]), SpanKind.CLIENT,
                                      links=[Link(sc) for _, sc in firsts],
                                      attributes={"raftkv.node": self.node_id, "raftkv.leader": leader,
                                                  "raftkv.writes": len(answers)})
        self._forwards[ticket] = span
        # A forward the leader never answers ends with its first write's answer (a 504 or the like).
        firsts[0][0].add_done_callback(lambda _: self._end_forward(ticket, "the leader did not answer"))
        return tuple(b"" if sc is None else _traceparent(sc) for sc in traced)

    def forward_answered(self, ticket: int, index: int, error: str, answers: Sequence[asyncio.Future]) -> None:
        """The leader's ProposeAnswer: the forward ends; each traced write now waits for its commit."""
        self._end_forward(ticket, error if index == 0 else None)
        if index == 0 or not self._requests:
            return
        for i, answer in enumerate(answers):
            sc = self._requests.get(answer)
            if sc is not None and not answer.done() and answer not in self._waits:
                self._waits[answer] = self.tracer.start_span(
                    "wait for commit", _parent(sc), attributes={"raftkv.node": self.node_id, "raftkv.index": index + i})

    def _end_forward(self, ticket: int, error: str | None) -> None:
        span = self._forwards.pop(ticket, None)
        if span is not None:
            if error:
                span.set_status(StatusCode.ERROR, error)
            span.end()

    # ---- the leader proposes ---------------------------------------------------------------------

    def parents_of_forward(self, traceparents: Iterable[bytes]) -> list[SpanContext | None]:
        return [_from_traceparent(tp) for tp in traceparents]

    def proposed(self, first_index: int, term: int, parents: Sequence[SpanContext | None],
                 voters: Iterable[str] = ()) -> tuple[bytes, ...] | None:
        """The leader appended entries first_index.. for these writes' spans (None: not traced):
        a `propose` span each, naming the voters whose majority commits it (what a reader of the
        trace needs to tell which acknowledgement the commit waited for); the traceparents to tell
        the followers, or None if none is traced."""
        out, any_traced = [], False
        for i, parent in enumerate(parents):
            if parent is None:
                out.append(b"")
                continue
            index = first_index + i
            span = self.tracer.start_span("propose", _parent(parent), SpanKind.SERVER,
                                          attributes={"raftkv.node": self.node_id, "raftkv.index": index,
                                                      "raftkv.term": term, "raftkv.voters": sorted(voters)})
            self._hold(index, _Entry(span.get_span_context(), span, term))
            out.append(_traceparent(span.get_span_context()))
            any_traced = True
        return tuple(out) if any_traced else None

    def acknowledged(self, src: str, match_index: int) -> None:
        """A follower acknowledged the log up to `match_index`: an event on each traced entry's
        `propose` span it covers, the first time."""
        if not self._entries:
            return
        for index, entry in self._entries.items():
            if index <= match_index and entry.span is not None and src not in entry.acked_by:
                entry.acked_by.add(src)
                entry.span.add_event(f"acknowledged by {src}", {"raftkv.peer": src})

    # ---- a follower hears of the leader's entries ------------------------------------------------

    def entries_from_leader(self, first_index: int, traceparents: Sequence[bytes]) -> None:
        for i, tp in enumerate(traceparents):
            sc = _from_traceparent(tp) if tp else None
            if sc is not None:
                self._hold(first_index + i, _Entry(sc))

    def _hold(self, index: int, entry: _Entry) -> None:
        if len(self._entries) >= MAX_HELD:
            oldest = self._entries.pop(next(iter(self._entries)))
            if oldest.span is not None:
                oldest.span.set_status(StatusCode.ERROR, "forgotten: too many entries traced at once")
                oldest.span.end()
        old = self._entries.pop(index, None)  # a new leader's entry at the index of another
        if old is not None and old.span is not None:
            old.span.set_status(StatusCode.ERROR, "another entry took this index")
            old.span.end()
        self._entries[index] = entry

    # ---- the disk pump ---------------------------------------------------------------------------

    def persisted(self, entries: Iterable[Entry], started_ns: int, written_ns: int, synced_ns: int | None,
                  sent_ns: int, acknowledging: bool) -> None:
        """One batch of the disk pump: `write log` (started..written), `fsync` (written..synced,
        if it synced) and, on a follower, `acknowledge` (..sent); each one span for the whole
        batch, the child of its first traced entry's span, linked to all of them."""
        if not self._entries:
            return
        contexts: list[SpanContext] = []
        count = 0
        for e in entries:
            count += 1
            entry = self._entries.get(e.index)
            if entry is None:
                continue
            if entry.span is None:
                del self._entries[e.index]  # needed for nothing more
            else:
                entry.written = True
            if entry.context not in contexts:
                contexts.append(entry.context)
        if not contexts:
            return
        parent, links = _parent(contexts[0]), [Link(sc) for sc in contexts]
        attributes = {"raftkv.node": self.node_id, "raftkv.entries": count, "raftkv.traced_entries": len(contexts)}
        spans = [("write log", started_ns, written_ns)]
        if synced_ns is not None:
            spans.append(("fsync", written_ns, synced_ns))
        if acknowledging:
            spans.append(("acknowledge", synced_ns or written_ns, sent_ns))
        for name, start, end in spans:
            self.tracer.start_span(name, parent, links=links, attributes=attributes, start_time=start).end(end)

    # ---- commit and apply ------------------------------------------------------------------------

    def committed(self, entries: Iterable[Entry], placed: Mapping[int, Any],
                  committed_ns: int) -> dict[int, Context] | None:
        """Entries committed on this node (known at `committed_ns`), about to be applied: the
        leader's `propose` spans end, a follower's waits end; the parent of each `apply` span to
        make, by index (None: none)."""
        if not self._entries and not self._requests:
            return None  # nothing traced in flight: no entry to look at
        out: dict[int, Context] | None = None
        for e in entries:
            parent: SpanContext | None = None
            entry = self._entries.get(e.index)
            if entry is not None and entry.span is not None:
                # Two followers are a majority of three: an entry can commit before the leader's own
                # write of it, which then still needs its parent.
                if entry.written:
                    del self._entries[e.index]
                else:
                    self._entries[e.index] = _Entry(entry.context)
                if e.term == entry.term:
                    entry.span.add_event("committed", timestamp=committed_ns)
                    parent = entry.context
                else:
                    entry.span.set_status(StatusCode.ERROR, "another leader's entry took this index")
                entry.span.end()
            write = placed.get(e.index)
            if write is not None:
                wait = self._waits.pop(write.answer, None)
                if wait is not None:
                    wait.end()
                if parent is None:
                    parent = self._requests.get(write.answer)
            if parent is not None:
                if out is None:
                    out = {}
                out[e.index] = _parent(parent)
        return out

    def applied(self, parent: Context, index: int, started_ns: int) -> None:
        self.tracer.start_span("apply", parent, attributes={"raftkv.node": self.node_id, "raftkv.index": index},
                               start_time=started_ns).end()

    # ---- reads -----------------------------------------------------------------------------------

    def read_round(self, ctx: bytes, answers: Sequence[asyncio.Future]) -> None:
        if not self._requests:
            return
        traced = [(a, sc) for a in answers if (sc := self._requests.get(a)) is not None]
        if not traced or len(self._rounds) >= MAX_HELD:
            return
        span = self.tracer.start_span("read index", _parent(traced[0][1]), links=[Link(sc) for _, sc in traced],
                                      attributes={"raftkv.node": self.node_id, "raftkv.reads": len(answers)})
        self._rounds[ctx] = (span, traced)
        traced[0][0].add_done_callback(lambda _: self._end_round(ctx, "not confirmed"))

    def read_confirmed(self, state: ReadState) -> None:
        """The round's answer: it ends, and each traced read waits for this replica to apply."""
        got = self._rounds.get(state.ctx)
        if got is None:
            return
        got[0].set_attribute("raftkv.read_index", state.index)
        self._end_round(state.ctx, None if state.ok else "no leader could confirm this read")
        if not state.ok:
            return
        for answer, sc in got[1]:
            if not answer.done() and answer not in self._waits:
                self._waits[answer] = self.tracer.start_span(
                    "wait for apply", _parent(sc), attributes={"raftkv.node": self.node_id,
                                                               "raftkv.read_index": state.index})

    def _end_round(self, ctx: bytes, error: str | None) -> None:
        got = self._rounds.pop(ctx, None)
        if got is not None:
            if error:
                got[0].set_status(StatusCode.ERROR, error)
            got[0].end()


def _parent(sc: SpanContext) -> Context:
    return trace.set_span_in_context(NonRecordingSpan(sc))


def _traceparent(sc: SpanContext) -> bytes:
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}".encode()


def _from_traceparent(tp: bytes) -> SpanContext | None:
    if not tp:
        return None
    try:
        sc = trace.get_current_span(_propagator.extract({"traceparent": tp.decode("ascii")})).get_span_context()
    except UnicodeDecodeError:
        return None
    return sc if sc.is_valid and sc.trace_flags & TraceFlags.SAMPLED else None


def now_ns() -> int:
    return time.time_ns()


# ---- logs ----------------------------------------------------------------------------------------


class _TraceIds(logging.Filter):
    """Puts the current span's ids on a record written within one, for the JSON line (raftkv/logs.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        sc = trace.get_current_span().get_span_context()
        if sc.is_valid:
            record.trace_id, record.span_id = f"{sc.trace_id:032x}", f"{sc.span_id:016x}"
        return True


def _log_trace_ids() -> None:
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _TraceIds) for f in handler.filters):
            handler.addFilter(_TraceIds())
