// One card per node: role and term, what it believes, how the dashboard reaches it (in plain words),
// its controls, and its key-value contents as it has applied them.

import {S, catchUp, catchUpWords, isLive, members, memberRole, nameOf, nodeCondition, nodeView, now, viewTime}
  from "./state.js";
import {$, el, fmtAge, fmtBytes, fmtTime, setAttr, setText, short, termColour} from "./dom.js";
import {icon} from "./icons.js";
import {api, nodeAction, promoteNode, removeNode} from "./actions.js";

const KV_REDRAW_GAP_MS = 1000;

export function buildCards() {
  const proc = S.features.process || {};
  $("#cards").replaceChildren(...S.nodes.map((n) => card(n, proc)));
}

function card(n, proc) {
  const b = (op, iconName, label, aria, onclick, extra = {}) => el("button", {type: "button", "data-op": op,
    "data-target": n.id, "aria-label": `${aria} ${n.id}`, onclick, ...extra}, icon(iconName), ` ${label}`);
  const act = (op) => () => nodeAction(n.id, op);
  const procOff = proc.available ? {} : {disabled: true, title: proc.why};
  return el("article", {class: "card", "data-node": n.id, "aria-label": `node ${n.id}`},
    el("header", {}, el("h3", {text: n.id}), el("span", {class: "role-word"})),
    el("p", {class: "facts"}),
    el("p", {class: "reach"}),
    el("p", {class: "votes"}),
    el("div", {class: "buttons"},
      b("force-election", "vote", "Force election", "Force an election on", act("force-election")),
      b("isolate", "cut", "Isolate", "Cut off from every peer:", act("isolate")),
      b("crash", "crash", "Crash", "Crash (kill -9)", act("crash"), procOff),
      b("restart", "restart", "Restart", "Restart", act("restart"), procOff),
      b("pause", "pause", "Pause", "Pause (SIGSTOP)", act("pause"), procOff),
      b("resume", "start", "Resume", "Resume (SIGCONT)", act("resume"), procOff),
      b("timeout", "clock", "Time out", "Lab: let the clock run until it times out:",
        () => api(`/api/lab/timeout/${encodeURIComponent(n.id)}`, null, {out: "#lab-msg"}), {hidden: true}),
      b("promote", "promote", "Promote", "Promote to voter:", () => promoteNode(n.id)),
      b("remove", "remove", "Remove node", "Remove from the cluster:", () => removeNode(n.id))),
    proc.available ? null : el("p", {class: "why", text: proc.why}),
    el("details", {class: "kv", open: true}, el("summary", {}, "KV store ", el("span", {class: "kv-count"})),
      el("table", {"data-kv-node": n.id}, el("tbody"))),
    el("div", {class: "kv-full", hidden: true, "aria-live": "polite"}));
}

export function renderCards() {
  const t = viewTime();
  for (const n of S.nodes) {
    const c = document.querySelector(`[data-node="${n.id}"]`);
    if (c) renderCard(c, n, t);
  }
}

function renderCard(c, n, t) {
  const view = nodeView(n.id, t);
  const s = view ? view.state : null;
  const cond = nodeCondition(n.id, view);
  const role = s ? s.state : "unknown";
  const member = cond.key === "removed" ? "removed" : memberRole(n, view, t);
  const d = c.dataset;
  const set = (k, v) => { if (d[k] !== String(v)) d[k] = v; };
  set("role", cond.grey ? "down" : role);
  set("member", member);
  set("term", s ? s.term : "");
  set("reach", cond.key);
  set("partitioned", cond.cut ? "true" : "false");
  set("tickMs", s ? s.tickMs : "");
  setAttr(c, "class", `card${cond.grey ? " grey" : ""}${role === "leader" && !cond.grey ? " leader" : ""}`);
  c.style.setProperty("--term", termColour(s && s.term));
  const roleText = member === "learner" ? `learner (${role})` : role;
  setText(c.querySelector(".role-word"), !s ? "no status yet"
    : cond.grey ? `${cond.key} · last known: ${roleText}, term ${s.term}` : `${roleText} · term ${s.term}`);
  renderFacts(c.querySelector(".facts"), s);
  renderReach(c.querySelector(".reach"), n, view, cond);
  renderVotes(c.querySelector(".votes"), s, role, member, n, t);
  renderButtons(c, n, member);
  renderKv(c, n.id, view && view.kv);
}

function renderFacts(facts, s) {
  if (!s) { setText(facts, ""); return; }
  const tick = s.tickMs || 20;
  setText(facts, `believes leader: ${s.leaderId ? nameOf(s.leaderId) : "none"} · voted for: ` +
    `${s.votedFor ? nameOf(s.votedFor) : "nobody"} · log ${s.logLength} · commit ${s.commitIndex} · applied ` +
    `${s.lastApplied} · on disk ${s.stableIndex}${s.snapshotIndex ? ` · snapshot ${s.snapshotIndex}` : ""} · tick ` +
    `${tick} ms · election timeout ${s.electionTimeout * tick} ms`);
  setAttr(facts, "data-election-timeout-ms", s.electionTimeout * tick);
}

