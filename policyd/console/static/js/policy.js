// Policy: browse the rule, data and test files; in edit mode, check and save them. A save loads
// the whole candidate policy first (and runs its test cases) and writes only when it loads.
import { ApiError, api, byId, diagnosticsList, el, getToken, replace, say, setToken, showMode } from "./common.js";
import { createEditor, languageOfPath } from "./editor.js";

const editor = createEditor(byId("file-editor"), { language: "rules", label: "File contents", readOnly: true, minHeight: "18rem", onRun: () => check() });
let editable = false;
let current = null; // {path, sha256 (null: a new file), text}

function setEditable(enabled, reason) {
  editable = enabled;
  const notice = byId("edit-state");
  notice.textContent = enabled
    ? "Editing is on. Saving loads the whole policy with your change first (and runs its test cases); a file is written only when the policy loads."
    : `Editing is off: ${reason}. Files are shown read-only.`;
  notice.className = enabled ? "notice" : "notice off";
  byId("token-form").hidden = !enabled;
  for (const id of ["check", "save"]) byId(id).disabled = !enabled;
  byId("new-file").disabled = !enabled;
  editor.setReadOnly(!enabled || !current);
}

async function showWho() {
  const who = byId("who");
  if (!getToken()) {
    who.textContent = "No token given: checking and saving need one.";
    return;
  }
  try {
    const doc = await api("api/whoami", { method: "POST", body: {}, auth: true });
    who.textContent = `Editing as ${doc.name}.`;
  } catch (error) {
    who.textContent = error.status === 401 ? "That token is not valid." : error.message;
  }
}

function fileButton(file) {
  return el(
    "li",
    {},
    el("button", { type: "button", dataset: { path: file.path }, onclick: () => open(file.path) }, file.path, file.rules !== null && file.rules !== undefined ? el("span", { class: "muted" }, ` (${file.rules})`) : null),
  );
}

async function listFiles() {
  const doc = await api("api/files");
  const groups = { rules: "Rule files", data: "Data files", tests: "Test cases" };
  const items = [];
  for (const [kind, title] of Object.entries(groups)) {
    const files = doc.files.filter((f) => f.kind === kind);
    if (!files.length) continue;
    items.push(el("li", { class: "group", "aria-hidden": "true" }, title), ...files.map(fileButton));
  }
  replace(byId("file-list"), items);
  const select = byId("new-file");
  replace(select, el("option", { value: "" }, "choose an op…"), doc.missing_rule_files.map((p) => el("option", { value: p }, p)));
  markCurrent();
}

function markCurrent() {
  for (const button of byId("file-list").querySelectorAll("button")) {
    if (current && button.dataset.path === current.path) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
}

async function open(path) {
  const file = await api(`api/file?path=${encodeURIComponent(path)}`);
  current = { path, sha256: file.sha256, text: file.text };
  showFile();
}

function showFile() {
  byId("file-heading").textContent = current.path + (current.sha256 ? "" : " (new)");
  editor.setLanguage(languageOfPath(current.path));
  editor.text = current.text;
  editor.setReadOnly(!editable);
  byId("outcome").replaceChildren();
  byId("save-anyway").hidden = true;
  markCurrent();
  say(editable ? `Editing ${current.path}.` : `Showing ${current.path}.`);
}

function testsSection(tests) {
  if (!tests) return el("p", { class: "muted" }, "No tests/ directory: no test cases were run.");
  const failing = tests.cases.filter((c) => !c.ok);
  return [
    el("p", { id: "tests-summary" }, `Test cases: ${tests.passed} passed, ${tests.failed} failed.`),
    failing.length
      ? el("ul", { class: "failing" }, failing.map((c) => el("li", {}, el("strong", {}, `${c.file}:${c.line} ${c.name}`), el("pre", {}, c.problems.join("\n")))))
      : null,
  ];
}

function showReport(report, headline, kind) {
  const errors = report.errors || [];
  editor.showDiagnostics([...errors, ...(report.warnings || [])].filter((d) => d.file === report.path));
  replace(
    byId("outcome"),
    el("p", { id: "save-result", class: kind === "ok" ? "ok-text" : kind === "error" ? "bad-text" : "" }, headline),
    diagnosticsList(errors, "Load errors"),
    report.loads ? testsSection(report.tests) : null,
    diagnosticsList(report.warnings, "Lint warnings"),
    report.diff ? [el("h3", {}, "Diff"), el("pre", { id: "diff" }, report.diff)] : el("p", { class: "muted" }, "No change."),
  );
}

function request() {
  return { path: current.path, text: editor.text };
}

async function check() {
  if (!current || !editable) return;
  say("Checking…");
  try {
    const report = await api("api/check", { method: "POST", body: request(), auth: true });
    const headline = !report.loads
      ? "This change would not load: saving it is refused."
      : `Loads as policy ${report.version_after} (serving ${report.version_before}).`;
    showReport(report, headline, report.loads ? "ok" : "error");
    say("Checked; nothing was written.");
  } catch (error) {
    refused(error);
  }
}

async function save(allowFailingTests = false) {
  if (!current || !editable) return;
  say("Saving…");
  byId("save-anyway").hidden = true;
  try {
    const report = await api("api/save", {
      method: "POST",
      body: { ...request(), base_sha256: current.sha256, allow_failing_tests: allowFailingTests },
      auth: true,
    });
    if (report.unchanged) {
      showReport(report, "Nothing to save: the file is unchanged.", "ok");
      say("Unchanged.");
      return;
    }
    await listFiles();
    await open(current.path); // the saved file, with its new hash
    showReport(report, `Saved. Policy ${report.version_before} → ${report.version_after}; waiting for the service to load it…`, "ok");
    await waitForVersion(report.version_after);
  } catch (error) {
    refused(error);
  }
}

async function waitForVersion(version) {
  for (let i = 0; i < 40; i += 1) {
    const overview = await api("api/overview");
    if (overview.policy.version === version) {
      byId("save-result").textContent = `Saved and serving: policy ${version}.`;
      say(`Serving policy ${version}.`, "ok");
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  say(`Saved, but the service is not serving ${version} yet: see the overview.`, "error");
}

function refused(error) {
  if (!(error instanceof ApiError)) {
    say(error.message, "error");
    return;
  }
  if (error.doc.report) {
    showReport(error.doc.report, error.message, "error");
    byId("save-anyway").hidden = error.code !== "tests_fail";
  } else {
    replace(byId("outcome"), el("p", { id: "save-result", class: "bad-text" }, error.message));
  }
  say(error.status === 401 ? "Give a valid edit token first." : error.message, "error");
}

byId("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken(byId("token").value.trim());
  byId("token").value = "";
  showWho();
});
byId("forget").addEventListener("click", () => {
  setToken("");
  showWho();
});
byId("check").addEventListener("click", () => check());
byId("save").addEventListener("click", () => save(false));
byId("save-anyway").addEventListener("click", () => save(true));
byId("new-file").addEventListener("change", (event) => {
  const path = event.target.value;
  if (!path) return;
  current = { path, sha256: null, text: "" };
  showFile();
  event.target.value = "";
});

(async () => {
  try {
    const overview = await showMode();
    if (overview) setEditable(overview.edit.enabled, overview.edit.reason);
    await listFiles();
    await showWho();
    const first = byId("file-list").querySelector("button");
    const wanted = new URLSearchParams(window.location.hash.slice(1)).get("file");
    if (wanted) await open(wanted);
    else if (first) await open(first.dataset.path);
  } catch (error) {
    say(error.message, "error");
  }
})();
