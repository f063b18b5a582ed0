"""The selection methods: one entry each, everything about a method in one place.

An entry says what the method ranks by (``Score``: the score columns, how they become one
score, whether ``--lambda`` enters, and for a baseline the surrogate-computed column and the
function that computes it), how it picks (``rule``: ``stratified`` = hard prune + ``k``
strata, ``top_n``, ``random``), its family (for ``--help``) and a one-line description.
``select``, ``compare`` and the baselines look methods up here; docs/selection.md's
"Methods" table lists the same entries (a test compares them). The registry's order is
the order of ``--method``'s choices and of every message that lists methods.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from dealrec.strata import PAPER_HARD_PRUNE, combine_scores, minmax, uniform_keys

RULES = ("stratified", "top_n", "random")
FAMILIES = {"dealrec": "", "ablation": "ablations ", "baseline": "baselines "}  # family -> --help label


@dataclass(frozen=True)
class Baseline:
    """A score column computed from a trained surrogate (``dealrec select`` adds it to scores.parquet)."""

    column: str
    scorer: str  # the function of dealrec.baselines: scorer(model, samples, progress=..., **kwargs) -> float64 [N]

    def compute(self, model, samples, **kwargs) -> np.ndarray:
        # imported when used: dealrec.baselines imports torch, which a selection from scores never needs
        return getattr(importlib.import_module("dealrec.baselines"), self.scorer)(model, samples, **kwargs)


EL2N = Baseline("el2n", "el2n_scores")
GRAND = Baseline("grand", "grand_scores")
BASELINES = (EL2N, GRAND)


@dataclass(frozen=True)
class Score:
    """What a method ranks by: ``compute(columns by name, lambda, sample_id, seed) -> float64 [N]``."""

    columns: tuple[str, ...]
    compute: Callable[[dict, float, np.ndarray, int], np.ndarray]
    uses_lambda: bool = False
    baseline: Baseline | None = None


def _minmax_of(column: str) -> Score:
    return Score((column,), lambda cols, lam, sample_id, seed: minmax(cols[column], column))


def _column_of(baseline: Baseline) -> Score:
    return Score((baseline.column,), lambda cols, lam, sample_id, seed: cols[baseline.column], baseline=baseline)


COMBINED = Score(("influence", "effort"),
                 lambda cols, lam, sample_id, seed: combine_scores(cols["influence"], cols["effort"], lam),
                 uses_lambda=True)
# random: the uniform key that orders the draw, so the score column shows what was ranked
RANDOM_KEY = Score((), lambda cols, lam, sample_id, seed: uniform_keys(sample_id, seed))


@dataclass(frozen=True)
class Method:
    name: str
    family: str        # dealrec, ablation or baseline (FAMILIES)
    score: Score
    rule: str          # RULES
    description: str   # one line, for --help and docs/selection.md
    hard_prune: float = 0.0   # stratified: the share of the highest scores dropped by default (resolve_hard_prune)
    allocation: str = "equal"  # stratified: how the budget is split over the strata by default (resolve_allocation)

    def __post_init__(self):
        if self.family not in FAMILIES or self.rule not in RULES:
            raise ValueError(f"method {self.name}: family {self.family!r} or rule {self.rule!r} is not known")

    @property
    def columns(self) -> tuple[str, ...]:
        """The score columns it ranks by (none for random)."""
        return self.score.columns

    @property
    def baseline(self) -> Baseline | None:
        """The surrogate-computed column it ranks by, if any (then it needs a trained surrogate)."""
        return self.score.baseline

    @property
    def uses_lambda(self) -> bool:
        return self.score.uses_lambda

    @property
    def stratified(self) -> bool:
        """Hard prune, then ``k`` strata: the method uses ``--k`` and ``--hard-prune``."""
        return self.rule == "stratified"

    def resolve_hard_prune(self, hard_prune: float | None) -> float:
        """``--hard-prune`` as given, or this method's default share when it is left out (None)."""
        return self.hard_prune if hard_prune is None else float(hard_prune)

    def resolve_allocation(self, allocation: str | None) -> str | None:
        """``--allocation`` as given, or this method's default when left out (None); None for a method that does
        not stratify (it has no strata to split a budget over: giving one is refused by SelectionConfig)."""
        if not self.stratified:
            return None
        return self.allocation if allocation is None else allocation


REGISTRY: dict[str, Method] = {m.name: m for m in (
    # the stationary influence's highest scores are its easiest samples: nothing hard to drop at the top; the
    # paper's equal budgets unless the check puts their coreset below random draws' (docs/selection.md, session 19)
    Method("dealrec", "dealrec", COMBINED, "stratified",
           "DEALRec: minmax(influence) + lambda * minmax(effort); hard prune, then k strata (coverage)",
           allocation="auto"),
    Method("influence", "ablation", _minmax_of("influence"), "stratified",
           "w/o effort: minmax(influence); hard prune, then k strata", allocation="auto"),
    Method("effort", "ablation", _minmax_of("effort"), "stratified",
           "w/o influence: minmax(effort); hard prune, then k strata", hard_prune=PAPER_HARD_PRUNE),
    Method("greedy", "ablation", COMBINED, "top_n",
           "w/o coverage: the top n of the dealrec score"),
    Method("random", "baseline", RANDOM_KEY, "random",
           "n samples uniformly at random, keyed by (seed, sample_id)"),
    Method("grand", "baseline", _column_of(GRAND), "top_n",
           "GraNd: the top n by the norm of the sample's loss gradient (surrogate)"),
    Method("el2n", "baseline", _column_of(EL2N), "top_n",
           "EL2N: the top n by the mean norm of softmax minus one-hot (surrogate)"),
    Method("ccs", "baseline", _column_of(EL2N), "stratified",
           "CCS: EL2N; hard prune, then k strata (coverage-centric coreset selection)", hard_prune=PAPER_HARD_PRUNE),
)}
METHODS = tuple(REGISTRY)


def _stratified_defaults(attribute: str) -> dict:
    """Each default value of a stratified method's ``attribute``, with the methods that have it (registry order)."""
    by_value: dict = {}
    for m in REGISTRY.values():
        if m.stratified:
            by_value.setdefault(getattr(m, attribute), []).append(m.name)
    return by_value


def hard_prune_help() -> str:
    """What ``--hard-prune`` left out means, from the registry: each stratified method's default share."""
    return ", ".join(f"{share:g} for {' and '.join(names)}"
                     for share, names in _stratified_defaults("hard_prune").items())


def allocation_help() -> str:
    """What ``--allocation`` left out means, from the registry: each stratified method's default."""
    return "; ".join(f"{how} for {', '.join(names)}" for how, names in _stratified_defaults("allocation").items())


def method_help() -> str:
    """``--method``'s help: the methods by family, in the registry's order."""
    groups = [label + ", ".join(m.name for m in REGISTRY.values() if m.family == family)
              for family, label in FAMILIES.items()]
    return "; ".join(groups) + "."


def method_list() -> str:
    """Every method and its description, one a line (``dealrec select --help``)."""
    width = max(len(name) for name in REGISTRY)
    return "\n".join(f"{m.name:<{width}}  {m.description}" for m in REGISTRY.values())
