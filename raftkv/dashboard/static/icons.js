// Icons as inline SVG: the page must read the same on a machine with no emoji font (an emoji
// renders there as an empty box). Each icon is one path on a 16x16 grid, drawn in the text colour.
// In the HTML, <span data-icon="name"></span> is replaced by the icon (hydrateIcons).

import {svg} from "./dom.js";

const PATHS = {
  vote: "M2 7h12v7H2zM5 2h6v5H5zM6 4h4",  // a ballot going into a box
  cut: "M4 3a2 2 0 1 0 0 4 2 2 0 0 0 0-4zM4 9a2 2 0 1 0 0 4 2 2 0 0 0 0-4zM6 6l8 6M6 10l8-6",
  heal: "M6 2h4v4h4v4h-4v4H6v-4H2V6h4z",
  crash: "M8 1l1.5 4.5L14 4l-2.5 4 3.5 2.5-4.5.5L11 15l-3-3.5L5 15l.5-4L1 10.5 4.5 8 2 4l4.5 1.5z",
  restart: "M13 8a5 5 0 1 1-1.5-3.6M13 2v3.5H9.5",
  pause: "M4 2h3v12H4zM9 2h3v12H9z",
  start: "M4 2l10 6-10 6z",
  stop: "M3 3h10v10H3z",
  add: "M8 2v12M2 8h12",
  promote: "M8 14V3M3 8l5-5 5 5",
  remove: "M2 8h12M5 4l-3 4 3 4",
  load: "M2 14h12M3 11l3-4 3 2 5-6M11 3h3v3",
  write: "M3 13l1-4 7-7 3 3-7 7zM9 4l3 3",
  slow: "M8 2a6 6 0 1 0 0 12A6 6 0 0 0 8 2zM8 5v3l2 2",
  clock: "M8 2a6 6 0 1 0 0 12A6 6 0 0 0 8 2zM8 4v4h3",
  lab: "M6 2h4M7 2v4l-4 7a1 1 0 0 0 1 1.5h8a1 1 0 0 0 1-1.5L9 6V2M5 10h6",
  drop: "M3 3l10 10M13 3L3 13",
  deliver: "M2 8h10M9 4l4 4-4 4",
  tour: "M3 14V2M3 2h9l-2 3 2 3H3",
  export: "M8 2v8M4 7l4 4 4-4M2 14h12",
  import: "M8 11V3M4 6l4-4 4 4M2 14h12",
  live: "M8 5a3 3 0 1 0 0 6 3 3 0 0 0 0-6z",
  back: "M10 3L5 8l5 5",
  next: "M6 3l5 5-5 5",
  play: "M4 2l10 6-10 6z",
  step: "M3 2l7 6-7 6zM11 2h2v12h-2z",
  crown: "M2 12L1 4l4 3 3-5 3 5 4-3-1 8z",
  lossy: "M1 8h3l2-4 2 8 2-4h5",
  snap: "M3 2h7l3 3v9H3zM10 2v3h3",
  check: "M2 8l4 4 8-8",
  cross: "M3 3l10 10M13 3L3 13",
  warn: "M8 1l7 13H1zM8 6v4M8 11.5v1",
};

const FILLED = new Set(["crash", "pause", "start", "stop", "play", "step", "live", "crown", "heal"]);

export function icon(name, label = null) {
  const s = svg("svg", {viewBox: "0 0 16 16", class: `icon icon-${name}`, "aria-hidden": label ? null : "true",
    role: label ? "img" : null, "aria-label": label});
  s.append(svg("path", {d: PATHS[name] || PATHS.warn, class: FILLED.has(name) ? "filled" : "stroked"}));
  return s;
}

export function hydrateIcons(root = document) {
  for (const span of root.querySelectorAll("span[data-icon]")) span.replaceWith(icon(span.dataset.icon));
}

export const hasIcon = (name) => name in PATHS;
