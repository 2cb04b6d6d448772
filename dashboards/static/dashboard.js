// The live dashboard: history from the API once per scope, then every event from the SSE stream.
"use strict";

const TEXT = {
  zh: {
    title: "算网 · 全国一体化算力网", motto: "监测为基、调度为核", scope: "范围", live: "实时", offline: "未连接",
    map: "枢纽与集群 · 调度流向", placed: "已调度任务", moved: "跨枢纽调度", saved_yuan: "较本地节省 (元)",
    saved_carbon: "减碳 (kg CO₂)", latency: "调度时延 p50 / p99", open_alerts: "未解除告警", hubs: "枢纽节点",
    hub: "枢纽", role: "定位", online: "在线节点", cpu: "CPU", accel: "加速卡", power: "功率 kW", green: "绿电",
    alerts: "告警", recent: "最新调度", task: "任务", from: "来源", to: "去向", cost: "费用 ¥", saved: "节省 ¥",
    east: "东部", west: "西部", central: "中部", resolved: "已解除", none: "暂无",
    chart_cpu: "CPU 利用率 (1 分钟)", chart_power: "功率 kW (1 分钟)", chart_green: "绿电占比 (1 分钟)",
    chart_latency: "调度决策时延 µs", lag: "事件到屏幕", language: "EN", token: "访问令牌", sign_in: "进入",
    prices: "算力价格 · 价格发现", class: "算力类型", index: "价格指数", per_cu: "¥ / 标准算力·时", used: "已承诺",
    pressure: "供需压力",
  },
  en: {
    title: "suanwang · National Integrated Compute Network", motto: "monitoring as the base, dispatch as the core",
    scope: "Scope", live: "live", offline: "not connected", map: "Hubs and clusters · dispatch flows",
    placed: "Tasks placed", moved: "Moved between hubs", saved_yuan: "Saved vs local (¥)",
    saved_carbon: "CO₂ avoided (kg)", latency: "Dispatch p50 / p99", open_alerts: "Open alerts", hubs: "Hubs",
    hub: "Hub", role: "Role", online: "Online", cpu: "CPU", accel: "Accel.", power: "Power kW", green: "Green",
    alerts: "Alerts", recent: "Latest placements", task: "Task", from: "From", to: "To", cost: "Cost ¥",
    saved: "Saved ¥", east: "east", west: "west", central: "central", resolved: "resolved", none: "none yet",
    chart_cpu: "CPU utilisation (1 min)", chart_power: "Power kW (1 min)", chart_green: "Green share (1 min)",
    chart_latency: "Dispatch decision µs", lag: "event to screen", language: "中文", token: "Access token",
    sign_in: "Sign in", prices: "Compute prices · price discovery", class: "Class", index: "Index",
    per_cu: "¥ per CU-hour", used: "Promised", pressure: "Pressure",
  },
};
const ROLE_COLOUR = { east: "#4da3ff", west: "#3ddc97", central: "#f5b942" };
const HUB_COLOURS = ["#4da3ff", "#3ddc97", "#f5b942", "#ff7eb6", "#a78bfa", "#22d3ee", "#fb923c", "#e2e8f0"];
const FLOW_MS = 2500;       // how long one dispatch flow takes to cross the map
const KEEP_DECISIONS = 500; // decisions behind the latency figures and chart
const KEEP_ROWS = 40;       // rows in the placements table and the alerts list
const KEEP_WINDOWS = 60;    // one-minute windows per hub in the charts (10 minutes at a 10-s hop)
const PRICES_EVERY_MS = 10000; // the market sets prices every 10 s by default

const TOKEN_KEY = "suanwang-token"; // kept for this tab only
const state = {
  lang: "zh", scope: "national", network: null, view: null, source: null,
  token: sessionStorage.getItem(TOKEN_KEY), asking: null,
  totals: null, decisions: [], placements: [], alerts: [], windows: new Map(), flows: [], renderQueued: false,
  prices: [],
};
const $ = (selector) => document.querySelector(selector);
const t = (key) => TEXT[state.lang][key];
const nameOf = (names) => names[state.lang];
const esc = (v) => String(v).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const ms = (time) => Date.parse(time);
const fmt = (v, digits = 0) => Number(v).toLocaleString(state.lang === "zh" ? "zh-CN" : "en-GB",
  { minimumFractionDigits: digits, maximumFractionDigits: digits });
