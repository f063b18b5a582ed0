"""An interaction log prepared out of core: read and checked chunk by chunk into a staging file
(``stream``), then filtered (minimum rating, iterative k-core), split by global timestamp and renumbered
in DuckDB, which spills to disk beside the output rather than hold the log in memory, and written from a
stream of rows sorted by user (``write``'s piece-by-piece writers). Memory holds chunks, the item
catalogue and DuckDB's working set (``DUCKDB_MEMORY``), never the log.

The result is the in-memory definition's (docs/data.md), byte for byte: rows are kept in file order
(``pos``), the time sort breaks ties by file order, users and items are numbered by first appearance
in time.
"""
from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import duckdb
import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from dealrec_core.data import EVAL_SCHEMA, SAMPLES_SCHEMA, atomic_output_dir, write_json_atomic, write_parquet_atomic
from dealrec_core.errors import DealrecError, InputError
from dealrec_core.paths import temp_prefix
from dealrec.prepare.common import INT32_MAX, PROGRESS_MIN_ROWS, PrepareOptions
from dealrec.prepare.log import _log_kind, read_item_catalogue
from dealrec.prepare.stream import StagedLog, stage_log
from dealrec.prepare.write import SampleShards, folder_counts, manifest_for, row_groups, share_folder

# DuckDB's memory for the sorts, joins and groupings (it spills the rest to WORK/duckdb.tmp).
DUCKDB_MEMORY = "1GB"
# Rows fetched from DuckDB at a time (sorted by user, to build the sequences; counts).
FETCH_ROWS = 1 << 20
# Ranges of time that the rows are first counted in, to find the rows at the split's cuts.
TIME_BUCKETS = 1 << 20


@contextlib.contextmanager
def work_folder(out: Path):
    """A temporary folder beside ``out`` (on its disk, which has room for the output) for the staging
    file and DuckDB's database and spill files; removed at the end, with any parent folder made for
    it when the run fails."""
    made = []
    parent = out.parent
    while not parent.exists():
        made.append(parent)
        parent = parent.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=temp_prefix(out), suffix="-work", dir=out.parent))
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        for folder in made:     # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def prepare_log(path: Path, out: Path, options: PrepareOptions, overwrite: bool) -> dict:
    """Prepare the interaction log ``path`` into ``out``; return the manifest."""
    with work_folder(out) as work:
        staged = stage_log(path, work)
        con = duckdb.connect(str(work / "prepare.duckdb"))
        try:
            con.execute(f"SET memory_limit = '{DUCKDB_MEMORY}'")
            con.execute(f"SET temp_directory = {_text(work / 'duckdb.tmp')}")
            con.execute("SET preserve_insertion_order = false")
            con.execute("SET enable_progress_bar = false")
            return _prepare(con, staged, out, options, overwrite)
        finally:
            con.close()


def _text(path: Path) -> str:
    """A path as an SQL string literal (a quote in a folder name is doubled)."""
    return "'" + str(path).replace("'", "''") + "'"


def _one(con, sql: str, params: list | None = None) -> tuple:
    """The one row of a query."""
    return con.execute(sql, params).fetchall()[0]


def _count(con, table: str) -> int:
    return _one(con, f"SELECT count(*) FROM {table}")[0]


