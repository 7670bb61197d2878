"""A rule file as a program: its statements joined into Python functions for the request path.

decide() calls a rule file's first chunk, a function of up to CHUNK_STATEMENTS rules written from
the statements' fragments (policyd.rules.codegen): a rule that does not fire costs its condition's
inline code, with no per-rule loop or closure calls. A chunk returns the index of the
reject/allow rule that decided; if none did, it returns what the next chunk returns (-1 after the
last: no rule decided). warn and set rules call decide()'s hooks, so their effects are made by
the same code as in decide()'s interpreted loop.

The source is compiled with no builtins and only references as globals: it can reach nothing
the closures could not. Chunks keep a reload of 10,000 rules from holding the GIL in one long
compile() (see PolicyStore and the 50 ms swap target in benchmarks/).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from types import CodeType
from typing import Any

from policyd.rules.codegen import BUDGET, BUILTINS, CONTENT, CTX, NAMES, USER, FieldRead, Fragment
from policyd.rules.context import Ctx, RequestNames
from policyd.rules.language import Action
from policyd.rules.statements import Statement

COMPILED_CHUNKS = 1024  # chunk code kept for reuse by later loads: all of a 10,000-rule policy
CHUNK_STATEMENTS = 16  # rules per generated function: one compile() holds the GIL (~1-3 ms)

# warn(decision, ctx, statement) and set(decision, ctx, statement, value): decide()'s hooks.
WarnHook = Callable[[Any, Ctx, Statement], None]
SetHook = Callable[[Any, Ctx, Statement, Any], None]
Chunk = Callable[[Ctx, RequestNames, Any, WarnHook, SetHook], int]


class RuleFailed(Exception):
    """A rule raised `error` while its chunk ran; `index` is the statement's place in the file."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error


def build_program(
    statements: Sequence[Statement], pause: Callable[[], None] | None = None
) -> tuple[Chunk, ...] | None:
    """The chunks of a rule file, or None if a statement has no fragment (built by hand).

    Each chunk but the last ends by calling the next (its global `_next`), which reads the
    clock first: running the first chunk runs the file.
    """
    chunks: list[Chunk] = []
    envs: list[dict[str, Any]] = []
    for start in range(0, len(statements), CHUNK_STATEMENTS):
        if pause is not None and start:
            pause()
        env = _environment()
        source = chunk_source(statements, start, min(start + CHUNK_STATEMENTS, len(statements)), env)
        if source is None:
            return None
        exec(_compiled(source), env)
        chunks.append(env.pop("chunk"))
        envs.append(env)
    for env, following in zip(envs, chunks[1:], strict=False):
        env["_next"] = following
    return tuple(chunks)


def _environment() -> dict[str, Any]:
    """Generated code's globals: no builtins but those codegen names, then only references."""
    return {"__builtins__": {}, **BUILTINS, "_Exception": Exception, "_RuleFailed": RuleFailed}


def _bind(env: dict[str, Any], prefix: str, fragment: Fragment, reads: Reads) -> str:
    """The fragment's source with its refs bound in `env` as `{prefix}N`, and its field reads
    as the locals `reads` names (a new read is given the next name)."""
    for n, value in enumerate(fragment.refs):
        env[f"{prefix}{n}"] = value
    source = fragment.source.replace("@", prefix)  # "@" marks refs only: the source has no text
    if not fragment.reads:
        return source
    local = [reads.setdefault(_read_key(read), f"r{len(reads)}") for read in fragment.reads]
    return _READ_MARK.sub(lambda m: local[int(m.group(1))], source)


# A field read's local, by what it reads: 0 and False are equal keys, but not the same zero.
Reads = dict[tuple[bool, str, type, Any], str]
_READ_MARK = re.compile(r"\$(\d+)")


def _read_key(read: FieldRead) -> tuple[bool, str, type, Any]:
    of_user, key, zero = read
    return of_user, key, type(zero), zero


def _read_lines(env: dict[str, Any], reads: Reads) -> list[str]:
    """Each field read into its local, once: `rN = c.get(rN_0)`, then its zero value `rN_1` if
    the field is absent or null (what every inline read of policyd.rules.codegen does)."""
    lines = []
    for (of_user, key, _, zero), name in reads.items():
        env[f"{name}_0"], env[f"{name}_1"] = key, zero
        source = (
            f"None if {USER} is None else {USER}.get({name}_0)" if of_user else f"{CONTENT}.get({name}_0)"
        )
        lines += [f"{name} = {source}", f"if {name} is None:", f"    {name} = {name}_1"]
    return lines


