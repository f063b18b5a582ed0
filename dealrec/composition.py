"""What a training set is made of, and a check of a coreset that costs no training.

``composition`` and ``target_popularity_recall`` are the columns of ``dealrec compare``'s composition table;
``popularity_check`` is the check ``dealrec select`` (and so ``prune``) runs on every coreset it writes: the
Recall@10 on the validation split of ranking items by how often they are one of the coreset's targets, against
the same figure for random draws of as many samples. A model fine-tuned on about 1% of a log learns mostly
its training targets' popularity (TIGER on 1,024 Games samples does), and on the logs measured the default
coreset whose figure was below random draws' trained a worse TIGER than a random subset, and the ones above it
a better one (docs/selection.md, "A check before any training"). It is a signal, not a verdict: for other
methods it has been wrong both ways.
"""
from __future__ import annotations

import numpy as np

from dealrec_core.data import EvalSplit, PreparedData
from dealrec.strata import ALLOCATION_WORDS

CHECK_DRAWS = 5   # random draws the coreset's figure is set against (their mean)


def composition(lengths: np.ndarray, targets: np.ndarray, popularity: np.ndarray) -> dict:
    """What a training set looks like: how many empty histories, how long, how popular its targets.

    ``popularity[i]`` is item i's count of interactions over every training sequence (history and
    target) of all samples, the counts most-popular ranks by.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    return {"samples": int(len(targets)),
            "empty_history_share": float(np.mean(lengths == 0)) if len(lengths) else 0.0,
            "mean_history_length": float(np.mean(lengths)) if len(lengths) else 0.0,
            "median_target_popularity": float(np.median(popularity[targets])) if len(targets) else 0.0,
            "distinct_targets": int(len(np.unique(targets)))}


def target_popularity_recall(targets: np.ndarray, n_items: int, eval_users: dict, k: int = 10) -> dict:
    """Recall@k on each split of ``eval_users`` of ranking items by how often they are one of ``targets``
    (a training set's targets): the popularity a model trained on that set could learn without learning
    anything else. A downstream model near this figure has learnt little beyond its training targets'
    popularity (TIGER on 1,024 Games samples is: docs/selection.md)."""
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=n_items + 1)[:n_items + 1]
    return {split: global_ranking_recall(counts, users, k) for split, users in eval_users.items()}


def global_ranking_recall(scores: np.ndarray, split: EvalSplit, k: int = 10) -> float:
    """Recall@k of one ranking of the items for every user (``scores`` indexed by item id, 0 the padding),
    each user's history left out as the evaluator does (``dealrec_core.evaluate``), equal scores taken in
    expectation: the items tied at the k-th place share its remaining slots evenly, as a uniformly random
    order among them would on average. (A popularity ranking of 1,024 targets ties often at the tenth place,
    and which of the tied items an arbitrary order puts first moved this figure by up to 2x on Games.) The
    users without a ground truth do not count. In numpy, without the evaluator's user-by-item matrix: the
    users whose history holds no item at or above the k-th place share one threshold and are counted together;
    the others one by one."""
    scores = np.asarray(scores, dtype=np.float64)
    levels, per_level = np.unique(scores[1:], return_counts=True)   # item 0, the padding, is never ranked
    levels, per_level = levels[::-1], per_level[::-1]               # best first
    n_ranked = len(scores) - 1

    def threshold(held: np.ndarray) -> tuple[float, int, int]:
        """The k-th place's level once the ``held`` scores (a history's) are out, the items above it, and
        the items at it."""
        above = 0
        for level, count in zip(levels, per_level):
            here = int(count) - int(np.count_nonzero(held == level))
            if above + here >= k:
                return float(level), above, here
            above += here
        raise AssertionError("fewer than k rankable items")   # ruled out by the caller

    users = [i for i, t in enumerate(split.targets) if (np.asarray(t) > 0).any()]
    if not users:
        return 0.0
    if n_ranked <= k:
        level, above, here = -np.inf, n_ranked, 1   # everything is ranked
    else:
        level, above, here = threshold(np.zeros(0))
    total = 0.0
    common = []   # users whose history leaves the threshold where it is
    for u in users:
        history = np.unique(np.asarray(split.history[u], dtype=np.int64))
        history = history[history > 0]
        if len(history) and (n_ranked - len(history) <= k or scores[history].max() >= level):
            truth = np.unique(np.asarray(split.targets[u], dtype=np.int64))
            truth = truth[truth > 0]
            reachable = scores[truth[~np.isin(truth, history)]]      # a history item is never ranked
            if n_ranked - len(history) <= k:
                total += len(reachable) / len(truth)
                continue
            t, a, h = threshold(scores[history])
            total += (np.count_nonzero(reachable > t) + (k - a) / h * np.count_nonzero(reachable == t)) / len(truth)
        else:
            common.append(u)
    if common:   # one threshold for all of them: their truth items, flattened, each user's weight 1 / |truth|
        pairs = np.unique(np.concatenate([np.stack([np.full(len(split.targets[u]), i),
                                                    np.asarray(split.targets[u], dtype=np.int64)], 1)
                                          for i, u in enumerate(common)]), axis=0)
        pairs = pairs[pairs[:, 1] > 0]
        size = np.bincount(pairs[:, 0], minlength=len(common))
        s = scores[pairs[:, 1]]
        share = 1.0 if level == -np.inf else (k - above) / here
        gain = np.where(s > level, 1.0, 0.0) + np.where(s == level, share, 0.0)
        total += float(np.sum(gain / size[pairs[:, 0]]))
    return total / len(users)


def item_popularity(prepared: PreparedData) -> np.ndarray:
    """Interactions per item over all samples' sequences (history + target), indexed by item id."""
    samples = prepared.samples()
    seqs = samples.sequences()
    items = np.concatenate(seqs).astype(np.int64) if seqs else np.zeros(0, np.int64)
    return np.bincount(items, minlength=prepared.n_items + 1)


