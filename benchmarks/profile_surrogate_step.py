"""Where a surrogate's training step spends its time: batch building, forward, backward, Adam.

    python benchmarks/profile_surrogate_step.py --data PREPARED [--model sasrec] [--batching bucketed] [--batches 50]
        [--ce-chunk 256] [--graph-products csr,coo] [--keep-exponentials yes,no] [--repeats 3]

Times the first ``--batches`` batches of one epoch (the trainer's ``EpochPlan``, seed 0, batch 128, 2 threads by
default) of a fresh model with its default options, each component on its own, and extrapolates an epoch; a
row per (graph products, repeat), then the median epoch of each. Forward is the model's ``training_loss`` (for
SASRec the encoder and the loss apart). DCRec's item-graph views are run through CSR products on the CPU
(``surrogates/dcrec.py``); ``--graph-products coo`` makes its propagators use torch's COO product instead (the
code before 2026-11-27), so the two are timed side by side in one run; its ``graph views`` column is the
views' forward and backward alone, once per batch, as a training step runs them. ``--keep-exponentials no``
makes the softmax by blocks recompute each block's exponentials for the table's gradient instead of keeping the
forward's (the code before 2026-11-27, session 12); ``yes,no`` times both, alternating, in one run.
Behind docs/surrogates.md's profile of the full softmax, its block sizes (``--ce-chunk``) and DCRec's epoch.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import surrogates.softmax as softmax
from common import parse_with_data
from surrogates.config import BATCHINGS
from surrogates.registry import model_names, surrogate_class
from surrogates.softmax import softmax_by_blocks
from surrogates.train import EpochPlan


def profile(model, samples, args, products: str) -> tuple[dict[str, float], int, int]:
    graphs = hasattr(model, "graph_views")   # DCRec
    if graphs:
        model.prepare_training(samples)
        if products == "coo":
            for op in model._propagators():
                op.csr = None
    model.train()
    plan = EpochPlan(model, samples, 128, args.batching, "position")
    batches = plan.batches(np.random.default_rng(args.seed))[:args.batches]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    split = args.model == "sasrec"
    spent = dict.fromkeys(("batch", "encoder", "loss", "backward", "adam") if split else
                          ("batch", "forward", "backward", "adam"), 0.0)
    graph = 0.0
    positions = 0
    with softmax_by_blocks(model, args.ce_chunk):
        for idx, scale in batches:
            t = [time.perf_counter()]
            batch = model.training_batch(samples.subset(idx), 0)
            t.append(time.perf_counter())
            if split:
                states = model.hidden_states(batch["input_ids"])
                t.append(time.perf_counter())
                losses, _ = model.position_losses(batch, states)
                loss = losses.mean() * (scale or 1.0)
            else:
                loss = model.training_loss(batch) * (scale or 1.0)
            t.append(time.perf_counter())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t.append(time.perf_counter())
            optimizer.step()
            t.append(time.perf_counter())
            positions += int((batch["labels"] > 0).sum())
            for k, key in enumerate(spent):
                spent[key] += t[k + 1] - t[k]
            if graphs:
                g0 = time.perf_counter()
                sum(v.sum() for v in model.graph_views()).backward()
                graph += time.perf_counter() - g0
        optimizer.zero_grad(set_to_none=True)
    if graphs:
        spent["graph views"] = graph
    return spent, positions, plan.n_batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=model_names(), default="sasrec")
    ap.add_argument("--batching", choices=BATCHINGS, default="bucketed")
    ap.add_argument("--batches", type=int, default=50, help="batches timed (the epoch is extrapolated)")
    ap.add_argument("--ce-chunk", type=int, default=0, help="the trainer's --ce-chunk (0: one product)")
    ap.add_argument("--graph-products", default="csr", help="dcrec: csr, coo or both (csr,coo)")
    ap.add_argument("--keep-exponentials", default="yes",
                    help="with --ce-chunk: keep the forward's exponentials for the table's gradient (yes), "
                         "recompute them (no), or both (yes,no)")
    ap.add_argument("--repeats", type=int, default=1)
    args, data, samples = parse_with_data(ap, threads=2)
    products = args.graph_products.split(",") if args.model == "dcrec" else ["-"]
    keeps = args.keep_exponentials.split(",")
    if not set(keeps) <= {"yes", "no"}:
        ap.error("--keep-exponentials: yes, no or yes,no")
    settings = [(p, keep) for p in products for keep in keeps]
    epochs: dict[tuple, list[float]] = {s: [] for s in settings}
    kept_bytes = softmax.KEEP_EXPONENTIALS_BYTES
    print(f"{args.model}, {args.batching}, ce_chunk {args.ce_chunk}, {args.batches} batches, "
          f"{torch.get_num_threads()} threads")
    print("| graph products | keep exponentials | repeat | positions | components | total | epoch |")
    for repeat in range(args.repeats):
        for p, keep in settings:
            softmax.KEEP_EXPONENTIALS_BYTES = kept_bytes if keep == "yes" else 0
            cls = surrogate_class(args.model)
            model = cls(cls.config_class(seed=args.seed, n_items=data.n_items))
            spent, positions, n_batches = profile(model, samples, args, p)
            step = sum(v for k, v in spent.items() if k != "graph views")
            epochs[p, keep].append(step * n_batches / args.batches)
            print(f"| {p} | {keep} | {repeat} | {positions} positions | "
                  + " | ".join(f"{k} {v:.2f} s" for k, v in spent.items())
                  + f" | total {step:.2f} s | an epoch about {epochs[p, keep][-1]:.1f} s |", flush=True)
    softmax.KEEP_EXPONENTIALS_BYTES = kept_bytes
    for p, keep in settings:
        print(f"median epoch (graph products {p}, keep exponentials {keep}): "
              f"{statistics.median(epochs[p, keep]):.1f} s over {args.repeats} repeat(s)")


if __name__ == "__main__":
    main()
