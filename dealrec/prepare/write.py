"""Writing a prepared folder (layout in ``dealrec_core.data``): samples shards, item catalogue,
evaluation splits, users (logs) and the manifest, built under a temporary name and renamed into
place when complete. ``write_prepared`` writes a ``PreparedInMemory`` (a release); a log's folder is
written piece by piece (``SampleShards``, ``RowGroups``) with the same bytes, and both share the
counts and the manifest."""
from __future__ import annotations

import contextlib
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dealrec_core import __version__
from dealrec_core.data import (SAMPLES_SCHEMA, EvalSplit, atomic_file, atomic_output_dir, samples_table, sha256_file,
                               write_json_atomic, write_parquet_atomic, write_samples)
from dealrec.prepare.common import PreparedInMemory, PrepareOptions

# The rows of a row group that pq.write_table writes (its default): a file written in pieces of this
# many rows has the bytes of one written at once.
ROW_GROUP_ROWS = 1024 * 1024


def _count_duplicate_titles(titles: pa.Array) -> tuple[int, int]:
    """(items whose title another item shares, distinct titles that are shared)."""
    counts = pc.value_counts(titles).field("counts").to_numpy()
    shared = counts[counts > 1]
    return int(shared.sum()), len(shared)


def folder_counts(n_users: int, items: pa.Table, empty_histories: int, interactions: dict, eval_users: dict,
                  extra: dict, notes: list) -> dict:
    """The manifest's counts (``extra``: the reader's own); a note where item ids have gaps."""
    dup_items, dup_titles = _count_duplicate_titles(items.column("title").combine_chunks())
    item_ids = items.column("item").to_numpy()
    counts = {
        "users": n_users,
        "items": items.num_rows,
        "n_items": int(item_ids.max()) if len(item_ids) else 0,
        "samples": n_users,
        "samples_with_empty_history": empty_histories,
        "interactions": interactions,
        "eval_users": eval_users,
        "items_with_shared_title": dup_items,
        "shared_titles": dup_titles,
        **extra,
    }
    if counts["n_items"] != counts["items"]:
        notes.append(f"item ids are not contiguous: {counts['items']} items with ids up to "
                     f"{counts['n_items']}; models size their tables n_items + 1")
    return counts


def manifest_for(fmt: str, sources: list[Path], options: PrepareOptions, counts: dict, notes: list) -> dict:
    return {
        "dealrec_version": __version__,
        "format": fmt,
        "sources": [{"file": s.name, "path": str(s.resolve()), "bytes": s.stat().st_size,
                     "sha256": sha256_file(s)} for s in sources],
        "options": ({"shard_size": options.shard_size} if fmt == "release"
                    else {**asdict(options), "split": list(options.split)}),
        "counts": counts,
        "notes": notes,
    }


def share_folder(tmp: Path) -> None:
    """mkdtemp makes the folder private; the prepared data is meant to be shared like any output."""
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)


class _Rows:
    """Tables appended in pieces, taken off the front in single-chunk tables of a given number of rows."""

    def __init__(self):
        self.tables: list[pa.Table] = []
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.tables.append(table)
            self.rows += table.num_rows

    def take(self, n: int) -> pa.Table:
        table = pa.concat_tables(self.tables).combine_chunks()
        head, rest = table.slice(0, n), table.slice(n)
        self.tables, self.rows = ([rest] if rest.num_rows else []), rest.num_rows
        return head


class SampleShards(_Rows):
    """Samples appended in user order, written as ``write_samples`` writes the whole table: a shard
    ``part-NNNNN.parquet`` every ``shard_size`` rows (at least one)."""

    def __init__(self, folder: Path, shard_size: int):
        super().__init__()
        self.folder, self.shard_size, self.shards = folder, shard_size, 0
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, table: pa.Table) -> None:
        super().add(table)
        while self.rows >= self.shard_size:
            self._write(self.take(self.shard_size))

    def _write(self, table: pa.Table) -> None:
        write_parquet_atomic(table.cast(SAMPLES_SCHEMA), self.folder / f"part-{self.shards:05d}.parquet")
        self.shards += 1

    def close(self) -> None:
        if self.rows or not self.shards:
            self._write(self.take(self.rows) if self.rows else SAMPLES_SCHEMA.empty_table())


class RowGroups(_Rows):
    """Rows appended in pieces to one Parquet file, in row groups of ``ROW_GROUP_ROWS``: the bytes of
    ``pq.write_table`` of all of them at once."""

    def __init__(self, writer: pq.ParquetWriter, schema: pa.Schema):
        super().__init__()
        self.writer, self.schema, self.written = writer, schema, False

    def add(self, table: pa.Table) -> None:
        super().add(table)
        while self.rows >= ROW_GROUP_ROWS:
            self._write(self.take(ROW_GROUP_ROWS))

    def _write(self, table: pa.Table) -> None:
        self.writer.write_table(table.cast(self.schema))
        self.written = True

    def close(self) -> None:
        if self.rows or not self.written:
            self._write(self.take(self.rows) if self.rows else self.schema.empty_table())


@contextlib.contextmanager
def row_groups(path: Path, schema: pa.Schema):
    """A ``RowGroups`` writing ``path`` (under a temporary name until the block ends)."""
    with atomic_file(path) as tmp:
        writer = pq.ParquetWriter(tmp, schema)
        try:
            rows = RowGroups(writer, schema)
            yield rows
            rows.close()
        finally:
            writer.close()


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

    counts = folder_counts(n_users, p.items, int(sum(len(h) == 0 for h in histories)),
                           {"train": int(sum(len(s) for s in p.train)),
                            "valid": int(sum(len(s) for s in p.valid)),
                            "test": int(sum(len(s) for s in p.test))},
                           {name: len(split) for name, split in splits.items()}, p.counts, p.notes)
    manifest = manifest_for(fmt, p.sources, options, counts, p.notes)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        write_samples(samples, tmp / "samples", shard_size=options.shard_size)
        write_parquet_atomic(p.items, tmp / "items.parquet")
        (tmp / "eval").mkdir()
        for name, split in splits.items():
            write_parquet_atomic(split.to_table(), tmp / "eval" / f"{name}.parquet")
        if p.user_table is not None:
            write_parquet_atomic(p.user_table, tmp / "users.parquet")
        write_json_atomic(tmp / "manifest.json", manifest)
        share_folder(tmp)
    return manifest