_PROLOGUE = (
    f"    {BUDGET} = {CTX}.budget",
    f"    {CONTENT} = {NAMES}.content_raw",
    f"    {USER} = {NAMES}.user_raw",
)


def compile_fragment(fragment: Fragment) -> Callable[[Ctx], Any]:
    """One expression as a function of a request's context, as a chunk would run it (for tests
    and tools; decide() runs whole chunks)."""
    env = _environment()
    reads: Reads = {}
    expression = _bind(env, "e", fragment, reads)
    source = "\n".join(
        [
            f"def expression({CTX}):",
            f"    {NAMES} = {CTX}.names",
            *_PROLOGUE,
            *(f"    {line}" for line in _read_lines(env, reads)),
            f"    return {expression}",
        ]
    )
    exec(compile(source, "<expression>", "exec"), env)
    function: Callable[[Ctx], Any] = env.pop("expression")
    return function


def chunk_source(statements: Sequence[Statement], start: int, end: int, env: dict[str, Any]) -> str | None:
    """The source of the chunk of statements[start:end], its references bound in `env`."""
    # A later chunk reads the clock first (no run of CHUNK_STATEMENTS rules goes without it: a
    # limit it reaches is the chunk's first rule's).
    body: list[str] = [f"{BUDGET}.tick()"] if start else []
    # The field reads of a run of statements up to a `set` (which changes the request), made
    # at the run's start: a field several rules read is read once.
    reads: Reads = {}
    run_reads: Reads = {}
    run_start = len(body)

    def code(prefix: str, fragment: Fragment | None) -> str | None:
        if fragment is None:
            return None
        source = _bind(env, prefix, fragment, reads)
        for read in fragment.reads:
            key = _read_key(read)
            run_reads[key] = reads[key]
        return source

    for index in range(start, end):
        statement = statements[index]
        env[f"s{index}"] = statement
        body.append(f"at = {index}")
        condition = code(f"w{index}_", statement.condition_code)
        if statement.condition is not None and condition is None:
            return None
        indent = "    " if condition is not None else ""
        if condition is not None:
            body.append(f"if {condition}:")
        action = statement.action
        if action in (Action.REJECT, Action.ALLOW):
            body.append(f"{indent}return {index}")
        elif action is Action.WARN:
            body.append(f"{indent}warn(decision, {CTX}, s{index})")
        else:
            value = code(f"v{index}_", statement.value_code)
            if value is None:
                return None
            if action is Action.LET:
                env[f"k{index}"] = statement.path[0]
                body.append(f"{NAMES}[k{index}] = {value}")
            else:
                body.append(f"{indent}set_(decision, {CTX}, s{index}, {value})")
                body.append(f"{indent}{CONTENT} = {NAMES}.content_raw")
                body.append(f"{indent}{USER} = {NAMES}.user_raw")
                body[run_start:run_start] = _read_lines(env, run_reads)
                run_reads = {}
                run_start = len(body)
    body[run_start:run_start] = _read_lines(env, run_reads)
    # A chunk that decided nothing calls the next, outside its `try`, so the next one's
    # RuleFailed keeps its own index.
    last = end == len(statements)
    return "\n".join(
        [
            f"def chunk({CTX}, {NAMES}, decision, warn, set_):",
            *_PROLOGUE,
            f"    at = {start}",
            "    try:",
            *(f"        {line}" for line in body),
            "    except _Exception as e:",
            "        raise _RuleFailed(at, e) from None",
            "    return -1" if last else f"    return _next({CTX}, {NAMES}, decision, warn, set_)",
        ]
    )


@functools.lru_cache(maxsize=COMPILED_CHUNKS)
def _compiled(source: str) -> CodeType:
    """compile() once per distinct chunk source.

    The source holds no constants of the rules, only their shape: after an edit, every chunk
    whose rules kept their shape (a new port in a list, a new message) and place reuses its
    code, and only the environment is built anew. A reload then holds the GIL for microseconds
    instead of a compile() per chunk (~1.5 ms each).
    """
    return compile(source, "<rules>", "exec")
