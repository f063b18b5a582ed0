"""The check's record (docs/selection.md, "A check before any training") as a picture: every equal-budget coreset's
(the default until session 19; what ``--allocation auto`` checks)
targets' popularity Recall@10 over random draws' (the check; below 1: select and prune print a note) against its
TIGER's validation Recall@10 over random's mean. A point in the upper right or lower left is a call the check got
right.

    python benchmarks/check_record.py [--csv docs/data/check-record.csv] [--out docs/img/check-record-2026-11-28.png]

The CSV holds the measured figures, one row per coreset: the check's two figures from each selection's manifest
(``selection.check``), TIGER's from each comparison's report, and whether the check was written down before the
TIGER runs (``called_before_tiger``).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_record(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["check_ratio"] = float(row["check_coreset"]) / float(row["check_random_mean"])
        row["tiger_ratio"] = float(row["tiger_valid_r10"]) / float(row["tiger_random_valid_r10"])
        row["right"] = (row["check_ratio"] < 1) == (row["tiger_ratio"] < 1)
    return rows


def plot(rows: list[dict], out: Path) -> None:
    logs = list(dict.fromkeys(r["log"] for r in rows))
    fig, ax = plt.subplots(figsize=(10.5, 5.5))
    ax.axvline(1, color="grey", lw=0.8)
    ax.axhline(1, color="grey", lw=0.8)
    for i, log in enumerate(logs):
        mine = [r for r in rows if r["log"] == log]
        before = mine[0]["called_before_tiger"] == "yes"
        ax.scatter([r["check_ratio"] for r in mine], [r["tiger_ratio"] for r in mine], s=46,
                   marker="*" if before else "o", color=plt.cm.tab20(i % 20),
                   label=log + (" (called before TIGER)" if before else ""))
    right = sum(r["right"] for r in rows)
    called = [r for r in rows if r["called_before_tiger"] == "yes"]
    ax.set_xlabel("check: coreset's targets' popularity R@10 / random draws' (below 1: a note)")
    ax.set_ylabel("TIGER valid R@10 / random's mean")
    ax.set_title(f"the check against TIGER, the paper's equal-budget coresets: {right} of {len(rows)} on the same "
                 f"side\n({sum(r['right'] for r in called)} of {len(called)} called before TIGER)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=Path("docs/data/check-record.csv"))
    parser.add_argument("--out", type=Path, default=Path("docs/img/check-record-2026-11-28.png"))
    args = parser.parse_args()
    rows = read_record(args.csv)
    plot(rows, args.out)
    called = [r for r in rows if r["called_before_tiger"] == "yes"]
    print(f"{sum(r['right'] for r in rows)} of {len(rows)} on the same side of random "
          f"({sum(r['right'] for r in called)} of {len(called)} called before TIGER); wrote {args.out}")


if __name__ == "__main__":
    main()
