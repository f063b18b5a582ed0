"""Writing a ``PreparedInMemory`` as a prepared folder (layout in ``dealrec_core.data``): samples
shards, item catalogue, evaluation splits, users (logs) and the manifest, built under a temporary
name and renamed into place when complete."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dealrec_core import __version__
from dealrec_core.data import (EvalSplit, atomic_output_dir, samples_table, sha256_file, write_json_atomic,
                               write_parquet_atomic, write_samples)
from dealrec.prepare.common import PreparedInMemory, PrepareOptions


def _count_duplicate_titles(titles: list[str]) -> tuple[int, int]:
    """(items whose title another item shares, distinct titles that are shared)."""
    counts = Counter(titles)
    shared = {t: c for t, c in counts.items() if c > 1}
    return sum(shared.values()), len(shared)


def write_prepared(p: PreparedInMemory, out: Path, fmt: str, options: PrepareOptions, overwrite: bool) -> dict:
    n_users = len(p.users)
    histories = [seq[:-1] for seq in p.train]
    targets = np.array([seq[-1] for seq in p.train], np.int32)
    samples = samples_table(np.arange(n_users, dtype=np.int64), p.users, histories, targets)

    splits = {}
    for name, seqs in (("valid", p.valid), ("test", p.test)):
        idx = [i for i, s in enumerate(seqs) if len(s)]
        if name == "valid":
            hist = [p.train[i] for i in idx]
        else:   # the test history is everything before the test period: training + validation
            hist = [np.concatenate([p.train[i], p.valid[i]]).astype(np.int32) for i in idx]
        splits[name] = EvalSplit(p.users[idx] if idx else np.zeros(0, np.int64), hist, [seqs[i] for i in idx])

    titles = p.items.column("title").to_pylist()
    dup_items, dup_titles = _count_duplicate_titles(titles)
    item_ids = p.items.column("item").to_numpy()
    counts = {
        "users": n_users,
        "items": p.items.num_rows,
        "n_items": int(item_ids.max()) if len(item_ids) else 0,
        "samples": n_users,
        "samples_with_empty_history": int(sum(len(h) == 0 for h in histories)),
        "interactions": {"train": int(sum(len(s) for s in p.train)),
                         "valid": int(sum(len(s) for s in p.valid)),
                         "test": int(sum(len(s) for s in p.test))},
        "eval_users": {name: len(split) for name, split in splits.items()},
        "items_with_shared_title": dup_items,
        "shared_titles": dup_titles,
        **p.counts,
    }
    if counts["n_items"] != counts["items"]:
        p.notes.append(f"item ids are not contiguous: {counts['items']} items with ids up to "
                       f"{counts['n_items']}; models size their tables n_items + 1")
    manifest = {
        "dealrec_version": __version__,
        "format": fmt,
        "sources": [{"file": s.name, "path": str(s.resolve()), "bytes": s.stat().st_size,
                     "sha256": sha256_file(s)} for s in p.sources],
        "options": ({"shard_size": options.shard_size} if fmt == "release"
                    else {**asdict(options), "split": list(options.split)}),
        "counts": counts,
        "notes": p.notes,
    }
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        write_samples(samples, tmp / "samples", shard_size=options.shard_size)
        write_parquet_atomic(p.items, tmp / "items.parquet")
        (tmp / "eval").mkdir()
        for name, split in splits.items():
            write_parquet_atomic(split.to_table(), tmp / "eval" / f"{name}.parquet")
        if p.user_table is not None:
            write_parquet_atomic(p.user_table, tmp / "users.parquet")
        write_json_atomic(tmp / "manifest.json", manifest)
        # mkdtemp makes the folder private; the prepared data is meant to be shared like any output.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
    return manifest
