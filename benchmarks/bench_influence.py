"""Benchmark (a): influence of every sample, the engine vs a per-sample autograd loop.

Both compute ``grad L(s) . U`` for the same SASRec checkpoint and the same ``U`` (read from a
``dealrec score`` run with ``--run``, else ``U = v``, the mean gradient: the ranking check does not
depend on which ``U``). Loops (timed on a seeded random subset, extrapolated linearly to all
samples, as the table says):

- ``reference loop``: the reference implementation's ``cal_grad_z`` as it is written: the model as
  trained (every parameter requires a gradient), batch size 1, ``torch.autograd.grad`` of the sample's
  loss with respect to the block's weight only, dotted with ``U``. The fair yardstick;
- ``block loop``: the same, with only the block requiring a gradient (the cheapest honest loop);
- ``all-parameter loop`` (an extra column, labelled so): one ``zero_grad`` + full ``backward`` per
  sample, every parameter's gradient computed (the item table's included), the block's read. It does
  more than the reference; earlier versions of this benchmark called it the "paper loop".

The engine: hooks, one batched forward/backward per batch, ``sum_t g_t^T U a_t`` from the rows.

    python benchmarks/bench_influence.py --data /work/data/games-prepared --surrogate SURR [--run RUN] [--authors DIR]

``--authors DIR`` (a checkout of github.com/Linxyhaha/DEALRec) adds the authors' own code, run in the same
process right after: per sample, and ``v`` plus every sample (the engine's column covers the same two
steps: capture and the dot products). Their model is theirs, not the same checkpoint (authors_influence.py).
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
from dealrec.influence import LinearTaps, capture_ce_chunk, capture_samples, freeze_all_but, influence_from_rows
from surrogates.registry import load_surrogate


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--surrogate", required=True)
    ap.add_argument("--run", help="a dealrec score run whose U (work/solve) to use")
    ap.add_argument("--loop-samples", type=int, default=300)
    ap.add_argument("--engine-samples", type=int, default=0, help="0 = all samples")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--chunk-tokens", type=int, default=1024,
                    help="the engine runs each batch as length-sorted chunks of this many positions (as dealrec score)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--authors", help="a checkout of github.com/Linxyhaha/DEALRec: adds the rows of the authors' own "
                                      "influence code on their Games data (benchmarks/authors_influence.py)")
    ap.add_argument("--authors-recursion-depth", type=int, default=5000,
                    help="LiSSA steps run of the authors' code (their 5,000 by default; fewer are extrapolated)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    samples = PreparedData(args.data).samples()
    n_all = len(samples)
    n_engine = args.engine_samples or n_all
    model = load_surrogate(args.surrogate).eval()
    block = model.influence_block()

    # ---- engine over the first n_engine samples
    freeze_all_but(model, block)
    taps = LinearTaps(block)
    u = None
    if args.run:
        from safetensors.numpy import load_file
        u = load_file(os.path.join(args.run, "work", "solve", "shard-00000.safetensors"))["u"]

    def run_engine(ce_chunk):
        """capture + dot products over the first n_engine samples: (scores, seconds)."""
        t0 = time.perf_counter()
        parts = []
        for lo in range(0, n_engine, args.batch_size):
            idx = np.arange(lo, min(lo + args.batch_size, n_engine))
            parts.append((idx, capture_samples(model, taps, samples.subset(idx), args.chunk_tokens, ce_chunk)))
        t_capture = time.perf_counter() - t0
        v = sum(r.grad_sum for _, r in parts) / n_engine
        uu = v if u is None else u
        t0 = time.perf_counter()
        scores = np.zeros(n_engine)
        for idx, r in parts:
            scores[idx] = influence_from_rows(r.sample_index, r.a, r.g, uu, len(idx))
        return scores, t_capture + time.perf_counter() - t0, uu

    ce_chunk = capture_ce_chunk("cpu") if model.supports_ce_chunk() else 0
    engine, t_engine, u = run_engine(ce_chunk)
    one_product = run_engine(0) if ce_chunk else None   # the engine before the softmax by blocks, side by side
    taps.remove()

    # ---- loops on a seeded subset
    rng = np.random.default_rng(args.seed)
    subset = np.sort(rng.choice(n_engine, size=min(args.loop_samples, n_engine), replace=False))
    u_t = torch.from_numpy(u).to(block.weight.dtype)

    def grad_dot_u(i):
        (g,) = torch.autograd.grad(model.sample_losses(model.collate(samples.subset([i]))).sum(), block.weight)
        return float((g.double() * u_t.double()).sum())

    for p in model.parameters():
        p.requires_grad_(True)
    t0 = time.perf_counter()
    reference = [grad_dot_u(i) for i in subset]      # cal_grad_z: autograd.grad on the block, all params live
    t_reference = (time.perf_counter() - t0) / len(subset)

    t0 = time.perf_counter()
    allparam = []
    for i in subset:
        model.zero_grad(set_to_none=True)
        model.sample_losses(model.collate(samples.subset([i]))).sum().backward()
        allparam.append(float((block.weight.grad.double() * u_t.double()).sum()))
    t_allparam = (time.perf_counter() - t0) / len(subset)

    freeze_all_but(model, block)
    t0 = time.perf_counter()
    blockloop = [grad_dot_u(i) for i in subset]
    t_block = (time.perf_counter() - t0) / len(subset)

    # ---- one training epoch over the same samples, timed side by side (the trainer's inner loop)
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = np.random.default_rng(args.seed).permutation(n_engine)
    t0 = time.perf_counter()
    for lo in range(0, n_engine, 128):
        batch = model.collate(samples.subset(order[lo:lo + 128]))
        opt.zero_grad(set_to_none=True)
        model.training_loss(batch).backward()
        opt.step()
    t_train = (time.perf_counter() - t0) / n_engine
    model.eval()

    reference, blockloop, allparam = np.asarray(reference), np.asarray(blockloop), np.asarray(allparam)
    rel = np.abs(engine[subset] - reference).max() / np.abs(reference).max()
    rho = {name: spearmanr(engine[subset], x).statistic
           for name, x in (("reference", reference), ("block", blockloop), ("allparam", allparam))}
    per_sample_engine = t_engine / n_engine
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{args.threads}, load average {os.getloadavg()[0]:.1f}; samples {n_all}, engine on {n_engine}, "
          f"loops on a random {len(subset)} (times extrapolated linearly to {n_all})")
    print()
    print("| method | s / sample | time for all samples (s) | speed-up of the engine | Spearman vs engine |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| engine (hooks, batch {args.batch_size}, chunks of {args.chunk_tokens} positions"
          f"{f', softmax by blocks of {ce_chunk} items' if ce_chunk else ''}) | "
          f"{per_sample_engine * 1e3:.3f} ms | "
          f"{per_sample_engine * n_all:.1f} | 1.0x | 1 |")
    if one_product is not None:
        t = one_product[1] / n_engine
        print(f"| engine as before: the softmax as one product over all items (ce_chunk 0) | {t * 1e3:.3f} ms | "
              f"{t * n_all:.1f} | {t / per_sample_engine:.1f}x | "
              f"{spearmanr(engine, one_product[0]).statistic:.6f} |")
    for label, t, r in (("reference loop (cal_grad_z: autograd.grad on the block, every parameter live, batch 1)",
                         t_reference, rho["reference"]),
                        ("block loop (autograd.grad, only the block live, batch 1)", t_block, rho["block"]),
                        ("extra: all-parameter loop (full backward per sample; more than the reference does)",
                         t_allparam, rho["allparam"])):
        print(f"| {label} | {t * 1e3:.3f} ms | {t * n_all:.1f} | {t / per_sample_engine:.1f}x | {r:.6f} |")
    print(f"| (one SASRec training epoch, batch 128, Adam) | {t_train * 1e3:.3f} ms | {t_train * n_all:.1f} | "
          f"- | - |")
    if args.authors:
        authors_rows(args, per_sample_engine, t_engine, n_engine)
    print()
    print(f"max relative difference engine vs reference loop on the subset: {rel:.2e}; "
          f"exactly-zero engine scores: {int(np.sum(engine == 0))} of {n_engine}")


def authors_rows(args, per_sample_engine: float, t_engine: float, n_engine: int) -> None:
    """The authors' own code, timed in this run (their model and data: see authors_influence.py)."""
    import authors_influence

    got = authors_influence.run(args.authors, args.loop_samples, args.authors_recursion_depth, args.seed)
    n = got["samples"]
    per = got["per_sample_seconds"]
    whole = got["v_seconds"] + per * n
    print(f"| authors' code: cal_grad_z per sample (their FineTrainer, their SASRecModel; {got['loop_samples']} "
          f"samples) | {per * 1e3:.3f} ms | {per * n:.1f} | {per / per_sample_engine:.1f}x | - |")
    print(f"| authors' code: v (cal_grad_batch_z over their {n:,} samples) + every sample's cal_grad_z | "
          f"{whole / n * 1e3:.3f} ms | {whole:.1f} | {whole / n / (t_engine / n_engine):.1f}x | - |")
    print(f"| (authors' code: LiSSA, estimate_hv, 5,000 steps; {got['recursion_depth']:,} run) | - | "
          f"{got['solve_seconds_5000']:.1f} | - | - |")


if __name__ == "__main__":
    main()