const pct = (v) => (v == null ? "–" : `${Math.round(v * 100)}%`);

// With tokens configured, the API answers 401 until the operator gives theirs; it is asked once for all calls.
async function getJSON(url) {
  const response = await fetch(url, { headers: state.token ? { Authorization: `Bearer ${state.token}` } : {} });
  if (response.status === 401) {
    state.token = await askToken((await response.json()).error);
    return getJSON(url);
  }
  if (!response.ok) throw new Error(`${url}: ${response.status} ${(await response.json()).error}`);
  return response.json();
}

function askToken(message) {
  if (!state.asking) {
    state.asking = new Promise((resolve) => {
      const form = $("#login");
      form.hidden = false;
      $("#login-error").textContent = state.token ? message : "";
      $("#token").focus();
      form.onsubmit = (event) => {
        event.preventDefault();
        const token = $("#token").value.trim();
        sessionStorage.setItem(TOKEN_KEY, token);
        form.hidden = true;
        state.asking = null;
        resolve(token);
      };
    });
  }
  return state.asking;
}

async function start() {
  const params = new URLSearchParams(location.search);
  state.lang = params.get("lang") === "en" ? "en" : "zh";
  relabel();
  state.network = await getJSON("/api/network");
  $("#you").textContent = `${state.network.you.name} · ${state.network.you.role}`;
  if (!state.network.scopes.length) throw new Error(`${state.network.you.role}: no monitoring scope`);
  const wanted = params.get("scope");
  state.scope = state.network.scopes.some((s) => s.scope === wanted) ? wanted : state.network.scopes[0].scope;
  $("#scope").addEventListener("change", (e) => switchScope(e.target.value));
  $("#lang").addEventListener("click", () => { state.lang = state.lang === "zh" ? "en" : "zh"; relabel(); });
  relabel();
  await switchScope(state.scope);
  setInterval(animateFlows, 100);
  setInterval(refreshPrices, PRICES_EVERY_MS);
}

async function refreshPrices() {
  const scope = state.scope;
  const prices = await getJSON(`/api/prices?scope=${encodeURIComponent(scope)}`);
  if (scope === state.scope) { state.prices = prices; queueRender(); }
}

function relabel() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  $("#lang").textContent = t("language");
  $("#live").textContent = document.body.dataset.live === "on" ? t("live") : t("offline");
  if (!state.network) return;
  $("#scope").innerHTML = state.network.scopes.map((s) =>
    `<option value="${esc(s.scope)}"${s.scope === state.scope ? " selected" : ""}>${esc(nameOf(s.name))}</option>`).join("");
  drawMap();
  render();
}

// One scope's history, then its live stream; the stream's `ready` event says the server reads from now on.
async function switchScope(scope) {
  state.scope = scope;
  state.view = state.network.scopes.find((s) => s.scope === scope);
  document.body.dataset.scope = scope;
  setLive(false);
  if (state.source) state.source.close();
  const q = `scope=${encodeURIComponent(scope)}`;
  const [totals, placements, alerts, windows, prices] = await Promise.all([
    getJSON(`/api/overview?${q}`), getJSON(`/api/placements?${q}&limit=${KEEP_DECISIONS}`),
    getJSON(`/api/alerts?${q}&limit=${KEEP_ROWS}`),
    getJSON(`/api/rollups?scope_kind=hub&window_s=60&limit=${KEEP_WINDOWS * 8}`), getJSON(`/api/prices?${q}`),
  ]);
  if (scope !== state.scope) return; // the user picked another scope meanwhile
  state.totals = totals;
  state.prices = prices;
  state.placements = placements.slice(0, KEEP_ROWS);
  state.decisions = placements.map((p) => ({ time: ms(p.event_time), us: p.decision_us })).reverse();
  state.alerts = alerts;
  state.windows = new Map();
  windows.reverse().forEach(addWindow);
  state.flows = [];
  drawMap();
  render();
  openStream(q);
}

function openStream(query) {
  const auth = state.token ? `&access_token=${encodeURIComponent(state.token)}` : "";
  const source = new EventSource(`/api/stream?${query}${auth}`);
  state.source = source;
  source.addEventListener("ready", () => setLive(true));
  source.addEventListener("error", () => setLive(false));
  source.addEventListener("placement", (e) => onPlacement(JSON.parse(e.data)));
  source.addEventListener("alert", (e) => onAlert(JSON.parse(e.data)));
  source.addEventListener("rollup", (e) => { addWindow(JSON.parse(e.data)); queueRender(); });
}

