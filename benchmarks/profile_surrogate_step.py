"""Where a SASRec training step spends its time: batch building, encoder forward, loss forward, backward, Adam.

    python benchmarks/profile_surrogate_step.py --data PREPARED [--batching bucketed] [--batches 50] [--ce-chunk 256]

Times the first ``--batches`` batches of one epoch (the trainer's ``EpochPlan``, seed 0, batch 128,
2 threads by default) of a fresh default SASRec, each component on its own, and extrapolates an epoch.
Behind docs/surrogates.md's profile of the full softmax and its block sizes (``--ce-chunk``).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import parse_with_data
from surrogates.config import BATCHINGS
from surrogates.registry import surrogate_class
from surrogates.train import EpochPlan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batching", choices=BATCHINGS, default="bucketed")
    ap.add_argument("--batches", type=int, default=50, help="batches timed (the epoch is extrapolated)")
    ap.add_argument("--ce-chunk", type=int, default=0, help="the trainer's --ce-chunk (0: one product)")
    args, data, samples = parse_with_data(ap, threads=2)
    cls = surrogate_class("sasrec")
    model = cls(cls.config_class(seed=args.seed, n_items=data.n_items))
    model.train()
    model.ce_chunk = args.ce_chunk
    plan = EpochPlan(model, samples, 128, args.batching, "position")
    batches = plan.batches(np.random.default_rng(args.seed))[:args.batches]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    spent = dict.fromkeys(("batch", "encoder", "loss", "backward", "adam"), 0.0)
    positions = 0
    for idx, scale in batches:
        t = [time.perf_counter()]
        batch = model.training_batch(samples.subset(idx), 0)
        t.append(time.perf_counter())
        states = model.hidden_states(batch["input_ids"])
        t.append(time.perf_counter())
        losses, _ = model.position_losses(batch, states)
        loss = losses.mean() * (scale or 1.0)
        t.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        optimizer.step()
        t.append(time.perf_counter())
        positions += len(losses)
        for k, key in enumerate(spent):
            spent[key] += t[k + 1] - t[k]
    total = sum(spent.values())
    print(f"{args.batching}, ce_chunk {args.ce_chunk}: {len(batches)} batches, {positions} positions; "
          + ", ".join(f"{k} {v:.2f} s" for k, v in spent.items())
          + f"; total {total:.2f} s, an epoch about {total * plan.n_batches / len(batches):.1f} s")


if __name__ == "__main__":
    main()
