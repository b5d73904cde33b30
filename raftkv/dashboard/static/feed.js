// The event feed, in plain words, newest first, and the few latest lines under the ring.
//
// Quiet by design: a line that says the same as one shown a moment ago is not repeated, it is
// folded into that line with a count ("×12") and the time of its latest repeat. An isolated node
// asks for pre-votes every few tenths of a second; that is one line that counts, not a flood.
// What a person did (a crash, a restart) folds only into the line just before it: each is a step
// of a story, and folding it into a later one would move it past what happened in between.
// The feed is drawn from the recorded history up to the view's time, so a past view has its feed.

import {S, isLive, viewTime} from "./state.js";
import {$, el, fmtTime, setText, termColour} from "./dom.js";
import {icon, hasIcon} from "./icons.js";
import {openButton, traceHere} from "./traces.js";

const FEED_MAX = 120;
const MINI_MAX = 6;
const FOLD_WINDOW_S = 60;  // a repeat within this long of the line's latest is folded into it

export function isFeedEvent(ev) {
  return (ev.type === "trace" && ev.kind !== "commit") || ev.type === "action" || ev.type === "reach" ||
    ev.type === "nodes" || (ev.type === "safety" && ev.broken) ||
    (ev.type === "tour" && ev.state === "waiting");
}

export const noteFeedEvent = (ev) => ev.recorded !== false && isFeedEvent(ev);

function feedText(ev) {
  if (ev.type === "safety") {
    return "SAFETY CHECK BROKEN: " + ev.checks.filter((c) => !c.ok).map((c) => `${c.name}: ${c.violation}`).join("; ");
  }
  if (ev.type === "tour") return `tour, ${ev.title}: ${ev.caption}`;
  return byName(ev.text || `${ev.via || ev.node} ${ev.kind || ev.type}`);
}

// Members by name, not by id: the server names them too, but an event can arrive before the
// server has learnt a new member's name (its id is in the event, its name in a later status).
function byName(text) {
  for (const n of S.nodes) if (n.raftId && n.raftId !== n.id) text = text.split(n.raftId).join(n.id);
  return text;
}

// The feed's lines at time t, newest first: [{ev, text, count, firstRt}].
function linesAt(t, max) {
  const lines = [], byText = new Map();
  for (let i = S.history.length - 1; i >= 0 && lines.length < max; i--) {
    const ev = S.history[i];
    if (ev.rt > t || !isFeedEvent(ev)) continue;
    const text = feedText(ev);
    const line = byText.get(text);
    const foldable = line && (ev.type !== "action" || line === lines[lines.length - 1]);
    if (foldable && line.firstRt - ev.rt < FOLD_WINDOW_S) {
      line.count++;
      line.firstRt = ev.rt;
      continue;
    }
    const fresh = {ev, text, count: 1, firstRt: ev.rt};
    byText.set(text, fresh);
    lines.push(fresh);
  }
  return lines;
}

function lineItem(line) {
  const ev = line.ev;
  const cls = `f-${ev.type}${ev.type === "safety" ? " bad" : ""}`;
  const li = el("li", {class: cls, style: ev.term != null ? `--c:${termColour(ev.term)}` : null},
    ev.icon && hasIcon(ev.icon) ? icon(ev.icon) : null, el("time", {text: fmtTime(ev.rt)}), " ", line.text);
  if (line.count > 1) {
    li.append(" ", el("span", {class: "folded", title: `${line.count} times since ${fmtTime(line.firstRt)}`,
      text: `×${line.count}`}));
  }
  if (traceHere(ev.traceId)) li.append(" ", openButton(ev.traceId));  // only a trace the dashboard holds
  return li;
}

function renderList(list, lines) {
  const sig = lines.map((l) => `${l.ev.seq}:${l.count}:${traceHere(l.ev.traceId) ? "t" : ""}`).join(",");
  if (list.dataset.sig === sig) return;
  list.dataset.sig = sig;
  list.replaceChildren(...lines.map(lineItem));
}

export function renderFeed() {
  // Live, every event so far: the page's estimate of the server's clock can trail it by the time the
  // hello took, and an event stamped "later than now" would wait for the next one to be shown.
  const lines = linesAt(isLive() ? Infinity : viewTime(), FEED_MAX);
  renderList($("#feed"), lines);
  renderList($("#mini-feed"), lines.filter((l) => l.ev.type !== "tour").slice(0, MINI_MAX));
  setText($("#feed-count"), lines.length ? `(${lines.length} lines, repeats folded)` : "");
}