function setLive(on) {
  document.body.dataset.live = on ? "on" : "off";
  $("#live").textContent = on ? t("live") : t("offline");
}

function onPlacement(p) {
  const totals = state.totals;
  totals.placements += 1;
  totals.moved += p.hub !== p.origin_hub ? 1 : 0;
  totals.saved_yuan += p.saved_yuan;
  totals.saved_carbon_kg += p.saved_carbon_kg;
  state.decisions.push({ time: ms(p.event_time), us: p.decision_us });
  state.decisions.splice(0, state.decisions.length - KEEP_DECISIONS);
  p.fresh = true;
  state.placements.unshift(p);
  state.placements.length = Math.min(state.placements.length, KEEP_ROWS);
  state.flows.push({ from: p.origin_hub, cluster: p.cluster, hub: p.hub, born: performance.now() });
  showLag(p);
  queueRender();
}

function onAlert(a) {
  state.alerts.unshift(a);
  state.alerts.length = Math.min(state.alerts.length, KEEP_ROWS);
  state.totals.open_alerts = Math.max(0, state.totals.open_alerts + (a.resolved ? -1 : 1));
  showLag(a);
  queueRender();
}

// On one clock, the server's: from the event's append to Kafka to the moment the server sent it to this page. The
// event's own time is not used: the simulator compresses time, and another machine's clock may run ahead.
function showLag(e) {
  if (e._kafka_ms == null || e._sent_ms == null) return;
  const lag = Math.max(0, e._sent_ms - e._kafka_ms);
  document.body.dataset.lagMs = String(lag);
  $("#lag").textContent = `${t("lag")} ${fmt(lag)} ms`;
}

// A window may be sent again, corrected by a late partial: the newest version of each window wins.
function addWindow(r) {
  if (r.scope_kind !== "hub" || r.window_s !== 60) return;
  if (!state.windows.has(r.scope_key)) state.windows.set(r.scope_key, new Map());
  const hub = state.windows.get(r.scope_key);
  hub.set(ms(r.window_end), r);
  while (hub.size > KEEP_WINDOWS) hub.delete(Math.min(...hub.keys()));
}

function queueRender() {
  if (state.renderQueued) return;
  state.renderQueued = true;
  setTimeout(() => { state.renderQueued = false; render(); }, 200);
}

function render() {
  if (!state.totals) return;
  renderKpis();
  renderHubs();
  renderCharts();
  renderAlerts();
  renderPlacements();
  renderPrices();
}

function percentile(values, q) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function renderKpis() {
  const s = state.totals;
  $("#kpi-placed").textContent = fmt(s.placements);
  $("#kpi-moved").textContent = s.placements ? `${fmt(s.moved)} (${pct(s.moved / s.placements)})` : "0";
  $("#kpi-saved-yuan").textContent = fmt(s.saved_yuan, 2);
  $("#kpi-saved-carbon").textContent = fmt(s.saved_carbon_kg, 1);
  const us = state.decisions.map((d) => d.us);
  $("#kpi-latency").textContent = us.length ? `${fmt(percentile(us, 0.5))} / ${fmt(percentile(us, 0.99))} µs` : "–";
  $("#kpi-alerts").textContent = fmt(s.open_alerts);
}

function newest(hub) {
  const windows = state.windows.get(hub);
  return windows && windows.size ? windows.get(Math.max(...windows.keys())) : null;
}

function renderHubs() {
  const hubs = state.network.hubs;
  $("#hubs tbody").innerHTML = state.view.hubs.map((id) => {
    const r = newest(id);
    const cell = (v) => `<td class="n">${v}</td>`;
    return `<tr data-hub="${esc(id)}"><td>${esc(nameOf(hubs[id].name))}</td>` +
      `<td class="role-${hubs[id].role}">${t(hubs[id].role)}</td>` +
      cell(r ? `${fmt(r.nodes_online)}/${fmt(r.nodes_total)}` : "–") +
      `<td class="n cpu">${r ? pct(r.cpu_util_mean) : "–"}</td>` + cell(r ? pct(r.accelerator_util_mean) : "–") +
      cell(r ? fmt(r.power_kw_mean, 1) : "–") + cell(r ? fmt(r.pue, 2) : "–") + cell(r ? pct(r.green_share) : "–") +
      "</tr>";
  }).join("");
}

