"""The ground floor: samples table, item catalogue and evaluation splits (read, validate, write).

Layout of a prepared data folder (written by ``dealrec prepare``)::

    DIR/samples/part-00000.parquet ...   sample_id int64, user int64, history list<int32>, target int32
    DIR/items.parquet                    item int32, title string, [categories list<string>, ...]
    DIR/eval/valid.parquet               user int64, history list<int32>, targets list<int32>
    DIR/eval/test.parquet                same; history = training + validation items
    DIR/manifest.json                    source hashes, counts, options

Item id 0 is padding; real items are 1..n_items. Every model sizes its item tables
``n_items + 1``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dealrec_core.errors import DealrecError, InputError
from dealrec_core.paths import remove_stale_temps, temp_file_name, temp_prefix

SAMPLES_SCHEMA = pa.schema([
    ("sample_id", pa.int64()),
    ("user", pa.int64()),
    ("history", pa.list_(pa.int32())),
    ("target", pa.int32()),
])
EVAL_SCHEMA = pa.schema([
    ("user", pa.int64()),
    ("history", pa.list_(pa.int32())),
    ("targets", pa.list_(pa.int32())),
])
SPLITS = ("valid", "test")
DEFAULT_SHARD_SIZE = 16384


# ----------------------------------------------------------------------------- files

def stable_hash(obj: Any) -> str:
    """sha256 of a JSON rendering with sorted keys: the same parameters give the same key."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def temporary_file(path: str | Path, suffix: str = "") -> Path:
    """This process's temporary name beside ``path`` (``.NAME.tmp-PID@HOST[suffix]``), after removing the
    temporaries of ``path`` that a killed run left (``dealrec_core.paths.remove_stale_temps``).

    For a writer that cannot run inside ``atomic_file``'s block (a shard written by one function and
    committed by another); ``commit_file`` renames it into place. Everything else uses ``atomic_file``.
    """
    path = Path(path)
    remove_stale_temps(path)
    return temp_file_name(path, suffix)


def commit_file(tmp: str | Path, path: str | Path) -> None:
    """Rename the complete temporary ``tmp`` (from ``temporary_file``) to ``path``, in one step."""
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_file(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary name beside ``path``; rename it to ``path`` only if the block succeeds.

    The one way a file is written in this project: the block hands the name to any writer that takes
    a path (``save_file(state, str(tmp))``, ``np.save(tmp, a)``, ``fig.savefig(tmp)``; ``suffix`` keeps
    the extension a writer adds or reads, e.g. ``".npy"``, ``".png"``). On any error the temporary
    file is removed and ``path`` is left as it was (absent, or the previous complete file); a
    file-system error without a file name is given ``path``'s. Temporaries of a run that was killed
    are removed first (``dealrec_core.paths.remove_stale_temps``).
    """
    path = Path(path)
    tmp = temporary_file(path, suffix)
    try:
        yield tmp
        commit_file(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if _file_system_error(e):
            e.filename = str(path)
        raise


def _file_system_error(e: BaseException) -> bool:
    """An OSError from the file system with no file name: the output's path is named for it. Other OSErrors
    (a library's ``OSError("no weights found in ...")``: no errno) keep their own message untouched."""
    return isinstance(e, OSError) and e.filename is None and e.errno is not None


def write_json_atomic(path: str | Path, obj) -> None:
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(path: str | Path, text: str) -> None:
    """UTF-8 text, ``\\n`` line ends, under a temporary name renamed into place."""
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_parquet_atomic(table: pa.Table, path: str | Path) -> None:
    """Write to a temporary name beside ``path`` and rename: readers never see half a file."""
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; move it to ``out`` only if the block succeeds.

    A crash or an error leaves ``out`` as it was (absent, or the previous complete result), and no
    temporary folder behind; one left by a killed run is removed by the next run that writes ``out``.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise DealrecError(f"{out}: already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out), dir=out.parent))
    try:
        yield tmp
        if out.exists() or out.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(out, "old"), dir=out.parent))
            os.replace(out, old / "x")
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old / "x", out)   # put the previous result back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _file_system_error(e):
            e.filename = str(out)
        raise


# ----------------------------------------------------------------------------- samples

def samples_table(sample_id, user, histories: Sequence[Sequence[int]], target) -> pa.Table:
    return pa.table({
        "sample_id": pa.array(np.asarray(sample_id, dtype=np.int64)),
        "user": pa.array(np.asarray(user, dtype=np.int64)),
        "history": pa.array([np.asarray(h, dtype=np.int32) for h in histories],
                            type=pa.list_(pa.int32())),
        "target": pa.array(np.asarray(target, dtype=np.int32)),
    }, schema=SAMPLES_SCHEMA)


