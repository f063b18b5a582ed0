"""Interaction logs: one Parquet, CSV or JSONL file with columns ``user``, ``item``, ``timestamp`` and
optionally ``rating`` (and an optional item catalogue), filtered (minimum rating, iterative k-core)
and split 8:1:1 by global timestamp, as in the paper, into a ``PreparedInMemory``. A bad value is
an ``InputError`` naming the file, the row (Parquet, CSV) or line (JSONL) and the field."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from dealrec_core.errors import DealrecError, InputError
from dealrec.prepare.common import (INT32_MAX, INT64_MAX, PROGRESS_MIN_ROWS, PreparedInMemory, PrepareOptions,
                                    _json_objects)

LOG_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv",
                ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
ID_COLUMNS = ("user", "item")


def _log_kind(path: Path) -> str:
    kind = LOG_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InputError(path, f"unknown file type {path.suffix!r}: an interaction log is a .parquet, "
                               f".csv or .jsonl file, or a release folder")
    return kind


Locate = Callable[[int], dict]


def _row_locator(i: int) -> dict:
    return {"row": i + 1}


def _line_locator(lines: np.ndarray) -> Locate:
    return lambda i: {"line": int(lines[i])}


def _first(mask) -> int:
    return int(np.flatnonzero(np.asarray(mask))[0])


def read_any_table(path: Path, what: str, wanted: tuple[str, ...] | None = None) -> tuple[pa.Table, Locate]:
    """Read a Parquet, CSV or JSONL file into Arrow, with a function mapping row index -> location.

    Parquet and CSV rows are located by ``row`` (1 = the first data row, CSV header not counted),
    JSONL rows by ``line``. ``wanted`` restricts a JSONL read to those keys (logs can be large).
    """
    kind = _log_kind(path)
    if path.stat().st_size == 0:
        raise InputError(path, f"empty file (no {what})")
    if kind == "parquet":
        try:
            table = pq.read_table(path)
        except Exception as e:   # pyarrow raises several types for a damaged file
            raise InputError(path, f"not a readable Parquet file: {str(e).splitlines()[0]}") from None
        locate: Locate = _row_locator
    elif kind == "csv":
        # Ids are text unless the file says otherwise: type inference would read "007" as 7 (so 007 and 7
        # became one user, and a leading-zero item no longer matched its items file). Parquet keeps its types.
        ids_as_text = pacsv.ConvertOptions(column_types={name: pa.string() for name in ID_COLUMNS})
        try:
            table = pacsv.read_csv(path, convert_options=ids_as_text)
        except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as e:
            raise InputError(path, f"not a readable CSV file: {str(e).splitlines()[0]}") from None
        locate = _row_locator
    else:
        table, locate = _read_jsonl(path, what, wanted)
    if table.num_rows == 0:
        raise InputError(path, f"no rows (no {what})")
    return table, locate


def _read_jsonl(path: Path, what: str, wanted: tuple[str, ...] | None) -> tuple[pa.Table, Locate]:
    """JSONL parsed line by line so that every error can name its line.

    Values stay Python objects in one column per key; the column checks below give them types.
    """
    columns: dict[str, list] = {}
    lines: list[int] = []
    for n, obj in _json_objects(path, desc=f"read {path.name}"):
        row = len(lines)
        lines.append(n)
        for key, value in obj.items():
            if wanted is not None and key not in wanted:
                continue
            col = columns.get(key)
            if col is None:
                col = columns[key] = [None] * row   # a key first seen late: earlier rows lack it
            col.append(value)
        for col in columns.values():
            if len(col) == row:
                col.append(None)
    if not lines:
        raise InputError(path, f"empty file (no {what})")
    locate = _line_locator(np.asarray(lines))
    arrays = {key: _python_to_arrow(values, key, path, locate) for key, values in columns.items()}
    return pa.table(arrays) if arrays else pa.table({"_": pa.nulls(len(lines))}).drop(["_"]), locate


def _json_kind(v) -> str:
    return ("boolean" if isinstance(v, bool) else "list" if isinstance(v, list) else
            "object" if isinstance(v, dict) else type(v).__name__)


def _python_to_arrow(values: list, key: str, path: Path, locate: Locate) -> pa.Array:
    """One JSONL column: ints, floats, strings or lists of strings; other values become JSON text."""
    kinds = set()
    for i, v in enumerate(values):
        if v is None:
            continue
        if key in ID_COLUMNS and not (isinstance(v, (int, float, str)) and not isinstance(v, bool)):
            # true/false, lists and objects are no ids (true would become the user "true")
            shown = json.dumps(v, ensure_ascii=True)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise InputError(path, f"{key} id {shown} is a JSON {_json_kind(v)}: ids are integers or strings",
                             field=key, **locate(i))
        if isinstance(v, bool):
            kinds.add("bool")
        elif isinstance(v, int):
            kinds.add("int")
        elif isinstance(v, float):
            kinds.add("float")
        elif isinstance(v, str):
            kinds.add("str")
        elif isinstance(v, list) and all(isinstance(x, str) for x in v):
            kinds.add("strlist")
        else:
            kinds.add("other")
    if kinds <= {"int"}:
        if any(v is not None and abs(v) > INT64_MAX for v in values):
            i = next(i for i, v in enumerate(values) if v is not None and abs(v) > INT64_MAX)
            raise InputError(path, f"{key} {values[i]} does not fit in 64 bits", field=key, **locate(i))
        return pa.array(values, pa.int64())
    if kinds <= {"int", "float"}:
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if kinds <= {"str"}:
        return pa.array(values, pa.string())
    if kinds <= {"strlist"}:
        return pa.array(values, pa.list_(pa.string()))
    if key in ID_COLUMNS:   # only int, float and str get here: strings and numbers mixed
        # Mixed id types are ambiguous (is 7 the same user as "7"?): refuse, naming the first odd one.
        first_is_text = isinstance(next(v for v in values if v is not None), str)
        i = next(i for i, v in enumerate(values) if v is not None and isinstance(v, str) != first_is_text)
        raise InputError(path, f"{key} ids mix numbers and strings ({values[i]!r} here, "
                               f"{'str' if first_is_text else 'number'} before)", field=key, **locate(i))
    # Anything else: keep numbers as numbers where they are, text otherwise; the column checks
    # give precise errors for the columns that must be numeric.
    return pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                     for v in values], pa.string())


def _require_columns(table: pa.Table, path: Path, required: tuple[str, ...], what: str) -> None:
    for name in required:
        if name not in table.column_names:
            raise InputError(path, f"missing column '{name}' ({what} need {', '.join(required)}; "
                                   f"has: {', '.join(table.column_names) or 'none'})", field=name)


def _id_column(arr: pa.Array, name: str, path: Path, locate: Locate) -> pa.Array:
    """User or item ids: int64 or string; nulls, empty strings and fractional numbers are errors."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if arr.null_count:
        i = _first(arr.is_null().to_numpy(zero_copy_only=False))
        raise InputError(path, f"missing {name} id", field=name, **locate(i))
    if pa.types.is_integer(arr.type):
        return arr.cast(pa.int64())
    if pa.types.is_floating(arr.type):
        x = arr.to_numpy(zero_copy_only=False)
        bad = ~np.isfinite(x) | (x != np.floor(x)) | (np.abs(x) > 2**53)
        if bad.any():
            i = _first(bad)
            raise InputError(path, f"{name} id {float(x[i])} is not an integer (ids are integers or strings)",
                             field=name, **locate(i))
        return pa.array(x.astype(np.int64))
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
        empty = pc.equal(pc.utf8_length(arr), 0).to_numpy(zero_copy_only=False)
        if empty.any():
            raise InputError(path, f"empty {name} id", field=name, **locate(_first(empty)))
        return arr
    raise InputError(path, f"{name} ids must be integers or strings, the column has type {arr.type}",
                     field=name)


