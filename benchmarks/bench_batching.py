"""SASRec (or another surrogate) trained with random vs bucketed batches: epoch time and quality.

    python benchmarks/bench_batching.py --data PREPARED [--model sasrec] [--seed 0] [--out DIR]

Trains the surrogate at its defaults once per batching (one after the other, on the same threads:
run it on an otherwise idle machine) and prints a Markdown table: epochs (best), the median of the
epochs' training seconds (evaluation excluded) and of their CPU seconds, the padding share of the
batches' item cells, validation NDCG@10 (the stopping criterion) and test Recall/NDCG@20, then the
bucketed run against the random one. Issue 15 asks for an epoch at least 2x faster at the same test
Recall@20 / NDCG@20 (within 0.001).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from surrogates.config import BATCHINGS, DEFAULT_MODEL, DEFAULT_THREADS
from surrogates.train import TrainConfig, train_surrogate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a prepared folder (dealrec prepare)")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-epochs", type=int, default=TrainConfig.max_epochs)
    ap.add_argument("--out", help="keep the trained models here (default: a temporary folder)")
    args = ap.parse_args()

    out = Path(args.out or tempfile.mkdtemp(prefix="bench-batching-"))
    rows = {}
    for batching in BATCHINGS:
        cfg = TrainConfig(seed=args.seed, max_epochs=args.max_epochs, batching=batching, progress=True)
        m = train_surrogate(args.data, args.model, out / batching, {}, cfg, overwrite=True)
        hist = m["history"]
        rows[batching] = {
            "epochs": f"{m['epochs']} ({m['best_epoch']})",
            "epoch_s": statistics.median(h["train_seconds"] for h in hist),
            "cpu_s": m["cpu_seconds_per_epoch"],
            "padding": statistics.median(h["padding_share"] for h in hist),
            "valid_n10": m["valid"]["ndcg@10"], "r20": m["test"]["recall@20"], "n20": m["test"]["ndcg@20"],
        }
    print(f"\n{args.model} on {args.data}, seed {args.seed}; {platform.node()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {TrainConfig().threads or DEFAULT_THREADS} threads, load {os.getloadavg()[0]:.2f}\n")
    print("| batching | epochs (best) | s / epoch (median) | CPU s / epoch | padding share | valid N@10 | "
          "test R@20 | test N@20 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['epochs']} | {r['epoch_s']:.1f} | {r['cpu_s']:.1f} | {r['padding']:.2f} | "
              f"{r['valid_n10']:.4f} | {r['r20']:.4f} | {r['n20']:.4f} |")
    a, b = rows["random"], rows["bucketed"]
    print(f"\nbucketed vs random: epoch {a['epoch_s'] / b['epoch_s']:.2f}x faster; test R@20 "
          f"{b['r20'] - a['r20']:+.4f}, N@20 {b['n20'] - a['n20']:+.4f}; models in {out}")


if __name__ == "__main__":
    main()
