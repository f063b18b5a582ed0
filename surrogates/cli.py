"""``dealrec train-surrogate DATA --model sasrec|bert4rec|dcrec --out DIR``.

The model options are not written here: they are every registered model's option fields
(``SurrogateConfig.option_fields``: a dataclass field with a ``help`` in its metadata), one click
option per field name. They have no click default: left unset, the model's own default applies
(and metrics.json's model_fields stays empty). ``--help`` lists them in one section per model, each
with that model's default, read from its config class.
"""
from __future__ import annotations

import dataclasses

import click

from dealrec_core.devices import DEVICE_HELP
from dealrec_core.errors import DealrecError
from dealrec_core.options import SEED
from surrogates import train as training
from surrogates.config import (BATCHINGS, DEFAULT_MODEL, DEFAULT_THREADS, PATIENCE_CEILING, PATIENCE_FLOOR,
                               PATIENCE_UPDATES, WEIGHTINGS, TrainConfig, floor_patience_samples)
from surrogates.registry import SURROGATES, model_names, surrogate_class
from surrogates.softmax import CE_CHUNK_CPU


def model_option_fields() -> dict[str, list[tuple[str, dataclasses.Field]]]:
    """Each model option's name -> the (model, field) pairs that declare it, models in registry order."""
    found: dict[str, list[tuple[str, dataclasses.Field]]] = {}
    for name, cls in SURROGATES.items():
        for f in cls.config_class.option_fields():
            found.setdefault(f.name, []).append((name, f))
    return found


def _field_type(name: str, fields: list[tuple[str, dataclasses.Field]]):
    """The click type of an option that several models may declare: one Python type, the union of choices."""
    choices = [c for _, f in fields for c in f.metadata.get("choices", ())]
    if choices:
        return click.Choice(list(dict.fromkeys(choices)))
    kinds = {type(f.default) for _, f in fields}
    if kinds == {int, float}:
        kinds = {float}
    if len(kinds) != 1:
        raise TypeError(f"model option {name!r} has defaults of several types: {sorted(k.__name__ for k in kinds)}")
    return kinds.pop()


def _model_options(f):
    for name, fields in reversed(list(model_option_fields().items())):
        models = ", ".join(model for model, _ in fields)
        f = click.option(f"--{name.replace('_', '-')}", name, type=_field_type(name, fields), default=None,
                         help=f"{fields[0][1].metadata['help']} Models: {models}.")(f)
    return f


class ModelOptionsCommand(click.Command):
    """``--help`` lists the training options, then one section per registered model with its own options."""

    def format_options(self, ctx, formatter):
        model_options = model_option_fields()
        params = {p.name: p for p in self.get_params(ctx)}
        general = [p.get_help_record(ctx) for name, p in params.items()
                   if name not in model_options and isinstance(p, click.Option)]
        with formatter.section("Options"):
            formatter.write_dl([r for r in general if r])
        for name, cls in SURROGATES.items():
            rows = []
            for field in cls.config_class.option_fields():
                opts = params[field.name].get_help_record(ctx)[0]
                rows.append((opts, f"{field.metadata['help']}  [{field.default}]"))
            with formatter.section(f"{cls.__name__} options (--model {name}; unset: these defaults)"):
                formatter.write_dl(rows)