function renderReach(reach, n, view, cond) {
  const r = S.reach[n.id] || {};
  const rt = view && (view.statusRt || view.rt);
  const heard = !rt ? "never" : isLive() ? `${fmtAge(Math.max(0, now() - rt))} ago` : `at ${fmtTime(rt)}`;
  setText(reach, (cond.text ? cond.text + " · " : "") + `last heard ${heard}` +
    (r.process && r.process.restarts ? ` · restarts ${r.process.restarts}` : ""));
  setAttr(reach, "class", "reach " + (cond.grey ? "bad" : cond.cut ? "warn" : ""));
}

function renderVotes(votes, s, role, member, n, t) {
  if (s && (role === "candidate" || role === "pre-candidate")) {
    const v = Object.entries(s.votes || {});
    const what = role === "pre-candidate" ? `pre-votes for term ${s.term + 1} (its own term stays ${s.term})` : "votes";
    setText(votes, `${what}: ` + (v.length ? v.map(([k, g]) => `${nameOf(k)} ${g ? "✓ granted" : "✗ refused"}`)
      .join(", ") : "waiting…"));
  } else setText(votes, member === "learner" ? `learner, does not vote · ${catchUpWords(catchUp(n, t))}` : "");
}

function renderButtons(c, n, member) {
  const proc = (S.reach[n.id] || {}).process;
  const q = (op) => c.querySelector(`[data-op="${op}"]`);
  const off = (op, v) => { if (q(op).disabled !== v) q(op).disabled = v; };
  // Force election and Isolate ask the node itself: a crashed or paused node cannot answer (a paused
  // one would carry the request out once resumed, long after the page said it failed).
  const unanswering = Boolean(S.supervisor && proc && (!proc.running || proc.paused));
  if (S.supervisor && proc) {
    off("crash", !proc.running);
    off("pause", !proc.running || proc.paused);
    off("resume", !proc.paused);
  }
  const lab = S.lab.active && isLive();
  if (q("timeout").hidden === lab) q("timeout").hidden = !lab;
  off("timeout", member !== "voter");
  off("promote", member !== "learner");
  off("force-election", member === "learner" || unanswering);  // a learner never campaigns
  off("isolate", unanswering);
  off("remove", member === "removed" || members().length < 2);
  // A past view shows the node as it was; its buttons would act on it as it is now: none while looking back.
  if (member === "removed" || !isLive()) for (const b of c.querySelectorAll(".buttons button")) b.disabled = true;
}

function renderKv(c, node, kv) {
  // KV contents as this node has applied them: values too long for a status event come as the
  // start of their JSON text and their size, and the whole value is read from the node on demand.
  const whole = Object.entries((kv && kv.items) || {}), truncated = Object.entries((kv && kv.truncated) || {});
  const shown = whole.length + truncated.length;
  setText(c.querySelector(".kv-count"),
    kv ? `(${kv.count} key${kv.count === 1 ? "" : "s"}${kv.more ? `, ${kv.newest ? `the ${shown} written last`
      : `first ${shown}`} shown` : ""})` : "");
  const tbody = c.querySelector("tbody");
  const sig = kv ? JSON.stringify([whole, truncated]) : "";
  if (tbody.dataset.sig === sig) return;  // rebuilt only when the contents change: rows stay put for reading
  // Under a load the contents change at every status: rebuilt at most once a KV_REDRAW_GAP_MS (the
  // cards redraw every second anyway, so the newest contents always show).
  if (isLive() && performance.now() - (tbody.builtAt || -Infinity) < KV_REDRAW_GAP_MS) return;
  tbody.builtAt = performance.now();
  tbody.dataset.sig = sig;
  const cells = [...whole.map(([k, v]) => [k, el("td", {text: short(v)})]),
    ...truncated.map(([k, tr]) => [k, truncatedCell(node, k, tr)])];
  const rows = cells.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, td]) => el("tr", {"data-key": k}, el("th", {scope: "row", text: k}), td));
  tbody.replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", {colspan: 2, class: "empty", text: kv ? "empty" : "—"}))]));
}

function truncatedCell(node, key, t) {
  return el("td", {class: "truncated"}, `${short(t.head)} `,
    el("button", {type: "button", class: "kv-more", "aria-label": `Show all ${fmtBytes(t.bytes)} of ${key} as ${node} has it`,
      onclick: () => showWholeValue(node, key)}, `${fmtBytes(t.bytes)}: show all`));
}

async function showWholeValue(node, key) {
  // A stale read answers from this node's own copy: the value its card stands for.
  const box = document.querySelector(`[data-node="${node}"] .kv-full`);
  box.hidden = false;
  const status = el("p", {text: `reading ${key} from ${node}…`});
  box.replaceChildren(status);
  const r = await api("/api/kv", {op: "get", key, node, stale: true}, {out: status});
  const close = el("button", {type: "button", class: "kv-close", "aria-label": `Close the value of ${key}`,
    onclick: () => { box.hidden = true; box.replaceChildren(); }}, icon("cross"));
  if (!r || r.status !== 200) {
    const why = r ? `${r.status} ${(r.body && r.body.error) || ""}` : status.textContent;
    box.replaceChildren(el("p", {class: "bad"}, `could not read ${key} from ${node}: ${why} `, close));
    return;
  }
  const v = r.body.value;
  box.replaceChildren(el("p", {}, el("b", {text: key}), ` on ${node}, revision ${r.body.mod_revision} `, close),
    el("pre", {text: typeof v === "string" ? v : JSON.stringify(v)}));
}
