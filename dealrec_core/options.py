"""Command-line option types shared by every command (ground floor: click only).

``SEED`` is the type of every ``--seed``: an integer 0..2**32-1. The seeds reach numpy
(``default_rng``, which refuses negatives), torch (``manual_seed``, 64 bits) and hash keys built
from an int64 (``dealrec.strata.sample_keys``); the smallest common range is numpy's legacy 32-bit
one, which also keeps a seed valid for any library that seeds ``np.random.seed``. A value outside
it is refused by click with one line (``Error: Invalid value for '--seed': ...``), exit 2, before
any work, instead of a traceback deep inside a run.
"""
from __future__ import annotations

import click

from dealrec_core.errors import DealrecError

SEED_MAX = 2**32 - 1


class SeedType(click.ParamType):
    """An integer seed in 0..SEED_MAX."""

    name = "seed"

    def convert(self, value, param, ctx):
        if isinstance(value, bool):
            self.fail(f"{value!r} is not an integer seed", param, ctx)
        if isinstance(value, int):
            number = value
        else:
            text = str(value).strip()
            try:
                number = int(text, 10)
            except ValueError:
                self.fail(f"{text[:40]!r} is not an integer seed (0..{SEED_MAX})", param, ctx)
        if not 0 <= number <= SEED_MAX:
            shown = str(number) if len(str(number)) <= 40 else f"{str(number)[:20]}... ({len(str(number))} digits)"
            self.fail(f"seed {shown} is out of range 0..{SEED_MAX}", param, ctx)
        return number

    def get_metavar(self, param, ctx=None):   # click 8.1 passes (param), 8.2 (param, ctx)
        return "INTEGER"


SEED = SeedType()


def check_seed(seed, what: str = "seed") -> int:
    """The same rule for seeds that do not come through a click option (``compare --seeds``)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise DealrecError(f"{what} {seed}: a seed is an integer 0..{SEED_MAX}")
    return seed
