// The dashboard: usage over time by model, key and user, cost, time to first token, error rate and
// the live number of open streams — as SVG charts built with DOM APIs (names from the ledger are
// data, never markup). Data: GET /admin/stats with the admin key, polled every few seconds.

const SVG = "http://www.w3.org/2000/svg";
const KEY = "estuary.adminKey";
const PALETTE = ["#1f6feb", "#d97706", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#64748b"];
const $ = (id) => document.getElementById(id);
const openHistory = [];

function svg(name, attributes = {}, text = null) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text !== null) element.textContent = text;
  return element;
}

function size(target) {
  const box = target.getBoundingClientRect();
  return { width: Math.max(box.width, 200), height: Math.max(box.height, 60) };
}

function empty(target, message = "no data yet") {
  const { width, height } = size(target);
  target.replaceChildren(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle",
    class: "empty" }, message));
}

/** Vertical bars, stacked by series: rows = [{label, parts: [{series, value}]}]. */
function stackedBars(target, rows, format = (v) => String(v)) {
  if (!rows.length) return empty(target);
  const { width, height } = size(target);
  const series = [...new Set(rows.flatMap((row) => row.parts.map((p) => p.series)))];
  const max = Math.max(...rows.map((row) => row.parts.reduce((sum, p) => sum + p.value, 0)), 1);
  const left = 44, bottom = 22, top = 16;
  const slot = (width - left) / rows.length;
  const nodes = [svg("text", { x: left - 6, y: top + 4, "text-anchor": "end" }, format(max))];
  rows.forEach((row, i) => {
    let y = height - bottom;
    for (const part of row.parts) {
      const h = ((height - bottom - top) * part.value) / max;
      y -= h;
      const color = PALETTE[series.indexOf(part.series) % PALETTE.length];
      const rect = svg("rect", { x: left + i * slot + slot * 0.15, y, width: slot * 0.7,
        height: Math.max(h, 0), fill: color, "data-series": part.series, "data-value": part.value });
      rect.append(svg("title", {}, `${row.label} · ${part.series}: ${format(part.value)}`));
      nodes.push(rect);
    }
    nodes.push(svg("text", { x: left + i * slot + slot / 2, y: height - 6, "text-anchor": "middle" },
      row.label));
  });
  series.forEach((name, i) => {
    nodes.push(svg("rect", { x: left + i * 90, y: 2, width: 9, height: 9,
      fill: PALETTE[i % PALETTE.length] }));
    nodes.push(svg("text", { x: left + i * 90 + 13, y: 10 }, name));
  });
  target.replaceChildren(...nodes);
}

/** Horizontal bars: items = [{label, value}], the largest first (zeros only if `keepZero`). */
function bars(target, items, format = (v) => String(v), keepZero = false) {
  items = items.filter((item) => keepZero || item.value > 0)
    .sort((a, b) => b.value - a.value).slice(0, 8);
  if (!items.length) return empty(target);
  const { width } = size(target);
  const row = 22, labelWidth = 130;
  const max = Math.max(...items.map((item) => item.value), 1e-9);
  target.setAttribute("viewBox", `0 0 ${width} ${items.length * row + 4}`);
  target.replaceChildren(...items.flatMap((item, i) => {
    const w = ((width - labelWidth - 70) * item.value) / max;
    const bar = svg("rect", { x: labelWidth, y: i * row + 4, width: Math.max(w, 1), height: row - 8,
      fill: PALETTE[i % PALETTE.length], "data-value": item.value });
    bar.append(svg("title", {}, `${item.label}: ${format(item.value)}`));
    return [
      svg("text", { x: labelWidth - 6, y: i * row + 15, "text-anchor": "end" },
        item.label.length > 20 ? `${item.label.slice(0, 19)}…` : item.label),
      bar,
      svg("text", { x: labelWidth + w + 6, y: i * row + 15 }, format(item.value)),
    ];
  }));
}

function line(target, values) {
  const { width, height } = size(target);
  if (values.length < 2) return empty(target, "collecting…");
  const max = Math.max(...values, 1);
  const points = values.map((v, i) =>
    `${(i / (values.length - 1)) * width},${height - 4 - ((height - 8) * v) / max}`);
  target.replaceChildren(svg("polyline", { points: points.join(" "), fill: "none",
    stroke: PALETTE[0], "stroke-width": 2 }));
}

const money = (micro) => (micro / 1_000_000).toFixed(micro >= 1_000_000 ? 2 : 4);

function byDay(rows, value) {
  const days = new Map();
  for (const row of rows) {
    if (!days.has(row.day)) days.set(row.day, []);
    days.get(row.day).push({ series: row.alias, value: value(row) });
  }
  return [...days].sort(([a], [b]) => a.localeCompare(b))
    .map(([day, parts]) => ({ label: day.slice(5), parts }));
}

function render(stats) {
  stackedBars($("requests-by-day"), byDay(stats.by_day, (row) => row.requests));
  stackedBars($("cost-by-day"), byDay(stats.by_day, (row) => row.cost_micro), money);
  bars($("cost-by-key"), stats.by_key.map((row) => ({ label: row.key, value: row.cost_micro })), money);
  bars($("requests-by-user"), stats.by_user.filter((row) => row.user)
    .map((row) => ({ label: row.user, value: row.requests })));
  const live = stats.live.aliases;
  stackedBars($("ttft"), Object.entries(live).filter(([, row]) => row.ttft_p50_ms !== null)
    .map(([alias, row]) => ({ label: alias, parts: [
      { series: "p50", value: Math.round(row.ttft_p50_ms) },
      { series: "p95 − p50", value: Math.max(0, Math.round(row.ttft_p95_ms - row.ttft_p50_ms)) },
    ] })));
  bars($("error-rate"), stats.by_alias.map((row) => ({ label: row.alias,
    value: row.requests ? (100 * row.errors) / row.requests : 0 })), (v) => `${v.toFixed(1)} %`,
    true);
  $("open-streams").textContent = String(stats.live.open_streams);
  openHistory.push(stats.live.open_streams);
  if (openHistory.length > 60) openHistory.shift();
  line($("open-history"), openHistory);
}

async function refresh() {
  const key = localStorage.getItem(KEY) ?? "";
  if (!key) {
    $("status").textContent = "Enter the admin key ([auth] admin_key) to load the dashboard.";
    return;
  }
  try {
    const response = await fetch(`/admin/stats?since=${encodeURIComponent($("since").value)}`, {
      headers: { Authorization: `Bearer ${key}` },
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error?.message ?? `HTTP ${response.status}`);
    render(body);
    $("status").textContent = `Updated ${new Date().toLocaleTimeString()}`;
    $("status").classList.remove("error");
  } catch (error) {
    $("status").textContent = `Could not load the statistics: ${error.message}`;
    $("status").classList.add("error");
  }
}

$("admin-key").value = localStorage.getItem(KEY) ?? "";
$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem(KEY, $("admin-key").value.trim());
  refresh();
});
$("since").addEventListener("change", refresh);
refresh();
setInterval(refresh, 3000);
