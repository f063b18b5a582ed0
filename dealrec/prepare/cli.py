"""``dealrec prepare SRC --out DIR``: the command's options, parsed into ``PrepareOptions``; the work is
``dealrec.prepare.prepare``'s, the one line printed at the end the command's."""
from __future__ import annotations

import math
from pathlib import Path

import click

from dealrec.prepare import prepare
from dealrec.prepare.common import PrepareOptions


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


def prepare_options(items_file, min_rating, min_user_count, min_item_count, split, shard_size) -> PrepareOptions:
    """The command's options as ``PrepareOptions`` (the Python API builds them here too)."""
    return PrepareOptions(min_rating=min_rating, min_user_count=min_user_count, min_item_count=min_item_count,
                          split=split, items_file=str(items_file) if items_file else None, shard_size=shard_size)


@click.command("prepare")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--items", "items_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=PrepareOptions.items_file,
              help="Logs: item catalogue (Parquet/CSV/JSONL with item, title, other text columns).")
@click.option("--min-rating", type=float, default=PrepareOptions.min_rating,
              help="Logs: keep interactions rated at least this.")
@click.option("--min-user-count", type=click.IntRange(min=1), default=PrepareOptions.min_user_count, show_default=True,
              help="Logs: iterative k-core, minimum interactions per user.")
@click.option("--min-item-count", type=click.IntRange(min=1), default=PrepareOptions.min_item_count, show_default=True,
              help="Logs: iterative k-core, minimum interactions per item.")
@click.option("--split", "split", default=",".join(map(str, PrepareOptions.split)), show_default=True,
              callback=lambda ctx, param, value: _parse_split(value),
              help="Logs: train,valid,test shares of the interactions, cut by global timestamp.")
@click.option("--shard-size", type=click.IntRange(min=1), default=PrepareOptions.shard_size, show_default=True,
              help="Rows per samples shard.")
@click.option("--overwrite", is_flag=True, help="Replace DIR if it exists.")
def prepare_command(src, out, items_file, min_rating, min_user_count, min_item_count, split,
                    shard_size, overwrite):
    """Prepare SRC (a DEALRec release folder or an interaction log file) into DIR (--out)."""
    manifest = prepare(src, out, prepare_options(items_file, min_rating, min_user_count, min_item_count, split,
                                                 shard_size), overwrite=overwrite)
    c = manifest["counts"]
    click.echo(f"{out}: {c['samples']:,} samples, {c['items']:,} items, "
               f"{c['eval_users']['valid']:,} valid users, {c['eval_users']['test']:,} test users")
