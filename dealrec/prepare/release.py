"""The DEALRec release format: ``sequential_{train,valid,test}.txt`` (one line a user: ``user item
item ...``) and ``items.jsonl`` (``item``, ``title``, optional ``categories`` and any other fields),
read into a ``PreparedInMemory``; a bad line is an ``InputError`` naming the file, the line and the
field."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dealrec_core.data import check_item_ids
from dealrec_core.errors import InputError
from dealrec.prepare.common import INT32_MAX, INT64_MAX, PreparedInMemory, _json_objects, _lines

RELEASE_FILES = {"train": "sequential_train.txt", "valid": "sequential_valid.txt",
                 "test": "sequential_test.txt", "items": "items.jsonl"}
_INT_TOKEN = re.compile(r"-?[0-9]+\Z")


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
