"""The language's functions (policyd.rules.functions) against what they stand for."""

from __future__ import annotations

import re2
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.rules.functions import regex

PATTERNS = ["^[a-z0-9._-]+$", "b", "", "^$", "(a)|(b)", "é+", "[0-9]+(MB|KB)$", "\\.", "^x.*y$"]


TEXTS = st.text(alphabet="abxy.é0-9MBK\n", max_size=8)


@settings(max_examples=300, derandomize=True, database=None)
@given(st.sampled_from(PATTERNS), TEXTS)
def test_regex_answers_as_re2_search(pattern: str, text: str) -> None:
    assert regex(pattern, text) is (re2.compile(pattern).search(text) is not None)