const CHART_LAYOUT = {
  paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", font: { color: "#dce6f0", size: 11 },
  margin: { l: 45, r: 10, t: 28, b: 30 }, showlegend: false,
  xaxis: { gridcolor: "#1f3447", type: "date" }, yaxis: { gridcolor: "#1f3447", rangemode: "tozero" },
};
const PLOT_CONFIG = { displayModeBar: false, responsive: true };

function hubSeries(field, scale = 1) {
  return state.view.hubs.map((id) => {
    const windows = [...(state.windows.get(id) || new Map()).entries()].sort((a, b) => a[0] - b[0]);
    return {
      type: "scatter", mode: "lines", name: nameOf(state.network.hubs[id].name),
      x: windows.map(([end]) => new Date(end)), y: windows.map(([, r]) => r[field] * scale),
      line: { color: HUB_COLOURS[Object.keys(state.network.hubs).indexOf(id) % HUB_COLOURS.length], width: 2 },
    };
  });
}

function renderCharts() {
  const chart = (id, title, data, yaxis = {}) => Plotly.react(id, data,
    { ...CHART_LAYOUT, title: { text: title, font: { size: 12 } }, yaxis: { ...CHART_LAYOUT.yaxis, ...yaxis } },
    PLOT_CONFIG);
  chart("chart-cpu", t("chart_cpu"), hubSeries("cpu_util_mean", 100), { ticksuffix: "%" });
  chart("chart-power", t("chart_power"), hubSeries("power_kw_mean"));
  chart("chart-green", t("chart_green"), hubSeries("green_share", 100), { ticksuffix: "%", range: [0, 100] });
  chart("chart-latency", t("chart_latency"), [{
    type: "scatter", mode: "markers", marker: { size: 3, color: "#4da3ff" },
    x: state.decisions.map((d) => new Date(d.time)), y: state.decisions.map((d) => d.us),
  }]);
}

function renderAlerts() {
  $("#alerts").innerHTML = state.alerts.length ? state.alerts.map((a) =>
    `<li class="${a.resolved ? "resolved" : a.severity.toLowerCase()}" data-kind="${esc(a.kind)}">` +
    `${esc(new Date(ms(a.event_time)).toLocaleTimeString())} · ${esc(a.kind)} · ${esc(a.scope_key)} · ` +
    `${esc(a.message)}${a.resolved ? ` (${t("resolved")})` : ""}</li>`).join("") : `<li>${t("none")}</li>`;
}

function renderPlacements() {
  const hubs = state.network.hubs;
  const hubName = (id) => (hubs[id] ? nameOf(hubs[id].name) : id);
  const clusterName = (hub, c) => (hubs[hub] && hubs[hub].clusters[c] ? nameOf(hubs[hub].clusters[c].name) : c);
  $("#placements tbody").innerHTML = state.placements.map((p) =>
    `<tr data-task="${esc(p.task_id)}" data-cluster="${esc(p.cluster)}"${p.fresh ? ' class="fresh"' : ""}><td>${esc(p.task_id)}</td>` +
    `<td>${esc(hubName(p.origin_hub))}</td><td>${esc(hubName(p.hub))} · ${esc(clusterName(p.hub, p.cluster))}</td>` +
    `<td class="n">${fmt(p.total_cost, 2)}</td><td class="n">${fmt(p.saved_yuan, 2)}</td>` +
    `<td class="n">${fmt(p.decision_us)}</td></tr>`).join("");
  state.placements.forEach((p) => { p.fresh = false; });
}

function renderPrices() {
  const hubs = state.network.hubs;
  $("#prices tbody").innerHTML = state.prices.length ? state.prices.map((p) =>
    `<tr data-price="${esc(p.hub)}/${esc(p.compute_class)}"${p.price_index > 1 ? ' class="dear"' : ""}>` +
    `<td>${esc(hubs[p.hub] ? nameOf(hubs[p.hub].name) : p.hub)}</td><td>${esc(p.compute_class)}</td>` +
    `<td class="n index">×${fmt(p.price_index, 2)}</td><td class="n">${fmt(p.yuan_per_cu_hour, 3)}</td>` +
    `<td class="n">${pct(p.utilisation)}</td><td class="n">${pct(p.pressure)}</td></tr>`).join("")
    : `<tr><td colspan="6">${t("none")}</td></tr>`;
}

