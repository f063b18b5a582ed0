"""A realistic synthetic interaction log, in the format ``dealrec prepare`` reads, and its item catalogue.

    python benchmarks/synth_log.py --interactions 10000000 --out /data/log.parquet [--format parquet|csv|jsonl]
                                   [--seed 0] [--users U] [--items I] [--items-out FILE | --no-items]

The log has the columns ``user``, ``item``, ``timestamp`` (Unix seconds) and ``rating`` (1.0..5.0);
the catalogue (``--items-out``, by default ``OUT``'s name with ``.items`` before the suffix, in the same
format) has ``item``, ``title`` and ``categories``: pass it to ``dealrec prepare --items``.

What makes it look like a real log (an Amazon review dump, say):

- item popularity is Zipf (``--zipf``, exponent 1.0): a few items take a large share of the interactions;
- user activity is heavy-tailed: every user has at least one interaction, the rest are shared out with
  Pareto weights (``--activity-tail``), so most users have a handful and a few have thousands;
- each user is active over a sub-period of ``--years`` years (a start that is more likely late, as
  activity grows over the years, and a duration that grows with the user's activity), so the global
  time split of ``prepare`` has users with training items only, users that go on into the validation and
  test periods, and users that arrive late (no training item: dropped, as in a real log);
- timestamps come in ``--tick`` seconds (1; 86400 gives day-resolution dates with many ties, like the
  2014 Amazon dumps), ratings lean to 5 stars, and repeated (user, item) pairs happen;
- ids are Amazon-like text (``A1B2C3D4E5F6`` users, ``B0XXXXXXXX`` items) or, with ``--id-type int``,
  scrambled integers; titles are word combinations, a few of them shared by several items (some with
  non-ASCII letters), with one to three category levels.

The log is generated and written in chunks of users (``CHUNK_ROWS`` interactions each), with numpy and
pyarrow's writers: memory holds one chunk and the per-user and per-item arrays (a few bytes a user and
an item), never the whole log. The same arguments give the same bytes (with the same pyarrow).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
SUFFIX = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}
CHUNK_ROWS = 1 << 20                  # interactions per chunk written
START = 1388534400                    # 2014-01-01 00:00:00 UTC
RATING_P = np.array([0.06, 0.05, 0.09, 0.20, 0.60])
ALPHABET = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)

ADJECTIVES = ["Super", "Mega", "Ultimate", "Classic", "Deluxe", "Legendary", "Tiny", "Cosmic", "Dark", "Golden",
              "Wild", "Silent", "Rapid", "Ancient", "Neon", "Royal", "Frozen", "Crimson", "Lucky", "Hidden",
              "Café", "Über", "Электро", "東京"]
NOUNS = ["Racer", "Quest", "Kingdom", "Legends", "Arena", "Tactics", "Odyssey", "Fighter", "Puzzle", "Island",
         "Dungeon", "Galaxy", "Party", "Saga", "Chronicles", "Strike", "Garden", "Empire", "Pilot", "Detective",
         "Controller", "Headset", "Keyboard", "Charger"]
EDITIONS = ["", " 2", " 3", " HD", " Remastered", " Collector's Edition", " for PC", " (Import)"]
CATEGORY_TREE = {
    "Video Games": {"PC": ["Games", "Accessories", "Keyboards"], "PlayStation 4": ["Games", "Controllers"],
                    "Nintendo Switch": ["Games", "Cases"], "Xbox One": ["Games", "Headsets"], "Retro Gaming": []},
    "Electronics": {"Headphones": ["Over-Ear", "Earbuds"], "Chargers": []},
    "Toys & Games": {"Puzzles": [], "Board Games": ["Strategy", "Party"]},
}


def category_paths() -> list[list[str]]:
    paths = []
    for top, subs in CATEGORY_TREE.items():
        for sub, leaves in subs.items():
            paths.append([top, sub])
            paths += [[top, sub, leaf] for leaf in leaves]
    return paths


def text_ids(index: np.ndarray, prefix: str, width: int, salt: int) -> pa.Array:
    """Distinct Amazon-like ids, ``prefix`` + ``width`` base-36 characters, for distinct ``index`` values
    below 36^6: the first six characters are a bijection of 0..36^6-1 (multiply by a number prime to
    36, add a salt), the rest a hash of them."""
    modulus = np.uint64(36 ** 6)
    x = (index.astype(np.uint64) * np.uint64(1_327_217_885) + np.uint64(salt)) % modulus
    y = (x * np.uint64(2_654_435_761) + np.uint64(salt)) % np.uint64(36 ** (width - 6))
    digits = np.empty((len(x), width), np.uint8)
    for k in range(width - 1, -1, -1):
        source = x if k < 6 else y
        digits[:, k] = ALPHABET[(source % np.uint64(36)).astype(np.int64)]
        source //= np.uint64(36)
    raw = np.frombuffer(prefix.encode(), np.uint8)
    chars = np.concatenate([np.broadcast_to(raw, (len(digits), len(raw))), digits], axis=1)
    return pa.array(np.ascontiguousarray(chars).reshape(-1).view(f"S{len(raw) + width}")).cast(pa.string())


def int_ids(index: np.ndarray, salt: int) -> pa.Array:
    """Distinct scrambled positive integer ids (a bijection of 0..2^40-1, shifted past 0)."""
    modulus = 1 << 40
    return pa.array((index.astype(np.int64) * 0x9E3779B1 + salt) % modulus + 1)


class LogSpec:
    """Everything per user and per item that the chunks share: counts, activity windows, popularity."""

    def __init__(self, interactions: int, users: int, items: int, seed: int, zipf: float, tail: float,
                 years: float, tick: int):
        if interactions < 1 or users < 1 or items < 1:
            raise SystemExit("--interactions, --users and --items must be at least 1")
        users = min(users, interactions)      # every user has an interaction
        self.interactions, self.n_users, self.n_items, self.seed, self.tick = interactions, users, items, seed, tick
        rng = np.random.default_rng([seed, 0])
        weights = rng.pareto(tail, users) + 1.0
        self.counts = 1 + rng.multinomial(interactions - users, weights / weights.sum()).astype(np.int64)
        span = years * 365.25 * 86400
        # Activity grows over the years: the start time's density rises linearly (sqrt of a uniform).
        self.start = START + span * np.sqrt(rng.random(users))
        # Busier users stay longer: a log-normal duration scaled by the square root of the activity.
        self.duration = np.minimum(rng.lognormal(np.log(30 * 86400), 1.0, users) * np.sqrt(self.counts),
                                   START + span - self.start)
        ranks = np.arange(1, items + 1, dtype=np.float64)
        cdf = np.cumsum(ranks ** -zipf)
        self.cdf = cdf / cdf[-1]
        self.popular = rng.permutation(items)          # popularity rank -> item index
        self.ends = np.cumsum(self.counts)

    def chunks(self):
        """(first user, last user + 1) per chunk of about CHUNK_ROWS interactions."""
        first = 0
        while first < self.n_users:
            last = int(np.searchsorted(self.ends, (self.ends[first - 1] if first else 0) + CHUNK_ROWS, "right"))
            last = max(last, first + 1)
            yield first, min(last, self.n_users)
            first = last

    def chunk(self, index: int, first: int, last: int, id_type: str) -> pa.Table:
        rng = np.random.default_rng([self.seed, 1, index])
        counts = self.counts[first:last]
        user = np.repeat(np.arange(first, last), counts)
        n = len(user)
        item = self.popular[np.minimum(np.searchsorted(self.cdf, rng.random(n), "right"), self.n_items - 1)]
        t = self.start[user] + rng.random(n) * self.duration[user]
        timestamp = (t // self.tick * self.tick).astype(np.int64)
        rating = (rng.choice(5, n, p=RATING_P) + 1).astype(np.float64)
        users, items = (text_ids(user, "A", 13, 7), text_ids(item, "B0", 8, 11)) if id_type == "str" \
            else (int_ids(user, 7), int_ids(item, 11))
        return pa.table({"user": users, "item": items, "timestamp": pa.array(timestamp),
                         "rating": pa.array(rating)})

    def catalogue_chunks(self, id_type: str):
        """The item catalogue in chunks: ``item``, ``title`` (a few shared), ``categories``."""
        paths = category_paths()
        path_array = pa.array(paths, pa.list_(pa.string()))
        words = [pa.array(w) for w in (ADJECTIVES, NOUNS, EDITIONS)]
        for index, first in enumerate(range(0, self.n_items, CHUNK_ROWS)):
            rng = np.random.default_rng([self.seed, 2, index])
            idx = np.arange(first, min(first + CHUNK_ROWS, self.n_items))
            n = len(idx)
            # A title is a function of a key, the item's own index; about 4% of the items take another
            # item's key, so share its title (re-releases, platform versions).
            key = np.where(rng.random(n) < 0.04, rng.integers(0, self.n_items, n), idx)
            title = pc.binary_join_element_wise(
                words[0].take(pa.array(key * 7919 % len(ADJECTIVES))),
                words[1].take(pa.array(key * 104729 // 7 % len(NOUNS))),
                pc.cast(pa.array(key), pa.string()), " ")       # "Super Racer 1234"
            title = pc.binary_join_element_wise(title, words[2].take(pa.array(key * 31 // 5 % len(EDITIONS))), "")
            categories = path_array.take(pa.array(rng.integers(0, len(paths), n)))
            item = text_ids(idx, "B0", 8, 11) if id_type == "str" else int_ids(idx, 11)
            yield pa.table({"item": item, "title": title, "categories": categories})


class Writer:
    """Chunks of a table into one Parquet, CSV or JSONL file (JSONL built with Arrow's string kernels)."""

    def __init__(self, path: Path, fmt: str):
        self.path, self.fmt, self.writer, self.file = path, fmt, None, None

    def write(self, table: pa.Table) -> None:
        if self.fmt == "parquet":
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.path, table.schema)
            self.writer.write_table(table)
        elif self.fmt == "csv":
            if "categories" in table.column_names:     # a CSV cell holds a category list as JSON text
                table = table.set_column(table.column_names.index("categories"), "categories",
                                         _json_lists(table.column("categories").combine_chunks()))
            if self.writer is None:
                self.writer = pacsv.CSVWriter(self.path, table.schema)
            self.writer.write_table(table)
        else:
            if self.file is None:
                self.file = open(self.path, "wb")
            self.file.write(_jsonl(table))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()


