// The viewer's page: a source browser and live panels, one EventSource for the whole tab.
// No build step: plain JS, plots by plotly.js served from the installed plotly package.
"use strict";

// mode: "live" (the stream), "paused" (the cursor stays where it is put) or "replay" (the
// archive played from the cursor at a speed). Every panel shows the time of the one cursor.
const state = { panels: [], sources: [], markers: [], source: null, window: 10, defaulted: false, mode: "live", cursor: null };
const NUMERIC = "application/x-float64-le";
const LOG_LINES = 1000;  // lines a log panel keeps
// Plots of a longer time scale than this (seconds) do not add every live sample (a day at
// 1 kHz would be 86 M points) but each block's minimum and maximum, and read their decimated
// history again every 1/100 of the scale (at most every REREAD_MIN_S).
const LIVE_SAMPLES_MAX_S = 60, REREAD_MIN_S = 5;
const LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];
// The camera wall and the values table follow every source of their kind, present and future.
const WALL_PATHS = ["thumbnail_*_data_source/*"];
const VALUE_PATHS = ["daq_*_data_source/*", "ntcp_*_data_source/*"];
// Every viewer's event markers: frames of one shared source, pushed on the tab's stream.
const MARKERS_PATH = "web_markers_data_source/markers.json";

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function query(paths, watched = []) {
  return [...paths.map((p) => "path=" + encodeURIComponent(p)),
    ...watched.map((p) => "watch=" + encodeURIComponent(p))].join("&");
}
function allPaths() { return [...new Set(state.panels.flatMap((p) => p.paths))]; }
function channelUrl(kind, source, channel) {
  return `/api/${kind}/${encodeURIComponent(source)}/${encodeURIComponent(channel)}`;
}
function iso(t) { return new Date(t * 1000).toISOString(); }

// --- time: live, pause, replay; one cursor ---------------------------------------

function setMode(mode) { state.mode = mode; document.body.dataset.mode = mode; }

function showCursor() {
  const out = document.getElementById("cursor"), slider = document.getElementById("slider");
  if (state.cursor == null) { out.textContent = "live"; out.dataset.t = ""; slider.value = slider.max; return; }
  out.textContent = iso(state.cursor);
  out.dataset.t = String(state.cursor);
  slider.value = String(state.cursor);
}

async function refreshRange() {
  const paths = allPaths();
  if (!paths.length) return;
  try {
    const r = await getJSON("/api/range?" + query(paths));
    if (r.start == null) return;
    const slider = document.getElementById("slider");
    slider.min = String(r.start);
    slider.max = String(Math.max(r.end, state.cursor ?? 0));
    slider.dataset.ready = "1";
    showCursor();
  } catch (err) { console.warn(err); }
}

function goLive() {
  setMode("live");
  state.cursor = null;
  showCursor();
  for (const p of state.panels) reload(p);
  connect();
}

function pause() {
  if (state.mode === "live") state.cursor = Date.now() / 1000;
  setMode("paused");
  connect();
  showCursor();
  refreshRange();
}

function play() {
  if (state.cursor == null) state.cursor = Date.now() / 1000 - state.window;
  setMode("replay");
  showCursor();
  for (const p of state.panels) reload(p);
  connect();
}

function scrub(t) {
  if (state.mode !== "paused") pause();
  state.cursor = t;
  showCursor();
  for (const p of state.panels) reload(p);
}

// One frame of a path at the cursor (the newest, live).
function frameUrl(path) {
  const [source, channel] = path.split(/\/(.*)/);
  const url = channelUrl("frame", source, channel);
  return state.cursor == null ? url : `${url}?at=${state.cursor}`;
}

// What a panel shows at the cursor (or now, live): read from the archive.
function reload(panel) {
  const end = state.cursor ?? Date.now() / 1000;
  if (panel.kind === "plot") loadHistory(panel, end);
  else if (panel.kind === "image") requestImage(panel, frameUrl(panel.paths[0]));
  else if (panel.kind === "wall") for (const [path, tile] of panel.tiles) requestImage(tile, frameUrl(path));
  else if (panel.kind === "values") for (const path of panel.rows.keys()) loadValue(panel, path);
  else if (panel.kind === "log") loadLog(panel, end);
  else if (panel.kind === "audio") loadLevel(panel, end);
  else if (panel.kind === "meta") loadMeta(panel);
}

