"""``dealrec prepare SRC --out DIR``: turn a data release or an interaction log into a prepared folder.

Two kinds of SRC:

- a folder in the DEALRec release format: ``sequential_{train,valid,test}.txt`` (one line a
  user: ``user item item ...``) and ``items.jsonl`` (``item``, ``title``, optional
  ``categories`` and any other fields);
- an interaction log: one Parquet, CSV or JSONL file with columns ``user``, ``item``,
  ``timestamp`` and optionally ``rating``. It is filtered (minimum rating, iterative k-core)
  and split 8:1:1 by global timestamp, as in the paper.

Both end in the same folder (see ``dealrec_core.data``): one training sample per user (their
training sequence; its last item the target), the item catalogue, the validation and test
splits and a manifest. Everything is built in a temporary folder and renamed into place when
complete; bad input raises ``InputError`` naming the file, the line (or row) and the field.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import click
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from dealrec_core import __version__
from dealrec_core.data import (DEFAULT_SHARD_SIZE, EvalSplit, atomic_output_dir, check_item_ids, samples_table,
                          sha256_file, write_json_atomic, write_parquet_atomic, write_samples)
from dealrec_core.errors import DealrecError, InputError
from dealrec_core.paths import check_output

RELEASE_FILES = {"train": "sequential_train.txt", "valid": "sequential_valid.txt",
                 "test": "sequential_test.txt", "items": "items.jsonl"}
LOG_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv",
                ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# Progress bars only where the work is long enough to be worth watching.
PROGRESS_MIN_ROWS = 200_000
_INT_TOKEN = re.compile(r"-?[0-9]+\Z")
ID_COLUMNS = ("user", "item")


@dataclass
class PrepareOptions:
    """What ``prepare`` was asked to do; written verbatim into the manifest."""

    min_rating: float | None = None        # logs only: keep interactions rated >= this
    min_user_count: int = 1                # logs only: k-core, users with fewer interactions are dropped
    min_item_count: int = 1                # logs only: k-core, items with fewer interactions are dropped
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)   # logs only: global-timestamp split
    items_file: str | None = None          # logs only: item catalogue with titles
    shard_size: int = DEFAULT_SHARD_SIZE

    def log_options_given(self) -> list[str]:
        given = []
        if self.min_rating is not None:
            given.append("--min-rating")
        if self.min_user_count != 1:
            given.append("--min-user-count")
        if self.min_item_count != 1:
            given.append("--min-item-count")
        if tuple(self.split) != (0.8, 0.1, 0.1):
            given.append("--split")
        if self.items_file is not None:
            given.append("--items")
        return given


@dataclass
class PreparedInMemory:
    """Everything a prepared folder holds, in memory, before it is written (``dealrec_core.data.PreparedData``
    reads a written one)."""

    users: np.ndarray                 # int64 [U], one per sample, in sample order
    train: list                       # int32 arrays, one per user, time order, each non-empty
    valid: list                       # int32 arrays, one per user (often empty)
    test: list                        # int32 arrays, one per user (often empty)
    items: pa.Table                   # item int32, title, categories, other text
    user_table: pa.Table | None = None   # logs: user -> source_id
    sources: list = field(default_factory=list)    # Paths of the input files
    counts: dict = field(default_factory=dict)      # format-specific extra counts
    notes: list = field(default_factory=list)


# ============================================================================= entry point

def prepare(src: str | Path, out: str | Path, options: PrepareOptions | None = None,
            overwrite: bool = False) -> dict:
    """Prepare ``src`` (release folder or log file) into ``out``; return the manifest."""
    options = options or PrepareOptions()
    src, out = Path(src), Path(out)
    if options.shard_size < 1:
        raise DealrecError(f"--shard-size must be at least 1, got {options.shard_size}")
    # OUT is built beside itself and renamed over the old one: never SRC, inside it, or around it.
    check_output(out, {"SRC": src, "--items": options.items_file})
    if out.exists() and not overwrite:
        # Checked before the (possibly long) reading, so the user learns it at once.
        raise DealrecError(f"{out}: already exists (pass --overwrite to replace it)")
    if src.is_dir():
        given = options.log_options_given()
        if given:
            raise DealrecError(f"{', '.join(given)}: only for interaction logs; {src} is a release folder "
                               f"(already filtered and split)")
        prepared = read_release(src)
        fmt = "release"
    elif src.is_file():
        prepared = read_log_and_split(src, options)
        fmt = f"log-{_log_kind(src)}"
    else:
        raise InputError(src, "no such file or folder")
    return write_prepared(prepared, out, fmt, options, overwrite)


# ============================================================================= release format

def _json_objects(path: Path, **kwargs):
    """(line number, object) for every non-blank line of a JSONL file; a bad line is an InputError."""
    for n, text in _lines(path, **kwargs):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(path, f"bad JSON: {e.msg} (column {e.colno})", line=n) from None
        if not isinstance(obj, dict):
            raise InputError(path, f"expected a JSON object, got {type(obj).__name__}", line=n)
        yield n, obj


def _lines(path: Path, desc: str | None = None):
    """(line number, decoded text) for every line; undecodable bytes are bad input.

    With ``desc``, big files show a progress bar (in bytes).
    """
    size = path.stat().st_size
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=desc, leave=False,
                                     disable=desc is None or size < 50 * PROGRESS_MIN_ROWS) as bar:
        for n, raw in enumerate(f, start=1):
            if n % 10000 == 0:
                bar.update(f.tell() - bar.n)
            try:
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise InputError(path, f"not valid UTF-8 ({e.reason} at byte {e.start})", line=n) from None
            yield n, text


def _parse_id(token: str, path: Path, line: int, what: str, position: int | None = None) -> int:
    where = f" (item {position} on the line)" if position is not None else ""
    if not _INT_TOKEN.match(token):
        raise InputError(path, f"{what} id {token!r} is not an integer{where}", line=line, field=what)
    value = int(token)
    if what == "item" and not 1 <= value <= INT32_MAX:
        raise InputError(path, f"item id {value} out of range 1..{INT32_MAX} (0 is padding){where}",
                         line=line, field=what)
    if what == "user" and abs(value) > INT64_MAX:
        raise InputError(path, f"user id {value} does not fit in 64 bits", line=line, field=what)
    return value


def read_sequence_file(path: Path) -> list[tuple[int, int, list[int]]]:
    """Parse ``user item item ...`` lines into (line number, user, items); blank lines are skipped.

    A line may hold the user id alone (no items in that period; in the training file a user who has
    only validation/test items, as some of the paper's releases have)."""
    if not path.is_file():
        raise InputError(path, "missing (a release folder needs sequential_{train,valid,test}.txt "
                               "and items.jsonl)")
    rows = []
    seen: dict[int, int] = {}
    for n, text in _lines(path, desc=f"read {path.name}"):
        tokens = text.split()
        if not tokens:
            continue
        user = _parse_id(tokens[0], path, n, "user")
        items = [_parse_id(t, path, n, "item", i) for i, t in enumerate(tokens[1:], start=1)]
        if user in seen:
            raise InputError(path, f"user {user} appears twice (first on line {seen[user]})",
                             line=n, field="user")
        seen[user] = n
        rows.append((n, user, items))
    if not rows:
        raise InputError(path, "empty file (no user lines)")
    return rows


def _text_value(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def read_items_jsonl(path: Path) -> pa.Table:
    """The release's item list: one JSON object a line with ``item``, ``title``, optional ``categories``."""
    if not path.is_file():
        raise InputError(path, "missing (a release folder needs sequential_{train,valid,test}.txt "
                               "and items.jsonl)")
    ids: list[int] = []
    titles: list[str] = []
    categories: list[list[str]] = []
    other: dict[str, dict[int, str | None]] = {}
    first_line: dict[int, int] = {}
    for n, obj in _json_objects(path):
        if "item" not in obj:
            raise InputError(path, "no 'item' field", line=n, field="item")
        item = obj["item"]
        if isinstance(item, bool) or not isinstance(item, int):
            raise InputError(path, f"item id {item!r} is not an integer", line=n, field="item")
        if not 1 <= item <= INT32_MAX:
            raise InputError(path, f"item id {item} out of range 1..{INT32_MAX} (0 is padding)",
                             line=n, field="item")
        if item in first_line:
            raise InputError(path, f"item {item} appears twice (first on line {first_line[item]})",
                             line=n, field="item")
        first_line[item] = n
        if "title" not in obj:
            raise InputError(path, f"item {item} has no 'title' field", line=n, field="title")
        title = obj["title"]
        if not isinstance(title, str):
            raise InputError(path, f"title of item {item} is not a string: {title!r}", line=n, field="title")
        cats = obj.get("categories")
        if cats is None:
            cats = []
        elif isinstance(cats, str):
            cats = [cats]
        elif not (isinstance(cats, list) and all(isinstance(c, str) for c in cats)):
            raise InputError(path, f"categories of item {item} must be a list of strings", line=n,
                             field="categories")
        row = len(ids)
        ids.append(item)
        titles.append(title)
        categories.append(cats)
        for key, value in obj.items():
            if key in ("item", "title", "categories"):
                continue
            other.setdefault(key, {})[row] = _text_value(value)
    if not ids:
        raise InputError(path, "empty file (no items)")
    largest = max(ids)
    check_item_ids(largest, len(ids), path, line=first_line[largest])
    columns = {"item": pa.array(ids, pa.int32()), "title": pa.array(titles, pa.string()),
               "categories": pa.array(categories, pa.list_(pa.string()))}
    for key, values in other.items():
        columns[key] = pa.array([values.get(i) for i in range(len(ids))], pa.string())
    table = pa.table(columns)
    return table.take(pc.sort_indices(table, [("item", "ascending")]))


def read_release(folder: Path) -> PreparedInMemory:
    paths = {k: folder / name for k, name in RELEASE_FILES.items()}
    items = read_items_jsonl(paths["items"])
    known = set(items.column("item").to_pylist())

    def check_items(rows, path):
        for n, _, seq in rows:
            for i, item in enumerate(seq, start=1):
                if item not in known:
                    raise InputError(path, f"item {item} is not in {paths['items'].name} "
                                           f"(item {i} on the line)", line=n, field="item")

    all_train_rows = read_sequence_file(paths["train"])
    check_items(all_train_rows, paths["train"])
    # A training line with the user id alone: the user has no sample (nothing to train on) and, as in a
    # log's split, is left out of validation and test too (counted in the manifest).
    train_rows = [row for row in all_train_rows if row[2]]
    without_training = {user for _, user, seq in all_train_rows if not seq}
    if not train_rows:
        raise InputError(paths["train"], "no user has a training item (every line holds a user id alone)")
    user_index = {user: i for i, (_, user, _) in enumerate(train_rows)}
    eval_seqs = {}
    missing_lines = {}
    dropped_interactions = {}
    for split in ("valid", "test"):
        rows = read_sequence_file(paths[split])
        check_items(rows, paths[split])
        seqs = [np.zeros(0, np.int32) for _ in train_rows]
        dropped_interactions[split] = 0
        for n, user, seq in rows:
            if user in without_training:
                dropped_interactions[split] += len(seq)
                continue
            if user not in user_index:
                raise InputError(paths[split], f"user {user} is not in {paths['train'].name} "
                                               f"(every user needs a training sequence)", line=n, field="user")
            seqs[user_index[user]] = np.asarray(seq, np.int32)
        eval_seqs[split] = seqs
        missing_lines[split] = len(all_train_rows) - len(rows)

    used = set()
    for _, _, seq in train_rows:
        used.update(seq)
    for seqs in eval_seqs.values():
        for s in seqs:
            used.update(s.tolist())
    notes = []
    if any(missing_lines.values()):
        notes.append("training users without a line in a valid/test file are taken to have no "
                     "interactions in that period")
    if without_training:
        notes.append(f"{len(without_training)} users have a training line with no items: they have no sample "
                     f"and are left out of validation and test (users_without_training_items)")
    return PreparedInMemory(
        users=np.array([user for _, user, _ in train_rows], np.int64),
        train=[np.asarray(seq, np.int32) for _, _, seq in train_rows],
        valid=eval_seqs["valid"], test=eval_seqs["test"],
        items=items,
        sources=[paths["train"], paths["valid"], paths["test"], paths["items"]],
        counts={"items_unused": len(known - used),
                "users_without_line": missing_lines,
                "users_without_training_items": len(without_training),
                "interactions_dropped_without_training": dropped_interactions},
        notes=notes,
    )


# ============================================================================= interaction logs

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
        from pyarrow import csv as pacsv
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


# ============================================================================= writing

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


# ============================================================================= command line

def _parse_split(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected three fractions like 0.8,0.1,0.1") from None
    if len(parts) != 3 or any(not math.isfinite(x) or x < 0 for x in parts) or parts[0] <= 0:
        raise click.BadParameter(f"{text!r}: expected three non-negative fractions like 0.8,0.1,0.1 "
                                 f"(train > 0)")
    if abs(sum(parts) - 1.0) > 1e-6:
        raise click.BadParameter(f"{text!r}: the fractions must sum to 1 (they sum to {sum(parts):g})")
    return parts  # type: ignore[return-value]


@click.command("prepare")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--items", "items_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Logs: item catalogue (Parquet/CSV/JSONL with item, title, other text columns).")
@click.option("--min-rating", type=float, default=None, help="Logs: keep interactions rated at least this.")
@click.option("--min-user-count", type=click.IntRange(min=1), default=1, show_default=True,
              help="Logs: iterative k-core, minimum interactions per user.")
@click.option("--min-item-count", type=click.IntRange(min=1), default=1, show_default=True,
              help="Logs: iterative k-core, minimum interactions per item.")
@click.option("--split", "split", default="0.8,0.1,0.1", show_default=True,
              callback=lambda ctx, param, value: _parse_split(value),
              help="Logs: train,valid,test shares of the interactions, cut by global timestamp.")
@click.option("--shard-size", type=click.IntRange(min=1), default=DEFAULT_SHARD_SIZE, show_default=True,
              help="Rows per samples shard.")
@click.option("--overwrite", is_flag=True, help="Replace DIR if it exists.")
def prepare_command(src, out, items_file, min_rating, min_user_count, min_item_count, split,
                    shard_size, overwrite):
    """Prepare SRC (a DEALRec release folder or an interaction log file) into DIR (--out)."""
    options = PrepareOptions(min_rating=min_rating, min_user_count=min_user_count,
                             min_item_count=min_item_count, split=split,
                             items_file=str(items_file) if items_file else None, shard_size=shard_size)
    manifest = prepare(src, out, options, overwrite=overwrite)
    c = manifest["counts"]
    click.echo(f"{out}: {c['samples']:,} samples, {c['items']:,} items, "
               f"{c['eval_users']['valid']:,} valid users, {c['eval_users']['test']:,} test users")
