"""The ``dealrec`` command line.

Each command lives beside the code it drives and is registered here, one line each.
A ``DealrecError`` becomes one line on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import sys

import click

from dealrec import __version__
from dealrec.errors import DealrecError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DealrecError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="dealrec")
def main():
    """Prune the fine-tuning set of an LLM-based recommender (DEALRec)."""


# ---- command registry: one line per command module -------------------------------------


@main.group()
def finetune():
    """Fine-tune a downstream recommender (TIGER, BIGRec) on a samples table or coreset."""
from dealrec.prepare import prepare_command; main.add_command(prepare_command)  # noqa: E402

from finetune.bigrec import bigrec_command; finetune.add_command(bigrec_command, "bigrec")  # noqa: E402
from dealrec.select import select_command; main.add_command(select_command)  # noqa: E402
from dealrec.export import export_command; main.add_command(export_command)  # noqa: E402
from dealrec.score import score_command; main.add_command(score_command)  # noqa: E402
from surrogates.cli import train_surrogate; main.add_command(train_surrogate)  # noqa: E402
from finetune.tiger_train import tiger_command; finetune.add_command(tiger_command, "tiger")  # noqa: E402
from dealrec.prune import prune_command; main.add_command(prune_command)  # noqa: E402
