"""A fixed torch thread count for a block of work.

Float reductions (matrix products, sums) are split differently for different thread counts, so
the last bits of a result depend on them; in an iterative fit with argmin decisions (k-means, an
RQ-VAE's code assignment) those bits grow into different outputs. Work that must give the same
bits on every run and machine runs inside ``fixed_threads(n)`` with a fixed ``n``.
"""
from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def fixed_threads(n: int = 1) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the caller's count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
