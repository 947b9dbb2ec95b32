// The viewer's page: a source browser and live panels, one EventSource for the whole tab.
// No build step: plain JS, plots by plotly.js served from the installed plotly package.
"use strict";

const state = { panels: [], source: null, window: 10, defaulted: false };
const NUMERIC = "application/x-float64-le";

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
  const tbody = document.querySelector("#sources tbody");
  tbody.replaceChildren(...sources.map(sourceRow));
  if (!state.defaulted) openDefaultPanels(sources);
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
    el("td", {}, type), el("td", { class: "name" }, s.name),
    el("td", { class: s.online ? "online" : "offline" }, s.online ? "online" : "offline"),
    channels, el("td", {}, md));
}

function openDefaultPanels(sources) {
  const daq = sources.find((s) => s.name.startsWith("daq_") && s.channels.some((c) => c.content_type === NUMERIC));
  if (!daq) return;  // try again at the next refresh
  state.defaulted = true;
  {
    const chans = daq.channels.filter((c) => c.content_type === NUMERIC).slice(0, 4).map((c) => c.name);
    addPlot(daq.name, chans);
  }
  for (const s of sources.filter((s) => s.name.startsWith("thumbnail_") || s.name.startsWith("video_")).slice(0, 2)) {
    const img = s.channels.find((c) => c.content_type.startsWith("image/"));
    if (img) addPanel(s.name, img.name, img.content_type);
  }
}

// --- panels ---------------------------------------------------------------------

function addPanel(source, channel, contentType) {
  if (contentType === NUMERIC) return addPlot(source, [channel]);
  if (contentType.startsWith("image/")) return addImage(source, channel);
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
  connect();
}

function addPlot(source, channels) {
  const box = panelBox(`${source}: ${channels.join(", ")}`, "timeseries");
  const div = el("div", { class: "plot" });
  box.append(div);
  const series = Object.fromEntries(channels.map((c) => [c, { t: [], v: [], last: null }]));
  const panel = { kind: "plot", box, div, source, series, paths: channels.map((c) => `${source}/${c}`), dirty: true };
  state.panels.push(panel);
  Plotly.newPlot(div, traces(panel), layout(), { responsive: true, displaylogo: false });
  loadHistory(panel);
  connect();
}

function traces(panel) {
  return Object.entries(panel.series).map(([name, s]) => ({
    name, mode: "lines", type: "scatter", x: s.t.map((t) => new Date(t * 1000)), y: s.v,
  }));
}

function layout() {
  return { margin: { l: 50, r: 10, t: 10, b: 30 }, hovermode: "x unified",
           xaxis: { type: "date" }, yaxis: { autorange: true }, legend: { orientation: "h" } };
}

async function loadHistory(panel) {
  const start = Date.now() / 1000 - state.window;
  for (const [name, s] of Object.entries(panel.series)) {
    try {
      const r = await getJSON(`/api/channel/${panel.source}/${name}?start=${start}&max_points=2000`);
      if (r.t && s.t.length === 0) { s.t = r.t; s.v = r.v; panel.dirty = true; }
    } catch (err) { console.warn(err); }
  }
}

function addImage(source, channel) {
  const box = panelBox(`${source}/${channel}`, "image");
  const img = el("img", { alt: `${source}/${channel}` });
  const stamp = el("div", { class: "stamp" });
  box.append(img, stamp);
  img.src = `/api/frame/${source}/${channel}`;
  const panel = { kind: "image", box, img, stamp, paths: [`${source}/${channel}`], loading: false, next: null };
  img.addEventListener("load", () => { panel.loading = false; if (panel.next) showImage(panel, panel.next); });
  img.addEventListener("error", () => { panel.loading = false; });
  state.panels.push(panel);
  connect();
}

function showImage(panel, ev) {
  if (panel.loading) { panel.next = ev; return; }  // one image in flight per panel: a slow link skips frames
  panel.next = null;
  panel.loading = true;
  panel.img.src = ev.url;
  panel.stamp.textContent = `#${ev.seq} ${new Date(ev.timestamp * 1000).toISOString()}`;
}

function addLog(source, channel) {
  const box = panelBox(`${source}/${channel}`, "logpanel");
  const filter = el("input", { placeholder: "filter (e.g. ERROR)" });
  const log = el("div", { class: "log" });
  box.append(filter, log);
  const panel = { kind: "log", box, log, filter, paths: [`${source}/${channel}`] };
  filter.addEventListener("input", () => {
    for (const line of log.children) line.hidden = !line.textContent.includes(filter.value);
  });
  state.panels.push(panel);
  connect();
}

// --- the tab's one live stream ----------------------------------------------------

function connect() {
  if (state.source) state.source.close();
  const paths = [...new Set(state.panels.flatMap((p) => p.paths))];
  if (paths.length === 0) return;
  const es = new EventSource("/api/stream?" + paths.map((p) => "path=" + encodeURIComponent(p)).join("&"));
  es.addEventListener("frame", (e) => onFrame(JSON.parse(e.data)));
  es.addEventListener("dropped", (e) => console.warn("frames dropped for this tab", JSON.parse(e.data)));
  state.source = es;
}

function onFrame(ev) {
  const path = `${ev.source}/${ev.channel}`;
  for (const p of state.panels) {
    if (!p.paths.includes(path)) continue;
    if (p.kind === "plot" && ev.values) appendSamples(p, p.series[ev.channel], ev);
    else if (p.kind === "image" && ev.url) showImage(p, ev);
    else if (p.kind === "log") appendLog(p, ev);
  }
}

function appendSamples(panel, s, ev) {
  // Samples of a block are spread up to the next block: use the spacing of the last two blocks.
  const n = ev.values.length;
  const dt = s.last ? (ev.timestamp - s.last.timestamp) / s.last.n : 0.001;
  s.last = { timestamp: ev.timestamp, n };
  if (s.t.length && ev.timestamp <= s.t[s.t.length - 1]) return;  // already read as history
  for (let i = 0; i < n; i++) { s.t.push(ev.timestamp + i * dt); s.v.push(ev.values[i]); }
  const cutoff = ev.timestamp - state.window;
  let k = 0;
  while (k < s.t.length && s.t[k] < cutoff) k++;
  if (k) { s.t.splice(0, k); s.v.splice(0, k); }
  panel.dirty = true;
}

function appendLog(panel, ev) {
  const text = ev.text ?? `[${ev.bytes} bytes ${ev.content_type}]`;
  const line = el("div", {}, `${new Date(ev.timestamp * 1000).toISOString()} ${text}`);
  line.hidden = !line.textContent.includes(panel.filter.value);
  panel.log.append(line);
  while (panel.log.children.length > 1000) panel.log.firstChild.remove();
  panel.log.scrollTop = panel.log.scrollHeight;
}

function redraw() {
  for (const p of state.panels) {
    if (p.kind === "plot" && p.dirty) { p.dirty = false; Plotly.react(p.div, traces(p), layout()); }
  }
}

document.getElementById("timescale").addEventListener("change", (e) => {
  state.window = Number(e.target.value);
  for (const p of state.panels) if (p.kind === "plot") loadHistory(p);
});
refreshSources();
setInterval(refreshSources, 3000);
setInterval(redraw, 250);
