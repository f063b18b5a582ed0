"""The trainers' Adam: torch's multi-tensor ("foreach") implementation, also on the CPU.

On a CPU torch steps Adam one parameter at a time unless asked otherwise; its multi-tensor form does the
same arithmetic in the same order on every element, grouped into fewer calls, so it gives the same weights
bit for bit (``tests/test_optim.py`` checks that for Adam, Adam with weight decay and AdamW under a
learning-rate schedule, so a torch that broke it would fail there) and costs less: on the 2-core VM a
default SASRec step's Adam took 2.5-3.1 ms against 3.5-4.5 ms (docs/surrogates.md, "Bit-exact savings"). So a model
trained before is trained again to the same bytes (checked for Games' default surrogate, 11b3e80e401c...). torch's
fused Adam is faster still, but rounds differently (not the same weights), so it is not used.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch


def adam(params: Iterable[Any], *, decoupled: bool = False, **options: Any) -> torch.optim.Optimizer:
    """``torch.optim.Adam(params, **options)`` (``decoupled``: ``AdamW``) in its multi-tensor form."""
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return cls(params, foreach=True, **options)
