"""Loading a policy directory: reuse of unchanged rules, no reference cycles in what loads, the
files a version is made of."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import pytest

from policyd.engine import decide
from policyd.errors import PolicyLoadError
from policyd.policy import load_policy, policy_version
from policyd.rules.decision import Op
from tests.support import ROOT, SHIPPED_POLICIES, fixture


@pytest.mark.parametrize(
    "policies", [SHIPPED_POLICIES, ROOT / "benchmarks" / "policy50"], ids=["shipped", "policy50"]
)
def test_a_loaded_policy_holds_no_reference_cycles(policies: Path) -> None:
    """Compiled policies are frozen out of the garbage collector; cycles in them would leak.
    The 50-rule file is four chunks, each calling the next."""
    gc.collect()
    gc.disable()
    try:
        policy = load_policy(policies)
        assert len(policy.rules[Op.NEW_PROXY].program or ()) > 1 or policies == SHIPPED_POLICIES
        decide(policy, Op.NEW_PROXY, fixture("NewProxy-https")["content"])
        del policy
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_a_reload_compiles_only_the_rules_that_changed(tmp_path: Path) -> None:
    rules = tmp_path / "NewProxy.rules"
    head = 'let team = user.metas.team\nreject "a" when team == "x"\n'
    rules.write_text(head + 'reject "b" when content.remote_port == 1\n')
    first = load_policy(tmp_path)
    rules.write_text("# moved down\n" + head + 'reject "b" when content.remote_port == 2\n')
    second = load_policy(tmp_path, previous=first)
    old, new = first.rules[Op.NEW_PROXY].statements, second.rules[Op.NEW_PROXY].statements
    assert new[1].condition is old[1].condition, "unchanged: reused"
    assert new[2].condition is not old[2].condition, "changed: compiled again"
    assert [s.location.line for s in new] == [2, 3, 4], "reused rules carry their new lines"


def test_a_reused_rule_is_validated_again_when_what_it_depends_on_changed(tmp_path: Path) -> None:
    rules = tmp_path / "NewProxy.rules"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "teams.toml").write_text("red = 1\n")
    rules.write_text('let team = user.metas.team\nreject "a" when team == "x" or data.teams.red\n')
    first = load_policy(tmp_path)
    rules.write_text('reject "a" when team == "x" or data.teams.red\n')
    with pytest.raises(PolicyLoadError, match="unknown name 'team'"):
        load_policy(tmp_path, previous=first)
    rules.write_text('let team = user.metas.team\nreject "a" when team == "x" or data.teams.red\n')
    (tmp_path / "data" / "teams.toml").unlink()
    with pytest.raises(PolicyLoadError, match="no data file named 'teams'"):
        load_policy(tmp_path, previous=first)


def test_a_policy_keeps_the_bytes_its_version_is_the_hash_of(tmp_path: Path) -> None:
    """The version history stores `sources`: they must be exactly what the version hashes."""
    policy = load_policy(SHIPPED_POLICIES)
    root = SHIPPED_POLICIES
    files = {f.path for f in policy.rules.values()} | {d.path for d in policy.data_files}
    assert set(policy.sources) == files
    assert all(policy.sources[path] == (root / path).read_bytes() for path in files)
    assert list(policy.sources)[: len(policy.data_files)] == [d.path for d in policy.data_files]
    assert policy_version(policy.sources) == policy.version
    copy = shutil.copytree(SHIPPED_POLICIES, tmp_path / "elsewhere")
    assert load_policy(copy).version == policy.version
    (copy / "Ping.rules").write_text("allow\n")
    assert load_policy(copy).version != policy.version
