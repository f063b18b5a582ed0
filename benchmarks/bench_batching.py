"""SASRec (or another surrogate) trained with random vs bucketed batches: epoch time and quality.

    python benchmarks/bench_batching.py --data PREPARED [--model sasrec] [--seed 0] [--out DIR] \
        [--runs random,bucketed,bucketed:256]

Trains the surrogate at its defaults once per run of ``--runs`` (a batching, optionally ``:N`` for the
trainer's ``--ce-chunk N``; one after the other, on the same threads: run it on an otherwise idle
machine) and prints a Markdown table: epochs (best), the median of the
epochs' training seconds (evaluation excluded) and of their CPU seconds, the padding share of the
batches' item cells, validation NDCG@10 (the stopping criterion) and test Recall/NDCG@20, then every run
against the first. Issue 15 asks for an epoch at least 2x faster at the same test
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
    ap.add_argument("--runs", default=",".join(BATCHINGS),
                    help="comma-separated BATCHING[:CE_CHUNK] runs, the first the baseline (default: %(default)s)")
    args = ap.parse_args()
    runs = []
    for spec in args.runs.split(","):
        batching, _, chunk = spec.partition(":")
        if batching not in BATCHINGS or (chunk and not chunk.isdigit()):
            ap.error(f"--runs: {spec!r} is not BATCHING[:CE_CHUNK] (batchings: {', '.join(BATCHINGS)})")
        runs.append((spec, batching, int(chunk or 0)))

    out = Path(args.out or tempfile.mkdtemp(prefix="bench-batching-"))
    rows = {}
    for name, batching, chunk in runs:
        cfg = TrainConfig(seed=args.seed, max_epochs=args.max_epochs, batching=batching, ce_chunk=chunk,
                          progress=True)
        m = train_surrogate(args.data, args.model, out / name.replace(":", "-"), {}, cfg, overwrite=True)
        hist = m["history"]
        rows[name] = {
            "epochs": f"{m['epochs']} ({m['best_epoch']})",
            "epoch_s": statistics.median(h["train_seconds"] for h in hist),
            "cpu_s": m["cpu_seconds_per_epoch"],
            "padding": statistics.median(h["padding_share"] for h in hist),
            "valid_n10": m["valid"]["ndcg@10"], "r20": m["test"]["recall@20"], "n20": m["test"]["ndcg@20"],
        }
    print(f"\n{args.model} on {args.data}, seed {args.seed}; {platform.node()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {TrainConfig().threads or DEFAULT_THREADS} threads, load {os.getloadavg()[0]:.2f}\n")
    print("| run (batching[:ce_chunk]) | epochs (best) | s / epoch (median) | CPU s / epoch | padding share | valid N@10 | "
          "test R@20 | test N@20 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['epochs']} | {r['epoch_s']:.1f} | {r['cpu_s']:.1f} | {r['padding']:.2f} | "
              f"{r['valid_n10']:.4f} | {r['r20']:.4f} | {r['n20']:.4f} |")
    first = runs[0][0]
    a = rows[first]
    for name, b in list(rows.items())[1:]:
        print(f"\n{name} vs {first}: epoch {a['epoch_s'] / b['epoch_s']:.2f}x faster; test R@20 "
              f"{b['r20'] - a['r20']:+.4f}, N@20 {b['n20'] - a['n20']:+.4f}; valid N@10 "
              f"{b['valid_n10'] - a['valid_n10']:+.4f}")
    print(f"\nmodels in {out}")


if __name__ == "__main__":
    main()
