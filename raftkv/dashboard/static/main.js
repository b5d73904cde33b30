// raftkv dashboard: draws what the dashboard server pushes over /ws. No framework, no build step:
// ES modules, each with one job.
//
//   state.js       what the page knows, and the cluster as it was at a time T (live or past)
//   connection.js  the WebSocket, and what each event does to the state
//   render.js      redraws the parts marked dirty, together, at most every 100 ms
//   ring.js, messages.js, glyphs.js   the nodes on a ring, the messages travelling, the legend
//   cards.js, logs.js                 a card per node, the true log table
//   lab.js, tour.js, replay.js        hold-and-step, the guided tours, live or past and replay
//   coordination.js                   leases counting down, lock holders and tokens, the watch feed
//   feed.js, timeline.js, charts.js, header.js   the feed, the timeline, the measurements, the pills
//   actions.js, build.js, icons.js, dom.js       the buttons, the node-dependent parts, SVG icons, DOM helpers
//   session.js, gates.js              logging in, and the controls greyed with the reason why
//   traces.js, waterfall.js           the "trace this write" switch, and a traced write's waterfall

import {S, isLive} from "./state.js";
import {hydrateIcons} from "./icons.js";
import {afterEachRender, invalidate, register} from "./render.js";
import {startSession} from "./session.js";
import {renderGates, wireGates} from "./gates.js";
import {renderRing} from "./ring.js";
import {renderMessages} from "./messages.js";
import {renderLegendLights} from "./glyphs.js";
import {renderCards} from "./cards.js";
import {renderLogs} from "./logs.js";
import {renderLab, wireLab} from "./lab.js";
import {renderTour, wireTour} from "./tour.js";
import {renderMode, wireReplay} from "./replay.js";
import {renderFeed} from "./feed.js";
import {renderTimeline} from "./timeline.js";
import {renderCharts} from "./charts.js";
import {renderHeader} from "./header.js";
import {wireControls} from "./actions.js";
import {renderCoordination, wireCoordination} from "./coordination.js";
import {renderTracing, wireTraces} from "./traces.js";

const AGES_EVERY_MS = 1000;  // "read 1.2 s ago" and the like move on even when nothing arrives

register("ring", renderRing);
register("messages", renderMessages);
register("legend", renderLegendLights);
register("cards", renderCards);
register("logs", renderLogs);
register("lab", renderLab);
register("tour", renderTour);
register("mode", renderMode);
register("feed", renderFeed);
register("timeline", () => renderTimeline(!isLive()));  // a past view moves its cursor at once
register("charts", renderCharts);
register("header", renderHeader);
register("coordination", renderCoordination);
register("tracing", renderTracing);
afterEachRender(renderGates);

hydrateIcons();
wireControls();
wireLab();
wireTour();
wireReplay();
wireCoordination();
wireGates();
wireTraces();
startSession();  // the live stream once the server says this person may see it (session.js)
setInterval(() => { if (S.nodes.length) invalidate("cards", "logs", "mode"); }, AGES_EVERY_MS);
