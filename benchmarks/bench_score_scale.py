"""How ``dealrec score`` scales with the number of samples: time, the driver's and the workers' peak memory.

    python benchmarks/bench_score_scale.py --samples 100000,1000000 [--workers 2] [--work DIR] [--keep]

For each size a synthetic prepared folder is written under ``--work`` (Zipf item popularity over a
fixed catalogue, ``--items``, so that only the number of samples changes, heavy-tailed history lengths like Games', at most 50 items), with
an untrained default SASRec as the surrogate (influence costs the same whatever the weights; ``--score-args``
defaults to a damping that keeps its Hessian positive definite), then the
real ``dealrec score DATA --surrogate S --out RUN --target none`` runs under ``/usr/bin/time -v`` in its
own process. The table: wall seconds, samples per second, the driver's peak resident memory
(``/usr/bin/time``: the command's own process; Ray's workers are not its children) and the workers'
(the largest ``peak_rss_mb`` that a capture or influence shard manifest records), each against the
smallest size. Issue 11 asks: driver peak within 1.5x from 100k to 1M, time at most 11x, workers' peak
independent of the total.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dealrec_core.data import samples_table, write_samples
from surrogates.base import save_surrogate
from surrogates.registry import build_surrogate


def write_synthetic(root: Path, n: int, n_items: int, seed: int = 0) -> int:
    """A prepared folder of ``n`` samples over ``n_items`` items; returns the number of items."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 1.05
    popularity /= popularity.sum()
    lengths = np.minimum(rng.zipf(1.7, n) - 1, 50)   # many short histories, a long tail (mean about 3)
    items = rng.choice(n_items, size=int(lengths.sum()) + n, p=popularity).astype(np.int32) + 1
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    histories = [items[offsets[i]:offsets[i + 1]] for i in range(n)]
    targets = items[offsets[-1]:offsets[-1] + n]
    write_samples(samples_table(np.arange(n), np.arange(n), histories, targets), root / "samples")
    pq.write_table(pa.table({"item": pa.array(np.arange(1, n_items + 1, dtype=np.int32)),
                             "title": [f"item {i}" for i in range(1, n_items + 1)]}), root / "items.parquet")
    return n_items


def worker_peak(run: Path) -> float:
    peaks = [json.loads(p.read_text()).get("peak_rss_mb", 0.0)
             for phase in ("capture", "influence") for p in (run / "work" / phase).glob("shard-*.json")]
    return max(peaks) / 1024 if peaks else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", default="100000,1000000", help="comma-separated sizes")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--items", type=int, default=20000, help="catalogue size, the same for every size")
    ap.add_argument("--work", help="where the folders go (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the data folders for a later run")
    ap.add_argument("--score-args", default="--damping 0.9",
                    help="more options for dealrec score (default: a damping that makes the untrained model's "
                         "Hessian positive definite; the solve's cost does not grow with the samples)")
    args = ap.parse_args()
    if not shutil.which("time") and not Path("/usr/bin/time").exists():
        sys.exit("needs /usr/bin/time (GNU time) for the driver's peak memory")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-score-"))
    rows = []
    for n in [int(x) for x in args.samples.split(",")]:
        data, sur, run = work / f"data-{n}", work / f"surrogate-{n}", work / f"run-{n}"
        if not (data / "items.parquet").exists():
            shutil.rmtree(data, ignore_errors=True)
            n_items = write_synthetic(data, n, args.items)
        else:
            n_items = pq.read_metadata(data / "items.parquet").num_rows
        if not (sur / "model.safetensors").exists():
            sur.mkdir(parents=True, exist_ok=True)
            save_surrogate(build_surrogate("sasrec", n_items=n_items), sur)
        shutil.rmtree(run, ignore_errors=True)
        cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "dealrec", "score", str(data), "--surrogate", str(sur),
               "--out", str(run), "--target", "none", "--workers", str(args.workers), *args.score_args.split()]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"dealrec score failed for {n} samples:\n{proc.stderr[-3000:]}")
        driver = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 1024 ** 2
        rows.append((n, seconds, driver, worker_peak(run)))
        print(f"{n:,} samples: {seconds:.1f} s, driver {driver:.2f} GB, workers {rows[-1][3]:.2f} GB", flush=True)
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(run, ignore_errors=True)
    n0, t0_, d0, w0 = rows[0]
    print(f"\n`dealrec score --target none --workers {args.workers} {args.score_args}` of synthetic samples, untrained default SASRec; "
          f"{os.cpu_count()} CPUs, {platform.platform()}, load {os.getloadavg()[0]:.2f}\n")
    print("| samples | wall s | samples/s | driver peak GB | workers' peak GB | time / smallest | "
          "driver / smallest | workers / smallest |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, s, d, w in rows:
        print(f"| {n:,} | {s:.1f} | {n / s:,.0f} | {d:.2f} | {w:.2f} | {s / t0_:.2f}x | {d / d0:.2f}x | {w / w0:.2f}x |")


if __name__ == "__main__":
    main()