// A path matches a wildcard pattern: * is any run of characters but "/".
function globMatch(pattern, path) {
  const re = pattern.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, "[^/]*");
  return new RegExp(`^${re}$`).test(path);
}
function wants(panel, path) { return panel.paths.some((p) => p === path || globMatch(p, path)); }

// --- source browser -------------------------------------------------------------

async function refreshSources() {
  let sources;
  try {
    sources = await getJSON("/api/sources");
    document.getElementById("broker-status").textContent = `${sources.length} sources`;
  } catch (err) {
    document.getElementById("broker-status").textContent = `error: ${err.message}`;
    return;
  }
  state.sources = sources;
  const tbody = document.querySelector("#sources tbody");
  tbody.replaceChildren(...sources.map(sourceRow));
  refreshTargets();
  refreshSite();
  if (!state.defaulted) openDefaultPanels(sources);
  for (const p of state.panels) if (p.kind === "wall" || p.kind === "values") addRows(p, sources);
  refreshRange();
}

function sourceRow(s) {
  const type = s.name.split("_")[0];
  const channels = el("td");
  for (const c of s.channels) {
    const rate = c.rate == null ? "" : ` ${c.rate.toFixed(1)} Hz`;
    channels.append(el("span", { class: "channel", "data-path": `${s.name}/${c.name}`,
      onclick: () => addPanel(s.name, c.name, c.content_type) },
      `${c.name} `, el("small", {}, `${c.content_type}${rate}`)));
  }
  const md = s.metadata == null ? "" :
    el("details", {}, el("summary", {}, "metadata"), el("pre", {}, JSON.stringify(s.metadata, null, 1)));
  return el("tr", { "data-source": s.name },
    el("td", {}, type), el("td", { class: "name", title: "show its metadata", onclick: () => addMeta(s.name) }, s.name),
    el("td", { class: s.online ? "online" : "offline" }, s.online ? "online" : "offline",
      s.access == null ? "" : el("small", { class: "access", title: "what the viewer's user may do: read, write, command" }, ` ${s.access}`)),
    channels, el("td", {}, md));
}

// Without a layout in the URL: a plot of the first DAQ, the camera wall, the values, an audio meter.
function openDefaultPanels(sources) {
  if (!sources.length) return;  // try again at the next refresh
  state.defaulted = true;
  const daq = sources.find((s) => s.name.startsWith("daq_") && s.channels.some((c) => c.content_type === NUMERIC));
  if (daq) addPlot(daq.name, daq.channels.filter((c) => c.content_type === NUMERIC).slice(0, 4).map((c) => c.name));
  if (sources.some((s) => s.name.startsWith("thumbnail_"))) addWall();
  if (sources.some((s) => VALUE_PATHS.some((p) => s.channels.some((c) => globMatch(p, `${s.name}/${c.name}`))))) addValues();
  const audio = sources.find((s) => s.channels.some((c) => c.content_type.startsWith("audio/L16")));
  if (audio) addAudio(audio.name, audio.channels.find((c) => c.content_type.startsWith("audio/L16")).name);
}

// --- the layout in the URL: #layout={"w": time scale, "p": [panel specs]} ------------

function saveLayout() {
  const layout = { w: state.window, p: state.panels.map((p) => p.spec) };
  history.replaceState(null, "", "#layout=" + encodeURIComponent(JSON.stringify(layout)));
}