@click.command("train-surrogate", cls=ModelOptionsCommand)
@click.argument("data", type=click.Path(file_okay=False))
@click.option("--model", "model_name", default=DEFAULT_MODEL, show_default=True,
              type=click.Choice(model_names()), help="Surrogate model (its options: below).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder: model.safetensors, config.json, metrics.json, checkpoints/.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@_model_options
@click.option("--lr", type=float, default=TrainConfig.lr, show_default=True)
@click.option("--weight-decay", type=float, default=TrainConfig.weight_decay, show_default=True)
@click.option("--batch-size", type=int, default=TrainConfig.batch_size, show_default=True)
@click.option("--max-epochs", type=int, default=TrainConfig.max_epochs, show_default=True)
@click.option("--patience", type=click.IntRange(min=1), default=TrainConfig.patience,
              help=f"Stop after this many epochs without a better validation NDCG@10 [auto: "
                   f"{PATIENCE_UPDATES:,} updates' worth of epochs, at least {PATIENCE_FLOOR} and at most "
                   f"{PATIENCE_CEILING}; {PATIENCE_FLOOR} on every log of "
                   f"{floor_patience_samples(TrainConfig.batch_size):,} samples or more at batch "
                   f"{TrainConfig.batch_size}].")
@click.option("--max-minutes", type=float, default=TrainConfig.max_minutes,
              help="Stop after the epoch that passes this budget.")
@click.option("--weighting", type=click.Choice(WEIGHTINGS), default=TrainConfig.weighting,
              show_default=True, help="Weigh every predicted item (position) or every sample equally.")
@click.option("--batching", type=click.Choice(BATCHINGS), default=TrainConfig.batching,
              help="Cut each epoch into random batches, or into batches of samples of similar length (bucketed: "
                   "less padding, the same risk) [the model's: bucketed for sasrec, random for bert4rec and dcrec].")
@click.option("--ce-chunk", type=int, default=TrainConfig.ce_chunk,
              help="Compute the full-softmax loss this many items at a time (the same loss, less memory traffic; "
                   f"0: one product over all items; faster on a CPU, slower on a GPU) [sasrec: {CE_CHUNK_CPU} on "
                   "the CPU, 0 on a GPU or with --loss bce; bert4rec, dcrec: 0]. "
                   "A number other than 0: models with a full-softmax loss only.")
@click.option("--checkpoints", type=click.IntRange(min=1), default=TrainConfig.checkpoints, show_default=True,
              help="Keep the weights of this many validated epochs ending at the best one: the best's as the model, "
                   "the ones before it in OUT/checkpoints/ ('dealrec score' takes the stationary influence at the "
                   "mean weights of the best and these; 1: the best alone).")
@click.option("--seed", type=SEED, default=TrainConfig.seed, show_default=True)
@click.option("--threads", type=int, default=TrainConfig.threads,
              help=f"Torch threads [{DEFAULT_THREADS}, whatever the machine: the weights depend on the thread count].")
@click.option("--device", default=TrainConfig.device, show_default=True,
              help=f"{DEVICE_HELP}. A GPU gives other weights than the CPU (the same bits twice: deterministic kernels).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_surrogate_command(data, model_name, out_dir, overwrite, lr, weight_decay, batch_size, max_epochs,
                            patience, max_minutes, weighting, batching, ce_chunk, checkpoints, seed, threads, device,
                            quiet, **model_options):
    """Train a surrogate recommender on all samples of a prepared DATA folder.

    Early stopping on validation NDCG@10; reports valid and test Recall/NDCG@10/20/50 of the
    best epoch in DIR/metrics.json.
    """
    model_fields, cfg = training_request(model_name, lr, weight_decay, batch_size, max_epochs, patience, max_minutes,
                                         weighting, seed, threads, quiet, device=device, batching=batching,
                                         ce_chunk=ce_chunk, checkpoints=checkpoints, **model_options)
    metrics = training.train_surrogate(data, model_name, out_dir, model_fields, cfg, overwrite=overwrite)
    for split in ("valid", "test"):
        m = metrics[split]
        click.echo(f"{split:5s}  " + "  ".join(f"R@{k} {m[f'recall@{k}']:.4f} N@{k} {m[f'ndcg@{k}']:.4f}"
                                             for k in (10, 20, 50)))
    click.echo(f"best epoch {metrics['best_epoch']} of {metrics['epochs']}, {metrics['seconds']:.0f} s "
               f"({metrics['seconds_per_epoch']:.1f} s an epoch of training); wrote {out_dir}")


def training_request(model_name, lr, weight_decay, batch_size, max_epochs, patience, max_minutes, weighting, seed,
                     threads, quiet, device=TrainConfig.device, batching=TrainConfig.batching,
                     ce_chunk=TrainConfig.ce_chunk, checkpoints=TrainConfig.checkpoints,
                     **model_options) -> tuple[dict, TrainConfig]:
    """The command's options as ``train_surrogate``'s arguments: the model options given (None: left out; one
    that the model does not take is refused) and the ``TrainConfig``. The Python API builds them here too."""
    fields = {f.name for f in surrogate_class(model_name).config_class.option_fields()}
    model_fields = {k: v for k, v in model_options.items() if v is not None}
    unknown = sorted(set(model_fields) - fields)
    if unknown:
        raise DealrecError(f"--{unknown[0].replace('_', '-')} does not apply to model {model_name}")
    cfg = TrainConfig(lr=lr, weight_decay=weight_decay, batch_size=batch_size, max_epochs=max_epochs,
                      patience=patience, seed=seed, weighting=weighting, max_minutes=max_minutes,
                      threads=threads, progress=not quiet, device=device, batching=batching, ce_chunk=ce_chunk,
                      checkpoints=checkpoints)
    return model_fields, cfg


train_surrogate = train_surrogate_command  # the name dealrec/cli.py registers
