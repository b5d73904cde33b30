// Who is at this browser, and what the page may show them. Before anything else the page asks
// the server (GET /api/session):
//
//   the nodes have auth off      the live page, as always (no login)
//   auth on, nobody logged in    only the login form: nothing from the cluster
//   logged in, may read every    the live page; the controls the person may not use are greyed
//     key                        (gates.js), the header names them, Log out ends the session
//   logged in, may not           the controls and the write form, greyed where they may not; the
//                                live view (ring, logs, feed...) is hidden, and the page says why
//
// The server keeps the person's token (never the password) and acts for them with it; the cookie
// it sets names the session only, and is out of this script's reach (HttpOnly). The session is
// asked for again every POLL_MS, so a permission granted or revoked shows without a reload.

import {S} from "./state.js";
import {$, setText} from "./dom.js";
import {invalidateAll} from "./render.js";
import {connect, onStreamClosed, start} from "./connection.js";

const POLL_MS = 5000;
const RETRY_MS = 1000;

// What the person may do: `may` holds, for each kind of control, why not (null or missing: they may).
export const access = {authOn: false, user: null, may: {}, view: {shown: true, why: null}};
let mode = null;  // "live", "hidden" or "login"
let polling = null;
let drawnFor = null;  // what the page was last redrawn for

export async function startSession() {
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", logout);
  onStreamClosed(async () => {
    // The server closed or refused the stream: go on only if this person may still see it.
    const s = await readSession();
    if (!s || s.view.shown) return true;  // the server is away (it comes back), or nothing changed
    apply(s);
    return false;
  });
  apply(await readSessionUntilAnswered());
}

async function readSession() {
  try {
    const r = await fetch("/api/session", {cache: "no-store"});
    return r.ok ? await r.json() : null;
  } catch {
    return null;
  }
}

async function readSessionUntilAnswered() {
  for (;;) {
    const s = await readSession();
    if (s) return s;
    setText($("#conn"), "the dashboard server does not answer: retrying…");
    await new Promise((done) => setTimeout(done, RETRY_MS));
  }
}

function apply(s) {
  access.authOn = s.auth.enabled !== false;
  access.user = s.user;
  access.may = s.may || {};
  access.view = s.view;
  const next = !access.authOn || s.view.shown ? "live" : s.user ? "hidden" : "login";
  document.body.dataset.view = next;
  renderAccess(s);
  if (next !== mode) {
    const was = mode;
    mode = next;
    if (was === "live" || (was === "hidden" && next === "login")) { location.reload(); return; }
    if (next === "live") connect();
    else if (next === "hidden") start({...s, now: Date.now() / 1000});
    if (next === "login") setTimeout(() => $("#login-name").focus(), 0);
  } else if (next === "hidden") {  // no stream: reachability (and which nodes serve the lab) comes from here
    S.reach = s.reach || S.reach;
    if (s.lab) S.lab = s.lab;
  }
  if (access.authOn && s.user && !polling) polling = setInterval(poll, POLL_MS);
  const sig = JSON.stringify([next, s.user, s.may, next === "hidden" ? s.reach : null]);
  if (sig !== drawnFor) {  // a poll that changed nothing redraws nothing
    drawnFor = sig;
    invalidateAll();
  }
}

async function poll() {
  const s = await readSession();
  if (s) apply(s);
}

function renderAccess(s) {
  $("#login-panel").hidden = !!s.user || !access.authOn;
  const who = $("#who"), out = $("#logout");
  who.hidden = out.hidden = !s.user;
  if (s.user) setText(who, `logged in as ${s.user.name}`);
  const view = $("#view-note");
  setText(view, s.view.shown ? "" : s.user ? `The live view is hidden: ${s.view.why}. The controls below still ` +
    "work, as far as your permissions go." : s.auth.enabled === null ? `Nothing to show: ${s.view.why}.` : "");
  view.hidden = !view.textContent;
  if (!s.view.shown && !s.user) setText($("#conn"), "not connected: log in");
  else if (!s.view.shown) setText($("#conn"), "live view hidden");
  const note = $("#access-note"), may = access.may;
  const lines = !s.user ? [] : may.readOnly
    ? [`Read-only: your user ${s.user.name} may not write any key and has no admin permission, so the controls ` +
       "are greyed" + (s.view.shown ? "; everything shown is live." : "; reads from the form work where it may read.")]
    : [may.writeScope ? `Writes: ${may.writeScope}.` : may.write ? `Writes: ${may.write}.` : "",
       may.admin ? `The lab, partitions, elections, membership and the tours: this ${may.admin}.` : ""].filter(Boolean);
  note.hidden = !lines.length;
  setText(note, lines.join(" "));
}

async function login(e) {
  e.preventDefault();
  const msg = $("#login-msg");
  msg.className = "msg";
  setText(msg, "checking with the nodes…");
  try {
    const r = await fetch("/api/login", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({name: $("#login-name").value, password: $("#login-password").value})});
    const data = await r.json().catch(() => ({}));
    $("#login-password").value = "";
    if (!r.ok) {
      msg.className = "msg bad";
      setText(msg, data.error || `refused (${r.status})`);
      return;
    }
    setText(msg, "");
    apply(await readSessionUntilAnswered());
  } catch (err) {
    msg.className = "msg bad";
    setText(msg, `the dashboard server did not answer (${err.message})`);
  }
}

async function logout() {
  await fetch("/api/logout", {method: "POST"}).catch(() => null);
  location.reload();
}
