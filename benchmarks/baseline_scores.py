"""Cost of the baseline scores (EL2N, GraNd) on a prepared data set, side by side.

    python benchmarks/baseline_scores.py --data /work/data/games-prepared [--surrogate DIR]

Prints a table of medians over --repeats runs: EL2N seconds per 1,000 samples; GraNd ms per
sample for the batched backward (dealrec.baselines.grand_scores) at several batch sizes and,
for comparison, a plain per-sample autograd loop. Without --surrogate, a freshly initialised
SASRec of the paper's size is used (cost does not depend on the weights).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from dealrec.baselines import el2n_scores, grand_scores, grand_scores_loop
from common import parse_with_data
from surrogates.registry import load_surrogate
from surrogates.sasrec import SASRec, SASRecConfig


def timed(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--surrogate", default=None)
    ap.add_argument("--grand-samples", type=int, default=64)
    ap.add_argument("--el2n-samples", type=int, default=1000)
    ap.add_argument("--batch-sizes", default="1,4,16")
    ap.add_argument("--repeats", type=int, default=3)
    args, data, samples = parse_with_data(ap)
    model = load_surrogate(args.surrogate) if args.surrogate else SASRec(SASRecConfig(n_items=data.n_items)).eval()
    rng = np.random.default_rng(args.seed)
    g_sub = samples.subset(np.sort(rng.choice(len(samples), args.grand_samples, replace=False)))
    e_sub = samples.subset(np.sort(rng.choice(len(samples), args.el2n_samples, replace=False)))

    rows = []
    t, _ = timed(lambda: el2n_scores(model, e_sub, progress=False), args.repeats)
    rows.append(("EL2N", f"{t / len(e_sub) * 1000:.2f} s / 1000 samples", ""))
    t_loop, ref = timed(lambda: grand_scores_loop(model, g_sub), args.repeats)
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        t, got = timed(lambda: grand_scores(model, g_sub, batch_size=b, progress=False), args.repeats)
        err = float(np.max(np.abs(got - ref) / ref))
        rows.append((f"GraNd batched, batch {b}", f"{t / len(g_sub) * 1000:.1f} ms / sample",
                     f"{t / t_loop:.2f}x loop time, max rel diff {err:.1e}"))
    rows.append(("GraNd per-sample loop", f"{t_loop / len(g_sub) * 1000:.1f} ms / sample", "1.00x"))

    print(f"data {args.data}: {len(samples)} samples, {data.n_items} items; surrogate "
          f"{args.surrogate or 'fresh SASRec (paper size)'}; torch threads {args.threads}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average "
          f"{os.getloadavg()[0]:.1f}; medians of {args.repeats}")
    w = max(len(r[0]) for r in rows)
    for name, cost, note in rows:
        print(f"{name:<{w}}  {cost:<24} {note}")


if __name__ == "__main__":
    main()
