"""Interaction logs and item catalogues: Parquet, CSV or JSONL files. The checks of a log's columns
(``IdChecks``, ``NumberChecks``, ``JsonColumn``), which ``stream`` applies chunk by chunk, and reading an
item catalogue (whole: it is the size of the catalogue, not of the log). A bad value is an
``InputError`` naming the file, the row (Parquet, CSV) or line (JSONL) and the field."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dealrec_core.errors import InputError
from dealrec.prepare.common import INT64_MAX, _json_objects

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


def unreadable(path: Path, kind: str, error: Exception) -> InputError:
    """A file that its reader refused, with the first line of the reader's message."""
    return InputError(path, f"not a readable {'Parquet' if kind == 'parquet' else 'CSV'} file: "
                            f"{str(error).splitlines()[0]}")


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
            raise unreadable(path, kind, e) from None
        locate: Locate = _row_locator
    elif kind == "csv":
        # Ids are text unless the file says otherwise: type inference would read "007" as 7 (so 007 and 7
        # became one user, and a leading-zero item no longer matched its items file). Parquet keeps its types.
        ids_as_text = pacsv.ConvertOptions(column_types={name: pa.string() for name in ID_COLUMNS})
        try:
            table = pacsv.read_csv(path, convert_options=ids_as_text)
        except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as e:
            raise unreadable(path, kind, e) from None
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


# A JSON value's kind, as a column of one byte a row: none (null or absent), an integer (in ``i``; one beyond
# 64 bits in ``s`` as text and ``f`` as a float), a float (``f``), a string (``s``), a list of strings or any
# other value (``s``, as JSON text).
_NONE, _INT, _FLOAT, _STR, _STRLIST, _OTHER = range(6)
_KIND_NAMES = {_INT: "int", _FLOAT: "float", _STR: "str", _STRLIST: "strlist", _OTHER: "other"}
_FAST_KINDS = {pa.int64(): _INT, pa.float64(): _FLOAT, pa.string(): _STR, pa.null(): _NONE}
JSON_PARTS = ("kind", "i", "f", "s")


