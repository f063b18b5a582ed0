"""Most-popular vs SASRec on a prepared data folder (Games by default): a Markdown table.

    python benchmarks/bench_surrogate.py --data /work/data/games-prepared                 # trains (defaults)
    python benchmarks/bench_surrogate.py --data /work/data/games-prepared --surrogate DIR  # a trained one

Both rows are scored by the project's one evaluator (``dealrec_core.evaluate``) on the valid and
test splits. With ``--surrogate`` the model is reloaded and re-evaluated here (its metrics
must match its metrics.json); the training time comes from its metrics.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from dealrec_core.data import PreparedData
from dealrec_core.evaluate import evaluate_scorer, popularity_scorer
from surrogates.registry import load_surrogate
from surrogates.train import TrainConfig, train_surrogate

KS = (10, 20, 50)


def row(name: str, split: str, m: dict, seconds: str) -> str:
    cells = [f"{m[f'{k}@{n}']:.4f}" for n in KS for k in ("recall", "ndcg")]
    return f"| {name} | {split} | " + " | ".join(cells) + f" | {seconds} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/data/games-prepared")
    ap.add_argument("--surrogate", help="a folder written by 'dealrec train-surrogate' (else: train one)")
    ap.add_argument("--out", help="where to write the trained surrogate (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    data = PreparedData(args.data)
    samples = data.samples()
    splits = {s: data.eval_split(s) for s in ("valid", "test")}

    t0 = time.perf_counter()
    pop = popularity_scorer(samples.sequences(), data.n_items)
    pop_metrics = {s: evaluate_scorer(pop, split, data.n_items) for s, split in splits.items()}
    pop_seconds = time.perf_counter() - t0

    if args.surrogate:
        model_dir = Path(args.surrogate)
    else:
        model_dir = Path(args.out or tempfile.mkdtemp(prefix="bench-surrogate-")) / "sasrec"
        train_surrogate(args.data, "sasrec", model_dir, train_cfg=TrainConfig(threads=args.threads), overwrite=True)
    trained = json.loads((model_dir / "metrics.json").read_text())
    model = load_surrogate(model_dir)
    sas_metrics = {s: evaluate_scorer(model.score_histories, split, data.n_items) for s, split in splits.items()}
    for s in splits:  # the checkpoint on disk is the one metrics.json describes
        for key, value in sas_metrics[s].items():
            if abs(value - trained[s][key]) > 1e-6:
                raise SystemExit(f"{model_dir}: re-evaluated {s} {key} {value:.6f} != metrics.json {trained[s][key]:.6f}")

    cfg = json.loads((model_dir / "config.json").read_text())["config"]
    train_cfg = trained.get("train_config", {})
    header = " | ".join(f"R@{n} | N@{n}" for n in KS)
    print(f"data: {Path(args.data).resolve()}  ({len(samples):,} samples, {data.n_items:,} items, "
          f"{len(splits['valid']):,} valid / {len(splits['test']):,} test users)")
    print(f"machine: {platform.machine()} {os.cpu_count()}-core CPU, torch threads {trained.get('threads')}, "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"sasrec: hidden {cfg['hidden']}, {cfg['n_blocks']} blocks, {cfg['n_heads']} heads, max_len {cfg['max_len']}, "
          f"dropout {cfg['dropout']}, loss {cfg['loss']}, positions {cfg['positions']}; lr {train_cfg.get('lr')}, "
          f"batch {train_cfg.get('batch_size')}, patience {train_cfg.get('patience')}; best epoch "
          f"{trained['best_epoch']} of {trained['epochs']}, {trained['seconds_per_epoch']:.1f} s an epoch")
    print()
    print(f"| method | split | {header} | training |")
    print("|" + " --- |" * (3 + 2 * len(KS)))
    for s in splits:
        print(row("most popular", s, pop_metrics[s], f"{pop_seconds:.1f} s (counting, both splits)"))
    for s in splits:
        print(row("SASRec", s, sas_metrics[s], f"{trained['seconds'] / 60:.1f} min"))


if __name__ == "__main__":
    main()
