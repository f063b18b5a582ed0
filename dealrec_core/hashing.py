"""The one 64-bit hash mixer: splitmix64 (Steele, Lea & Flood 2014; Vigna's reference code).

Randomness keyed by ids (selection draws, SASRec's negatives) comes from here instead of a
global random state, so a result depends only on the ids and the seed. All arithmetic wraps
modulo 2**64.
"""
from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's increment, 2**64 / golden ratio


def mix64(x) -> np.ndarray:
    """splitmix64's finaliser: a bijective, well-mixed map of uint64 values, vectorised."""
    x = np.asarray(x).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def splitmix64(x) -> np.ndarray:
    """One splitmix64 step from state ``x``: ``mix64(x + GOLDEN)`` (splitmix64(0) = 0xE220A8397B1DCDAF)."""
    with np.errstate(over="ignore"):
        return mix64(np.asarray(x).astype(np.uint64) + GOLDEN)
