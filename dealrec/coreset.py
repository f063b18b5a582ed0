"""Selection on tables: a scores table and the samples table -> scores with strata, and the coreset.

Checks that the scores cover exactly the samples, takes the score the method ranks by
(``dealrec.methods``), selects with its rule (``dealrec.strata``) and joins the selected
samples with their score columns. Pure: no files, no surrogate.

Stratum labels in the scores table: ``0..k-1`` for stratified methods, ``-1`` for a sample
removed by the hard prune. Methods that do not stratify (top n, random) put every sample in
the single stratum ``0``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import pyarrow as pa

from dealrec_core.errors import DealrecError, InputError
from dealrec.methods import METHODS, REGISTRY
from dealrec.strata import (AUTO_ALLOCATION, AUTO_FALLBACK, DEFAULT_K, DEFAULT_LAMBDA, DEFAULT_N, Strata,
                            check_allocation, random_select, stratified_select, top_n_select)

# the check's figure that "auto" records for each coreset it builds (dealrec.composition.popularity_check)
CHECK_FIGURE = "targets_popularity_recall@10"


@dataclass
class SelectionConfig:
    method: str = "dealrec"
    n: int = DEFAULT_N
    lam: float = DEFAULT_LAMBDA
    k: int = DEFAULT_K
    hard_prune: float | None = None   # None: the method's default share (dealrec.methods)
    seed: int = 0
    allocation: str | None = None      # None: the method's default (dealrec.methods); stays None unless stratified

    def __post_init__(self):
        if self.method not in REGISTRY:
            raise DealrecError(f"unknown selection method {self.method!r} (choose from {', '.join(METHODS)})")
        spec = REGISTRY[self.method]
        self.hard_prune = spec.resolve_hard_prune(self.hard_prune)
        check_allocation(self.allocation)
        if self.allocation is not None and not spec.stratified:
            stratified = ", ".join(m for m in METHODS if REGISTRY[m].stratified)
            raise DealrecError(f"--allocation splits a budget over strata: --method {self.method} does not "
                               f"stratify (the methods that do: {stratified})")
        self.allocation = spec.resolve_allocation(self.allocation)
        # every parameter is checked here, before any file is read (the algorithms check them again)
        if self.n < 1:
            raise DealrecError(f"--n must be at least 1, got {self.n}")
        if not math.isfinite(self.lam):
            raise DealrecError(f"--lambda must be a finite number, got {self.lam}")
        if self.k < 1:
            raise DealrecError(f"the number of strata k must be at least 1, got {self.k}")
        if not 0.0 <= self.hard_prune < 1.0:
            raise DealrecError(f"hard prune share must be in [0, 1), got {self.hard_prune}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lambda"] = d.pop("lam")
        return d


@dataclass
class SelectionResult:
    scores: pa.Table          # input columns + score (float64), stratum (int64), selected (bool)
    coreset: pa.Table         # selected rows of the samples table + their score columns, by sample_id
    summary: dict             # parameters, counts and budgets per stratum, edges: for the manifest
    strata: Strata | None = None
    check: dict | None = None  # the check of the coreset taken, where "auto" computed it (judge)


def method_score(table: pa.Table, method: str, lam: float, seed: int, source: str = "scores table") -> np.ndarray:
    """The score a method ranks by, from the columns of a scores table."""
    spec = REGISTRY[method].score
    for col in spec.columns:
        if col not in table.column_names:
            hint = ("; scored with --target none? then select with --method influence"
                    if col == "effort" and "influence" in table.column_names else "")
            raise InputError(source, f"missing column {col}, needed by --method {method} "
                                     f"(has: {', '.join(table.column_names)}){hint}", field=col)
    cols = {c: _float_column(table, c, source) for c in spec.columns}
    return spec.compute(cols, lam, table.column("sample_id").to_numpy(), seed)


def _float_column(table: pa.Table, col: str, source: str) -> np.ndarray:
    arr = table.column(col)
    if not (pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type)):
        raise InputError(source, f"column {col} must be numeric, got {arr.type}", field=col)
    if arr.null_count:
        row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(source, f"column {col} has missing values", row=row + 1, field=col)
    x = arr.to_numpy().astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(x))
    if len(bad):
        raise InputError(source, f"non-finite value {float(x[bad[0]])}", row=int(bad[0]) + 1, field=col)
    return x


def select_coreset(scores_table: pa.Table, samples, method: str = "dealrec", n: int = DEFAULT_N,
                   lam: float = DEFAULT_LAMBDA, k: int = DEFAULT_K, hard_prune: float | None = None,
                   seed: int = 0, source: str = "scores table", allocation: str | None = None,
                   judge: Callable[[np.ndarray], dict | None] | None = None) -> SelectionResult:
    """Select a coreset; ``samples`` is a samples ``pa.Table``, :class:`dealrec_core.data.Samples` or
    :class:`dealrec_core.data.SampleRows` (the table on disk: only its ``sample_id`` column and the selected
    rows are read, so selection needs the per-sample columns and nothing more).

    ``scores_table`` needs ``sample_id`` plus the columns ``REGISTRY[method].columns``
    (``random`` needs only ``sample_id``). Every sample of the samples table must have a
    score and vice versa: a coreset drawn from a partial scoring would be silently biased.

    ``allocation`` (stratified methods; None: the method's default) splits the budget over the strata.
    "auto" takes the paper's equal shares unless ``judge`` (selected sample_ids -> the check of
    ``dealrec.composition.popularity_check``) puts that coreset below random draws'; then ``AUTO_FALLBACK``'s
    shares; without a judge (no validation split) it is "equal".
    """
    cfg = SelectionConfig(method, int(n), float(lam), int(k), None if hard_prune is None else float(hard_prune),
                          int(seed), allocation)
    if "sample_id" not in scores_table.column_names:
        raise InputError(source, "missing column sample_id "
                                 f"(has: {', '.join(scores_table.column_names)})", field="sample_id")
    from dealrec_core.data import SampleRows   # pyarrow's readers: not for a command's --help

    if isinstance(samples, SampleRows):
        sample_ids, take = samples.column("sample_id").to_numpy().astype(np.int64), samples.table
    else:
        samples_tbl = samples if isinstance(samples, pa.Table) else samples.to_table()
        if "sample_id" not in samples_tbl.column_names:
            raise InputError("samples table", "missing column sample_id", field="sample_id")
        sample_ids = samples_tbl.column("sample_id").to_numpy().astype(np.int64)
        take = lambda rows: samples_tbl.take(pa.array(rows))   # noqa: E731
    sid = scores_table.column("sample_id").to_numpy().astype(np.int64)
    if len(np.unique(sid)) != len(sid):
        raise InputError(source, "sample_id values are not unique", field="sample_id")
    check_same_samples(sid, sample_ids, source)

    score = method_score(scores_table, method, cfg.lam, cfg.seed, source)
    strata, check, allocation_record = None, None, {}
    rule = REGISTRY[method].rule
    if rule == "stratified":
        def select(how):
            return stratified_select(sid, score, cfg.n, cfg.k, cfg.hard_prune, cfg.seed, return_strata=True,
                                     allocation=how)

        if cfg.allocation == AUTO_ALLOCATION:
            selected, strata, check, allocation_record = _auto_allocation(select, judge)
        else:
            selected, strata = select(cfg.allocation)
            allocation_record = {"allocation_used": cfg.allocation}
        stratum = strata.stratum
    elif rule == "top_n":
        selected, stratum = top_n_select(sid, score, cfg.n), np.zeros(len(sid), np.int64)
    else:
        selected, stratum = random_select(sid, cfg.n, cfg.seed), np.zeros(len(sid), np.int64)

    is_selected = np.isin(sid, selected)
    out = scores_table
    for name, values in (("score", pa.array(score, pa.float64())), ("stratum", pa.array(stratum, pa.int64())),
                         ("selected", pa.array(is_selected))):
        if name in out.column_names:
            out = out.set_column(out.column_names.index(name), name, values)
        else:
            out = out.append_column(name, values)

    coreset = _coreset_rows(sample_ids, take, out.filter(pa.array(is_selected)), selected)
    summary = {**cfg.to_dict(), "n_samples": int(len(sid)), "n_selected": int(len(selected))}
    if strata is not None:
        summary.update({
            "n_hard_pruned": strata.n_pruned,
            "hard_prune_threshold": None if math.isnan(strata.prune_threshold) else strata.prune_threshold,
            "strata_edges": [float(e) for e in strata.edges],
            "strata_counts": [int(c) for c in strata.counts],
            "strata_budgets": [int(b) for b in strata.budgets],
            **allocation_record,
        })
    else:
        summary.update({"n_hard_pruned": 0})
    return SelectionResult(out, coreset, summary, strata, check)


def _auto_allocation(select, judge):
    """"auto": the paper's equal shares, unless the check puts their coreset below random draws'; then
    ``AUTO_FALLBACK``'s shares (their check is computed for the record, not compared: the check has told the side of
    random a coreset falls on, not how far). Returns (selected, strata, the taken coreset's check, the manifest's
    record: which allocation was used and each computed coreset's check figure)."""
    selected, strata = select("equal")
    if judge is None:
        return selected, strata, None, {"allocation_used": "equal",
                                        "allocation_reason": "no validation split to check against"}
    check = judge(selected)
    figures = {"equal": None if check is None else check[CHECK_FIGURE]}
    if check is None or not check["below_random"]:
        return selected, strata, check, {"allocation_used": "equal", "allocation_checks": figures}
    other, other_strata = select(AUTO_FALLBACK)
    other_check = judge(other)
    figures[AUTO_FALLBACK] = None if other_check is None else other_check[CHECK_FIGURE]
    return other, other_strata, other_check, {"allocation_used": AUTO_FALLBACK, "allocation_checks": figures}


def check_same_samples(score_ids: np.ndarray, sample_ids: np.ndarray, source: str) -> None:
    missing = np.setdiff1d(sample_ids, score_ids)
    if len(missing):
        raise InputError(source, f"{len(missing)} samples of the samples table have no score "
                                 f"(first sample_id {int(missing[0])})", field="sample_id")
    extra = np.setdiff1d(score_ids, sample_ids)
    if len(extra):
        raise InputError(source, f"{len(extra)} scored sample_ids are not in the samples table "
                                 f"(first {int(extra[0])})", field="sample_id")


def _coreset_rows(ids: np.ndarray, take, selected_scores: pa.Table, selected: np.ndarray) -> pa.Table:
    """Samples-table rows of ``selected`` (sorted by sample_id) joined with their score columns; ``ids``: the
    samples table's sample_id column, ``take(rows)``: those rows of it as a table."""
    pos = np.argsort(ids)
    rows = pos[np.searchsorted(ids[pos], selected)]
    coreset = take(rows)
    sc_ids = selected_scores.column("sample_id").to_numpy().astype(np.int64)
    sc_rows = np.argsort(sc_ids)[np.searchsorted(np.sort(sc_ids), selected)]
    sc = selected_scores.take(pa.array(sc_rows))
    for name in sc.column_names:
        if name in ("sample_id", "selected") or name in coreset.column_names:
            continue
        coreset = coreset.append_column(name, sc.column(name))
    return coreset
