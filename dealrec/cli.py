"""The ``dealrec`` command line.

Each command lives beside the code it drives and is named here, in ``COMMANDS``; a command's
module is imported only when that command (or the help listing) needs it, so ``dealrec
prepare`` does not pay for importing Ray, transformers and peft.
A ``DealrecError`` becomes one line on stderr and exit status 2, never a traceback; so does a
file-system error (``OSError``: a full disk, a read-only folder, a file where a folder should be),
as ``error: PATH: what went wrong`` (docs/reliability.md).
"""
from __future__ import annotations

import importlib
import sys

import click

from dealrec_core import __version__
from dealrec_core.errors import DealrecError, one_line


class _LazyGroup(click.Group):
    """A group whose subcommands are ``module:attribute`` strings, imported on first use."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy and name not in self.commands:
            module, attr = self.lazy[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DealrecError as e:
            click.echo(f"error: {one_line(str(e))}", err=True)
            sys.exit(2)
        except OSError as e:
            from dealrec_core.paths import describe_os_error

            click.echo(f"error: {one_line(describe_os_error(e))}", err=True)
            sys.exit(2)


@click.group(cls=_LazyGroup, lazy={
    "prepare": "dealrec.prepare.cli:prepare_command",
    "train-surrogate": "surrogates.cli:train_surrogate",
    "score": "dealrec.score:score_command",
    "select": "dealrec.select:select_command",
    "export": "dealrec.export:export_command",
    "prune": "dealrec.prune:prune_command",
    "compare": "dealrec.compare:compare_command",
    "config-from-run": "dealrec.runconfig:config_from_run_command",
})
@click.version_option(__version__, prog_name="dealrec")
def main():
    """Prune the fine-tuning set of an LLM-based recommender (DEALRec)."""


@main.group(cls=_LazyGroup, lazy={
    "tiger": "finetune.tiger_train:tiger_command",
    "bigrec": "finetune.bigrec:bigrec_command",
})
def finetune():
    """Fine-tune a downstream recommender (TIGER, BIGRec) on a samples table or coreset."""
