"""``dealrec train-surrogate DATA --model sasrec --out DIR``."""
from __future__ import annotations

import dataclasses

import click

from dealrec_core.devices import DEVICE_HELP
from dealrec_core.errors import DealrecError
from dealrec_core.options import SEED
from surrogates.base import SURROGATES, surrogate_class
from surrogates import train as training
from surrogates.sasrec import LOSSES, POSITIONS, SASRecConfig
from surrogates.config import DEFAULT_MODEL, DEFAULT_THREADS, WEIGHTINGS, TrainConfig

# The model options (--hidden ... --positions) have no click default: left unset, the model's own
# default applies (and metrics.json's model_fields stays empty). Their help states SASRec's default,
# read from SASRecConfig.


@click.command("train-surrogate")
@click.argument("data", type=click.Path(file_okay=False))
@click.option("--model", "model_name", default=DEFAULT_MODEL, show_default=True,
              type=click.Choice(sorted(SURROGATES)), help="Surrogate model.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder: model.safetensors, config.json, metrics.json.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--hidden", type=int, help=f"Hidden size [{SASRecConfig.hidden}].")
@click.option("--n-blocks", type=int, help=f"Transformer blocks [{SASRecConfig.n_blocks}].")
@click.option("--n-heads", type=int, help=f"Attention heads [{SASRecConfig.n_heads}].")
@click.option("--ffn-hidden", type=int, help=f"Feed-forward inner size [{SASRecConfig.ffn_hidden}].")
@click.option("--max-len", type=int, help=f"Most recent positions kept [{SASRecConfig.max_len}].")
@click.option("--dropout", type=float, help=f"Dropout rate [{SASRecConfig.dropout}].")
@click.option("--loss", type=click.Choice(LOSSES),
              help=f"ce: full-softmax cross-entropy; bce: one sampled negative (DEALRec reference) "
                   f"[{SASRecConfig.loss}].")
@click.option("--positions", type=click.Choice(POSITIONS),
              help=f"Position ids counted back from the sequence's end (from_end) or from its start (from_start) "
                   f"[{SASRecConfig.positions}].")
@click.option("--lr", type=float, default=TrainConfig.lr, show_default=True)
@click.option("--weight-decay", type=float, default=TrainConfig.weight_decay, show_default=True)
@click.option("--batch-size", type=int, default=TrainConfig.batch_size, show_default=True)
@click.option("--max-epochs", type=int, default=TrainConfig.max_epochs, show_default=True)
@click.option("--patience", type=int, default=TrainConfig.patience, show_default=True,
              help="Stop after this many epochs without a better validation NDCG@10.")
@click.option("--max-minutes", type=float, default=TrainConfig.max_minutes,
              help="Stop after the epoch that passes this budget.")
@click.option("--weighting", type=click.Choice(WEIGHTINGS), default=TrainConfig.weighting,
              show_default=True, help="Weigh every predicted item (position) or every sample equally.")
@click.option("--seed", type=SEED, default=TrainConfig.seed, show_default=True)
@click.option("--threads", type=int, default=TrainConfig.threads,
              help=f"Torch threads [{DEFAULT_THREADS}, whatever the machine: the weights depend on the thread count].")
@click.option("--device", default=TrainConfig.device, show_default=True,
              help=f"{DEVICE_HELP}. A GPU gives other weights than the CPU (and not always the same bits twice).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_surrogate_command(data, model_name, out_dir, overwrite, lr, weight_decay, batch_size, max_epochs,
                            patience, max_minutes, weighting, seed, threads, device, quiet, **model_options):
    """Train a surrogate recommender on all samples of a prepared DATA folder.

    Early stopping on validation NDCG@10; reports valid and test Recall/NDCG@10/20/50 of the
    best epoch in DIR/metrics.json.
    """
    model_fields, cfg = training_request(model_name, lr, weight_decay, batch_size, max_epochs, patience, max_minutes,
                                         weighting, seed, threads, quiet, device=device, **model_options)
    metrics = training.train_surrogate(data, model_name, out_dir, model_fields, cfg, overwrite=overwrite)
    for split in ("valid", "test"):
        m = metrics[split]
        click.echo(f"{split:5s}  " + "  ".join(f"R@{k} {m[f'recall@{k}']:.4f} N@{k} {m[f'ndcg@{k}']:.4f}"
                                             for k in (10, 20, 50)))
    click.echo(f"best epoch {metrics['best_epoch']} of {metrics['epochs']}, {metrics['seconds']:.0f} s "
               f"({metrics['seconds_per_epoch']:.1f} s an epoch of training); wrote {out_dir}")


def training_request(model_name, lr, weight_decay, batch_size, max_epochs, patience, max_minutes, weighting, seed,
                     threads, quiet, device=TrainConfig.device, **model_options) -> tuple[dict, TrainConfig]:
    """The command's options as ``train_surrogate``'s arguments: the model options given (None: left out; one
    that the model does not take is refused) and the ``TrainConfig``. The Python API builds them here too."""
    fields = {f.name for f in dataclasses.fields(surrogate_class(model_name).config_class)}
    model_fields = {k: v for k, v in model_options.items() if v is not None}
    unknown = sorted(set(model_fields) - fields)
    if unknown:
        raise DealrecError(f"--{unknown[0].replace('_', '-')} does not apply to model {model_name}")
    cfg = TrainConfig(lr=lr, weight_decay=weight_decay, batch_size=batch_size, max_epochs=max_epochs,
                      patience=patience, seed=seed, weighting=weighting, max_minutes=max_minutes,
                      threads=threads, progress=not quiet, device=device)
    return model_fields, cfg


train_surrogate = train_surrogate_command  # the name dealrec/cli.py registers