class JsonColumn:
    """One key of a JSONL file, read chunk by chunk (``add``): its type is decided by the kinds of value in
    the whole file, so a chunk is kept as it was read (kind, integer, float and text parts) and given that
    type by ``emit`` once every chunk is in. ``error()`` is the error reading the whole column at once gave:
    a JSON boolean, list or object id, an integer beyond 64 bits, ids that mix numbers and strings, each the
    first such row."""

    def __init__(self, key: str, path: Path):
        self.key, self.path, self.is_id = key, path, key in ID_COLUMNS
        self.kinds: set[str] = set()
        self.not_scalar: InputError | None = None     # the first boolean, list or object id
        self.too_big: InputError | None = None        # the first integer beyond 64 bits
        self.float_overflow = False                   # an integer too big even for a float
        self.first_is_text: bool | None = None        # ids: is the first one a string
        self.mixed: InputError | None = None          # ids: the first one of the other kind

    def add(self, values: list, locate: Locate) -> pa.Table:
        """Take one chunk's values (Python objects, None where absent): its kind, integer, float and text
        parts."""
        n = len(values)
        try:
            arr = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            arr = None
        kind = _FAST_KINDS.get(arr.type) if arr is not None else None
        if kind == _INT and pc.any(pc.equal(arr, -INT64_MAX - 1)).as_py():
            kind = None      # -2**63 fits, but its absolute value does not: "does not fit in 64 bits"
        if kind is None:
            return self._add_slowly(values, locate)
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        if valid.any():
            self.kinds.add(_KIND_NAMES.get(kind, ""))
            self.kinds.discard("")
            if self.is_id:
                self._note_text(kind == _STR, _first(valid), values, locate)
        none_of = {pa.int64(): pa.nulls(n, pa.int64()), pa.float64(): pa.nulls(n, pa.float64()),
                   pa.string(): pa.nulls(n, pa.string())}
        parts = {"kind": pa.array(np.where(valid, kind, _NONE).astype(np.int8)),
                 "i": arr if kind == _INT else none_of[pa.int64()],
                 "f": arr if kind == _FLOAT else none_of[pa.float64()],
                 "s": arr if kind == _STR else none_of[pa.string()]}
        return pa.table(parts)

    def _note_text(self, is_text: bool, i: int, values: list, locate: Locate) -> None:
        """Ids: the first id decides; the first of the other kind (numbers vs strings) is an error."""
        if self.first_is_text is None:
            self.first_is_text = is_text
        elif is_text != self.first_is_text and self.mixed is None:
            self.mixed = InputError(self.path, f"{self.key} ids mix numbers and strings ({values[i]!r} here, "
                                               f"{'str' if self.first_is_text else 'number'} before)",
                                    field=self.key, **locate(i))

    def _add_slowly(self, values: list, locate: Locate) -> pa.Table:
        key = self.key
        n = len(values)
        kind = np.zeros(n, np.int8)
        ints: list = [None] * n
        floats: list = [None] * n
        texts: list = [None] * n
        for i, v in enumerate(values):
            if v is None:
                continue
            if self.is_id and not (isinstance(v, (int, float, str)) and not isinstance(v, bool)):
                # true/false, lists and objects are no ids (true would become the user "true")
                if self.not_scalar is None:
                    shown = json.dumps(v, ensure_ascii=True)
                    shown = shown if len(shown) <= 40 else shown[:37] + "..."
                    self.not_scalar = InputError(self.path, f"{key} id {shown} is a JSON {_json_kind(v)}: ids are "
                                                            f"integers or strings", field=key, **locate(i))
                continue
            if self.is_id:
                self._note_text(isinstance(v, str), i, values, locate)
            if isinstance(v, bool):
                kind[i], texts[i] = _OTHER, json.dumps(v, ensure_ascii=False)
            elif isinstance(v, int):
                kind[i] = _INT
                if abs(v) > INT64_MAX:
                    if self.too_big is None:
                        self.too_big = InputError(self.path, f"{key} {v} does not fit in 64 bits", field=key,
                                                  **locate(i))
                    texts[i] = str(v)
                    try:
                        floats[i] = float(v)
                    except OverflowError:
                        self.float_overflow = True
                else:
                    ints[i] = v
            elif isinstance(v, float):
                kind[i], floats[i] = _FLOAT, v
            elif isinstance(v, str):
                kind[i], texts[i] = _STR, v
            else:
                strlist = isinstance(v, list) and all(isinstance(x, str) for x in v)
                kind[i], texts[i] = (_STRLIST if strlist else _OTHER), json.dumps(v, ensure_ascii=False)
        self.kinds |= {_KIND_NAMES[k] for k in np.unique(kind) if k != _NONE}
        return pa.table({"kind": pa.array(kind), "i": pa.array(ints, pa.int64()),
                         "f": pa.array(floats, pa.float64()), "s": pa.array(texts, pa.string())})

    def error(self) -> InputError | None:
        """The error reading the whole column at once gave, if any (call once every chunk is in)."""
        if self.not_scalar is not None:
            return self.not_scalar
        if self.kinds <= {"int"} and self.too_big is not None:
            return self.too_big
        if self.is_id and not (self.kinds <= {"int", "float"} or self.kinds <= {"str"}):
            return self.mixed      # only int, float and str get here: strings and numbers mixed
        return None

    def emit(self, parts: pa.Table) -> pa.Array:
        """One chunk in the column's type: int64 (integers only), float64 (numbers), string (strings), a list
        of strings (lists of strings: the values are not kept, only which rows have one), else JSON text."""
        kind = parts.column("kind").combine_chunks()
        ints, floats, texts = (parts.column(name).combine_chunks() for name in ("i", "f", "s"))
        if self.kinds <= {"int"}:
            return ints
        if self.kinds <= {"int", "float"}:
            if self.float_overflow:
                raise OverflowError("int too large to convert to float")
            return pc.if_else(pc.is_valid(ints), pc.cast(ints, pa.float64()), floats)
        if self.kinds <= {"str"}:
            return texts
        if self.kinds <= {"strlist"}:
            none = pc.equal(kind, _NONE)
            return pa.ListArray.from_arrays(pa.array(np.zeros(len(kind) + 1, np.int32)), pa.array([], pa.string()),
                                            mask=none)
        # Anything else: keep numbers as numbers where they are, text otherwise; the column checks
        # give precise errors for the columns that must be numeric.
        is_float = pc.equal(kind, _FLOAT).to_numpy(zero_copy_only=False)
        float_texts = np.full(len(kind), None, object)
        float_texts[is_float] = [json.dumps(v) for v in floats.filter(pa.array(is_float)).to_pylist()]
        int_texts = pc.cast(ints, pa.string())
        return pc.coalesce(texts, int_texts, pa.array(float_texts, pa.string()))


