// Overview: the serving policy, the last reload (errors with their line and caret), and charts
// of the last 15 minutes from /ui/api/charts.
import { api, byId, consoleRoot, dateTimeText, el, every, replace, say, showMode } from "./common.js";

const OUTCOME_COLORS = { allow: "#1d7a3d", reject: "#b3261e", rewrite: "#8a5a00", error: "#7b1fa2" };
const OP_COLORS = {
  Login: "#1f5fbf", NewProxy: "#8a5a00", CloseProxy: "#5b6475",
  Ping: "#1d7a3d", NewWorkConn: "#7b1fa2", NewUserConn: "#b3261e",
};
const charts = {};

// A version, linked to its files in the version history (GET /versions/{version}) when kept.
function versionLink(version, url) {
  // `url` is the service's path (/versions/...); the console is at …/ui/ beside it.
  return url ? el("a", { href: new URL(`..${url}`, consoleRoot()).href, title: "Its files, from the version history" }, version) : version;
}

function showPolicy(overview) {
  const policy = overview.policy;
  replace(
    byId("serving"),
    el("dt", {}, "Version"), el("dd", { id: "serving-version" }, versionLink(policy.version, overview.history && overview.history.serving)),
    el("dt", {}, "Loaded"), el("dd", {}, dateTimeText(policy.loaded_at)),
    el("dt", {}, "Rules"), el("dd", {}, `${policy.rule_count} in ${policy.files.length} files`),
    el("dt", {}, "Directory"), el("dd", {}, policy.directory),
    el("dt", {}, "Worker"), el("dd", {}, `pid ${overview.worker.pid} of ${overview.worker.workers}`),
  );
  const rows = [
    ...policy.files.map((f) => el("tr", {}, el("td", { class: "mono" }, f.path), el("td", {}, f.rules), el("td", { class: "mono" }, f.sha256.slice(0, 12)))),
    ...policy.data_files.map((f) => el("tr", {}, el("td", { class: "mono" }, f.path), el("td", {}, "data"), el("td", { class: "mono" }, f.sha256.slice(0, 12)))),
  ];
  replace(byId("files"), rows);
}

function showReload(overview) {
  const reloads = overview.reloads;
  const last = reloads.last_attempt;
  const counts = el("p", { class: "muted" }, `${reloads.successes} loaded, ${reloads.failures} refused since start-up.`);
  if (!last) {
    replace(byId("reload"), el("p", {}, "No reload since start-up."), counts);
    return;
  }
  if (last.ok) {
    replace(
      byId("reload"),
      el("p", { id: "reload-result" }, el("span", { class: "ok-text" }, "Loaded"), ` at ${dateTimeText(last.at)}: policy ${last.version}`, last.changed ? "" : " (no change)"),
      counts,
    );
    return;
  }
  replace(
    byId("reload"),
    el("p", { id: "reload-result" }, el("span", { class: "bad-text" }, "Refused"), ` at ${dateTimeText(last.at)}: policy ${last.version} keeps serving. ${last.errors.length} error(s):`),
    el("div", { id: "reload-errors", class: "diagnostics" }, last.errors.map((e) => el("pre", { class: "diagnostic error" }, e.text))),
    counts,
  );
}

// The shadow policy (--shadow-policies): its version, its reloads, how its decisions compare.
function showShadow(shadow) {
  const card = byId("shadow-card");
  card.hidden = !shadow;
  if (!shadow) return;
  const policy = shadow.policy;
  const last = shadow.reloads.last_attempt;
  const counts = shadow.decisions;
  const skipped = Object.entries(shadow.skipped).filter(([, n]) => n).map(([why, n]) => `${n} ${why.replace("_", " ")}`);
  const reload = !last
    ? "loaded at start-up"
    : last.ok
      ? [el("span", { class: "ok-text" }, "Loaded"), ` at ${dateTimeText(last.at)}`]
      : [el("span", { class: "bad-text" }, "Refused"), ` at ${dateTimeText(last.at)}: ${last.errors.map((e) => `${e.location}: ${e.message}`).join("; ")}`];
  replace(
    byId("shadow"),
    el(
      "dl",
      { class: "facts" },
      el("dt", {}, "Directory"), el("dd", {}, shadow.directory),
      el("dt", {}, "Version"), el("dd", { id: "shadow-version" }, policy ? policy.version : "not loaded: no shadow decisions until an edit loads"),
      policy ? [el("dt", {}, "Loaded"), el("dd", {}, dateTimeText(policy.loaded_at))] : null,
      el("dt", {}, "Last reload"), el("dd", { id: "shadow-reload" }, reload, ` (${shadow.reloads.successes} loaded, ${shadow.reloads.failures} refused)`),
      el("dt", {}, "Decisions"),
      el("dd", { id: "shadow-counts" }, `${counts.same} same, ${counts.different} different, ${counts.error} error`, skipped.length ? `; not shadowed: ${skipped.join(", ")}` : ""),
    ),
    el("p", {}, el("a", { href: "decisions?shadow=disagree", id: "shadow-disagreements" }, "Show the decisions it disagrees with")),
  );
}

