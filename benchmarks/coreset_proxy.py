"""Validation-only proxy for a coreset, with no TIGER run: the held-out validation Recall@10 of ranking items
by their count among the coreset's targets (TIGER on 1,024 Games samples tracks it: r = 0.91 over the 21 runs
of docs/selection.md, ``benchmarks/target_periods.py``).

For each scores file (``NAME=PATH``, a ``scores.parquet`` with ``sample_id`` and ``influence``; ``effort`` from
``--effort-from`` when the file has none) prints the Spearman correlation of influence with the target's
popularity, and the proxy (mean over seeds 0, 1, 2) of the DEALRec and influence-only coresets with the
influence as it is and negated; then the Spearman correlations of influence between the files.

    python benchmarks/coreset_proxy.py --data PREPARED sasrec=RUN1/scores.parquet bert4rec=RUN2/scores.parquet
"""
from __future__ import annotations

import itertools
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.stats import spearmanr

from dealrec.composition import item_popularity, target_popularity_recall
from dealrec.coreset import select_coreset
from dealrec_core.data import PreparedData
from dealrec_core.evaluate import stopping_split
from finetune.tiger_train import TigerTrainConfig

SEEDS = (0, 1, 2)


def _with_effort(table: pa.Table, effort_from: Path | None) -> pa.Table:
    if "effort" in table.column_names:
        return table
    if effort_from is None:
        raise click.UsageError("a scores file has no effort column: pass --effort-from")
    other = pq.read_table(effort_from, columns=["sample_id", "effort"])
    effort = dict(zip(other.column("sample_id").to_pylist(), other.column("effort").to_pylist()))
    return table.append_column("effort", pa.array([effort[i] for i in table.column("sample_id").to_pylist()]))


@click.command()
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--effort-from", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.argument("scores", nargs=-1, required=True)
def main(data_dir: str, effort_from: Path | None, scores: tuple[str, ...]):
    data = PreparedData(data_dir)
    samples = data.samples()
    table = samples.to_table()
    target_of = dict(zip(table.column("sample_id").to_pylist(), table.column("target").to_pylist()))
    users = {"valid": stopping_split(data.eval_split("valid"), TigerTrainConfig.valid_users)[1]}
    popularity = item_popularity(data)
    influence = {}
    print("| scores | Spearman(influence, target popularity) | dealrec | influence only | dealrec, negated | "
          "influence only, negated |")
    print("| --- | --- | --- | --- | --- | --- |")
    for spec in scores:
        name, _, path = spec.partition("=")
        t = _with_effort(pq.read_table(path), effort_from)
        ids = t.column("sample_id").to_numpy()
        inf = t.column("influence").to_numpy()
        influence[name] = dict(zip(ids.tolist(), inf.tolist()))
        cells = [f"{spearmanr(inf, popularity[[target_of[i] for i in ids.tolist()]])[0]:+.2f}"]
        for sign in (1.0, -1.0):
            signed = t.set_column(t.column_names.index("influence"), "influence", pa.array(sign * inf))
            for method in ("dealrec", "influence"):
                proxy = [target_popularity_recall(
                    np.array([target_of[i] for i in select_coreset(signed, samples, method=method, seed=s)
                              .coreset.column("sample_id").to_pylist()]), data.n_items, users)["valid"]
                    for s in SEEDS]
                cells.append(f"{np.mean(proxy):.4f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    for a, b in itertools.combinations(influence, 2):
        common = sorted(influence[a])
        print(f"Spearman(influence {a}, influence {b}): "
              f"{spearmanr([influence[a][i] for i in common], [influence[b][i] for i in common])[0]:.2f}")


if __name__ == "__main__":
    main()
