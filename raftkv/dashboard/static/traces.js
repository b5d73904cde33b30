// Traces of writes: the write form's "trace this write" switch, which traces are on the dashboard,
// and the waterfall panel.
//
// Whether tracing is on comes from the server (`tracing` in the hello, then in `traces` events): on and sent here, the switch sends the write with X-Raftkv-Trace: 1; off, the switch is
// greyed and says how to turn tracing on. The server also says which traces got spans (the hello's
// traceIds, then each `traces` event's ids), so the feed and the form offer to open a trace only
// when it is here, and an open waterfall is drawn again as more of its spans arrive (the nodes
// export in batches, each on its own schedule). A waterfall is fetched when opened, never polled.
// `#trace=<id>` in the address opens one.

import {$, el, setText} from "./dom.js";
import {invalidate} from "./render.js";
import {drawWaterfall} from "./waterfall.js";

const MAX_IDS = 1000;  // the server keeps 500 traces
const REDRAW_GAP_MS = 400;  // an open trace's new spans, fetched at most this often
const RECENT_SHOWN = 12;

export const T = {
  ids: new Set(),    // traces with spans on the dashboard
  state: null,       // {on, here, ratio, text}: from the server
  open: null,        // the trace id on show
  waiting: null,     // a traced write's trace id, opened as soon as its spans arrive
};
let refetch = null;

export const traceHere = (id) => !!id && T.ids.has(id);
const tracingState = () => T.state;

export function noteTraceHello(h) {
  T.ids = new Set(h.traceIds || []);
  T.state = h.tracing || null;
  invalidate("tracing", "feed");
}

// A `traces` event: these traces got spans; tracing is (still) on or off.
export function noteTraces(ev) {
  if (ev.tracing) T.state = ev.tracing;
  for (const id of ev.ids || []) {
    T.ids.delete(id);
    T.ids.add(id);
  }
  while (T.ids.size > MAX_IDS) T.ids.delete(T.ids.values().next().value);
  const ids = new Set(ev.ids || []);
  const result = $("#kv-result"), later = result.querySelector(".trace-later");
  if (later && ids.has(result.dataset.trace)) later.replaceWith(openButton(result.dataset.trace));
  if (T.waiting && ids.has(T.waiting)) {
    const id = T.waiting;
    T.waiting = null;
    openTrace(id, {scroll: false});
  } else if (T.open && ids.has(T.open) && !refetch) {
    refetch = setTimeout(() => { refetch = null; openTrace(T.open, {scroll: false}); }, REDRAW_GAP_MS);
  }
  invalidate("tracing", "feed");
}

// The write form asked for a trace (or the node traced it anyway): open it once it is here.
export function tracedWrite(id, asked) {
  if (!id) return;
  if (traceHere(id)) openTrace(id, {scroll: false});
  else if (asked) T.waiting = id;
}

export function renderTracing() {
  const st = tracingState();
  const box = $("#kv-trace");
  const on = !!(st && st.on);
  box.disabled = !on;
  if (!on) box.checked = false;
  box.title = st ? st.text : "";
  setText($("#kv-trace-why"), st ? st.text.charAt(0).toUpperCase() + st.text.slice(1) + "." : "");
  setText($("#trace-state"), st ? st.text.charAt(0).toUpperCase() + st.text.slice(1) + "." : "");
  $("#trace-panel").dataset.tracing = on ? (st.here ? "here" : "elsewhere") : "off";
  $("#trace-recent").disabled = !(st && st.here) && !T.ids.size;
}

export function wireTraces() {
  $("#trace-recent").addEventListener("click", listRecent);
  const fromHash = () => {
    const m = /^#trace=([0-9a-f]{32})$/i.exec(location.hash);
    if (m) openTrace(m[1].toLowerCase(), {scroll: true});
  };
  window.addEventListener("hashchange", fromHash);
  fromHash();
}

// A button that opens trace `id` (the feed's lines, the form's answer, the recent list).
export function openButton(id, text = "open its trace") {
  return el("button", {type: "button", class: "trace-open", "data-trace": id, text,
    "aria-label": `open the waterfall of trace ${id}`, onclick: () => openTrace(id, {scroll: true})});
}

export async function openTrace(id, {scroll = true} = {}) {
  T.open = id;
  const msg = $("#trace-msg");
  msg.className = "msg";
  try {
    const r = await fetch(`/api/traces/${encodeURIComponent(id)}`, {cache: "no-store"});
    if (!r.ok) {
      msg.className = "msg bad";
      setText(msg, r.status === 404 ? `no spans of trace ${id} are on this dashboard (it keeps the newest 500 traces)`
        : `refused (${r.status}): ${(await r.text()).slice(0, 200)}`);
      return;
    }
    const data = await r.json();
    if (T.open !== id) return;  // another trace was opened meanwhile
    const w = data.waterfall;
    const panel = $("#trace-panel");
    panel.dataset.trace = id;
    panel.dataset.spans = data.spans.length;
    setText($("#trace-title"), `trace ${id} · ${data.spans.length} spans from ${w.nodes.join(", ")} · ` +
      `${w.totalMs.toFixed(1)} ms`);
    setText($("#trace-sentence"), w.sentence);
    drawWaterfall($("#waterfall"), w);
    setText(msg, "");
    if (scroll) panel.scrollIntoView({block: "start"});
  } catch (e) {
    msg.className = "msg bad";
    setText(msg, `the dashboard server did not answer (${e.message})`);
  }
}

async function listRecent() {
  const list = $("#trace-list"), msg = $("#trace-msg");
  try {
    const r = await fetch("/api/traces", {cache: "no-store"});
    if (!r.ok) { msg.className = "msg bad"; setText(msg, `refused (${r.status})`); return; }
    const data = await r.json();
    const shown = data.traces.slice(0, RECENT_SHOWN);
    list.replaceChildren(...shown.map((t) => el("li", {},
      openButton(t.traceId, `${t.name} on ${t.node}`),
      ` ${new Date(t.startNs / 1e6).toLocaleTimeString([], {hour12: false})} · ${t.durationMs.toFixed(1)} ms · ` +
      `${t.spans} spans from ${t.nodes.join(", ")}`)));
    msg.className = "msg";
    setText(msg, shown.length ? "" : "no trace has arrived yet");
  } catch (e) {
    msg.className = "msg bad";
    setText(msg, `the dashboard server did not answer (${e.message})`);
  }
}