function sumBy(columns, index) {
  const out = {};
  for (const [name, values] of Object.entries(columns)) {
    const key = name.split("/")[index];
    const total = out[key] || (out[key] = new Array(values.length).fill(0));
    values.forEach((v, i) => { total[i] += v; });
  }
  return out;
}

function draw(id, x, series, colors, options = {}) {
  const host = byId(id);
  const width = Math.max(host.clientWidth, 200);
  const names = Object.keys(series);
  const data = [x, ...names.map((n) => series[n])];
  const config = {
    width,
    height: 170,
    legend: { show: true },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max || 0, options.floor || 1)] } },
    series: [{}, ...names.map((n) => ({ label: n, stroke: colors[n] || "#1f5fbf", width: 1.5, spanGaps: false, points: { show: false } }))],
    axes: [{}, { size: 50 }],
  };
  const existing = charts[id];
  if (existing && existing.names === names.join()) {
    existing.plot.setData(data);
    if (existing.plot.width !== width) existing.plot.setSize({ width, height: 170 });
    return;
  }
  if (existing) existing.plot.destroy();
  host.replaceChildren();
  charts[id] = { names: names.join(), plot: new window.uPlot(config, data, host) };
}

function total(values) {
  return values.reduce((a, v) => a + (v || 0), 0);
}

async function refreshCharts() {
  const doc = await api("api/charts");
  const x = Array.from({ length: doc.points }, (_, i) => doc.start + i * doc.step_s);
  const byOutcome = sumBy(doc.decisions, 1);
  const byOp = sumBy(doc.decisions, 0);
  if (!Object.keys(byOutcome).length) byOutcome.allow = new Array(doc.points).fill(0);
  if (!Object.keys(byOp).length) byOp.Login = new Array(doc.points).fill(0);
  draw("chart-outcome", x, byOutcome, OUTCOME_COLORS);
  draw("chart-op", x, byOp, OP_COLORS);
  draw("chart-latency", x, { p50: doc.p50_us, p99: doc.p99_us }, { p50: "#1f5fbf", p99: "#b3261e" }, { floor: 10 });
  draw("chart-reloads", x, { loaded: doc.reloads_ok, refused: doc.reloads_failed }, { loaded: "#1d7a3d", refused: "#b3261e" });
  const decided = Object.values(byOutcome).reduce((a, v) => a + total(v), 0);
  const parts = Object.entries(byOutcome).map(([k, v]) => `${total(v)} ${k}`);
  const p99 = Math.max(0, ...doc.p99_us.filter((v) => v !== null));
  replace(
    byId("charts-summary"),
    `${decided} decisions in the last 15 minutes (${parts.join(", ")}); highest p99 decision time ${p99} µs; ` +
      `${total(doc.reloads_ok)} reloads loaded, ${total(doc.reloads_failed)} refused.`,
  );
}

async function refreshOverview() {
  const overview = await api("api/overview");
  showPolicy(overview);
  showReload(overview);
  showShadow(overview.shadow);
  say(`Updated ${new Date().toLocaleTimeString([], { hour12: false })}`);
}

showMode();
every(2000, refreshOverview);
every(5000, refreshCharts);
window.addEventListener("resize", () => refreshCharts().catch(() => {}));
