// Decisions: a live table of the latest decisions (GET /ui/api/decisions?after=SEQ, polled every
// second), filterable by op, user and outcome. A row opens in the playground with its request.
import { api, byId, el, every, outcomeBadge, say, showMode, timeText } from "./common.js";

const OPS = ["Login", "NewProxy", "CloseProxy", "Ping", "NewWorkConn", "NewUserConn"];
const OUTCOMES = ["allow", "reject", "rewrite", "error"];
const MAX_ROWS = 500;
let last = 0;
let paused = false;
let shown = 0;

for (const op of OPS) byId("filter-op").append(el("option", { value: op }, op));
for (const outcome of OUTCOMES) byId("filter-outcome").append(el("option", { value: outcome }, outcome));

function value(text) {
  return typeof text === "string" ? JSON.stringify(text) : JSON.stringify(text ?? null);
}

function changesText(row) {
  return (row.changes || []).map((c) => `${c.field}: ${value(c.before)} → ${value(c.after)}`).join("; ");
}

function reasonText(row) {
  if (row.error) return `${row.error.code}: ${row.error.message}${row.failed_open ? " (failed open)" : ""}`;
  const warnings = (row.warnings || []).map((w) => `warn: ${w.message}`);
  return [row.reason, ...warnings].filter(Boolean).join(" · ");
}

// Where the shadow policy decided otherwise: the line's `shadow` object.
function shadowText(shadow) {
  if (shadow.error && !shadow.rule) return `shadow failed: ${shadow.error.message}`;
  const by = shadow.rule ? ` by ${shadow.rule}` : "";
  const why = shadow.error ? `: ${shadow.error.code}: ${shadow.error.message}` : shadow.reason ? `: ${shadow.reason}` : "";
  const changes = (shadow.changes || []).map((c) => `${c.field} → ${value(c.after)}`).join("; ");
  return `shadow ${shadow.policy_version || ""} would ${shadow.outcome}${by}${why}${changes ? ` (${changes})` : ""}`;
}

function rowElement(row) {
  return el(
    "tr",
    { dataset: { seq: row.seq, op: row.op, outcome: row.outcome, shadow: row.shadow ? "disagree" : undefined } },
    el("td", {}, el("time", { datetime: row.time }, timeText(row.time))),
    el("td", {}, row.op),
    el("td", { class: "user" }, row.user),
    el("td", {}, row.proxy_name || ""),
    el("td", {}, outcomeBadge(row.outcome)),
    el("td", { class: "mono" }, row.rule),
    el("td", { class: "wrap reason" }, reasonText(row), row.shadow ? el("div", { class: "shadow-note" }, shadowText(row.shadow)) : null),
    el("td", { class: "wrap mono" }, changesText(row)),
    el("td", {}, el("a", { href: `playground#decision=${row.seq}`, class: "open" }, "Open in playground")),
  );
}

function filters() {
  const params = new URLSearchParams();
  for (const name of ["op", "user", "outcome", "shadow"]) {
    const v = byId(`filter-${name}`).value.trim();
    if (v) params.set(name, v);
  }
  return params;
}

async function refresh() {
  if (paused) return;
  const params = filters();
  params.set("after", String(last));
  const doc = await api(`api/decisions?${params}`);
  byId("filter-shadow-label").hidden = !doc.shadow && !byId("filter-shadow").value;
  const tbody = byId("rows");
  const fresh = doc.decisions.map(rowElement);
  if (fresh.length) tbody.prepend(...fresh);
  while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(tbody.rows.length - 1);
  shown = tbody.rows.length;
  last = doc.last;
  say(`${shown} decision${shown === 1 ? "" : "s"} shown (the last ${doc.kept} are kept); live, updated every second.`);
}

function restart() {
  last = 0;
  byId("rows").replaceChildren();
  refresh().catch((e) => say(e.message, "error"));
}

byId("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  restart();
});
// A link may ask for a filter: decisions?shadow=disagree (from the overview), ?op=, ?outcome=, ?user=.
for (const [name, v] of new URLSearchParams(window.location.search)) {
  const input = document.getElementById(`filter-${name}`);
  if (input) input.value = v;
}
byId("filter-op").addEventListener("change", restart);
byId("filter-shadow").addEventListener("change", restart);
byId("filter-outcome").addEventListener("change", restart);
let typing = null;
byId("filter-user").addEventListener("input", () => {
  clearTimeout(typing);
  typing = setTimeout(restart, 300);
});
byId("pause").addEventListener("click", (event) => {
  paused = !paused;
  event.currentTarget.setAttribute("aria-pressed", String(paused));
  event.currentTarget.textContent = paused ? "Resume" : "Pause";
  if (!paused) refresh();
  else say("Paused: new decisions are not shown until you resume.");
});

showMode();
every(1000, refresh);
