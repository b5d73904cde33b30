// Measurements from the nodes' own /metrics, once a second: the leader's commits per second, its
// propose-to-commit latency, and the worst node's time without a leader; and the per-link table.

import {S, leaderViewAt, viewTime} from "./state.js";
import {$, el, svg} from "./dom.js";

const CHART_POINTS = 120;
const REDRAW_GAP_MS = 1000;  // the figures come once a second from each node: one redraw covers them
let drawnAt = -Infinity;
const chart = {second: null, tput: [], p50: [], p99: [], leaderless: []};

export function resetCharts() {
  chart.second = null;
  for (const k of ["tput", "p50", "p99", "leaderless"]) chart[k] = [];
}

export function pushChart(ev) {
  // One point per second: the leader's figures (it commits), and the worst leaderless time.
  const second = Math.floor(ev.rt);
  if (chart.second !== second) {
    chart.second = second;
    chart.tput.push(0); chart.p50.push(null); chart.p99.push(null); chart.leaderless.push(0);
    for (const k of ["tput", "p50", "p99", "leaderless"]) if (chart[k].length > CHART_POINTS) chart[k].shift();
  }
  const last = chart.tput.length - 1;
  if (ev.isLeader) {
    chart.tput[last] = ev.writesPerSecond;
    chart.p50[last] = ev.commitP50Ms;
    chart.p99[last] = ev.commitP99Ms;
  }
  chart.leaderless[last] = Math.max(chart.leaderless[last], ev.leaderlessSeconds || 0);
}

function drawChart(sel, series) {
  const all = series.flatMap((s) => s.data.filter((v) => v != null));
  const max = Math.max(1e-9, ...all) * 1.15;
  const W = 300, H = 80;
  const parts = [svg("line", {x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, class: "axis"})];
  for (const s of series) {
    let d = "";
    s.data.forEach((v, i) => {
      if (v == null) return;
      const x = (i / (CHART_POINTS - 1)) * W, y = H - (v / max) * (H - 12);
      d += (d && s.data[i - 1] != null ? "L" : "M") + x.toFixed(1) + "," + y.toFixed(1);
    });
    parts.push(svg("path", {d, class: `line ${s.cls || ""}`}));
  }
  const newest = series.map((s) => {
    const v = [...s.data].reverse().find((x) => x != null);
    return v == null ? "–" : Number(v).toFixed(v >= 100 ? 0 : 2);
  });
  const label = svg("text", {x: W - 2, y: 10, "text-anchor": "end", class: "chart-label"});
  label.textContent = `now ${newest.join(" / ")} · max ${all.length ? (max / 1.15).toFixed(2) : 0}`;
  parts.push(label);
  $(sel).replaceChildren(...parts);
}

export function renderCharts() {
  if (performance.now() - drawnAt < REDRAW_GAP_MS) return;
  drawnAt = performance.now();
  drawChart("#c-tput", [{data: chart.tput}]);
  drawChart("#c-lat", [{data: chart.p50}, {data: chart.p99, cls: "dashed"}]);
  drawChart("#c-leaderless", [{data: chart.leaderless, cls: "warn"}]);
  // The leader's own view of each link: how long since it last heard from that follower.
  const leader = leaderViewAt(viewTime());
  const contact = {};
  if (leader) for (const p of leader.state.peers || []) contact[`${leader.state.nodeId}>${p.id}`] = p.lastContact;
  const rows = Object.entries(S.links).sort().map(([k, r]) => el("tr", {},
    el("td", {text: k.replace(">", " → ")}), el("td", {text: r.messages}), el("td", {text: r.entries}),
    el("td", {class: r.dropped ? "bad" : "", text: r.dropped}),
    el("td", {text: contact[k] != null ? `${contact[k]} s` : ""})));
  $("#links-table").replaceChildren(el("table", {},
    el("caption", {text: "per link, last half second"}),
    el("thead", {}, el("tr", {}, ...["link", "msg/s", "entries/s", "dropped/s", "leader last heard"]
      .map((h) => el("th", {scope: "col", text: h})))),
    el("tbody", {}, ...rows)));
}
