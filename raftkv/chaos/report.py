"""What a chaos run leaves behind: the history as JSON, the verdict, and a timeline a person opens.

Theory of operation
-------------------
`write_report(out_dir, recorder, judgement, meta)` writes three files:

* `history.json`: the operations alone, in `raftkv.check`'s format (`load_history` reads it, so
  any run can be re-checked later);
* `run.json`: everything: options, operations with their node and HTTP status, faults, sampled
  Raft states, phases, and the judgement;
* `timeline.html`: one self-contained page (inline SVG and CSS, no scripts from anywhere): the
  verdict on top, then on one time axis a "leader per term" band, one lane per node (its role
  over time, grey when down), one lane per client (each operation a bar from invocation to
  completion, coloured by outcome; hover for details), nemesis windows shaded across all lanes,
  and the operations the checker could not place outlined in red. With the member nemesis, a
  member's lane turns blank once it is removed, its new incarnation gets a lane of its own (named
  `name·` and the first hex digits of its new id), and each step the nemesis took (remove, stop,
  join, re-add) is a diamond under the time axis; the faults table lists the steps and answers.
  With the lock workload, a "lock holders" lane shows each holding from acquisition to its end.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from raftkv.chaos.judge import Judgement
from raftkv.chaos.recorder import REMOVED_STATE, Recorder, answer_of
from raftkv.check import save_history

__all__ = ["render_timeline", "write_report"]

WIDTH_PX = 1400
LEFT_PX = 110
RIGHT_PX = 20
LANE_PX = 18
LABEL_ROWS = 3  # fault labels under the plot take turns on these rows (member windows overlap others)
# Node colours avoid the role colours below, so "node2 leads" never reads as "a candidate".
NODE_COLORS = ["#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#a6761d", "#1f78b4", "#b15928", "#6a3d9a", "#666666"]
STATE_COLORS = {"leader": "#f2b705", "follower": "#9ecae1", "candidate": "#fd8d3c", "pre-candidate": "#fdd0a2",
                "precandidate": "#fdd0a2", "learner": "#c7e9c0", REMOVED_STATE: "#ffffff", None: "#bbbbbb"}
OUTCOME_COLORS = {"ok": "#2e9d4a", "fail": "#e0584f", "unknown": "#f0a030"}
FAULT_COLORS = {"kill": "#d62728", "pause": "#9467bd", "partition": "#1f77b4", "netns": "#17becf",
                "crash": "#8b0000", "member": "#8c564b"}
_ADDED_MEMBER_ID = re.compile(r"^(?P<name>.+)-(?P<bits>[0-9a-f]{16})$")  # a member added at run time
_ADDED_MEMBER_IDS = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*?)-(?P<bits>[0-9a-f]{16})\b")


def write_report(out_dir: Path, recorder: Recorder, judgement: Judgement, meta: dict[str, Any]) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"history": out_dir / "history.json", "run": out_dir / "run.json", "timeline": out_dir / "timeline.html"}
    save_history(paths["history"], recorder.ops)
    run = {"meta": meta, "judgement": judgement.to_json(), **recorder.to_json()}
    paths["run"].write_text(json.dumps(run, indent=1, sort_keys=True, default=str))
    paths["timeline"].write_text(render_timeline(recorder, judgement, meta))
    return paths


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def render_timeline(recorder: Recorder, judgement: Judgement, meta: dict[str, Any]) -> str:
    ops = recorder.ops
    t_end = max([op.complete_time or op.invoke_time for op in ops] + [f.end or 0 for f in recorder.faults]
                + [s.time for s in recorder.samples] + list(recorder.phases.values()) + [1.0])
    plot_w = WIDTH_PX - LEFT_PX - RIGHT_PX

    def x(t: float) -> float:
        return LEFT_PX + plot_w * max(0.0, min(t, t_end)) / t_end

    nodes = _lane_order(recorder)
    node_color = {n: NODE_COLORS[i % len(NODE_COLORS)] for i, n in enumerate(nodes)}
    clients = sorted({op.client for op in ops}, key=lambda c: (isinstance(c, str), str(c).zfill(6)))
    bad_ops = {i for r in judgement.check.keys.values() for i in r.unplaced} | set(judgement.suspect_ops)

    svg: list[str] = []
    y = 30
    # --- time axis
    step = _tick_step(t_end)
    axis_top = y
    t = 0.0
    while t <= t_end + 1e-9:
        svg.append(f'<line x1="{x(t):.1f}" y1="{axis_top - 6}" x2="{x(t):.1f}" y2="{{BOTTOM}}" class="grid"/>')
        svg.append(f'<text x="{x(t):.1f}" y="{axis_top - 10}" class="tick">{t:g}s</text>')
        t += step
    y += 4

    # --- leader per term band
    svg.append(f'<text x="{LEFT_PX - 8}" y="{y + 13}" class="lane">leader/term</text>')
    for start, end, node, term, stale in _leader_spans(recorder, t_end):
        w = max(1.0, x(end) - x(start))
        # A deposed leader that still believes it leads (an older term) is drawn half height.
        h, note = (LANE_PX // 2, " - a stale leader: a newer term already has one") if stale else (LANE_PX, "")
        svg.append(f'<rect x="{x(start):.1f}" y="{y + LANE_PX - h}" width="{w:.1f}" height="{h}" '
                   f'fill="{node_color.get(node)}"><title>term {term}: {_esc(node)} leads '
                   f'({start:.2f}s-{end:.2f}s){note}</title></rect>')
        if w > 40 and not stale:
            svg.append(f'<text x="{x(start) + 3:.1f}" y="{y + 13}" class="inbar">t{term} {_esc(short_id(node))}</text>')
    y += LANE_PX + 8

    # --- one lane per node: its role over time
    for node in nodes:
        svg.append(f'<text x="{LEFT_PX - 8}" y="{y + 12}" class="lane" fill="{node_color[node]}">'
                   f'<title>{_esc(node)}</title>{_esc(short_id(node))}</text>')
        for start, end, state, term in _state_spans(recorder, node, t_end):
            w = max(0.5, x(end) - x(start))
            label = state or "no answer"
            svg.append(f'<rect x="{x(start):.1f}" y="{y}" width="{w:.1f}" height="{LANE_PX - 4}" '
                       f'fill="{STATE_COLORS.get(state, "#dddddd")}"><title>{_esc(node)}: {_esc(label)}'
                       f'{"" if term is None else f" (term {term})"} {start:.2f}s-{end:.2f}s</title></rect>')
        y += LANE_PX
    y += 8

    # --- one lane per client: its operations
    lane_of = {c: i for i, c in enumerate(clients)}
    lanes_top = y
    for c in clients:
        yy = lanes_top + lane_of[c] * LANE_PX
        svg.append(f'<text x="{LEFT_PX - 8}" y="{yy + 12}" class="lane">client {_esc(c)}</text>')
    for i, (op, m) in enumerate(zip(ops, recorder.op_meta, strict=True)):
        yy = lanes_top + lane_of[op.client] * LANE_PX
        end = op.complete_time if op.complete_time is not None else t_end
        w = max(1.5, x(end) - x(op.invoke_time))
        h = LANE_PX - (8 if op.kind == "read" else 4)
        top = yy + (LANE_PX - 4 - h) / 2
        stroke = ' stroke="#c00000" stroke-width="2.5"' if i in bad_ops else ""
        tip = (f"{op.describe()} on {key_node(m)}, {answer_of(m)}"
               + (f" - {m['error']}" if m.get("error") else ""))
        svg.append(f'<rect x="{x(op.invoke_time):.1f}" y="{top:.1f}" width="{w:.1f}" height="{h}" '
                   f'fill="{OUTCOME_COLORS[op.outcome]}" class="{op.kind}"{stroke}><title>{_esc(tip)}</title></rect>')
    y = lanes_top + len(clients) * LANE_PX + 10

    # --- with the lock workload: who held the lock when (overlapping bars would be two holders)
    holdings = [h for h in (meta.get("coordination") or {}).get("locks") or [] if h["acquired_at"] is not None]
    if holdings:
        svg.append(f'<text x="{LEFT_PX - 8}" y="{y + 12}" class="lane">lock holders</text>')
        for h in holdings:
            w = max(1.5, x(h["ended_at"]) - x(h["acquired_at"]))
            color = NODE_COLORS[h["client"] % len(NODE_COLORS)]
            svg.append(f'<rect x="{x(h["acquired_at"]):.1f}" y="{y}" width="{w:.1f}" height="{LANE_PX - 4}" '
                       f'fill="{color}"><title>lock client {h["client"]}, token {h["token"]}: '
                       f'{h["acquired_at"]:.2f}s-{h["ended_at"]:.2f}s, {_esc(h["end"])}</title></rect>')
        y += LANE_PX + 6
    bottom = y

    # --- nemesis windows and phases, over everything
    shades = []
    for f in recorder.faults:
        end = f.end if f.end is not None else t_end
        color = FAULT_COLORS.get(f.kind, "#888888")
        shades.append(f'<rect x="{x(f.start):.1f}" y="{axis_top}" width="{max(1.0, x(end) - x(f.start)):.1f}" '
                      f'height="{bottom - axis_top}" fill="{color}" opacity="0.13"><title>{_esc(f.label)} '
                      f'{f.start:.2f}s-{end:.2f}s{(" ERROR " + _esc(f.error)) if f.error else ""}</title></rect>')
    for i, f in enumerate(recorder.faults):  # labels on rows in turn, so long ones do not collide
        color = FAULT_COLORS.get(f.kind, "#888888")
        shades.append(f'<text x="{x(f.start) + 2:.1f}" y="{bottom + 14 + 13 * (i % LABEL_ROWS)}" class="fault" '
                      f'fill="{color}">{_esc(_shorten_ids(f.label))}</text>')
    for f in recorder.faults:
        for step in f.details.get("actions", []) if f.kind == "member" else []:
            sx = x(step["t"])
            shades.append(f'<path d="M{sx:.1f} {axis_top - 4} l4 4 l-4 4 l-4 -4 z" fill="{FAULT_COLORS["member"]}">'
                          f'<title>{_esc(_step_text(step))}</title></path>')
    phases_top = bottom + 18 + 13 * LABEL_ROWS
    for i, (name, t) in enumerate(sorted(recorder.phases.items(), key=lambda kv: kv[1])):
        shades.append(f'<line x1="{x(t):.1f}" y1="{axis_top}" x2="{x(t):.1f}" y2="{bottom}" class="phase"/>'
                      f'<text x="{x(t) - 2:.1f}" y="{phases_top + 12 * i}" class="tick" text-anchor="end">'
                      f'{_esc(name)} {t:.1f}s</text>')
    height = phases_top + 6 + 12 * len(recorder.phases)
    body = "\n".join(shades + svg).replace("{BOTTOM}", str(bottom))
    return _page(judgement, meta, recorder, f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH_PX}" '
                                            f'height="{height}" viewBox="0 0 {WIDTH_PX} {height}">{body}</svg>')


def key_node(meta: dict[str, Any]) -> str:
    return str(meta.get("node", "?"))


def short_id(member_id: str) -> str:
    """A lane's name: a founding member's id, or a later member's name and its id's first bits."""
    added = _ADDED_MEMBER_ID.match(member_id)
    return f"{added['name']}·{added['bits'][:4]}" if added else member_id


def _shorten_ids(text: str) -> str:
    """Every later member's id in `text` as `short_id` writes it (fault labels under the plot)."""
    return _ADDED_MEMBER_IDS.sub(lambda m: f"{m['name']}·{m['bits'][:4]}", text)


