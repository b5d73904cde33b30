// The coordination panel: the cluster's leases with their TTL counting down and the keys they hold,
// lock (and election) holders with their fencing tokens, and the dashboard's live watch feed.
//
// The server (coordination.py) reads leases and locks from the leader and sends a `coordination`
// event when the picture changed (a lease, key or holder came or went, a keep-alive); between two
// events the page counts each lease down from its `remaining` at the event's time, by the clock,
// as the leader does. `watch` events carry the watched revisions in order. Both are kept here in
// time order, so a past view (Back in a tour, scrubbing, a trace file) draws the panel as it was.

import {S, at, isLive, viewTime} from "./state.js";
import {$, el, fmtTime, setAttr, setText, svg} from "./dom.js";
import {api} from "./actions.js";
import {invalidate} from "./render.js";

const PICTURES_KEPT = 2000;
const WATCH_EVENTS_KEPT = 2000;
const FEED_LINES = 60;
const COUNTDOWN_MS = 250;
// A padlock on the 16x16 grid of icons.js, drawn in the text colour.
const PADLOCK = "M4 7h8v7H4zM6 7V5a2 2 0 0 1 4 0v2";

const pictures = [];  // coordination events, oldest first
const watches = [];   // watch events, oldest first
let keptFor = null;   // the history these belong to: a new hello or a loaded trace starts afresh

// A coordination or watch event arrived (live, or from the recorded past).
export function noteCoordination(ev) {
  if (keptFor !== S.history) {
    pictures.length = 0;
    watches.length = 0;
    keptFor = S.history;
  }
  const list = ev.type === "watch" ? watches : pictures;
  // Events come in seq order, each once; a page that reconnects gets a new hello repeating some it holds.
  if (list.length && ev.seq <= list[list.length - 1].seq) return;
  list.push(ev);
  if (list.length > (ev.type === "watch" ? WATCH_EVENTS_KEPT : PICTURES_KEPT)) list.shift();
  invalidate("coordination");
}

export function wireCoordination() {
  $("#watch-form").addEventListener("submit", (e) => {
    e.preventDefault();
    api("/api/coordination/watch", {prefix: $("#watch-prefix").value}, {out: "#watch-msg"});
  });
  // The countdown moves with nothing arriving: redrawn while a live lease ticks, never otherwise.
  setInterval(() => {
    const p = pictures[pictures.length - 1];
    if (isLive() && p && p.leader && p.leases.length) invalidate("coordination");
  }, COUNTDOWN_MS);
}

// Seconds left of a lease at time t: counted down from the picture's time while a leader counts.
function left(lease, picture, t) {
  return picture.leader ? Math.max(0, lease.remaining - (t - picture.rt)) : lease.remaining;
}

export function renderCoordination() {
  const t = viewTime();
  const picture = at(pictures, t);
  renderLeases(picture, t);
  renderLocks(picture, t);
  renderWatch(t);
}

function renderLeases(picture, t) {
  const list = $("#leases");
  setText($("#leases-note"), !picture ? "(reading…)" : !picture.leader
    ? "(no leader: nobody counts them down until one is elected)" : `(by ${picture.leader}'s clock)`);
  const leases = picture ? picture.leases : [];
  const sig = picture ? String(picture.seq) : "";
  if (list.dataset.sig !== sig) {
    list.dataset.sig = sig;
    list.replaceChildren(...leases.map(leaseItem));
    if (!leases.length) list.append(el("li", {class: "empty", text: "no leases"}));
    if (picture && picture.more) list.append(el("li", {class: "empty", text: `and ${picture.more} more`}));
  }
  const byHex = new Map(leases.map((x) => [x.hex, x]));
  for (const row of document.querySelectorAll("#coordination [data-left-of]")) {
    const lease = byHex.get(row.dataset.leftOf);
    if (!lease) continue;
    const s = left(lease, picture, t);
    setText(row, s > 0 ? `${s.toFixed(1)} s left` : "expired: the leader revokes it");
    setAttr(row, "data-remaining", s.toFixed(1));
    const bar = row.parentElement.querySelector(".ttl-bar span");
    if (bar) setAttr(bar, "style", `width:${(100 * s / lease.ttl).toFixed(1)}%`);
  }
}

