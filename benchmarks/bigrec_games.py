"""BIGRec on Games with a tiny local Llama-shaped model: does a 1,024-sample fine-tune, with
generation and grounding for every evaluation user, finish in minutes on a small CPU machine?

    python benchmarks/bigrec_games.py --data /work/data/games-prepared --work /tmp/bigrec-bench

Builds (once) a random tiny Llama with a BPE tokenizer trained on the Games titles and a
1,024-row coreset (random rows of the samples table, seeded), runs ``dealrec finetune bigrec``
through its CLI, and prints a table of the phases' timings and the metrics. Extra arguments
after ``--`` go to the command (e.g. ``-- --max-users 500``).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_lm import make_tiny_causal_lm  # noqa: E402

from dealrec_core.data import PreparedData, read_table, write_parquet_atomic  # noqa: E402


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--work", required=True, type=click.Path(path_type=Path))
@click.option("--samples", default=1024, show_default=True)
@click.option("--hidden", default=64, show_default=True)
@click.option("--layers", default=2, show_default=True)
@click.option("--vocab", default=4096, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def bench(data, work, samples, hidden, layers, vocab, seed, extra):
    work.mkdir(parents=True, exist_ok=True)
    prepared = PreparedData(data)
    llm = work / f"tiny-llama-h{hidden}-l{layers}-v{vocab}"
    if not (llm / "config.json").exists():
        make_tiny_causal_lm("llama", [t for t in prepared.titles()[1:] if t], llm, hidden=hidden,
                            layers=layers, heads=2, vocab_size=vocab, seed=seed)
    coreset = work / f"coreset-{samples}-seed{seed}.parquet"
    if not coreset.exists():
        table = read_table(prepared.samples_dir)
        rows = np.sort(np.random.default_rng(seed).choice(table.num_rows, samples, replace=False))
        write_parquet_atomic(table.take(rows), coreset)
    out = work / "out"
    if out.exists():
        shutil.rmtree(out)
    cmd = [str(Path(sys.executable).parent / "dealrec"), "finetune", "bigrec", "--llm", str(llm), "--data", str(data),
           "--train", str(coreset), "--out", str(out), *extra]
    print("$", " ".join(cmd), flush=True)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    metrics = json.loads((out / "metrics.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    n_params = manifest["lora"]["trainable_parameters"]
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, no GPU; load average before "
          f"{load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    print(f"model: tiny Llama hidden {hidden}, {layers} layers, vocab {vocab}; LoRA {n_params} trainable "
          f"parameters; coreset {pq.read_metadata(coreset).num_rows} rows")
    print(f"training: {metrics['steps']} steps, {metrics['epochs']} epochs, stopped by "
          f"{manifest['training']['stopped']}, best validation loss {manifest['training']['best_valid_loss']:.4f}")
    print("\n| phase | seconds |\n| --- | ---: |")
    for phase, s in manifest["timings_seconds"].items():
        print(f"| {phase} | {s:.1f} |")
    print(f"| total (command wall clock) | {wall:.1f} |")
    print("\n| split | users | " + " | ".join(k for k in metrics["test"]) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in metrics["test"]) + " |")
    for split in ("valid", "test"):
        print(f"| {split} | {metrics['eval_users'][split]} | "
              + " | ".join(f"{v:.4f}" for v in metrics[split].values()) + " |")


if __name__ == "__main__":
    bench()