def _prepare(con, staged: StagedLog, out: Path, options: PrepareOptions, overwrite: bool) -> dict:
    path = staged.path
    stages = tqdm(total=5, desc=f"prepare {path.name}", leave=False, disable=staged.rows < PROGRESS_MIN_ROWS,
                  bar_format="{desc}(step {n}/{total} done, {elapsed})")
    stages.set_description(f"prepare {path.name}: filtering")
    counts: dict = {"log_rows": staged.rows}
    con.execute(f"CREATE VIEW log AS SELECT * FROM read_parquet({_text(staged.file)})")
    if options.min_rating is not None:
        if not staged.has_rating:
            raise InputError(path, "--min-rating needs a 'rating' column", field="rating")
        con.execute(f"CREATE TABLE f AS SELECT pos, u, i, {staged.ts} AS ts FROM log WHERE rating >= ?",
                    [float(options.min_rating)])
        counts["rows_after_min_rating"] = _count(con, "f")
    else:
        con.execute(f"CREATE TABLE f AS SELECT pos, u, i, {staged.ts} AS ts FROM log")
    n, rounds = _k_core(con, options.min_user_count, options.min_item_count)
    counts["rows_after_k_core"] = n
    counts["k_core_rounds"] = rounds
    if not n:
        raise DealrecError(f"{path}: no interactions left after filtering (min rating {options.min_rating}, "
                           f"min user count {options.min_user_count}, min item count {options.min_item_count})")

    # The paper's split: all interactions in time order, cut at the 80% and 90% positions; ties in
    # file order, so the result is deterministic. Rather than number every row in time order, find
    # the rows at the two cuts (``_rows_at``): a row is before a cut if (ts, pos) is smaller.
    stages.update()
    stages.set_description(f"prepare {path.name}: splitting by time")
    cut_train = int(math.floor(n * options.split[0] + 1e-9))
    cut_valid = int(math.floor(n * (options.split[0] + options.split[1]) + 1e-9))
    (train, tp), (valid, vp) = (_before(row) for row in _rows_at(con, [cut_train, cut_valid], n))
    # Users with nothing in the training period have no sample: drop them from every split.
    con.execute(f"CREATE TABLE tu AS SELECT DISTINCT u FROM f WHERE {train}", tp)
    users, *dropped = _one(
        con, f"SELECT count(DISTINCT u), count(*) FILTER ({train}), count(*) FILTER (NOT ({train}) AND {valid}), "
             f"count(*) FILTER (NOT ({valid})) FROM f ANTI JOIN tu USING (u)", [*tp, *tp, *vp, *vp])
    counts["users_dropped_without_training"] = int(users)
    counts["interactions_dropped_without_training"] = {name: int(c or 0) for name, c in
                                                       zip(("train", "valid", "test"), dropped)}
    con.execute(f"CREATE TABLE k AS SELECT u, i, ts, pos, CASE WHEN {train} THEN 0 WHEN {valid} THEN 1 ELSE 2 END "
                f"AS period FROM f SEMI JOIN tu USING (u)", [*tp, *vp])
    if not _count(con, "k"):
        raise DealrecError(f"{path}: no user has an interaction in the training period")
    con.execute("DROP TABLE f")      # its blocks go back to the database file for what follows
    con.execute("DROP TABLE tu")

    # Dense ids in order of first appearance in time; 0 stays free for padding.
    stages.update()
    stages.set_description(f"prepare {path.name}: building sequences")
    for ids, key in (("um", "u"), ("im", "i")):
        con.execute(f"CREATE TABLE {ids} AS SELECT {key}, row_number() OVER (ORDER BY first) AS id "
                    f"FROM (SELECT {key}, min({{'t': ts, 'p': pos}}) AS first FROM k GROUP BY {key})")
    n_users, n_items = _count(con, "um"), _count(con, "im")
    if n_items > INT32_MAX:
        raise DealrecError(f"{path}: {n_items} items do not fit int32 item ids")
    item_source = _ids(con.sql("SELECT i FROM im ORDER BY id").to_arrow_table().column(0).combine_chunks())

    stages.update()
    stages.set_description(f"prepare {path.name}: item catalogue")
    notes: list = []

    def unknown_item(ids: pa.Array):
        """The first kept row (in file order) whose item the catalogue lacks."""
        con.register("unknown_items", pa.table({"i": ids}))
        pos, item = _one(con, "SELECT pos, i FROM k SEMI JOIN unknown_items USING (i) ORDER BY pos LIMIT 1")
        line = _one(con, f"SELECT line FROM log WHERE pos = {int(pos)}")[0] if staged.lines else None
        return item, staged.path, staged.where(pos, line)

    items = items_table(item_source, options, counts, notes, unknown_item)

    stages.update()
    stages.set_description(f"prepare {path.name}: writing")
    sources = [path] + ([Path(options.items_file)] if options.items_file else [])
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        written = _write_sequences(con, tmp, options.shard_size)
        write_parquet_atomic(items, tmp / "items.parquet")
        user_type = _ids(con.sql("SELECT u FROM um LIMIT 0").to_arrow_table().column(0).combine_chunks()).type
        schema = pa.schema([("user", pa.int64()), ("source_id", user_type)])
        with row_groups(tmp / "users.parquet", schema) as users:
            for batch in con.sql("SELECT id, u FROM um ORDER BY id").to_arrow_reader(FETCH_ROWS):
                users.add(pa.table({"user": batch.column(0), "source_id": _ids(batch.column(1))}))
        counts = folder_counts(n_users, items, written["empty_histories"], written["interactions"],
                               written["eval_users"], counts, notes)
        manifest = manifest_for(f"log-{_log_kind(path)}", sources, options, counts, notes)
        write_json_atomic(tmp / "manifest.json", manifest)
        share_folder(tmp)
    stages.update()
    stages.close()
    return manifest