def _lane_order(recorder: Recorder) -> list[str]:
    """Nodes by name, and the incarnations of one name in the order they appeared."""
    first_seen: dict[str, float] = {}
    for s in recorder.samples:
        first_seen.setdefault(s.node, s.time)
    for op, meta in zip(recorder.ops, recorder.op_meta, strict=True):
        if meta.get("node"):
            first_seen.setdefault(meta["node"], op.invoke_time)

    def name(node: str) -> str:
        added = _ADDED_MEMBER_ID.match(node)
        return added["name"] if added else node

    return sorted(first_seen, key=lambda n: (name(n), first_seen[n], n))


def _step_text(step: dict[str, Any]) -> str:
    """One member nemesis step in words: "t=4.20s remove node2: done (409 pending x2, 200 x1)"."""
    answers = ", ".join(f"{word} x{n}" for word, n in step.get("answers", {}).items())
    return (f"t={step['t']:.2f}s {step['action']} {step['member']}: {step['outcome']}"
            + (f" ({answers})" if answers else ""))


def _tick_step(t_end: float) -> float:
    for step in (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300):
        if t_end / step <= 25:
            return float(step)
    return 600.0


def _state_spans(recorder: Recorder, node: str, t_end: float) -> list[tuple[float, float, str | None, int | None]]:
    samples = [s for s in recorder.samples if s.node == node]
    spans = []
    for i, s in enumerate(samples):
        end = samples[i + 1].time if i + 1 < len(samples) else t_end
        spans.append((s.time, end, s.state, s.term))
    return spans


