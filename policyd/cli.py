"""Command line: thin wrappers over the library. Only this module prints and sets exit codes."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TextIO, TypeVar

import click

from policyd import __version__
from policyd.errors import PolicyLoadError, StartupError
from policyd.rules.decision import OPS, Op
from policyd.rules.diagnostics import Diagnostic, OutputFormat, render
from policyd.rules.schema import FrpsVersion
from policyd.service.settings import (
    CONFIG_ENV,
    DEFAULTS,
    FIELDS,
    PARSERS,
    Layer,
    Settings,
    SettingsError,
    build_settings,
    env_name,
    flag_name,
    read_config_file,
)

F = TypeVar("F", bound=Callable[..., Any])
METAVARS = {"int": "INTEGER", "float": "NUMBER", "frozenset[Op]": "OPS"}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="policyd")
def main() -> None:
    """policyd: one-line, hot-reloaded policy rules for frps's server plugin API."""


def _shown_default(name: str) -> str:
    value = DEFAULTS.to_dict()[name]
    return "" if value in (None, [], {}) else str(value)


def settings_options(command: F) -> F:
    """One option per Settings field: --flag-name, POLICYD_FLAG_NAME, shown with its default.

    The defaults shown come from Settings; only values given on the command line or in the
    environment are passed on, so that they override the config file and the defaults do not.
    """
    for name in reversed(list(FIELDS)):
        meta = FIELDS[name].metadata
        shown = _shown_default(name)
        command = click.option(
            flag_name(name),
            name,
            default=shown or None,
            envvar=env_name(name),
            show_envvar=True,
            show_default=bool(shown),
            type=click.Choice(meta["choices"]) if meta["choices"] else str,
            metavar=meta["metavar"] or METAVARS.get(str(FIELDS[name].type)),
            help=meta["help"],
        )(command)
    return command


def _settings_from(ctx: click.Context, config: Path | None, given: dict[str, Any]) -> Settings:
    layers = [read_config_file(config)] if config is not None else []
    by_source: dict[str, dict[str, Any]] = {"env": {}, "flag": {}}
    for name, value in given.items():
        source = ctx.get_parameter_source(name)
        if value is None or source is click.core.ParameterSource.DEFAULT:
            continue
        by_source["env" if source is click.core.ParameterSource.ENVIRONMENT else "flag"][name] = value
    layers += [Layer("env", by_source["env"]), Layer("flag", by_source["flag"])]
    return build_settings(layers)


@main.command()
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar=CONFIG_ENV,
    show_envvar=True,
    help="TOML file of settings (same names as the options, with underscores).",
)
@settings_options
@click.pass_context
def serve(ctx: click.Context, /, config: Path | None, **given: Any) -> None:
    """Serve the frps plugin API with the rules in --policies, reloading them on change.

    Each setting is taken from its option, else its environment variable, else the --config
    file, else the default shown.
    """
    from policyd.service.serve import run

    try:
        settings = _settings_from(ctx, config, given)
    except SettingsError as e:
        raise click.UsageError(str(e)) from None
    try:
        run(settings)
    except PolicyLoadError as e:
        _exit_not_loaded(settings.policies, e, "; not starting")
    except StartupError as e:
        click.echo(f"policyd: {e}; not starting", err=True)
        sys.exit(2)


def _exit_not_loaded(directory: Path, failure: PolicyLoadError, consequence: str = "") -> NoReturn:
    """Every error of a policy that does not load, on stderr with the source lines; exit 2."""
    click.echo(f"policyd: the policy in {directory} does not load{consequence}:", err=True)
    from policyd.policy import policy_sources

    sources = policy_sources(Path(directory))
    for error in failure.errors:
        click.echo(render(Diagnostic.of(error), sources), err=True)
    if failure.limit_note:
        click.echo(failure.limit_note, err=True)
    sys.exit(2)


# -- operator tools: thin wrappers; each verb's logic is a plain function in its module ------------


