"""The operator verbs' library code (`check`, `eval`, `test`, `fmt`, `frps-config`): plain
functions that take typed parameters and an output stream; `policyd.cli` wraps them."""
