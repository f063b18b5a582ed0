"""Two sets of TIGER runs on the same data, paired user by user: the difference of their mean metrics with its 95%
interval over users and seeds (``dealrec.paired``, what ``dealrec compare``'s report shows), for runs made outside a
comparison (``dealrec finetune tiger`` folders). A run made before TIGER wrote ``per_user.parquet`` is ranked again
from its checkpoint first (written into its folder, once); each run's re-ranked means are checked against its own
metrics.json, and a run whose figures differ is named (the code that ranks it changed since).

    python benchmarks/paired_runs.py --data CUT --a 'RUNS/T-cut-equal-*' --b 'RUNS/T-cut-random-*' --label cut

Runs of the two sides are paired by the number at the end of their folder names (the seed) where both have it.
Prints one markdown row per comparison: the users counted, then valid and test Recall@10 and NDCG@10.
"""
from __future__ import annotations

import glob
import json
import re
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dealrec.paired import interval_text, paired_difference  # noqa: E402
from dealrec_core.data import write_parquet_atomic  # noqa: E402
from dealrec_core.evaluate import PER_USER_FILE, per_user_table, read_per_user  # noqa: E402
from finetune.tiger_train import tiger_per_user  # noqa: E402

SHOWN = [("valid", "recall@10"), ("valid", "ndcg@10"), ("test", "recall@10"), ("test", "ndcg@10")]


def per_user_of(run: Path, data: str) -> dict:
    path = run / PER_USER_FILE
    if path.exists():
        return read_per_user(path)
    per_user = tiger_per_user(run, data)
    metrics = json.loads((run / "metrics.json").read_text())
    worst = max(abs(per_user[split].means()[m] - metrics[split][m]) for split in ("valid", "test")
                for m in ("recall@10", "ndcg@10"))
    if worst > 1e-9:
        click.echo(f"  {run}: ranked again, its metrics differ from metrics.json by up to {worst:.4f}", err=True)
    write_parquet_atomic(per_user_table(per_user), path)
    return per_user


def seeds_of(pattern: str) -> dict[int, Path]:
    runs = {}
    for folder in sorted(glob.glob(pattern)):
        match = re.search(r"(\d+)$", folder)
        if match and (Path(folder) / "metrics.json").exists():
            runs[int(match.group(1))] = Path(folder)
    if not runs:
        raise click.UsageError(f"no finished run matches {pattern}")
    return runs


@click.command()
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="The prepared data.")
@click.option("--a", "a_pattern", required=True, help="Glob of side a's run folders (name ends in the seed).")
@click.option("--b", "b_pattern", required=True, help="Glob of side b's run folders.")
@click.option("--label", default="a - b")
@click.option("--header/--no-header", default=False)
def main(data: str, a_pattern: str, b_pattern: str, label: str, header: bool) -> None:
    a, b = seeds_of(a_pattern), seeds_of(b_pattern)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise click.UsageError("the two sides share no seed")
    runs_a = {s: per_user_of(a[s], data) for s in seeds}
    runs_b = {s: per_user_of(b[s], data) for s in seeds}
    cells, users = [], {}
    for split, metric in SHOWN:
        result = paired_difference({s: r[split] for s, r in runs_a.items()},
                                   {s: r[split] for s, r in runs_b.items()}, metric)
        users[split] = result["users"]
        cells.append(interval_text(result))
    if header:
        click.echo("| comparison (seeds) | users valid / test | " + " | ".join(f"{s} {m}" for s, m in SHOWN) + " |")
        click.echo("| --- | --- |" + " --- |" * len(SHOWN))
    click.echo(f"| {label} ({', '.join(map(str, seeds))}) | {users['valid']} / {users['test']} | "
               + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
