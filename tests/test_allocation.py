"""How a stratified method splits its budget over the strata: the paper's equal shares, shares by the square root
of each stratum's count, shares in proportion to it, and "auto" (equal unless the check puts that coreset below
random draws', then its fallback)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dealrec.cli import main
from dealrec.composition import popularity_check
from dealrec.coreset import SelectionConfig, select_coreset
from dealrec.strata import allocate_budget, allocate_budget_proportional, allocate_budget_sqrt, stratified_select
from dealrec_core.data import PreparedData, samples_table
from dealrec_core.errors import DealrecError
from test_composition import _log


def _ideal_sqrt_shares(counts: np.ndarray, n: int) -> np.ndarray:
    """The real-valued water-filling the integer budgets round: min(count, t * sqrt(count)) summing to n."""
    lo, hi = 0.0, float(n) + 1.0
    for _ in range(200):
        t = (lo + hi) / 2
        lo, hi = (t, hi) if np.minimum(counts, t * np.sqrt(counts)).sum() < n else (lo, t)
    return np.minimum(counts, hi * np.sqrt(counts))


@pytest.mark.parametrize("case", range(40))
def test_sqrt_budgets_spend_exactly_n_within_the_counts_and_round_the_square_root_water_filling(case):
    rng = np.random.default_rng(case)
    counts = rng.integers(0, [3, 30, 3000][case % 3], rng.integers(1, 60)).astype(np.int64)
    counts[rng.integers(len(counts))] += 1   # at least one sample
    n = int(rng.integers(1, counts.sum() + 1))
    budgets = allocate_budget_sqrt(counts, n)
    assert budgets.sum() == n and np.all(budgets >= 0) and np.all(budgets <= counts)
    assert np.all(np.abs(budgets - _ideal_sqrt_shares(counts.astype(float), n)) < 1.0 + 1e-6), (counts, n, budgets)
    # a stratum with more samples never gets a smaller budget (equal counts may differ by the one left over)
    more = counts[:, None] > counts[None, :]
    assert not np.any(more & (budgets[:, None] < budgets[None, :]))
    assert np.array_equal(allocate_budget_sqrt(counts, n), budgets)   # deterministic


def test_sqrt_budgets_lie_between_the_paper_s_equal_shares_and_a_uniform_draw_s():
    counts = np.array([900, 100, 9, 4, 1, 1], dtype=np.int64)
    n = 100
    equal, root = allocate_budget(counts, n), allocate_budget_sqrt(counts, n)
    proportional = n * counts / counts.sum()
    assert equal[0] < root[0] < proportional[0]          # the dense stratum: more than equal, less than uniform
    assert equal[-1] == root[-1] == 1 and proportional[-1] < 1
    # sqrt 30 : 10 : 3 : 2 : 1 : 1; the two strata of one sample take it, then the one of 4 (98 * 2 / 45 >= 4),
    # 94 left for 30 : 10 : 3 -> 65.6, 21.9, 6.6 -> floors 65, 21, 6 and the 2 left to the largest fractions
    assert list(root) == [66, 22, 6, 4, 1, 1]
    assert list(equal) == [43, 42, 9, 4, 1, 1]   # the paper's, fewest-first (docs/selection.md's worked example)
    assert allocate_budget_sqrt(counts, 0).sum() == 0
    assert np.array_equal(allocate_budget_sqrt(counts, int(counts.sum())), counts)
    with pytest.raises(DealrecError, match="exceeds"):
        allocate_budget_sqrt(counts, int(counts.sum()) + 1)
    with pytest.raises(DealrecError, match="non-negative"):
        allocate_budget_sqrt(counts, -1)


@pytest.mark.parametrize("case", range(40))
def test_proportional_budgets_spend_exactly_n_and_round_n_times_the_stratum_s_share(case):
    rng = np.random.default_rng(100 + case)
    counts = rng.integers(0, [3, 30, 3000][case % 3], rng.integers(1, 60)).astype(np.int64)
    counts[rng.integers(len(counts))] += 1
    n = int(rng.integers(1, counts.sum() + 1))
    budgets = allocate_budget_proportional(counts, n)
    assert budgets.sum() == n and np.all(budgets >= 0) and np.all(budgets <= counts)
    assert np.all(np.abs(budgets - n * counts / counts.sum()) < 1.0 + 1e-6), (counts, n, budgets)
    more = counts[:, None] > counts[None, :]
    assert not np.any(more & (budgets[:, None] < budgets[None, :]))


def test_proportional_budgets_worked_example():
    counts = np.array([900, 100, 9, 4, 1, 1], dtype=np.int64)
    # 100 * counts / 1015 = 88.67, 9.85, 0.89, 0.39, 0.10, 0.10: floors 88, 9, 0, 0, 0, 0 and the 3 left to the
    # largest fractions (0.89, 0.85, 0.67)
    assert list(allocate_budget_proportional(counts, 100)) == [89, 10, 1, 0, 0, 0]
    assert np.array_equal(allocate_budget_proportional(counts, int(counts.sum())), counts)
    with pytest.raises(DealrecError, match="exceeds"):
        allocate_budget_proportional(counts, int(counts.sum()) + 1)


def test_stratified_select_fills_the_sqrt_budgets_and_refuses_an_unknown_allocation():
    rng = np.random.default_rng(0)
    sid = rng.permutation(5000).astype(np.int64)
    score = rng.beta(0.3, 3, len(sid))                   # a long thin tail, as the influence has
    chosen, strata = stratified_select(sid, score, 300, 20, 0.0, seed=1, return_strata=True, allocation="sqrt")
    assert len(chosen) == 300 and np.array_equal(strata.budgets, allocate_budget_sqrt(strata.counts, 300))
    taken = np.bincount(strata.stratum[np.isin(sid, chosen)], minlength=20)
    assert np.array_equal(taken, strata.budgets)
    equal, _ = stratified_select(sid, score, 300, 20, 0.0, seed=1)
    assert not np.array_equal(equal, chosen)
    prop, prop_strata = stratified_select(sid, score, 300, 20, 0.0, seed=1, return_strata=True,
                                          allocation="proportional")
    assert np.array_equal(prop_strata.budgets, allocate_budget_proportional(prop_strata.counts, 300))
    assert np.array_equal(np.bincount(prop_strata.stratum[np.isin(sid, prop)], minlength=20), prop_strata.budgets)
    assert len({tuple(equal), tuple(chosen), tuple(prop)}) == 3
    # the rows' order does not matter, as for the paper's budgets
    perm = rng.permutation(len(sid))
    again, _ = stratified_select(sid[perm], score[perm], 300, 20, 0.0, seed=1, allocation="sqrt")
    assert np.array_equal(again, chosen)
    with pytest.raises(DealrecError, match="unknown allocation 'even'"):
        stratified_select(sid, score, 300, 20, 0.0, allocation="even")


def _tables(n=400, seed=0):
    rng = np.random.default_rng(seed)
    sid = np.arange(n, dtype=np.int64)
    samples = samples_table(sid, sid, [np.zeros(0, np.int32)] * n, rng.integers(1, 30, n).astype(np.int32))
    scores = pa.table({"sample_id": sid, "influence": rng.beta(0.3, 3, n), "effort": np.zeros(n)})
    return samples, scores


@pytest.mark.parametrize("below", [False, True])
def test_auto_takes_the_paper_s_budgets_unless_the_check_puts_them_below_random(below):
    samples, scores = _tables()
    seen = []

    def judge(selected):
        seen.append(np.asarray(selected).copy())
        return {"targets_popularity_recall@10": 0.1 * len(seen), "random_mean": 0.15, "below_random": len(seen) == 1
                and below}

    auto = select_coreset(scores, samples, "influence", 60, k=10, seed=3, allocation="auto", judge=judge)
    forced = {how: select_coreset(scores, samples, "influence", 60, k=10, seed=3, allocation=how)
              for how in ("equal", "sqrt")}
    used = "sqrt" if below else "equal"
    assert auto.coreset.equals(forced[used].coreset)
    assert auto.summary["allocation"] == "auto" and auto.summary["allocation_used"] == used
    assert auto.summary["strata_budgets"] == forced[used].summary["strata_budgets"]
    # the judge saw the equal coreset first, and the sqrt one only when the first was below random
    assert np.array_equal(seen[0], forced["equal"].coreset.column("sample_id").to_numpy())
    assert len(seen) == (2 if below else 1)
    assert auto.summary["allocation_checks"] == ({"equal": 0.1, "sqrt": 0.2} if below else {"equal": 0.1})
    assert auto.check["targets_popularity_recall@10"] == (0.2 if below else 0.1)
    assert forced["sqrt"].summary["allocation_used"] == "sqrt" and "allocation_checks" not in forced["sqrt"].summary


def test_auto_without_a_validation_split_takes_the_paper_s_budgets_and_says_why():
    samples, scores = _tables()
    auto = select_coreset(scores, samples, "dealrec", 60, k=10, seed=3, allocation="auto")
    assert auto.coreset.equals(select_coreset(scores, samples, "dealrec", 60, k=10, seed=3,
                                              allocation="equal").coreset)
    assert auto.summary["allocation_used"] == "equal" and "no validation split" in auto.summary["allocation_reason"]


def test_an_allocation_is_refused_where_it_means_nothing_or_is_unknown():
    with pytest.raises(DealrecError, match="--method grand does not stratify .*dealrec, influence, effort, ccs"):
        SelectionConfig("grand", 10, allocation="sqrt")
    with pytest.raises(DealrecError, match="unknown --allocation 'half'"):
        SelectionConfig("dealrec", 10, allocation="half")
    assert SelectionConfig("random", 10).allocation is None
    assert SelectionConfig("ccs", 10).allocation == "equal"   # a baseline keeps its paper's budgets


def test_select_auto_takes_sqrt_budgets_on_a_coreset_of_rare_targets_and_says_so(tmp_path, monkeypatch):
    import dealrec.composition as composition

    rankings = []   # every targets' popularity ranking the checks compute
    ranking = composition.target_popularity_recall
    monkeypatch.setattr(composition, "target_popularity_recall",
                        lambda *args, **kwargs: rankings.append(1) or ranking(*args, **kwargs))
    rng = np.random.default_rng(3)
    data = tmp_path / "data"
    sid, targets = _log(data, rng)
    popular = targets <= 10
    # popular targets packed at the bottom of the score range (one dense stratum), the others spread thinly
    # above it: equal budgets fill the thin strata, so mostly rare targets
    rare_first = np.where(popular, 0.01 * rng.random(len(sid)), 0.05 + rng.random(len(sid)))
    packed_rare = np.where(popular, 0.05 + rng.random(len(sid)), 0.01 * rng.random(len(sid)))
    cli = CliRunner()
    for name, score in (("rare", rare_first), ("popular", packed_rare)):
        runs = {}
        for how in ("auto", "equal", "sqrt"):
            run = runs[how] = tmp_path / f"{name}-{how}"
            run.mkdir()
            pq.write_table(pa.table({"sample_id": sid, "influence": score}), run / "scores.parquet")
            (run / "manifest.json").write_text(json.dumps({"data": str(data)}))
            rankings.clear()
            res = cli.invoke(main, ["select", str(run), "--method", "influence", "--n", "40", "--k", "10",
                                    "--allocation", how, "--no-plot"])
            assert res.exit_code == 0, res.output
            if how == "auto":
                output, auto_rankings = res.output, len(rankings)
        selection = json.loads((runs["auto"] / "manifest.json").read_text())["selection"]
        used = selection["allocation_used"]
        assert used == ("sqrt" if name == "rare" else "equal"), selection["allocation_checks"]
        # the random draws are ranked once (5), each coreset built once more: one check, or two sharing the draws
        assert auto_rankings == (5 + 2 if used == "sqrt" else 5 + 1)
        coreset = pq.read_table(runs["auto"] / "coreset.parquet")
        assert coreset.equals(pq.read_table(runs[used] / "coreset.parquet"))
        # the manifest's check is the check of the coreset taken
        prepared = PreparedData(data)
        expected = popularity_check(coreset.column("target").to_numpy(), targets, prepared.n_items,
                                    prepared.eval_split("valid"), seed=0)
        assert selection["check"] == expected
        assert ("--allocation auto took budgets by the square root" in output) == (name == "rare"), output
    res = cli.invoke(main, ["select", str(runs["auto"]), "--method", "grand", "--allocation", "sqrt", "--n", "4"])
    assert res.exit_code == 2 and "does not stratify" in res.output and res.output.count("\n") == 1
