"""Every surrogate with its defaults on one prepared folder: accuracy, training time, influence time.

For each model of ``--models``, the real commands, in fresh processes:

1. ``dealrec train-surrogate DATA --model M --out OUT/M`` (defaults, plus ``--train-args``); a folder
   already holding that model trained on the same data with the same command is reused
   (``--retrain`` trains again);
2. ``dealrec score DATA --surrogate OUT/M --out OUT/M-score --target none`` (plus ``--score-args``),
   influence of every sample, into a fresh folder each time (a resumed run would time nothing).

Prints a Markdown table: test and valid Recall@20 / NDCG@20 (from metrics.json, the best epoch), epochs,
training time (all of it, evaluation included), seconds an epoch (gradient passes only), influence
seconds (score's capture + solve + influence phases, from its manifest; the command's own start-up
is not in them) and influence / epoch, the issue's bar being at most 2. Most popular is the reference
row. Rerun it to measure again; only the training is reused.

    python benchmarks/bench_surrogates.py --models sasrec,bert4rec,dcrec --data PREPARED --out DIR
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dealrec_core.data import PreparedData
from dealrec_core.evaluate import evaluate_scorer, popularity_scorer
from dealrec.manifest import RunManifest
from surrogates.registry import model_names, surrogate_class

INFLUENCE_PHASES = ("capture", "solve", "influence")


def dealrec(*args: str, log: Path) -> float:
    """Run ``dealrec ARGS`` in a fresh process, output to ``log``; returns its wall-clock seconds."""
    cmd = [str(Path(sys.executable).parent / "dealrec"), *args]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if code:
        raise SystemExit(f"failed ({code}): {shlex.join(cmd)}; see {log}")
    return time.perf_counter() - t0


def trained(folder: Path, model: str, data: PreparedData, command: list[str]) -> dict | None:
    """metrics.json of ``folder`` when it holds ``model`` trained on ``data`` by ``command`` (recorded beside
    it in FOLDER.command.json), else None."""
    path, record = folder / "metrics.json", folder.with_name(folder.name + ".command.json")
    if not path.exists() or not record.exists():
        return None
    metrics = json.loads(path.read_text())
    same = json.loads(record.read_text()) == command
    return metrics if same and metrics.get("model") == model and metrics.get("data_sha256") == data.content_digest() \
        else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(model_names()), help="Comma-separated surrogate models.")
    ap.add_argument("--data", required=True, help="A prepared data folder (dealrec prepare).")
    ap.add_argument("--out", required=True, help="Work folder: OUT/MODEL (surrogate), OUT/MODEL-score, logs.")
    ap.add_argument("--train-args", default="", help="Extra options of train-surrogate, as one string.")
    ap.add_argument("--score-args", default="", help="Extra options of score, as one string (e.g. \"--workers 0\").")
    ap.add_argument("--retrain", action="store_true", help="Train again even when OUT/MODEL can be reused.")
    args = ap.parse_args()

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        surrogate_class(m)   # an unknown name stops here, listing the known ones
    data = PreparedData(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = data.samples()
    splits = {s: data.eval_split(s) for s in ("valid", "test")}
    popularity = popularity_scorer(samples.sequences(), data.n_items)
    rows = [("most popular", {s: evaluate_scorer(popularity, split, data.n_items) for s, split in splits.items()},
             None, None)]

    for m in models:
        folder = out / m
        command = ["train-surrogate", str(data.root), "--model", m, "--out", str(folder), "--quiet",
                   *shlex.split(args.train_args)]
        metrics = None if args.retrain else trained(folder, m, data, command)
        if metrics is None:
            dealrec(*command, "--overwrite", log=out / f"{m}-train.log")
            folder.with_name(folder.name + ".command.json").write_text(json.dumps(command))
            metrics = json.loads((folder / "metrics.json").read_text())
        score_dir = out / f"{m}-score"
        shutil.rmtree(score_dir, ignore_errors=True)
        dealrec("score", str(data.root), "--surrogate", str(folder), "--out", str(score_dir), "--target", "none",
                "--quiet", *shlex.split(args.score_args), log=out / f"{m}-score.log")
        phases = RunManifest.read(score_dir).data["phases"]
        influence = sum(phases[p]["seconds"] for p in INFLUENCE_PHASES)
        rows.append((m, metrics, metrics, influence))

    print(f"data: {data.root.resolve()} ({len(samples):,} samples, {data.n_items:,} items, "
          f"{len(splits['valid']):,} valid / {len(splits['test']):,} test users)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average at the end {os.getloadavg()[0]:.1f}; "
          f"train-surrogate defaults{' + ' + args.train_args if args.train_args else ''}; score --target none"
          f"{' ' + args.score_args if args.score_args else ''}")
    print()
    print("| model | test R@20 | test N@20 | valid R@20 | valid N@20 | epochs (best) | training | s / epoch | "
          "influence (s) | influence / epoch |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, metrics, record, influence in rows:
        cells = [f"{metrics[s][f'{k}@20']:.4f}" for s in ("test", "valid") for k in ("recall", "ndcg")]
        if record is None:
            rest = ["", "counting", "", "", ""]
        else:
            per_epoch = record["seconds_per_epoch"]
            rest = [f"{record['epochs']} ({record['best_epoch']})", f"{record['seconds'] / 60:.1f} min",
                    f"{per_epoch:.1f}", f"{influence:.1f}", f"{influence / per_epoch:.2f}"]
        print(f"| {name} | " + " | ".join(cells + rest) + " |")


if __name__ == "__main__":
    main()
