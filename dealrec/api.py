"""The Python API, for notebooks and scripts (docs/api.md)::

    from dealrec import prepare, train_surrogate, score, select, export, prune, compare

One function per command, each a thin wrapper over the library function that the command calls. The
command's arguments (DATA, RUN) and required options (``--out``) come first; every other option is a
keyword named after its flag (``--surrogate-epochs`` -> ``surrogate_epochs``, ``--lambda`` ->
``lambda_``, ``--no-plot`` -> ``no_plot``) with the command's default, read from the same config
dataclass or constant. The values go through the command's own option types (``dealrec.runconfig.
check_options``: a choice, a range, a seed, an integer where one is due), so a bad one raises
``DealrecError`` with one line naming the option, before any work; so does every bad input the library
finds. Each returns a small frozen dataclass: the paths written and the parsed manifest.

``score``, ``select``, ``prune`` and ``compare`` record their options in the run's manifest as the commands
do, so ``dealrec config-from-run RUN`` replays a run made here. Progress bars go to stderr unless
``quiet=True``; nothing else is printed (``prune`` and ``compare`` pass their progress lines to stderr as
the commands do).

``dealrec.select`` etc. are also the command modules: ``dealrec/__init__.py`` makes those modules
callable, so both ``from dealrec import select`` and ``import dealrec.select`` keep working.
"""
from __future__ import annotations

import functools
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import click

from dealrec.compare import DEFAULT_METHODS, DEFAULT_SEEDS, DEFAULT_TARGET, compare_command, run_compare
from dealrec.export import BIGREC_FILE, DEFAULT_FORMAT, TIGER_DIR, export_command, run_export
from dealrec.hvp import HvpConfig
from dealrec.manifest import RunManifest
from dealrec.prepare import PrepareOptions, prepare as prepare_folder
from dealrec.prepare.cli import _parse_split, prepare_command, prepare_options
from dealrec.prune import prune_command, prune_target, run_prune
from dealrec.runconfig import check_options, option_flags, python_name, recording, run_folder
from dealrec.score import SCORES_FILE, ScoreConfig, config_from_options, run_score, score_command
from dealrec.select import CORESET_FILE, SelectionConfig, run_select, select_command
from dealrec.strata import DEFAULT_K, DEFAULT_LAMBDA, DEFAULT_N
from dealrec_core import storage
from dealrec_core.errors import DealrecError
from surrogates import train as surrogate_training
from surrogates.cli import train_surrogate_command, training_request
from surrogates.config import DEFAULT_MODEL, TrainConfig as SurrogateTrainConfig

__all__ = ["CompareResult", "ExportResult", "PrepareResult", "PruneResult", "ScoreResult", "SelectResult",
           "SurrogateResult", "compare", "export", "prepare", "prune", "score", "select", "train_surrogate"]


# ----------------------------------------------------------------------------- results

@dataclass(frozen=True)
class PrepareResult:
    out: Path                     # the prepared data folder
    samples: Path                 # out/samples/: the samples table's shards
    items: Path                   # out/items.parquet: the item catalogue
    manifest: dict                # out/manifest.json: sources, counts, options


@dataclass(frozen=True)
class SurrogateResult:
    out: Path                     # the surrogate folder
    model: Path                   # out/model.safetensors
    config: Path                  # out/config.json
    metrics: dict                 # out/metrics.json: valid/test metrics of the best epoch, epochs, timings


@dataclass(frozen=True)
class ScoreResult:
    out: Path                     # the run folder
    scores: Path                  # out/scores.parquet: sample_id, influence, effort
    manifest: RunManifest         # out/manifest.json


@dataclass(frozen=True)
class SelectResult:
    out: Path                     # the run folder written (RUN, or out=)
    coreset: Path                 # out/coreset.parquet
    scores: Path                  # out/scores.parquet, with score, stratum and selected
    plot: Path | None             # out/selection.png (None with no_plot=True)
    selection: dict               # the manifest's ``selection`` section
    manifest: RunManifest


@dataclass(frozen=True)
class ExportResult:
    out: Path                     # the run folder
    files: dict                   # format -> the Path (or tuple of Paths) written
    n_samples: int
    manifest: RunManifest


@dataclass(frozen=True)
class PruneResult:
    out: Path                     # the run folder
    coreset: Path                 # out/coreset.parquet
    scores: Path                  # out/scores.parquet
    bigrec: Path                  # out/bigrec.json: BIGRec's alpaca records
    tiger: Path                   # out/tiger/: TIGER's training files
    manifest: RunManifest