def _json_text(arr: pa.Array) -> pa.Array:
    """JSON text of each value: strings quoted (the generator's strings need no escapes), numbers as is."""
    if pa.types.is_string(arr.type):
        return pc.binary_join_element_wise('"', arr, '"', "")
    if pa.types.is_list(arr.type):
        return _json_lists(arr)
    return pc.cast(arr, pa.string())


def _json_lists(arr: pa.Array) -> pa.Array:
    """``["a", "b"]`` for each list of strings: ``json.dumps`` of each distinct list (they are few), taken
    per row through a dictionary of the lists joined with a separator that no category holds."""
    encoded = pc.dictionary_encode(pc.binary_join(arr, "\x1f"))
    texts = [json.dumps(key.split("\x1f") if key else [], ensure_ascii=False)
             for key in encoded.dictionary.to_pylist()]
    return pa.array(texts, pa.string()).take(encoded.indices)


def _jsonl(table: pa.Table) -> bytes:
    parts = []
    for k, name in enumerate(table.column_names):
        parts += [("{" if k == 0 else ", ") + json.dumps(name) + ": ",
                  _json_text(table.column(name).combine_chunks())]
    lines = pc.binary_join_element_wise(*parts, "}\n", "")
    offsets = np.frombuffer(lines.buffers()[1], np.int32)[lines.offset:lines.offset + len(lines) + 1]
    return bytes(memoryview(lines.buffers()[2])[offsets[0]:offsets[-1]])


