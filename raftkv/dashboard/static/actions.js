// What a person does: each button is one call to the dashboard server, whose answer (or refusal)
// is shown in the panel the button belongs to, never in another's.

import {$, el, short} from "./dom.js";
import {S, leaderViewAt, members, now} from "./state.js";
import {openButton, traceHere, tracedWrite} from "./traces.js";

// POST (or `method`) `body` to `path`; the outcome goes to `out` (an element, default the
// "Break it" panel's line). Returns the answer, or null when refused or unreachable.
// `said`: what to write on success, from the answer (default "done").
export async function api(path, body, {method = "POST", out = "#control-msg", said = () => "done"} = {}) {
  const msg = typeof out === "string" ? $(out) : out;
  msg.className = "msg";
  msg.textContent = "…";
  try {
    const r = await fetch(path, {method, headers: {"Content-Type": "application/json"}, body: JSON.stringify(body || {})});
    const data = await r.json().catch(() => ({}));
    if (!r.ok) {
      msg.className = "msg bad";
      msg.textContent = `refused (${r.status}): ${data.error || r.statusText}`;
      return null;
    }
    msg.textContent = said(data);
    return data;
  } catch (e) {
    msg.className = "msg bad";
    msg.textContent = `the dashboard server did not answer (${e.message})`;
    return null;
  }
}

export const nodeAction = (id, op) => api(`/api/nodes/${encodeURIComponent(id)}/${op}`);
export const promoteNode = (id) => api(`/api/members/${encodeURIComponent(id)}/promote`);

export function removeNode(id) {
  return api(`/api/members/${encodeURIComponent(id)}`, null, {method: "DELETE"});
}

async function addNode() {
  const button = $("#add-node");
  button.disabled = true;
  try {
    const r = await api("/api/members", {promote: $("#add-promote").checked});
    if (r) $("#control-msg").textContent = `${r.node} joined as a ${r.role}`;
  } finally { button.disabled = !(S.features.addNode || {}).available; }
}

const parseValue = (text) => { try { return JSON.parse(text); } catch { return text; } };

export function wireControls() {
  $("#heal").addEventListener("click", () => api("/api/heal"));
  $("#add-node").addEventListener("click", addNode);
  $("#split").addEventListener("click", () => {
    const a = [...document.querySelectorAll("#split-boxes input:checked")].map((i) => i.value);
    const b = members().map((n) => n.id).filter((x) => !a.includes(x));
    api("/api/split", {groups: [a, b].filter((g) => g.length)});
  });
  $("#cut").addEventListener("click", () => api("/api/cut", {src: $("#cut-src").value, dst: $("#cut-dst").value}));
  $("#link-apply").addEventListener("click", () => api("/api/link-quality", {node: $("#cut-src").value,
    loss_percent: Number($("#link-loss").value), delay_ms: Number($("#link-delay").value)}));
  $("#slowmo").addEventListener("click", () =>
    api("/api/slowmo", {factor: S.slowmo.factor > 1 ? 1 : 10}, {out: "#control-msg"}));
  $("#load-start").addEventListener("click", () => api("/api/load",
    {writers: Number($("#load-writers").value), seconds: Number($("#load-seconds").value)}, {out: "#load-msg"}));
  $("#load-stop").addEventListener("click", () => api("/api/load/stop", null,
    {out: "#load-msg", said: (d) => d.stopped ? "stopped" : "no load was running"}));
  wireKvForm();
}

export function renderLoad(ev) {
  const errs = Object.entries(ev.errors || {}).map(([k, v]) => `${k}×${v}`).join(" ");
  $("#load-out").textContent = `${ev.running ? "running" : "finished"}: ${ev.ok} writes ok in ${ev.elapsed} s · ` +
    `${ev.throughput}/s · p50 ${ev.p50Ms ?? "–"} ms · p99 ${ev.p99Ms ?? "–"} ms${errs ? " · errors " + errs : ""}`;
}

// ------------------------------------------------------------------------- read and write ----

function wireKvForm() {
  const op = $("#kv-op");
  const syncOp = () => {
    for (const c of document.querySelectorAll(".cas-only")) c.hidden = op.value !== "cas";
    $("#kv-value").disabled = op.value === "get" || op.value === "delete";
  };
  op.addEventListener("change", syncOp);
  syncOp();
  $("#kv-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = {op: op.value, key: $("#kv-key").value, node: $("#kv-node").value || null};
    const trace = $("#kv-trace");
    if (trace.checked && !trace.disabled) body.trace = true;  // sent with X-Raftkv-Trace: 1
    if (op.value === "put" || op.value === "cas") body.value = parseValue($("#kv-value").value);
    if (op.value === "cas") {
      if ($("#kv-prev-value").value !== "") body.prev_value = parseValue($("#kv-prev-value").value);
      if ($("#kv-prev-rev").value !== "") body.prev_revision = Number($("#kv-prev-rev").value);
      if (body.prev_value === undefined && body.prev_revision === undefined) body.prev_exist = false;
    }
    const out = $("#kv-result");
    const leaderLast = () => { const v = leaderViewAt(now()); return v ? v.state.logLength : null; };
    const before = leaderLast();
    const r = await api("/api/kv", body, {out});
    if (!r) { out.className = "kv-result bad"; return; }
    if (r.status < 300 && before != null && op.value !== "get") {
      // The write went into the leader's log after index `before`: mark those cells in every node's
      // row for a while, so the entry can be followed from striped (appended) to solid (committed).
      const after = leaderLast();
      S.mine = {from: before + 1, to: Math.min(before + 4, Math.max(before + 1, after || 0)), until: now() + 20};
    }
    showKvResult(out, r);
    tracedWrite(r.traceId, r.traceAsked);
  });
}

function showKvResult(out, r) {
  const b = r.body || {};
  out.className = "kv-result " + (r.status < 300 ? "ok" : "bad");
  out.dataset.status = r.status;
  delete out.dataset.trace;
  out.textContent = `${r.op.toUpperCase()} ${r.key} → ${r.status}` +
    (r.op === "get" && r.status === 200 ? ` value ${short(b.value)}` : "") +
    (r.revision != null ? ` · revision ${r.revision}` : "") +
    ` · asked ${r.askedNode}` + (r.servedBy ? ` · served by ${r.servedBy}` : "") +
    (r.forwardedBy ? ` (forwarded by ${r.forwardedBy})` : "") + ` · ${r.ms} ms` +
    (r.status >= 400 && b.error ? ` · ${b.error}` : "");
  if (r.traceId) {
    out.dataset.trace = r.traceId;
    out.append(` · traced (${r.traceId.slice(0, 8)}…) `, traceHere(r.traceId) ? openButton(r.traceId)
      : el("span", {class: "why trace-later", text: r.traceAsked ? "its waterfall opens below when its spans arrive"
        : "it can be opened once its spans arrive"}));
  } else if (r.traceAsked) {
    out.append(" · the node did not trace it (tracing is off on that node)");
  }
}

export function fillNodeChoices() {
  const opts = (sel, withAny) => $(sel).replaceChildren(
    ...(withAny ? [el("option", {value: "", text: "the leader"})] : []),
    ...members().map((n) => el("option", {value: n.id, text: n.id})));
  opts("#kv-node", true);
  opts("#cut-src");
  opts("#cut-dst");
  if (members().length > 1) $("#cut-dst").value = members()[1].id;
  $("#split-boxes").replaceChildren(...members().map((n, i) =>
    el("label", {class: "chk"}, el("input", {type: "checkbox", value: n.id, checked: i === 0 ? true : null,
      "aria-label": `${n.id} in the first group`}), ` ${n.id}`)));
}