def _numeric_column(arr: pa.Array, name: str, path: Path, locate: Locate, as_float: bool) -> np.ndarray:
    """Timestamps (int64 where possible, so large epochs keep their precision) or ratings (float64)."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if arr.null_count:
        i = _first(arr.is_null().to_numpy(zero_copy_only=False))
        raise InputError(path, f"missing {name}", field=name, **locate(i))
    if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type) or pa.types.is_time(arr.type):
        arr = arr.cast(pa.int64()) if not pa.types.is_date32(arr.type) else arr.cast(pa.int32()).cast(pa.int64())
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        for target in ((pa.float64(),) if as_float else (pa.int64(), pa.float64())):
            try:
                arr = pc.cast(arr, target)
                break
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
        else:
            # Arrow refused the column: find the first value that is not a number, in Python.
            values = []
            for i, v in enumerate(arr.to_pylist()):
                try:
                    values.append(float(v))
                except ValueError:
                    raise InputError(path, f"{name} {v!r} is not a number", field=name, **locate(i)) from None
            arr = pa.array(values, pa.float64())
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        raise InputError(path, f"{name} must be numeric, the column has type {arr.type}", field=name)
    x = arr.to_numpy(zero_copy_only=False)
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            i = _first(bad)
            raise InputError(path, f"{name} {float(x[i])} is not a finite number", field=name, **locate(i))
        return x.astype(np.float64)
    return x.astype(np.float64) if as_float else x.astype(np.int64)


@dataclass
class InteractionLog:
    path: Path
    user: pa.Array           # int64 or string, file order
    item: pa.Array
    timestamp: np.ndarray    # int64 or float64
    rating: np.ndarray | None
    locate: Locate


def read_interaction_log(path: Path) -> InteractionLog:
    table, locate = read_any_table(path, "interactions", wanted=("user", "item", "timestamp", "rating"))
    _require_columns(table, path, ("user", "item", "timestamp"), "interaction logs")
    col = lambda name: table.column(name).combine_chunks()  # noqa: E731
    user = _id_column(col("user"), "user", path, locate)
    item = _id_column(col("item"), "item", path, locate)
    timestamp = _numeric_column(col("timestamp"), "timestamp", path, locate, as_float=False)
    rating = None
    if "rating" in table.column_names:
        rating = _numeric_column(col("rating"), "rating", path, locate, as_float=True)
    return InteractionLog(path, user, item, timestamp, rating, locate)


def _codes(arr: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Dense codes in order of first appearance, and the values they stand for."""
    enc = pc.dictionary_encode(arr)
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary


