"""The one evaluator of the project: full ranking with the paper's protocol.

Protocol (see the Games data README): every user with a non-empty ground-truth list is
evaluated; all items are ranked except those already in the user's history (and padding,
id 0); the ground truth is the whole list (duplicates counted once). Recall@K is the
share of the ground truth in the top K; NDCG@K divides DCG@K by the ideal DCG over
min(|truth|, K) positions. Metrics are means over users.

Two entry points:

- ``evaluate_scorer(score_fn, split, n_items)`` for models that score every item
  (surrogates, popularity, BIGRec grounding): ``score_fn(histories) -> Tensor[B, n_items + 1]``;
- ``ranking_metrics(ranked, split)`` for models that return ranked item lists (TIGER's beam
  search): ``ranked`` is ``[U, K]`` item ids, best first, padded with 0.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dealrec_core.data import EvalSplit
from dealrec_core.errors import InputError

DEFAULT_KS = (10, 20, 50)


def _flat_items(rows: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row, item)`` index pairs of every item of every row (``int64``), for ``tensor[row, item]``."""
    lengths = [len(r) for r in rows]
    row = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    items = (np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if sum(lengths)
             else np.zeros(0, np.int64))
    return torch.from_numpy(row), torch.from_numpy(items)


def _truth_mask(targets: Sequence[np.ndarray], n_cols: int) -> torch.Tensor:
    rows, cols = _flat_items(targets)
    mask = torch.zeros(len(targets), n_cols, dtype=torch.bool)
    mask[rows, cols] = True
    mask[:, 0] = False  # padding is never a ground-truth item
    return mask


class _Truth:
    """Each user's ground-truth items as a set, without a [users, catalogue] mask: the rows padded with 0 to the
    longest (a user has one or a few targets) and how many distinct items each holds (padding, id 0, is no
    ground-truth item). What ``_metric_sums`` reads; a dense mask of a 1,024-user batch over Games' 17,333 items
    was most of the metric's time."""

    def __init__(self, targets: Sequence[np.ndarray]):
        width = max((len(t) for t in targets), default=0)
        padded = np.zeros((len(targets), max(width, 1)), dtype=np.int64)
        counts = np.zeros(len(targets), dtype=np.int64)
        for i, t in enumerate(targets):
            t = np.asarray(t, dtype=np.int64)
            padded[i, :len(t)] = t
            counts[i] = len(np.unique(t[t > 0])) if len(t) else 0
        self.items, self.counts = torch.from_numpy(padded), torch.from_numpy(counts)

    def hits(self, ranked: torch.Tensor) -> torch.Tensor:
        """``ranked`` [B, K] item ids -> [B, K] bool: the item is one of the user's targets (padding never)."""
        found = (ranked[:, :, None] == self.items[:, None, :]).any(2)
        return found & (ranked > 0)


def _per_user_values(ranked: torch.Tensor, truth: _Truth, ks: Sequence[int]) -> dict[str, torch.Tensor]:
    """Each user's recall@k and ndcg@k (float64 [B]); ``ranked`` [B, >=max(ks)] item ids, ``truth`` the B users'
    targets. The metrics of a split are these values' means."""
    hits = truth.hits(ranked).double()
    n_truth = truth.counts.double()
    max_k = max(ks)
    discounts = 1.0 / torch.log2(torch.arange(2, max_k + 2, dtype=torch.float64))
    ideal_cum = torch.cumsum(discounts, 0)
    out = {}
    for k in ks:
        h = hits[:, :k]
        out[f"recall@{k}"] = h.sum(1) / n_truth
        dcg = (h * discounts[:h.shape[1]]).sum(1)
        idcg = ideal_cum[(torch.clamp(n_truth, max=k) - 1).long()]
        out[f"ndcg@{k}"] = dcg / idcg
    return out


def _metric_sums(ranked: torch.Tensor, truth: _Truth, ks: Sequence[int]) -> dict[str, float]:
    """Sums over users of recall@k and ndcg@k; ``ranked`` [B, >=max(ks)] item ids, ``truth`` the B users' targets."""
    return {key: float(v.sum()) for key, v in _per_user_values(ranked, truth, ks).items()}


def truth_rows(split: EvalSplit) -> np.ndarray:
    """The rows of ``split`` that the evaluator counts, in order (``int64``): the users with a non-empty
    ground truth (padding, id 0, is no ground-truth item). Every evaluation and every subsample of
    evaluation users starts from these."""
    return np.array([i for i, t in enumerate(split.targets) if (np.asarray(t) > 0).any()], dtype=np.int64)


def users_with_truth(split: EvalSplit) -> EvalSplit:
    """``split`` without the users that have no ground truth (``split`` itself when every user has one)."""
    keep = truth_rows(split)
    return split if len(keep) == len(split) else split.subset(keep)


# The draw of the early-stopping users is fixed (not the run's seed): every run on the same data, whatever
# its method or seed, stops on the same users and reports on the same others, so runs stay paired.
STOP_USERS_SEED = 0


