"""Train a surrogate on a prepared data folder: Adam, early stopping on validation NDCG@10.

One flat loop: cut the shuffled samples into batches (``epoch_batches``: random slices, or slices of
similar length with ``batching="bucketed"``), step Adam on each batch, evaluate the validation split
with the project's one evaluator after every epoch, keep the best weights, stop when
NDCG@10 has not improved for ``patience`` epochs, and report valid and test metrics of the
best weights. Seeded: on CPU the same seed and thread count give the same model.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dealrec_core.devices import float_platform, pick_device, reproducible_on, to_device
from dealrec_core.threads import fixed_threads
from dealrec_core.data import PreparedData, Samples, atomic_output_dir, check_item_range, write_json_atomic
from dealrec_core.errors import DealrecError
from dealrec_core.paths import check_output
from dealrec_core.optim import adam
from dealrec_core.training import MAX_EPOCHS, PATIENCE, TIME_BUDGET, train_with_early_stopping
from dealrec_core.evaluate import evaluate_scorer, format_metrics
from surrogates.base import CHECKPOINTS_DIR, Surrogate, checkpoint_name, save_surrogate
from surrogates.registry import surrogate_class
from surrogates.config import BUCKET_POOL_BATCHES, DEFAULT_THREADS, TrainConfig, auto_patience
from surrogates.softmax import default_ce_chunk, softmax_by_blocks

# metrics.json's stopped_by for each way the loop ends
STOPPED_BY = {MAX_EPOCHS: "max epochs", PATIENCE: "early stopping", TIME_BUDGET: "time budget"}


def evaluate_model(model: Surrogate, data: PreparedData, split: str, batch_size: int = 1024) -> dict[str, float]:
    return evaluate_scorer(model.score_histories, data.eval_split(split), data.n_items, batch_size=batch_size)


def sequence_widths(model: Surrogate, samples: Samples) -> np.ndarray:
    """The columns each sample fills in a training batch: its history and target, at most the model's max_len."""
    widths = np.fromiter((len(h) for h in samples.history), dtype=np.int64, count=len(samples)) + 1
    max_len = getattr(model.config, "max_len", None)
    return widths if max_len is None else np.minimum(widths, max_len)


