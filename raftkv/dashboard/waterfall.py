"""A trace's waterfall and its critical path, worked out from the spans alone (pure: no I/O).

Theory of operation
-------------------
`waterfall(trace_id, spans)` takes what `TraceStore.trace` gives (the trace's spans and the batched
spans of other traces linked to it, node/tracing.py) and returns what the page draws: one row per
span on a shared time axis (milliseconds from the trace's first span), the gaps between spans that
are time on the network or in a queue as rows of their own, the critical path, and a sentence that
says what the write waited for.

Which step a write waits for is Raft's commit rule, read from the spans, not assumed: the entry
commits once a majority of the voters (named on the leader's `propose` span) hold it durable. The
leader counts itself when its own fsync ends; a follower counts when its acknowledgement reaches
the leader (the `acknowledged by X` event on `propose`), which comes after that follower's fsync
and a trip back over the network. The voter whose durability completed the majority decided the
commit, so the path runs through *its* disk and links. The leader's own fsync is often not on it:
the leader sends the entry while its fsync runs, and two quick followers are a majority of three.

The critical path of a write through a follower F to the leader L, decided by voter X:

    F takes the request .. F's forward leaves          (on F)
    network F -> L: the forward                        forward start .. propose start
    L -> X: the entry                                  propose start .. X's write log starts
    X writes, fsyncs, acknowledges                     X's spans
    network X -> L: the acknowledgement                X's acknowledge ends .. "acknowledged by X"
    L counts the majority                              .. "committed"
    network L -> F: the commit index                   committed .. F's wait for commit ends
    F applies and answers                              F's apply .. the request ends

(X = L: L hands the entry to its disk, writes and fsyncs; then commits.) Batched spans (one fsync
for many entries) are marked shared, with how many entries and traced writes they served. Times
come from each node's clock; a gap that comes out negative (clocks that disagree, on different
machines) is drawn as zero and said.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from raftkv.core.quorum import majority

__all__ = ["DISK_SPANS", "waterfall"]

DISK_SPANS = ("write log", "fsync", "acknowledge")
MAX_ROWS = 200  # a trace holding many requests is cut here (the page says how many were left out)

# What each span is, in plain words (the row's label; the span's own name stays beside it).
_WORDS = {
    "forward to leader": "sends the write to the leader",
    "propose": "appends it, waits for a majority",
    "write log": "writes the entry to its log",
    "fsync": "waits for its disk",
    "acknowledge": "tells the leader it has it",
    "wait for commit": "waits to hear of the commit",
    "apply": "applies it to the store",
    "read index": "checks with a majority it still leads",
    "wait for apply": "waits to apply that far",
}


@dataclass
class _Step:
    start_ns: int
    end_ns: int
    label: str
    node: str
    kind: str  # "span", "hop" (network), "wait" (queued on a node)
    span_id: str | None = None


def _ms(ns: int, t0: int) -> float:
    return round((ns - t0) / 1e6, 3)


def _dur(a: int, b: int) -> str:
    return f"{max(0, b - a) / 1e6:.1f} ms"


def _names(nodes: Iterable[str]) -> str:
    names = list(nodes)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def waterfall(trace_id: str, spans: list[dict[str, Any]], named: Callable[[str], str] = str) -> dict[str, Any]:
    """What the page draws for trace `trace_id`: rows, the critical path and its sentence.
    `named` turns a node id into the name the page shows."""
    if not spans:
        return {"traceId": trace_id, "rows": [], "path": [], "nodes": [], "notes": [], "totalMs": 0,
                "sentence": "No spans of this trace have arrived."}
    t0 = min(s["startNs"] for s in spans)
    own = [s for s in spans if s["traceId"] == trace_id]
    request = _request(own, {s["spanId"] for s in spans})
    propose = _propose(own, request)
    if propose is not None:
        gaps, path, sentence = _write(spans, own, request, propose, named)
    else:
        gaps, path, sentence = [], [], _not_a_write(own, request, named)
    on_path = {st.span_id for st in path if st.span_id}
    rows = [_span_row(s, trace_id, t0, named, s["spanId"] in on_path) for s in spans]
    rows += [{"key": f"gap-{i}", "spanId": None, "node": st.node, "name": "", "label": st.label, "kind": st.kind,
              "startMs": _ms(st.start_ns, t0), "endMs": _ms(max(st.start_ns, st.end_ns), t0),
              "critical": any(st is p for p in path), "error": False, "statusMessage": None, "events": [],
              "shared": None, "ownTrace": True}
             for i, st in enumerate(gaps) if st.end_ns > st.start_ns]
    rows.sort(key=lambda r: (r["startMs"], r["kind"] == "span", r["endMs"]))
    notes = []
    if any(st.end_ns < st.start_ns - SKEW_NS for st in gaps):
        notes.append("Some gaps between nodes came out negative (their clocks disagree): they are drawn as zero.")
    if len(rows) > MAX_ROWS:
        notes.append(f"{len(rows) - MAX_ROWS} rows of this trace are left out.")
    return {
        "traceId": trace_id, "startNs": t0, "totalMs": _ms(max(s["endNs"] for s in spans), t0),
        "rows": rows[:MAX_ROWS], "nodes": sorted({named(str(s["node"])) for s in spans}),
        "path": [{"node": st.node, "label": st.label, "kind": st.kind, "startMs": _ms(st.start_ns, t0),
                  "endMs": _ms(max(st.start_ns, st.end_ns), t0)} for st in path],
        "sentence": sentence, "notes": notes,
    }


SKEW_NS = 50_000  # a gap more than 50 us backwards is the nodes' clocks disagreeing, not rounding


def _request(own: list[dict], ids: set[str]) -> dict | None:
    """The client's request: the earliest span of the trace made by the API (it has an http.route)."""
    reqs = [s for s in own if "http.route" in s["attributes"]]
    roots = [s for s in reqs if s["parentSpanId"] is None or s["parentSpanId"] not in ids]
    return min(roots or reqs, key=lambda s: s["startNs"], default=None)


