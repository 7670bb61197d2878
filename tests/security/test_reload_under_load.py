"""Hot reload under load, through a real server: every answer comes from one whole policy version
that was on disk and valid at the time; broken versions never serve; nothing answers 5xx.

Each valid version's answer names its rules version and its data version (`v7 data 7`), so an
answer mixing two versions, or coming from a broken one, is visible. The writer records every
state the directory passes through, including the transient ones of in-place writes; an answer
matches if some valid state with that content existed before the answer arrived.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from policyd import policy as policy_module
from policyd.engine import decide
from policyd.rules.decision import Op
from tests.oracle import checked_client
from tests.security.harness import assert_valid_answer
from tests.support import PolicydProcess

Start = Callable[..., PolicydProcess]
BROKEN = "broken"  # a state of the rules or data that does not load
NONE = None  # no NewProxy rules: the op is allowed unchanged
REQUEST = {
    "version": "0.1.0",
    "op": "NewProxy",
    "content": {"user": {"user": "alice", "metas": {"team": "red"}}, "proxy_name": "alice.web"},
}


def rules_text(version: int) -> str:
    return f'# version {version}\nreject "v{version} data {{data.ver.n}}"\n'


def broken_rules_text(version: int) -> str:
    # The first line would load on its own: a partial apply of a broken file would show it.
    return f'reject "BROKEN v{version}"\nreject "x" when content.no_such_field_{version}\n'


def data_text(version: int) -> str:
    return json.dumps({"n": version})


@dataclass
class History:
    """Every state the directory passed through, with the time it began."""

    states: list[tuple[float, Any, Any]] = field(default_factory=list)
    rules: Any = NONE
    data: Any = NONE
    landed: set[tuple[Any, Any]] = field(default_factory=set)  # versions the load was served

    def set(self, *, rules: Any = "same", data: Any = "same") -> None:
        self.rules = self.rules if rules == "same" else rules
        self.data = self.data if data == "same" else data
        self.states.append((time.monotonic(), self.rules, self.data))

    def expected(self) -> tuple[Any, Any] | None:
        """What the current state serves once it lands; None while it is broken (the last
        good version keeps serving)."""
        if BROKEN in (self.rules, self.data) or self.data is NONE:
            return None
        return (NONE, NONE) if self.rules is NONE else (self.rules, self.data)

    def valid_answers_before(self, when: float) -> set[tuple[Any, Any]]:
        out: set[tuple[Any, Any]] = set()
        for began, rules, data in self.states:
            if began <= when and BROKEN not in (rules, data) and data is not NONE:
                out.add((NONE, NONE) if rules is NONE else (rules, data))
        return out


@dataclass
class Load:
    """Client threads sending the same request until stopped, recording every answer."""

    url: str
    answers: list[tuple[float, int, bytes]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with checked_client(base_url=self.url, timeout=10) as client:
            while not self.stop.is_set():
                try:
                    response = client.post("/handler", params={"op": "NewProxy"}, json=REQUEST)
                except httpx.HTTPError as e:
                    self.errors.append(repr(e))
                    continue
                self.answers.append((time.monotonic(), response.status_code, response.content))

    def wait_for(self, expected: tuple[Any, Any], since: float, timeout: float = 20.0) -> None:
        """Until the load threads get `expected` in an answer sent after `since` (a version that
        landed): the test then covers that version under load, however fast the machine is."""
        deadline = time.monotonic() + timeout
        checked = 0
        while time.monotonic() < deadline:
            answers = self.answers[checked:]
            checked += len(answers)
            if any(at > since and code == 200 and meaning(body) == expected for at, code, body in answers):
                return
            time.sleep(0.01)
        last = meaning(self.answers[-1][2]) if self.answers else None
        raise AssertionError(
            f"the load was not served {expected} within {timeout} s of writing it "
            f"(last answer: {last}; {len(self.answers)} answers, errors: {self.errors[:3]})"
        )

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(2)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


def meaning(body: bytes) -> tuple[Any, Any]:
    doc = json.loads(body)
    if doc == {"reject": False, "unchange": True}:
        return (NONE, NONE)
    reason = doc.get("reject_reason", "")
    assert not reason.startswith("BROKEN"), f"a broken version served: {reason}"
    rules, _, data = reason.partition(" data ")
    assert rules.startswith("v") and data.isdigit(), f"unexpected answer {doc}"
    return (int(rules[1:]), int(data))


def check(load: Load, history: History, server: PolicydProcess) -> None:
    assert not load.errors, load.errors[:5]
    # The load saw every version that landed (Load.wait_for); how many answers that took
    # depends on the machine, and is not what this test is about.
    assert len(history.landed) >= 8, f"only {len(history.landed)} versions landed"
    seen: set[tuple[Any, Any]] = set()
    for received, status, body in load.answers:
        assert status == 200, (status, body[:200])
        assert_valid_answer(status, body)
        answer = meaning(body)
        assert answer in history.valid_answers_before(received), f"{answer} was never valid on disk by then"
        seen.add(answer)
    assert history.landed <= seen, f"landed but never answered: {history.landed - seen}"
    logs = server.logs()
    assert "reload FAILED" in logs and "Traceback" not in logs


def settle(server: PolicydProcess, history: History) -> None:
    """After the last write the final version serves (the debounce, then one reload)."""
    expected = history.expected()
    assert expected is not None, "the last version written must be valid"
    deadline = time.monotonic() + 10
    answer: Any = None
    while time.monotonic() < deadline:
        answer = meaning(server.post(REQUEST).content)
        if answer == expected:
            return
        time.sleep(0.05)
    raise AssertionError(f"still serving {answer}, expected {expected}")


# A short debounce lets many versions land in a few seconds; a fast poll reloads mid-burst too.
RELOAD_FLAGS = ("--reload-debounce-s", "0.05", "--reload-poll-s", "0.3")


def pauses(rng: random.Random, count: int, load: Load, history: History) -> Iterator[int]:
    """Mostly bursts faster than the debounce; every few writes, a pause until the version
    written has landed and the load was served it (a broken one: a moment for the reload)."""
    for i in range(count):
        yield i
        if i % 4 != 3:
            time.sleep(rng.uniform(0, 0.03))
            continue
        expected = history.expected()
        if expected is None:
            time.sleep(0.1)
        else:
            load.wait_for(expected, since=history.states[-1][0])
            history.landed.add(expected)


def replace_file(path: Path, text: str) -> None:
    """An editor's rename-save: write a temp file beside it, then rename it over the old one."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_edits_renames_and_deletes_under_load(policyd_server: Start, tmp_path: Path) -> None:
    rng = random.Random(8)
    policies = tmp_path / "p"
    (policies / "data").mkdir(parents=True)
    rules, data = policies / "NewProxy.rules", policies / "data" / "ver.json"
    history = History()
    data.write_text(data_text(0))
    rules.write_text(rules_text(0))
    history.set(rules=0, data=0)
    server = policyd_server(policies, *RELOAD_FLAGS)
    version = 0
    with Load(server.url) as load:
        for _ in pauses(rng, 60, load, history):
            version += 1
            kind = rng.choice(["rename", "rename", "in-place", "data", "broken", "broken-data", "delete"])
            if kind == "rename":
                history.set(rules=version)
                replace_file(rules, rules_text(version))
            elif kind == "in-place":  # truncate, then write: an empty file is a valid state too
                history.set(rules=NONE)
                with rules.open("w") as f:
                    history.set(rules=version)
                    f.write(rules_text(version))
            elif kind == "data":
                history.set(data=version)
                replace_file(data, data_text(version))
            elif kind == "broken":
                history.set(rules=BROKEN)
                replace_file(rules, broken_rules_text(version))
            elif kind == "broken-data":
                history.set(data=BROKEN)
                data.write_text('{"n": ')
                time.sleep(rng.uniform(0, 0.1))
                history.set(data=version)
                replace_file(data, data_text(version))
            elif kind == "delete" and rules.exists():
                history.set(rules=NONE)
                rules.unlink()
        history.set(rules=version + 1)
        replace_file(rules, rules_text(version + 1))
        settle(server, history)
    check(load, history, server)