def write_samples(table: pa.Table, out_dir: str | Path,
                  shard_size: int = DEFAULT_SHARD_SIZE) -> list[Path]:
    """Write the samples table as Parquet shards ``part-NNNNN.parquet`` of ``shard_size`` rows."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = table.cast(SAMPLES_SCHEMA)
    paths = []
    n = table.num_rows
    for i, start in enumerate(range(0, max(n, 1), shard_size)):
        path = out_dir / f"part-{i:05d}.parquet"
        write_parquet_atomic(table.slice(start, shard_size), path)
        paths.append(path)
    return paths


def shard_paths(path: str | Path) -> list[Path]:
    """The Parquet files behind ``path``: the file itself, or a folder's ``*.parquet`` in name order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise InputError(path, "no .parquet files in this folder")
        return files
    if not path.exists():
        raise InputError(path, "no such file or folder")
    return [path]


def _read_parquet(read, p: Path, what: str):
    """``read(p)`` (a table, its metadata...), a corrupt file refused in one line naming it."""
    try:
        return read(p)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise InputError(p, f"not a readable Parquet {what}: {str(e).splitlines()[0]}") from None


def _require_columns(p: Path, names: Sequence[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in names]
    if missing:
        raise InputError(p, f"missing column{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(missing)} (has: {', '.join(names)})", field=missing[0])


def _require_unique_ids(sample_id: np.ndarray, source) -> None:
    if len(np.unique(sample_id)) != len(sample_id):
        raise InputError(source, "sample_id values are not unique", field="sample_id")


def read_table(path: str | Path, required: Sequence[str] = (), what: str = "table") -> pa.Table:
    """Read one Parquet file or a folder of shards, checking that ``required`` columns exist."""
    tables = []
    for p in shard_paths(path):
        t = _read_parquet(pq.read_table, p, what)
        _require_columns(p, t.column_names, required)
        tables.append(t)
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="default")


@dataclass
class Samples:
    """Training samples in memory: ragged histories as Python lists of int32 arrays."""

    sample_id: np.ndarray  # int64 [N]
    user: np.ndarray       # int64 [N]
    history: list          # list of np.int32 arrays, oldest first
    target: np.ndarray     # int32 [N]

    def __len__(self) -> int:
        return len(self.target)

    def subset(self, idx) -> "Samples":
        idx = np.asarray(idx)
        return Samples(self.sample_id[idx], self.user[idx],
                       [self.history[i] for i in idx], self.target[idx])

    def sequences(self) -> list:
        """Each sample's full sequence: history followed by target."""
        return [np.append(h, np.int32(t)) for h, t in zip(self.history, self.target)]

    @classmethod
    def from_table(cls, table: pa.Table, source: str | Path = "<table>") -> "Samples":
        for col in ("history", "target"):
            if col not in table.column_names:
                raise InputError(source, f"missing column {col}", field=col)
        n = table.num_rows
        if "sample_id" in table.column_names:
            sample_id = table.column("sample_id").to_numpy().astype(np.int64)
        else:
            sample_id = np.arange(n, dtype=np.int64)
        if "user" in table.column_names:
            user = table.column("user").to_numpy().astype(np.int64)
        else:
            user = sample_id.copy()
        target = table.column("target").to_numpy()
        if target.dtype.kind not in "iu":
            raise InputError(source, f"target must be integer item ids, got {table.schema.field('target').type}",
                             field="target")
        hist_col = table.column("history").combine_chunks()
        if not pa.types.is_list(hist_col.type) and not pa.types.is_large_list(hist_col.type):
            raise InputError(source, f"history must be a list of item ids, got {hist_col.type}",
                             field="history")
        offsets = hist_col.offsets.to_numpy()
        values = hist_col.flatten().to_numpy(zero_copy_only=False)
        if len(values) and values.dtype.kind not in "iu":
            raise InputError(source, "history must hold integer item ids", field="history")
        values = values.astype(np.int32)
        history = [values[offsets[i]:offsets[i + 1]] for i in range(n)]
        _require_unique_ids(sample_id, source)
        return cls(sample_id, user, history, target.astype(np.int32))

    def to_table(self) -> pa.Table:
        return samples_table(self.sample_id, self.user, self.history, self.target)


