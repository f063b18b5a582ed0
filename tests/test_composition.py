"""dealrec/composition.py: the targets' popularity recall (one ranking for every user, ties in expectation) and the
check that select and prune run on every coreset."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from dealrec.cli import main
from dealrec.composition import check_note, global_ranking_recall, popularity_check, target_popularity_recall
from dealrec_core.data import EvalSplit, samples_table, write_parquet_atomic, write_samples
from dealrec_core.evaluate import evaluate_scorer


def _split(rng, n_users, n_items, max_history=6, max_truth=3):
    users = np.arange(n_users)
    history = [rng.choice(np.arange(1, n_items + 1), rng.integers(0, max_history + 1), replace=False).astype(np.int32)
               for _ in users]
    truth = [rng.choice(np.arange(1, n_items + 1), rng.integers(1, max_truth + 1), replace=False).astype(np.int32)
             for _ in users]
    truth[0] = np.zeros(1, np.int32)   # a user without a ground truth: not counted
    return EvalSplit(users, history, truth)


def test_without_ties_it_is_the_evaluator_s_recall():
    rng = np.random.default_rng(0)
    n_items = 300
    split = _split(rng, 200, n_items, max_history=40)
    scores = rng.permutation(n_items + 1).astype(np.float64)   # every score distinct
    row = torch.tensor(scores, dtype=torch.float32)
    for k in (1, 10, 20):
        want = evaluate_scorer(lambda h: row.unsqueeze(0).expand(len(h), -1), split, n_items, ks=(k,))[f"recall@{k}"]
        assert global_ranking_recall(scores, split, k) == pytest.approx(want, abs=1e-12)


def test_ties_share_the_slots_left_as_every_order_among_them_would_on_average():
    rng = np.random.default_rng(1)
    n_items, k = 7, 3
    scores = np.array([0, 5, 3, 3, 3, 1, 1, 0], dtype=np.float64)   # ties at the third place, and below
    split = _split(rng, 40, n_items, max_history=3)
    by_order = []
    for order in itertools.permutations(range(1, n_items + 1)):   # every tie-break, by brute force
        position = {item: p for p, item in enumerate(order)}
        total = users = 0
        for history, truth in zip(split.history, split.targets):
            truth = set(int(t) for t in truth if t > 0)
            if not truth:
                continue
            ranked = sorted((i for i in range(1, n_items + 1) if i not in set(history.tolist())),
                            key=lambda i: (-scores[i], position[i]))[:k]
            total += len(truth & set(ranked)) / len(truth)
            users += 1
        by_order.append(total / users)
    assert global_ranking_recall(scores, split, k) == pytest.approx(np.mean(by_order), abs=1e-12)
    assert min(by_order) < np.mean(by_order) < max(by_order)   # the tie-break does move it here


def test_a_catalogue_no_larger_than_k_ranks_everything_left():
    split = EvalSplit(np.arange(2), [np.array([1], np.int32), np.array([], np.int32)],
                      [np.array([1, 2], np.int32), np.array([3], np.int32)])
    # user 0: item 1 is in the history, item 2 is ranked: half its truth; user 1: all of it
    assert global_ranking_recall(np.array([0, 2.0, 1.0, 0.0]), split, k=10) == pytest.approx(0.75)


def test_the_check_flags_a_coreset_of_rare_targets_and_not_one_of_popular_ones():
    rng = np.random.default_rng(2)
    n_items = 60
    popularity = 1.0 / np.arange(1, n_items + 1)            # item 1 the most popular
    popularity /= popularity.sum()
    all_targets = rng.choice(np.arange(1, n_items + 1), 3000, p=popularity)
    valid = EvalSplit(np.arange(300), [np.zeros(0, np.int32)] * 300,
                      [np.array([t], np.int32) for t in rng.choice(np.arange(1, n_items + 1), 300, p=popularity)])
    # 100 samples whose targets are among the 12 most popular items, or outside the 30 most popular
    rare, popular = all_targets[all_targets > 30][:100], all_targets[all_targets <= 12][:100]
    low, high = (popularity_check(t, all_targets, n_items, valid, seed=4) for t in (rare, popular))
    assert low["below_random"] and not high["below_random"]
    assert low["targets_popularity_recall@10"] < low["random_mean"] < high["targets_popularity_recall@10"]
    assert len(low["random_draws"]) == 5 and low["random_draws"] == high["random_draws"]   # the same draws
    assert popularity_check(rare, all_targets, n_items, valid, seed=4) == low                # seeded
    assert popularity_check(rare, all_targets, n_items, valid, seed=5)["random_draws"] != low["random_draws"]
    assert popularity_check(np.zeros(0, np.int64), all_targets, n_items, valid) is None
    assert target_popularity_recall(rare, n_items, {"valid": valid})["valid"] == low["targets_popularity_recall@10"]
    note = check_note(low, "LOG")
    assert note.startswith("note: this coreset's targets' popularity Recall@10 on validation is ")
    assert "dealrec compare LOG --n N --methods dealrec,random" in note
    assert check_note(high, "LOG") is None and check_note(None, "LOG") is None


def _log(root, rng, n_items=40, n=400):
    popularity = 1.0 / np.arange(1, n_items + 1)
    popularity /= popularity.sum()
    sid = np.arange(n, dtype=np.int64)
    targets = rng.choice(np.arange(1, n_items + 1), n, p=popularity).astype(np.int32)
    write_samples(samples_table(sid, sid, [rng.integers(1, n_items + 1, rng.integers(0, 4)) for _ in sid], targets),
                  root / "samples", shard_size=128)
    pq.write_table(pa.table({"item": np.arange(1, n_items + 1, dtype=np.int32),
                             "title": [f"game {i}" for i in range(1, n_items + 1)]}), root / "items.parquet")
    users = np.arange(150) + 10_000
    truth = rng.choice(np.arange(1, n_items + 1), len(users), p=popularity)
    (root / "eval").mkdir()
    write_parquet_atomic(EvalSplit(users, [np.zeros(0, np.int32)] * len(users),
                                   [np.array([t], np.int32) for t in truth]).to_table(), root / "eval" / "valid.parquet")
    return sid, targets


def test_select_records_the_check_and_says_so_when_the_coreset_is_below_random(tmp_path):
    rng = np.random.default_rng(3)
    data = tmp_path / "data"
    sid, targets = _log(data, rng)
    # greedy takes the top scores: samples of the rarest targets, or samples of the 10 most popular in turn
    spread = rng.random(len(sid))
    for name, score in (("rare", -np.bincount(targets)[targets] + spread), ("popular", (targets <= 10) + spread)):
        run = tmp_path / name
        run.mkdir()
        pq.write_table(pa.table({"sample_id": sid, "influence": score.astype(np.float64),
                                 "effort": np.zeros(len(sid))}), run / "scores.parquet")
        (run / "manifest.json").write_text(json.dumps({"data": str(data)}))
        res = CliRunner().invoke(main, ["select", str(run), "--method", "greedy", "--n", "40", "--no-plot"])
        assert res.exit_code == 0, res.output
        check = json.loads((run / "manifest.json").read_text())["selection"]["check"]
        assert check["below_random"] == (name == "rare")
        assert ("note: this coreset's targets' popularity" in res.output) == (name == "rare"), res.output
    # random is the yardstick, not checked against itself
    res = CliRunner().invoke(main, ["select", "--method", "random", "--data", str(data), "--out",
                                    str(tmp_path / "rnd"), "--n", "40", "--no-plot"])
    assert res.exit_code == 0, res.output
    assert "check" not in json.loads((tmp_path / "rnd" / "manifest.json").read_text())["selection"]
