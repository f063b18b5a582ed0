"""What the benchmarks share: the options every one of them takes and the data they load."""
from __future__ import annotations

import argparse

import torch

from dealrec_core.data import PreparedData


def parse_with_data(ap: argparse.ArgumentParser, threads: int = 1, seed: int = 0):
    """Add ``--data`` (a prepared folder), ``--threads`` and ``--seed`` to ``ap``, parse, fix torch's thread
    count and load the samples. Returns ``(args, data, samples)``."""
    ap.add_argument("--data", required=True, help="A prepared data folder (dealrec prepare).")
    ap.add_argument("--threads", type=int, default=threads, help="Torch threads.")
    ap.add_argument("--seed", type=int, default=seed)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = PreparedData(args.data)
    return args, data, data.samples()