def _propose(own: list[dict], request: dict | None) -> dict | None:
    proposes = [s for s in own if s["name"] == "propose"]
    if request is not None:
        proposes = [s for s in proposes if s["parentSpanId"] == request["spanId"]] or proposes
    return min(proposes, key=lambda s: s["startNs"], default=None)


def _of(spans: list[dict], name: str, node: str, parent: dict) -> dict | None:
    """`name` on `node` made for `parent`: its child, or a batched span of another trace linked to it."""
    found = [s for s in spans if s["name"] == name and s["node"] == node and (
        s["parentSpanId"] == parent["spanId"] or any(ln["spanId"] == parent["spanId"] for ln in s["links"]))]
    return min(found, key=lambda s: s["startNs"], default=None)


def _span_step(s: dict, node: str) -> _Step:
    return _Step(s["startNs"], s["endNs"], s["name"], node, "span", s["spanId"])


def _write(spans: list[dict], own: list[dict], request: dict | None, propose: dict,
           named: Callable[[str], str]) -> tuple[list[_Step], list[_Step], str]:
    """The gaps between a write's spans, its critical path, and the sentence."""
    leader, L = propose["node"], named(propose["node"])
    voters = [str(v) for v in propose["attributes"].get("raftkv.voters") or []]
    committed = next((e["timeNs"] for e in propose["events"] if e["name"] == "committed"), None)
    acks = {str(e["attributes"].get("raftkv.peer") or e["name"].removeprefix("acknowledged by ")): e["timeNs"]
            for e in propose["events"] if e["name"].startswith("acknowledged by ")}
    disk = {n: got for n in sorted({str(s["node"]) for s in spans})
            if (got := {name: s for name in DISK_SPANS if (s := _of(spans, name, n, propose)) is not None})}

    gaps: list[_Step] = []
    before: list[_Step] = []  # the path up to the propose
    if request is not None:
        R = named(request["node"])
        fwd = _of(own, "forward to leader", request["node"], request)
        if fwd is not None:
            before = [_Step(request["startNs"], fwd["startNs"], f"{R} takes the request", R, "wait"),
                      _Step(fwd["startNs"], propose["startNs"], f"{R} → {L}: the write forwarded (network, "
                            f"{L}'s queue)", f"{R} → {L}", "hop")]
        else:
            before = [_Step(request["startNs"], propose["startNs"], f"{L} takes the request", L, "wait")]
    gaps += before
    to_disk: dict[str, _Step] = {}
    back: dict[str, _Step] = {}
    for n, d in disk.items():
        N, first, last = named(n), next(iter(d.values())), list(d.values())[-1]
        to_disk[n] = (_Step(propose["startNs"], first["startNs"], f"{L} hands the entry to its disk", L, "wait")
                      if n == leader else
                      _Step(propose["startNs"], first["startNs"], f"{L} → {N}: the entry (sent, network, {N}'s "
                            "disk queue)", f"{L} → {N}", "hop"))
        if n != leader and n in acks:
            back[n] = _Step(last["endNs"], acks[n], f"{N} → {L}: the acknowledgement (network, {L} reads it)",
                            f"{N} → {L}", "hop")
    gaps += [*to_disk.values(), *back.values()]

    # When each voter counted as holding the entry durably, as the leader saw it.
    durable = dict(acks)
    lead = disk.get(leader, {})
    if (own_disk := lead.get("fsync") or lead.get("write log")) is not None:
        durable[leader] = own_disk["endNs"]
    counted = {n: t for n, t in durable.items() if not voters or n in voters}
    order = sorted(counted, key=lambda n: counted[n])
    decider = None
    if committed is not None:
        if voters and len(order) >= majority(len(voters)):
            decider = order[majority(len(voters)) - 1]
        else:  # voters unknown: the last to become durable before the commit
            decider = next((n for n in reversed(order) if counted[n] <= committed), None)

    middle: list[_Step] = []
    if decider is not None:
        assert committed is not None
        if decider in to_disk:
            middle.append(to_disk[decider])
        middle += [_span_step(s, named(decider)) for s in disk.get(decider, {}).values()]
        if decider in back:
            middle.append(back[decider])
        commits = _Step(counted[decider], committed, f"{L} counts a majority and commits", L, "wait")
        middle.append(commits)
        gaps.append(commits)
    after: list[_Step] = []
    if committed is not None and request is not None:
        R = named(request["node"])
        if request["node"] != leader and (wait := _of(own, "wait for commit", request["node"], request)) is not None:
            after.append(_Step(committed, wait["endNs"], f"{L} → {R}: the commit index (on the next append or "
                               "heartbeat)", f"{L} → {R}", "hop"))
        apply = _of(own, "apply", request["node"], request) or _of(own, "apply", request["node"], propose)
        if apply is not None:
            after += [_span_step(apply, R), _Step(apply["endNs"], request["endNs"], f"{R} answers", R, "wait")]
        gaps += [st for st in after if st.kind != "span"]
    path = before + middle + after if decider is not None else []
    late = [named(n) for n in disk if n != leader and n not in acks and "acknowledge" in disk[n]]
    sentence = _sentence(request, propose, voters, counted, decider, disk, committed, path, named)
    if late and committed is not None:  # the leader notes acknowledgements only until the commit
        sentence += (f" {_names(late)}'s acknowledgement reached {L} after the commit (or not at all): "
                     "it did not count.")
    return gaps, path, sentence


