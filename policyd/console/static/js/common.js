// Shared by every console page: the API client, DOM helpers, the header's mode badge.
// Pages build their DOM with el() and text nodes only (never innerHTML with data), so a value
// from a request (a user name, a reason) can never become markup.

const TOKEN_KEY = "policyd.console.token";

export class ApiError extends Error {
  constructor(status, doc) {
    super(doc && doc.error ? doc.error : `HTTP ${status}`);
    this.status = status;
    this.doc = doc || {};
    this.code = this.doc.code || "";
  }
}

// Calls a console API (paths are relative to /ui/). POST bodies are JSON; `auth` adds the
// stored edit token as a bearer token.
export async function api(path, { method = "GET", body, auth = false } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (auth) {
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
  }
  const response = await fetch(new URL(path, consoleRoot()), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  let doc = null;
  try {
    doc = await response.json();
  } catch (_) {
    doc = null;
  }
  if (!response.ok) throw new ApiError(response.status, doc);
  return doc;
}

// The console's root URL (…/ui/), whatever page this is.
export function consoleRoot() {
  const here = new URL(window.location.href);
  const index = here.pathname.indexOf("/ui/");
  return new URL(index >= 0 ? here.pathname.slice(0, index + 4) : "/ui/", here.origin);
}

export function getToken() {
  return window.sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) window.sessionStorage.setItem(TOKEN_KEY, token);
  else window.sessionStorage.removeItem(TOKEN_KEY);
}

// el("td", {class: "x", dataset: {seq: 3}}, "text", child) -> an element.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export function byId(id) {
  return document.getElementById(id);
}

export function timeText(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toLocaleTimeString([], { hour12: false }) + "." + String(date.getMilliseconds()).padStart(3, "0");
}

export function dateTimeText(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString([], { hour12: false });
}

export function jsonText(value) {
  return JSON.stringify(value, null, 2);
}

export function outcomeBadge(outcome) {
  return el("span", { class: `badge outcome-${outcome}` }, outcome);
}

// A message in the page's status line (a polite live region).
export function say(text, kind = "info") {
  const status = byId("status");
  if (!status) return;
  status.textContent = text;
  status.dataset.kind = kind;
}

// Runs `work` now and every `ms` while the tab is visible; errors are shown, not thrown.
export function every(ms, work) {
  let timer = null;
  const run = async () => {
    timer = null;
    try {
      await work();
    } catch (error) {
      say(`Could not reach policyd: ${error.message}`, "error");
    }
    if (!document.hidden) timer = setTimeout(run, ms);
  };
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer === null) run();
  });
  run();
}

// The header badge: the console's mode, and why editing is off.
export async function showMode() {
  const badge = byId("mode");
  if (!badge) return null;
  try {
    const overview = await api("api/overview");
    badge.textContent = overview.mode === "edit" && overview.edit.enabled ? "edit mode" : "read only";
    badge.title = overview.edit.enabled ? "Saving policy files is on" : overview.edit.reason;
    return overview;
  } catch (error) {
    badge.textContent = "offline";
    return null;
  }
}

// Error diagnostics (from check, save and eval) as the text `policyd check` prints.
export function diagnosticsList(items, label) {
  if (!items || !items.length) return null;
  return el(
    "div",
    { class: "diagnostics", role: "group", "aria-label": label },
    items.map((d) => el("pre", { class: `diagnostic ${d.severity || "error"}` }, d.text || d.message)),
  );
}
