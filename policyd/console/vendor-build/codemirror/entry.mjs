// The parts of CodeMirror 6 the console's editor uses, bundled into one ES module.
export { EditorState, Compartment } from "@codemirror/state";
export {
  EditorView, keymap, lineNumbers, highlightActiveLine, highlightActiveLineGutter,
  drawSelection, highlightSpecialChars,
} from "@codemirror/view";
export { history, defaultKeymap, historyKeymap } from "@codemirror/commands";
export {
  StreamLanguage, syntaxHighlighting, defaultHighlightStyle, bracketMatching, indentOnInput,
} from "@codemirror/language";
export { setDiagnostics, lintGutter, lintKeymap } from "@codemirror/lint";
export { searchKeymap, highlightSelectionMatches } from "@codemirror/search";
export { json } from "@codemirror/lang-json";
export { toml } from "@codemirror/legacy-modes/mode/toml";