def _leader_spans(recorder: Recorder, t_end: float) -> list[tuple[float, float, str, int, bool]]:
    """(start, end, node, term, stale): from the first sample of a node leading a term until that
    node is seen in another state or a newer term's leader appears. `stale`: when it was first
    seen leading, a newer term had already been seen with a leader."""
    spans: list[list] = []
    newest = -1
    for s in sorted(recorder.samples, key=lambda s: s.time):
        if s.state == "leader" and s.term is not None:
            if not any(sp[2] == s.node and sp[3] == s.term and sp[1] is None for sp in spans):
                for sp in spans:
                    if sp[1] is None and sp[3] < s.term:
                        sp[1] = s.time
                spans.append([s.time, None, s.node, s.term, s.term < newest])
                newest = max(newest, s.term)
        else:
            for sp in spans:
                if sp[1] is None and sp[2] == s.node:
                    sp[1] = s.time
    return [(a, b if b is not None else t_end, n, t, stale) for a, b, n, t, stale in spans]


def _steps_html(steps: list[dict[str, Any]]) -> str:
    if not steps:
        return ""
    return '<ul class="steps">' + "".join(f"<li>{_esc(_step_text(s))}</li>" for s in steps) + "</ul>"


def _page(judgement: Judgement, meta: dict[str, Any], recorder: Recorder, svg: str) -> str:
    verdict = judgement.verdict
    color = {"PASS": "#2e9d4a", "VIOLATION": "#c00000"}.get(verdict, "#d08000")
    summary = _esc(judgement.summary())
    options = _esc(json.dumps(meta, sort_keys=True, default=str))
    faults = "".join(
        f"<tr><td>{f.start:.2f}</td><td>{'' if f.end is None else f'{f.end:.2f}'}</td><td>{_esc(f.kind)}</td>"
        f"<td>{_esc(f.label)}{_steps_html(f.details.get('actions', []))}</td><td>{_esc(f.error or '')}</td></tr>"
        for f in recorder.faults)
    legend = " ".join(
        [f'<span class="sw" style="background:{c}"></span>{k}' for k, c in OUTCOME_COLORS.items()]
        + [f'<span class="sw" style="background:{c};opacity:.35"></span>{k}' for k, c in FAULT_COLORS.items()]
        + [f'<span class="sw" style="background:{c};outline:1px solid #ccc"></span>{k}'
           for k, c in STATE_COLORS.items() if k in ("leader", "follower", "candidate", "learner", REMOVED_STATE)]
        + ['<span class="sw" style="background:#bbbbbb"></span>no answer'])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>raftkv chaos: {verdict}</title>
