"""Reading an interaction log chunk by chunk into a staging Parquet file, with bounded memory.

Each chunk of the log is checked (``log.IdChecks``, ``log.NumberChecks``) and written to
``WORK/log.parquet`` with the columns ``pos`` (the row's place in the file, from 0), ``u``, ``i`` (the ids,
int64 or text), ``ts`` (int64 or float64; a text column also gives ``ts_int``, see ``StagedLog.ts``),
``rating`` (float64, when the log has one) and ``line`` (JSONL: the line number). What the whole file decides
(the type of a CSV column, which kinds of JSON value a key holds) is decided as reading the whole file at
once decided it, and errors are the same, in the same order: an unreadable file, an empty one, a bad JSONL
key, a missing column, then each column's first bad row (user, item, timestamp, rating).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from dealrec_core.errors import InputError
from dealrec.prepare.common import PROGRESS_MIN_ROWS, _json_objects
from dealrec.prepare.log import (ID_COLUMNS, JSON_PARTS, IdChecks, JsonColumn, Locate, NumberChecks, _line_locator,
                                 _log_kind, _require_columns, unreadable)

LOG_COLUMNS = ("user", "item", "timestamp", "rating")
REQUIRED = ("user", "item", "timestamp")
CHUNK_ROWS = 1 << 19            # rows of Parquet a chunk
CSV_BLOCK_BYTES = 1 << 20       # bytes of CSV a chunk (Arrow's default block; its first one sets the types)
JSONL_CHUNK_LINES = 1 << 16     # lines of JSONL a chunk (parsed in Python)
# The types Arrow's CSV reader tries for a column, in order: it takes the first one that reads every value
# (tests/test_prepare_scale.py checks this list against pyarrow.csv.read_csv).
CSV_INFERENCE_ORDER = (pa.null(), pa.int64(), pa.bool_(), pa.date32(), pa.time32("s"), pa.timestamp("s"),
                       pa.timestamp("ns"), pa.timestamp("s", tz="UTC"), pa.timestamp("ns", tz="UTC"),
                       pa.float64(), pa.string(), pa.binary())


@dataclass
class StagedLog:
    """A log read into ``file`` (the staging Parquet file; columns in the module's docstring)."""

    path: Path            # the log
    file: Path
    rows: int
    has_rating: bool
    ts: str               # the column to sort by: "ts", or "ts_int" for a text column that is integers throughout
    lines: bool           # the staging file has a "line" column (JSONL)

    def where(self, pos: int, line: int | None) -> dict:
        """The location of the log's row ``pos`` in an error: its line (JSONL) or row."""
        return {"line": int(line)} if self.lines else {"row": int(pos) + 1}


def stage_log(path: Path, work: Path) -> StagedLog:
    """Read, check and stage the log at ``path`` into ``work``; a bad log is an ``InputError``."""
    kind = _log_kind(path)
    if path.stat().st_size == 0:
        raise InputError(path, "empty file (no interactions)")
    out = work / "log.parquet"
    if kind == "parquet":
        return _check_and_stage(path, out, *_parquet_chunks(path))
    if kind == "csv":
        return _stage_csv(path, out)
    return _check_and_stage(path, out, *_jsonl_chunks(path, work))


# ----------------------------------------------------------------------------- the checks and the staging file

Chunks = Iterator[tuple[pa.Table, Locate, "np.ndarray | None"]]


def _check_and_stage(path: Path, out: Path, names: list[str], chunks: Chunks, total: int | None = None) -> StagedLog:
    """Check every chunk (a table with the log's columns, how to locate its rows, JSONL line numbers) and
    write the good ones to ``out``; the first error (in the order of the whole-file checks) is raised at
    the end."""
    _require_columns(names, path, REQUIRED, "interaction logs")
    has_rating = "rating" in names
    checks = {"user": IdChecks("user", path), "item": IdChecks("item", path),
              "timestamp": NumberChecks("timestamp", path, as_float=False)}
    if has_rating:
        checks["rating"] = NumberChecks("rating", path, as_float=True)
    writer = None
    rows = 0
    has_lines = False
    bar = None     # shown once the log turns out big (a CSV's size in rows is not known ahead)
    try:
        for table, locate, lines in chunks:
            n = table.num_rows
            user = checks["user"].convert(table.column("user").combine_chunks(), locate)
            item = checks["item"].convert(table.column("item").combine_chunks(), locate)
            ts, ts_int = checks["timestamp"].convert(table.column("timestamp").combine_chunks(), locate)
            rating = checks["rating"].convert(table.column("rating").combine_chunks(), locate)[0] if has_rating \
                else None
            if not any(c.failed for c in checks.values()):
                columns = {"pos": pa.array(np.arange(rows, rows + n, dtype=np.int64)), "u": user, "i": item,
                           # -0.0 and 0.0 are one time (a stable sort keeps them in file order)
                           "ts": pa.array(ts + 0.0 if ts.dtype.kind == "f" else ts)}
                if checks["timestamp"].text:
                    columns["ts_int"] = pa.array(ts_int if ts_int is not None else np.zeros(n, np.int64),
                                                 mask=None if ts_int is not None else np.ones(n, bool))
                if has_rating:
                    columns["rating"] = pa.array(rating)
                if lines is not None:
                    columns["line"] = pa.array(lines.astype(np.int64))
                    has_lines = True
                batch = pa.table(columns)
                if writer is None:   # no dictionaries (ids are many): zstd alone writes fastest and smallest
                    writer = pq.ParquetWriter(out, batch.schema, use_dictionary=False, compression="zstd")
                writer.write_table(batch)
            rows += n
            if bar is None and max(total or 0, rows) >= PROGRESS_MIN_ROWS:
                bar = tqdm(total=total, initial=rows - n, unit=" rows", unit_scale=True, desc=f"check {path.name}",
                           leave=False)
            if bar is not None:
                bar.update(n)
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    for name in checks:
        error = checks[name].error()
        if error is not None:
            raise error
    if rows == 0:
        raise InputError(path, "no rows (no interactions)")
    ts = checks["timestamp"]
    return StagedLog(path, out, rows, has_rating, "ts_int" if ts.text and ts.is_int() else "ts", has_lines)


def _rows_at(start: int) -> Locate:
    return lambda i: {"row": start + i + 1}


# ----------------------------------------------------------------------------- Parquet

def _parquet_chunks(path: Path):
    try:
        parquet = pq.ParquetFile(path, pre_buffer=False)   # pre-buffered reads pile up as it goes
    except Exception as e:   # pyarrow raises several types for a damaged file
        raise unreadable(path, "parquet", e) from None
    if parquet.metadata.num_rows == 0:
        raise InputError(path, "no rows (no interactions)")
    names = parquet.schema_arrow.names

    def chunks():
        start = 0
        try:
            for batch in parquet.iter_batches(batch_size=CHUNK_ROWS, columns=[c for c in LOG_COLUMNS if c in names]):
                yield pa.Table.from_batches([batch]), _rows_at(start), None
                start += batch.num_rows
        except (OSError, pa.ArrowException) as e:
            raise unreadable(path, "parquet", e) from None

    return names, chunks(), parquet.metadata.num_rows


# ----------------------------------------------------------------------------- CSV

class _TypeChanged(Exception):
    """A CSV column's values stopped fitting the type Arrow inferred from the file's first block."""


def _stage_csv(path: Path, out: Path) -> StagedLog:
    """CSV: ids are text; the timestamp and rating columns get the type that Arrow infers from the whole
    file (the first type in ``CSV_INFERENCE_ORDER`` that reads every value). The streaming reader infers
    from the first block only: when a later block does not fit, each inferred column's type is found
    by reading that column alone, trying the types from the first block's on, in order; then the file
    is read again with those types."""
    try:
        first = _open_csv(path, _csv_options())
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as e:
        raise unreadable(path, "csv", e) from None
    names = first.schema.names
    first_types = {name: first.schema.field(name).type for name in ("timestamp", "rating") if name in names}
    if any(name not in names for name in REQUIRED):
        # Reading the whole file came first: a damaged row further down, then no rows, then the column.
        if _csv_scan(path, names) == 0:
            raise InputError(path, "no rows (no interactions)")
        _require_columns(names, path, REQUIRED, "interaction logs")
    try:
        return _check_and_stage(path, out, names, _csv_chunks(path, names, {}))
    except _TypeChanged:
        types = {name: _csv_column_type(path, name, first_type) for name, first_type in first_types.items()}
        return _check_and_stage(path, out, names, _csv_chunks(path, names, {k: t for k, t in types.items() if t}))


def _open_csv(path: Path, options: pacsv.ConvertOptions):
    return pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES), convert_options=options)


