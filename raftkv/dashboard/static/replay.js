// Live or past: the header says which, always. The view can be paused, scrubbed, played back (with
// the recorded messages travelling again) or stepped event by event, at a chosen speed, over the
// recorded history or over a trace file exported earlier and loaded back into the page.
//
// Messages are in the history as the server recorded them: every one while few flow, and under load
// a sample (at most one per link and type every few tenths of a second); the page says which.

import {S, isLive, now, viewTime} from "./state.js";
import {$, fmtAge, fmtTime, setAttr, setClass, setText} from "./dom.js";
import {invalidateAll} from "./render.js";
import {onReplayedMessage} from "./messages.js";
import {connect, loadTrace} from "./connection.js";

const PLAY_STEP_MS = 100;
const STEPPED = new Set(["trace", "msg", "action", "tour", "nodes", "reach", "safety", "lab", "removed"]);
const replay = {timer: null, speed: 1};

// The view moved (or stopped moving): the header and buttons say so at once, the rest at the next redraw.
function moved() {
  renderMode();
  invalidateAll();
}

const span = () => {
  const from = S.file ? S.file.from : S.history.length ? S.history[0].rt : now();
  return {from, to: S.file ? S.file.to : now()};
};

export function showPast(t) {
  stopPlaying();
  const {from, to} = span();
  S.viewAt = Math.max(from, Math.min(to, t));
  moved();
}

export function goLive() {
  stopPlaying();
  S.tour.viewing = null;
  if (S.file) { S.file = null; S.viewAt = null; connect(); }  // a new hello brings the live history back
  S.viewAt = null;
  moved();
}

function play() {
  if (replay.timer) { stopPlaying(); moved(); return; }
  if (S.viewAt == null) showPast(span().from);
  replay.timer = setInterval(() => advance(PLAY_STEP_MS / 1000 * replay.speed), PLAY_STEP_MS);
  moved();
}

function stopPlaying() {
  clearInterval(replay.timer);
  replay.timer = null;
}

// Move the past view forward by `dt` seconds, drawing the messages recorded on the way.
function advance(dt) {
  const {to} = span();
  const from = S.viewAt, until = Math.min(to, from + dt);
  for (const ev of eventsBetween(from, until)) if (ev.type === "msg") onReplayedMessage(ev, replay.speed);
  S.viewAt = until;
  if (until >= to) {
    if (S.file) stopPlaying(); else goLive();
  }
  moved();
}

function step() {
  if (S.viewAt == null) showPast(now());
  const ev = S.history.find((e) => e.rt > S.viewAt && STEPPED.has(e.type) && !(e.type === "trace" && e.kind === "commit"));
  if (!ev) return;
  S.viewAt = ev.rt;
  if (ev.type === "msg") onReplayedMessage(ev, 1);
  moved();
}

// How many recorded events happened at or before t (the history is in time order).
function eventsUpTo(t) {
  let lo = 0, hi = S.history.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (S.history[mid].rt <= t) lo = mid + 1; else hi = mid;
  }
  return lo;
}

function eventsBetween(from, to) {
  const out = [];
  for (let i = S.history.length - 1; i >= 0 && S.history[i].rt > from; i--) {
    if (S.history[i].rt <= to) out.push(S.history[i]);
  }
  return out.reverse();
}

async function loadFile(file) {
  const msg = $("#replay-msg");
  let header = null;
  const events = [];
  for (const line of (await file.text()).split("\n")) {
    if (!line.trim()) continue;
    try {
      const ev = JSON.parse(line);
      if (ev.type === "export") header = ev; else if (ev && ev.type && typeof ev.rt === "number") events.push(ev);
    } catch { /* a line that is not JSON is skipped; the count below says how many were read */ }
  }
  if (!events.length) { setText(msg, `${file.name}: no recorded events in it`); return; }
  stopPlaying();
  loadTrace(header, events);
  S.file = {name: file.name, from: events[0].rt, to: events[events.length - 1].rt};
  setText(msg, `${file.name}: ${events.length} events, ${fmtTime(S.file.from)} to ${fmtTime(S.file.to)}`);
  showPast(S.file.from);
}

export function wireReplay() {
  $("#pause").addEventListener("click", () => (isLive() ? showPast(now()) : goLive()));
  $("#live").addEventListener("click", goLive);
  $("#play").addEventListener("click", play);
  $("#step").addEventListener("click", step);
  $("#speed").addEventListener("change", (e) => { replay.speed = Number(e.target.value); });
  $("#trace-file").addEventListener("change", (e) => { if (e.target.files[0]) loadFile(e.target.files[0]); });
  $("#scrub").addEventListener("input", (e) => {
    const {from, to} = span();
    showPast(from + ((to - from) * Number(e.target.value)) / 1000);
  });
  document.addEventListener("keydown", (e) => {
    if (e.target.closest("input, select, textarea")) return;
    if (e.key === "p") $("#pause").click();
  });
}

export function renderMode() {
  const live = isLive();
  const t = viewTime();
  setAttr(document.body, "data-mode", S.file ? "file" : live ? "live" : "past");
  const pill = $("#mode-pill");
  const playing = replay.timer ? ` · replaying ×${replay.speed}` : "";
  setText(pill, S.file ? `PAST: trace file ${S.file.name} · ${fmtTime(t)}${playing}`
    : live ? "LIVE" : `PAST: ${fmtTime(t)} (${fmtAge(Math.max(0, now() - t))} ago)${playing}`);
  setClass(pill, `pill mode ${S.file ? "file" : live ? "live" : "past"}`);
  setAttr($("#pause"), "aria-pressed", !live);
  setText($("#pause .label"), live ? "Pause view" : "Back to live");
  setAttr($("#play"), "aria-pressed", !!replay.timer);
  setText($("#play .label"), replay.timer ? "Stop replay" : "Play");
  setText($("#view-at"), live ? "live" : `viewing ${fmtTime(t)} · event ${eventsUpTo(t)} of ${S.history.length}` +
    `${S.file ? "" : " · events keep recording"}`);
  const {from, to} = span();
  if (live) $("#scrub").value = 1000;
  else $("#scrub").value = String(Math.round(((t - from) / Math.max(1e-3, to - from)) * 1000));
  const s = S.sampling;
  setText($("#sampling"), !s.skipped ? "Messages: every one is in the history."
    : `Messages in the history are sampled: ${s.kept} kept, ${s.skipped} left out (at most one per ` +
      `${Math.round(s.everyS * 1000)} ms for each link and type; heartbeats one every ` +
      `${s.heartbeatEveryS || s.everyS} s).`);
}
