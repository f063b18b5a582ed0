"""What the readers and the writer of ``dealrec prepare`` share: the options, the folder in memory
(``PreparedInMemory``), the id bounds, and reading a text file line by line with numbered lines
(so that every error names its line)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from dealrec_core.data import DEFAULT_SHARD_SIZE
from dealrec_core.errors import InputError

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# Progress bars only where the work is long enough to be worth watching.
PROGRESS_MIN_ROWS = 200_000
# The options only an interaction log takes (PrepareOptions' field: option), in the order an error names them.
LOG_ONLY_OPTIONS = {"min_rating": "--min-rating", "min_user_count": "--min-user-count",
                    "min_item_count": "--min-item-count", "split": "--split", "items_file": "--items"}


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
        """The log-only options that differ from their defaults (a release folder refuses them)."""
        default = PrepareOptions()

        def value(options, name):
            v = getattr(options, name)
            return tuple(v) if name == "split" else v

        return [option for name, option in LOG_ONLY_OPTIONS.items() if value(self, name) != value(default, name)]


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
