"""The evaluator against a small example worked out by hand."""
import math

import numpy as np
import pytest
import torch

from dealrec_core.data import EvalSplit
from dealrec_core.evaluate import evaluate_scorer, popularity_scorer, ranking_metrics, stopping_split


def _split():
    return EvalSplit(
        user=np.array([10, 11, 12]),
        history=[np.array([1], np.int32), np.array([], np.int32), np.array([4], np.int32)],
        targets=[np.array([2, 5], np.int32), np.array([3], np.int32), np.array([], np.int32)],
    )


SCORES = {
    10: [0.0, 0.9, 0.8, 0.1, 0.7, 0.6, 0.95],  # item 1 is history: ranking 6, 2, 4, 5, 3
    11: [0.0, 0.1, 0.2, 0.9, 0.3, 0.4, 0.5],   # ranking 3, 6, 5, 4, 2, 1
    12: [0.0] * 7,                              # no targets: not evaluated
}

# By hand. User 10: hits at ranks 2 and 4 of |truth| = 2. User 11: hit at rank 1.
D2, D4 = 1 / math.log2(3), 1 / math.log2(5)
EXPECTED = {
    "recall@2": (0.5 + 1.0) / 2,
    "ndcg@2": (D2 / (1 + D2) + 1.0) / 2,
    "recall@4": (1.0 + 1.0) / 2,
    "ndcg@4": ((D2 + D4) / (1 + D2) + 1.0) / 2,
}


def test_full_ranking_matches_hand_computation():
    split = _split()
    lookup = {tuple(h.tolist()): u for u, h in zip(split.user, split.history)}

    def score_fn(histories):
        return torch.tensor([SCORES[lookup[tuple(h.tolist())]] for h in histories])

    for batch_size in (1, 2, 16):
        got = evaluate_scorer(score_fn, split, n_items=6, ks=(2, 4), batch_size=batch_size)
        assert got == pytest.approx(EXPECTED, abs=1e-12)


def test_users_are_scored_in_batches_of_similar_length_and_the_metrics_do_not_depend_on_their_order():
    rng = np.random.default_rng(3)
    n, n_items = 200, 30
    lengths = rng.integers(0, 40, n)
    history = [rng.integers(1, n_items + 1, k).astype(np.int32) for k in lengths]
    targets = [rng.integers(1, n_items + 1, 1 + (i % 3)).astype(np.int32) for i in range(n)]
    table = torch.as_tensor(rng.normal(size=(n_items + 1, 4)))

    seen = []

    def score_fn(histories):   # depends on the history alone, as a batch-invariant model's scores do
        seen.append(sorted(len(h) for h in histories))
        return torch.stack([table[torch.as_tensor(h, dtype=torch.long)].sum(0) if len(h) else table[0]
                            for h in histories]) @ table.T

    split = EvalSplit(user=np.arange(n), history=history, targets=targets)
    got = evaluate_scorer(score_fn, split, n_items=n_items, ks=(5, 10), batch_size=32)
    # every batch's lengths follow the previous batch's: batches of similar length, shortest first
    assert all(a[-1] <= b[0] for a, b in zip(seen, seen[1:]))
    perm = rng.permutation(n)
    shuffled = EvalSplit(user=perm, history=[history[i] for i in perm], targets=[targets[i] for i in perm])
    for batch_size in (1, 7, 32, 500):
        assert evaluate_scorer(score_fn, shuffled, n_items=n_items, ks=(5, 10), batch_size=batch_size) \
            == pytest.approx(got, abs=1e-12)


def test_ranked_lists_match_hand_computation():
    # user 10's list still holds its history item 1: it must be skipped, not count as a miss
    ranked = np.array([[1, 6, 2, 4, 5, 3], [3, 6, 5, 4, 2, 1], [0, 0, 0, 0, 0, 0]])
    got = ranking_metrics(ranked, _split(), ks=(2, 4))
    assert got == pytest.approx(EXPECTED, abs=1e-12)


def test_short_ranked_lists_are_padded():
    ranked = np.array([[6, 2], [3, 0], [0, 0]])
    got = ranking_metrics(ranked, _split(), ks=(2, 4))
    assert got["recall@4"] == pytest.approx((0.5 + 1.0) / 2)


def test_popularity_counts_training_items():
    score = popularity_scorer([np.array([1, 2, 2]), np.array([2, 3])], n_items=4)
    assert score([np.array([1])])[0].tolist() == [0.0, 1.0, 3.0, 1.0, 0.0]


def test_catalogue_smaller_than_k():
    # 6 items, K up to 50: lists are shorter than K; masked items never count as ranked
    split = _split()
    lookup = {tuple(h.tolist()): u for u, h in zip(split.user, split.history)}

    def score_fn(histories):
        return torch.tensor([SCORES[lookup[tuple(h.tolist())]] for h in histories])

    got = evaluate_scorer(score_fn, split, n_items=6, ks=(2, 4, 50))
    assert got["recall@2"] == pytest.approx(EXPECTED["recall@2"])
    assert got["recall@50"] == pytest.approx(1.0)
    assert got["ndcg@50"] == pytest.approx(EXPECTED["ndcg@4"])


def _split_of(n_users: int, empty_every: int = 0) -> EvalSplit:
    targets = [np.array([] if empty_every and u % empty_every == 0 else [u % 7 + 1], np.int32) for u in range(n_users)]
    return EvalSplit(np.arange(100, 100 + n_users), [np.array([1], np.int32)] * n_users, targets)


def test_stopping_split_holds_out_the_reported_users():
    split = _split_of(50, empty_every=5)          # 10 users without a ground truth
    stop, report = stopping_split(split, 12)
    assert len(stop) == 12 and len(report) == 28
    assert not set(stop.user) & set(report.user)                       # disjoint
    assert sorted(set(stop.user) | set(report.user)) == [u for u in split.user if (u - 100) % 5]   # every counted user
    assert list(report.user) == sorted(report.user)                     # order kept
    again_stop, again_report = stopping_split(split, 12)               # a fixed draw, not the caller's seed
    assert np.array_equal(again_stop.user, stop.user) and np.array_equal(again_report.user, report.user)
    # at most half the users stop, so the reported half never shrinks below half
    stop, report = stopping_split(split, 10_000)
    assert len(stop) == 20 and len(report) == 20
    # 0: every user both stops and is reported (the optimistic old protocol)
    stop, report = stopping_split(split, 0)
    assert stop is report and len(stop) == 40
    with pytest.raises(ValueError):
        stopping_split(split, -1)