def _csv_options(types: dict | None = None, include: list[str] | None = None) -> pacsv.ConvertOptions:
    # Ids are text unless the file says otherwise (see log.read_any_table).
    return pacsv.ConvertOptions(column_types={**{name: pa.string() for name in ID_COLUMNS}, **(types or {})},
                                include_columns=include)


def _csv_chunks(path: Path, names: list[str], types: dict) -> Chunks:
    """The log's columns in chunks; with no ``types`` the timestamp and rating types are inferred from the
    first block, and a later block that does not fit raises ``_TypeChanged``."""
    include = [name for name in LOG_COLUMNS if name in names]
    start = 0
    try:
        reader = _open_csv(path, _csv_options(types, include))
        for batch in reader:
            if batch.num_rows:
                yield pa.Table.from_batches([batch]), _rows_at(start), None
                start += batch.num_rows
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as e:
        if not types and "conversion error" in str(e):
            raise _TypeChanged() from None
        raise unreadable(path, "csv", e) from None


def _csv_scan(path: Path, names: list[str]) -> int:
    """Read the whole file as text (ids) and bytes (the rest), as a whole-file read would have parsed
    it: the number of rows, or the error that reading gave."""
    rows = 0
    try:
        options = _csv_options({name: pa.binary() for name in names if name not in ID_COLUMNS})
        for batch in _open_csv(path, options):
            rows += batch.num_rows
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as e:
        raise unreadable(path, "csv", e) from None
    return rows