def k_core(user_codes: np.ndarray, item_codes: np.ndarray, rows: np.ndarray,
           min_user: int, min_item: int) -> tuple[np.ndarray, int]:
    """Drop rows of rare users and items until every user and item left meets its minimum."""
    n_users = int(user_codes.max()) + 1 if len(user_codes) else 0
    n_items = int(item_codes.max()) + 1 if len(item_codes) else 0
    rounds = 0
    while len(rows):
        u, i = user_codes[rows], item_codes[rows]
        ok = ((np.bincount(u, minlength=n_users)[u] >= min_user)
              & (np.bincount(i, minlength=n_items)[i] >= min_item))
        if ok.all():
            break
        rows = rows[ok]
        rounds += 1
    return rows, rounds


def _split_by_user(user_ids: np.ndarray, item_ids: np.ndarray, n_users: int) -> list:
    """Per user 1..n_users, their items in the (time) order the rows come in."""
    order = np.argsort(user_ids, kind="stable")
    bounds = np.cumsum(np.bincount(user_ids, minlength=n_users + 1)[1:])[:-1]
    return np.split(item_ids[order].astype(np.int32), bounds)


def read_item_catalogue(path: Path, source_ids: pa.Array, log: InteractionLog,
                        log_rows: np.ndarray) -> tuple[pa.Table, int]:
    """Titles and other text for the log's items (in ``source_ids`` order), from an items file.

    Returns the columns to add to the items table and how many catalogue items the log never uses.
    """
    table, locate = read_any_table(path, "items")
    _require_columns(table, path, ("item", "title"), "item files")
    ids = _id_column(table.column("item").combine_chunks(), "item", path, locate)
    codes, distinct = _codes(ids)
    _, first_idx = np.unique(codes, return_index=True)
    if len(first_idx) != len(codes):
        dup = np.ones(len(codes), bool)
        dup[first_idx] = False
        i = _first(dup)
        raise InputError(path, f"item {ids[i].as_py()!r} appears twice (first in "
                               f"{_where(locate(int(first_idx[codes[i]])))})", field="item", **locate(i))
    title = table.column("title").combine_chunks()
    if title.null_count:
        i = _first(title.is_null().to_numpy(zero_copy_only=False))
        raise InputError(path, f"item {ids[i].as_py()!r} has no title", field="title", **locate(i))
    title = _as_text(title)

    # Match the log's ids to the catalogue's; compare as text when one side is text (a CSV of
    # numeric ASINs, say) so that 7 and "7" meet.
    log_keys, cat_keys = source_ids, ids
    if log_keys.type != cat_keys.type:
        log_keys, cat_keys = log_keys.cast(pa.string()), cat_keys.cast(pa.string())
    pos = pc.index_in(log_keys, value_set=cat_keys)
    if pos.null_count:
        missing = pc.is_null(pos)
        unknown = source_ids.filter(missing)
        in_log = pc.is_in(log.item.take(pa.array(log_rows)), value_set=unknown).to_numpy(zero_copy_only=False)
        row = int(np.min(log_rows[in_log]))
        raise InputError(log.path, f"item {log.item[row].as_py()!r} is not in the items file {path.name}",
                         field="item", **log.locate(row))
    take = pos.cast(pa.int64())
    columns = {"title": title.take(take)}
    if "categories" in table.column_names:
        columns["categories"] = _categories(table.column("categories").combine_chunks(), path, locate).take(take)
    for name in table.column_names:
        if name in ("item", "title", "categories"):
            continue
        out_name = "catalogue_source_id" if name == "source_id" else name
        columns[out_name] = _as_text(table.column(name).combine_chunks()).take(take)
    return pa.table(columns), len(distinct) - len(source_ids)