def _sentence(request: dict | None, propose: dict, voters: list[str], counted: dict[str, int], decider: str | None,
              disk: dict[str, dict], committed: int | None, path: list[_Step], named: Callable[[str], str]) -> str:
    leader, L = propose["node"], named(propose["node"])
    parts = []
    if request is not None:
        took = _dur(request["startNs"], request["endNs"])
        parts.append(f"{request['name']} on {named(request['node'])} took {took}.")
    if committed is None:
        return " ".join([*parts, "The entry was not seen to commit in this trace (it failed, or its spans are still "
                                 "on their way)."])
    if decider is None:
        return " ".join([*parts, f"The entry committed {_dur(propose['startNs'], committed)} after {L} proposed it, "
                                 "but the spans do not show whose disk it waited for."])
    D = named(decider)
    held = _names(named(n) for n in sorted(counted, key=lambda n: counted[n]) if counted[n] <= counted[decider])
    size = f"a majority of {len(voters)}" if voters else "a majority"
    fsync = disk.get(decider, {}).get("fsync")
    parts.append(f"This write waited {_dur(fsync['startNs'], fsync['endNs'])} for {D}'s disk:" if fsync is not None
                 else f"This write waited for {D}:")
    if decider == leader:
        parts.append(f"the entry committed when {L}'s own fsync ended ({held} then had it on disk, {size}).")
    else:
        parts.append(f"the entry committed when {D}'s acknowledgement reached {L} ({held} had it on disk, {size}).")
        own = disk.get(leader, {}).get("fsync")
        if own is not None:
            took = _dur(own["startNs"], own["endNs"])
            parts.append(f"{L}'s own fsync ({took}) was not on the critical path: it ended "
                         f"{_dur(committed, own['endNs'])} after the commit." if own["endNs"] > committed else
                         f"{L}'s own fsync ({took}) ended before that, off the critical path.")
    between = sum(max(0, st.end_ns - st.start_ns) for st in path if st.kind == "hop")
    if between:
        parts.append(f"Between the nodes (network and queues): {between / 1e6:.1f} ms.")
    longest = max(path, key=lambda st: st.end_ns - st.start_ns)
    if longest.end_ns > longest.start_ns:
        what = f"{longest.node} {_WORDS.get(longest.label, longest.label)}" if longest.kind == "span" else longest.label
        parts.append(f"The longest step on the critical path: {what} ({_dur(longest.start_ns, longest.end_ns)}).")
    return " ".join(parts)


