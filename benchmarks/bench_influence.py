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
        [--device cuda] [--repeats 3]

``--device cuda`` runs every side on the GPU (the engine with the one-product softmax, as ``dealrec score``
does there; the loops move each sample to the GPU as the reference's ``cal_grad_z`` does), with a
synchronisation before every clock read. ``--repeats R`` times the engine and the three loops R times in turn
in the one process (after a warm-up of each) and prints the median and every run's speed-up.

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
from dealrec_core.devices import to_device
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
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where every side runs")
    ap.add_argument("--repeats", type=int, default=1,
                    help="time the engine and the loops this many times in turn; the table gives medians")
    ap.add_argument("--warmup", type=int, default=5, help="loop samples run untimed before the timed loops")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--authors", help="a checkout of github.com/Linxyhaha/DEALRec: adds the rows of the authors' own "
                                      "influence code on their Games data (benchmarks/authors_influence.py)")
    ap.add_argument("--authors-recursion-depth", type=int, default=5000,
                    help="LiSSA steps run of the authors' code (their 5,000 by default; fewer are extrapolated)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.repeats < 1:
        raise SystemExit(f"--repeats must be 1 or more, got {args.repeats}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device on this machine")

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    samples = PreparedData(args.data).samples()
    n_all = len(samples)
    n_engine = args.engine_samples or n_all
    model = load_surrogate(args.surrogate).to(device).eval()
    block = model.influence_block()

    # ---- engine over the first n_engine samples
    freeze_all_but(model, block)
    u = None
    if args.run:
        from safetensors.numpy import load_file
        u = load_file(os.path.join(args.run, "work", "solve", "shard-00000.safetensors"))["u"]

    def run_engine(ce_chunk, n=n_engine):
        """capture + dot products over the first n samples: (scores, seconds, U). The hooks are on only here,
        so that the loops pay nothing for them."""
        taps = LinearTaps(block)
        t0 = clock()
        parts = []
        for lo in range(0, n, args.batch_size):
            idx = np.arange(lo, min(lo + args.batch_size, n))
            parts.append((idx, capture_samples(model, taps, samples.subset(idx), args.chunk_tokens, ce_chunk)))
        t_capture = clock() - t0
        taps.remove()
        v = sum(r.grad_sum for _, r in parts) / n
        uu = v if u is None else u
        t0 = clock()
        scores = np.zeros(n)
        for idx, r in parts:
            scores[idx] = influence_from_rows(r.sample_index, r.a, r.g, uu, len(idx))
        return scores, t_capture + clock() - t0, uu

    ce_chunk = capture_ce_chunk(device) if model.supports_ce_chunk() else 0
    run_engine(ce_chunk, min(n_engine, args.batch_size))     # warm-up (allocator, kernels), untimed
    engine, t_engine, u = run_engine(ce_chunk)
    engine_times = [t_engine]
    one_product = run_engine(0) if ce_chunk else None   # the engine before the softmax by blocks, side by side

    # ---- loops on a seeded subset
    rng = np.random.default_rng(args.seed)
    subset = np.sort(rng.choice(n_engine, size=min(args.loop_samples, n_engine), replace=False))
    u_t = torch.from_numpy(u).to(device=device, dtype=block.weight.dtype)

    def one_batch(i):
        return to_device(model.collate(samples.subset([i])), device)

    def grad_dot_u(i):
        (g,) = torch.autograd.grad(model.sample_losses(one_batch(i)).sum(), block.weight)
        return float((g.double() * u_t.double()).sum())

    def allparam_dot_u(i):
        model.zero_grad(set_to_none=True)
        model.sample_losses(one_batch(i)).sum().backward()
        return float((block.weight.grad.double() * u_t.double()).sum())

    def all_live():
        for p in model.parameters():
            p.requires_grad_(True)

    # (name, set-up, per-sample function); the reference's cal_grad_z first
    loops = (("reference", all_live, grad_dot_u), ("allparam", all_live, allparam_dot_u),
             ("block", lambda: freeze_all_but(model, block), grad_dot_u))
    loop_values, loop_times = {}, {name: [] for name, _, _ in loops}
    warm = subset[:args.warmup]
    for rep in range(args.repeats):
        if rep:
            freeze_all_but(model, block)
            engine_times.append(run_engine(ce_chunk)[1])
        for name, set_up, fn in loops:
            set_up()
            for i in warm:
                fn(i)
            t0 = clock()
            values = [fn(i) for i in subset]
            loop_times[name].append((clock() - t0) / len(subset))
            loop_values.setdefault(name, values)

    # ---- one training epoch over the same samples, timed side by side (the trainer's inner loop)
    all_live()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = np.random.default_rng(args.seed).permutation(n_engine)
    t0 = clock()
    for lo in range(0, n_engine, 128):
        batch = to_device(model.collate(samples.subset(order[lo:lo + 128])), device)
        opt.zero_grad(set_to_none=True)
        model.training_loss(batch).backward()
        opt.step()
    t_train = (clock() - t0) / n_engine
    model.eval()

    reference = np.asarray(loop_values["reference"])
    rel = np.abs(engine[subset] - reference).max() / np.abs(reference).max()
    rho = {name: spearmanr(engine[subset], np.asarray(x)).statistic for name, x in loop_values.items()}
    engine_per = [t / n_engine for t in engine_times]
    per_sample_engine = float(np.median(engine_per))
    where = (f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}" if device.type == "cuda"
             else f"torch threads {args.threads}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {where}, "
          f"load average {os.getloadavg()[0]:.1f}; device {device}; samples {n_all}, engine on {n_engine}, "
          f"loops on a random {len(subset)} (times extrapolated linearly to {n_all}); "
          f"{args.repeats} run(s), medians")
    print()
    print("| method | s / sample | time for all samples (s) | speed-up of the engine (each run) | Spearman vs engine |")
    print("| --- | --- | --- | --- | --- |")

    def runs(ts):
        return ", ".join(f"{t / e:.1f}" for t, e in zip(ts, engine_per))

    print(f"| engine (hooks, batch {args.batch_size}, chunks of {args.chunk_tokens} positions"
          f"{f', softmax by blocks of {ce_chunk} items' if ce_chunk else ''}) | "
          f"{per_sample_engine * 1e3:.3f} ms | "
          f"{per_sample_engine * n_all:.1f} | 1.0x | 1 |")
    if one_product is not None:
        t = one_product[1] / n_engine
        print(f"| engine as before: the softmax as one product over all items (ce_chunk 0) | {t * 1e3:.3f} ms | "
              f"{t * n_all:.1f} | {t / engine_per[0]:.1f}x (first run) | "
              f"{spearmanr(engine, one_product[0]).statistic:.6f} |")
    labels = {"reference": "reference loop (cal_grad_z: autograd.grad on the block, every parameter live, batch 1)",
              "block": "block loop (autograd.grad, only the block live, batch 1)",
              "allparam": "extra: all-parameter loop (full backward per sample; more than the reference does)"}
    for name in ("reference", "block", "allparam"):
        t = float(np.median(loop_times[name]))
        print(f"| {labels[name]} | {t * 1e3:.3f} ms | {t * n_all:.1f} | "
              f"**{float(np.median([x / e for x, e in zip(loop_times[name], engine_per)])):.1f}x** "
              f"({runs(loop_times[name])}) | {rho[name]:.6f} |")
    print(f"| (one SASRec training epoch, batch 128, Adam) | {t_train * 1e3:.3f} ms | {t_train * n_all:.1f} | "
          f"- | - |")
    if args.authors:
        authors_rows(args, per_sample_engine, per_sample_engine * n_engine, n_engine)
    print()
    print(f"max relative difference engine vs reference loop on the subset: {rel:.2e}; "
          f"exactly-zero engine scores: {int(np.sum(engine == 0))} of {n_engine}")


def authors_rows(args, per_sample_engine: float, t_engine: float, n_engine: int) -> None:
    """The authors' own code, timed in this run (their model and data: see authors_influence.py)."""
    import authors_influence

    got = authors_influence.run(args.authors, args.loop_samples, args.authors_recursion_depth, args.seed,
                                cuda=args.device.startswith("cuda"))
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