def _csv_column_type(path: Path, name: str, first_type: pa.DataType) -> pa.DataType | None:
    """The first type from ``first_type`` on, in Arrow's inference order, that reads all of column ``name``
    (``first_type`` itself when the block that did not fit was another column's)."""
    order = list(CSV_INFERENCE_ORDER)
    later = order[order.index(first_type):] if first_type in order else order
    for candidate in later:
        try:
            for _ in _open_csv(path, _csv_options({name: candidate}, [name])):
                pass
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeDecodeError):
            continue
        return candidate
    return None


# ----------------------------------------------------------------------------- JSONL

def _jsonl_chunks(path: Path, work: Path) -> tuple[list[str], Chunks, int]:
    """JSONL, parsed line by line (every error names its line) in two passes. The first reads each key's
    values (``log.JsonColumn``: their kinds, and the key's errors) into ``WORK/jsonl.parquet``; once the
    whole file has told each key's type, the second gives every chunk that type."""
    columns = {key: JsonColumn(key, path) for key in LOG_COLUMNS}
    seen: dict[str, None] = {}          # the keys met, in the order first met (the order of the checks)
    raw = work / "jsonl.parquet"
    writer = None
    lines: list[int] = []
    values: dict[str, list] = {key: [] for key in LOG_COLUMNS}
    total = 0

    def flush():
        nonlocal writer
        locate = _line_locator(np.asarray(lines))
        parts = {"line": pa.array(lines, pa.int64())}
        for key, column in columns.items():
            table = column.add(values[key], locate)
            parts.update({f"{key}__{part}": table.column(part) for part in JSON_PARTS})
            values[key].clear()
        table = pa.table(parts)
        if writer is None:
            writer = pq.ParquetWriter(raw, table.schema)
        writer.write_table(table)
        lines.clear()

    try:
        for n, obj in _json_objects(path, desc=f"read {path.name}"):
            lines.append(n)
            for key in LOG_COLUMNS:
                values[key].append(obj.get(key))
            if len(seen) < len(LOG_COLUMNS):
                seen.update((key, None) for key in obj if key in columns)
            if len(lines) == JSONL_CHUNK_LINES:
                total += len(lines)
                flush()
        if lines:
            total += len(lines)
            flush()
    finally:
        if writer is not None:
            writer.close()
    if total == 0:
        raise InputError(path, "empty file (no interactions)")
    for key in seen:
        error = columns[key].error()
        if error is not None:
            raise error
    names = list(seen)

    def chunks():
        for batch in pq.ParquetFile(raw, pre_buffer=False).iter_batches(batch_size=JSONL_CHUNK_LINES):
            line = batch.column("line").to_numpy()
            table = pa.table({key: columns[key].emit(pa.table({part: batch.column(f"{key}__{part}")
                                                                for part in JSON_PARTS}))
                              for key in names})
            yield table, _line_locator(line), line

    return names, chunks(), total