def _ops(ctx: click.Context, param: click.Parameter, value: str) -> frozenset[Op]:
    try:
        ops: frozenset[Op] = PARSERS["frozenset[Op]"](value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return ops


_FORMAT = click.option(
    "--format",
    "output",
    type=click.Choice([f.value for f in OutputFormat]),
    default=OutputFormat.PRETTY.value,
    show_default=True,
    help="pretty for people, json for CI and scripts.",
)
# Every verb finds the policy as serve does: the argument or option, else POLICYD_POLICIES.
_POLICY_DIR = click.argument(
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULTS.policies,
    envvar=env_name("policies"),
    required=False,
    metavar="[DIR]",
)
_CONFIG = click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar=CONFIG_ENV,
    show_envvar=True,
    help="serve's TOML settings file; with POLICYD_* variables it gives the defaults here.",
)


def _policies_option(help: str) -> Callable[[F], F]:
    return click.option(
        "--policies",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help=f"{help} [default: serve's --policies]",
    )


def _serve_settings(config: Path | None) -> Settings:
    """What `serve` would run with, from its config file and POLICYD_* variables (no flags)."""
    env = {name: os.environ[env_name(name)] for name in FIELDS if env_name(name) in os.environ}
    try:
        layers = [read_config_file(config)] if config is not None else []
        return build_settings([*layers, Layer("env", env)])
    except SettingsError as e:
        raise click.UsageError(str(e)) from None


def _stdout() -> TextIO:
    # Looked up per call: click's CliRunner swaps sys.stdout while a command runs.
    return sys.stdout


@main.command()
@_POLICY_DIR
@_FORMAT
def check(directory: Path, output: str) -> None:
    """Load and validate DIR exactly as `serve` would, and lint it.

    Prints every error and warning as file:line:col with the source line. Exits 1 when the
    policy does not load (warnings alone exit 0). DIR defaults to $POLICYD_POLICIES, else
    policies.
    """
    from policyd.tools.check import check as run_check

    report = run_check(directory, _stdout(), output=OutputFormat(output))
    sys.exit(0 if report.ok else 1)


@main.command("eval")
@_CONFIG
@_policies_option("Policy directory.")
@click.option(
    "--op", "op_name", type=click.Choice(list(OPS)), help="The op (taken from the body if omitted)."
)
@click.option("--content", "content_json", metavar="JSON", help="The request content as a JSON object.")
@click.option(
    "--request",
    "request_file",
    type=click.File("rb"),
    help="A request body {version, op, content} as frps sends it (or bare content); '-' for stdin.",
)
@click.argument("stdin", required=False, type=click.File("rb"), metavar="[-]")
@click.option("--reqid", default="", help="The X-Frp-Reqid rules see as `reqid`.")
@click.option("--now", type=float, default=None, help="Unix time rules see as `now` (default: the clock).")
@click.option(
    "--state",
    "state_spec",
    metavar="SPEC",
    default=None,
    help="State the state functions read, unchanged: 'memory' (empty; the default) or a redis:// URL.",
)
@click.option(
    "--state-preset",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A TOML file of {proxies, sessions, rates} to decide with (memory state).",
)
@_FORMAT
def eval_(
    config: Path | None,
    policies: Path | None,
    op_name: str | None,
    content_json: str | None,
    request_file: BinaryIO | None,
    stdin: BinaryIO | None,
    reqid: str,
    now: float | None,
    state_spec: str | None,
    state_preset: Path | None,
    output: str,
) -> None:
    """Decide one request and print the answer frps would get, with an explanation.

    The request is --content JSON (needs --op), --request FILE, or '-' for stdin. The first
    line of output is the answer's exact JSON; below it, every rule reached with its value,
    the one that decided, the content diff and the warnings. Decides with serve's settings
    (--config, POLICYD_* variables): fail-open ops, step and time budgets. Exits 2 on bad
    input or when the policy does not load.
    """
    from policyd.protocol import BadRequest, read_request
    from policyd.tools.eval import evaluate

    sources = [s for s in (content_json, request_file, stdin) if s is not None]
    if len(sources) != 1:
        raise click.UsageError("give exactly one of --content JSON, --request FILE or '-' (stdin)")
    raw = content_json.encode() if content_json is not None else sources[0].read()  # type: ignore[union-attr]
    try:
        request = read_request(raw, op_name)
    except BadRequest as e:
        click.echo(f"policyd: bad request: {e.message}", err=True)
        sys.exit(2)
    settings = _serve_settings(config)
    directory = policies or settings.policies
    binding = _eval_state(settings, state_spec, state_preset, now)
    try:
        evaluate(
            directory,
            request,
            _stdout(),
            output=OutputFormat(output),
            reqid=reqid,
            now=now,
            options=settings.eval_options,
            state=binding,
        )
    except PolicyLoadError as e:
        _exit_not_loaded(directory, e)


