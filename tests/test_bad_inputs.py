"""Every case of tests/bad_inputs.py in the suite: refused or accepted as expected, with no traceback,
one error line, no input changed and nothing partial left behind (docs/reliability.md)."""
from __future__ import annotations

import pytest

from bad_inputs import build_fixtures, cases, run_case

CASES = cases()


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return build_fixtures(tmp_path_factory.mktemp("bad-inputs") / "fixtures")


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c.command}: {c.name}" for c in CASES])
def test_bad_input(index, fixtures, tmp_path):
    case = CASES[index]
    row = run_case(case, tmp_path / "case", fixtures)
    assert not row["traceback"], row.get("exception")
    assert row["outcome"] == case.expect, row["message"]
    assert row["one_line"], row["message"]
    assert not row["inputs_changed"], f"inputs changed: {row['inputs_changed']}"
    assert not row["partial"], f"left behind after a refusal: {row['partial']}"