@dataclass(frozen=True)
class CompareResult:
    out: Path                     # the report folder
    report: dict                  # report.json's content
    report_json: Path
    report_md: Path


# ----------------------------------------------------------------------------- the options

def _options(command: click.Command, given: Mapping[str, Any]) -> tuple[dict, dict]:
    """``given`` (Python names) checked and converted by ``command``'s option types: (by Python name, the
    options by flag name as the command records them)."""
    flags = {python_name(flag): flag for flag in option_flags(command)}
    checked = check_options(command, {flags[name]: value for name, value in given.items() if name in flags})
    return {**given, **{python_name(flag): value for flag, value in checked.items()}}, checked


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def _paths(run: Path, written) -> Path | tuple[Path, ...]:
    return run / written if isinstance(written, str) else tuple(run / w for w in written)


def _with_score_options(function):
    """``function`` (prune) also takes ``score``'s options as keywords: they are listed in its signature
    (so help and completion show them) and defaulted from ``score``'s; a name neither takes is a TypeError."""
    own = inspect.signature(function)
    extra = {name: p for name, p in inspect.signature(score).parameters.items()
             if p.kind is p.KEYWORD_ONLY and name not in own.parameters}

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        unknown = sorted(set(kwargs) - set(own.parameters) - set(extra))
        if unknown:
            raise TypeError(f"{function.__name__}() got an unexpected keyword argument {unknown[0]!r}")
        score_options = {name: kwargs.pop(name, p.default) for name, p in extra.items()}
        return function(*args, **kwargs, **score_options)

    params = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD]
    wrapper.__signature__ = own.replace(parameters=params + list(extra.values()))
    return wrapper


# ----------------------------------------------------------------------------- the commands

def prepare(src, out, *, items=PrepareOptions.items_file, min_rating=PrepareOptions.min_rating,
            min_user_count=PrepareOptions.min_user_count, min_item_count=PrepareOptions.min_item_count,
            split=PrepareOptions.split, shard_size=PrepareOptions.shard_size,
            overwrite: bool = False) -> PrepareResult:
    """``dealrec prepare SRC --out OUT``: a DEALRec release folder or an interaction log (Parquet, CSV, JSONL)
    into a prepared data folder. ``split`` is three fractions (train, valid, test) or their text "0.8,0.1,0.1"."""
    if not isinstance(split, str):
        split = ",".join(map(str, split))
    a, _ = _options(prepare_command, dict(locals()))
    try:
        split = _parse_split(a["split"])
    except click.BadParameter as e:
        raise DealrecError(f"--split: {e.message}") from None
    manifest = prepare_folder(src, out, prepare_options(a["items"], a["min_rating"], a["min_user_count"],
                                                        a["min_item_count"], split, a["shard_size"]),
                              overwrite=a["overwrite"])
    out = Path(out)
    return PrepareResult(out, out / "samples", out / "items.parquet", manifest)


def train_surrogate(data, out, *, model=DEFAULT_MODEL, overwrite: bool = False, hidden=None, n_blocks=None,
                    n_heads=None, ffn_hidden=None, max_len=None, dropout=None, loss=None, positions=None,
                    mask_prob=None, mask_last=None, graph_layers=None, cl_weight=None, cl_temperature=None,
                    conformity_mean=None,
                    lr=SurrogateTrainConfig.lr, weight_decay=SurrogateTrainConfig.weight_decay,
                    batch_size=SurrogateTrainConfig.batch_size, max_epochs=SurrogateTrainConfig.max_epochs,
                    patience=SurrogateTrainConfig.patience, max_minutes=SurrogateTrainConfig.max_minutes,
                    weighting=SurrogateTrainConfig.weighting, batching=SurrogateTrainConfig.batching,
                    ce_chunk=SurrogateTrainConfig.ce_chunk, checkpoints=SurrogateTrainConfig.checkpoints,
                    seed=SurrogateTrainConfig.seed, threads=SurrogateTrainConfig.threads,
                    device=SurrogateTrainConfig.device, quiet: bool = False) -> SurrogateResult:
    """``dealrec train-surrogate DATA --out OUT``: a surrogate (SASRec by default) trained on every sample of the
    prepared ``data``, early stopping on validation NDCG@10. The model options (``hidden`` ... ``positions``)
    left at None keep the model's own defaults."""
    a, _ = _options(train_surrogate_command, dict(locals()))
    model_options = {name: a[name] for name in ("hidden", "n_blocks", "n_heads", "ffn_hidden", "max_len", "dropout",
                                                "loss", "positions", "mask_prob", "mask_last", "graph_layers",
                                                "cl_weight", "cl_temperature", "conformity_mean")}
    model_fields, cfg = training_request(a["model"], a["lr"], a["weight_decay"], a["batch_size"], a["max_epochs"],
                                         a["patience"], a["max_minutes"], a["weighting"], a["seed"], a["threads"],
                                         a["quiet"], device=a["device"], batching=a["batching"], ce_chunk=a["ce_chunk"],
                                         checkpoints=a["checkpoints"], **model_options)
    metrics = surrogate_training.train_surrogate(data, a["model"], out, model_fields, cfg, overwrite=a["overwrite"])
    out = Path(out)
    return SurrogateResult(out, out / "model.safetensors", out / "config.json", metrics)