def _eval_state(settings: Any, spec: str | None, preset: Path | None, now: float | None) -> Any:
    """The non-recording state `eval` decides with: a backend from --state, maybe preset."""
    import time
    import tomllib

    from policyd.engine import StateBinding
    from policyd.service.statesvc import expiry_of, replica_of
    from policyd.state.factory import MEMORY, check_spec, open_backend
    from policyd.state.tracking import Preset, PresetError

    spec = spec or MEMORY
    try:
        check_spec(spec)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--state") from None
    if preset is not None and spec != MEMORY:
        raise click.UsageError("--state-preset goes with memory state: a preset never writes into Redis")
    backend = open_backend(
        spec,
        expiry=expiry_of(settings),
        timeout_s=settings.state_timeout_ms / 1000,
        replica=replica_of(settings),
    )
    if preset is not None:
        try:
            at = now if now is not None else time.time()
            backend.preset(Preset.parse(tomllib.loads(preset.read_text()), at), at)
        except (tomllib.TOMLDecodeError, PresetError) as e:
            raise click.BadParameter(f"{preset}: {e}", param_hint="--state-preset") from None
    return StateBinding(backend, recording=False)


@main.command("state")
@_CONFIG
@click.option(
    "--state", "state_spec", metavar="SPEC", default=None, help="The backend (default: serve's setting)."
)
@click.option(
    "--url", default=None, help="The running service, for memory state (default: serve's host and port)."
)
@click.option("--user", default=None, help="Only this user.")
@click.option(
    "--rates", default=None, metavar="PREFIX", help="Also the hits behind rate() keys starting with PREFIX."
)
@_FORMAT
def state_(
    config: Path | None,
    state_spec: str | None,
    url: str | None,
    user: str | None,
    rates: str | None,
    output: str,
) -> None:
    """List live sessions and proxies per user (and rate() counts), for debugging a refusal.

    Reads Redis directly; memory state lives in the service, so it asks its /state endpoint.
    Exits 2 when the backend or the service cannot be reached.
    """
    import dataclasses
    import json
    import urllib.parse
    import urllib.request

    from policyd.service.statesvc import StateService
    from policyd.state.backend import StateUnavailable
    from policyd.state.factory import MEMORY

    settings = _serve_settings(config)
    spec = state_spec or settings.state
    try:
        if spec == MEMORY:
            base = url or f"http://{settings.host}:{settings.port}"
            query = urllib.parse.urlencode(
                {k: v for k, v in (("user", user), ("rates", rates)) if v is not None}
            )
            with urllib.request.urlopen(f"{base}/state?{query}", timeout=10) as response:
                doc = json.loads(response.read())
        else:
            service = StateService(dataclasses.replace(settings, state=spec))
            doc = service.listing(user, rates)
    except (OSError, StateUnavailable) as e:
        click.echo(f"policyd: cannot read state: {e}", err=True)
        sys.exit(2)
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
        return
    for name, state in doc["users"].items():
        click.echo(f"{name}: {len(state['sessions'])} session(s), {len(state['proxies'])} proxy(ies)")
        for s in state["sessions"]:
            click.echo(f"  session {s['run_id']} from {s['client_address'] or '?'} since {s['since']}")
        for p in state["proxies"]:
            click.echo(f"  proxy {p['name']} {p['type']} port={p['remote_port']} run_id={p['run_id']}")
    for key, rate in doc.get("rates", {}).items():
        click.echo(f"rate {key}: {rate['count']} in {rate['per_s']:g}s")
    if not doc["users"] and not doc.get("rates"):
        click.echo("no live state")


@main.command("test")
@_POLICY_DIR
@click.option("--coverage", is_flag=True, help="Also report rules that no test case made fire.")
@click.option("--run", "run", metavar="REGEX", help="Only the cases whose name matches REGEX.")
@_FORMAT
def test_(directory: Path, coverage: bool, run: str | None, output: str) -> None:
    """Run the policy test cases in DIR/tests/*.toml.

    Prints a line per case, a diff for each failure and 'N passed, N failed'. Exits 1 when a
    case fails or none was found, 2 when the policy does not load. DIR defaults to
    $POLICYD_POLICIES, else policies. The case format: docs/cli.md, "policyd test".
    """
    import re

    from policyd.tools.test import run_tests

    try:
        report = run_tests(directory, _stdout(), coverage=coverage, output=OutputFormat(output), run=run)
    except re.error as e:
        raise click.BadParameter(f"invalid regex: {e}", param_hint="--run") from None
    except PolicyLoadError as e:
        _exit_not_loaded(directory, e)
    sys.exit(0 if report.ok else 1)


