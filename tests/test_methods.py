"""The selection-method registry (dealrec.methods): one entry per method, and everything that reads it."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
from click.testing import CliRunner

from dealrec.cli import main
from dealrec.coreset import method_score
from dealrec.methods import BASELINES, METHODS, REGISTRY, method_help

DOCS = Path(__file__).resolve().parents[1] / "docs" / "selection.md"


def test_the_registry_says_what_the_old_tables_said():
    # METHOD_COLUMNS, STRATIFIED_METHODS, TOP_N_METHODS, BASELINE_METHODS and BASELINE_COLUMNS as they were
    # before the registry replaced them (and the order of --method's choices)
    assert METHODS == ("dealrec", "influence", "effort", "greedy", "random", "grand", "el2n", "ccs")
    assert {m: REGISTRY[m].columns for m in METHODS} == {
        "dealrec": ("influence", "effort"), "influence": ("influence",), "effort": ("effort",),
        "greedy": ("influence", "effort"), "random": (), "grand": ("grand",), "el2n": ("el2n",), "ccs": ("el2n",)}
    assert [m for m in METHODS if REGISTRY[m].stratified] == ["dealrec", "influence", "effort", "ccs"]
    assert [m for m in METHODS if REGISTRY[m].rule == "top_n"] == ["greedy", "grand", "el2n"]
    assert {m: REGISTRY[m].baseline.column for m in METHODS if REGISTRY[m].baseline} == {
        "el2n": "el2n", "ccs": "el2n", "grand": "grand"}
    assert [m for m in METHODS if REGISTRY[m].uses_lambda] == ["dealrec", "greedy"]
    assert method_help() == "dealrec; ablations influence, effort, greedy; baselines random, grand, el2n, ccs."


def test_lambda_changes_the_score_of_exactly_the_methods_that_use_it():
    rng = np.random.default_rng(0)
    table = pa.table({"sample_id": np.arange(50) * 3, **{c: rng.standard_normal(50)
                                                        for c in ("influence", "effort", "el2n", "grand")}})
    for name, m in REGISTRY.items():
        a, b = method_score(table, name, 0.3, 0), method_score(table, name, 0.9, 0)
        assert (not np.array_equal(a, b)) == m.uses_lambda, name


def test_each_baseline_column_has_the_method_of_its_name():
    # dealrec compare computes a column once by running the method named after it (top n of the column alone)
    for b in BASELINES:
        m = REGISTRY[b.column]
        assert m.baseline is b and m.columns == (b.column,) and m.rule == "top_n"
    assert {m.baseline for m in REGISTRY.values() if m.baseline} == set(BASELINES)


def test_select_help_lists_every_method_with_its_description():
    out = CliRunner().invoke(main, ["select", "--help"], terminal_width=200).output
    listed = re.findall(r"^\s+(\S+)\s{2,}(.+?)\s*$", out.split("Methods:")[1], flags=re.M)
    assert listed == [(m.name, m.description) for m in REGISTRY.values()]
    # the --surrogate help names the methods that need one
    named = re.search(r"Trained surrogate for (\S+)", out).group(1).split("/")
    assert sorted(named) == sorted(m for m in METHODS if REGISTRY[m].baseline)


def _params(m) -> str:
    used = (["lambda"] if m.uses_lambda else []) + (["k", "hard prune"] if m.stratified else [])
    return ", ".join(used) or "-"


def expected_table() -> list[str]:
    rows = ["| method | family | ranks by | rule | parameters | description |",
            "| --- | --- | --- | --- | --- | --- |"]
    for m in REGISTRY.values():
        ranks = ", ".join(f"`{c}`" for c in m.columns) or "a key of (seed, sample_id)"
        rows.append(f"| `{m.name}` | {m.family} | {ranks} | {m.rule.replace('_', ' ')} | {_params(m)} "
                    f"| {m.description} |")
    return rows


def test_docs_table_of_methods_is_the_registry():
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("\n## Methods\n", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    assert table == expected_table(), "docs/selection.md, '## Methods', should read:\n" + "\n".join(expected_table())


def test_each_stratified_method_has_its_own_default_hard_prune():
    """The paper's hard prune drops the highest scores, its hardest samples; the stationary influence's highest
    are its easiest, so dealrec and influence drop nothing unless asked, while effort and CCS (high = hard) keep
    the paper's 10%. An explicit share wins for every method."""
    from dealrec.coreset import SelectionConfig
    from dealrec.methods import hard_prune_help
    from dealrec.strata import PAPER_HARD_PRUNE

    assert {m: REGISTRY[m].hard_prune for m in METHODS if REGISTRY[m].stratified} == \
        {"dealrec": 0.0, "influence": 0.0, "effort": PAPER_HARD_PRUNE, "ccs": PAPER_HARD_PRUNE}
    assert SelectionConfig().hard_prune == 0.0 and SelectionConfig("ccs").hard_prune == PAPER_HARD_PRUNE
    assert SelectionConfig("dealrec", hard_prune=0.2).hard_prune == 0.2 == SelectionConfig("ccs", hard_prune=0.2).hard_prune
    assert hard_prune_help() == "0 for dealrec and influence, 0.1 for effort and ccs"
