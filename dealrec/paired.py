"""Is one training set better than another on these users? A paired bootstrap over users and seeds.

Every run of a comparison is evaluated on the same users (the same validation users report every run:
``dealrec_core.evaluate.stopping_split``), so two methods can be compared user by user: their difference in a
metric is a mean over users of each user's difference, averaged over the seeds. Its uncertainty has two
sources: which users the split happens to hold (a split of a few hundred users moves Recall@10 by points) and
how a training run falls (the seeds). The interval below resamples both: in each of ``REPLICATES`` replicates
the users are drawn with replacement (the same draw for both methods: paired), and each method's seeds are drawn
with replacement from its own; the difference of the two means is taken, and the 2.5th and 97.5th percentiles of
those differences give a 95% interval. A method is called better (worse) than the other only when the whole
interval is above (below) zero; otherwise "not decided": more users would tell, more seeds only narrow the
training part. With three seeds the seed part is rough (a bootstrap of three values); it is there so that a
difference that one lucky run makes is not called decided on the users alone.

The draws come from a fixed generator (``BOOTSTRAP_SEED``): the same runs give the same interval.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from dealrec_core.evaluate import PerUser

REPLICATES = 2000
LEVEL = 0.95
BOOTSTRAP_SEED = 0
_CHUNK = 250   # replicates drawn at a time (a [chunk, users] weight matrix)

VERDICTS = ("better", "worse", "not decided")


def _matrix(runs: Mapping, users: np.ndarray, metric: str, side: str) -> np.ndarray:
    """[seeds, users] values of ``metric`` in the order of ``users``."""
    rows = []
    for seed, per_user in runs.items():
        if metric not in per_user.values:
            raise ValueError(f"{side}, seed {seed}: no per-user {metric}")
        rows.append(per_user.values[metric][_positions(per_user.users, users)])
    return np.stack(rows)


def _positions(held: np.ndarray, users: np.ndarray) -> np.ndarray:
    """Where each of ``users`` (all of them in ``held``) sits in ``held``."""
    order = np.argsort(held, kind="stable")
    return order[np.searchsorted(held, users, sorter=order)]


def common_users(*sides: Mapping) -> np.ndarray:
    """The users every run of every side was evaluated on (sorted); runs of one comparison share them all."""
    users = None
    for side in sides:
        for per_user in side.values():
            users = per_user.users if users is None else np.intersect1d(users, per_user.users)
    return np.zeros(0, np.int64) if users is None else np.unique(users)


def paired_differences(a: Mapping[object, PerUser], b: Mapping[object, PerUser], metrics: Sequence[str],
                       replicates: int = REPLICATES, seed: int = BOOTSTRAP_SEED) -> dict[str, dict]:
    """``a`` minus ``b`` in each of ``metrics`` (each side: seed -> one run's per-user results on one split),
    paired by user: the point difference (means over seeds of the means over users), its 95% bootstrap interval
    over users and seeds, the share of replicates above zero, and the verdict. Only the users that every run
    holds count. Every metric is read off the same replicates (the draws do not depend on the metrics asked)."""
    if not a or not b:
        raise ValueError("each side needs at least one run")
    users = common_users(a, b)
    if len(users) == 0:
        raise ValueError("the runs share no user")
    mats = {m: (_matrix(a, users, m, "a"), _matrix(b, users, m, "b")) for m in metrics}
    n_a, n_b, n = len(a), len(b), len(users)
    rng = np.random.default_rng(seed)
    diffs = {m: np.empty(replicates) for m in metrics}
    for start in range(0, replicates, _CHUNK):
        c = min(_CHUNK, replicates - start)
        # a resample of the users per replicate, as counts: [users, c], each column summing to n
        drawn = rng.integers(0, n, size=(c, n)) + (np.arange(c) * n)[:, None]
        weights = np.bincount(drawn.ravel(), minlength=c * n).reshape(c, n).T / n
        pick_a = rng.integers(0, n_a, size=(n_a, c))           # a resample of each side's seeds
        pick_b = rng.integers(0, n_b, size=(n_b, c))
        for m, (A, B) in mats.items():
            diffs[m][start:start + c] = (np.take_along_axis(A @ weights, pick_a, 0).mean(0)
                                         - np.take_along_axis(B @ weights, pick_b, 0).mean(0))
    tail = (1 - LEVEL) / 2
    out = {}
    for m, (A, B) in mats.items():
        low, high = (float(x) for x in np.quantile(diffs[m], [tail, 1 - tail]))
        out[m] = {"diff": float(A.mean(1).mean() - B.mean(1).mean()), "low": low, "high": high,
                  "share_above_zero": float((diffs[m] > 0).mean()),
                  "verdict": "better" if low > 0 else "worse" if high < 0 else "not decided",
                  "users": int(n), "seeds": [n_a, n_b], "replicates": int(replicates)}
    return out


def paired_difference(a: Mapping[object, PerUser], b: Mapping[object, PerUser], metric: str,
                      replicates: int = REPLICATES, seed: int = BOOTSTRAP_SEED) -> dict:
    """``paired_differences`` for one metric (the same figures as when it is asked with others)."""
    return paired_differences(a, b, [metric], replicates, seed)[metric]


def interval_text(result: dict, digits: int = 4) -> str:
    """``+0.0123 [+0.0040, +0.0210] better``: the difference, its interval and the verdict."""
    return (f"{result['diff']:+.{digits}f} [{result['low']:+.{digits}f}, {result['high']:+.{digits}f}] "
            f"{result['verdict']}")
