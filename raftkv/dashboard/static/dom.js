// Small DOM helpers shared by every part of the page, and the term palette.
//
// The page re-renders a few times a second; `setText`, `setAttr` and `setClass` touch the DOM
// only when the value changed, so an idle page does no layout or paint work for nothing.

// Term colours: pale tints (Paul Tol's "pale" and "light" schemes), all lighter than every
// message colour (saturated, style.css .m-*), so a term is never mistaken for a message. The term
// number is always written next to its colour.
export const TERM_PALETTE = ["#BBCCEE", "#EEEEBB", "#CCDDAA", "#FFCCCC", "#CCEEFF", "#E0D0F0"];
export const UNKNOWN_TERM = "#E4E4E4";

export const termColour = (t) =>
  (t == null ? UNKNOWN_TERM : TERM_PALETTE[((t % TERM_PALETTE.length) + TERM_PALETTE.length) % TERM_PALETTE.length]);

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

export function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids) if (k != null) e.append(k);
  return e;
}

const SVGNS = "http://www.w3.org/2000/svg";
export function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v != null) e.setAttribute(k, v);
  return e;
}

export function setText(node, text) {
  if (node && node.textContent !== text) node.textContent = text;
}

export function setAttr(node, name, value) {
  if (!node) return;
  const v = value == null ? null : String(value);
  if (node.getAttribute(name) !== v) {
    if (v == null) node.removeAttribute(name); else node.setAttribute(name, v);
  }
}

export function setClass(node, cls) {
  if (node && node.getAttribute("class") !== cls) node.setAttribute("class", cls);
}

export function setHidden(node, hidden) {
  if (node && node.hidden !== hidden) node.hidden = hidden;
}

export const short = (v, limit = 40) => {
  const s = typeof v === "string" ? v : JSON.stringify(v);
  return s.length > limit ? s.slice(0, limit - 1) + "…" : s;
};
export const fmtTime = (t) =>
  new Date(t * 1000).toLocaleTimeString([], {hour12: false}) + "." + String(Math.floor((t % 1) * 10));
export const fmtBytes = (n) =>
  (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} bytes`);
// Ages in whole seconds: a text that changed at every redraw would cost a layout each time.
export const fmtAge = (seconds) => (seconds < 1 ? "under 1 s" : seconds < 60 ? `${Math.floor(seconds)} s`
  : `${Math.round(seconds / 60)} min`);
