"""How far the surrogate's full softmax by blocks of items is from this CPU's matrix products alone.

    python benchmarks/softmax_ceiling.py [--positions 760] [--items 17333] [--dim 64] [--chunk 256]
        [--threads 2] [--repeats 7]

The SASRec training step's loss (``surrogates.softmax._ChunkedSoftmaxCE``, what the default trainer runs on a
CPU) does, per block of ``--chunk`` items, two products of ``positions x dim`` by ``dim x chunk`` (the logits, and
the exponentials times the block's rows with a column of ones), and between them a running maximum, a rescale and
the exponentials. Its backward adds the table's gradient (one product per block from the kept exponentials) and
the gradient with respect to the hidden states (no product). This script times, on random inputs of one training
batch's shape (Games: about 760 real positions a bucketed batch of 128, 17,333 items, 64 dimensions):

- the trainer's forward, and its forward plus backward (the gradients of the hidden states and of the table);
- the forward's two products alone, by the same blocks, with nothing between them;
- the same two products as one product each over every item (the CPU's matrix product at its best shape).

Each is run ``--repeats`` times in turn, ``--calls`` calls each (10 by default), and the median is printed with the GFLOP/s of the products
it contains (the forward's two, the backward's third): the share of the work that is not a product is what an
exact kernel could still remove. Behind docs/engine.md, "What is left of the prune on a CPU".
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from surrogates.softmax import chunked_cross_entropy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--positions", type=int, default=760, help="real positions in a batch")
    ap.add_argument("--items", type=int, default=17333, help="rows of the item table (row 0 is padding)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=256, help="items a block (the trainer's --ce-chunk)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--calls", type=int, default=10, help="calls timed together in one repeat")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, d, items, chunk = args.positions, args.dim, args.items, args.chunk
    h = (torch.randn(n, d) * 0.5).requires_grad_()
    table = (torch.randn(items, d) * 0.3).requires_grad_()
    y = torch.randint(1, items, (n,))
    rows = torch.cat([table.detach()[1:], torch.ones(items - 1, 1)], dim=1)   # the candidates and a column of ones

    def forward() -> None:
        chunked_cross_entropy(h, table, y, chunk=chunk, skip=1)

    def forward_backward() -> None:
        chunked_cross_entropy(h, table, y, chunk=chunk, skip=1).sum().backward()
        h.grad = table.grad = None

    def products_by_blocks() -> None:
        acc = torch.zeros(n, d + 1)
        x = h.detach()
        for lo in range(0, items - 1, chunk):
            block = rows[lo:lo + chunk]
            acc.addmm_(x @ block[:, :d].T, block)

    def products_whole() -> None:
        (h.detach() @ rows[:, :d].T) @ rows

    forward_flops = 2 * n * (items - 1) * (2 * d + 1)
    backward_flops = 2 * n * (items - 1) * d
    cases = [("the trainer's forward (blocks)", forward, forward_flops),
             ("the trainer's forward and backward (blocks)", forward_backward, forward_flops + backward_flops),
             ("the forward's two products alone, by blocks", products_by_blocks, forward_flops),
             ("the forward's two products, one each over every item", products_whole, forward_flops)]
    for _, fn, _ in cases:   # warm-up: memory pools, kernels
        fn()
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _ in range(args.repeats):
        for name, fn, _ in cases:
            t0 = time.perf_counter()
            for _ in range(args.calls):
                fn()
            times[name].append((time.perf_counter() - t0) / args.calls)
    print(f"{n} positions x {items} items x {d} dimensions, blocks of {chunk}, {args.threads} threads, "
          f"medians of {args.repeats} x {args.calls} calls")
    print("| what | ms a batch | GFLOP/s of its products |")
    print("| --- | --- | --- |")
    for name, _, flops in cases:
        m = statistics.median(times[name])
        print(f"| {name} | {m * 1e3:.1f} | {flops / m / 1e9:.0f} |")


if __name__ == "__main__":
    main()