// The map: clusters and hub cities by coordinates on China's outline; trace 2 holds the flows, animated.
function drawMap() {
  const hubs = state.network.hubs;
  const inScope = new Set(state.view ? state.view.hubs : Object.keys(hubs));
  const hubIds = Object.keys(hubs);
  const clusters = hubIds.flatMap((h) => Object.entries(hubs[h].clusters).map(([id, c]) => ({ id, hub: h, ...c })));
  const data = [
    {
      type: "scattergeo", mode: "markers", hoverinfo: "text",
      lon: clusters.map((c) => c.lon), lat: clusters.map((c) => c.lat),
      text: clusters.map((c) => `${nameOf(c.name)} · ${nameOf(state.network.provinces[c.province])}`),
      marker: { size: 8, symbol: "diamond", color: clusters.map((c) => ROLE_COLOUR[hubs[c.hub].role]),
        opacity: clusters.map((c) => (inScope.has(c.hub) ? 1 : 0.25)) },
    },
    {
      type: "scattergeo", mode: "markers+text", hoverinfo: "text", textposition: "top center",
      lon: hubIds.map((h) => hubs[h].city.lon), lat: hubIds.map((h) => hubs[h].city.lat),
      text: hubIds.map((h) => nameOf(hubs[h].name)), textfont: { color: "#dce6f0", size: 12 },
      marker: { size: 15, color: hubIds.map((h) => ROLE_COLOUR[hubs[h].role]), line: { color: "#08121c", width: 2 },
        opacity: hubIds.map((h) => (inScope.has(h) ? 1 : 0.25)) },
    },
    { type: "scattergeo", mode: "lines", hoverinfo: "skip", lon: [], lat: [], line: { color: "rgba(255,255,255,.25)", width: 1 } },
    { type: "scattergeo", mode: "markers", hoverinfo: "skip", lon: [], lat: [], marker: { size: 7, color: "#ffffff" } },
  ];
  const layout = {
    paper_bgcolor: "rgba(0,0,0,0)", margin: { l: 0, r: 0, t: 0, b: 0 }, showlegend: false,
    geo: {
      scope: "asia", resolution: 50, projection: { type: "mercator" },
      lonaxis: { range: [73, 136] }, lataxis: { range: [17, 54] },
      showland: true, landcolor: "#13273a", showcountries: true, countrycolor: "#2f4d68",
      showocean: true, oceancolor: "#08121c", showlakes: false, showframe: false, coastlinecolor: "#2f4d68",
      bgcolor: "rgba(0,0,0,0)",
    },
  };
  Plotly.react("map", data, layout, { ...PLOT_CONFIG, topojsonURL: "/vendor/topojson/" });
}

function endpoints(flow) {
  const hubs = state.network.hubs;
  const from = hubs[flow.from] ? hubs[flow.from].city : null;
  const to = hubs[flow.hub] && hubs[flow.hub].clusters[flow.cluster];
  return from && to ? [from, to] : null;
}

// Each new placement crosses the map from its origin hub's city to the cluster that took it.
function animateFlows() {
  const now = performance.now();
  const alive = state.flows.filter((f) => now - f.born < FLOW_MS * 2);
  if (!alive.length && !state.flows.length) return;
  state.flows = alive;
  const lines = { lon: [], lat: [] };
  const dots = { lon: [], lat: [] };
  for (const flow of alive) {
    const ends = endpoints(flow);
    if (!ends) continue;
    const [a, b] = ends;
    lines.lon.push(a.lon, b.lon, null);
    lines.lat.push(a.lat, b.lat, null);
    const k = Math.min(1, (now - flow.born) / FLOW_MS);
    dots.lon.push(a.lon + (b.lon - a.lon) * k);
    dots.lat.push(a.lat + (b.lat - a.lat) * k);
  }
  Plotly.restyle("map", { lon: [lines.lon, dots.lon], lat: [lines.lat, dots.lat] }, [2, 3]);
}

start().catch((error) => {
  console.error(error);
  $("#live").textContent = String(error.message || error);
});
