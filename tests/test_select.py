"""Selection: strata, fewest-first budgets, hash-keyed randomness, methods, the select command."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dealrec.cli import main
from dealrec_core.data import read_table, samples_table, write_samples
from dealrec_core.errors import DealrecError, InputError
from dealrec.select import (DEFAULT_LAMBDA, METHODS, PRUNED, allocate_budget, combine_scores, minmax, n_hard_pruned,
                            random_select, select_coreset, stratified_select, stratify, top_n_select)


def _scores(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    sid = rng.permutation(n).astype(np.int64) * 7 + 11  # not 0..n-1, not sorted
    return sid, rng.standard_t(3, n)


def _samples_for(sid):
    rng = np.random.default_rng(1)
    return samples_table(sid, sid + 1000, [rng.integers(1, 50, rng.integers(0, 6)) for _ in sid],
                         rng.integers(1, 50, len(sid)))


# ----------------------------------------------------------------------------- scores

def test_minmax_scales_and_handles_constant_columns():
    np.testing.assert_allclose(minmax([2.0, 4.0, 3.0]), [0.0, 1.0, 0.5])
    const = minmax([5.0, 5.0, 5.0])
    assert not np.isnan(const).any() and (const == 0).all()
    assert minmax([]).size == 0
    # a constant effort column leaves exactly the influence ranking
    inf = np.array([3.0, -1.0, 2.0])
    np.testing.assert_array_equal(combine_scores(inf, [7.0, 7.0, 7.0], 0.3), minmax(inf))
    np.testing.assert_allclose(combine_scores([0.0, 1.0], [1.0, 0.0], 0.5), [0.5, 1.0])
    with pytest.raises(DealrecError, match="non-finite"):
        minmax([1.0, np.nan])


# ----------------------------------------------------------------------------- strata by hand

def test_fewest_first_budget_matches_hand_computation():
    # sorted counts 1 (s1), 3 (s2), 5 (s0), 10 (s3); budget 12:
    # s1: min(1, 12//4=3) = 1 -> 11 left; s2: min(3, 11//3=3) = 3 -> 8; s0: min(5, 8//2=4) = 4 -> 4; s3: 4
    np.testing.assert_array_equal(allocate_budget([5, 1, 3, 10], 12), [4, 1, 3, 4])
    # empty strata give nothing and take nothing; equal counts: lower index first
    np.testing.assert_array_equal(allocate_budget([0, 4, 4, 0], 5), [0, 2, 3, 0])
    # every stratum full: all of it
    np.testing.assert_array_equal(allocate_budget([2, 3], 5), [2, 3])
    with pytest.raises(DealrecError, match="exceeds"):
        allocate_budget([2, 3], 6)


def test_stratified_select_small_case_by_hand():
    # k = 4 strata of width 1 over [0, 4] after the hard prune of 2 of 21 samples (floor(0.1 * 21))
    scores = ([0.0, 0.1, 0.2, 0.3, 0.4]            # stratum 0: 5
              + [1.5]                             # stratum 1: 1
              + [2.1, 2.2, 2.3]                   # stratum 2: 3
              + [3.0, 3.1, 3.2, 3.3, 3.4, 3.5, 3.6, 3.7, 3.8, 4.0]  # stratum 3: 10 (4.0 = the max)
              + [10.0, 11.0])                     # hard-pruned
    sid = np.arange(100, 121)
    selected, strata = stratified_select(sid, scores, n=12, k=4, hard_prune=0.1, seed=3, return_strata=True)
    expected_stratum = [0] * 5 + [1] + [2] * 3 + [3] * 10 + [PRUNED] * 2
    np.testing.assert_array_equal(strata.stratum, expected_stratum)
    np.testing.assert_array_equal(strata.counts, [5, 1, 3, 10])
    np.testing.assert_array_equal(strata.budgets, [4, 1, 3, 4])
    np.testing.assert_allclose(strata.edges, [0, 1, 2, 3, 4])
    picked = np.isin(sid, selected)
    assert [int(picked[np.array(expected_stratum) == s].sum()) for s in range(4)] == [4, 1, 3, 4]
    assert not picked[-2:].any()
    assert len(selected) == 12 and len(np.unique(selected)) == 12


def test_hard_prune_removes_the_top_share_ties_by_sample_id():
    sid, score = _scores(1000)
    strata = stratify(sid, score, k=10, hard_prune=0.1)
    assert strata.n_pruned == 100 == int((strata.stratum == PRUNED).sum())
    assert score[strata.stratum == PRUNED].min() >= score[strata.stratum != PRUNED].max()
    # ties at the cut: the smaller sample_id counts as the higher score
    tied = stratify([5, 3, 9, 1], [1.0, 2.0, 2.0, 0.0], k=2, hard_prune=0.25)
    np.testing.assert_array_equal(tied.stratum == PRUNED, [False, True, False, False])
    assert n_hard_pruned(100, 0.29) == 29 and n_hard_pruned(10, 0.0) == 0
    with pytest.raises(DealrecError, match="hard prune"):
        stratify(sid, score, hard_prune=1.0)


# ----------------------------------------------------------------------------- invariances

def test_selection_ignores_row_order():
    sid, score = _scores()
    sel, stratum = stratified_select(sid, score, 300, k=50, hard_prune=0.1, seed=7)
    perm = np.random.default_rng(5).permutation(len(sid))
    sel_p, stratum_p = stratified_select(sid[perm], score[perm], 300, k=50, hard_prune=0.1, seed=7)
    np.testing.assert_array_equal(sel, sel_p)
    np.testing.assert_array_equal(stratum[perm], stratum_p)
    np.testing.assert_array_equal(random_select(sid, 50, 1), random_select(sid[perm], 50, 1))
    np.testing.assert_array_equal(top_n_select(sid, score, 50), top_n_select(sid[perm], score[perm], 50))


def test_selection_ignores_sharding_of_the_scores(tmp_path):
    sid, score = _scores()
    rng = np.random.default_rng(2)
    table = pa.table({"sample_id": sid, "influence": score, "effort": rng.gamma(2.0, 1.0, len(sid))})
    samples = _samples_for(sid)
    whole = select_coreset(table, samples, "dealrec", 256, seed=4)
    shard_dir = tmp_path / "scores"
    shard_dir.mkdir()
    perm = rng.permutation(len(sid))
    for i, part in enumerate(np.array_split(perm, 3)):  # three shards, rows shuffled
        pq.write_table(table.take(pa.array(part)), shard_dir / f"part-{i:05d}.parquet")
    sharded = select_coreset(read_table(shard_dir), samples, "dealrec", 256, seed=4)
    assert sharded.coreset.equals(whole.coreset)
    assert sharded.summary == whole.summary


def test_same_seed_same_selection_other_seed_another():
    sid, score = _scores()
    a, _ = stratified_select(sid, score, 500, seed=0)
    b, _ = stratified_select(sid, score, 500, seed=0)
    c, _ = stratified_select(sid, score, 500, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(random_select(sid, 500, 0), random_select(sid, 500, 1))


def test_exactly_n_distinct_samples_from_the_pool():
    sid, score = _scores(5000)
    for n in (1, 37, 1024, 4500):  # 4500 = everything left after the 10% hard prune
        sel, stratum = stratified_select(sid, score, n, k=50, hard_prune=0.1, seed=2)
        assert len(sel) == n == len(np.unique(sel))
        assert set(sel) <= set(sid[stratum != PRUNED])
    with pytest.raises(DealrecError, match="--n 4501 exceeds the 4500 samples"):
        stratified_select(sid, score, 4501, hard_prune=0.1)


# ----------------------------------------------------------------------------- methods

def test_every_method_selects_n_with_its_own_rule():
    sid, score = _scores(3000)
    rng = np.random.default_rng(9)
    effort = rng.gamma(2.0, 1.0, len(sid))
    table = pa.table({"sample_id": sid, "influence": score, "effort": effort,
                      "el2n": rng.random(len(sid)), "grand": rng.random(len(sid))})
    samples = _samples_for(sid)
    picked = {}
    for method in METHODS:
        res = select_coreset(table, samples, method, 200, lam=0.3, k=20, hard_prune=0.1, seed=0)
        assert res.coreset.num_rows == 200
        ids = res.coreset.column("sample_id").to_numpy()
        assert (np.diff(ids) > 0).all()
        assert {"user", "history", "target", "score", "stratum"} <= set(res.coreset.column_names)
        picked[method] = set(ids)
    combined = combine_scores(score, effort, 0.3)
    assert picked["greedy"] == set(sid[np.argsort(-combined)[:200]])
    assert picked["el2n"] == set(sid[np.argsort(-table.column("el2n").to_numpy())[:200]])
    assert picked["grand"] == set(sid[np.argsort(-table.column("grand").to_numpy())[:200]])
    # the influence ablation is dealrec with lambda 0
    lam0 = select_coreset(table, samples, "dealrec", 200, lam=0.0, k=20, hard_prune=0.1, seed=0)
    assert picked["influence"] == set(lam0.coreset.column("sample_id").to_numpy())
    assert len({frozenset(v) for v in picked.values()}) == len(METHODS)


def test_select_coreset_rejects_partial_scores():
    sid, score = _scores(100)
    table = pa.table({"sample_id": sid[:-1], "influence": score[:-1], "effort": score[:-1]})
    with pytest.raises(InputError, match="1 samples of the samples table have no score"):
        select_coreset(table, _samples_for(sid), "dealrec", 10, source="RUN/scores.parquet")
    with pytest.raises(InputError, match="missing column effort"):
        select_coreset(table.drop(["effort"]), _samples_for(sid[:-1]), "dealrec", 10)


# ----------------------------------------------------------------------------- the command

def _prepared(tmp_path, n=300, n_items=40):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    sid = np.arange(n, dtype=np.int64) * 3
    write_samples(samples_table(sid, sid, [rng.integers(1, n_items + 1, rng.integers(0, 8)) for _ in sid],
                                rng.integers(1, n_items + 1, n)), data / "samples", shard_size=128)
    pq.write_table(pa.table({"item": np.arange(1, n_items + 1, dtype=np.int32),
                             "title": [f"game {i}" for i in range(1, n_items + 1)]}), data / "items.parquet")
    return data, sid


def test_select_command_writes_scores_coreset_manifest_and_plot(tmp_path):
    data, sid = _prepared(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(3)
    pq.write_table(pa.table({"sample_id": sid[::-1], "influence": rng.normal(size=len(sid)),
                             "effort": rng.random(len(sid))}), run / "scores.parquet")
    (run / "manifest.json").write_text(json.dumps({"data": str(data), "score": {"phase": "kept"}}))
    res = CliRunner().invoke(main, ["select", str(run), "--n", "64", "--k", "10", "--seed", "5"])
    assert res.exit_code == 0, res.output
    scores = pq.read_table(run / "scores.parquet")
    assert scores.column_names[:5] == ["sample_id", "influence", "effort", "score", "stratum"]
    coreset = pq.read_table(run / "coreset.parquet")
    assert coreset.num_rows == 64
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["score"] == {"phase": "kept"}  # other sections are left alone
    sel = manifest["selection"]
    assert (sel["method"], sel["n"], sel["k"], sel["seed"], sel["lambda"], sel["hard_prune"]) == \
        ("dealrec", 64, 10, 5, DEFAULT_LAMBDA, 0.0)   # the stationary influence's top is its easiest: none dropped
    assert sum(sel["strata_budgets"]) == 64 and sel["n_hard_pruned"] == 0
    assert (run / "selection.png").stat().st_size > 1000
    # the same command again gives the same coreset (its own output columns are replaced, not mixed)
    assert CliRunner().invoke(main, ["select", str(run), "--n", "64", "--k", "10", "--seed", "5"]).exit_code == 0
    assert pq.read_table(run / "coreset.parquet").equals(coreset)


def test_random_needs_no_scores(tmp_path):
    data, sid = _prepared(tmp_path)
    out = tmp_path / "rnd"
    res = CliRunner().invoke(main, ["select", "--method", "random", "--data", str(data), "--out", str(out),
                                    "--n", "50", "--no-plot"])
    assert res.exit_code == 0, res.output
    ids = pq.read_table(out / "coreset.parquet").column("sample_id").to_numpy()
    np.testing.assert_array_equal(ids, random_select(sid, 50, 0))
    # the run remembers its data: select and export again without --data
    res = CliRunner().invoke(main, ["select", str(out), "--method", "random", "--n", "20", "--seed", "1",
                                    "--no-plot"])
    assert res.exit_code == 0, res.output
    ids = pq.read_table(out / "coreset.parquet").column("sample_id").to_numpy()
    np.testing.assert_array_equal(ids, random_select(sid, 20, 1))
    res = CliRunner().invoke(main, ["export", str(out)])
    assert res.exit_code == 0, res.output
    assert len(json.loads((out / "bigrec.json").read_text(encoding="utf-8"))) == 20


def test_bad_input_gives_one_line_errors(tmp_path):
    data, sid = _prepared(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    pq.write_table(pa.table({"sample_id": sid, "influence": np.zeros(len(sid))}), run / "scores.parquet")
    (run / "manifest.json").write_text(json.dumps({"data": str(data)}))
    res = CliRunner().invoke(main, ["select", str(run), "--no-plot"])
    assert res.exit_code == 2
    msg = res.output.strip()
    assert "\n" not in msg and "scores.parquet" in msg and "field 'effort'" in msg and "Traceback" not in msg

    pq.write_table(pa.table({"sample_id": sid, "influence": np.arange(len(sid), dtype=float),
                             "effort": np.ones(len(sid))}), run / "scores.parquet")
    res = CliRunner().invoke(main, ["select", str(run), "--n", "271", "--hard-prune", "0.1", "--no-plot"])
    assert res.exit_code == 2
    assert res.output.strip() == ("error: --n 271 exceeds the 270 samples that can be selected "
                                  "(300 samples less 30 hard-pruned (hard prune 0.1))")
    res = CliRunner().invoke(main, ["select", str(run), "--n", "301", "--no-plot"])   # dealrec: no hard prune
    assert res.exit_code == 2
    assert res.output.strip() == "error: --n 301 exceeds the 300 samples that can be selected (300 samples)"

    (tmp_path / "empty").mkdir()   # a run folder whose manifest names no data
    res = CliRunner().invoke(main, ["select", str(tmp_path / "empty"), "--no-plot"])
    assert res.exit_code == 2 and "--data" in res.output
    res = CliRunner().invoke(main, ["select", str(tmp_path / "missing"), "--no-plot"])
    assert res.exit_code == 2 and "no such run folder" in res.output


def test_select_into_another_folder_leaves_run_alone(tmp_path):
    data, sid = _prepared(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(8)
    pq.write_table(pa.table({"sample_id": sid, "influence": rng.normal(size=len(sid)),
                             "effort": rng.random(len(sid))}), run / "scores.parquet")
    (run / "manifest.json").write_text(json.dumps({"inputs": {"data": str(data)}, "phases": {"influence": 1}}))
    before = (run / "scores.parquet").read_bytes()
    for method in ("influence", "effort", "greedy"):
        out = tmp_path / method
        res = CliRunner().invoke(main, ["select", str(run), "--method", method, "--n", "40", "--out", str(out),
                                        "--no-plot"])
        assert res.exit_code == 0, res.output
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["phases"] == {"influence": 1} and manifest["selection"]["method"] == method
        assert pq.read_table(out / "coreset.parquet").num_rows == 40
    assert (run / "scores.parquet").read_bytes() == before and not (run / "coreset.parquet").exists()