class SampleRows:
    """A samples table on disk (one Parquet file or a folder of shards), read by rows, never whole.

    What a scoring worker needs (``rows(start, stop)``: its shard), what the driver needs (``subset(idx)``:
    the Hessian pool; ``column(name)``: one column, for counts and checks) at a memory that grows with the
    rows asked for, not with the table. Row ``i`` is the ``i``-th row of the files in name order, as
    ``read_table`` concatenates them. The files' schemas are checked when it is made, with the messages of
    ``Samples.from_table`` (no data is read for that).
    """

    def __init__(self, path: str | Path, required: Sequence[str] = ("sample_id", "history", "target")):
        self.path = Path(path)
        self.files = shard_paths(path)
        counts = []
        for p in self.files:
            meta = _read_parquet(pq.read_metadata, p, "samples table")
            schema = meta.schema.to_arrow_schema()
            _require_columns(p, schema.names, required)
            Samples.from_table(schema.empty_table(), p)   # the column types, by the one reader's rules
            counts.append(meta.num_rows)
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._last: tuple[int, pa.Table] | None = None   # the file read last (consecutive shards share one)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _file(self, f: int) -> pa.Table:
        if self._last is None or self._last[0] != f:
            self._last = (f, pq.read_table(self.files[f]))
        return self._last[1]

    def _table(self, idx: np.ndarray) -> pa.Table:
        """The rows ``idx`` (ascending) as one table, reading only the files that hold them."""
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        parts = []
        for f in np.unique(which):
            local = idx[which == f] - self.offsets[f]
            parts.append(self._file(int(f)).take(pa.array(local)))
        if not parts:
            return pq.read_schema(self.files[0]).empty_table()
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts, promote_options="default")

    def table(self, idx) -> pa.Table:
        """The rows ``idx`` (any order), every column, as one table."""
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"{self.path}: rows {idx.min()}..{idx.max()} outside 0..{len(self) - 1}")
        order = np.argsort(idx, kind="stable")
        table = self._table(idx[order])
        if not np.array_equal(order, np.arange(len(idx))):   # rows asked for out of order: give them so
            table = table.take(pa.array(np.argsort(order, kind="stable")))
        return table

    def subset(self, idx) -> Samples:
        return Samples.from_table(self.table(idx), self.path)

    def rows(self, start: int, stop: int) -> Samples:
        return self.subset(np.arange(start, stop, dtype=np.int64))

    def column(self, name: str) -> pa.ChunkedArray:
        """One column of every row, file by file (the only column read)."""
        return pa.chunked_array([pq.read_table(p, columns=[name]).column(name).combine_chunks()
                                 for p in self.files])

    def history_lengths(self) -> np.ndarray:
        import pyarrow.compute as pc
        return pc.list_value_length(self.column("history")).to_numpy(zero_copy_only=False).astype(np.int64)

    def check_unique_ids(self) -> np.ndarray:
        """Every sample_id, checked unique (the check ``Samples.from_table`` makes on a whole table)."""
        sample_id = self.column("sample_id").to_numpy().astype(np.int64)
        _require_unique_ids(sample_id, self.path)
        return sample_id


def load_samples(path: str | Path, n_items: int | None = None) -> Samples:
    """Load a samples table or a coreset (any Parquet with ``history`` and ``target``)."""
    table = read_table(path, required=("history", "target"), what="samples table")
    samples = Samples.from_table(table, path)
    if n_items is not None:
        check_item_range(samples, n_items, path)
    return samples


# Item tables are sized by the largest item id (ids are kept as the release gives them), so a sparse id
# (2147483647 among 40 items) would ask for a table of 2**31 rows. Ids up to twice the number of items
# plus this slack are accepted; beyond that the items must be renumbered.
ITEM_ID_SLACK = 100_000


def max_item_id(n_listed: int) -> int:
    """The largest item id accepted for a catalogue of ``n_listed`` items."""
    return 2 * n_listed + ITEM_ID_SLACK


def check_item_ids(largest: int, n_listed: int, source, **where) -> None:
    """Refuse a catalogue whose largest id is far beyond its number of items (before any table is sized)."""
    if largest > max_item_id(n_listed):
        raise InputError(source, f"item id {largest} is far beyond the {n_listed:,} items listed: ids may go up "
                                 f"to 2 x items + {ITEM_ID_SLACK:,} = {max_item_id(n_listed):,}, as item tables "
                                 f"are sized by the largest id; renumber the items 1..n", field="item", **where)