def _walk(con, sql: str, params: list, indices: list[int]) -> list[tuple]:
    """``sql`` counts rows by a key, in key order ``(key, count)``; for each of ``indices`` (ascending)
    into those rows, the key whose rows hold it and its index among them (fewer where past the end).
    The counts are streamed: memory holds a batch of them."""
    found: list = []
    seen = 0
    reader = con.sql(sql, params=params).to_arrow_reader(FETCH_ROWS)
    try:
        for batch in reader:
            counts = batch.column(1).to_numpy()
            ends = seen + np.cumsum(counts)
            while len(found) < len(indices):
                index = indices[len(found)]
                j = int(np.searchsorted(ends, index, "right"))
                if j == len(ends):
                    break
                found.append((batch.column(0)[j].as_py(), index - int(ends[j] - counts[j])))
            if len(found) == len(indices):
                break
            seen = int(ends[-1])
    finally:
        reader.close()
    return found


def _rows_at(con, indices: list[int], n: int) -> list[tuple | None]:
    """(ts, pos) of the rows ``indices`` (from 0, ascending) of table f in (ts, pos) order; None past the
    end. Found by counting, never by sorting the table: the rows by ranges of time (``TIME_BUCKETS`` of
    them), then the rows of the range that holds the wanted one by timestamp, then the rows at that
    timestamp by blocks of ``pos``, then the block's rows; each query holds a bounded number of rows."""
    lo, hi = _one(con, "SELECT min(ts), max(ts) FROM f")
    if isinstance(lo, int):     # integers: buckets of a whole width, in exact (128-bit) arithmetic
        width = max(1, -(-(hi - lo + 1) // TIME_BUCKETS))
        bucket, bucket_params = "(ts::HUGEINT - ?::HUGEINT) // ?", [lo, width]
    elif math.isfinite((hi - lo) / TIME_BUCKETS) and hi > lo:
        bucket, bucket_params = "floor((ts - ?) / ?)", [lo, (hi - lo) / TIME_BUCKETS]
    else:
        bucket, bucket_params = "ts", []
    rows = []
    wanted = [k for k in indices if k < n]
    for b, index in _walk(con, f"SELECT {bucket} AS b, count(*) FROM f GROUP BY b ORDER BY b", bucket_params, wanted):
        (ts, index), = _walk(con, f"SELECT ts, count(*) FROM f WHERE {bucket} = ? GROUP BY ts ORDER BY ts",
                             [*bucket_params, b], [index])
        (block, index), = _walk(con, f"SELECT pos // {FETCH_ROWS} AS b, count(*) FROM f WHERE ts = ? GROUP BY b "
                                     f"ORDER BY b", [ts], [index])
        rows.append((ts, _one(con, f"SELECT pos FROM f WHERE ts = ? AND pos // {FETCH_ROWS} = ? ORDER BY pos "
                                   f"LIMIT 1 OFFSET {int(index)}", [ts, block])[0]))
    return rows + [None] * (len(indices) - len(rows))


def _before(row: tuple | None) -> tuple[str, list]:
    """A condition on (ts, pos) true for the rows before ``row`` in time order (all rows for None), with
    its parameters."""
    if row is None:
        return "TRUE", []
    return "(ts < ? OR (ts = ? AND pos < ?))", [row[0], row[0], row[1]]


def _ids(arr: pa.Array) -> pa.Array:
    """Ids as the log had them: int64, or text as ``string`` (DuckDB may hand back another text type)."""
    return arr if pa.types.is_integer(arr.type) else arr.cast(pa.string())


def _k_core(con, min_user: int, min_item: int) -> tuple[int, int]:
    """Drop rows of rare users and items until every user and item left meets its minimum: (rows left,
    rounds that dropped something)."""
    n = _count(con, "f")
    rounds = 0
    if min_user <= 1 and min_item <= 1:
        return n, rounds
    while n:
        con.execute(f"""CREATE TABLE g AS
            WITH su AS (SELECT u FROM f GROUP BY u HAVING count(*) < {int(min_user)}),
                 si AS (SELECT i FROM f GROUP BY i HAVING count(*) < {int(min_item)})
            SELECT * FROM f ANTI JOIN su USING (u) ANTI JOIN si USING (i)""")
        left = _count(con, "g")
        if left == n:
            con.execute("DROP TABLE g")
            break
        con.execute("DROP TABLE f")
        con.execute("ALTER TABLE g RENAME TO f")
        n, rounds = left, rounds + 1
    return n, rounds


def items_table(item_source: pa.Array, options: PrepareOptions, counts: dict, notes: list,
                unknown_item: Callable[[pa.Array], tuple[object, Path, dict]]) -> pa.Table:
    """The items table: ids 1..n for ``item_source`` (the log's ids, in the new ids' order), their titles
    and other text from ``--items`` (``unknown_item``: see ``log.read_item_catalogue``), else the ids
    as text."""
    n_items = len(item_source)
    items = {"item": pa.array(np.arange(1, n_items + 1, dtype=np.int32))}
    if options.items_file:
        extra, unused = read_item_catalogue(Path(options.items_file), item_source, unknown_item)
        counts["catalogue_items_unused"] = unused
        items["title"] = extra.column("title")
        items["categories"] = (extra.column("categories") if "categories" in extra.column_names
                               else pa.array([[]] * n_items, pa.list_(pa.string())))
        items["source_id"] = item_source
        for name in extra.column_names:
            if name not in ("title", "categories"):
                items[name] = extra.column(name)
    else:
        items["title"] = item_source.cast(pa.string())
        items["categories"] = pa.array([[]] * n_items, pa.list_(pa.string()))
        items["source_id"] = item_source
        notes.append("no --items file: each item's title is its original id as text")
    return pa.table(items)


def _write_sequences(con, tmp: Path, shard_size: int) -> dict:
    """The samples shards and the evaluation splits, from the kept rows sorted by (user, time)."""
    totals = {"empty_histories": 0, "interactions": {"train": 0, "valid": 0, "test": 0},
              "eval_users": {"valid": 0, "test": 0}}
    rows = con.sql("SELECT um.id AS uid, im.id AS iid, k.period FROM k JOIN um USING (u) JOIN im USING (i) "
                   "ORDER BY uid, k.ts, k.pos").to_arrow_reader(FETCH_ROWS)
    shards = SampleShards(tmp / "samples", shard_size)
    (tmp / "eval").mkdir()
    with row_groups(tmp / "eval" / "valid.parquet", EVAL_SCHEMA) as valid, \
            row_groups(tmp / "eval" / "test.parquet", EVAL_SCHEMA) as test:
        for uid, iid, period in _whole_users(rows):
            samples, splits, n = _sequences(uid, iid, period)
            shards.add(samples)
            valid.add(splits["valid"])
            test.add(splits["test"])
            totals["empty_histories"] += int(np.sum(n[0] == 1))
            for p, name in enumerate(("train", "valid", "test")):
                totals["interactions"][name] += int(n[p].sum())
            for name in ("valid", "test"):
                totals["eval_users"][name] += splits[name].num_rows
    shards.close()
    return totals


def _whole_users(reader):
    """(uid, iid, period) arrays from batches of rows sorted by user, each holding whole users: a batch's
    last user waits for the next batch, which may go on with it."""
    held = None
    for batch in reader:
        arrays = [batch.column(k).to_numpy(zero_copy_only=False).astype(np.int64) for k in range(3)]
        if held is not None:
            arrays = [np.concatenate([a, b]) for a, b in zip(held, arrays)]
        uid = arrays[0]
        if not len(uid):
            continue
        cut = int(np.searchsorted(uid, uid[-1], "left"))
        held = [a[cut:] for a in arrays]
        if cut:
            yield tuple(a[:cut] for a in arrays)
    if held is not None and len(held[0]):
        yield tuple(held)


def _lists(values: np.ndarray, lengths: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(np.int32)))


def _sequences(uid: np.ndarray, iid: np.ndarray, period: np.ndarray):
    """Whole users' rows in (user, time) order -> the samples, the validation and test splits, and the
    interactions per user and period (``n[p]``)."""
    starts = np.flatnonzero(np.r_[True, uid[1:] != uid[:-1]])
    users = uid[starts]
    seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(uid)]))
    n = [np.bincount(seg, weights=(period == p), minlength=len(starts)).astype(np.int64) for p in range(3)]
    # One sample per user: the training sequence (the user's first rows), its last item the target.
    last = starts + n[0] - 1
    history = (period == 0)
    history[last] = False
    samples = pa.table({"sample_id": pa.array(users - 1), "user": pa.array(users),
                        "history": _lists(iid[history], n[0] - 1),
                        "target": pa.array(iid[last].astype(np.int32))}, schema=SAMPLES_SCHEMA)
    splits = {}
    for p, name in ((1, "valid"), (2, "test")):
        has = n[p] > 0
        mine = has[seg]
        # the validation history is the training sequence; the test history training + validation
        before = mine & (period < p)
        splits[name] = pa.table({"user": pa.array(users[has]),
                                 "history": _lists(iid[before], (n[0] + (n[1] if p == 2 else 0))[has]),
                                 "targets": _lists(iid[mine & (period == p)], n[p][has])}, schema=EVAL_SCHEMA)
    return samples, splits, n