def default_items_path(out: Path, fmt: str) -> Path:
    return out.with_name(out.name[:-len(out.suffix)] + ".items" + SUFFIX[fmt]) if out.suffix \
        else out.with_name(out.name + ".items" + SUFFIX[fmt])


def generate(interactions: int, out: Path, fmt: str | None = None, seed: int = 0, users: int | None = None,
             items: int | None = None, items_out: Path | None = None, write_items: bool = True, zipf: float = 1.0,
             tail: float = 1.2, years: float = 4.0, tick: int = 1, id_type: str = "str") -> dict:
    """Write the log (and the catalogue); return what was written."""
    out = Path(out)
    fmt = fmt or FORMATS.get(out.suffix.lower(), "parquet")
    users = users or max(1, interactions // 10)
    items = items or max(1, interactions // 40)
    if id_type == "str" and max(users, items) > 36 ** 6:
        raise SystemExit(f"text ids are distinct for up to {36 ** 6:,} users and items: use --id-type int")
    spec = LogSpec(interactions, users, items, seed, zipf, tail, years, tick)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = Writer(out, fmt)
    try:
        for index, (first, last) in enumerate(spec.chunks()):
            writer.write(spec.chunk(index, first, last, id_type))
    finally:
        writer.close()
    result = {"log": str(out), "format": fmt, "interactions": int(spec.counts.sum()), "users": spec.n_users,
              "items": spec.n_items, "seed": seed}
    if write_items:
        items_out = Path(items_out) if items_out else default_items_path(out, fmt)
        item_fmt = FORMATS.get(items_out.suffix.lower(), fmt)
        writer = Writer(items_out, item_fmt)
        try:
            for table in spec.catalogue_chunks(id_type):
                writer.write(table)
        finally:
            writer.close()
        result["items_file"] = str(items_out)
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interactions", type=int, required=True, help="Rows of the log.")
    ap.add_argument("--out", type=Path, required=True, help="The log file.")
    ap.add_argument("--format", choices=sorted(SUFFIX), default=None,
                    help="parquet, csv or jsonl (default: from OUT's suffix, else parquet).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--users", type=int, default=None, help="Users (default: interactions / 10).")
    ap.add_argument("--items", type=int, default=None, help="Items (default: interactions / 40).")
    ap.add_argument("--items-out", type=Path, default=None,
                    help="The item catalogue (default: OUT with .items before its suffix).")
    ap.add_argument("--no-items", action="store_true", help="Write no item catalogue.")
    ap.add_argument("--zipf", type=float, default=1.0, help="Exponent of the item popularity.")
    ap.add_argument("--activity-tail", type=float, default=1.2,
                    help="Pareto index of the user activity (smaller: heavier tail).")
    ap.add_argument("--years", type=float, default=4.0, help="Time span of the log, from 2014-01-01.")
    ap.add_argument("--tick", type=int, default=1, help="Timestamp resolution in seconds (86400: days).")
    ap.add_argument("--id-type", choices=("str", "int"), default="str")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    result = generate(args.interactions, args.out, args.format, args.seed, args.users, args.items, args.items_out,
                      not args.no_items, args.zipf, args.activity_tail, args.years, args.tick, args.id_type)
    result["seconds"] = round(time.perf_counter() - started, 1)
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
