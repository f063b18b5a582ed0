"""``dealrec prepare SRC --out DIR``: turn a data release or an interaction log into a prepared folder.

Two kinds of SRC:

- a folder in the DEALRec release format: ``sequential_{train,valid,test}.txt`` (one line a
  user: ``user item item ...``) and ``items.jsonl`` (``item``, ``title``, optional
  ``categories`` and any other fields);
- an interaction log: one Parquet, CSV or JSONL file with columns ``user``, ``item``,
  ``timestamp`` and optionally ``rating``. It is filtered (minimum rating, iterative k-core)
  and split 8:1:1 by global timestamp, as in the paper.

Both end in the same folder (see ``dealrec.data``): one training sample per user (their
training sequence; its last item the target), the item catalogue, the validation and test
splits and a manifest. Everything is built in a temporary folder and renamed into place when
complete; bad input raises ``InputError`` naming the file, the line (or row) and the field.
"""
from __future__ import annotations

import json
import math
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

from dealrec import __version__
from dealrec.data import (DEFAULT_SHARD_SIZE, EvalSplit, atomic_output_dir, samples_table, sha256_file,
                          write_json_atomic, write_parquet_atomic, write_samples)
from dealrec.errors import DealrecError, InputError

RELEASE_FILES = {"train": "sequential_train.txt", "valid": "sequential_valid.txt",
                 "test": "sequential_test.txt", "items": "items.jsonl"}
LOG_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv",
                ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# Progress bars only where the work is long enough to be worth watching.
PROGRESS_MIN_ROWS = 200_000
_INT_TOKEN = re.compile(r"-?[0-9]+\Z")


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
class Prepared:
    """Everything a prepared folder holds, in memory, before it is written."""

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

def _lines(path: Path):
    """(line number, decoded text) for every line; undecodable bytes are bad input."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
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


def read_sequence_file(path: Path, users_must_have_items: bool) -> list[tuple[int, int, list[int]]]:
    """Parse ``user item item ...`` lines into (line number, user, items); blank lines are skipped."""
    if not path.is_file():
        raise InputError(path, "missing (a release folder needs sequential_{train,valid,test}.txt "
                               "and items.jsonl)")
    rows = []
    seen: dict[int, int] = {}
    size = path.stat().st_size
    with tqdm(total=size, unit="B", unit_scale=True, desc=f"read {path.name}", leave=False,
              disable=size < 50 * PROGRESS_MIN_ROWS) as bar:
        for n, text in _lines(path):
            bar.update(len(text.encode("utf-8")))
            tokens = text.split()
            if not tokens:
                continue
            user = _parse_id(tokens[0], path, n, "user")
            items = [_parse_id(t, path, n, "item", i) for i, t in enumerate(tokens[1:], start=1)]
            if users_must_have_items and not items:
                raise InputError(path, f"user {user} has no items (every training line needs at least one)",
                                 line=n, field="item")
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
    for n, text in _lines(path):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(path, f"bad JSON: {e.msg} (column {e.colno})", line=n) from None
        if not isinstance(obj, dict):
            raise InputError(path, f"expected a JSON object, got {type(obj).__name__}", line=n)
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
    columns = {"item": pa.array(ids, pa.int32()), "title": pa.array(titles, pa.string()),
               "categories": pa.array(categories, pa.list_(pa.string()))}
    for key, values in other.items():
        columns[key] = pa.array([values.get(i) for i in range(len(ids))], pa.string())
    table = pa.table(columns)
    return table.take(pc.sort_indices(table, [("item", "ascending")]))


def read_release(folder: Path) -> Prepared:
    paths = {k: folder / name for k, name in RELEASE_FILES.items()}
    items = read_items_jsonl(paths["items"])
    known = set(items.column("item").to_pylist())

    def check_items(rows, path):
        for n, _, seq in rows:
            for i, item in enumerate(seq, start=1):
                if item not in known:
                    raise InputError(path, f"item {item} is not in {paths['items'].name} "
                                           f"(item {i} on the line)", line=n, field="item")

    train_rows = read_sequence_file(paths["train"], users_must_have_items=True)
    check_items(train_rows, paths["train"])
    user_index = {user: i for i, (_, user, _) in enumerate(train_rows)}
    eval_seqs = {}
    missing_lines = {}
    for split in ("valid", "test"):
        rows = read_sequence_file(paths[split], users_must_have_items=False)
        check_items(rows, paths[split])
        seqs = [np.zeros(0, np.int32) for _ in train_rows]
        for n, user, seq in rows:
            if user not in user_index:
                raise InputError(paths[split], f"user {user} is not in {paths['train'].name} "
                                               f"(every user needs a training sequence)", line=n, field="user")
            seqs[user_index[user]] = np.asarray(seq, np.int32)
        eval_seqs[split] = seqs
        missing_lines[split] = len(train_rows) - len(rows)

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
    return Prepared(
        users=np.array([user for _, user, _ in train_rows], np.int64),
        train=[np.asarray(seq, np.int32) for _, _, seq in train_rows],
        valid=eval_seqs["valid"], test=eval_seqs["test"],
        items=items,
        sources=[paths["train"], paths["valid"], paths["test"], paths["items"]],
        counts={"items_unused": len(known - used),
                "users_without_line": missing_lines},
        notes=notes,
    )


# ============================================================================= interaction logs

def _log_kind(path: Path) -> str:
    kind = LOG_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InputError(path, f"unknown file type {path.suffix!r}: an interaction log is a .parquet, "
                               f".csv or .jsonl file, or a release folder")
    return kind


def read_log_and_split(path: Path, options: PrepareOptions) -> Prepared:  # filled in below
    raise DealrecError(f"{path}: interaction logs are not supported yet")


# ============================================================================= writing

def _count_duplicate_titles(titles: list[str]) -> tuple[int, int]:
    """(items whose title another item shares, distinct titles that are shared)."""
    counts = Counter(titles)
    shared = {t: c for t, c in counts.items() if c > 1}
    return sum(shared.values()), len(shared)


def write_prepared(p: Prepared, out: Path, fmt: str, options: PrepareOptions, overwrite: bool) -> dict:
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
@click.option("--split", "split_text", default="0.8,0.1,0.1", show_default=True,
              help="Logs: train,valid,test shares of the interactions, cut by global timestamp.")
@click.option("--shard-size", type=click.IntRange(min=1), default=DEFAULT_SHARD_SIZE, show_default=True,
              help="Rows per samples shard.")
@click.option("--overwrite", is_flag=True, help="Replace DIR if it exists.")
def prepare_command(src, out, items_file, min_rating, min_user_count, min_item_count, split_text,
                    shard_size, overwrite):
    """Prepare SRC (a DEALRec release folder or an interaction log file) into DIR (--out)."""
    options = PrepareOptions(min_rating=min_rating, min_user_count=min_user_count,
                             min_item_count=min_item_count, split=_parse_split(split_text),
                             items_file=str(items_file) if items_file else None, shard_size=shard_size)
    manifest = prepare(src, out, options, overwrite=overwrite)
    c = manifest["counts"]
    click.echo(f"{out}: {c['samples']:,} samples, {c['items']:,} items, "
               f"{c['eval_users']['valid']:,} valid users, {c['eval_users']['test']:,} test users")