function restoreLayout() {
  const m = location.hash.match(/^#layout=(.*)$/);
  if (!m) return false;
  let layout;
  try { layout = JSON.parse(decodeURIComponent(m[1])); } catch (err) { console.warn("bad layout in the URL", err); return false; }
  if (layout.w) { state.window = Number(layout.w); document.getElementById("timescale").value = String(layout.w); }
  for (const p of layout.p ?? []) {
    if (p.k === "plot") addPlot(p.s, p.c);
    else if (p.k === "image") addImage(p.s, p.c);
    else if (p.k === "log") addLog(p.s, p.c);
    else if (p.k === "audio") addAudio(p.s, p.c);
    else if (p.k === "meta") addMeta(p.s);
    else if (p.k === "wall") addWall();
    else if (p.k === "values") addValues();
  }
  state.defaulted = true;
  return true;
}

// --- panels ---------------------------------------------------------------------

function addPanel(source, channel, contentType) {
  if (contentType === NUMERIC) return addPlot(source, [channel]);
  if (contentType.startsWith("image/")) return addImage(source, channel);
  if (contentType.startsWith("audio/L16")) return addAudio(source, channel);
  return addLog(source, channel);
}

function panelBox(title, kind) {
  const box = el("div", { class: `panel ${kind}` });
  const close = el("button", { onclick: () => removePanel(box) }, "×");
  box.append(el("h3", {}, el("span", {}, title), close));
  document.getElementById("panels").append(box);
  return box;
}

function removePanel(box) {
  state.panels = state.panels.filter((p) => p.box !== box);
  box.remove();
  saveLayout();
  connect();
}

function addPlot(source, channels) {
  const box = panelBox(`${source}: ${channels.join(", ")}`, "timeseries");
  const div = el("div", { class: "plot" });
  box.append(div);
  const series = Object.fromEntries(channels.map((c) => [c, { t: [], v: [], last: null }]));
  const panel = { kind: "plot", spec: { k: "plot", s: source, c: channels }, box, div, source, series,
                  paths: channels.map((c) => `${source}/${c}`), dirty: true };
  Plotly.newPlot(div, traces(panel), layout(), { responsive: true, displaylogo: false });
  attach(panel);
}

// A new panel joins the tab's stream and shows the cursor's time.
function attach(panel) {
  state.panels.push(panel);
  saveLayout();
  if (panel.kind !== "plot" || state.mode !== "live") reload(panel);  // (live plots: on "ready")
  connect();
}

function traces(panel) {
  return Object.entries(panel.series).map(([name, s]) => ({
    name, mode: "lines", type: "scatter", x: s.t.map((t) => new Date(t * 1000)), y: s.v,
  }));
}

function layout() {
  // Live: autoscale both axes. Paused or replaying: the time scale ends at the cursor.
  const end = state.cursor ?? Date.now() / 1000;
  const x = state.cursor == null ? { type: "date", autorange: true }
    : { type: "date", range: [new Date((end - state.window) * 1000), new Date(end * 1000)] };
  // Every viewer's markers within the time scale: a dashed line and its label.
  const shown = state.markers.filter((m) => m.time >= end - state.window && m.time <= end);
  const at = (m) => new Date(m.time * 1000);
  return { margin: { l: 50, r: 10, t: 16, b: 30 }, hovermode: "x unified",
           xaxis: x, yaxis: { autorange: true }, legend: { orientation: "h" },
           shapes: shown.map((m) => ({ type: "line", xref: "x", yref: "paper", x0: at(m), x1: at(m), y0: 0, y1: 1,
                                       line: { color: "#e76f51", width: 1, dash: "dash" } })),
           annotations: shown.map((m) => ({ x: at(m), xref: "x", y: 1, yref: "paper", yanchor: "bottom",
                                            text: m.label, showarrow: false, font: { size: 10, color: "#e76f51" } })) };
}

// --- event markers: on a shared source, so every viewer's plots show them ------------

// All markers (on connecting); the live stream then pushes each new one (addMarker).
async function refreshMarkers() {
  try {
    const markers = await getJSON("/api/markers");
    if (JSON.stringify(markers) !== JSON.stringify(state.markers)) { state.markers = markers; markPlots(); }
  } catch (err) { console.warn(err); }
}

async function dropMarker() {
  const input = document.getElementById("marker-label");
  const label = input.value.trim();
  if (!label) { input.focus(); return; }
  try {
    const r = await fetch("/api/markers", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ label, time: state.cursor ?? Date.now() / 1000 }) });
    const text = await r.text();
    if (!r.ok) throw new Error(JSON.parse(text).error || r.statusText);
    input.value = "";
    addMarker(text);  // (paused, this tab has no stream to bring it)
  } catch (err) { document.getElementById("broker-status").textContent = `marker: ${err.message}`; }
}

