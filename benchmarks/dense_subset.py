"""A smaller, denser prepared folder cut from a large one: quick checks, and a second data set to run the defaults on.

Keeps the ``--items`` most popular items of the training sequences (ids renumbered 1..ITEMS by
popularity), filters every sequence to them, keeps the first ``--samples`` samples that still have a
target, and filters their users' validation and test rows the same way (a user whose ground truth
falls outside the kept items is dropped). A random cut of Games is too sparse for a quick check: on
the first 10,000 samples with all 17,332 items, even SASRec's best epoch stays below most popular.

``--category NAME`` first narrows the catalogue to the items whose ``categories`` list holds NAME
exactly (e.g. ``PC`` or ``Accessories`` on Games): a sub-domain's log, with its own popularity and
its own users, to check that defaults chosen on the whole log are not fitted to it
(docs/selection.md, "The defaults on data they were not chosen on").

    python benchmarks/dense_subset.py --data runs/games/data --out runs/games-dense --items 2000 --samples 8000
    python benchmarks/dense_subset.py --data runs/games/data --out runs/games-pc --items 100000 --samples 100000 --category PC
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from dealrec_core.data import EvalSplit, PreparedData, Samples, atomic_output_dir, write_parquet_atomic, write_samples
from dealrec_core.errors import DealrecError


def category_items(src: PreparedData, category: str) -> np.ndarray:
    """A mask over item ids 0..n_items: True for the items whose ``categories`` hold ``category``."""
    items = src.items
    if "categories" not in items.column_names:
        raise DealrecError(f"{src.root / 'items.parquet'}: no 'categories' column, so --category cannot be used")
    mask = np.zeros(src.n_items + 1, dtype=bool)
    for item, cats in zip(items.column("item").to_pylist(), items.column("categories").to_pylist()):
        mask[item] = category in (cats or ())
    if not mask.any():
        raise DealrecError(f"{src.root / 'items.parquet'}: no item has the category {category!r}")
    return mask


def cut(data: str | Path, out: str | Path, items: int, samples: int, category: str | None = None) -> dict:
    """Write the cut of prepared ``data`` to ``out`` (which must not exist); return its counts."""
    src = PreparedData(data)
    if Path(out).exists():
        raise DealrecError(f"{out}: already exists")
    source = src.samples()
    counts = np.bincount(np.concatenate(source.sequences()), minlength=src.n_items + 1)
    counts[0] = 0
    if category is not None:
        counts[~category_items(src, category)] = 0
    kept = np.argsort(-counts, kind="stable")[:min(items, int((counts > 0).sum()))]
    renumber = np.zeros(src.n_items + 1, dtype=np.int32)
    renumber[kept] = np.arange(1, len(kept) + 1)

    def keep(seq) -> np.ndarray:
        ids = renumber[np.asarray(seq, dtype=np.int64)]
        return ids[ids > 0].astype(np.int32)

    rows = []
    for sample_id, user, seq in zip(source.sample_id, source.user, source.sequences()):
        seq = keep(seq)
        if len(seq):
            rows.append((sample_id, user, seq[:-1], seq[-1]))
        if len(rows) == samples:
            break
    if not rows:
        raise DealrecError(f"{data}: no sample keeps an item of the cut")
    subset = Samples(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), [r[2] for r in rows],
                     np.array([r[3] for r in rows], dtype=np.int32))
    with atomic_output_dir(out) as dst:   # a crash leaves no half-written folder behind
        counts = _write(src, dst, subset, kept, keep)
    return counts


def _write(src: PreparedData, dst: Path, subset: Samples, kept: np.ndarray, keep) -> dict:
    write_samples(subset.to_table(), dst / "samples")
    table = src.items
    position = {item: i for i, item in enumerate(table.column("item").to_pylist())}
    table = table.take(pa.array([position[int(i)] for i in kept]))
    write_parquet_atomic(table.set_column(table.column_names.index("item"), "item",
                                          pa.array(np.arange(1, len(kept) + 1, dtype=np.int32))),
                         dst / "items.parquet")
    users = set(subset.user.tolist())
    (dst / "eval").mkdir()
    out_counts = {"samples": len(subset), "items": len(kept)}
    for split in ("valid", "test"):
        e = src.eval_split(split)
        picked = [(u, keep(h), keep(t)) for u, h, t in zip(e.user, e.history, e.targets) if u in users]
        picked = [p for p in picked if len(p[2])]
        write_parquet_atomic(EvalSplit(np.array([p[0] for p in picked], dtype=np.int64), [p[1] for p in picked],
                                       [p[2] for p in picked]).to_table(), dst / "eval" / f"{split}.parquet")
        out_counts[f"{split}_users"] = len(picked)
    return out_counts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="A prepared data folder.")
    ap.add_argument("--out", required=True, help="The new prepared folder (must not exist).")
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=8000)
    ap.add_argument("--category", default=None,
                    help="Keep only the items whose categories hold this name exactly (before --items).")
    args = ap.parse_args(argv)
    try:
        counts = cut(args.data, args.out, args.items, args.samples, args.category)
    except DealrecError as e:
        sys.exit(f"dense_subset: {e}")
    print(f"valid: {counts['valid_users']:,} users")
    print(f"test: {counts['test_users']:,} users")
    print(f"{args.out}: {counts['samples']:,} samples, {counts['items']:,} items")


if __name__ == "__main__":
    main()
