"""Benchmark (c): LiSSA vs CG vs the exact solve on the same Hessian pool: time, residual and the
Spearman agreement of the final influence scores.

``v`` is the mean gradient over ``--samples`` samples (engine capture), the Hessian pool is
``--hessian-samples`` seeded samples; influence scores are computed for those ``--samples`` with
each solver's ``U``. The exact solve builds the full ``d x d`` Hessian (4,096 x 4,096 for SASRec's
64x64 block) with ``d`` vectorised double backward passes per pool minibatch, so its cost grows
with the pool: keep the pool small on a CPU.

    python benchmarks/bench_hvp.py --data /work/data/games-prepared --surrogate SURR
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from dealrec_core.data import PreparedData
from dealrec.hvp import HessianPool, HvpConfig, solve
from dealrec.influence import LinearTaps, capture_samples, freeze_all_but, influence_from_rows
from dealrec.score import hessian_pool_rows
from surrogates.registry import load_surrogate


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--surrogate", required=True)
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--hessian-samples", type=int, default=64)
    ap.add_argument("--hvp-batch", type=int, default=16)
    ap.add_argument("--lissa-steps", type=int, default=5000)
    ap.add_argument("--damping", type=float, default=0.01)
    ap.add_argument("--scale", type=float, default=25.0)
    ap.add_argument("--solvers", default="exact,cg,lissa")
    ap.add_argument("--chunk-tokens", type=int, default=1024, help="capture chunks (as dealrec score)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    samples = PreparedData(args.data).samples()
    model = load_surrogate(args.surrogate).eval()
    block = model.influence_block()
    freeze_all_but(model, block)
    taps = LinearTaps(block)
    n = min(args.samples, len(samples))
    parts = []
    for lo in range(0, n, 256):
        idx = np.arange(lo, min(lo + 256, n))
        parts.append((idx, capture_samples(model, taps, samples.subset(idx), args.chunk_tokens)))
    v = sum(r.grad_sum for _, r in parts) / n

    base = HvpConfig(damping=args.damping, scale=args.scale, lissa_steps=args.lissa_steps,
                     hessian_samples=args.hessian_samples, hvp_batch=args.hvp_batch)
    rows = hessian_pool_rows(len(samples), base)
    t0 = time.perf_counter()
    pool = HessianPool(model, block, [model.collate(samples.subset(rows[i:i + args.hvp_batch]))
                                      for i in range(0, len(rows), args.hvp_batch)])
    t_pool = time.perf_counter() - t0

    results = {}
    for solver in args.solvers.split(","):
        cfg = HvpConfig(**{**base.to_dict(), "solver": solver})
        try:
            r = solve(pool, v, cfg)
        except Exception as e:  # a diverging LiSSA is a result too
            results[solver] = (None, str(e).splitlines()[0], None)
            continue
        scores = np.zeros(n)
        for idx, b in parts:
            scores[idx] = influence_from_rows(b.sample_index, b.a, b.g, r.x, len(idx))
        results[solver] = (scores, r, r.seconds)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}, load average "
          f"{os.getloadavg()[0]:.1f}; v and scores over {n} samples; Hessian pool {len(rows)} samples in "
          f"minibatches of {args.hvp_batch} (built in {t_pool:.1f}s); damping {args.damping}, scale {args.scale} "
          f"(system (H + {base.tikhonov:g} I) x = v)")
    print()
    ref_name = "exact" if results.get("exact", (None,))[0] is not None else "cg"
    ref = results.get(ref_name, (None,))[0]
    print(f"| solver | seconds | iterations / HVPs | relative residual | Spearman vs {ref_name} | notes |")
    print("| --- | --- | --- | --- | --- | --- |")
    for solver, (scores, r, sec) in results.items():
        if scores is None:
            print(f"| {solver} | - | - | - | - | {r} |")
            continue
        rho = spearmanr(scores, ref).statistic if ref is not None else float("nan")
        notes = ""
        if solver == "exact":
            notes = f"eigenvalues of H + tI in [{r.trace[0][1]:.3g}, {r.trace[1][1]:.3g}]"
        if solver == "lissa":
            notes = f"last trace point: step {r.trace[-1][0]}, relative change {r.trace[-1][2]:.2e}"
        print(f"| {solver} | {sec:.1f} | {r.iterations} | {r.residual:.2e} | {rho:.6f} | {notes} |")


if __name__ == "__main__":
    main()