async function loadHistory(panel, end) {
  const token = panel.token = (panel.token ?? 0) + 1;
  panel.loadedAt = Date.now() / 1000;
  for (const [name, s] of Object.entries(panel.series)) {
    try {
      const r = await getJSON(`${channelUrl("channel", panel.source, name)}` +
        `?start=${end - state.window}&duration=${state.window}&max_points=2000`);
      if (token !== panel.token) return;  // a newer cursor asked since
      // Keep what the stream brought while the history was read (it ends before that).
      const t = r.t ?? [], v = r.v ?? [];
      const from = t.length ? t[t.length - 1] : -Infinity;
      let i = state.mode === "live" ? s.t.findIndex((x) => x > from) : -1;
      if (i < 0) { i = s.t.length; s.last = null; }
      s.t = t.concat(s.t.slice(i)); s.v = v.concat(s.v.slice(i));
      panel.dirty = true;
    } catch (err) { console.warn(err); }
  }
}

function addImage(source, channel) {
  const box = panelBox(`${source}/${channel}`, "image");
  const img = el("img", { alt: `${source}/${channel}` });
  const stamp = el("div", { class: "stamp" });
  box.append(img, stamp);
  attach({ kind: "image", spec: { k: "image", s: source, c: channel }, box, img, stamp,
           paths: [`${source}/${channel}`], loading: false, next: null });
}

// Every camera's thumbnail, present and future: a tile per thumbnail channel.
function addWall() {
  const box = panelBox("cameras", "wall");
  const grid = el("div", { class: "tiles" });
  box.append(grid);
  const panel = { kind: "wall", spec: { k: "wall" }, box, grid, tiles: new Map(), paths: WALL_PATHS };
  addRows(panel, state.sources);
  attach(panel);
}

function tileFor(panel, path) {
  let tile = panel.tiles.get(path);
  if (!tile) {
    const img = el("img", { alt: path }), stamp = el("div", { class: "stamp" });
    const box = el("figure", { class: "tile", "data-path": path }, img, el("figcaption", {}, path.split("/")[0]), stamp);
    tile = { img, stamp, box, loading: false, next: null };
    panel.tiles.set(path, tile);
    const after = [...panel.grid.children].find(b => b.dataset.path > path);  // sorted by name
    panel.grid.insertBefore(box, after || null);
    requestImage(tile, frameUrl(path));
  }
  return tile;
}

// The wall's tiles and the values table's rows, for sources listed (frames add the rest).
function addRows(panel, sources) {
  for (const s of sources) for (const c of s.channels) {
    const path = `${s.name}/${c.name}`;
    if (!wants(panel, path)) continue;
    if (panel.kind === "wall" && c.content_type.startsWith("image/")) tileFor(panel, path);
    if (panel.kind === "values" && isValue(c.name, c.content_type)) rowFor(panel, path, c.frames > 0);
  }
}

// The newest value of every DAQ and NTCP channel (at the cursor, paused).
function addValues() {
  const box = panelBox("newest values", "values");
  const tbody = el("tbody");
  box.append(el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "channel"), el("th", {}, "value"), el("th", {}, "time"))), tbody));
  const panel = { kind: "values", spec: { k: "values" }, box, tbody, rows: new Map(), paths: VALUE_PATHS };
  addRows(panel, state.sources);
  attach(panel);
}

// Numbers and text (NTCP control points), not a source's metadata.
function isValue(channel, contentType) {
  return channel !== "metadata.txt" && (contentType === NUMERIC || contentType.startsWith("text/"));
}

// A channel without frames gets its row empty (no read of a frame there is not).
function rowFor(panel, path, load = true) {
  let row = panel.rows.get(path);
  if (!row) {
    row = { value: el("td", { class: "value" }), time: el("td", { class: "time" }) };
    const rows = [...panel.rows.keys(), path].sort();
    panel.rows.set(path, row);
    const tr = el("tr", { "data-path": path }, el("td", {}, path), row.value, row.time);
    panel.tbody.insertBefore(tr, panel.tbody.children[rows.indexOf(path)] ?? null);
    if (load) loadValue(panel, path);
  }
  return row;
}

function showValue(row, value, t) {
  row.value.textContent = typeof value === "number" ? String(Number(value.toPrecision(6))) : String(value).slice(0, 80);
  row.value.dataset.value = String(value);
  row.time.textContent = iso(t);
}

