"""Do a comparison's coresets' targets stay popular from the validation period to the test period?

Reads a finished ``dealrec compare`` REPORT and prints, per method (mean over its seeds), how many times
each coreset target occurs on average among all validation ground truths and among all test ground
truths, then the Pearson correlation over the runs between TIGER's Recall@10 and the coreset's targets'
popularity Recall@10 (the report's composition column), on valid and on test.

    python benchmarks/target_periods.py REPORT
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from dealrec_core.data import PreparedData, read_table


def period_counts(split, n_items: int) -> np.ndarray:
    """Occurrences of each item among a split's ground truths (index = item id)."""
    items = [np.asarray(t, dtype=np.int64) for t in split.targets]
    items = np.concatenate(items) if items else np.zeros(0, np.int64)
    return np.bincount(items[items > 0], minlength=n_items + 1)


@click.command()
@click.argument("report_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def main(report_dir: Path):
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    data = PreparedData(report["prepared"])
    counts = {split: period_counts(data.eval_split(split), data.n_items) for split in ("valid", "test")}
    rows = {r["method"]: r for r in report["rows"] if r.get("per_seed")}
    comp = report["composition"]["coresets"]
    print("| training set | mean validation-period count of a target | mean test-period count |")
    print("| --- | --- | --- |")
    pairs = {"valid": [], "test": []}
    for method in report["methods"]:
        if method not in comp:
            continue
        means = {split: [] for split in counts}
        for seed, c in comp[method]["per_seed"].items():
            coreset = report_dir / "runs" / f"{method}-seed{seed}" / "coreset.parquet"
            targets = read_table(coreset, required=("target",), what="coreset").column("target").to_numpy()
            for split in counts:
                means[split].append(counts[split][targets].mean())
                pairs[split].append((c[f"target_popularity_recall@10_{split}"],
                                     rows[method]["per_seed"][split]["recall@10"][seed]))
        print(f"| {method} | {np.mean(means['valid']):.1f} | {np.mean(means['test']):.1f} |")
    for split, xy in pairs.items():
        x, y = np.array(xy).T
        print(f"{split}: Pearson r between targets' popularity R@10 and TIGER R@10 over {len(x)} runs: "
              f"{np.corrcoef(x, y)[0, 1]:.2f}")


if __name__ == "__main__":
    main()
