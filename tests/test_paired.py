"""The paired bootstrap over users and seeds (dealrec/paired.py) and the per-user results it reads."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dealrec.paired import paired_difference
from dealrec_core.data import EvalSplit, write_parquet_atomic
from dealrec_core.errors import DealrecError
from dealrec_core.evaluate import (PerUser, evaluate_scorer, evaluate_scorer_per_user, per_user_table,
                                   ranking_metrics, ranking_per_user, read_per_user)


def _runs(matrix: np.ndarray, users: np.ndarray | None = None) -> dict[int, PerUser]:
    """[seeds, users] values of one metric as one side's runs."""
    users = np.arange(matrix.shape[1]) if users is None else users
    return {s: PerUser(users, {"recall@10": row}) for s, row in enumerate(matrix)}


def test_identical_sides_differ_by_nothing_and_decide_nothing():
    rng = np.random.default_rng(0)
    values = (rng.random((3, 300)) < 0.2).astype(float)
    r = paired_difference(_runs(values), _runs(values.copy()), "recall@10")
    assert r["diff"] == 0.0 and r["low"] <= 0.0 <= r["high"] and r["verdict"] == "not decided"


def test_a_shift_of_every_user_is_decided_both_ways():
    rng = np.random.default_rng(1)
    b = np.repeat(rng.random((1, 200)), 3, axis=0)   # every seed alike: only the users vary
    better = paired_difference(_runs(b + 0.05), _runs(b), "recall@10")
    assert better["diff"] == pytest.approx(0.05) and better["verdict"] == "better"
    assert better["low"] == pytest.approx(0.05) and better["high"] == pytest.approx(0.05)
    worse = paired_difference(_runs(b), _runs(b + 0.05), "recall@10")
    assert worse["verdict"] == "worse" and worse["diff"] == pytest.approx(-0.05)


def test_the_spread_of_the_seeds_widens_the_interval():
    """Each side's seeds are resampled on their own: runs that fall far apart leave less decided."""
    rng = np.random.default_rng(7)
    users = rng.random(300)
    steady = paired_difference(_runs(np.stack([users + 0.02] * 3)), _runs(np.stack([users] * 3)), "recall@10")
    swings = np.array([[-0.03], [0.0], [0.03]])       # the same mean, runs 0.03 apart
    shaky = paired_difference(_runs(users + 0.02 + swings), _runs(np.stack([users] * 3)), "recall@10")
    assert steady["diff"] == pytest.approx(shaky["diff"])
    assert steady["verdict"] == "better" and shaky["verdict"] == "not decided"
    assert shaky["high"] - shaky["low"] > 10 * (steady["high"] - steady["low"])


def test_users_are_paired_by_id_not_by_position_and_only_shared_users_count():
    rng = np.random.default_rng(2)
    b = rng.random((2, 150))
    a = b + 0.01
    order = rng.permutation(150)
    shuffled = {s: PerUser(np.arange(150)[order], {"recall@10": row[order]}) for s, row in enumerate(a)}
    assert paired_difference(shuffled, _runs(b), "recall@10") == paired_difference(_runs(a), _runs(b), "recall@10")
    # side a holds 10 more users: they are left out
    wider = {s: PerUser(np.arange(160), {"recall@10": np.r_[row, np.ones(10)]}) for s, row in enumerate(a)}
    r = paired_difference(wider, _runs(b), "recall@10")
    assert r["users"] == 150 and r["diff"] == pytest.approx(0.01)


def test_pairing_decides_a_small_consistent_gain_among_very_different_users():
    """Users' recall varies far more than the gain: unpaired, it would drown; paired, it is decided."""
    rng = np.random.default_rng(3)
    base = rng.random(500)                    # each user's own level, the same in every run
    b = base + rng.normal(0, 0.002, (3, 500))
    a = base + 0.01 + rng.normal(0, 0.002, (3, 500))
    r = paired_difference(_runs(a), _runs(b), "recall@10")
    assert r["verdict"] == "better" and r["high"] - r["low"] < 0.005
    assert np.std(base) / np.sqrt(500) > 0.01   # what an unpaired interval's half width would be near


def test_the_interval_holds_zero_about_95_times_in_100_when_nothing_differs():
    """Coverage: two sides drawn from the same law (users' hit rates differ, runs differ per seed)."""
    rng = np.random.default_rng(4)
    decided = 0
    trials = 200
    for _ in range(trials):
        rate = rng.beta(1, 6, 120)
        a = (rng.random((3, 120)) < rate).astype(float)
        b = (rng.random((3, 120)) < rate).astype(float)
        decided += paired_difference(_runs(a), _runs(b), "recall@10", replicates=400)["verdict"] != "not decided"
    assert decided / trials <= 0.10


def test_the_same_runs_give_the_same_interval_and_bad_input_is_refused():
    rng = np.random.default_rng(5)
    a, b = rng.random((3, 50)), rng.random((2, 50))
    assert paired_difference(_runs(a), _runs(b), "recall@10") == paired_difference(_runs(a), _runs(b), "recall@10")
    with pytest.raises(ValueError, match="no per-user ndcg@10"):
        paired_difference(_runs(a), _runs(b), "ndcg@10")
    with pytest.raises(ValueError, match="share no user"):
        paired_difference(_runs(a), _runs(b, users=np.arange(50, 100)), "recall@10")
    with pytest.raises(ValueError, match="at least one run"):
        paired_difference({}, _runs(b), "recall@10")


