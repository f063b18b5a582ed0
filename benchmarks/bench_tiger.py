"""TIGER on Games: 1,024 random training samples (three seeds) and all samples.

Each run is a real ``dealrec finetune tiger`` command (a subprocess, so runs can go side by
side with ``--jobs``); the table puts the measured test Recall/NDCG@10/20 beside the
paper's TIGER figures and most-popular (the Games data README).

    python benchmarks/bench_tiger.py --data /work/data/games-prepared --work /tmp/tiger/bench
    python benchmarks/bench_tiger.py ... --only random      # the three 1,024-sample runs
    python benchmarks/bench_tiger.py ... --table-only       # re-print from finished runs
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import numpy as np

from dealrec_core.data import PreparedData, write_parquet_atomic

# The Games README's reference rows (test split, the paper's protocol).
REFERENCE = [
    ("most popular training items (README)", 0.0068, 0.0040, 0.0104, 0.0050),
    ("paper, TIGER on 1,024 random samples", 0.0062, 0.0039, 0.0102, 0.0051),
    ("paper, TIGER on 1,024 DEALRec samples", 0.0074, 0.0062, 0.0114, 0.0074),
]


def run(cmd: list[str], log: Path) -> float:
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\nsee {log}")
    return time.time() - t0


@click.command()
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--work", required=True, type=click.Path(file_okay=False))
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--n", default=1024, show_default=True, help="Random training samples per seed.")
@click.option("--only", type=click.Choice(["all", "random", "full"]), default="all", show_default=True)
@click.option("--jobs", default=1, show_default=True, help="Runs side by side.")
@click.option("--full-max-minutes", default=0.0, show_default=True,
              help="Training-time budget of the all-samples run (0 = until early stopping).")
@click.option("--table-only", is_flag=True)
@click.argument("extra", nargs=-1)
def main(data_dir, work, seeds, n, only, jobs, full_max_minutes, table_only, extra):
    """EXTRA arguments are passed to every `dealrec finetune tiger` run."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    data = PreparedData(data_dir)
    seeds = [int(s) for s in seeds.split(",") if s]
    dealrec = [sys.executable, "-m", "dealrec.cli"] if not Path(sys.executable).with_name("dealrec").exists() \
        else [str(Path(sys.executable).with_name("dealrec"))]
    jobs_list = []
    if only in ("all", "random"):
        for seed in seeds:
            train = work / f"random-{n}-seed{seed}.parquet"
            if not train.exists():
                table = data.samples().to_table()
                pick = np.sort(np.random.default_rng(seed).choice(table.num_rows, n, replace=False))
                write_parquet_atomic(table.take(pick), train)
            jobs_list.append((f"random {n}, seed {seed}", train, work / f"random-{n}-seed{seed}", seed, []))
    if only in ("all", "full"):
        extra_full = ["--max-minutes", str(full_max_minutes)] if full_max_minutes else []
        jobs_list.append(("all samples, seed 0", data.samples_dir, work / "full-seed0", 0, extra_full))

    def one(job):
        name, train, out, seed, more = job
        if (out / "metrics.json").exists():
            return
        cmd = [*dealrec, "finetune", "tiger", "--data", str(data_dir), "--train", str(train), "--out", str(out),
               "--seed", str(seed), "--quiet", "--overwrite", *extra, *more]
        print(f"running: {' '.join(cmd)}", flush=True)
        secs = run(cmd, out.with_suffix(".log"))
        print(f"done in {secs:.0f}s: {name}", flush=True)

    if not table_only:
        with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
            list(pool.map(one, jobs_list))

    rows = []
    for name, _, out, _, _ in jobs_list:
        path = out / "metrics.json"
        if path.exists():
            rows.append((name, json.loads(path.read_text())))
    print()
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.platform()}; "
          f"load now: {os.getloadavg()[0]:.1f}")
    print("| run | test R@10 | test N@10 | test R@20 | test N@20 | epochs | train pairs | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, m in rows:
        t = m["test"]
        print(f"| TIGER (ours), {name} | {t['recall@10']:.4f} | {t['ndcg@10']:.4f} | {t['recall@20']:.4f} | "
              f"{t['ndcg@20']:.4f} | {m['epochs']} | {m['train_pairs']} | {m['seconds']:.0f} |")
    random_rows = [m for name, m in rows if name.startswith("random")]
    if random_rows:
        mean = {k: float(np.mean([m["test"][k] for m in random_rows])) for k in random_rows[0]["test"]}
        std = float(np.std([m["test"]["recall@10"] for m in random_rows]))
        secs = float(np.mean([m["seconds"] for m in random_rows]))
        print(f"| TIGER (ours), random {n}, mean of {len(random_rows)} seeds | {mean['recall@10']:.4f} "
              f"(sd {std:.4f}) | {mean['ndcg@10']:.4f} | {mean['recall@20']:.4f} | {mean['ndcg@20']:.4f} | | | "
              f"{secs:.0f} |")
    for name, r10, n10, r20, n20 in REFERENCE:
        print(f"| {name} | {r10:.4f} | {n10:.4f} | {r20:.4f} | {n20:.4f} | | | |")


if __name__ == "__main__":
    main()
