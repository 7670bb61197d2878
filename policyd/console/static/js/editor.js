// The console's code editor: CodeMirror 6 (vendored bundle), with a small mode for rule files,
// JSON and TOML, and errors shown at their line and column.
import {
  Compartment,
  EditorState,
  EditorView,
  StreamLanguage,
  bracketMatching,
  defaultHighlightStyle,
  defaultKeymap,
  drawSelection,
  highlightActiveLine,
  highlightActiveLineGutter,
  highlightSelectionMatches,
  highlightSpecialChars,
  history,
  historyKeymap,
  json,
  keymap,
  lineNumbers,
  lintGutter,
  lintKeymap,
  searchKeymap,
  setDiagnostics,
  syntaxHighlighting,
  toml,
} from "../vendor/codemirror/codemirror.js";

const STATEMENTS = /^(?:reject|allow|set|warn|let|when)\b/;
const OPERATORS = /^(?:and|or|not|in|is|if|else|for)\b/;
const CONSTANTS = /^(?:None|True|False)\b/;

// The rule language, for highlighting only (the service's parser is the one that judges).
const rules = StreamLanguage.define({
  name: "policyd-rules",
  token(stream) {
    if (stream.eatSpace()) return null;
    if (stream.peek() === "#") {
      stream.skipToEnd();
      return "comment";
    }
    if (stream.match(/^"(?:[^"\\]|\\.)*"?/) || stream.match(/^'(?:[^'\\]|\\.)*'?/)) return "string";
    if (stream.match(/^\d+(?:\.\d+)?/)) return "number";
    if (stream.match(STATEMENTS)) return "keyword";
    if (stream.match(OPERATORS)) return "operatorKeyword";
    if (stream.match(CONSTANTS)) return "atom";
    if (stream.match(/^[A-Za-z_]\w*/)) return "variableName";
    stream.next();
    return null;
  },
  languageData: { commentTokens: { line: "#" } },
});

function languageFor(name) {
  if (name === "json") return json();
  if (name === "toml") return StreamLanguage.define(toml);
  return rules;
}

export function languageOfPath(path) {
  if (path.endsWith(".json")) return "json";
  if (path.endsWith(".toml")) return "toml";
  return "rules";
}

// The editor lives in a shadow root of `parent`: there CodeMirror's styles go into an adopted
// style sheet, which the console's Content-Security-Policy (style sheets from its own files
// only) allows; on the document itself it would need an inline <style> element.
const theme = (minHeight) =>
  EditorView.theme({
    "&": { minHeight, maxHeight: "34rem", fontSize: "0.88rem", backgroundColor: "#fff" },
    "&.cm-focused": { outline: "3px solid #ffbf47" },
    ".cm-scroller": { fontFamily: "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace", minHeight },
  });

// createEditor(parent, {doc, language, label, readOnly, onRun, minHeight}) -> an editor handle.
// `onRun` is called on Ctrl-Enter / Cmd-Enter. Tab moves focus out (keyboard users are never
// trapped); Escape, then Tab, works as in every CodeMirror.
export function createEditor(parent, { doc = "", language = "rules", label = "Editor", readOnly = false, onRun, minHeight = "12rem" } = {}) {
  const root = parent.attachShadow({ mode: "open" });
  const languageSlot = new Compartment();
  const editableSlot = new Compartment();
  const runKeys = onRun
    ? [{ key: "Mod-Enter", run: () => { onRun(); return true; } }]
    : [];
  const view = new EditorView({
    parent: root,
    root,
    state: EditorState.create({
      doc,
      extensions: [
        lineNumbers(),
        highlightActiveLineGutter(),
        highlightSpecialChars(),
        history(),
        drawSelection(),
        bracketMatching(),
        highlightActiveLine(),
        highlightSelectionMatches(),
        lintGutter(),
        syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
        keymap.of([...runKeys, ...defaultKeymap, ...historyKeymap, ...searchKeymap, ...lintKeymap]),
        languageSlot.of(languageFor(language)),
        editableSlot.of([EditorState.readOnly.of(readOnly), EditorView.editable.of(!readOnly)]),
        EditorView.contentAttributes.of({ "aria-label": label }),
        EditorView.lineWrapping,
        theme(minHeight),
      ],
    }),
  });
  return {
    view,
    get text() {
      return view.state.doc.toString();
    },
    set text(value) {
      view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: value } });
      view.dispatch(setDiagnostics(view.state, []));
    },
    setLanguage(name) {
      view.dispatch({ effects: languageSlot.reconfigure(languageFor(name)) });
    },
    setReadOnly(value) {
      view.dispatch({
        effects: editableSlot.reconfigure([EditorState.readOnly.of(value), EditorView.editable.of(!value)]),
      });
    },
    // Shows diagnostics ({line, column, message, severity}) at their place; line 0 is the file.
    showDiagnostics(items) {
      const docState = view.state.doc;
      const marks = items.map((item) => {
        const lineNumber = Math.min(Math.max(item.line || 1, 1), docState.lines);
        const line = docState.line(lineNumber);
        const from = item.column ? Math.min(line.from + item.column - 1, line.to) : line.from;
        const to = item.column ? Math.min(wordEnd(line.text, from - line.from) + line.from, line.to) : line.to;
        return {
          from,
          to: Math.max(to, from),
          severity: item.severity === "warning" ? "warning" : "error",
          message: item.hint ? `${item.message} (${item.hint})` : item.message,
        };
      });
      view.dispatch(setDiagnostics(view.state, marks));
      if (marks.length) {
        view.dispatch({ selection: { anchor: marks[0].from }, scrollIntoView: true });
      }
    },
    focus() {
      view.focus();
    },
  };
}

function wordEnd(text, start) {
  const match = /^[\w.]+/.exec(text.slice(start));
  return start + (match ? match[0].length : 1);
}
