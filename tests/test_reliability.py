"""Every case of the reliability catalogue behaves as documented (docs/reliability.md is generated from it)."""

import pytest

from .reliability import CASES, verdict


@pytest.mark.parametrize("case", CASES, ids=[f"{c.group}: {c.input}" for c in CASES])
def test_reliability_case(case, tmp_path):
    outcome, said = verdict(case, tmp_path)
    assert outcome == "clear", f"{case.input}: expected {case.expect}, got {outcome}: {said}"