def _python_to_arrow(values: list, key: str, path: Path, locate: Locate) -> pa.Array:
    """One JSONL column (all of it): ints, floats, strings or lists of strings; other values become JSON text."""
    column = JsonColumn(key, path)
    parts = column.add(values, locate)
    if column.error() is not None:
        raise column.error()
    if column.kinds and column.kinds <= {"strlist"}:
        return pa.array(values, pa.list_(pa.string()))
    return column.emit(parts)


def _require_columns(names: list[str], path: Path, required: tuple[str, ...], what: str) -> None:
    for name in required:
        if name not in names:
            raise InputError(path, f"missing column '{name}' ({what} need {', '.join(required)}; "
                                   f"has: {', '.join(names) or 'none'})", field=name)


class ColumnChecks:
    """One column of a log, checked (and given its final type) chunk by chunk.

    Read at once, a column raised the first failing row of its first failing check (a missing value,
    then a bad one). Read in chunks, each check keeps the first row that fails it (an earlier chunk's
    row is an earlier row) and ``error()`` is the first check's, so the message is the same whatever
    the chunking. A chunk's values are only worth using while ``error()`` is None.
    """

    def __init__(self, name: str, path: Path):
        self.name, self.path = name, path
        self.failed: dict[int, InputError] = {}

    def fail(self, check: int, message: str, locate: Locate | None = None, i: int | None = None) -> None:
        if check not in self.failed:
            self.failed[check] = InputError(self.path, message, field=self.name,
                                            **(locate(i) if locate is not None else {}))

    def error(self) -> InputError | None:
        return self.failed[min(self.failed)] if self.failed else None

    def raise_first(self) -> None:
        if self.failed:
            raise self.error()

    def check_missing(self, arr: pa.Array, what: str, locate: Locate) -> pa.Array:
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        if arr.null_count:
            self.fail(0, f"missing {what}", locate, _first(arr.is_null().to_numpy(zero_copy_only=False)))
        return arr


class IdChecks(ColumnChecks):
    """User or item ids: int64 or string; nulls, empty strings and fractional numbers are errors."""

    def convert(self, arr: pa.Array, locate: Locate) -> pa.Array:
        name = self.name
        arr = self.check_missing(arr, f"{name} id", locate)
        if pa.types.is_integer(arr.type):
            return arr.cast(pa.int64())
        if pa.types.is_floating(arr.type):
            x = arr.to_numpy(zero_copy_only=False)
            bad = ~np.isfinite(x) | (x != np.floor(x)) | (np.abs(x) > 2**53)
            if bad.any():
                i = _first(bad)
                self.fail(1, f"{name} id {float(x[i])} is not an integer (ids are integers or strings)", locate, i)
                x = np.where(bad, 0, x)
            return pa.array(x.astype(np.int64))
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            arr = arr.cast(pa.string())
            empty = pc.utf8_length(arr).to_numpy(zero_copy_only=False) == 0
            if empty.any():
                self.fail(1, f"empty {name} id", locate, _first(empty))
            return arr
        self.fail(1, f"{name} ids must be integers or strings, the column has type {arr.type}")
        return arr


