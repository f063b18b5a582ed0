"""Coverage-enhanced selection (DEALRec step 4-5), its ablations and the baselines' selection rules.

The selection is a pure function of ``(sample_id, score)`` pairs and the parameters:

- scores are combined as ``minmax(influence) + lambda * minmax(effort)``;
- ``stratified_select`` drops the top ``hard_prune`` share of scores (ties: the smaller
  ``sample_id`` counts as the higher score), cuts the remaining score range into ``k``
  equal-width strata and fills the budget stratum by stratum, fewest-first, each stratum
  taking at most ``remaining budget // remaining strata``;
- inside a stratum the samples are drawn at random, where "random" means: ordered by a
  64-bit hash of ``(seed, sample_id)`` (``dealrec_core.hashing``). No global random state
  is used, so the result depends neither on the order of the rows, nor on how the scores
  were sharded, nor on how many workers computed them.

Stratum labels in the scores table: ``0..k-1`` for stratified methods, ``-1`` for a sample
removed by the hard prune. Methods that do not stratify (``greedy``, ``el2n``, ``grand``,
``random``) put every sample in the single stratum ``0``.

See docs/selection.md for the methods and the papers they come from.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import pyarrow as pa

from dealrec_core.errors import DealrecError, InputError
from dealrec_core.hashing import splitmix64

# method -> (score columns it needs, selection rule)
METHOD_COLUMNS: dict[str, tuple[str, ...]] = {
    "dealrec": ("influence", "effort"),
    "influence": ("influence",),
    "effort": ("effort",),
    "greedy": ("influence", "effort"),
    "random": (),
    "grand": ("grand",),
    "el2n": ("el2n",),
    "ccs": ("el2n",),
}
METHODS = tuple(METHOD_COLUMNS)
STRATIFIED_METHODS = ("dealrec", "influence", "effort", "ccs")
TOP_N_METHODS = ("greedy", "grand", "el2n")
PRUNED = -1  # stratum label of a sample removed by the hard prune

# Paper defaults (Games): lambda 0.3, k 50, hard prune 10%, 1,024 samples.
DEFAULT_N = 1024
DEFAULT_LAMBDA = 0.3
DEFAULT_K = 50
DEFAULT_HARD_PRUNE = 0.1


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
             hard_prune: float = DEFAULT_HARD_PRUNE) -> Strata:
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


def stratified_select(sample_id: Sequence[int], score: Sequence[float], n: int, k: int = DEFAULT_K,
                      hard_prune: float = DEFAULT_HARD_PRUNE, seed: int = 0,
                      return_strata: bool = False):
    """Coverage-enhanced selection of ``n`` samples.

    Returns ``(selected sample_ids sorted ascending, stratum per input row)``; with
    ``return_strata=True`` the second item is the full :class:`Strata` (edges, counts, budgets).
    """
    sample_id = np.asarray(sample_id, dtype=np.int64)
    strata = stratify(sample_id, score, k, hard_prune)
    available = len(sample_id) - strata.n_pruned
    _check_budget(n, available, f"{len(sample_id)} samples less {strata.n_pruned} hard-pruned "
                                f"(hard prune {hard_prune})")
    strata.budgets = allocate_budget(strata.counts, n)
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


# ----------------------------------------------------------------------------- coreset

@dataclass
class SelectionConfig:
    method: str = "dealrec"
    n: int = DEFAULT_N
    lam: float = DEFAULT_LAMBDA
    k: int = DEFAULT_K
    hard_prune: float = DEFAULT_HARD_PRUNE
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHOD_COLUMNS:
            raise DealrecError(f"unknown selection method {self.method!r} (choose from {', '.join(METHODS)})")
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


def method_score(table: pa.Table, method: str, lam: float, seed: int, source: str = "scores table") -> np.ndarray:
    """The score a method ranks by, from the columns of a scores table."""
    for col in METHOD_COLUMNS[method]:
        if col not in table.column_names:
            hint = ("; scored with --target none? then select with --method influence"
                    if col == "effort" and "influence" in table.column_names else "")
            raise InputError(source, f"missing column {col}, needed by --method {method} "
                                     f"(has: {', '.join(table.column_names)}){hint}", field=col)
    cols = {c: _float_column(table, c, source) for c in METHOD_COLUMNS[method]}
    if method in ("dealrec", "greedy"):
        return combine_scores(cols["influence"], cols["effort"], lam)
    if method in ("influence", "effort"):
        return minmax(cols[method], method)
    if method in ("el2n", "ccs"):
        return cols["el2n"]
    if method == "grand":
        return cols["grand"]
    # random: the uniform key that orders the draw, so the score column shows what was ranked
    return uniform_keys(table.column("sample_id").to_numpy(), seed)


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
                   lam: float = DEFAULT_LAMBDA, k: int = DEFAULT_K, hard_prune: float = DEFAULT_HARD_PRUNE,
                   seed: int = 0, source: str = "scores table") -> SelectionResult:
    """Select a coreset; ``samples`` is a samples ``pa.Table`` or :class:`dealrec_core.data.Samples`.

    ``scores_table`` needs ``sample_id`` plus the columns of ``METHOD_COLUMNS[method]``
    (``random`` needs only ``sample_id``). Every sample of the samples table must have a
    score and vice versa: a coreset drawn from a partial scoring would be silently biased.
    """
    cfg = SelectionConfig(method, int(n), float(lam), int(k), float(hard_prune), int(seed))
    if "sample_id" not in scores_table.column_names:
        raise InputError(source, "missing column sample_id "
                                 f"(has: {', '.join(scores_table.column_names)})", field="sample_id")
    samples_tbl = samples if isinstance(samples, pa.Table) else samples.to_table()
    if "sample_id" not in samples_tbl.column_names:
        raise InputError("samples table", "missing column sample_id", field="sample_id")
    sid = scores_table.column("sample_id").to_numpy().astype(np.int64)
    if len(np.unique(sid)) != len(sid):
        raise InputError(source, "sample_id values are not unique", field="sample_id")
    _check_same_samples(sid, samples_tbl.column("sample_id").to_numpy().astype(np.int64), source)

    score = method_score(scores_table, method, cfg.lam, cfg.seed, source)
    strata = None
    if method in STRATIFIED_METHODS:
        selected, strata = stratified_select(sid, score, cfg.n, cfg.k, cfg.hard_prune, cfg.seed,
                                             return_strata=True)
        stratum = strata.stratum
    elif method in TOP_N_METHODS:
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

    coreset = _coreset_rows(samples_tbl, out.filter(pa.array(is_selected)), selected)
    summary = {**cfg.to_dict(), "n_samples": int(len(sid)), "n_selected": int(len(selected))}
    if strata is not None:
        summary.update({
            "n_hard_pruned": strata.n_pruned,
            "hard_prune_threshold": None if math.isnan(strata.prune_threshold) else strata.prune_threshold,
            "strata_edges": [float(e) for e in strata.edges],
            "strata_counts": [int(c) for c in strata.counts],
            "strata_budgets": [int(b) for b in strata.budgets],
        })
    else:
        summary.update({"n_hard_pruned": 0})
    return SelectionResult(out, coreset, summary, strata)


def _check_same_samples(score_ids: np.ndarray, sample_ids: np.ndarray, source: str) -> None:
    missing = np.setdiff1d(sample_ids, score_ids)
    if len(missing):
        raise InputError(source, f"{len(missing)} samples of the samples table have no score "
                                 f"(first sample_id {int(missing[0])})", field="sample_id")
    extra = np.setdiff1d(score_ids, sample_ids)
    if len(extra):
        raise InputError(source, f"{len(extra)} scored sample_ids are not in the samples table "
                                 f"(first {int(extra[0])})", field="sample_id")


def _coreset_rows(samples_tbl: pa.Table, selected_scores: pa.Table, selected: np.ndarray) -> pa.Table:
    """Samples-table rows of ``selected`` (sorted by sample_id) joined with their score columns."""
    ids = samples_tbl.column("sample_id").to_numpy().astype(np.int64)
    pos = np.argsort(ids)
    rows = pos[np.searchsorted(ids[pos], selected)]
    coreset = samples_tbl.take(pa.array(rows))
    sc_ids = selected_scores.column("sample_id").to_numpy().astype(np.int64)
    sc_rows = np.argsort(sc_ids)[np.searchsorted(np.sort(sc_ids), selected)]
    sc = selected_scores.take(pa.array(sc_rows))
    for name in sc.column_names:
        if name in ("sample_id", "selected") or name in coreset.column_names:
            continue
        coreset = coreset.append_column(name, sc.column(name))
    return coreset


# ----------------------------------------------------------------------------- command

SCORES_FILE = "scores.parquet"
CORESET_FILE = "coreset.parquet"
MANIFEST_FILE = "manifest.json"
PLOT_FILE = "selection.png"


def read_manifest(run) -> dict:
    import json
    from pathlib import Path

    path = Path(run) / MANIFEST_FILE
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise InputError(path, f"not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise InputError(path, "not a JSON object")
    return manifest


def manifest_path(manifest: dict, key: str, run) -> "str | None":
    """The folder that ``manifest`` records under ``key`` (``data``, ``surrogate``).

    Accepts ``{key: "DIR"}``, ``{key: {"path"|"dir": "DIR", ...}}`` and the same under an
    ``inputs`` section (``dealrec score``) or ``selection.inputs`` (a run ``select`` started); a relative path is tried against the working folder, then ``run``.
    """
    from pathlib import Path

    def lookup(section):
        v = section.get(key) if isinstance(section, dict) else None
        if isinstance(v, str):
            return v
        if isinstance(v, dict):
            for k in ("path", "dir", "root", "out"):
                if isinstance(v.get(k), str):
                    return v[k]
        return None

    selection = manifest.get("selection") if isinstance(manifest.get("selection"), dict) else {}
    value = lookup(manifest) or lookup(manifest.get("inputs")) or lookup(selection.get("inputs"))
    if value is None:
        return None
    p = Path(value)
    if not p.is_absolute() and not p.exists() and (Path(run) / p).exists():
        p = Path(run) / p
    return str(p)


def run_select(run=None, method: str = "dealrec", n: int = DEFAULT_N, lam: float = DEFAULT_LAMBDA,
               k: int = DEFAULT_K, hard_prune: float = DEFAULT_HARD_PRUNE, seed: int = 0, data=None,
               surrogate=None, out=None, plot: bool = True, progress: bool = True) -> dict:
    """``dealrec select``: read RUN's scores (and samples), select, write scores/coreset/manifest/plot.

    Returns the manifest's ``selection`` section.
    """
    import time
    from pathlib import Path

    from dealrec_core.data import PreparedData, load_samples, read_table, sha256_file, write_json_atomic, \
        write_parquet_atomic

    t0 = time.time()
    SelectionConfig(method, n, lam, k, hard_prune, seed)  # a bad method or parameter: one line before any work
    if run is None and out is None:
        raise DealrecError("give a RUN folder (or --out for a fresh run)")
    if run is not None and not Path(run).is_dir():
        raise DealrecError(f"{run}: no such run folder" if not Path(run).exists() else f"{run}: not a folder (RUN)")
    out = Path(out if out is not None else run)
    run = Path(run) if run is not None else out
    manifest = read_manifest(run)
    scores_path = run / SCORES_FILE
    data = data or manifest_path(manifest, "data", run)
    if data is None:
        raise DealrecError(f"no data folder: {run / MANIFEST_FILE} names none; pass --data DIR")
    # OUT (RUN by default: select rewrites RUN's scores by design) is written in place; the data and the
    # surrogate may sit beside what it writes (RUN/data of 'dealrec prune'), never be OUT or contain it.
    from dealrec_core.paths import check_output

    used_surrogate = surrogate or (manifest_path(manifest, "surrogate", run) if method in BASELINE_METHODS else None)
    check_output(out, {"--data": data, "--surrogate": used_surrogate},
                 writes=(SCORES_FILE, CORESET_FILE, MANIFEST_FILE, PLOT_FILE), option="--out" if out != run else "RUN")
    prepared = PreparedData(data)
    samples_tbl = read_table(prepared.samples_dir, required=("sample_id", "history", "target"),
                             what="samples table")

    needs = METHOD_COLUMNS[method]
    if scores_path.exists():
        scores = read_table(scores_path, required=("sample_id",), what="scores table")
    elif needs and method not in BASELINE_METHODS:
        raise InputError(scores_path, f"no such file; --method {method} needs the scores of "
                                      f"'dealrec score' (columns sample_id, {', '.join(needs)})")
    else:
        scores = pa.table({"sample_id": samples_tbl.column("sample_id")})
    # stale selection columns of an earlier run are replaced, never mixed in
    scores = scores.select([c for c in scores.column_names if c not in ("score", "stratum", "selected")])

    inputs = {"data": str(prepared.root), "samples_sha256": [sha256_file(p) for p in prepared.shard_paths()]}
    if scores_path.exists():
        inputs["scores_sha256"] = sha256_file(scores_path)
    # baseline columns already in the scores, with the surrogate and samples they came from
    known = {c: v for c, v in manifest.get("selection", {}).get("inputs", {}).get("baseline_columns", {}).items()
             if c in scores.column_names}
    if method in BASELINE_METHODS:
        from dealrec.baselines import BASELINE_COLUMNS, baseline_scores
        from surrogates.base import load_surrogate

        surrogate = surrogate or manifest_path(manifest, "surrogate", run)
        if surrogate is None:
            raise DealrecError(f"--method {method} scores samples with a trained surrogate: "
                               f"{run / MANIFEST_FILE} names none; pass --surrogate DIR")
        column = BASELINE_COLUMNS[method]
        origin = {"surrogate_sha256": sha256_file(Path(surrogate) / "model.safetensors"),
                  "samples_sha256": inputs["samples_sha256"]}
        inputs.update({"surrogate": str(surrogate), "surrogate_sha256": origin["surrogate_sha256"]})
        if column in known and known[column].get("values_sha256") == _column_digest(scores, column) and \
                {k: known[column].get(k) for k in origin} == origin:
            inputs["baseline_reused"] = column  # same surrogate, same samples, untouched values
        else:
            from surrogates.base import check_surrogate_fits

            check_surrogate_fits(surrogate, prepared.n_items, prepared.root)
            model = load_surrogate(surrogate)
            samples = load_samples(prepared.samples_dir)
            t_base = time.time()
            cols = baseline_scores(method, model, samples, progress=progress)
            inputs["baseline_seconds"] = round(time.time() - t_base, 3)
            scores = _join_by_sample_id(scores, samples.sample_id, cols, str(scores_path))
            known[column] = {**origin, "values_sha256": _column_digest(scores, column)}
    if known:
        inputs["baseline_columns"] = known

    result = select_coreset(scores, samples_tbl, method, n, lam, k, hard_prune, seed, source=str(scores_path))
    out.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(result.scores, out / SCORES_FILE)
    write_parquet_atomic(result.coreset, out / CORESET_FILE)
    section = {**result.summary, "inputs": inputs,
               "outputs": {"scores": SCORES_FILE, "coreset": CORESET_FILE},
               "seconds": None}
    if plot:
        from dealrec.plots import plot_selection

        plot_selection(result, out / PLOT_FILE)
        section["outputs"]["plot"] = PLOT_FILE
    section["seconds"] = round(time.time() - t0, 3)
    # re-read (only our section changes); a fresh --out starts from RUN's manifest
    manifest = read_manifest(out) if (out / MANIFEST_FILE).exists() else read_manifest(run)
    manifest["selection"] = section
    write_json_atomic(out / MANIFEST_FILE, manifest)
    return section


BASELINE_METHODS = ("el2n", "grand", "ccs")


def _column_digest(scores: pa.Table, column: str) -> "str | None":
    """sha256 of a score column in sample_id order (detects a column edited after it was computed)."""
    import hashlib

    if column not in scores.column_names:
        return None
    sid = scores.column("sample_id").to_numpy().astype(np.int64)
    order = np.argsort(sid, kind="stable")
    values = scores.column(column).to_numpy().astype(np.float64)[order]
    return hashlib.sha256(sid[order].tobytes() + values.tobytes()).hexdigest()


def _join_by_sample_id(scores: pa.Table, sample_id: np.ndarray, cols: dict, source: str) -> pa.Table:
    """Add baseline columns (aligned with ``sample_id``) to ``scores`` by sample_id."""
    sid = scores.column("sample_id").to_numpy().astype(np.int64)
    _check_same_samples(sid, np.asarray(sample_id, dtype=np.int64), source)
    pos = np.argsort(sample_id)
    rows = pos[np.searchsorted(np.asarray(sample_id)[pos], sid)]
    for name, values in cols.items():
        arr = pa.array(np.asarray(values, dtype=np.float64)[rows], pa.float64())
        if name in scores.column_names:
            scores = scores.set_column(scores.column_names.index(name), name, arr)
        else:
            scores = scores.append_column(name, arr)
    return scores


def _select_command():
    import click

    from dealrec_core.options import SEED

    @click.command("select")
    @click.argument("run", required=False, type=click.Path(file_okay=False))
    @click.option("--method", type=click.Choice(METHODS), default="dealrec", show_default=True,
                  help="dealrec; ablations influence, effort, greedy; baselines random, grand, el2n, ccs.")
    @click.option("--n", "n", type=int, default=DEFAULT_N, show_default=True, help="Coreset size.")
    @click.option("--lambda", "lam", type=float, default=DEFAULT_LAMBDA, show_default=True,
                  help="Weight of the effort score.")
    @click.option("--k", "k", type=int, default=DEFAULT_K, show_default=True, help="Number of strata.")
    @click.option("--hard-prune", type=float, default=DEFAULT_HARD_PRUNE, show_default=True,
                  help="Share of the highest scores dropped before stratifying.")
    @click.option("--seed", type=SEED, default=0, show_default=True)
    @click.option("--data", type=click.Path(file_okay=False), default=None,
                  help="Prepared data folder (default: the one RUN/manifest.json names).")
    @click.option("--surrogate", type=click.Path(file_okay=False), default=None,
                  help="Trained surrogate for el2n/grand/ccs (default: the one the manifest names).")
    @click.option("--out", type=click.Path(file_okay=False), default=None,
                  help="Write here instead of RUN (e.g. --method random --data DATA --out RUN).")
    @click.option("--no-plot", is_flag=True, help="Skip RUN/selection.png.")
    def select_cmd(run, method, n, lam, k, hard_prune, seed, data, surrogate, out, no_plot):
        """Select a coreset from RUN/scores.parquet; write scores, coreset, manifest and a plot."""
        section = run_select(run, method, n, lam, k, hard_prune, seed, data, surrogate, out, plot=not no_plot)
        where = out or run
        click.echo(f"selected {section['n_selected']} of {section['n_samples']} samples "
                   f"(method {method}, seed {seed}) -> {where}/{CORESET_FILE}")

    return select_cmd


select_command = _select_command()