def _not_a_write(own: list[dict], request: dict | None, named: Callable[[str], str]) -> str:
    if request is None:
        return "This trace holds no request of a node's API (its spans are still on their way, or they are another's)."
    steps = [s for s in own if s is not request]
    longest = max(steps, key=lambda s: s["endNs"] - s["startNs"], default=None)
    text = f"{request['name']} on {named(request['node'])} took {_dur(request['startNs'], request['endNs'])}"
    if longest is not None:
        text += (f"; its longest step: {named(longest['node'])} {_WORDS.get(longest['name'], longest['name'])} "
                 f"({_dur(longest['startNs'], longest['endNs'])})")
    return text + ". No leader proposed an entry for it (a read, or a write that was refused)."


def _span_row(s: dict, trace_id: str, t0: int, named: Callable[[str], str], critical: bool) -> dict:
    a = s["attributes"]
    shared = None
    if s["name"] in DISK_SPANS and isinstance(entries := a.get("raftkv.entries"), int):
        writes = len({ln["traceId"] for ln in s["links"]}) or int(a.get("raftkv.traced_entries") or 1)
        if entries > 1 or writes > 1:
            shared = {"entries": entries, "tracedWrites": writes}
    if s["name"] == "forward to leader" and isinstance(forwarded := a.get("raftkv.writes"), int) and forwarded > 1:
        shared = {"entries": forwarded, "tracedWrites": len({ln["traceId"] for ln in s["links"]})}
    return {
        "key": s["spanId"], "spanId": s["spanId"], "node": named(str(s["node"])), "name": s["name"],
        "label": _WORDS.get(s["name"], "the request, until its answer" if "http.route" in a else s["name"]),
        "kind": "span", "startMs": _ms(s["startNs"], t0), "endMs": _ms(s["endNs"], t0), "critical": critical,
        "error": s["status"] == "error", "statusMessage": s.get("statusMessage") or None,
        "events": [{"atMs": _ms(e["timeNs"], t0), "label": _event_words(e, named)} for e in s["events"]],
        "shared": shared, "ownTrace": s["traceId"] == trace_id,
    }


def _event_words(e: dict, named: Callable[[str], str]) -> str:
    if e["name"].startswith("acknowledged by "):
        return f"{named(e['name'].removeprefix('acknowledged by '))} acknowledged"
    return e["name"]
