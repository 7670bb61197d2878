"""The loader's worst cases: how long a load takes, and how much memory, at each of its totals.

Each case builds a policy directory, loads it as `policyd serve` does (`PolicyStore`'s load, out
of the garbage collector) in a fresh process, and reports the seconds and the process's peak RSS.
The baseline, in the same run, is the shipped policy. Cases just past a total show how soon the
load refuses them. Beside them: the FIFO swapped in after listing (how soon the load returns)
and the fingerprint poll of a directory with symlink loops (stat calls, milliseconds).

    .venv/bin/python -m benchmarks.limits     # every case: a table, and benchmarks/results/limits-*.json
    .venv/bin/python -m benchmarks.limits --only rules-at-total-wide,data-at-total-json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.run import big_policy
from policyd.policy import MAX_DATA_BYTES, MAX_DATA_FILES, MAX_TOML_BYTES
from policyd.rules.language import Line, parse_rule
from policyd.rules.sandbox import MAX_FILE_RULES, MAX_POLICY_NODES
from policyd.rules.statements import rule_cost

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OPS = ("Login", "NewProxy", "CloseProxy", "Ping", "NewWorkConn", "NewUserConn")

Files = dict[str, str]


def _spread(rule: Callable[[int], str], count: int) -> Files:
    """`count` rules over the six rule files, in order."""
    per = -(-count // len(OPS))
    files: Files = {}
    for n, op in enumerate(OPS):
        lines = [rule(i) for i in range(n * per, min(count, (n + 1) * per))]
        if lines:
            files[f"{op}.rules"] = "\n".join(lines) + "\n"
    return files


def _small_rule(i: int) -> str:
    """A short rule: the per-rule overhead is what costs most per node."""
    return f'reject "r{i}" when user.user == "u{i}" and user.metas.team != "t{i}"'


def _medium_rule(i: int) -> str:
    return (
        f'reject "r{i}" when user.user == "u{i}" and user.metas.team != "t{i}" '
        f'and any(x == "{i}" for x in user.metas.values())'
    )


def _wide_rule(i: int) -> str:
    """492 nodes (MAX_EXPR_NODES is 500): 70 comparisons."""
    return f'reject "r{i}" when ' + " or ".join(f'user.user == "u{i}_{k}"' for k in range(70))


def _cost(rule: Callable[[int], str]) -> int:
    return rule_cost(parse_rule("x.rules", Line(rule(0) + "\n", 1)))


def _at_total(rule: Callable[[int], str], past: int = 0) -> Files:
    """As many rules as the node total takes (and the six files hold), or `past` nodes more."""
    count = (MAX_POLICY_NODES + past) // _cost(rule) + (1 if past else 0)
    return _spread(rule, min(count, len(OPS) * MAX_FILE_RULES))


def _dense_json(size: int) -> str:
    """The densest JSON data per byte: ~30x its size in memory (`{}` is a 64-byte dict)."""
    return "[" + ",".join(["{}"] * ((size - 2) // 3)) + "]"


def _dense_toml(size: int) -> str:
    return "a = [" + ",".join(["{}"] * ((size - 8) // 3)) + "]\n"


def _data(make: Callable[[int], str], total: int, files: int, suffix: str) -> Files:
    return {f"data/{suffix[1:]}{i:02d}{suffix}": make(total // files) for i in range(files)}


PING = {"Ping.rules": 'reject "x" when user.user == "x"\n'}
CASES: dict[str, Callable[[], Files]] = {
    "shipped policy (baseline)": lambda: {},
    "10,000-rule benchmark policy": big_policy,
    "rules-at-file-limit-small": lambda: _at_total(_small_rule),
    "rules-at-total-medium": lambda: _at_total(_medium_rule),
    "rules-at-total-wide": lambda: _at_total(_wide_rule),
    "rules-past-total": lambda: _at_total(_medium_rule, past=1),
    "data-at-total-json": lambda: {
        **PING,
        **_data(_dense_json, MAX_DATA_BYTES - 1024, MAX_DATA_FILES, ".json"),
    },
    "data-at-toml-total": lambda: {**PING, **_data(_dense_toml, MAX_TOML_BYTES - 1024, 8, ".toml")},
    "data-past-total": lambda: {**PING, **_data(_dense_json, MAX_DATA_BYTES + 4096, 2, ".json")},
    "everything-at-total": lambda: {
        **_at_total(_medium_rule),
        **_data(_dense_json, MAX_DATA_BYTES - MAX_TOML_BYTES, MAX_DATA_FILES - 8, ".json"),
        **_data(_dense_toml, MAX_TOML_BYTES - 1024, 8, ".toml"),
    },
}


def _write(directory: Path, files: Files) -> None:
    for rel, text in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def run_case(name: str) -> dict[str, Any]:
    """One case in this process: load it and measure (called in a fresh process by `main`)."""
    from policyd.errors import PolicyLoadError
    from policyd.service.store import _load_out_of_gc

    with tempfile.TemporaryDirectory(prefix="policyd-limits-") as tmp:
        files = CASES[name]()
        directory = Path(tmp) if files else ROOT / "policies"
        _write(directory, files)
        size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        started = time.perf_counter()
        try:
            policy = _load_out_of_gc(directory)
            outcome = f"loads: {policy.rule_count} rules, {len(policy.data_files)} data files"
        except PolicyLoadError as e:
            outcome = f"refused: {e.errors[0].code} ({e.errors[0].location})"
        seconds = time.perf_counter() - started
    return {
        "case": name,
        "outcome": outcome,
        "bytes": size,
        "load_s": round(seconds, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_before_mb": round(base_rss),
    }


def fifo_swap() -> dict[str, Any]:
    """A data file swapped for a FIFO (no writer) between listing and reading."""
    import policyd.policy as policy_module
    from policyd.errors import PolicyLoadError

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write(root, {**PING, "data/bans.toml": "users = []\n"})
        listed = policy_module._policy_files

        def list_then_swap(directory: Path) -> tuple[list[Path], list[Path]]:
            rules, data = listed(directory)
            (directory / "data" / "bans.toml").unlink()
            os.mkfifo(directory / "data" / "bans.toml")
            return rules, data

        policy_module._policy_files = list_then_swap
        policy_module.MAX_LOAD_ATTEMPTS = 1
        outcome: list[str] = []

        def load() -> None:
            try:
                policy_module.load_policy(root)
                outcome.append("loaded")
            except PolicyLoadError as e:
                outcome.append(f"refused: {e.errors[0]}")

        started = time.perf_counter()
        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        thread.join(10)
        seconds = time.perf_counter() - started
    return {
        "case": "FIFO swapped in after listing",
        "outcome": outcome[0] if outcome else "HUNG",
        "ms": round(seconds * 1e3, 2),
    }


def symlink_loop() -> dict[str, Any]:
    """The fingerprint poll of a directory with `data/a -> ..` and a self-link: stat calls, ms."""
    from policyd.service import watcher

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write(root, {**PING, "data/bans.toml": "users = []\n"})
        (root / "data" / "a").symlink_to("..")
        (root / "data" / "b").symlink_to("../data")
        (root / "self").symlink_to("self")
        calls = 0
        real_stat = os.stat

        def counting(*args: Any, **kwargs: Any) -> os.stat_result:
            nonlocal calls
            calls += 1
            return real_stat(*args, **kwargs)

        os.stat = counting  # the watcher's own os module
        try:
            started = time.perf_counter()
            found = watcher.fingerprint(root)
            seconds = time.perf_counter() - started
        finally:
            os.stat = real_stat
    return {
        "case": "fingerprint poll of a looping tree",
        "outcome": f"{len(found)} files, {calls} stat calls",
        "ms": round(seconds * 1e3, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="", help="comma-separated case names")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case here
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case)))
        return 0
    wanted = [c for c in args.only.split(",") if c] or list(CASES)
    rows = []
    for name in wanted:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.limits", "--case", name],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        row = json.loads(done.stdout.splitlines()[-1])
        rows.append(row)
        print(
            f"{row['case']:<30} {row['bytes'] / 2**20:7.1f} MiB {row['load_s']:7.2f} s "
            f"{row['peak_rss_mb']:5d} MB peak RSS (from {row['rss_before_mb']})  {row['outcome']}"
        )
    extras = [fifo_swap(), symlink_loop()]
    for row in extras:
        print(f"{row['case']:<30} {row['ms']:9.2f} ms  {row['outcome']}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / time.strftime("limits-%Y%m%d-%H%M%S.json")
    environment = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    path.write_text(json.dumps({"environment": environment, "loads": rows, "bounds": extras}, indent=2))
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