def popularity_check(targets: np.ndarray, all_targets: np.ndarray, n_items: int, valid: EvalSplit,
                     seed: int = 0, draws: int = CHECK_DRAWS, random_draws: list[float] | None = None) -> dict | None:
    """The coreset's targets' popularity Recall@10 on ``valid`` against random draws of as many of
    ``all_targets`` (every sample's target; seeded by ``seed`` and the draw, without replacement).
    None when there is nothing to check (an empty coreset or validation split). ``random_draws``: the draws'
    figures of an earlier check with the same ``all_targets``, ``valid``, ``seed``, ``draws`` and coreset size
    (they depend on nothing else), so that a second coreset of that size is not drawn against again."""
    targets = np.asarray(targets, dtype=np.int64)
    all_targets = np.asarray(all_targets, dtype=np.int64)
    if len(targets) == 0 or len(valid.user) == 0 or len(targets) > len(all_targets):
        return None
    users = {"valid": valid}
    mine = target_popularity_recall(targets, n_items, users)["valid"]
    drawn = random_draws if random_draws is not None else [target_popularity_recall(
        all_targets[np.random.default_rng([seed, d]).choice(len(all_targets), size=len(targets), replace=False)],
        n_items, users)["valid"] for d in range(draws)]
    mean = float(np.mean(drawn))
    return {"split": "valid", "targets_popularity_recall@10": float(mine), "random_draws": [float(x) for x in drawn],
            "random_mean": mean, "below_random": bool(mine < mean)}


def allocation_note(selection: dict) -> str | None:
    """The line ``select`` and ``prune`` print when ``--allocation auto`` took other budgets than the paper's."""
    used = selection.get("allocation_used")
    if selection.get("allocation") != "auto" or used in (None, "equal"):
        return None
    figures, check = selection["allocation_checks"], selection["check"]
    return (f"note: the paper's equal budgets gave a coreset whose targets' popularity Recall@10 on validation, "
            f"{figures['equal']:.4f}, is below random draws' {check['random_mean']:.4f}; --allocation auto took "
            f"{ALLOCATION_WORDS[used]} instead ({figures[used]:.4f}; docs/selection.md, "
            f"\"Square-root budgets where the check predicts a loss\")")


def check_note(check: dict | None, data) -> str | None:
    """The line ``select`` and ``prune`` print when the coreset's figure is below random draws'."""
    if not check or not check["below_random"]:
        return None
    return (f"note: this coreset's targets' popularity Recall@10 on validation is "
            f"{check['targets_popularity_recall@10']:.4f}, below random draws' {check['random_mean']:.4f} (mean of "
            f"{len(check['random_draws'])}); on the logs measured, a default coreset below it trained a worse TIGER "
            f"than a random subset (docs/selection.md, \"A check before any training\"). Measure on this log before "
            f"fine-tuning: dealrec compare {data} --n N --methods dealrec,random")
