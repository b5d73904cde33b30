"""Interaction scripts: Raft stories told as text, each command followed by the trace it must print.

Theory of operation
-------------------
A script is a text file in the shape of etcd-io/raft's datadriven test files:

    # Raft 5.2: why this story matters. Comment lines and blank lines between commands are kept.
    cluster n1 n2 n3 pre_vote=false
    ----
    ok

    campaign n1
    ----
    n1 ready: candidate in term 1
      hard: term=1 vote=n1 commit=0
      send: n1->n2 VoteRequest term=1 last=0@0
      send: n1->n3 VoteRequest term=1 last=0@0

Each command line is followed by `----` and by its output, which runs to the next blank line.
`run_script` plays the commands in order on one fresh `Harness` (deterministic: the harness seeds
every core's randomness) and returns the script with each output block replaced by what the
command printed. A script passes when that text is the file itself; `check_file` answers with a
unified diff otherwise, or writes the new text back when asked to rewrite (as etcd's -rewrite).

What the trace shows
--------------------
While tracing is on (`trace on|off`), a command prints, as they happen:

- each Ready a node carries out, in the order the driver handles it: its soft state in words,
  `send early:` messages (they leave before the write), the `snapshot:`, entries to `persist:`
  and `hard:` state it writes, `send:` messages (after the write), `apply:` committed entries
  and `read:` states;
- each message the network takes out of flight, with the receiver's trace events and Readys
  indented below it, or `(lost: ...)` when a cut or a crash swallowed it;
- the decisions a core explains in words (votes, step-downs, truncations, configurations,
  transfers, snapshots).

The looking commands (status, log, kv, conf, in-flight) print whether tracing is on or not, and
a command the core refuses (a proposal to a follower, a second membership change) prints
`error: ...` as its output, so a script can show the refusal.

Log positions print as index@term; entries as `index@term noop`, `index@term key=value` or
`index@term conf add_learner n4`. Messages print with their stable fields, one per line; an
append that announces a commit index without asking for an answer ends in `no-answer`.

Commands
--------
    cluster ID... [option=value...]   fresh cluster: Config fields (pre_vote=false, check_quorum=
                                      false, election_timeout_ticks=10, read_mode=leader-lease, ...) and
                                      snapshot_every=N
    trace on|off
    campaign N                        tick N until its election timer fires
    elect N                           expire leases, campaign N, stabilize
    expire-leases                     every follower forgets it heard from a leader
    tick N [COUNT] / tick-all [COUNT]
    deliver [from=A] [to=B] [type=T]  one round: the matching messages now in flight
    drop [from=A] [to=B] [type=T]
    stabilize                         deliver until nothing is in flight
    cut A B [one-way] / isolate N / heal
    propose N VALUE... [key=K]
    read-index N CTX
    transfer-leader FROM TO
    add-node N                        boot a server that is not a member yet
    conf-change N add-learner|add-voter|remove M
    crash N / restart N
    status [N...] / log N / kv N... / conf / in-flight
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from raftkv.core import (
    MESSAGE_TYPES,
    AppendRequest,
    AppendResponse,
    ConfChange,
    ConfChangeKind,
    Config,
    ConfState,
    EntriesTruncated,
    Entry,
    EntryKind,
    HardState,
    HeartbeatRequest,
    HeartbeatResponse,
    LogCompacted,
    MembershipChanged,
    Message,
    NotLeaderError,
    ProposalDroppedError,
    RaftCore,
    ReadIndexRequest,
    ReadIndexResponse,
    ReadMode,
    ReadState,
    Ready,
    Role,
    SnapshotInstalled,
    SnapshotRequest,
    SnapshotSent,
    SoftState,
    SteppedDown,
    TraceEvent,
    TransferRequest,
    TransferStarted,
    VoteCast,
    VoteRequest,
    VoteResponse,
)

from .harness import Harness

SEPARATOR = "----"
INDENT = "  "

# Trace event kinds worth a line: decisions no Ready or message shows on its own. Role changes,
# sends, appends and commits are already visible as soft state, messages, entries and hard state.
_EVENT_TYPES = (VoteCast, SteppedDown, EntriesTruncated, MembershipChanged, TransferStarted, SnapshotSent,
                SnapshotInstalled, LogCompacted)

# Errors a command may meet by design (a proposal to a follower, a refused change): printed as
# output, so a script can show that Raft refuses them.
_CORE_REFUSALS = (NotLeaderError, ProposalDroppedError, ValueError)

_MESSAGE_TYPES_BY_NAME = {t.__name__: t for t in MESSAGE_TYPES}
_CONF_CHANGE_KINDS = {
    "add-learner": ConfChangeKind.ADD_LEARNER,
    "add-voter": ConfChangeKind.ADD_VOTER,
    "remove": ConfChangeKind.REMOVE,
}


class ScriptError(Exception):
    """The script itself is malformed (unknown command, wrong arguments)."""


# ==== the file format ================================================================================


@dataclass(frozen=True, slots=True)
class Step:
    command: str
    output: str
    line: int  # 1-based line of the command, for error messages


Chunk = Step | str  # a str chunk is a comment or blank line, kept verbatim


def parse(text: str) -> list[Chunk]:
    lines = text.splitlines()
    chunks: list[Chunk] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            chunks.append(line)
            i += 1
            continue
        if i + 1 >= len(lines) or lines[i + 1] != SEPARATOR:
            raise ScriptError(f"line {i + 1}: {line!r} must be followed by a {SEPARATOR!r} line")
        end = i + 2
        while end < len(lines) and lines[end].strip():
            end += 1
        chunks.append(Step(line, "\n".join(lines[i + 2 : end]), i + 1))
        i = end
    return chunks


def render(chunks: list[Chunk]) -> str:
    lines: list[str] = []
    for chunk in chunks:
        if isinstance(chunk, Step):
            lines += [chunk.command, SEPARATOR, chunk.output]
        else:
            lines.append(chunk)
    return "\n".join(lines) + "\n"


def run_script(text: str) -> str:
    """Play the script on a fresh cluster; returns it with every output block as actually printed."""
    session = Session()
    played: list[Chunk] = []
    for chunk in parse(text):
        if isinstance(chunk, Step):
            try:
                chunk = dataclasses.replace(chunk, output=session.execute(chunk.command))
            except Exception as e:
                e.add_note(f"at script line {chunk.line}: {chunk.command}")
                raise
        played.append(chunk)
    return render(played)


def check_file(path: Path, rewrite: bool = False) -> str | None:
    """Run the script at `path`: None if it printed what it expects, else a unified diff.

    With `rewrite` the file is given the actual output instead and the answer is None.
    """
    expected = path.read_text()
    actual = run_script(expected)
    if actual == expected:
        return None
    if rewrite:
        path.write_text(actual)
        return None
    diff = difflib.unified_diff(
        expected.splitlines(keepends=True), actual.splitlines(keepends=True), f"{path} (expected)", "actual"
    )
    return "".join(diff)


# ==== how values print =============================================================================


def format_position(index: int, term: int) -> str:
    return f"{index}@{term}"


def format_entry(e: Entry) -> str:
    return f"{format_position(e.index, e.term)} {_entry_content(e)}"


def _entry_content(e: Entry) -> str:
    if e.kind is EntryKind.NOOP:
        return "noop"
    if e.kind is EntryKind.CONF_CHANGE:
        change = ConfChange.decode(e.data)
        return f"conf {change.kind.value} {change.node_id}"
    try:
        # The simulator's commands: [op_id, kind, key, value, expected] (replica.encode_command).
        _, kind, key, value, expected = json.loads(e.data)
    except ValueError:
        return repr(e.data)
    return f"{key}={value}" if kind == "write" else f"{kind} {key} {expected}->{value}"


def format_conf(conf: ConfState) -> str:
    text = f"voters={','.join(conf.voters)}"
    return text + (f" learners={','.join(conf.learners)}" if conf.learners else "")


def format_message(m: Message) -> str:
    detail = _MESSAGE_DETAILS.get(type(m), _generic_detail)(m)
    return f"{m.src}->{m.dst} {type(m).__name__} term={m.term}" + (f" {detail}" if detail else "")


def _flags(**flags: bool) -> str:
    return "".join(f" {name.replace('_', '-')}" for name, on in flags.items() if on)


def _append_response_detail(m: AppendResponse) -> str:
    if m.success:
        return f"accepted match={m.match_index}"
    if not m.reject_index:
        return "rejected"  # an answer to an older term's message: no log comparison was made
    return f"rejected prev={m.reject_index} hint={format_position(m.conflict_index, m.conflict_term)}"


def _generic_detail(m: Message) -> str:
    skip = {"src", "dst", "term"}
    return " ".join(f"{f.name}={getattr(m, f.name)!r}" for f in dataclasses.fields(m) if f.name not in skip)


_MESSAGE_DETAILS: dict[type, Callable] = {
    VoteRequest: lambda m: (
        f"last={format_position(m.last_log_index, m.last_log_term)}" + _flags(pre_vote=m.pre_vote, transfer=m.transfer)
    ),
    VoteResponse: lambda m: ("granted" if m.granted else "refused") + _flags(pre_vote=m.pre_vote),
    AppendRequest: lambda m: (
        f"prev={format_position(m.prev_log_index, m.prev_log_term)} commit={m.commit}"
        + (f" entries=[{', '.join(format_entry(e) for e in m.entries)}]" if m.entries else "")
        + ("" if m.needs_answer else " no-answer")
    ),
    AppendResponse: _append_response_detail,
    HeartbeatRequest: lambda m: f"commit={m.commit}" + (f" round={m.read_round}" if m.read_round else ""),
    HeartbeatResponse: lambda m: f"round={m.read_round}" if m.read_round else "",
    SnapshotRequest: lambda m: (
        f"snapshot={format_position(m.snapshot.meta.index, m.snapshot.meta.term)} {format_conf(m.snapshot.meta.conf)}"
    ),
    TransferRequest: lambda m: f"target={m.target}",
    ReadIndexRequest: lambda m: f"ctx={_text(m.ctx)}",
    ReadIndexResponse: lambda m: f"ctx={_text(m.ctx)} index={m.index} {'ok' if m.ok else 'failed'}",
}


def format_soft_state(soft: SoftState) -> str:
    if soft.role is Role.FOLLOWER and soft.leader_id:
        return f"follower of {soft.leader_id} in term {soft.term}"
    return f"{soft.role.value} in term {soft.term}"


def format_hard_state(hard: HardState) -> str:
    return f"term={hard.term} vote={hard.voted_for or '-'} commit={hard.commit}"


def format_read_state(rs: ReadState) -> str:
    return f"ctx={_text(rs.ctx)} index={rs.index} {'ok' if rs.ok else 'failed'}"


def format_ready(node: str, rd: Ready) -> list[str]:
    """A Ready as lines, in the order the driver carries it out (see Ready's docstring)."""
    head = f"{node} ready" + (f": {format_soft_state(rd.soft_state)}" if rd.soft_state else "")
    body = [f"send early: {format_message(m)}" for m in rd.early_messages]
    if rd.snapshot:
        meta = rd.snapshot.meta
        body.append(f"snapshot: {format_position(meta.index, meta.term)} {format_conf(meta.conf)}")
    body += [f"persist: {format_entry(e)}" for e in rd.entries]
    if rd.hard_state:
        body.append(f"hard: {format_hard_state(rd.hard_state)}")
    body += [f"send: {format_message(m)}" for m in rd.messages]
    body += [f"apply: {format_entry(e)}" for e in rd.committed_entries]
    body += [f"read: {format_read_state(rs)}" for rs in rd.read_states]
    return [head] + [INDENT + line for line in body]


def format_event(event: TraceEvent) -> str | None:
    """The one place that turns a core's trace event into a script line (None: not shown)."""
    return event.describe() if isinstance(event, _EVENT_TYPES) else None


def format_status(node: str, core: RaftCore | None) -> str:
    if core is None:
        return f"{node}: down"
    log = core.log
    terms = ",".join(str(log.term(i)) for i in range(log.first_index(), log.last_index() + 1))
    compacted = f" compacted={format_position(log.offset, log.offset_term)}" if log.offset else ""
    return (
        f"{node}: {core.role.value} term={core.term} vote={core.voted_for or '-'} lead={core.leader_id or '-'} "
        f"commit={log.committed} applied={log.applied}{compacted} log={terms or '-'}"
    )


def _text(data: bytes) -> str:
    return data.decode(errors="backslashreplace")


def _format_value(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# ==== running commands =============================================================================


class Session:
    """One script's cluster and the trace its current command prints."""

    def __init__(self) -> None:
        self._harness: Harness | None = None
        self.tracing = True
        self._lines: list[str] = []
        self._indent = ""

    def execute(self, command: str) -> str:
        """Run one command line; returns what it printed ("ok" if nothing)."""
        name, *args = command.split()
        handler = getattr(self, "do_" + name.replace("-", "_"), None)
        if handler is None:
            raise ScriptError(f"unknown command {name!r}")
        self._lines, self._indent = [], ""
        try:
            handler(*_parse_args(args))
        except _CORE_REFUSALS as e:
            self._print(f"error: {e}")
        return "\n".join(self._lines) or "ok"

    # ---- the trace ---------------------------------------------------------------------------

    def _print(self, line: str) -> None:
        self._lines.append(self._indent + line)

    def _on_event(self, event: TraceEvent) -> None:
        line = format_event(event)
        if self.tracing and line:
            self._print(line)

    def _on_ready(self, node: str, rd: Ready) -> None:
        if self.tracing:
            for line in format_ready(node, rd):
                self._print(line)

    def _on_delivery(self, m: Message, arrives: bool) -> None:
        if not self.tracing:
            return
        self._indent = ""
        if arrives:
            self._print(format_message(m))
            self._indent = INDENT  # what the receiver does next belongs to this message
        else:
            self._print(f"{format_message(m)} (lost: {self._why_lost(m)})")

    def _why_lost(self, m: Message) -> str:
        return "link cut" if (m.src, m.dst) in self.harness.blocked else f"{m.dst} is down"

    # ---- helpers -----------------------------------------------------------------------------

    @property
    def harness(self) -> Harness:
        if self._harness is None:
            raise ScriptError("the script must start with a 'cluster' command")
        return self._harness

    def _known(self, node: str) -> str:
        if node not in self.harness.replicas:
            raise ScriptError(f"no node {node!r}")
        return node

    def _live(self, node: str) -> str:
        if not self.harness.replicas[self._known(node)].alive:
            raise ScriptError(f"{node} is down")
        return node

    def _message_filter(self, opts: dict[str, str]) -> dict:
        unknown = set(opts) - {"from", "to", "type"}
        if unknown:
            raise ScriptError(f"unknown filter {sorted(unknown)}; use from=, to=, type=")
        kind = opts.get("type")
        if kind is not None and kind not in _MESSAGE_TYPES_BY_NAME:
            raise ScriptError(f"unknown message type {kind!r}")
        for node in (opts.get("from"), opts.get("to")):
            if node is not None:
                self._known(node)
        return {"src": opts.get("from"), "dst": opts.get("to"), "kind": _MESSAGE_TYPES_BY_NAME.get(kind or "")}

    # ---- commands ----------------------------------------------------------------------------

    def do_cluster(self, ids: list[str], opts: dict[str, str]) -> None:
        if not ids:
            raise ScriptError("usage: cluster ID... [option=value...]")
        options = {name: _config_value(name, text) for name, text in opts.items()}
        h = Harness(ids, listener=self._on_event, **options)
        h.on_ready, h.on_delivery = self._on_ready, self._on_delivery
        self._harness = h

    def do_trace(self, args: list[str], opts: dict[str, str]) -> None:
        (state,) = _positional(args, opts, "trace on|off")
        if state not in ("on", "off"):
            raise ScriptError("usage: trace on|off")
        self.tracing = state == "on"

    def do_campaign(self, args: list[str], opts: dict[str, str]) -> None:
        (node,) = _positional(args, opts, "campaign N")
        self.harness.timeout(self._live(node))

    def do_elect(self, args: list[str], opts: dict[str, str]) -> None:
        (node,) = _positional(args, opts, "elect N")
        self.harness.elect(self._live(node))

    def do_expire_leases(self, args: list[str], opts: dict[str, str]) -> None:
        _positional(args, opts, "expire-leases", required=0)
        self.harness.expire_leases()

    def do_tick(self, args: list[str], opts: dict[str, str]) -> None:
        node, *count = _positional(args, opts, "tick N [COUNT]", optional=1)
        self.harness.tick(self._live(node), _count(count))

    def do_tick_all(self, args: list[str], opts: dict[str, str]) -> None:
        count = _positional(args, opts, "tick-all [COUNT]", required=0, optional=1)
        self.harness.tick_all(_count(count))

    def do_deliver(self, args: list[str], opts: dict[str, str]) -> None:
        _positional(args, {}, "deliver [from=A] [to=B] [type=T]", required=0)
        self.harness.deliver(**self._message_filter(opts))

    def do_drop(self, args: list[str], opts: dict[str, str]) -> None:
        _positional(args, {}, "drop [from=A] [to=B] [type=T]", required=0)
        which = self._message_filter(opts)
        if self.tracing:
            for m in self.harness.matching(**which):
                self._print(f"dropped {format_message(m)}")
        self.harness.drop(**which)

    def do_stabilize(self, args: list[str], opts: dict[str, str]) -> None:
        _positional(args, opts, "stabilize", required=0)
        self.harness.stabilize()

    def do_cut(self, args: list[str], opts: dict[str, str]) -> None:
        a, b, *one_way = _positional(args, opts, "cut A B [one-way]", required=2, optional=1)
        if one_way not in ([], ["one-way"]):
            raise ScriptError("usage: cut A B [one-way]")
        self.harness.cut(self._known(a), self._known(b), one_way=bool(one_way))

    def do_isolate(self, args: list[str], opts: dict[str, str]) -> None:
        (node,) = _positional(args, opts, "isolate N")
        self.harness.isolate(self._known(node))

    def do_heal(self, args: list[str], opts: dict[str, str]) -> None:
        _positional(args, opts, "heal", required=0)
        self.harness.heal()

    def do_propose(self, args: list[str], opts: dict[str, str]) -> None:
        if len(args) < 2 or set(opts) - {"key"}:
            raise ScriptError("usage: propose N VALUE... [key=K]")
        node, *values = args
        self.harness.propose(self._live(node), *values, key=opts.get("key", "k"))

    def do_read_index(self, args: list[str], opts: dict[str, str]) -> None:
        node, ctx = _positional(args, opts, "read-index N CTX", required=2)
        self.harness.act(self._live(node), lambda c: c.read_index(ctx.encode()))

    def do_transfer_leader(self, args: list[str], opts: dict[str, str]) -> None:
        node, target = _positional(args, opts, "transfer-leader FROM TO", required=2)
        self.harness.act(self._live(node), lambda c: c.transfer_leadership(target))

    def do_add_node(self, args: list[str], opts: dict[str, str]) -> None:
        (node,) = _positional(args, opts, "add-node N")
        if node in self.harness.replicas:
            raise ScriptError(f"{node} exists already")
        self.harness.add_node(node)

    def do_conf_change(self, args: list[str], opts: dict[str, str]) -> None:
        usage = "conf-change N add-learner|add-voter|remove M"
        node, kind, member = _positional(args, opts, usage, required=3)
        if kind not in _CONF_CHANGE_KINDS:
            raise ScriptError(f"usage: {usage}")
        change = ConfChange(_CONF_CHANGE_KINDS[kind], member)
        self.harness.act(self._live(node), lambda c: c.propose_conf_change(change))

    def do_crash(self, args: list[str], opts: dict[str, str]) -> None:
        (node,) = _positional(args, opts, "crash N")
        self.harness.crash(self._live(node))

    def do_restart(self, args: list[str], opts: dict[str, str]) -> None:
        (node,) = _positional(args, opts, "restart N")
        if self.harness.replicas[self._known(node)].alive:
            raise ScriptError(f"{node} is running")
        self.harness.restart(node)
        self.harness.process(node)  # a restarted node applies what its disk says is committed

    def do_status(self, args: list[str], opts: dict[str, str]) -> None:
        if opts:
            raise ScriptError("usage: status [N...]")
        for node in args or self.harness.ids:
            self._print(format_status(node, self.harness.replicas[self._known(node)].core))

    def do_log(self, args: list[str], opts: dict[str, str]) -> None:
        (node,) = _positional(args, opts, "log N")
        log = self.harness.core(self._live(node)).log
        if log.offset:
            self._print(f"compacted up to {format_position(log.offset, log.offset_term)}")
        for i in range(log.first_index(), log.last_index() + 1):
            self._print(format_entry(log.entry(i)))

    def do_kv(self, args: list[str], opts: dict[str, str]) -> None:
        if opts or not args:
            raise ScriptError("usage: kv N...")
        for node in args:
            values = self.harness.values(self._live(node))
            pairs = " ".join(f"{k}={_format_value(v)}" for k, v in sorted(values.items()))
            self._print(f"{node}: {pairs or '(empty)'}")

    def do_conf(self, args: list[str], opts: dict[str, str]) -> None:
        _positional(args, opts, "conf", required=0)
        for node in self.harness.ids:
            core = self.harness.replicas[node].core
            self._print(f"{node}: {format_conf(core.conf) if core else 'down'}")

    def do_in_flight(self, args: list[str], opts: dict[str, str]) -> None:
        _positional(args, opts, "in-flight", required=0)
        for m in self.harness.in_flight:
            self._print(format_message(m))


# ==== argument parsing =============================================================================


def _parse_args(words: list[str]) -> tuple[list[str], dict[str, str]]:
    """Split a command's words into positional arguments and key=value options."""
    args = [w for w in words if "=" not in w]
    opts = dict(w.split("=", 1) for w in words if "=" in w)
    return args, opts


def _positional(args: list[str], opts: dict[str, str], usage: str, required: int = 1, optional: int = 0) -> list[str]:
    if opts or not required <= len(args) <= required + optional:
        raise ScriptError(f"usage: {usage}")
    return args


def _count(words: list[str]) -> int:
    if not words:
        return 1
    if not words[0].isdigit():
        raise ScriptError(f"a count must be a number, not {words[0]!r}")
    return int(words[0])


_CONFIG_TYPES = typing.get_type_hints(Config)
_PARSERS: dict[object, Callable[[str], object]] = {
    bool: lambda text: {"true": True, "false": False}[text],
    int: int,
    ReadMode: ReadMode,
}


def _config_value(name: str, text: str) -> object:
    """A cluster option: a Config field or the harness's snapshot_every, parsed by its type."""
    kind = int if name == "snapshot_every" else _CONFIG_TYPES.get(name)
    if name == "node_id" or kind not in _PARSERS:
        raise ScriptError(f"unknown cluster option {name!r}")
    try:
        return _PARSERS[kind](text)
    except (KeyError, ValueError):
        raise ScriptError(f"bad value {text!r} for {name}") from None