def configmap_version(root: Path, name: str, version: int, kind: str) -> None:
    """One timestamped ConfigMap directory: rules and data of one version, or a broken one."""
    directory = root / name
    (directory / "data").mkdir(parents=True)
    (directory / "data" / "ver.json").write_text(data_text(version))
    if kind == "valid":
        (directory / "NewProxy.rules").write_text(rules_text(version))
    elif kind == "broken":
        (directory / "NewProxy.rules").write_text(broken_rules_text(version))
    # kind "deleted": the key is gone from the ConfigMap; its symlink dangles


def test_configmap_symlink_swaps_under_load(policyd_server: Start, tmp_path: Path) -> None:
    """Kubernetes swaps `..data` to a new timestamped directory, atomically, for every update."""
    rng = random.Random(9)
    root = tmp_path / "configmap"
    configmap_version(root, "..v0", 0, "valid")
    (root / "..data").symlink_to("..v0")
    (root / "NewProxy.rules").symlink_to("..data/NewProxy.rules")
    (root / "data").symlink_to("..data/data")
    history = History()
    history.set(rules=0, data=0)
    server = policyd_server(root, *RELOAD_FLAGS)
    current = "..v0"
    with Load(server.url) as load:
        for version in (i + 1 for i in pauses(rng, 40, load, history)):
            kind = rng.choice(["valid", "valid", "valid", "broken", "deleted"])
            name = f"..v{version}"
            configmap_version(root, name, version, kind)
            (root / "..data_tmp").symlink_to(name)
            history.set(
                rules={"valid": version, "broken": BROKEN, "deleted": NONE}[kind],
                data=version,
            )
            os.replace(root / "..data_tmp", root / "..data")
            shutil.rmtree(root / current)
            current = name
        final = 41
        configmap_version(root, f"..v{final}", final, "valid")
        (root / "..data_tmp").symlink_to(f"..v{final}")
        history.set(rules=final, data=final)
        os.replace(root / "..data_tmp", root / "..data")
        settle(server, history)
    check(load, history, server)


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The load clients talk to loopback directly."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_a_swap_during_a_load_never_mixes_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The swap lands exactly between reading data/ and reading the rules: the worst moment."""
    root = tmp_path / "configmap"
    configmap_version(root, "..v1", 1, "valid")
    (root / "..data").symlink_to("..v1")
    (root / "NewProxy.rules").symlink_to("..data/NewProxy.rules")
    (root / "data").symlink_to("..data/data")
    real_read = policy_module.read_policy_file
    swapped: list[bool] = []

    def read_then_swap(path: Path, shown: str, inside: policy_module.Inside | None = None) -> bytes:
        raw = real_read(path, shown, inside)
        if shown.startswith("data/") and not swapped:
            swapped.append(True)
            configmap_version(root, "..v2", 2, "valid")
            (root / "..data_tmp").symlink_to("..v2")
            os.replace(root / "..data_tmp", root / "..data")
        return raw

    monkeypatch.setattr(policy_module, "read_policy_file", read_then_swap)
    policy = policy_module.load_policy(root)
    assert swapped
    assert decide(policy, Op.NEW_PROXY, REQUEST["content"]).reason == "v2 data 2"
