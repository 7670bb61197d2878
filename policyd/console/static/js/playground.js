// Playground: edit a rule file and a request, and see what policyd would answer (POST
// /ui/api/eval), with every rule reached, its value, the content diff and the warnings.
import { api, byId, diagnosticsList, el, jsonText, outcomeBadge, replace, say, showMode } from "./common.js";
import { createEditor } from "./editor.js";

const OPS = ["Login", "NewProxy", "CloseProxy", "Ping", "NewWorkConn", "NewUserConn"];
const MASK = "***";
let serving = { op: "", text: null }; // the serving rule file of the chosen op (null: none)
let masked = []; // paths of the request that the decision log masked
const examples = new Map();

const run = () => evaluate().catch((e) => say(e.message, "error"));
const contentEditor = createEditor(byId("content-editor"), { language: "json", label: "Request content (JSON)", onRun: run, minHeight: "10rem" });
const rulesEditor = createEditor(byId("rules-editor"), { language: "rules", label: "Rule file", onRun: run });

for (const op of OPS) byId("op").append(el("option", { value: op }, op));

let ruleFiles = null; // the serving policy's rule files, asked once (a missing one is no error)

async function loadRules(op) {
  const rel = `${op}.rules`;
  byId("rule-file").textContent = rel;
  if (ruleFiles === null) {
    const doc = await api("api/files");
    ruleFiles = new Set(doc.files.filter((f) => f.kind === "rules").map((f) => f.path));
  }
  serving = { op, text: ruleFiles.has(rel) ? (await api(`api/file?path=${encodeURIComponent(rel)}`)).text : null };
  rulesEditor.text = serving.text ?? "";
  say(serving.text === null ? `${rel} does not exist: ${op} is allowed unchanged unless you write rules here.` : `Editing a copy of the serving ${rel}.`);
}

async function loadExamples() {
  const doc = await api("api/examples");
  const groups = { policyd: el("optgroup", { label: "Built into policyd" }), policy: el("optgroup", { label: "The policy's tests/requests" }) };
  for (const example of doc.examples) {
    const key = `${example.from}:${example.name}`;
    examples.set(key, example);
    groups[example.from].append(el("option", { value: key }, example.name));
  }
  for (const group of Object.values(groups)) if (group.children.length) byId("example").append(group);
  const first = examples.get("policyd:NewProxy-tcp") || examples.values().next().value;
  if (first && !window.location.hash) await useRequest(first.op, first.content, []);
}

async function useRequest(op, content, maskedPaths) {
  byId("op").value = op;
  contentEditor.text = jsonText(content);
  masked = maskedPaths;
  await loadRules(op);
  showSecrets(); // which masked values the rules read: known once the rule file is loaded
}

// The masked values a rule reads (judged by the field's name appearing in the rule file) get an
// input; the playground cannot know the real value, so it asks.
function showSecrets() {
  const rules = rulesEditor.text;
  const needed = masked.filter((path) => rules.includes(path.split(".").pop()));
  const others = masked.filter((path) => !needed.includes(path));
  if (!masked.length) {
    byId("secrets").replaceChildren();
    return;
  }
  const inputs = needed.map((path, i) =>
    el("label", {}, `content.${path} (a rule reads it)`, el("input", { type: "password", id: `secret-${i}`, dataset: { path }, autocomplete: "off", spellcheck: "false" })),
  );
  replace(
    byId("secrets"),
    el(
      "fieldset",
      { class: "secrets" },
      el("legend", {}, "Masked values"),
      el("p", { class: "muted" }, "The decision log keeps credentials masked (***). Give the real value where a rule needs it; it is sent only to evaluate."),
      inputs,
      others.length ? el("p", { class: "muted" }, `Also masked, not read by these rules: ${others.map((p) => `content.${p}`).join(", ")}.`) : null,
    ),
  );
}

function setPath(object, path, value) {
  const keys = path.split(".");
  let node = object;
  for (const key of keys.slice(0, -1)) {
    if (typeof node[key] !== "object" || node[key] === null) return;
    node = node[key];
  }
  node[keys[keys.length - 1]] = value;
}

function jsonErrorPosition(text, message) {
  const lineCol = /line (\d+) column (\d+)/.exec(message);
  if (lineCol) return { line: Number(lineCol[1]), column: Number(lineCol[2]) };
  const position = /position (\d+)/.exec(message);
  if (!position) return { line: 1, column: 0 };
  const before = text.slice(0, Number(position[1]));
  const lines = before.split("\n");
  return { line: lines.length, column: lines[lines.length - 1].length + 1 };
}

function readContent() {
  const text = contentEditor.text;
  let content;
  try {
    content = JSON.parse(text);
  } catch (error) {
    contentEditor.showDiagnostics([{ ...jsonErrorPosition(text, error.message), message: `not valid JSON: ${error.message}` }]);
    throw new Error("The request content is not valid JSON (see the marked line).");
  }
  if (typeof content !== "object" || content === null || Array.isArray(content)) {
    contentEditor.showDiagnostics([{ line: 1, column: 1, message: "the content is a JSON object" }]);
    throw new Error("The request content must be a JSON object.");
  }
  contentEditor.showDiagnostics([]);
  const stillMasked = [];
  for (const input of byId("secrets").querySelectorAll("input[data-path]")) {
    if (input.value) setPath(content, input.dataset.path, input.value);
    else stillMasked.push(input.dataset.path);
  }
  return { content, stillMasked };
}

