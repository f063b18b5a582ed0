"""Most-popular ranking counted over the random 1,024-sample training sets of bench_tiger.py.

Shows why TIGER trains on the samples only by default: under the global time split a sample's
target is its most recent item, and popularity over targets ranks the test period better than
popularity over every item of the sequences. Same sets as bench_tiger.py (seeded choice).

    python benchmarks/tiger_popularity.py --data /work/data/games-prepared [--split valid|test]
"""
from __future__ import annotations

import click
import numpy as np

from dealrec_core.data import PreparedData
from dealrec_core.evaluate import evaluate_scorer, popularity_scorer


@click.command()
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--n", default=1024, show_default=True)
@click.option("--split", type=click.Choice(["valid", "test"]), default="valid", show_default=True,
              help="The period to rank (choose defaults on valid; test is for reporting).")
def main(data_dir, seeds, n, split):
    data = PreparedData(data_dir)
    samples, test, n_items = data.samples(), data.eval_split(split), data.n_items
    rows = {"the samples' targets": [], "every item of the samples' sequences": []}
    seeds = [int(s) for s in seeds.split(",") if s]
    for seed in seeds:
        sub = samples.subset(np.sort(np.random.default_rng(seed).choice(len(samples), n, replace=False)))
        for name, seqs in (("the samples' targets", [np.asarray(sub.target)]),
                           ("every item of the samples' sequences", sub.sequences())):
            rows[name].append(evaluate_scorer(popularity_scorer(seqs, n_items), test, n_items)["recall@10"])
    print("| popularity counted over | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
    print("| --- |" + " --- |" * (len(seeds) + 1))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {np.mean(values):.4f} |")


if __name__ == "__main__":
    main()
