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


def _dense_reference(scores: torch.Tensor, split: EvalSplit, ks=(10, 20, 50)) -> dict[str, float]:
    """The evaluator before 2026-11-28 (session 21), as it was: [users, catalogue] masks of the histories and the
    targets, the same float64 sums per batch of users."""
    n_cols = scores.shape[1]

    def mask(rows):
        m = torch.zeros(len(rows), n_cols, dtype=torch.bool)
        for i, r in enumerate(rows):
            m[i, torch.as_tensor(np.asarray(r, dtype=np.int64))] = True
        m[:, 0] = False
        return m

    s = scores.clone()
    s[mask(split.history)] = -torch.inf
    s[:, 0] = -torch.inf
    ranked = torch.topk(s, max(ks), dim=1).indices
    ranked[torch.gather(s, 1, ranked) == -torch.inf] = 0
    truth = mask(split.targets)
    hits = torch.gather(truth, 1, ranked.clamp(min=0)).double()
    hits[ranked <= 0] = 0.0
    n_truth = truth.sum(1).double()
    discounts = 1.0 / torch.log2(torch.arange(2, max(ks) + 2, dtype=torch.float64))
    ideal_cum = torch.cumsum(discounts, 0)
    out = {}
    for k in ks:
        h = hits[:, :k]
        out[f"recall@{k}"] = float((h.sum(1) / n_truth).sum()) / len(split)
        out[f"ndcg@{k}"] = float(((h * discounts[:k]).sum(1) / ideal_cum[(torch.clamp(n_truth, max=k) - 1).long()])
                                 .sum()) / len(split)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_the_sparse_truth_gives_the_dense_masks_metrics_to_the_last_bit(seed):
    """The evaluator no longer builds [users, catalogue] masks; every figure is the same float (early stopping
    compares them strictly, so a surrogate's best epoch cannot move): several targets, repeated targets and
    history items, empty histories, targets inside the history, a catalogue barely larger than K."""
    rng = np.random.default_rng(seed)
    n_items = int(rng.choice([60, 400]))
    n_users = int(rng.integers(20, 200))
    history = [rng.integers(1, n_items + 1, int(rng.integers(0, 12))).astype(np.int32) for _ in range(n_users)]
    targets = [rng.integers(1, n_items + 1, int(rng.integers(1, 4))).astype(np.int32) for _ in range(n_users)]
    targets[0] = np.array([5, 5], np.int32)                       # a repeated target counts once
    if len(history[1]):
        targets[1] = history[1][:1].copy()                        # a target the history hides
    order = np.argsort([len(h) for h in history], kind="stable")   # the evaluator's order: one batch, as given
    history, targets = [history[i] for i in order], [targets[i] for i in order]
    split = EvalSplit(np.arange(n_users), history, targets)
    scores = torch.from_numpy(rng.standard_normal((n_users, n_items + 1)).astype(np.float32))
    scores[:, 1:9] = 0.5                                          # ties
    expected = _dense_reference(scores, split)
    got = evaluate_scorer(lambda hist: scores if len(hist) == n_users else None, split, n_items, batch_size=n_users)
    assert got == expected