async function loadValue(panel, path) {
  try {
    const r = await fetch(frameUrl(path));
    if (!r.ok) return;
    const t = Number(r.headers.get("x-turbine-timestamp"));
    if ((r.headers.get("content-type") ?? "").startsWith(NUMERIC)) {
      const view = new DataView(await r.arrayBuffer());
      if (view.byteLength >= 8) showValue(rowFor(panel, path), view.getFloat64(view.byteLength - 8, true), t);
    } else showValue(rowFor(panel, path), await r.text(), t);
  } catch (err) { console.warn(err); }
}

// An audio level meter: peak and RMS per audio channel, in dBFS (the viewer measures each block).
function addAudio(source, channel) {
  const box = panelBox(`${source}/${channel}`, "audio");
  const meters = el("div", { class: "meters" });
  box.append(meters);
  attach({ kind: "audio", spec: { k: "audio", s: source, c: channel }, box, meters, source, channel,
           paths: [`${source}/${channel}`] });
}

function showLevel(panel, level) {
  panel.meters.replaceChildren(...level.peak_dbfs.map((peak, i) => {
    const rms = level.rms_dbfs[i];
    const width = (db) => `${Math.max(0, Math.min(100, (db + 60) / 60 * 100)).toFixed(1)}%`;
    return el("div", { class: "meter", "data-peak": String(peak), "data-rms": String(rms) },
      el("div", { class: "bar" }, el("div", { class: "rms", style: `width: ${width(rms)}` }),
        el("div", { class: "peak", style: `left: ${width(peak)}` })),
      el("span", {}, `ch${i + 1} peak ${peak.toFixed(1)} dBFS, rms ${rms.toFixed(1)} dBFS`));
  }));
}

async function loadLevel(panel, end) {
  const url = channelUrl("channel", panel.source, panel.channel);
  try {
    const r = await getJSON(state.cursor == null ? `${url}?newest=1` : `${url}?start=${end - 1}&duration=1`);
    const last = (r.items ?? []).at(-1);
    if (last?.level) showLevel(panel, last.level);
  } catch (err) { console.warn(err); }
}

// A source's metadata (its metadata.txt at the cursor).
function addMeta(source) {
  if (state.panels.some((p) => p.kind === "meta" && p.source === source)) return;
  const box = panelBox(`${source}: metadata`, "meta");
  const pre = el("pre");
  box.append(pre);
  attach({ kind: "meta", spec: { k: "meta", s: source }, box, pre, source, paths: [`${source}/metadata.txt`] });
}

function showMeta(panel, text) {
  try { panel.pre.textContent = JSON.stringify(JSON.parse(text), null, 1); } catch { panel.pre.textContent = text; }
}

async function loadMeta(panel) {
  try {
    const r = await fetch(frameUrl(`${panel.source}/metadata.txt`));
    panel.pre.textContent = "";
    if (r.ok) showMeta(panel, await r.text());
  } catch (err) { console.warn(err); }
}

// One image in flight per panel: a slow link skips frames; the newest request wins.
async function requestImage(panel, url) {
  if (panel.loading) { panel.next = url; return; }
  panel.loading = true;
  try {
    const r = await fetch(url);
    if (r.ok) {
      const blob = await r.blob();
      const seq = r.headers.get("x-turbine-seq"), t = Number(r.headers.get("x-turbine-timestamp"));
      await new Promise((done) => {
        const old = panel.img.src;
        panel.img.onload = panel.img.onerror = done;
        panel.img.src = URL.createObjectURL(blob);
        if (old.startsWith("blob:")) URL.revokeObjectURL(old);
      });
      panel.stamp.textContent = `#${seq} ${iso(t)}`;
      Object.assign(panel.stamp.dataset, { seq, t: String(t) });
    }
  } catch (err) { console.warn(err); }
  panel.loading = false;
  if (panel.next) { const next = panel.next; panel.next = null; requestImage(panel, next); }
}

// A log: component logs (JSON records with a level) or any text channel; filter by level and text.
function addLog(source, channel) {
  const box = panelBox(`${source}/${channel}`, "logpanel");
  const level = el("select", { class: "level", "aria-label": "lowest level" },
    ...LEVELS.map((l) => el("option", { value: l }, `${l} and above`)));
  const filter = el("input", { placeholder: "filter text" });
  const log = el("div", { class: "log" });
  box.append(level, filter, log);
  const panel = { kind: "log", spec: { k: "log", s: source, c: channel }, box, log, filter, level, source, channel,
                  paths: [`${source}/${channel}`] };
  const refilter = () => { for (const line of log.children) line.hidden = !shown(panel, line); };
  filter.addEventListener("input", refilter);
  level.addEventListener("change", refilter);
  attach(panel);
}

