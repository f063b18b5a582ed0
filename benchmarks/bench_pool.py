"""Benchmark: one Hessian-vector product of the engine's pool, the full softmax as one product vs by blocks.

The pool is what ``dealrec score`` solves with (``dealrec.score.hessian_pool``: the seeded pool of
``--hessian-samples`` samples in minibatches of ``--hvp-batch``, the surrogate's block alone requiring a
gradient). Both pools are built in this process, then their products alternate (the same random vector),
so a drift of the machine hits both sides alike; medians over ``--repeats``.

    python benchmarks/bench_pool.py --data PREPARED --surrogate SURR [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from dealrec.hvp import HvpConfig
from dealrec.influence import CAPTURE_CE_CHUNK
from dealrec.score import hessian_pool
from dealrec_core.data import PreparedData


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--surrogate", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ce-chunk", type=int, default=CAPTURE_CE_CHUNK)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    samples = PreparedData(args.data).samples()
    config = HvpConfig()
    sides = {"one product (autograd)": 0, f"by blocks of {args.ce_chunk} items": args.ce_chunk}
    pools, built = {}, {}
    for name, chunk in sides.items():
        t0 = time.perf_counter()
        pools[name] = hessian_pool(args.surrogate, samples, config, None, chunk)
        built[name] = time.perf_counter() - t0
    q = np.random.default_rng(0).standard_normal(next(iter(pools.values())).dim)
    times = {name: [] for name in sides}
    products = {}
    for _ in range(args.repeats):
        for name, pool in pools.items():
            t0 = time.perf_counter()
            products[name] = pool.hvp(q)
            times[name].append(time.perf_counter() - t0)
    first = next(iter(sides))
    base = float(np.median(times[first]))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{args.threads}, load average {os.getloadavg()[0]:.1f}; pool {config.hessian_samples} samples in "
          f"minibatches of {config.hvp_batch}; {args.repeats} alternating products each")
    print()
    print("| pool | graphs built (s) | one pool product, median (s) | runs (s) | speed-up | max relative difference |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in sides:
        med = float(np.median(times[name]))
        diff = np.abs(products[name] - products[first]).max() / np.abs(products[first]).max()
        print(f"| {name} | {built[name]:.1f} | {med:.3f} | {', '.join(f'{t:.3f}' for t in times[name])} | "
              f"{base / med:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