def check_item_range(samples: Samples, n_items: int, source) -> None:
    bad_t = np.flatnonzero((samples.target < 1) | (samples.target > n_items))
    if len(bad_t):
        i = int(bad_t[0])
        raise InputError(source, f"target item {int(samples.target[i])} is not in the item catalogue "
                                 f"(1..{n_items})", row=i + 1, field="target")
    for i, h in enumerate(samples.history):
        if len(h) and (h.min() < 1 or h.max() > n_items):
            bad = int(h[(h < 1) | (h > n_items)][0])
            raise InputError(source, f"history item {bad} is not in the item catalogue (1..{n_items})",
                             row=i + 1, field="history")


# ----------------------------------------------------------------------------- eval splits

@dataclass
class EvalSplit:
    """Users to evaluate: their history (items not to rank) and their ground-truth list."""

    user: np.ndarray   # int64 [U]
    history: list      # list of np.int32 arrays
    targets: list      # list of np.int32 arrays, non-empty

    def __len__(self) -> int:
        return len(self.user)

    def subset(self, idx) -> "EvalSplit":
        idx = np.asarray(idx)
        return EvalSplit(self.user[idx], [self.history[i] for i in idx], [self.targets[i] for i in idx])

    def to_table(self) -> pa.Table:
        return pa.table({
            "user": pa.array(np.asarray(self.user, dtype=np.int64)),
            "history": pa.array([np.asarray(h, dtype=np.int32) for h in self.history],
                                type=pa.list_(pa.int32())),
            "targets": pa.array([np.asarray(t, dtype=np.int32) for t in self.targets],
                                type=pa.list_(pa.int32())),
        }, schema=EVAL_SCHEMA)

    @classmethod
    def from_table(cls, table: pa.Table, source="<table>") -> "EvalSplit":
        def ragged(col):
            arr = table.column(col).combine_chunks()
            off = arr.offsets.to_numpy()
            val = arr.flatten().to_numpy(zero_copy_only=False).astype(np.int32)
            return [val[off[i]:off[i + 1]] for i in range(table.num_rows)]
        for col in ("user", "history", "targets"):
            if col not in table.column_names:
                raise InputError(source, f"missing column {col}", field=col)
        return cls(table.column("user").to_numpy().astype(np.int64), ragged("history"), ragged("targets"))


# ----------------------------------------------------------------------------- prepared data

class PreparedData:
    """A folder written by ``dealrec prepare``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / "items.parquet").exists() or not (self.root / "samples").is_dir():
            raise DealrecError(f"{self.root}: not a prepared data folder (no items.parquet or samples/; "
                               f"run 'dealrec prepare' first)")
        self._items = None
        self._n_items = None

    @property
    def samples_dir(self) -> Path:
        return self.root / "samples"

    def shard_paths(self) -> list[Path]:
        return shard_paths(self.samples_dir)

    def samples(self) -> Samples:
        return load_samples(self.samples_dir)

    @property
    def items(self) -> pa.Table:
        if self._items is None:
            self._items = read_table(self.root / "items.parquet", required=("item", "title"),
                                     what="item catalogue")
        return self._items

    @property
    def n_items(self) -> int:
        if self._n_items is None:
            ids = self.items.column("item").to_numpy()
            if len(ids):
                # a folder prepared before this check: refuse before any table of n_items + 1 rows is made
                check_item_ids(int(np.max(ids)), len(ids), self.root / "items.parquet", row=int(np.argmax(ids)) + 1)
            self._n_items = int(np.max(ids)) if len(ids) else 0
        return self._n_items

    def titles(self) -> list[str]:
        """Title of every item id 0..n_items (index 0, padding, is the empty string)."""
        out = [""] * (self.n_items + 1)
        for item, title in zip(self.items.column("item").to_pylist(), self.items.column("title").to_pylist()):
            out[item] = title or ""
        return out

    def eval_split(self, split: str) -> EvalSplit:
        if split not in SPLITS:
            raise DealrecError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
        path = self.root / "eval" / f"{split}.parquet"
        return EvalSplit.from_table(read_table(path, what="evaluation split"), path)

    def content_digest(self) -> str:
        """sha256 over every file a model trained or evaluated on this folder reads (samples shards, items,
        evaluation splits), by content: the key of anything derived from the data (surrogate, runs)."""

        files = [*self.shard_paths(), self.root / "items.parquet",
                 *(self.root / "eval" / f"{s}.parquet" for s in SPLITS)]
        return stable_hash({p.relative_to(self.root).as_posix(): sha256_file(p) for p in files if p.exists()})

    def manifest(self) -> dict:
        path = self.root / "manifest.json"
        return json.loads(path.read_text()) if path.exists() else {}
