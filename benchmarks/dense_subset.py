"""A small, denser prepared folder cut from a large one, for quick checks of a surrogate's defaults.

Keeps the ``--items`` most popular items of the training sequences (ids renumbered 1..ITEMS by
popularity), filters every sequence to them, keeps the first ``--samples`` samples that still have a
target, and filters their users' validation and test rows the same way (a user whose ground truth
falls outside the kept items is dropped). A random cut of Games is too sparse for a quick check: on
the first 10,000 samples with all 17,332 items, even SASRec's best epoch stays below most popular.

    python benchmarks/dense_subset.py --data runs/games/data --out runs/games-dense --items 2000 --samples 8000
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa

from dealrec_core.data import EvalSplit, PreparedData, Samples, write_parquet_atomic, write_samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="A prepared data folder.")
    ap.add_argument("--out", required=True, help="The new prepared folder (must not exist).")
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=8000)
    args = ap.parse_args()

    src, dst = PreparedData(args.data), Path(args.out)
    samples = src.samples()
    counts = np.bincount(np.concatenate(samples.sequences()), minlength=src.n_items + 1)
    counts[0] = 0
    kept = np.argsort(-counts, kind="stable")[:args.items]
    renumber = np.zeros(src.n_items + 1, dtype=np.int32)
    renumber[kept] = np.arange(1, len(kept) + 1)

    def keep(items) -> np.ndarray:
        ids = renumber[np.asarray(items, dtype=np.int64)]
        return ids[ids > 0].astype(np.int32)

    rows = []
    for sample_id, user, seq in zip(samples.sample_id, samples.user, samples.sequences()):
        seq = keep(seq)
        if len(seq):
            rows.append((sample_id, user, seq[:-1], seq[-1]))
        if len(rows) == args.samples:
            break
    dst.mkdir(parents=True)
    subset = Samples(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), [r[2] for r in rows],
                     np.array([r[3] for r in rows], dtype=np.int32))
    write_samples(subset.to_table(), dst / "samples")
    titles = src.titles()
    write_parquet_atomic(pa.table({"item": pa.array(np.arange(1, len(kept) + 1, dtype=np.int32)),
                                   "title": [titles[i] for i in kept]}), dst / "items.parquet")
    users = set(subset.user.tolist())
    (dst / "eval").mkdir()
    for split in ("valid", "test"):
        e = src.eval_split(split)
        picked = [(u, keep(h), keep(t)) for u, h, t in zip(e.user, e.history, e.targets) if u in users]
        picked = [p for p in picked if len(p[2])]
        write_parquet_atomic(EvalSplit(np.array([p[0] for p in picked], dtype=np.int64), [p[1] for p in picked],
                                       [p[2] for p in picked]).to_table(), dst / "eval" / f"{split}.parquet")
        print(f"{split}: {len(picked):,} users")
    print(f"{dst}: {len(subset):,} samples, {len(kept):,} items")


if __name__ == "__main__":
    main()
