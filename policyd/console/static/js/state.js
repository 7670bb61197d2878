// Live state: sessions and proxies per user, and the counts behind rate(), from the state
// backend of stateful rules (GET /ui/api/state, every 3 seconds).
import { api, byId, el, every, replace, say, showMode } from "./common.js";

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleTimeString([], { hour12: false }) : "";
}

function table(caption, columns, rows) {
  return el(
    "div",
    { class: "table-wrap" },
    el(
      "table",
      {},
      el("caption", {}, caption),
      el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col" }, c)))),
      el("tbody", {}, rows.map((r) => el("tr", {}, r.map((v) => el("td", { class: "mono" }, v ?? ""))))),
    ),
  );
}

function userSection(user) {
  return el(
    "section",
    { class: "card", "aria-label": `User ${user.user}` },
    el("h2", {}, user.user),
    table(
      `Sessions of ${user.user}`,
      ["run_id", "client address", "since", "last seen"],
      (user.sessions || []).map((s) => [s.run_id, s.client_address, when(s.since), when(s.last_seen)]),
    ),
    table(
      `Proxies of ${user.user}`,
      ["name", "type", "remote port", "subdomain", "custom domains", "run_id", "since"],
      (user.proxies || []).map((p) => [p.name, p.type, p.remote_port || "", p.subdomain, (p.custom_domains || []).join(", "), p.run_id, when(p.since)]),
    ),
  );
}

async function refresh() {
  const doc = await api("api/state");
  if (!doc.in_use) {
    replace(
      byId("state"),
      el("p", { id: "state-off", class: "notice off" }, "Stateful rules are not in use: no rule of this policy calls proxies(), sessions() or rate(), so policyd keeps no live state."),
    );
    say("");
    return;
  }
  const users = doc.users || [];
  const rates = doc.rates || [];
  replace(
    byId("state"),
    el("p", { class: doc.healthy ? "notice" : "notice off" }, `Backend ${doc.backend}: ${doc.healthy ? "healthy" : "unhealthy"}${doc.detail ? ` (${doc.detail})` : ""}.`),
    users.length ? el("div", { class: "grid two" }, users.map(userSection)) : el("p", { class: "muted" }, "No live sessions or proxies."),
    el("h2", {}, "Rate counters"),
    rates.length
      ? table("Counts behind rate()", ["key", "count", "per (s)"], rates.map((r) => [r.key, r.count, r.per_s]))
      : el("p", { class: "muted" }, "No rate() counters are live."),
    doc.truncated ? el("p", { class: "muted" }, "Only the first entries are shown.") : null,
  );
  say(`Updated ${new Date().toLocaleTimeString([], { hour12: false })}`);
}

showMode();
every(3000, refresh);
