"""Other forms of a score run's influence column, for the selection's ablations (docs/selection.md, "Ablations on
TIGER, one input at a time").

    python benchmarks/influence_variants.py RUN --data PREPARED --surrogate SURR --out DIR [--variants position,short-zero,rank]
    dealrec select DIR/VARIANT --method influence --seed S --data PREPARED --out SEL     # then train on SEL's coreset

RUN is a ``dealrec score`` run (``scores.parquet`` with ``sample_id`` and ``influence``; an ``effort`` column is
kept as it is) and SURR the surrogate it was scored with. For each variant, ``DIR/VARIANT/scores.parquet`` holds the
same columns with the influence replaced, and ``DIR/VARIANT/manifest.json`` is RUN's with an ``influence_variant``
entry saying what was done, so that ``dealrec select`` reads it as it reads RUN. Nothing is recomputed: each
variant is a function of the scored column and of the samples.

- ``position``: the stationary influence under the risk the surrogate was trained on. SASRec weighs every
  predicted position the same, so a sample weighs ``w_s`` (its predicted positions, the surrogate's
  ``sample_weights``) in that risk, and leaving it out changes the others' risk by ``-w_s^2 G_s (H + tI)^-1 G_s``
  (up to one constant for all samples): the scored column times ``w_s^2``. The default weighs every sample as one.
- ``short-zero``: the reference's data pipeline, where a history of at most one item gets an influence of 0.
- ``rank``: the influence's rank (ties share their mean rank). Equal-width strata over the rank are strata of
  equal counts over the influence: the ablation of the equal-width strata.

Prints, per variant, the composition of its seed-0 ``influence`` coreset (``--n``, default 1,024): the share of
empty histories, the mean history length and the distinct targets.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.stats import rankdata

from dealrec.coreset import check_same_samples, select_coreset
from dealrec_core.data import PreparedData, Samples, read_table
from dealrec_core.errors import DealrecError, InputError
from surrogates.registry import load_surrogate
from surrogates.train import risk_weights

VARIANTS = ("position", "short-zero", "rank")
SHORT = 1   # short-zero: histories of at most this many items


def variant_column(name: str, influence: np.ndarray, history_lengths: np.ndarray,
                   weights: np.ndarray | None = None) -> np.ndarray:
    """The influence column of variant ``name``; every argument is aligned with the scores' rows."""
    influence = np.asarray(influence, dtype=np.float64)
    if name == "position":
        if weights is None:
            raise DealrecError("the position variant needs the samples' weights")
        return influence * np.asarray(weights, dtype=np.float64) ** 2
    if name == "short-zero":
        return np.where(np.asarray(history_lengths) <= SHORT, 0.0, influence)
    if name == "rank":
        return rankdata(influence, method="average").astype(np.float64)
    raise DealrecError(f"unknown variant {name!r} (choose from {', '.join(VARIANTS)})")


def write_variants(run: Path, samples: Samples, surrogate: str | Path | None, out: Path,
                   variants=VARIANTS) -> dict[str, Path]:
    """Write every variant's scores and manifest under ``out`` (``samples``: the run's prepared samples); returns
    the folders by variant."""
    for name in variants:
        variant_column(name, np.zeros(1), np.zeros(1), np.ones(1))   # an unknown name: refused before any work
    scores = read_table(run / "scores.parquet", required=("sample_id", "influence"), what="scores table")
    if not (run / "manifest.json").is_file():
        raise DealrecError(f"{run / 'manifest.json'}: missing (is {run} a dealrec score run?)")
    manifest = json.loads((run / "manifest.json").read_text())
    ids = np.asarray(samples.sample_id, dtype=np.int64)
    sid = scores.column("sample_id").to_numpy().astype(np.int64)
    if len(np.unique(sid)) != len(sid):
        raise InputError(run / "scores.parquet", "sample_id values are not unique", field="sample_id")
    check_same_samples(sid, ids, str(run / "scores.parquet"))
    order = np.argsort(ids, kind="stable")
    rows = order[np.searchsorted(ids, sid, sorter=order)]   # the samples' row of every scored row
    lengths = np.array([len(h) for h in samples.history])[rows]
    weights = None
    if "position" in variants:
        if surrogate is None:
            raise DealrecError("the position variant needs --surrogate (the samples' weights)")
        weights = risk_weights(load_surrogate(surrogate).eval(), samples, "position")[rows]
    influence = scores.column("influence").to_numpy().astype(np.float64)
    folders = {}
    for name in variants:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        column = variant_column(name, influence, lengths, weights)
        table = scores.set_column(scores.column_names.index("influence"), "influence", pa.array(column, pa.float64()))
        pq.write_table(table, folder / "scores.parquet")
        note = {"variant": name, "from": str(run), "surrogate": None if surrogate is None else str(surrogate),
                "see": "benchmarks/influence_variants.py"}
        (folder / "manifest.json").write_text(json.dumps({**manifest, "influence_variant": note}, indent=2))
        folders[name] = folder
    return folders


def composition(coreset: pa.Table) -> str:
    lengths = np.array([len(h) for h in coreset.column("history").to_pylist()])
    return (f"empty histories {100 * (lengths == 0).mean():.1f}%, mean history {lengths.mean():.2f}, "
            f"distinct targets {len(set(coreset.column('target').to_pylist()))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a dealrec score run folder")
    ap.add_argument("--data", required=True, help="its prepared data folder")
    ap.add_argument("--surrogate", help="the surrogate it was scored with (needed by the position variant)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--n", type=int, default=1024, help="coreset size of the printed composition")
    args = ap.parse_args()
    try:
        samples = PreparedData(args.data).samples()
        folders = write_variants(args.run, samples, args.surrogate, args.out, tuple(args.variants.split(",")))
    except DealrecError as e:   # bad input: one line, no traceback
        raise SystemExit(f"error: {e}") from None
    print(f"as scored: {composition(select_coreset(pq.read_table(args.run / 'scores.parquet'), samples, 'influence', args.n).coreset)}")
    for name, folder in folders.items():
        coreset = select_coreset(pq.read_table(folder / "scores.parquet"), samples, "influence", args.n).coreset
        print(f"{name}: {composition(coreset)} -> {folder}")


if __name__ == "__main__":
    main()