function leaseItem(lease) {
  const keys = lease.keys.map((k) => el("code", {text: k}));
  const more = lease.keyCount - lease.keys.length;
  return el("li", {"data-lease": lease.hex, title: `lease ${lease.id}, granted at revision ${lease.grantedRevision}`},
    el("b", {text: lease.hex}), ` TTL ${lease.ttl} s · `,
    el("span", {class: "left", "data-left-of": lease.hex}),
    el("div", {class: "ttl-bar", "aria-hidden": "true"}, el("span")),
    el("div", {class: "keys"}, keys.length ? "holds " : "holds no key", ...keys, more > 0 ? ` and ${more} more` : null));
}

function renderLocks(picture, t) {
  const list = $("#locks");
  const locks = picture ? picture.locks : [];
  const sig = picture ? String(picture.seq) : "";
  if (list.dataset.sig === sig) return;
  list.dataset.sig = sig;
  list.replaceChildren(...locks.map((lock) => lockItem(lock, picture, t)));
  if (!locks.length) list.append(el("li", {class: "empty", text: "no lock is held"}));
}

function lockItem(lock, picture, t) {
  const h = lock.holder;
  const padlock = svg("svg", {viewBox: "0 0 16 16", class: "icon", "aria-hidden": "true"});
  padlock.append(svg("path", {d: PADLOCK, class: "stroked"}));
  const holderLease = picture.leases.find((x) => x.hex === h.lease);
  const waiting = lock.waiting.map((w) => `${w.key} (${w.token})`).join(", ");
  return el("li", {"data-lock": lock.name, "data-token": h.token},
    padlock, el("b", {text: lock.name}), " held by ", el("code", {text: h.key}),
    ` = ${h.value} · fencing token `, el("b", {class: "token", text: String(h.token)}),
    holderLease ? el("span", {class: "why"}, " · its lease ",
      el("span", {"data-left-of": holderLease.hex, text: `${left(holderLease, picture, t).toFixed(1)} s left`})) : null,
    el("div", {class: "why", text: waiting ? `then, in order: ${waiting}${lock.moreWaiting ? ` and ${lock.moreWaiting} more`
      : ""}` : "nobody waiting"}));
}

function renderWatch(t) {
  // The lines of the watch running at t, newest first, back to where it started.
  const shown = [];
  let current = null;
  for (let i = watches.length - 1; i >= 0 && shown.length < FEED_LINES && !current; i--) {
    const ev = watches[i];
    if (ev.rt > t) continue;
    if (ev.started) current = ev;
    for (const line of watchLines(ev).reverse()) shown.push(line);
  }
  const list = $("#watch-feed");
  const sig = shown.map((l) => l.sig).join(",");
  if (list.dataset.sig !== sig) {
    list.dataset.sig = sig;
    list.replaceChildren(...shown.slice(0, FEED_LINES).map((l) => l.li()));
  }
  const latest = at(watches, t);
  const prefix = latest ? latest.prefix : null;
  setText($("#watch-state"), prefix == null ? "" : `watching ${prefix ? prefix : "every key"}` +
    (current && current.from ? ` from revision ${current.from}` : " from when it started") +
    ", one line per change, newest first");
}

// One watch event as feed lines, oldest first: each change of each revision, what was left out, a note.
function watchLines(ev) {
  const lines = [];
  const line = (sig, make) => lines.push({sig: `${ev.seq}.${sig}`, li: make});
  if (ev.started) {
    line("s", () => el("li", {class: "w-start"}, el("time", {text: fmtTime(ev.rt)}),
      ` the dashboard watches ${ev.prefix || "every key"}`));
  }
  if (ev.note) line("n", () => el("li", {class: "bad", text: ev.note}));
  if (ev.skipped) {
    line("k", () => el("li", {class: "w-skipped"}, el("time", {text: fmtTime(ev.rt)}),
      ` ${ev.skipped} earlier revisions not listed (too many to show one by one)`));
  }
  for (const rev of ev.revisions) {
    rev.events.forEach((change, k) => line(`${rev.revision}.${k}`, () => changeItem(ev, rev, change)));
    if (rev.more) line(`${rev.revision}.more`, () => el("li", {class: "why", text: `and ${rev.more} more changes`}));
  }
  return lines;
}

function changeItem(ev, rev, c) {
  const put = c.type === "put";
  return el("li", {class: `w-${c.type}`, "data-revision": rev.revision, "data-type": c.type, "data-key": c.key},
    el("time", {text: fmtTime(ev.rt)}), ` @${rev.revision} `, el("b", {text: put ? "PUT" : "DELETE"}), " ",
    el("code", {text: c.key}),
    c.value != null ? (put ? ` = ${c.value}` : ` (was ${c.value})`) : null,
    c.lease ? el("span", {class: "why", text: ` lease ${c.lease}`}) : null);
}