function shown(panel, line) {
  const rank = LEVELS.indexOf(line.dataset.level);
  return (rank < 0 || rank >= LEVELS.indexOf(panel.level.value)) && line.textContent.includes(panel.filter.value);
}

async function loadLog(panel, end) {
  try {
    // Live: the newest lines, however old; at a cursor: the time scale's lines up to it.
    const which = state.cursor == null ? `newest=${LOG_LINES}` : `start=${end - state.window}&duration=${state.window}`;
    const r = await getJSON(`${channelUrl("channel", panel.source, panel.channel)}?${which}`);
    panel.log.replaceChildren();
    panel.lastSeq = 0;
    for (const item of r.items ?? []) appendLog(panel, item);
  } catch (err) { console.warn(err); }
}

// --- the site: MCP programs and a command console ----------------------------------
// Controls, not data: they follow the present whatever the time cursor shows.

async function command(target, verb, args = []) {
  const r = await fetch(`/api/command/${encodeURIComponent(target)}`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ verb, args }),
  });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function mayCommand(target) {
  const s = state.sources.find((x) => x.name === `${target}_command_sink`);
  return !s || s.access == null || s.access.includes("c");
}

async function refreshSite() {
  const tbody = document.querySelector("#programs tbody");
  const rows = [];
  for (const s of state.sources.filter((x) => /^mcp_.*_data_source$/.test(x.name))) {
    const mcpName = s.name.replace(/_data_source$/, "");
    let st;
    try {
      const r = await getJSON(`${channelUrl("channel", s.name, "state.json")}?newest=1`);
      if (!r.items?.length) continue;
      st = JSON.parse(r.items[0].text);
    } catch (err) { console.warn(err); continue; }
    const allowed = mayCommand(mcpName);
    for (const p of Object.values(st.programs)) {
      const buttons = el("td");
      for (const verb of ["start", "stop", "restart"]) {
        const b = el("button", { type: "button", class: verb, onclick: () => siteVerb(mcpName, verb, p.name) }, verb);
        if (!allowed) { b.disabled = true; b.title = "the viewer's user may not command this MCP"; }
        buttons.append(b);
      }
      rows.push(el("tr", { "data-program": p.name, "data-state": p.state, "data-restarts": String(p.restarts) },
        el("td", {}, mcpName), el("td", { class: "name" }, p.name), el("td", {}, p.kind ?? ""),
        el("td", { class: `state ${p.state}` }, p.state), el("td", {}, p.pid == null ? "" : String(p.pid)),
        el("td", { class: "restarts" }, String(p.restarts)),
        el("td", {}, p.uptime == null ? "" : duration(p.uptime)), buttons));
    }
  }
  tbody.replaceChildren(...rows);
}