def score(data, surrogate, out, *, hvp=HvpConfig.solver, damping=HvpConfig.damping, lissa_scale=HvpConfig.scale,
          lissa_steps=HvpConfig.lissa_steps, hessian_samples=HvpConfig.hessian_samples,
          hvp_batch=HvpConfig.hvp_batch, influence_v=ScoreConfig.influence_v, hessian_rank=HvpConfig.rank,
          influence_checkpoints=ScoreConfig.influence_checkpoints, checkpoint_mean=ScoreConfig.checkpoint_mean,
          v_weighting=ScoreConfig.v_weighting, target=ScoreConfig.target,
          llm=ScoreConfig.llm, adapter=ScoreConfig.adapter, target_init=ScoreConfig.target_init,
          effort_block=ScoreConfig.effort_block, batch_size=ScoreConfig.batch_size,
          effort_batch_size=ScoreConfig.effort_batch_size, chunk_tokens=ScoreConfig.chunk_tokens,
          workers=ScoreConfig.workers, shard_size=ScoreConfig.shard_size, ray_address=ScoreConfig.ray_address,
          threads_per_worker=ScoreConfig.threads, worker_nice=ScoreConfig.worker_nice, seed=ScoreConfig.seed,
          template=ScoreConfig.template, device=ScoreConfig.device, dtype=ScoreConfig.dtype,
          load_in_8bit=ScoreConfig.load_in_8bit, load_in_4bit=ScoreConfig.load_in_4bit,
          quiet: bool = False) -> ScoreResult:
    """``dealrec score DATA --surrogate SURROGATE --out OUT``: influence and effort of every sample of the
    prepared ``data`` into ``out/scores.parquet`` (sharded, resumable; ``workers=0`` runs without Ray)."""
    a, recorded = _options(score_command, dict(locals()))
    config = config_from_options(**{name: a[name] for name in inspect.signature(config_from_options).parameters})
    with recording(a["out"], "score", recorded):
        run_score(a["data"], a["surrogate"], a["out"], config, progress=not a["quiet"])
    out = storage.local_copy(out)
    return ScoreResult(out, out / SCORES_FILE, RunManifest.read(out))


def select(run=None, *, method=SelectionConfig.method, n=DEFAULT_N, lambda_=DEFAULT_LAMBDA, k=DEFAULT_K,
           hard_prune=None, seed=SelectionConfig.seed, data=None, surrogate=None, out=None,
           no_plot: bool = False, allocation=None) -> SelectResult:
    """``dealrec select RUN``: a coreset of ``n`` samples from ``run/scores.parquet`` by ``method`` (DEALRec's
    coverage-enhanced selection by default), written with the scores, the manifest and a plot into ``run``
    (or ``out``)."""
    a, recorded = _options(select_command, dict(locals()))
    folder = run_folder({"out": out, "run": run})
    with recording(folder, "select", recorded):
        section = run_select(run, a["method"], a["n"], a["lambda_"], a["k"], a["hard_prune"], a["seed"],
                             a["data"], a["surrogate"], a["out"], plot=not a["no_plot"], allocation=a["allocation"])
    plot = folder / section["outputs"]["plot"] if "plot" in section["outputs"] else None
    return SelectResult(folder, folder / CORESET_FILE, folder / section["outputs"]["scores"], plot, section,
                        RunManifest.read(folder))