class NumberChecks(ColumnChecks):
    """Timestamps (int64 where possible, so large epochs keep their precision) or ratings (float64).

    Text is a number column if Arrow casts all of it (to int64, the timestamps' first choice, else to
    float64) or else if Python's ``float`` reads every value; which of these a chunk manages decides the
    type of the whole column, so ``convert`` gives a text chunk both ways (``ints``, ``floats``) and
    ``is_int()`` says which one the whole column takes, once every chunk is in.
    """

    def __init__(self, name: str, path: Path, as_float: bool):
        super().__init__(name, path)
        self.as_float = as_float
        self.text = False                   # the column is text
        self.text_ints_failed = False       # a text chunk that Arrow does not cast to int64
        self.text_infinite: InputError | None = None
        self.integer = False                # the column is integers (or dates and times)

    def is_int(self) -> bool:
        """Whether the whole column is int64 (known once every chunk is in)."""
        if self.as_float:
            return False
        return not self.text_ints_failed if self.text else self.integer

    def convert(self, arr: pa.Array, locate: Locate) -> tuple[np.ndarray, np.ndarray | None]:
        """(values, the int64 values of a text chunk that casts to int64, else None)."""
        name = self.name
        arr = self.check_missing(arr, name, locate)
        if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type) or pa.types.is_time(arr.type):
            arr = arr.cast(pa.int64()) if not pa.types.is_date32(arr.type) else arr.cast(pa.int32()).cast(pa.int64())
        ints = None
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            self.text = True
            if not self.as_float:
                try:
                    ints = pc.cast(arr, pa.int64()).to_numpy(zero_copy_only=False)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    self.text_ints_failed = True
            try:
                arr = pc.cast(arr, pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                # Arrow refused the chunk: find the first value that is not a number, in Python.
                values = []
                for i, v in enumerate(arr.to_pylist()):
                    try:
                        values.append(float(v) if v is not None else 0.0)
                    except ValueError:
                        self.fail(1, f"{name} {v!r} is not a number", locate, i)
                        values.append(0.0)
                arr = pa.array(values, pa.float64())
        if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
            self.fail(2, f"{name} must be numeric, the column has type {arr.type}")
            return np.zeros(len(arr), np.float64), None
        x = arr.to_numpy(zero_copy_only=False)
        if x.dtype.kind == "f":
            bad = ~np.isfinite(x)
            if bad.any():
                i = _first(bad)
                message = f"{name} {float(x[i])} is not a finite number"
                if self.text and not self.as_float:
                    # a text column's infinities count only if the column ends up float64 (see error())
                    if self.text_infinite is None:
                        self.text_infinite = InputError(self.path, message, field=name, **locate(i))
                else:
                    self.fail(3, message, locate, i)
            return x.astype(np.float64), ints
        self.integer = True
        return (x.astype(np.float64), None) if self.as_float else (x.astype(np.int64), None)

    def error(self) -> InputError | None:
        if self.text_infinite is not None and self.text_ints_failed:
            self.failed.setdefault(3, self.text_infinite)
        return super().error()


def _id_column(arr: pa.Array, name: str, path: Path, locate: Locate) -> pa.Array:
    """A whole id column (an item catalogue's): checked and converted, or the first error raised."""
    checks = IdChecks(name, path)
    arr = checks.convert(arr, locate)
    checks.raise_first()
    return arr


def _codes(arr: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Dense codes in order of first appearance, and the values they stand for."""
    enc = pc.dictionary_encode(arr)
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary


def read_item_catalogue(path: Path, source_ids: pa.Array,
                        unknown_item: Callable[[pa.Array], tuple[object, Path, dict]]) -> tuple[pa.Table, int]:
    """Titles and other text for the log's items (in ``source_ids`` order), from an items file.

    Returns the columns to add to the items table and how many catalogue items the log never uses.
    ``unknown_item(ids)`` gives the first (in file order) of the log's kept rows whose item is one of
    ``ids``, as (its item id, the log, its location), for the error.
    """
    table, locate = read_any_table(path, "items")
    _require_columns(table.column_names, path, ("item", "title"), "item files")
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
        item, log, where = unknown_item(source_ids.filter(pc.is_null(pos)))
        raise InputError(log, f"item {item!r} is not in the items file {path.name}", field="item", **where)
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