def epoch_batches(n: int, batch_size: int, rng: np.random.Generator, batching: str = "random",
                  widths: np.ndarray | None = None, pool_batches: int = BUCKET_POOL_BATCHES) -> list[np.ndarray]:
    """One epoch's batches, as sample indices; every sample exactly once, ``ceil(n / batch_size)`` batches.

    ``random``: consecutive slices of a permutation. ``bucketed``: the permutation is cut into pools of
    ``pool_batches`` batches, each pool sorted by ``widths`` (stable) and sliced, and the batches are
    shuffled, so a batch holds samples of similar length (little padding) drawn from all over the data.
    """
    order = rng.permutation(n)
    if batching == "random":
        return [order[b:b + batch_size] for b in range(0, n, batch_size)]
    if widths is None or len(widths) != n:
        raise DealrecError("bucketed batches need every sample's width")
    pool = batch_size * pool_batches   # a whole number of batches: only the last pool has a short batch
    batches = []
    for start in range(0, n, pool):
        chunk = order[start:start + pool]
        chunk = chunk[np.argsort(widths[chunk], kind="stable")]
        batches.extend(chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def risk_weights(model: Surrogate, samples: Samples, weighting: str, chunk: int = 4096) -> np.ndarray:
    """Each sample's weight in the training risk: ``sample_weights`` (``position``) or 1 (``sample``)."""
    if weighting == "sample":
        return np.ones(len(samples))
    out = [model.sample_weights(model.collate(samples.subset(np.arange(s, min(s + chunk, len(samples))))))
           for s in range(0, len(samples), chunk)]
    return torch.cat(out).numpy().astype(np.float64)


class EpochPlan:
    """How every epoch is cut into batches, and the factor each batch's loss is scaled by (None: none).

    A batch's loss is a mean over its own positions (``position``) or samples (``sample``). Random batches
    hold about the same number of positions each, so their mean estimates the risk. Bucketed batches do
    not (a batch of long histories holds many times the positions of a batch of empty ones), so each
    batch's mean is scaled by its share of the epoch's weight (``risk_weights`` summed over the batch,
    over their mean per batch): summed over an epoch, every position (sample) then weighs the same, as in
    the risk of random batches and in the ``v`` of influence (docs/engine.md, "Which risk").
    """

    def __init__(self, model: Surrogate, samples: Samples, batch_size: int, batching: str = "random",
                 weighting: str = "position"):
        self.n, self.batch_size, self.batching = len(samples), batch_size, batching
        self.n_batches = math.ceil(self.n / batch_size)
        self.widths = sequence_widths(model, samples)
        self.weights = risk_weights(model, samples, weighting) if batching == "bucketed" else None
        self.mean_batch_weight = None if self.weights is None else self.weights.sum() / self.n_batches

    def batches(self, rng: np.random.Generator) -> list[tuple[np.ndarray, float | None]]:
        out = epoch_batches(self.n, self.batch_size, rng, self.batching, self.widths)
        if self.weights is None:
            return [(idx, None) for idx in out]
        return [(idx, float(self.weights[idx].sum() / self.mean_batch_weight)) for idx in out]


def train(model: Surrogate, samples: Samples, data: PreparedData, cfg: TrainConfig,
          kept: list | None = None) -> dict[str, Any]:
    """Train ``model`` in place (it ends holding the best weights, on ``cfg.device``); return the metrics
    dict. Runs on ``cfg.threads`` (default ``DEFAULT_THREADS``) torch threads and gives the caller's count back.
    ``kept``: a list that receives ``(epoch, state_dict)`` of the ``cfg.checkpoints - 1`` validated epochs
    before the best one, oldest first."""
    device = pick_device(cfg.device)
    model.to(device)
    with fixed_threads(cfg.threads or DEFAULT_THREADS), reproducible_on(device):
        return {**_train(model, samples, data, cfg, kept), "device": str(device)}


def _train(model: Surrogate, samples: Samples, data: PreparedData, cfg: TrainConfig,
           kept: list | None = None) -> dict[str, Any]:
    if cfg.ce_chunk and not model.supports_ce_chunk():
        raise DealrecError(f"--ce-chunk: {type(model).__name__}'s training loss is not a full softmax over the items")
    cfg = resolved_config(cfg, model, next(model.parameters()).device, len(samples))   # metrics.json: what ran
    with softmax_by_blocks(model, cfg.ce_chunk):   # training only: the trained model is handed back as it was
        return _train_loop(model, samples, data, cfg, kept)


def resolved_config(cfg: TrainConfig, model, device, n_samples: int) -> TrainConfig:
    """``cfg`` with batching and ce_chunk left at None (the defaults) set to ``model``'s (a Surrogate, or its
    class with its default options) on ``device``, and patience left at None to ``auto_patience`` of
    ``n_samples`` training samples."""
    return dataclasses.replace(
        cfg, batching=cfg.batching or model.default_batching,
        ce_chunk=default_ce_chunk(device, model) if cfg.ce_chunk is None else cfg.ce_chunk,
        patience=auto_patience(n_samples, cfg.batch_size) if cfg.patience is None else cfg.patience)


def _train_loop(model: Surrogate, samples: Samples, data: PreparedData, cfg: TrainConfig,
                kept: list | None = None) -> dict[str, Any]:
    model.prepare_training(samples)   # what the model derives from the data (DCRec's graphs), before any step
    torch.manual_seed(cfg.seed)  # dropout masks
    shuffle_rng = np.random.default_rng(cfg.seed)
    valid_split = data.eval_split("valid")
    optimizer = adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    plan = EpochPlan(model, samples, cfg.batch_size, cfg.batching, cfg.weighting)
    n_batches = plan.n_batches

    best_valid = None
    history = []
    started = time.perf_counter()
    train_seconds = 0.0
    train_cpu_seconds = 0.0  # this process's CPU time: a load-independent view on a shared machine
    latest = ""
    epoch_loss = epoch_train_seconds = padding_share = 0.0
    valid: dict[str, float] = {}

    def train_epoch(epoch: int) -> None:
        nonlocal train_seconds, train_cpu_seconds, epoch_loss, epoch_train_seconds, padding_share
        epoch_start, epoch_cpu_start = time.perf_counter(), time.process_time()
        model.train()
        batches = plan.batches(shuffle_rng)
        bar = tqdm(range(n_batches), desc=f"epoch {epoch}", disable=not cfg.progress, leave=False,
                   dynamic_ncols=True)
        loss_sum = 0.0
        cells = filled = 0
        for b in bar:
            idx, scale = batches[b]
            cells += len(idx) * int(plan.widths[idx].max())
            filled += int(plan.widths[idx].sum())
            batch = to_device(model.training_batch(samples.subset(idx), epoch), model.device)
            loss = model.training_loss(batch, weighting=cfg.weighting)
            if scale is not None:
                loss = loss * scale
            if not torch.isfinite(loss):
                raise DealrecError(f"training diverged at epoch {epoch} (loss {loss.item()}); lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
            if b % 20 == 0 or b == n_batches - 1:
                bar.set_postfix_str(f"loss {loss_sum / (b + 1):.4f}{latest}")
        bar.close()
        epoch_loss = loss_sum / n_batches
        padding_share = 1.0 - filled / max(cells, 1)
        epoch_train_seconds = time.perf_counter() - epoch_start
        train_seconds += epoch_train_seconds
        train_cpu_seconds += time.process_time() - epoch_cpu_start

    def validate(epoch: int) -> float:
        nonlocal valid
        valid = evaluate_scorer(model.score_histories, valid_split, data.n_items, batch_size=cfg.eval_batch_size)
        return valid["ndcg@10"]

    def report(epoch: int, score: float, improved: bool) -> None:
        nonlocal best_valid, latest
        if improved:
            best_valid = valid
        history.append({"epoch": epoch, "loss": epoch_loss, "train_seconds": epoch_train_seconds,
                        "padding_share": padding_share,   # of the batches' item cells (history + target)
                        **{f"valid_{k}": v for k, v in valid.items()}})
        latest = f" | valid N@10 {valid['ndcg@10']:.4f} R@20 {valid['recall@20']:.4f}"
        if cfg.progress:
            tqdm.write(f"epoch {epoch:3d}  loss {epoch_loss:.4f}  {epoch_train_seconds:5.1f}s  "
                       f"valid {format_metrics(valid)}{'  *' if improved else ''}")

    stop = train_with_early_stopping(
        train_epoch, validate, max_epochs=cfg.max_epochs, patience=cfg.patience,
        snapshot=lambda: copy.deepcopy(model.state_dict()), restore=model.load_state_dict, report=report,
        out_of_time=None if cfg.max_minutes is None else
        (lambda: time.perf_counter() - started > cfg.max_minutes * 60), budget_counts_validation=True,
        keep=cfg.checkpoints)
    if kept is not None:
        kept.extend(stop.kept)
    epoch = stop.epochs
    stopped_by = STOPPED_BY[stop.reason]
    if stop.reason == TIME_BUDGET:
        # the one stop that depends on the machine's speed: say so, here and in metrics.json
        tqdm.write(f"stopping: the {cfg.max_minutes:g}-minute budget is spent (epoch {epoch}); the result "
                   f"depends on this machine's speed")
    model.eval()
    test = evaluate_model(model, data, "test", cfg.eval_batch_size)
    seconds = time.perf_counter() - started
    return {
        "valid": best_valid,
        "test": test,
        "epochs": epoch,
        "best_epoch": stop.best_epoch,
        "checkpoints": [e for e, _ in stop.kept],   # epochs kept before the best (checkpoints/), oldest first
        "stopped_by": stopped_by,   # "early stopping", "max epochs" or "time budget" (machine-dependent)
        "seconds": seconds,
        # training time only (no evaluation): what one pass of gradients over all samples costs
        "seconds_per_epoch": train_seconds / max(epoch, 1),
        "cpu_seconds_per_epoch": train_cpu_seconds / max(epoch, 1),
        "threads": torch.get_num_threads(),
        "float_platform": float_platform(),   # the CPU's vector instructions change the float sums, so the weights
        "load_average": os.getloadavg()[0],
        "n_samples": len(samples),
        "train_config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "progress"},
        "history": history,
    }


def train_surrogate(data_dir: str | Path, model_name: str, out_dir: str | Path,
                    model_fields: dict[str, Any] | None = None, train_cfg: TrainConfig | None = None,
                    overwrite: bool = False) -> dict[str, Any]:
    """Train a surrogate on all samples of ``data_dir`` and write ``out_dir``:
    ``model.safetensors``, ``config.json`` and ``metrics.json`` (all or nothing)."""
    train_cfg = train_cfg or TrainConfig()
    check_output(out_dir, {"DATA": data_dir})   # OUT is replaced as a whole: never DATA, in it or around it
    data = PreparedData(data_dir)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:  # fail before training, not after
        raise DealrecError(f"{out_dir}: already exists (pass --overwrite to replace it)")
    samples = data.samples()
    if len(samples) == 0:
        raise DealrecError(f"{data.samples_dir}: no samples to train on")
    check_item_range(samples, data.n_items, data.samples_dir)
    cls = surrogate_class(model_name)
    fields = {"seed": train_cfg.seed, **(model_fields or {}), "n_items": data.n_items}
    model = cls(cls.config_class(**fields))
    kept: list = []
    metrics = train(model, samples, data, train_cfg, kept)
    metrics = {"model": model_name, "data": str(Path(data_dir).resolve()), "data_sha256": data.content_digest(),
               "model_fields": dict(model_fields or {}), **metrics}
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        save_surrogate(model, tmp)
        for epoch, state in kept:   # each a surrogate folder of its own, for the influence's average
            folder = tmp / CHECKPOINTS_DIR / checkpoint_name(epoch)
            folder.mkdir(parents=True)
            save_surrogate(model, folder, state)
        write_json_atomic(tmp / "metrics.json", metrics)
    return metrics