function duration(s) {
  if (s < 60) return `${s.toFixed(0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

async function siteVerb(mcpName, verb, program) {
  const out = document.getElementById("site-reply");
  out.textContent = `${verb} ${program}…`;
  try {
    const reply = await command(mcpName, verb, [program]);
    out.textContent = reply.status === "ok" ? String(reply.result) : `${reply.status}: ${reply.error}`;
  } catch (err) { out.textContent = `error: ${err.message}`; }
  refreshSite();
}

function refreshTargets() {
  const select = document.getElementById("console-target");
  const targets = state.sources.filter((s) => s.name.endsWith("_command_sink"))
    .map((s) => s.name.replace(/_command_sink$/, ""));
  const have = [...select.options].map((o) => o.value);
  if (have.join() === targets.join()) return;
  const chosen = select.value;
  select.replaceChildren(...targets.map((t) => el("option", { value: t }, t)));
  if (targets.includes(chosen)) select.value = chosen;
}

async function sendConsole(e) {
  e.preventDefault();
  const target = document.getElementById("console-target").value;
  const [verb, ...args] = document.getElementById("console-line").value.trim().split(/\s+/);
  const out = document.getElementById("console-reply");
  if (!target || !verb) return;
  out.textContent = `${target} ${verb}…`;
  out.dataset.state = "waiting";
  try {
    const reply = await command(target, verb, args);
    out.textContent = reply.status === "ok" ? JSON.stringify(reply.result, null, 1) : `${reply.status}: ${reply.error}`;
    out.dataset.state = reply.status;
  } catch (err) {
    out.textContent = `error: ${err.message}`;
    out.dataset.state = "error";
  }
}

// --- the tab's one live stream ----------------------------------------------------

function connect() {
  if (state.source) state.source.close();
  state.source = null;
  const paths = allPaths();
  if (paths.length === 0 || state.mode === "paused") { refreshMarkers(); return; }
  const live = state.mode === "live";
  const replay = live ? "" : `&from=${state.cursor}&speed=${document.getElementById("speed").value}`;
  // Live, the camera wall's paths are watched: each camera's newest thumbnail, a few a second.
  const walls = state.panels.filter((p) => p.kind === "wall");
  const watched = !live ? [] : [...new Set(walls.flatMap((p) => p.paths))]
    .filter((w) => !state.panels.some((p) => p.kind !== "wall" && p.paths.includes(w)));
  const streamed = paths.filter((p) => !watched.includes(p));
  const es = new EventSource("/api/stream?" + (live ? query([...streamed, MARKERS_PATH], watched) : query(paths)) + replay);
  es.addEventListener("open", refreshMarkers);  // (and again whenever the stream was down)
  // A new stream starts at each channel's newest frame: what came while none ran (a panel
  // opened, the link down) is read as history, so plots have no hole and no stretched block.
  if (live) es.addEventListener("ready", () => {
    for (const p of state.panels) if (p.kind === "plot") {
      for (const s of Object.values(p.series)) s.last = null;
      loadHistory(p, Date.now() / 1000);
    }
  });
  es.addEventListener("frame", (e) => onFrame(JSON.parse(e.data)));
  es.addEventListener("renumbered", (e) => onRenumbered(JSON.parse(e.data)));
  es.addEventListener("clock", (e) => { state.cursor = JSON.parse(e.data).t; showCursor(); markPlots(); });
  es.addEventListener("end", () => goLive());
  es.addEventListener("dropped", (e) => console.warn("frames dropped for this tab", JSON.parse(e.data)));
  state.source = es;
}

// A numeric frame's samples come as their little-endian float64 bytes in base64.
function samples(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Float64Array(bytes.buffer, 0, bytes.length >> 3);
}

function onFrame(ev) {
  const path = `${ev.source}/${ev.channel}`;
  if (ev.values_b64 != null) ev.values = samples(ev.values_b64);
  if (path === MARKERS_PATH) addMarker(ev.text);
  for (const p of state.panels) {
    if (!wants(p, path)) continue;
    if (p.kind === "plot" && ev.values) appendSamples(p, p.series[ev.channel], ev);
    else if (p.kind === "image" && ev.url) requestImage(p, ev.url);
    else if (p.kind === "wall" && ev.url && ev.content_type.startsWith("image/")) requestImage(tileFor(p, path), ev.url);
    else if (p.kind === "values" && isValue(ev.channel, ev.content_type) && (ev.values?.length || ev.text != null)) {
      showValue(rowFor(p, path), ev.values ? ev.values.at(-1) : ev.text, ev.timestamp);
    } else if (p.kind === "audio" && ev.level) showLevel(p, ev.level);
    else if (p.kind === "meta" && ev.text != null) showMeta(p, ev.text);
    else if (p.kind === "log") appendLog(p, ev);
  }
}

// A marker (JSON text: time, label, by) pushed on the stream or just dropped, unless shown already.
function addMarker(text) {
  let m;
  try { m = JSON.parse(text); } catch { return; }  // a shared source: anyone may put anything
  if (!m || typeof m.time !== "number") return;
  const marker = { time: m.time, label: String(m.label ?? ""), by: m.by ?? null };
  const same = (o) => o.time === marker.time && o.label === marker.label && o.by === marker.by;
  if (state.markers.some(same)) return;
  state.markers = [...state.markers, marker].sort((a, b) => a.time - b.time);
  markPlots();
}

// The channel numbers from 1 again (its broker restarted without a data dir): a log panel
// shows lines numbered above its last, so it starts counting again.
function onRenumbered(ev) {
  const path = `${ev.source}/${ev.channel}`;
  for (const p of state.panels) if (p.kind === "log" && wants(p, path)) p.lastSeq = 0;
}

function appendSamples(panel, s, ev) {
  // Samples of a block are spread up to the next block: use the spacing of the last two blocks
  // (the first block after the history: 1 ms, as the server spreads a lone block; the history's
  // own spacing is that of decimated points, and would put the block far ahead of now).
  const n = ev.values.length;
  const dt = s.last ? (ev.timestamp - s.last.timestamp) / s.last.n : 0.001;
  s.last = { timestamp: ev.timestamp, n };
  if (s.t.length && ev.timestamp <= s.t[s.t.length - 1]) return;  // already read as history
  if (state.window > LIVE_SAMPLES_MAX_S && n > 2) {  // a long time scale: the block's extremes
    let lo = 0, hi = 0;
    for (let i = 1; i < n; i++) { if (ev.values[i] < ev.values[lo]) lo = i; if (ev.values[i] > ev.values[hi]) hi = i; }
    for (const i of lo < hi ? [lo, hi] : [hi, lo]) { s.t.push(ev.timestamp + i * dt); s.v.push(ev.values[i]); }
  } else {
    for (let i = 0; i < n; i++) { s.t.push(ev.timestamp + i * dt); s.v.push(ev.values[i]); }
  }
  const cutoff = ev.timestamp - state.window;
  let k = 0;
  while (k < s.t.length && s.t[k] < cutoff) k++;
  if (k) { s.t.splice(0, k); s.v.splice(0, k); }
  panel.dirty = true;
}

function appendLog(panel, ev) {
  if (ev.seq <= panel.lastSeq) return;  // read with the history already
  panel.lastSeq = ev.seq;
  let text = ev.text ?? `[${ev.bytes} bytes ${ev.content_type}]`, level = "";
  try {  // a component's log record: {time, level, logger, message}
    const r = JSON.parse(text);
    if (r && typeof r.level === "string" && "message" in r) {
      level = r.level;
      text = `${r.level} ${r.logger ?? ""}: ${r.message}${r.exception ? "\n" + r.exception : ""}`;
    }
  } catch { /* plain text */ }
  const line = el("div", { "data-level": level }, `${iso(ev.timestamp)} ${text}`);
  line.hidden = !shown(panel, line);
  panel.log.append(line);
  while (panel.log.children.length > LOG_LINES) panel.log.firstChild.remove();
  panel.log.scrollTop = panel.log.scrollHeight;
}

function markPlots() { for (const p of state.panels) if (p.kind === "plot") p.dirty = true; }

function redraw() {
  for (const p of state.panels) {
    if (p.kind === "plot" && p.dirty) { p.dirty = false; Plotly.react(p.div, traces(p), layout()); }
  }
}

document.getElementById("timescale").addEventListener("change", (e) => {
  state.window = Number(e.target.value);
  saveLayout();
  for (const p of state.panels) reload(p);
});
document.getElementById("go-live").addEventListener("click", goLive);
document.getElementById("pause").addEventListener("click", pause);
document.getElementById("play").addEventListener("click", play);
document.getElementById("slider").addEventListener("input", (e) => scrub(Number(e.target.value)));
document.getElementById("speed").addEventListener("change", () => { if (state.mode === "replay") connect(); });
document.getElementById("console").addEventListener("submit", sendConsole);
document.getElementById("mark").addEventListener("click", dropMarker);
getJSON("/api/whoami").then((w) => {
  document.getElementById("whoami").textContent = !w.auth ? "the broker has no access control" :
    `viewer's user: ${w.user}${w.rights.admin ? " (admin)" : ""}; read ${w.rights.read.join(" ") || "-"};` +
    ` write ${w.rights.write.join(" ") || "-"}; command ${w.rights.command.join(" ") || "-"}`;
}, (err) => console.warn(err));
restoreLayout();
refreshSources();
setInterval(refreshSources, 3000);
setInterval(redraw, 250);
setInterval(() => {  // live plots of a long time scale: their history again, now and then
  if (state.mode !== "live" || state.window <= LIVE_SAMPLES_MAX_S) return;
  const now = Date.now() / 1000, every = Math.max(state.window / 100, REREAD_MIN_S);
  for (const p of state.panels) {
    if (p.kind === "plot" && now - (p.loadedAt ?? 0) >= every) loadHistory(p, now);
  }
}, 1000);