def _where(loc: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in loc.items())


def _categories(arr: pa.Array, path: Path, locate: Locate) -> pa.Array:
    """A list of strings per item; a text value is a JSON list or one category."""
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        try:
            arr = arr.cast(pa.list_(pa.string()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise InputError(path, f"categories must be lists of text, the column has type {arr.type}",
                             field="categories") from None
        return pc.if_else(arr.is_null(), pa.scalar([], pa.list_(pa.string())), arr)
    out = []
    for i, v in enumerate(_as_text(arr).to_pylist()):
        if v is None or v == "":
            out.append([])
        elif v.startswith("["):
            try:
                parsed = json.loads(v)
            except json.JSONDecodeError:
                parsed = None
            if not (isinstance(parsed, list) and all(isinstance(c, str) for c in parsed)):
                raise InputError(path, f"categories {v!r} is not a JSON list of strings", field="categories",
                                 **locate(i))
            out.append(parsed)
        else:
            out.append([v])
    return pa.array(out, pa.list_(pa.string()))


def _as_text(arr: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        return arr.cast(pa.string())
    try:
        return arr.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else json.dumps(v, ensure_ascii=False, default=str)
                         for v in arr.to_pylist()], pa.string())


def read_log_and_split(path: Path, options: PrepareOptions) -> PreparedInMemory:
    """Filter an interaction log and split it by global timestamp into per-user sequences."""
    log = read_interaction_log(path)
    n_rows = len(log.timestamp)
    stages = tqdm(total=4, desc=f"prepare {path.name}", leave=False, disable=n_rows < PROGRESS_MIN_ROWS,
                  bar_format="{desc}(step {n}/{total} done, {elapsed})")
    stages.set_description(f"prepare {path.name}: filtering")
    counts: dict = {"log_rows": n_rows}
    rows = np.arange(n_rows, dtype=np.int64)
    if options.min_rating is not None:
        if log.rating is None:
            raise InputError(path, "--min-rating needs a 'rating' column", field="rating")
        rows = rows[log.rating >= options.min_rating]
        counts["rows_after_min_rating"] = len(rows)
    user_codes, _ = _codes(log.user)
    item_codes, _ = _codes(log.item)
    rows, rounds = k_core(user_codes, item_codes, rows, options.min_user_count, options.min_item_count)
    counts["rows_after_k_core"] = len(rows)
    counts["k_core_rounds"] = rounds
    if not len(rows):
        raise DealrecError(f"{path}: no interactions left after filtering (min rating {options.min_rating}, "
                           f"min user count {options.min_user_count}, min item count {options.min_item_count})")

    # The paper's split: all interactions in time order, cut at the 80% and 90% positions.
    # A stable sort keeps file order among equal timestamps, so the result is deterministic.
    stages.update()
    stages.set_description(f"prepare {path.name}: splitting by time")
    rows = rows[np.argsort(log.timestamp[rows], kind="stable")]
    n = len(rows)
    cut_train = int(math.floor(n * options.split[0] + 1e-9))
    cut_valid = int(math.floor(n * (options.split[0] + options.split[1]) + 1e-9))
    period = np.zeros(n, np.int8)
    period[cut_train:cut_valid] = 1
    period[cut_valid:] = 2

    # Users with nothing in the training period have no sample: drop them from every split.
    u = user_codes[rows]
    has_train = np.zeros(int(user_codes.max()) + 1, bool)
    has_train[u[period == 0]] = True
    keep = has_train[u]
    counts["users_dropped_without_training"] = int(len(np.unique(u[~keep])))
    counts["interactions_dropped_without_training"] = {
        name: int(np.sum(~keep & (period == p))) for p, name in enumerate(("train", "valid", "test"))}
    rows, period = rows[keep], period[keep]
    if not len(rows):
        raise DealrecError(f"{path}: no user has an interaction in the training period")

    # Dense ids in order of first appearance in time; 0 stays free for padding.
    stages.update()
    stages.set_description(f"prepare {path.name}: building sequences")
    uid, user_source = _codes(log.user.take(pa.array(rows)))
    iid, item_source = _codes(log.item.take(pa.array(rows)))
    uid, iid = uid + 1, iid + 1
    n_users, n_items = len(user_source), len(item_source)
    if n_items > INT32_MAX:
        raise DealrecError(f"{path}: {n_items} items do not fit int32 item ids")
    seqs = [_split_by_user(uid[period == p], iid[period == p], n_users) for p in range(3)]

    stages.update()
    stages.set_description(f"prepare {path.name}: item catalogue")
    notes = []
    items = {"item": pa.array(np.arange(1, n_items + 1, dtype=np.int32))}
    if options.items_file:
        extra, unused = read_item_catalogue(Path(options.items_file), item_source, log, rows)
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
    stages.update()
    stages.close()
    sources = [path] + ([Path(options.items_file)] if options.items_file else [])
    return PreparedInMemory(
        users=np.arange(1, n_users + 1, dtype=np.int64),
        train=seqs[0], valid=seqs[1], test=seqs[2],
        items=pa.table(items),
        user_table=pa.table({"user": pa.array(np.arange(1, n_users + 1, dtype=np.int64)),
                             "source_id": user_source}),
        sources=sources, counts=counts, notes=notes,
    )