function stepResult(step) {
  const shown = (v) => JSON.stringify(v);
  if (step.action === "let") return `= ${shown(step.value)}`;
  const when = step.condition === true && step.fired ? "" : `when → ${shown(step.condition)}; `;
  if (!step.fired) return `${when}not fired`;
  if (step.action === "set") return `${when}fired: set to ${shown(step.value)}`;
  return `${when}fired`;
}

// Which state the rules read: the service's live state, through a view that records nothing.
function stateNote(state) {
  if (!state || !state.functions.length) return null;
  const calls = state.functions.map((f) => `${f}()`).join(", ");
  const where = state.backend ? `the service's live state (${state.backend} backend)` : "an empty state";
  return el("p", { id: "state-note", class: "notice" }, `${calls} read ${where} without changing it: rate() answers as if this request counted; nothing was counted or recorded.`);
}

function showResult(result, stillMasked) {
  const out = byId("result");
  if (!result.ok) {
    const mine = result.errors.filter((e) => e.file === result.rule_file);
    rulesEditor.showDiagnostics(mine);
    replace(
      out,
      el("p", { id: "outcome" }, el("span", { class: "bad-text" }, "The rule file does not load"), `: ${result.errors.length} error(s). The service would refuse this edit and keep serving its last good policy.`),
      diagnosticsList(result.errors, "Load errors"),
    );
    return;
  }
  rulesEditor.showDiagnostics(result.lint.filter((w) => w.file === result.rule_file));
  const x = result.explanation;
  const by = x.rule ? ` by ${x.rule}` : " (no reject or allow fired)";
  const headline = x.error
    ? [outcomeBadge("error"), ` ${x.rule} failed: ${x.error.message}; frps gets ${x.failed_open ? "allow (fail-open)" : `reject “${x.reason}” (fail-closed)`}`]
    : [outcomeBadge(x.outcome), by, x.outcome === "reject" ? `: ${x.reason}` : ""];
  const trace = x.trace.length
    ? el(
        "table",
        { class: "trace" },
        el("caption", {}, `Rules reached in ${result.rule_file}`),
        el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Rule"), el("th", { scope: "col" }, "Source"), el("th", { scope: "col" }, "Result"))),
        el("tbody", {}, x.trace.map((s) => el("tr", { class: s.fired ? "fired" : "" }, el("td", { class: "mono" }, s.rule), el("td", { class: "mono wrap" }, s.source), el("td", { class: "mono wrap" }, stepResult(s))))),
      )
    : el("p", { class: "muted" }, result.edited || serving.text !== null ? "No rule was reached." : `${x.op} has no rule file: allowed unchanged.`);
  replace(
    out,
    el("p", { id: "outcome", dataset: { outcome: x.error ? "error" : x.outcome } }, headline),
    stillMasked.length ? el("p", { class: "notice off" }, `Still masked (***): ${stillMasked.map((p) => `content.${p}`).join(", ")}. The real request may decide differently.`) : null,
    el("h3", {}, "The answer frps gets"),
    el("pre", { id: "answer" }, JSON.stringify(x.answer)),
    el("p", { class: "muted" }, `Policy ${result.policy_version}${result.edited ? ` (your edit; serving ${result.serving_version})` : " (serving)"}`),
    stateNote(result.state),
    trace,
    el("h3", {}, "Content diff"),
    x.changes.length ? el("ul", {}, x.changes.map((c) => el("li", { class: "mono" }, `content.${c.path}: ${JSON.stringify(c.before)} → ${JSON.stringify(c.after)}`))) : el("p", { class: "muted" }, "none"),
    el("h3", {}, "Warnings"),
    x.warnings.length ? el("ul", {}, x.warnings.map((w) => el("li", {}, `${w.rule}: ${w.message}`))) : el("p", { class: "muted" }, "none"),
    result.lint.length ? [el("h3", {}, "Lint"), diagnosticsList(result.lint, "Lint warnings")] : null,
  );
}

async function evaluate() {
  const { content, stillMasked } = readContent();
  const op = byId("op").value;
  const text = rulesEditor.text;
  const edited = serving.op !== op || text !== (serving.text ?? "");
  say("Evaluating…");
  const result = await api("api/eval", { method: "POST", body: { op, content, rules: edited ? text : null } });
  showResult(result, stillMasked);
  say(result.ok ? "Evaluated." : "The rule file does not load.", result.ok ? "ok" : "error");
}

byId("run").addEventListener("click", run);
byId("reset").addEventListener("click", () => {
  rulesEditor.text = serving.text ?? "";
  showSecrets();
});
byId("op").addEventListener("change", (event) => loadRules(event.target.value).catch((e) => say(e.message, "error")));
byId("example").addEventListener("change", (event) => {
  const example = examples.get(event.target.value);
  if (example) useRequest(example.op, example.content, []).catch((e) => say(e.message, "error"));
});
rulesEditor.view.dom.addEventListener("focusout", showSecrets);

async function openDecision() {
  const match = /decision=(\d+)/.exec(window.location.hash);
  if (!match) return false;
  const row = await api(`api/decisions/${match[1]}`);
  if (row.request === null) {
    say(`Decision ${row.seq}: its request was too large to keep; paste it below.`, "error");
    return true;
  }
  await useRequest(row.op, row.request, row.masked || []);
  say(`Decision ${row.seq} (${row.op} by ${row.user || "?"} at ${row.time}): ${row.outcome}${row.rule ? ` by ${row.rule}` : ""}.`);
  if (!masked.length || !byId("secrets").querySelector("input")) await evaluate();
  return true;
}

showMode();
(async () => {
  try {
    await loadExamples();
    await openDecision();
  } catch (error) {
    say(error.message, "error");
  }
})();
window.addEventListener("hashchange", () => openDecision().catch((e) => say(e.message, "error")));