@main.command("fmt")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--check", is_flag=True, help="Change nothing; exit 1 and name the files that would change.")
@click.option(
    "--diff", is_flag=True, help="Change nothing; print what would change as a diff (exit 1 if any)."
)
def fmt_(paths: tuple[Path, ...], check: bool, diff: bool) -> None:
    """Normalise spacing and quotes of rule files (PATHS: files or directories; default: the policy).

    Comments and line continuations stay; a rule is re-spaced only when it tokenizes to the same
    tokens afterwards, so meaning never changes. Files are replaced atomically, safe while
    `serve` watches them.
    """
    from policyd.tools.fmt import fmt

    default = Path(os.environ.get(env_name("policies"), DEFAULTS.policies))
    report = fmt(list(paths) or [default], _stdout(), check=check, diff=diff)
    failed = bool(report.errors) or ((check or diff) and bool(report.changed))
    sys.exit(1 if failed else 0)


def _frps_version(ctx: click.Context, param: click.Parameter, value: str | None) -> FrpsVersion | None:
    if value is None:
        return None
    try:
        return FrpsVersion.parse(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@main.command("frps-config")
@_CONFIG
@_policies_option("Policy directory: by default, the ops with a rule file here are listed.")
@click.option(
    "--frps-version",
    metavar="VERSION",
    callback=_frps_version,
    help="Write for this frps (e.g. 0.33.0): its ops, its format, warnings for its traps.",
)
@click.option("--toml", "config_format", flag_value="toml", help="frps >= 0.52 (the default).")
@click.option("--ini", "config_format", flag_value="ini", help="Legacy INI, for frps < 0.52.")
@click.option(
    "--addr",
    help="Where frps reaches policyd: host:port or https://host:port [default: serve's address]",
)
@click.option("--path", "handler_path", help="The handler path [default: serve's --handler-path]")
@click.option(
    "--ops", default="", callback=_ops, help="Ops to send, e.g. 'Login,NewProxy' (default: rule files)."
)
@click.option("--name", default="policyd", show_default=True, help="The plugin's name in frps.")
def frps_config_(
    config: Path | None,
    policies: Path | None,
    frps_version: FrpsVersion | None,
    config_format: str | None,
    addr: str | None,
    handler_path: str | None,
    ops: frozenset[Op],
    name: str,
) -> None:
    """Print the frps plugin config snippet that points frps at this policyd.

    Address, path and policy directory default to what `serve` would use with the same
    --config and POLICYD_* variables. The snippet goes to stdout, warnings to stderr.
    """
    from policyd.tools.frpsconfig import ConfigFormat, FrpsConfigError, frps_config, reachable_addr

    settings = _serve_settings(config)
    try:
        snippet = frps_config(
            policies or settings.policies,
            _stdout(),
            fmt=ConfigFormat(config_format) if config_format else None,
            addr=addr or reachable_addr(settings.host, settings.port, tls=settings.tls),
            path=handler_path or settings.handler_path,
            ops=ops,
            name=name,
            version=frps_version,
        )
    except FrpsConfigError as e:
        click.echo(f"policyd: {e}", err=True)
        sys.exit(2)
    for warning in snippet.warnings:
        click.echo(f"policyd: warning: {warning}", err=True)


@main.command("fields")
@click.argument("op", required=False, callback=lambda ctx, param, value: _one_op(value))
@click.option("--frps-version", callback=_frps_version, help="Only what this frps sends (e.g. 0.33.0).")
@click.option("--versions", is_flag=True, help="Which frps release changed what for plugins, instead.")
@click.option(
    "--format",
    "output",
    type=click.Choice(["pretty", "json", "markdown"]),
    default="pretty",
    show_default=True,
    help="pretty for people, json for scripts, markdown as in docs/.",
)
def fields_(op: Op | None, frps_version: FrpsVersion | None, versions: bool, output: str) -> None:
    """What each op carries: field, type, zero value, the frps versions that send it, and
    whether a `set` on it takes effect. OP limits it to one op (e.g. NewProxy)."""
    from policyd.tools.fields import FieldsFormat, fields

    fields(_stdout(), op=op, version=frps_version, output=FieldsFormat(output), versions=versions)


def _one_op(value: str | None) -> Op | None:
    if value is None:
        return None
    try:
        ops = PARSERS["frozenset[Op]"](value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if len(ops) != 1:
        raise click.BadParameter(f"name one op, not {value!r}")
    return Op(next(iter(ops)))


@main.command("history")
@click.argument("version", required=False)
@click.option("--diff", nargs=2, metavar="V1 V2", help="Print what changed from version V1 to V2.")
@click.option(
    "--export",
    type=click.Path(path_type=Path, file_okay=False),
    metavar="DIR",
    help="Write VERSION's files to DIR (a new directory) as a policy directory.",
)
@click.option(
    "--history-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Read this history directory, offline [default: serve's --history-dir].",
)
@click.option(
    "--url",
    help="Ask the policyd serving at URL (GET /versions) [default: serve's address, without a directory].",
)
@_CONFIG
@_FORMAT
def history_(
    version: str | None,
    diff: tuple[str, str] | None,
    export: Path | None,
    history_dir: Path | None,
    url: str | None,
    config: Path | None,
    output: str,
) -> None:
    """List the policy versions that served, show one version's files, or diff two.

    VERSION is a version (or a unique prefix of 4+ characters) from the decision log's
    policy_version. Reads a history directory without the service (--history-dir, else
    serve's setting), or else asks the running service. Exits 2 when the history cannot be
    read or does not hold a version asked for.
    """
    from policyd.tools.frpsconfig import reachable_addr
    from policyd.tools.history import HistoryError, HistorySource, LocalHistory, RemoteHistory, show_history

    if export is not None and version is None:
        raise click.UsageError("--export needs a VERSION")
    if diff is not None and (version is not None or export is not None):
        raise click.UsageError("--diff V1 V2 takes no VERSION or --export")
    try:
        source: HistorySource
        if url is not None:
            source = RemoteHistory(url)
        else:
            settings = _serve_settings(config) if history_dir is None else None
            directory = history_dir or (settings.history_dir if settings else None)
            if directory is not None:
                source = LocalHistory(directory)
            else:
                assert settings is not None
                addr = reachable_addr(settings.host, settings.port, tls=settings.tls)
                source = RemoteHistory(addr if addr.startswith("https://") else f"http://{addr}")
        fmt = OutputFormat(output)
        show_history(source, _stdout(), version=version, diff=diff, export=export, output=fmt)
    except HistoryError as e:
        click.echo(f"policyd: {e}", err=True)
        sys.exit(2)


@main.command("replay")
@click.argument("recordings", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@_policies_option("Policy directory to decide the recorded requests with.")
@click.option(
    "--key",
    "key_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The recording's key file, to compare the secrets rules set [default: serve's --record-key-file].",
)
@_CONFIG
@_FORMAT
def replay_(
    recordings: tuple[Path, ...],
    policies: Path | None,
    key_file: Path | None,
    config: Path | None,
    output: str,
) -> None:
    """Decide recorded requests again (serve --record-requests) and print what would change.

    RECORDINGS are recording files, oldest first (FILE.2 FILE.1 FILE). Prints a summary and
    each request whose answer would change: op, user, the old and the new outcome and reason,
    the deciding rule; requests whose new decision reads a secret the recording holds hashed
    are listed apart. Decides with serve's settings (--config, POLICYD_* variables). Exits 1
    when an answer would change (a deploy gate), 2 on unreadable input or when the policy does
    not load, else 0.
    """
    from policyd.tools.recording import RecordingError, RecordKey
    from policyd.tools.replay import replay

    settings = _serve_settings(config)
    directory = policies or settings.policies
    key_path = key_file or settings.record_key_file
    try:
        key = RecordKey.from_file(key_path) if key_path is not None else None
        report = replay(
            list(recordings),
            directory,
            _stdout(),
            key=key,
            options=settings.eval_options,
            output=OutputFormat(output),
        )
    except RecordingError as e:
        click.echo(f"policyd: {e}", err=True)
        sys.exit(2)
    except PolicyLoadError as e:
        _exit_not_loaded(directory, e)
    sys.exit(report.exit_code)