def export(run, *, format=DEFAULT_FORMAT, data=None, template=None) -> ExportResult:   # noqa: A002
    """``dealrec export RUN``: ``run/coreset.parquet`` as the downstream trainers' files (``format``)."""
    a, _ = _options(export_command, dict(locals()))
    info = run_export(run, a["format"], a["data"], a["template"])
    run = Path(run)
    return ExportResult(run, {name: _paths(run, w) for name, w in info["files"].items()}, info["n_samples"],
                        RunManifest.read(run))


@_with_score_options
def prune(data, out, *, n=DEFAULT_N, surrogate=None, surrogate_model=None,
          surrogate_minutes=SurrogateTrainConfig.max_minutes,
          surrogate_epochs=SurrogateTrainConfig.max_epochs, threads=SurrogateTrainConfig.threads, lambda_=None,
          k=None, hard_prune=None, target=None, quiet: bool = False, allocation=None, **score_options) -> PruneResult:
    """``dealrec prune DATA --out OUT``: prepare ``data`` if it is raw, train the surrogate (or use
    ``surrogate``), score, select ``n`` samples and export them into ``out``. Takes every option of
    ``score`` too (``workers``, ``hvp`` ...). ``lambda_``, ``k`` and ``hard_prune`` left at None
    are select's defaults; ``target`` left at None is none at lambda 0 and TIGER otherwise (``prune_target``)."""
    given = {name: value for name, value in locals().items() if name != "score_options"}
    a, recorded = _options(prune_command, {**given, **score_options})
    a["target"] = prune_target(a["target"], a["lambda_"], a["target_init"], a["llm"])
    config = config_from_options(**{name: a[name] for name in inspect.signature(config_from_options).parameters})
    with recording(a["out"], "prune", recorded):
        run_prune(a["data"], a["out"], a["n"], a["surrogate"], config, a["lambda_"], a["k"], a["hard_prune"],
                  a["surrogate_minutes"], a["surrogate_epochs"], progress=not a["quiet"], threads=a["threads"],
                  surrogate_model=a["surrogate_model"], allocation=a["allocation"])
    out = storage.local_copy(out)
    return PruneResult(out, out / CORESET_FILE, out / SCORES_FILE, out / BIGREC_FILE, out / TIGER_DIR,
                       RunManifest.read(out))


def compare(data, out, *, n=DEFAULT_N, methods=",".join(DEFAULT_METHODS), full: bool = False,
            target=DEFAULT_TARGET, llm=None, seeds=",".join(map(str, DEFAULT_SEEDS)), workers=None,
            ray_address=None, surrogate=None, surrogate_model=None, surrogate_epochs=SurrogateTrainConfig.max_epochs,
            surrogate_minutes=SurrogateTrainConfig.max_minutes, threads=SurrogateTrainConfig.threads,
            lambda_=DEFAULT_LAMBDA, k=DEFAULT_K, hard_prune=None, score_args="", finetune_args="",
            quiet: bool = False, allocation=None) -> CompareResult:
    """``dealrec compare DATA --out OUT``: a coreset of ``n`` samples by every method and seed, the downstream
    model (``target``) trained on each, and the report side by side. ``methods`` and ``seeds`` are lists or
    their comma-separated text; ``score_args`` and ``finetune_args`` are the other commands' options as one
    string, as on the command line."""
    if not isinstance(methods, str):
        methods = ",".join(methods)
    if not isinstance(seeds, str):
        seeds = ",".join(map(str, seeds))
    a, recorded = _options(compare_command, dict(locals()))
    with recording(a["out"], "compare", recorded):
        report = run_compare(a["data"], a["out"], n=a["n"], methods=a["methods"], seeds=a["seeds"],
                             target=a["target"], full=a["full"], llm=a["llm"], workers=a["workers"],
                             ray_address=a["ray_address"], surrogate=a["surrogate"],
                             surrogate_model=a["surrogate_model"], surrogate_epochs=a["surrogate_epochs"], surrogate_minutes=a["surrogate_minutes"],
                             threads=a["threads"], lam=a["lambda_"], k=a["k"], hard_prune=a["hard_prune"],
                             score_args=a["score_args"], finetune_args=a["finetune_args"], progress=not a["quiet"],
                             allocation=a["allocation"],
                             log=None if a["quiet"] else _say)
    out = Path(out)
    return CompareResult(out, report, out / "report.json", out / "report.md")