<style>
body {{ font: 13px/1.4 system-ui, sans-serif; margin: 16px; color: #222; }}
h1 {{ font-size: 20px; margin: 0 0 8px; }} h1 span {{ color: {color}; }}
pre {{ background: #f6f6f6; padding: 8px; white-space: pre-wrap; }}
.grid {{ stroke: #e4e4e4; }} .phase {{ stroke: #333; stroke-dasharray: 4 3; }}
.tick {{ font-size: 10px; fill: #555; }} .lane {{ font-size: 11px; text-anchor: end; }}
.inbar {{ font-size: 10px; fill: #fff; }} .fault {{ font-size: 10px; }}
rect.read {{ opacity: .75; }} .sw {{ display: inline-block; width: 12px; height: 12px; margin: 0 3px 0 10px;
 vertical-align: middle; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ddd; padding: 2px 6px; }}
ul.steps {{ margin: 2px 0; padding-left: 16px; font-size: 12px; color: #555; }}
</style></head><body>
<h1>raftkv chaos run: <span>{verdict}</span></h1>
<pre>{summary}</pre>
<div>Operations: short bars are reads, tall bars writes/CAS; colour = outcome; red outline = an
operation the linearizability checker could not place, or a
write answered "not applied" whose value was read later. Hover anything for details.</div>
<div>{legend}</div>
{svg}
<h2>Faults</h2><table><tr><th>start s</th><th>end s</th><th>kind</th><th>what</th><th>error</th></tr>{faults}</table>
<h2>Options</h2><pre>{options}</pre>
</body></html>
"""
