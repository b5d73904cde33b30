// One trace as a waterfall: a row per span (node, span name, plain words), bars on one time axis in
// milliseconds from the trace's first span. The server works out what to draw (waterfall.py): the
// spans, the gaps between them that are time on the network or waiting on a node, the critical
// path and the sentence; this only draws it.
//
//   solid bar, coloured by node     a span (the node is written on the row too: not colour alone)
//   dashed outline                  between two nodes: sent, on the network, queued at the other end
//   hatched                         waiting on a node (queued, counting the majority, answering)
//   dark outline and "critical"     on the critical path: what the write waited for
//   "shared by N entries"           one batch (an fsync) served several writes: drawn once, with
//                                   how many entries and traced writes it served

import {el} from "./dom.js";

const NODE_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442"];
const TICKS = 6;

const fmtMs = (ms) => `${ms < 10 ? ms.toFixed(2) : ms.toFixed(1)} ms`;

// A round step for about TICKS ticks over `total` ms: 1, 2 or 5 times a power of ten.
function tickStep(total) {
  const raw = Math.max(total, 0.001) / TICKS;
  const p = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw);
}

export function drawWaterfall(box, w) {
  const total = Math.max(w.totalMs, 0.001);
  const pct = (ms) => `${Math.min(100, Math.max(0, (ms / total) * 100)).toFixed(3)}%`;
  const colour = (node) => {
    const i = w.nodes.indexOf(node);
    return i >= 0 ? NODE_COLOURS[i % NODE_COLOURS.length] : "#5b6470";
  };
  const step = tickStep(total);
  const ticks = [];
  for (let t = 0; t <= total + 1e-9; t += step) {
    ticks.push(el("span", {class: "wf-tick", style: `left:${pct(t)}`, text: `${+t.toPrecision(6)} ms`}));
  }
  const rows = w.rows.map((r) => {
    const cls = ["wf-row", `wf-${r.kind}`, r.critical ? "critical" : "", r.shared ? "shared" : "",
      r.ownTrace ? "" : "linked", r.error ? "error" : ""].filter(Boolean).join(" ");
    const bar = el("span", {class: "wf-bar", style: `left:${pct(r.startMs)};width:max(2px, ${pct(r.endMs - r.startMs)});` +
      (r.kind === "span" ? `--node:${colour(r.node)}` : "")});
    const marks = r.events.map((e) => el("span", {class: "wf-mark", style: `left:${pct(e.atMs)}`,
      title: `${e.label} at ${fmtMs(e.atMs)}`, "data-event": e.label}));
    const notes = [
      r.shared ? el("span", {class: "wf-shared", text: r.name === "forward to leader"
        ? `shared: one forward of ${r.shared.entries} writes (${r.shared.tracedWrites} traced)`
        : `shared: one ${r.name} for ${r.shared.entries} ${r.shared.entries === 1 ? "entry" : "entries"}, ` +
          `${r.shared.tracedWrites} traced ${r.shared.tracedWrites === 1 ? "write" : "writes"}`}) : null,
      r.ownTrace ? null : el("span", {class: "wf-linked", text: "made in another write's trace, linked to this one"}),
      r.error ? el("span", {class: "bad", text: `error${r.statusMessage ? `: ${r.statusMessage}` : ""}`}) : null,
    ].filter(Boolean);
    const title = r.kind === "span" ? `${r.node}: ${r.name}` : r.label;
    return el("li", {class: cls, "data-node": r.node, "data-name": r.name, "data-kind": r.kind,
      "data-critical": r.critical ? "true" : "false", "data-shared": r.shared ? r.shared.entries : null,
      title: `${title}: ${fmtMs(r.startMs)} to ${fmtMs(r.endMs)}`},
      el("span", {class: "wf-label"},
        r.kind === "span" ? el("b", {class: "wf-node", style: `--node:${colour(r.node)}`, text: r.node}) : null,
        r.kind === "span" ? ` ${r.name}` : el("span", {class: "wf-gap", text: r.label}),
        r.kind === "span" ? el("small", {text: r.label}) : null),
      el("span", {class: "wf-track"}, bar, ...marks,
        // Past three quarters of the axis the figure goes before the bar, so that it stays in the panel.
        el("span", {class: r.endMs > 0.75 * total ? "wf-ms before" : "wf-ms",
          style: `left:${pct(r.endMs > 0.75 * total ? r.startMs : r.endMs)}`}, fmtMs(r.endMs - r.startMs),
          r.critical ? el("b", {class: "wf-crit", text: " · critical path"}) : null)),
      notes.length ? el("span", {class: "wf-notes"}, ...notes) : null);
  });
  box.replaceChildren(
    el("div", {class: "wf-axis", "aria-hidden": "true"}, el("span", {class: "wf-label"}),
      el("span", {class: "wf-track"}, ...ticks)),
    el("ol", {class: "wf-rows", "aria-label": "Spans and the gaps between them, by start time"}, ...rows),
    ...w.notes.map((n) => el("p", {class: "why", text: n})));
}
