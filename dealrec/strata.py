"""The selection algorithm on score columns: scores -> strata -> the ids of a coreset. Pure numpy.

- scores are combined as ``minmax(influence) + lambda * minmax(effort)``;
- ``stratified_select`` drops the top ``hard_prune`` share of scores (ties: the smaller
  ``sample_id`` counts as the higher score), cuts the remaining score range into ``k``
  equal-width strata and fills the budget stratum by stratum, fewest-first, each stratum
  taking at most ``remaining budget // remaining strata`` (the paper's equal shares; or, with
  ``allocation="sqrt"``, shares in proportion to the square root of each stratum's count; with
  ``"proportional"``, to the count itself);
- inside a stratum the samples are drawn at random, where "random" means: ordered by a
  64-bit hash of ``(seed, sample_id)`` (``dealrec_core.hashing``). No global random state is
  used, so the result depends neither on the order of the rows, nor on how the scores were
  sharded, nor on how many workers computed them.

Which method uses which score and rule: ``dealrec.methods``; on tables: ``dealrec.coreset``.
See docs/selection.md for the methods and the papers they come from.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from dealrec_core.errors import DealrecError
from dealrec_core.hashing import splitmix64

PRUNED = -1  # stratum label of a sample removed by the hard prune

# The paper's defaults (Games): k 50, hard prune 10%, 1,024 samples, and lambda 0.3 (PAPER_LAMBDA). dealrec's
# default lambda is 0, chosen on validation: with the stationary influence, the effort of a fresh TIGER added at
# the paper's weight lowered TIGER's held-out validation Recall@10 on every seed (docs/selection.md, "Lambda: the
# effort score, weighed again").
DEFAULT_N = 1024
PAPER_LAMBDA = 0.3
DEFAULT_LAMBDA = 0.0
DEFAULT_K = 50
# The paper's hard prune drops the 10% highest scores, its hardest samples. With the stationary influence the highest
# minmax scores are the easiest samples, so the methods ranked by it (dealrec, influence) drop nothing by default:
# each method's default share is its entry's in dealrec.methods (docs/selection.md, "Ablations on TIGER").
PAPER_HARD_PRUNE = 0.1
# How a budget is split over the strata: the paper's equal shares ("equal", ``allocate_budget``), or shares in
# proportion to the square root of each stratum's count ("sqrt", ``allocate_budget_sqrt``): between the paper's
# coverage of the sparse strata and a uniform draw's proportional shares; or in proportion to each stratum's count
# ("proportional", ``allocate_budget_proportional``): with no hard prune, a random sample stratified by score (each
# sample's chance about n / N, as in a uniform draw, and every stratum's share fixed). ``ALLOCATORS`` below names
# them (``ALLOCATIONS``). "auto" (dealrec.coreset) takes the paper's unless the check puts its coreset below random
# draws', then ``AUTO_FALLBACK``'s (docs/selection.md, "Square-root budgets where the check predicts a loss").
AUTO_ALLOCATION = "auto"
AUTO_FALLBACK = "sqrt"   # what "auto" takes when the check puts the paper's coreset below random draws'
FIRST_AUTO_FALLBACK = "sqrt"   # what it took when "auto" came (session 19): runs recorded then name no fallback
# each allocation but the paper's in words (notes, reports and help)
ALLOCATION_WORDS = {"sqrt": "budgets by the square root of each stratum's count",
                    "proportional": "budgets in proportion to each stratum's count"}


def check_allocation(allocation: str | None) -> None:
    """Refuse an ``--allocation`` that is not one (None: the method's default)."""
    if allocation is not None and allocation not in ALLOCATION_CHOICES:
        raise DealrecError(f"unknown --allocation {allocation!r} (choose from {', '.join(ALLOCATION_CHOICES)})")


# ----------------------------------------------------------------------------- scores

def minmax(x: Sequence[float], name: str = "score") -> np.ndarray:
    """Scale to [0, 1] in float64. A constant column becomes all zeros (it carries no ranking)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    if not np.all(np.isfinite(x)):
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise DealrecError(f"{name}: non-finite value {float(x[bad])} at row {bad + 1}")
    lo, hi = float(x.min()), float(x.max())
    if hi == lo:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


def combine_scores(influence: Sequence[float], effort: Sequence[float], lam: float) -> np.ndarray:
    """DEALRec's overall score: ``minmax(influence) + lam * minmax(effort)``."""
    influence = np.asarray(influence, dtype=np.float64)
    effort = np.asarray(effort, dtype=np.float64)
    if influence.shape != effort.shape:
        raise DealrecError(f"influence and effort differ in length ({influence.size} vs {effort.size})")
    if not math.isfinite(lam):
        raise DealrecError(f"lambda must be a finite number, got {lam}")
    return minmax(influence, "influence") + lam * minmax(effort, "effort")


# ----------------------------------------------------------------------------- randomness

def sample_keys(sample_id: Sequence[int], seed: int) -> np.ndarray:
    """A uint64 pseudo-random key per sample, a function of ``(seed, sample_id)`` only."""
    ids = np.ascontiguousarray(np.asarray(sample_id, dtype=np.int64)).view(np.uint64)
    seed_key = splitmix64(np.asarray([seed], dtype=np.int64).view(np.uint64))[0]
    with np.errstate(over="ignore"):
        return splitmix64(splitmix64(ids) ^ seed_key)


def uniform_keys(sample_id: Sequence[int], seed: int) -> np.ndarray:
    """``sample_keys`` as floats in [0, 1) (53 random bits)."""
    return (sample_keys(sample_id, seed) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _random_order(sample_id: np.ndarray, seed: int) -> np.ndarray:
    """Indices of ``sample_id`` in random order; ties of the hash (never seen) by sample_id."""
    return np.lexsort((sample_id, sample_keys(sample_id, seed)))


# ----------------------------------------------------------------------------- strata

@dataclass
class Strata:
    """How a score column was cut: stratum per sample, bin edges, counts and budgets."""

    stratum: np.ndarray            # int64 [N]; PRUNED (-1) for hard-pruned samples
    edges: np.ndarray              # float64 [k + 1]: stratum i holds scores in [edges[i], edges[i+1])
    counts: np.ndarray             # int64 [k]: samples in each stratum (after the hard prune)
    budgets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # int64 [k]
    n_pruned: int = 0
    prune_threshold: float = math.nan  # lowest hard-pruned score (nan when nothing is pruned)


def n_hard_pruned(n_samples: int, hard_prune: float) -> int:
    """How many of ``n_samples`` the hard prune removes: ``floor(hard_prune * n_samples)``."""
    if not 0.0 <= hard_prune < 1.0:
        raise DealrecError(f"hard prune share must be in [0, 1), got {hard_prune}")
    # the epsilon keeps 0.29 * 100 at 29 instead of 28.999999999999996 -> 28
    return int(math.floor(hard_prune * n_samples + 1e-9))


def stratify(sample_id: Sequence[int], score: Sequence[float], k: int = DEFAULT_K,
             hard_prune: float = PAPER_HARD_PRUNE) -> Strata:
    """Hard-prune the top scores and cut what remains into ``k`` equal-width strata."""
    sample_id = np.asarray(sample_id, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    _check_pairs(sample_id, score)
    if k < 1:
        raise DealrecError(f"the number of strata k must be at least 1, got {k}")
    n = len(score)
    n_prune = n_hard_pruned(n, hard_prune)
    stratum = np.zeros(n, dtype=np.int64)
    threshold = math.nan
    if n_prune:
        # highest score first; among equal scores the smaller sample_id goes first
        order = np.lexsort((sample_id, -score))
        pruned = order[:n_prune]
        stratum[pruned] = PRUNED
        threshold = float(score[pruned].min())
    keep = stratum != PRUNED
    if not keep.any():
        return Strata(stratum, np.zeros(k + 1), np.zeros(k, np.int64), np.zeros(k, np.int64), n_prune, threshold)
    kept = score[keep]
    lo, hi = float(kept.min()), float(kept.max())
    edges = lo + (hi - lo) * np.arange(k + 1, dtype=np.float64) / k
    if hi > lo:
        # elementwise, so a sample's stratum never depends on the other rows' order
        idx = np.floor((kept - lo) / (hi - lo) * k).astype(np.int64)
        stratum[keep] = np.clip(idx, 0, k - 1)  # the maximum lands in the last stratum
    counts = np.bincount(stratum[keep], minlength=k).astype(np.int64)
    return Strata(stratum, edges, counts, np.zeros(k, np.int64), n_prune, threshold)


def allocate_budget(counts: Sequence[int], n: int) -> np.ndarray:
    """Split a budget of ``n`` over strata of ``counts`` samples, fewest-first.

    Strata are visited from the smallest to the largest (ties: lower stratum index first);
    each takes ``min(count, remaining budget // remaining strata)``. Whenever
    ``sum(counts) >= n`` this spends exactly ``n``: a stratum that cannot take its equal
    share gives the rest to the larger strata after it.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if n < 0:
        raise DealrecError(f"budget must be non-negative, got {n}")
    if n > counts.sum():
        raise DealrecError(f"budget {n} exceeds the {int(counts.sum())} samples in the strata")
    budgets = np.zeros(len(counts), dtype=np.int64)
    remaining = int(n)
    order = np.argsort(counts, kind="stable")
    for i, s in enumerate(order):
        share = remaining // (len(counts) - i)
        take = min(int(counts[s]), share)
        budgets[s] = take
        remaining -= take
    assert remaining == 0, "fewest-first allocation left budget unspent"
    return budgets


def allocate_budget_sqrt(counts: Sequence[int], n: int) -> np.ndarray:
    """Split a budget of ``n`` over strata in proportion to the square root of their counts, capped at the counts.

    The real shares are water-filled: ``min(count, t * sqrt(count))`` with ``t`` such that they sum to ``n`` (a
    stratum too small for its share takes all it has, the rest is shared again among the others). The integer
    budgets are their floors plus one for the strata with the largest fractional parts (ties: the lower index)
    until ``n`` is spent: each within one sample of its real share. Spends exactly ``n`` whenever
    ``sum(counts) >= n``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    return _water_filled(counts, n, np.sqrt(counts.astype(np.float64)), "square-root")


def allocate_budget_proportional(counts: Sequence[int], n: int) -> np.ndarray:
    """Split a budget of ``n`` over strata in proportion to their counts (``n * count / sum(counts)``, never above
    the count), rounded as ``allocate_budget_sqrt`` rounds: each budget within one sample of its real share, exactly
    ``n`` in all whenever ``sum(counts) >= n``."""
    counts = np.asarray(counts, dtype=np.int64)
    return _water_filled(counts, n, counts.astype(np.float64), "proportional")


def _water_filled(counts: np.ndarray, n: int, weight_of: np.ndarray, name: str) -> np.ndarray:
    """Budgets ``min(count, t * weight)`` summing to ``n``, rounded by largest remainder (ties: the lower index)."""
    if n < 0:
        raise DealrecError(f"budget must be non-negative, got {n}")
    if n > counts.sum():
        raise DealrecError(f"budget {n} exceeds the {int(counts.sum())} samples in the strata")
    full = counts == 0
    while True:
        weight = np.where(full, 0.0, weight_of)
        free = n - int(counts[full].sum())
        share = free * weight / weight.sum() if weight.sum() > 0 else np.zeros(len(counts))
        over = ~full & (share >= counts)
        if not over.any():
            break
        full |= over
    ideal = np.where(full, counts, share)
    budgets = np.minimum(np.floor(ideal + 1e-9).astype(np.int64), counts)
    left = int(n - budgets.sum())
    fraction = np.where(budgets < counts, ideal - budgets, -np.inf)
    budgets[np.argsort(-fraction, kind="stable")[:left]] += 1
    if budgets.sum() != n or np.any(budgets > counts):
        raise AssertionError(f"{name} allocation of {n} over {counts.tolist()} gave {budgets.tolist()}")
    return budgets


ALLOCATORS = {"equal": allocate_budget, "sqrt": allocate_budget_sqrt, "proportional": allocate_budget_proportional}
ALLOCATIONS = tuple(ALLOCATORS)
ALLOCATION_CHOICES = ALLOCATIONS + (AUTO_ALLOCATION,)   # what --allocation takes


def stratified_select(sample_id: Sequence[int], score: Sequence[float], n: int, k: int = DEFAULT_K,
                      hard_prune: float = PAPER_HARD_PRUNE, seed: int = 0,
                      return_strata: bool = False, allocation: str = "equal"):
    """Coverage-enhanced selection of ``n`` samples; ``allocation`` splits the budget over the strata
    (``ALLOCATIONS``: the paper's equal shares, or by the square root of their counts, or in proportion to them).

    Returns ``(selected sample_ids sorted ascending, stratum per input row)``; with
    ``return_strata=True`` the second item is the full :class:`Strata` (edges, counts, budgets).
    """
    if allocation not in ALLOCATIONS:
        raise DealrecError(f"unknown allocation {allocation!r} (choose from {', '.join(ALLOCATIONS)})")
    sample_id = np.asarray(sample_id, dtype=np.int64)
    strata = stratify(sample_id, score, k, hard_prune)
    available = len(sample_id) - strata.n_pruned
    _check_budget(n, available, f"{len(sample_id)} samples" + (f" less {strata.n_pruned} hard-pruned (hard prune "
                                                               f"{hard_prune})" if strata.n_pruned else ""))
    strata.budgets = ALLOCATORS[allocation](strata.counts, n)
    chosen = []
    order = _random_order(sample_id, seed)  # one global random order, then filtered per stratum
    ordered_stratum = strata.stratum[order]
    for s in np.flatnonzero(strata.budgets):
        members = order[ordered_stratum == s]
        chosen.append(sample_id[members[:strata.budgets[s]]])
    selected = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    return (selected, strata) if return_strata else (selected, strata.stratum)


def top_n_select(sample_id: Sequence[int], score: Sequence[float], n: int) -> np.ndarray:
    """The ``n`` highest scores (ties: smaller sample_id first), sorted by sample_id."""
    sample_id = np.asarray(sample_id, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    _check_pairs(sample_id, score)
    _check_budget(n, len(sample_id), f"{len(sample_id)} samples")
    return np.sort(sample_id[np.lexsort((sample_id, -score))[:n]])


def random_select(sample_id: Sequence[int], n: int, seed: int = 0) -> np.ndarray:
    """``n`` samples uniformly at random, keyed by ``(seed, sample_id)``; sorted by sample_id."""
    sample_id = np.asarray(sample_id, dtype=np.int64)
    _check_pairs(sample_id, np.zeros(len(sample_id)))
    _check_budget(n, len(sample_id), f"{len(sample_id)} samples")
    return np.sort(sample_id[_random_order(sample_id, seed)[:n]])


def _check_pairs(sample_id: np.ndarray, score: np.ndarray) -> None:
    if sample_id.shape != score.shape or sample_id.ndim != 1:
        raise DealrecError(f"sample_id and score differ in shape ({sample_id.shape} vs {score.shape})")
    if len(np.unique(sample_id)) != len(sample_id):
        raise DealrecError("sample_id values are not unique")
    if not np.all(np.isfinite(score)):
        bad = int(np.flatnonzero(~np.isfinite(score))[0])
        raise DealrecError(f"score of sample {int(sample_id[bad])} is {float(score[bad])}, not a finite number")


def _check_budget(n: int, available: int, what: str) -> None:
    if n < 1:
        raise DealrecError(f"--n must be at least 1, got {n}")
    if n > available:
        raise DealrecError(f"--n {n} exceeds the {available} samples that can be selected ({what})")