def _split(rng, n_users: int, n_items: int) -> EvalSplit:
    history = [rng.integers(1, n_items + 1, rng.integers(0, 6)).astype(np.int32) for _ in range(n_users)]
    targets = [rng.integers(1, n_items + 1, rng.integers(1, 3)).astype(np.int32) for _ in range(n_users)]
    targets[3] = np.zeros(1, np.int32)   # a user without a ground truth is not counted
    return EvalSplit(user=np.arange(100, 100 + n_users), history=history, targets=targets)


def test_per_user_metrics_are_the_split_metrics_user_by_user():
    rng = np.random.default_rng(6)
    n_users, n_items = 60, 25
    split = _split(rng, n_users, n_items)
    ranked = np.stack([rng.permutation(np.arange(1, n_items + 1))[:20] for _ in range(n_users)])
    ranked[5, 12:] = 0   # a short list
    per_user = ranking_per_user(ranked, split, ks=(5, 10), n_items=n_items)
    assert list(per_user.users) == [u for i, u in enumerate(split.user) if i != 3]
    assert per_user.means() == pytest.approx(ranking_metrics(ranked, split, ks=(5, 10), n_items=n_items),
                                             abs=1e-12)
    # user 100 by hand: its hits in the first 5, history items dropped first
    seen = set(split.history[0].tolist())
    kept = [i for i in ranked[0] if i > 0 and i not in seen][:5]
    truth = set(split.targets[0].tolist())
    assert per_user.values["recall@5"][0] == pytest.approx(len(truth & set(kept)) / len(truth))

    table = torch.as_tensor(rng.normal(size=(n_items + 1, 4)), dtype=torch.float32)
    vectors = {id(h): torch.as_tensor(rng.normal(size=4), dtype=torch.float32) for h in split.history}

    def score(histories):
        return torch.stack([vectors[id(h)] for h in histories]) @ table.T

    scored = evaluate_scorer_per_user(score, split, n_items, ks=(5, 10), batch_size=7)
    assert list(scored.users) == list(per_user.users)
    assert scored.means() == pytest.approx(evaluate_scorer(score, split, n_items, ks=(5, 10), batch_size=7),
                                           abs=1e-12)
    # and independent of the batch size
    again = evaluate_scorer_per_user(score, split, n_items, ks=(5, 10), batch_size=64)
    assert all(np.array_equal(again.values[k], scored.values[k]) for k in scored.values)


def test_per_user_file_round_trips_and_a_bad_one_names_itself(tmp_path):
    a = PerUser(np.array([3, 1, 2]), {"recall@10": np.array([1.0, 0.0, 0.5]), "ndcg@10": np.array([0.3, 0, 0.2])})
    b = PerUser(np.array([7]), {"recall@10": np.array([0.25]), "ndcg@10": np.array([0.1])})
    path = tmp_path / "per_user.parquet"
    write_parquet_atomic(per_user_table({"valid": a, "test": b}), path)
    back = read_per_user(path)
    assert list(back) == ["valid", "test"]
    assert list(back["valid"].users) == [3, 1, 2] and list(back["valid"].values["recall@10"]) == [1.0, 0.0, 0.5]
    assert back["test"].means() == {"recall@10": 0.25, "ndcg@10": 0.1}
    twice = PerUser(np.array([3, 3]), {"recall@10": np.array([1.0, 0.0])})
    write_parquet_atomic(per_user_table({"valid": twice}), path)
    with pytest.raises(DealrecError, match=r"per_user\.parquet: split 'valid' lists a user twice"):
        read_per_user(path)
    path.write_bytes(b"not parquet")
    with pytest.raises(DealrecError, match=r"per_user\.parquet: not a readable per-user results file"):
        read_per_user(path)
    write_parquet_atomic(per_user_table({"valid": a}).drop_columns(["user"]), path)
    with pytest.raises(DealrecError, match=r"per_user\.parquet, field 'user': missing column"):
        read_per_user(path)
    with pytest.raises(ValueError, match="2 values for 3 users"):
        PerUser(np.array([1, 2, 3]), {"recall@10": np.array([1.0, 0.0])})


def test_a_comparison_lists_the_methods_whose_runs_have_no_per_user_results(tmp_path):
    """A run without per_user.parquet and without a checkpoint to rank again is left out of the intervals, and the
    report says so; the others are still paired."""
    from dealrec.compare import paired_comparisons, paired_markdown

    rng = np.random.default_rng(8)
    results = {}
    for method in ("dealrec", "random", "ccs"):
        for seed in (0, 1):
            name = f"{method}-seed{seed}"
            results[name] = {"name": name}
            folder = tmp_path / "runs" / name / "tiger"
            folder.mkdir(parents=True)
            if method != "ccs":
                split = PerUser(np.arange(40), {"recall@10": rng.random(40), "ndcg@10": rng.random(40),
                                                "recall@20": rng.random(40), "ndcg@20": rng.random(40)})
                write_parquet_atomic(per_user_table({"valid": split, "test": split}), folder / "per_user.parquet")
    context = {"out": tmp_path, "target": "tiger", "methods": ["dealrec", "random", "ccs"], "full": False,
               "seeds": [0, 1], "say": lambda line: None}
    paired = paired_comparisons(context, results, backfill=True)
    assert paired["without_per_user"] == ["ccs"]
    assert set(paired["against_random"]) == {"dealrec"} and set(paired["dealrec_against"]) == {"random"}
    assert paired["against_random"]["dealrec"]["test"]["recall@10"]["users"] == 40
    text = "\n".join(paired_markdown(paired))
    assert "| dealrec - random | " in text and "No per-user results for ccs" in text
