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

The package, one job a module: ``release`` reads a release folder into a ``PreparedInMemory``
(``common``, with the options and the numbered line reading), which ``write`` writes as a prepared
folder. A log is prepared out of core, in memory that does not grow with it: ``stream`` reads and
checks it chunk by chunk (the column checks and the item catalogue are ``log``'s) into a staging
file, ``split`` filters, splits and renumbers it in DuckDB and writes the folder piece by piece with
``write``'s writers. ``cli`` is the command, on top of the package (the package does not import it).
``prepare`` (here) chooses the path.
"""
from __future__ import annotations

from pathlib import Path

from dealrec_core.errors import DealrecError, InputError
from dealrec_core.paths import check_output
from dealrec.prepare.common import INT32_MAX, INT64_MAX, PROGRESS_MIN_ROWS, PreparedInMemory, PrepareOptions
from dealrec.prepare.log import ID_COLUMNS, LOG_SUFFIXES, read_any_table, read_item_catalogue
from dealrec.prepare.release import RELEASE_FILES, read_items_jsonl, read_release, read_sequence_file
from dealrec.prepare.split import prepare_log
from dealrec.prepare.stream import StagedLog, stage_log
from dealrec.prepare.write import write_prepared

__all__ = ["ID_COLUMNS", "INT32_MAX", "INT64_MAX", "LOG_SUFFIXES", "PROGRESS_MIN_ROWS", "RELEASE_FILES",
           "PrepareOptions", "PreparedInMemory", "StagedLog", "prepare", "prepare_log",
           "read_any_table", "read_item_catalogue", "read_items_jsonl", "read_release", "read_sequence_file",
           "stage_log", "write_prepared"]


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
        return prepare_log(src, out, options, overwrite)
    else:
        raise InputError(src, "no such file or folder")
    return write_prepared(prepared, out, fmt, options, overwrite)
