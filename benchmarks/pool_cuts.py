"""Several prepared folders as one log, each kept apart: its items and users get ids of their own (offset per
folder), so every history is exactly what it was in its folder. What it is for: a log of the same kind as small
cuts (e.g. the platform sub-domains of ``benchmarks/dense_subset.py --category``, whose histories are short) but
with enough evaluation users to tell two training sets apart (docs/selection.md, "Decided or not").

    python benchmarks/pool_cuts.py --out runs/pool runs/cut-a runs/cut-b ...

Prints each folder's share and the pool's counts (samples, items, validation and test users, empty histories).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from dealrec_core.data import EvalSplit, PreparedData, Samples, atomic_output_dir, write_parquet_atomic, write_samples
from dealrec_core.errors import DealrecError


def pool(folders: list[str | Path], out: str | Path) -> dict:
    """Write the pool of ``folders`` to ``out`` (which must not exist); return its counts."""
    if Path(out).exists():
        raise DealrecError(f"{out}: already exists")
    if len(folders) < 2:
        raise DealrecError("give at least two prepared folders to pool")
    sources = [PreparedData(f) for f in folders]
    item_offset = user_offset = sample_offset = 0
    sample_id, user, history, target, items = [], [], [], [], []
    splits = {"valid": ([], [], []), "test": ([], [], [])}
    for src in sources:
        s = src.samples()
        users = np.asarray(s.user, dtype=np.int64)
        ids = np.unique(np.concatenate([users] + [src.eval_split(n).user for n in splits]))
        new_user = {int(u): user_offset + i for i, u in enumerate(ids)}
        sample_id.append(np.asarray(s.sample_id, dtype=np.int64) - int(np.min(s.sample_id)) + sample_offset)
        user.append(np.array([new_user[int(u)] for u in users], dtype=np.int64))
        history += [np.asarray(h, dtype=np.int32) + item_offset for h in s.history]
        target.append(np.asarray(s.target, dtype=np.int32) + item_offset)
        for name, (u, h, t) in splits.items():
            e = src.eval_split(name)
            u += [new_user[int(x)] for x in e.user]
            h += [np.asarray(x, dtype=np.int32) + item_offset for x in e.history]
            t += [np.asarray(x, dtype=np.int32) + item_offset for x in e.targets]
        table = src.items
        items.append(table.set_column(table.column_names.index("item"), "item",
                                      pa.array(np.asarray(table.column("item").to_numpy(), dtype=np.int32)
                                               + item_offset)))
        item_offset += src.n_items
        user_offset += len(ids)
        sample_offset = int(sample_id[-1].max()) + 1
    columns = items[0].column_names
    for f, t in zip(folders, items):
        if t.column_names != columns:
            raise DealrecError(f"{f}/items.parquet: columns {t.column_names}, the first folder's are {columns}")
    samples = Samples(np.concatenate(sample_id), np.concatenate(user), history, np.concatenate(target))
    with atomic_output_dir(out) as dst:
        write_samples(samples.to_table(), dst / "samples")
        write_parquet_atomic(pa.concat_tables(items), dst / "items.parquet")
        (dst / "eval").mkdir()
        for name, (u, h, t) in splits.items():
            write_parquet_atomic(EvalSplit(np.array(u, dtype=np.int64), h, t).to_table(), dst / "eval" / f"{name}.parquet")
    lengths = np.array([len(h) for h in history])
    return {"samples": len(samples), "items": item_offset, "valid_users": len(splits["valid"][0]),
            "test_users": len(splits["test"][0]), "empty_history_share": float((lengths == 0).mean()),
            "mean_history_length": float(lengths.mean())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="Prepared data folders (at least two).")
    ap.add_argument("--out", required=True, help="The pooled prepared folder (must not exist).")
    args = ap.parse_args(argv)
    try:
        counts = pool(args.folders, args.out)
    except DealrecError as e:
        sys.exit(f"pool_cuts: {e}")
    print(f"{args.out}: {counts['samples']:,} samples, {counts['items']:,} items, valid {counts['valid_users']:,} "
          f"users, test {counts['test_users']:,} users; empty histories {counts['empty_history_share']:.1%}, mean "
          f"history {counts['mean_history_length']:.2f}")


if __name__ == "__main__":
    main()