def stopping_split(split: EvalSplit, stop_users: int) -> tuple[EvalSplit, EvalSplit]:
    """``(stop, report)``: the validation users an early stopper looks at, and the disjoint rest whose
    metrics are reported, both without users that have no ground truth.

    Metrics of the users that chose the stopping epoch are optimistic (the epoch was picked because
    they scored well), by more for a noisier method; the rest are a fair validation figure. ``stop``
    holds ``min(stop_users, half the users)`` users drawn with ``STOP_USERS_SEED``, so the report half
    never shrinks below half. ``stop_users`` 0 keeps the old protocol: every user both stops and is
    reported (``stop is report``).
    """
    split = users_with_truth(split)
    if stop_users < 0:
        raise ValueError(f"stop_users must be >= 0, got {stop_users}")
    n_stop = min(stop_users, len(split) // 2)
    if n_stop == 0:
        return split, split
    picked = np.zeros(len(split), dtype=bool)
    picked[np.random.default_rng(STOP_USERS_SEED).choice(len(split), n_stop, replace=False)] = True
    return split.subset(np.flatnonzero(picked)), split.subset(np.flatnonzero(~picked))


def _ordered(sums: dict[str, float], n_users: int, ks: Sequence[int]) -> dict[str, float]:
    out = {}
    for k in ks:
        out[f"recall@{k}"] = sums[f"recall@{k}"] / max(n_users, 1)
        out[f"ndcg@{k}"] = sums[f"ndcg@{k}"] / max(n_users, 1)
    return out


def _ranked_lists(ranked: np.ndarray | torch.Tensor, split: EvalSplit, ks: Sequence[int],
                  n_items: int | None) -> tuple[torch.Tensor, EvalSplit]:
    """``ranked`` cut to the users with a ground truth, history items dropped (stable compaction) and padded to
    ``max(ks)``; with that split."""
    ranked = torch.as_tensor(np.asarray(ranked), dtype=torch.long)
    if ranked.shape[0] != len(split):
        raise ValueError(f"{ranked.shape[0]} ranked lists for {len(split)} users")
    keep = truth_rows(split)
    ranked = ranked[torch.from_numpy(keep)]
    split = split.subset(keep)
    n_cols = int(max(ranked.max().item() if ranked.numel() else 0,
                     max((int(t.max()) for t in split.targets), default=0),
                     max((int(h.max()) for h in split.history if len(h)), default=0),
                     n_items or 0)) + 1
    seen = _truth_mask(split.history, n_cols)
    in_hist = torch.gather(seen, 1, ranked.clamp(min=0)) & (ranked > 0)
    # stable compaction: history items move to the end as padding
    ranked = torch.where(in_hist, torch.zeros_like(ranked), ranked)
    order = torch.argsort((ranked <= 0).int(), dim=1, stable=True)
    ranked = torch.gather(ranked, 1, order)
    max_k = max(ks)
    if ranked.shape[1] < max_k:
        ranked = torch.cat([ranked, torch.zeros(ranked.shape[0], max_k - ranked.shape[1], dtype=torch.long)], 1)
    return ranked[:, :max_k], split


def ranking_metrics(ranked: np.ndarray | torch.Tensor, split: EvalSplit,
                    ks: Sequence[int] = DEFAULT_KS, n_items: int | None = None) -> dict[str, float]:
    """Metrics from ranked lists (row i ranks for ``split`` user i; 0 pads a short list).

    History items in a list are dropped before cutting at K, as in full ranking.
    """
    ranked, split = _ranked_lists(ranked, split, ks, n_items)
    return _ordered(_metric_sums(ranked, _Truth(split.targets), ks), len(split), ks)


def ranking_per_user(ranked: np.ndarray | torch.Tensor, split: EvalSplit,
                     ks: Sequence[int] = DEFAULT_KS, n_items: int | None = None) -> "PerUser":
    """``ranking_metrics`` user by user: the users with a ground truth, in split order, and each one's metrics
    (their means are ``ranking_metrics``' figures)."""
    ranked, split = _ranked_lists(ranked, split, ks, n_items)
    values = _per_user_values(ranked, _Truth(split.targets), ks)
    return PerUser(np.asarray(split.user, dtype=np.int64), {k: v.numpy() for k, v in values.items()})


class PerUser:
    """One split's metrics per user: ``users`` (int64 [U], ids) and ``values`` (metric -> float64 [U], in the
    order of ``users``). What a paired comparison of two models on the same users reads (``per_user.parquet``)."""

    def __init__(self, users: np.ndarray, values: dict[str, np.ndarray]):
        self.users = np.asarray(users, dtype=np.int64)
        self.values = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
        for k, v in self.values.items():
            if v.shape != self.users.shape:
                raise ValueError(f"{k}: {v.shape[0]} values for {len(self.users)} users")

    def __len__(self) -> int:
        return len(self.users)

    def means(self) -> dict[str, float]:
        return {k: float(v.mean()) if len(v) else 0.0 for k, v in self.values.items()}


PER_USER_FILE = "per_user.parquet"


def per_user_table(splits: dict[str, PerUser]) -> pa.Table:
    """The per-user results of a run as one table: ``split``, ``user`` and a column per metric."""
    names = list(dict.fromkeys(k for p in splits.values() for k in p.values))
    columns = {"split": pa.array([s for s, p in splits.items() for _ in range(len(p))], type=pa.string()),
               "user": pa.array(np.concatenate([p.users for p in splits.values()]) if splits else
                                np.zeros(0, np.int64), type=pa.int64())}
    for name in names:
        columns[name] = pa.array(np.concatenate([p.values[name] for p in splits.values()]), type=pa.float64())
    return pa.table(columns)


def read_per_user(path) -> dict[str, PerUser]:
    """``per_user.parquet`` back as split -> ``PerUser``. A file that is not Parquet, lacks a column or lists a user
    twice in a split is an ``InputError`` naming the file (and the field)."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise InputError(path, f"not a readable per-user results file ({e}); delete it and the run's checkpoint ranks "
                               f"its users again") from None
    for column in ("split", "user"):
        if column not in table.column_names:
            raise InputError(path, "missing column", field=column)
    names = [c for c in table.column_names if c not in ("split", "user")]
    split_col = np.asarray(table.column("split").to_pylist(), dtype=object)
    users = table.column("user").to_numpy()
    out = {}
    for split in dict.fromkeys(split_col):
        rows = np.flatnonzero(split_col == split)
        if len(np.unique(users[rows])) != len(rows):
            raise InputError(path, f"split {split!r} lists a user twice")
        out[split] = PerUser(users[rows], {n: table.column(n).to_numpy()[rows] for n in names})
    return out


def _scored_batches(score_fn: Callable[[list], torch.Tensor], split: EvalSplit, n_items: int,
                    ks: Sequence[int], batch_size: int):
    """``(rows, per-user values)`` of each batch of ``split`` (users with a ground truth), in the evaluator's order."""
    max_k = max(ks)
    order = np.argsort([len(h) for h in split.history], kind="stable")
    for start in range(0, len(split), batch_size):
        rows = order[start:start + batch_size]
        hist = [split.history[i] for i in rows]
        truth = _Truth([split.targets[i] for i in rows])
        scores = torch.as_tensor(score_fn(hist)).float().clone()
        if scores.shape != (len(hist), n_items + 1):
            raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, expected ({len(hist)}, {n_items + 1})")
        scores[_flat_items(hist)] = -torch.inf   # history items are not ranked
        scores[:, 0] = -torch.inf
        ranked = torch.topk(scores, min(max_k, n_items + 1), dim=1).indices
        ranked[torch.gather(scores, 1, ranked) == -torch.inf] = 0  # fewer rankable items than K
        if ranked.shape[1] < max_k:  # a catalogue smaller than K: the list is simply shorter
            ranked = torch.cat([ranked, torch.zeros(len(hist), max_k - ranked.shape[1], dtype=torch.long)], 1)
        yield rows, _per_user_values(ranked, truth, ks)


@torch.no_grad()
def evaluate_scorer(score_fn: Callable[[list], torch.Tensor], split: EvalSplit, n_items: int,
                    ks: Sequence[int] = DEFAULT_KS, batch_size: int = 1024) -> dict[str, float]:
    """Full-ranking metrics of a model that scores all items for a batch of histories.

    Users are scored in batches of similar history length (shortest first), so that a sequence model pads
    little (Games' validation by a SASRec: 1.9x faster than in user order, the same metrics): the metrics are
    sums over users, and a model's scores for a user do not depend on who shares the batch (the surrogate
    contract's batch invariance)."""
    split = users_with_truth(split)
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    for _, values in _scored_batches(score_fn, split, n_items, ks, batch_size):
        for key, v in values.items():
            sums[key] += float(v.sum())
    return _ordered(sums, len(split), ks)


@torch.no_grad()
def evaluate_scorer_per_user(score_fn: Callable[[list], torch.Tensor], split: EvalSplit, n_items: int,
                             ks: Sequence[int] = DEFAULT_KS, batch_size: int = 1024) -> PerUser:
    """``evaluate_scorer`` user by user, in split order (the users with a ground truth)."""
    split = users_with_truth(split)
    values = {f"{m}@{k}": np.zeros(len(split)) for k in ks for m in ("recall", "ndcg")}
    for rows, batch in _scored_batches(score_fn, split, n_items, ks, batch_size):
        for key, v in batch.items():
            values[key][rows] = v.numpy()
    return PerUser(np.asarray(split.user, dtype=np.int64), values)


def popularity_scorer(train_sequences: Sequence[np.ndarray], n_items: int) -> Callable[[list], torch.Tensor]:
    """Most-popular baseline: an item's score is its count in the training sequences."""
    counts = np.bincount(np.concatenate(list(train_sequences)).astype(np.int64), minlength=n_items + 1)
    row = torch.from_numpy(counts[:n_items + 1].astype(np.float32))

    def score(histories):
        return row.unsqueeze(0).expand(len(histories), -1)
    return score


def format_metrics(metrics: dict[str, float], ks: Sequence[int] = DEFAULT_KS) -> str:
    return "  ".join(f"R@{k} {metrics[f'recall@{k}']:.4f} N@{k} {metrics[f'ndcg@{k}']:.4f}" for k in ks
                     if f"recall@{k}" in metrics)
