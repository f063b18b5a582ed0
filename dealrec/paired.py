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

from typing import Mapping

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
        position = {int(u): i for i, u in enumerate(per_user.users)}
        rows.append(per_user.values[metric][[position[int(u)] for u in users]])
    return np.stack(rows)


def common_users(*sides: Mapping) -> np.ndarray:
    """The users every run of every side was evaluated on (sorted); runs of one comparison share them all."""
    sets = [set(p.users.tolist()) for side in sides for p in side.values()]
    if not sets:
        return np.zeros(0, np.int64)
    return np.array(sorted(set.intersection(*sets)), dtype=np.int64)


def paired_difference(a: Mapping[object, PerUser], b: Mapping[object, PerUser], metric: str,
                      replicates: int = REPLICATES, seed: int = BOOTSTRAP_SEED) -> dict:
    """``a`` minus ``b`` in ``metric`` (each: seed -> one run's per-user results on one split), paired by user:
    the point difference (means over seeds of the means over users), its 95% bootstrap interval over users and
    seeds, the share of replicates above zero, and the verdict. Only the users that every run holds count."""
    if not a or not b:
        raise ValueError("each side needs at least one run")
    users = common_users(a, b)
    if len(users) == 0:
        raise ValueError("the runs share no user")
    A, B = _matrix(a, users, metric, "a"), _matrix(b, users, metric, "b")
    point = float(A.mean(1).mean() - B.mean(1).mean())
    rng = np.random.default_rng(seed)
    n = len(users)
    diffs = np.empty(replicates)
    for start in range(0, replicates, _CHUNK):
        c = min(_CHUNK, replicates - start)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=c).T / n          # [users, c]: a resample of users
        means_a, means_b = A @ weights, B @ weights                               # [seeds, c]
        pick_a = rng.integers(0, len(A), size=(len(A), c))                        # a resample of each side's seeds
        pick_b = rng.integers(0, len(B), size=(len(B), c))
        diffs[start:start + c] = (np.take_along_axis(means_a, pick_a, 0).mean(0)
                                  - np.take_along_axis(means_b, pick_b, 0).mean(0))
    tail = (1 - LEVEL) / 2
    low, high = (float(x) for x in np.quantile(diffs, [tail, 1 - tail]))
    verdict = "better" if low > 0 else "worse" if high < 0 else "not decided"
    return {"diff": point, "low": low, "high": high, "share_above_zero": float((diffs > 0).mean()),
            "verdict": verdict, "users": int(n), "seeds": [len(A), len(B)], "replicates": int(replicates)}


def interval_text(result: dict, digits: int = 4) -> str:
    """``+0.0123 [+0.0040, +0.0210] better``: the difference, its interval and the verdict."""
    return (f"{result['diff']:+.{digits}f} [{result['low']:+.{digits}f}, {result['high']:+.{digits}f}] "
            f"{result['verdict']}")
