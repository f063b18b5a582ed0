"""``dealrec prune DATA --n 1024 --out RUN``: raw interaction data in, a coreset and its exports out.

Phases, each timed in ``RUN/manifest.json`` (``prune.phases``):

1. ``prepare``: DATA is used as is when it is a prepared folder (``items.parquet`` + ``samples/``);
   a release-format folder or an interaction log is prepared into ``RUN/data``;
2. ``train_surrogate``: the ``--surrogate-model`` (SASRec by default, the paper's settings) on all
   samples into ``RUN/surrogate``, unless ``--surrogate DIR`` names a trained one;
3. ``score``: semantic IDs and a fresh TIGER for effort, influence and effort of every sample
   (``dealrec score``: sharded, resumable, on Ray);
4. ``select``: DEALRec's coverage-enhanced selection (``dealrec select``);
5. ``export``: BIGRec's alpaca JSON, LLaMA-Factory's and TRL's files and TIGER's sequences (``dealrec
   export``), in ``--template``'s wording.

Every phase leaves a complete result behind or nothing, so rerunning the same command after a
crash or a kill picks up where it stopped.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import click
import torch

from dealrec_core import storage
from dealrec_core.data import PreparedData, SampleRows, sha256_file
from dealrec_core.devices import pick_device
from dealrec_core.errors import DealrecError, InputError
from dealrec_core.paths import check_output
from dealrec.composition import allocation_note, check_note
from dealrec.export import RUN_WRITES as EXPORT_WRITES, run_export
from dealrec.manifest import RunManifest, update_manifest
from dealrec.prepare import prepare
from dealrec.runconfig import with_config
from dealrec.score import RUN_WRITES, ScoreConfig, _score_options, config_from_options, model_locations, \
    run_score
from dealrec.coreset import SelectionConfig
from dealrec.methods import REGISTRY
from dealrec.select import CORESET_FILE, DEFAULT_K, DEFAULT_LAMBDA, DEFAULT_N, PLOT_FILE, run_select
from dealrec.strata import ALLOCATION_CHOICES, PAPER_HARD_PRUNE, PAPER_LAMBDA
from surrogates.config import DEFAULT_MODEL as SURROGATE_MODEL, DEFAULT_THREADS as SURROGATE_THREADS, \
    TrainConfig as SurrogateTrainConfig
from surrogates.base import read_surrogate_config
from surrogates.registry import model_names, surrogate_class

SURROGATE_MODELS = model_names()


def is_prepared(path: Path) -> bool:
    return path.is_dir() and (path / "items.parquet").exists() and (path / "samples").is_dir()


def prepare_phase(data: Path, out: Path, progress: bool) -> tuple[Path, dict]:
    if is_prepared(data):
        return data, {"prepared": False, "data": str(data)}
    if not data.exists():
        raise InputError(data, "no such file or folder")
    target = out / "data"
    if is_prepared(target) and _same_sources(PreparedData(target).manifest(), data):
        return target, {"prepared": True, "data": str(target), "source": str(data), "resumed": True}
    prepare(data, target, overwrite=True)
    return target, {"prepared": True, "data": str(target), "source": str(data)}


def _same_sources(manifest: dict, data: Path) -> bool:
    """Whether a prepared folder was made from ``data`` as it is now (same files, same bytes)."""
    sources = manifest.get("sources") or []
    if not sources:
        return False
    root = data.resolve()
    for s in sources:
        path = Path(s.get("path", ""))
        inside = path.resolve() == root or root in path.resolve().parents
        if not (inside and path.exists() and sha256_file(path) == s.get("sha256")):
            return False
    return True


def surrogate_model_for(surrogate: str | None, model: str | None = None) -> str:
    """The surrogate model a run uses: the one ``surrogate``'s config.json names when a trained folder is given
    (a different ``model`` is refused), else ``model``, else the default. Reads no weights: callers check
    it before any work."""
    if surrogate:
        name, _ = read_surrogate_config(surrogate, "--surrogate")
        if model and model != name:
            raise DealrecError(f"{surrogate}: holds a {name} surrogate, not the --surrogate-model {model} asked for")
        return name
    name = model or SURROGATE_MODEL
    surrogate_class(name)   # an unknown name: one line listing the known ones
    return name


def surrogate_phase(data: Path, out: Path, surrogate: str | None, seed: int, max_minutes: float | None,
                    max_epochs: int, progress: bool, threads: int | None = None, log=None,
                    model: str | None = None, device: str = SurrogateTrainConfig.device,
                    checkpoints: int = SurrogateTrainConfig.checkpoints) -> tuple[Path, dict]:
    """The surrogate: ``surrogate`` when given, else ``model`` (default: SASRec) trained into ``out/surrogate``.

    A surrogate left in ``out/surrogate`` by an earlier run is reused only when it is the same model, trained
    on data with the same content and with the same options (seed, epochs, time budget); otherwise it is
    trained again, and ``log`` (and the returned info's ``redone``) says why. ``checkpoints``: the epochs it
    keeps for the influence's average (score's ``--influence-checkpoints``).
    """
    model = surrogate_model_for(surrogate, model)
    if surrogate:
        return Path(surrogate), {"trained": False, "surrogate": str(surrogate), "model": model}
    from surrogates.train import TrainConfig, train_surrogate

    target = out / "surrogate"
    cfg = TrainConfig(seed=seed, max_minutes=max_minutes, max_epochs=max_epochs, progress=progress, threads=threads,
                      device=device, checkpoints=checkpoints)
    redone = _stale_surrogate(target, PreparedData(data), cfg, model)
    if redone is None:
        return target, {"trained": True, "surrogate": str(target), "model": model, "resumed": True}
    if redone and log is not None:
        log(f"{target}: {redone}; training it again")
    metrics = train_surrogate(data, model, target, train_cfg=cfg, overwrite=True)
    info = {"trained": True, "surrogate": str(target), "model": model, "epochs": metrics.get("epochs"),
            "stopped_by": metrics.get("stopped_by"),
            "seconds_per_epoch": metrics.get("seconds_per_epoch"), "valid": metrics.get("valid")}
    if redone:
        info["redone"] = redone
    return target, info


_SURROGATE_KEY_FIELDS = ("seed", "max_epochs", "max_minutes", "batching", "ce_chunk", "patience")
# what a surrogate trained before an option existed was trained with (metrics.json has no such field)
_SURROGATE_KEY_LEGACY = {"batching": "random", "ce_chunk": 0, "patience": 3}


def _stale_surrogate(folder: Path, data: PreparedData, cfg, model: str = SURROGATE_MODEL) -> str | None:
    """None when ``folder`` holds a ``model`` surrogate with its default options, trained on ``data`` (same
    content) with ``cfg``'s seed, epochs and budget; "" when there is none; else why it cannot be reused."""
    if not ((folder / "model.safetensors").exists() and (folder / "metrics.json").exists()):
        return ""
    try:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except ValueError:
        return "the surrogate's metrics.json is unreadable"
    if metrics.get("model") != model:
        return f"the surrogate there is a {metrics.get('model')}, not a {model}"
    if metrics.get("model_fields"):
        return f"the surrogate there is not the default {model} (it was trained with model options)"
    if metrics.get("data_sha256") != data.content_digest():
        return "the surrogate there was trained on other data" if metrics.get("data_sha256") else \
            "the surrogate there does not record which data it was trained on"
    trained = metrics.get("train_config") or {}
    from surrogates.registry import surrogate_class
    from surrogates.train import resolved_config

    wanted = resolved_config(cfg, surrogate_class(model), pick_device(cfg.device),   # what training would use
                             len(SampleRows(data.samples_dir)))
    for field in _SURROGATE_KEY_FIELDS:
        value = trained.get(field, _SURROGATE_KEY_LEGACY.get(field))
        if value != getattr(wanted, field):
            return f"the surrogate there was trained with {field}={value}, not {getattr(wanted, field)}"
    kept = trained.get("checkpoints", 1)   # before the option: the best epoch alone
    if kept < cfg.checkpoints:
        return f"the surrogate there kept {kept} epoch(s), and the influence asks for {cfg.checkpoints}"
    from surrogates.train import DEFAULT_THREADS

    threads = cfg.threads or DEFAULT_THREADS   # the weights depend on the thread count
    if metrics.get("threads") != threads:
        return f"the surrogate there was trained on {metrics.get('threads')} threads, not {threads}"
    device = str(pick_device(cfg.device))     # and on the device (a surrogate from before the option: the CPU)
    if metrics.get("device", "cpu") != device:
        return f"the surrogate there was trained on {metrics.get('device', 'cpu')}, not {device}"
    return None


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def prune_target(target: str | None = None, lam: float | None = None, target_init=None, llm=None) -> str:
    """The effort target of a prune whose ``--target`` was left out: none when the selection gives effort no
    weight (lambda 0, the default) and no effort option names a target model; else TIGER, score's default.
    At lambda 0 the effort column would change nothing (the coreset is the influence's) and costs the
    semantic IDs and a pass of the target over every sample."""
    if target is not None:
        return target
    weighs = (DEFAULT_LAMBDA if lam is None else lam) != 0
    return ScoreConfig.target if weighs or target_init or llm else "none"


def run_writes(data: Path, surrogate) -> tuple[str, ...]:
    """What prune writes in its run folder: an input may sit beside these (a prepared RUN/data, a given
    RUN/surrogate: both only read), never among them."""
    return (*RUN_WRITES, CORESET_FILE, PLOT_FILE, *(w for w in EXPORT_WRITES if w not in RUN_WRITES),
            *(() if is_prepared(Path(data)) else ("data",)), *(() if surrogate else ("surrogate",)))


def run_prune(data, out, n: int = DEFAULT_N, surrogate: str | None = None, config: ScoreConfig | None = None,
              lam: float | None = None, k: int | None = None, hard_prune: float | None = None,
              surrogate_minutes: float | None = SurrogateTrainConfig.max_minutes,
              surrogate_epochs: int = SurrogateTrainConfig.max_epochs, progress: bool = True,
              threads: int | None = SurrogateTrainConfig.threads, surrogate_model: str | None = None,
              allocation: str | None = None) -> dict:
    config = config or ScoreConfig()
    config.check()
    # DATA, --surrogate and --out may be URIs (s3://...): the work is done on this node's mirror of them
    given = str(data)
    with storage.open_location(data) as data, storage.open_location(out, writes=True) as out, \
            (storage.open_location(surrogate) if surrogate else contextlib.nullcontext(None)) as surrogate, \
            model_locations(config) as config:
        return _run_prune(data, out, n, None if surrogate is None else str(surrogate), config, lam, k, hard_prune,
                          surrogate_minutes, surrogate_epochs, progress, threads, surrogate_model,
                          storage.display(given), allocation)


def _run_prune(data: Path, out: Path, n: int, surrogate: str | None, config: ScoreConfig, lam, k, hard_prune,
               surrogate_minutes, surrogate_epochs, progress: bool, threads, surrogate_model, given: str,
               allocation: str | None = None) -> dict:
    if threads:
        torch.set_num_threads(threads)  # the driver's phases; Ray actors size their own
    data, out = Path(data), Path(out)
    method = "dealrec" if config.target != "none" else "influence"
    # every selection parameter is refused here, before the surrogate's minutes, not at the selection after them
    params = SelectionConfig(method, n, DEFAULT_LAMBDA if lam is None else lam, DEFAULT_K if k is None else k,
                             hard_prune, config.seed, allocation)
    check_output(out, {"DATA": data, "--surrogate": surrogate, "--llm": config.llm, "--adapter": config.adapter,
                       "--target-init": config.target_init}, writes=run_writes(data, surrogate))
    if not data.exists():
        raise InputError(data, "no such file or folder")
    surrogate_model = surrogate_model_for(surrogate, surrogate_model)   # before any work
    if surrogate and is_prepared(data):   # raw DATA: checked by score once it is prepared into RUN/data
        from surrogates.base import check_surrogate_fits

        check_surrogate_fits(surrogate, PreparedData(data).n_items, data)
    RunManifest.read(out)   # a manifest the run cannot update is refused before any work
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    phases: dict = {}

    t0 = time.perf_counter()
    prepared, prep_info = prepare_phase(data, out, progress)
    phases["prepare"] = {"seconds": round(time.perf_counter() - t0, 3), **prep_info}

    t0 = time.perf_counter()
    surrogate_dir, sur_info = surrogate_phase(prepared, out, surrogate, config.seed, surrogate_minutes,
                                              surrogate_epochs, progress, threads, log=_say, device=config.device,
                                              model=surrogate_model, checkpoints=config.influence_checkpoints)
    phases["train_surrogate"] = {"seconds": round(time.perf_counter() - t0, 3), **sur_info}

    t0 = time.perf_counter()
    scored = run_score(prepared, surrogate_dir, out, config, progress=progress)
    phases["score"] = {"seconds": round(time.perf_counter() - t0, 3), **scored["phases"]}

    t0 = time.perf_counter()
    selection = run_select(out, method=method, n=n, lam=params.lam, k=params.k,
                           hard_prune=hard_prune, seed=config.seed,   # None: the method's default share
                           data=str(prepared), surrogate=str(surrogate_dir), progress=progress,
                           allocation=allocation)   # None: the method's default
    phases["select"] = {"seconds": round(time.perf_counter() - t0, 3), "method": method}

    t0 = time.perf_counter()
    run_export(out, "all", data=str(prepared), template=config.template)
    phases["export"] = {"seconds": round(time.perf_counter() - t0, 3)}

    return update_manifest(out, {"prune": {
        "command": "dealrec prune", "data": given, "n": n, "seed": config.seed,
        "surrogate_minutes": surrogate_minutes, "surrogate_epochs": surrogate_epochs, "threads": threads,
        "surrogate_model": surrogate_model, "phases": phases, "seconds": round(time.perf_counter() - t_all, 3),
        "n_selected": selection.get("n_selected")}}).data


def _make_command():
    @click.command("prune")
    @click.argument("data", type=click.Path())
    @click.option("--n", "n", type=int, default=DEFAULT_N, show_default=True, help="Samples in the coreset.")
    @click.option("--out", required=True, type=click.Path(), help="Run folder (a rerun resumes it).")
    @click.option("--surrogate", type=click.Path(), default=None,
                  help="A trained surrogate (default: train the --surrogate-model).")
    @click.option("--surrogate-model", type=click.Choice(SURROGATE_MODELS), default=None,
                  help=f"The surrogate to train when --surrogate is not given [{SURROGATE_MODEL}]; "
                       f"'dealrec train-surrogate --help' lists each model's options. On Games each one's "
                       f"coreset trained a better TIGER than random ones with the default (stationary) "
                       f"influence (docs/surrogates.md).")
    @click.option("--surrogate-minutes", type=float, default=SurrogateTrainConfig.max_minutes,
                  help="Wall-clock budget of surrogate training, checked after each epoch [default: none: "
                       "early stopping alone decides, so the coreset does not depend on the machine's speed].")
    @click.option("--surrogate-epochs", type=int, default=SurrogateTrainConfig.max_epochs, show_default=True,
                  help="At most this many surrogate epochs (early stopping on validation NDCG@10 too).")
    @click.option("--threads", type=int, default=SurrogateTrainConfig.threads,
                  help=f"Torch threads for surrogate training [{SURROGATE_THREADS}, on any machine: the surrogate's "
                       f"weights, and so the coreset, depend on it] (scoring uses --threads-per-worker).")
    @click.option("--lambda", "lam", type=float, default=None,
                  help=f"Weight of the effort score [{DEFAULT_LAMBDA}: the influence alone, chosen on validation, "
                       f"docs/selection.md; the paper's is {PAPER_LAMBDA}].")
    @click.option("--k", "k", type=int, default=None, help=f"Strata [{DEFAULT_K}].")
    @click.option("--hard-prune", type=float, default=None,
                  help=f"Share of top scores dropped [{REGISTRY['dealrec'].hard_prune:g}: the highest scores of the "
                       f"stationary influence are its easiest samples; the paper's is {PAPER_HARD_PRUNE}].")
    @click.option("--allocation", type=click.Choice(ALLOCATION_CHOICES), default=None,
                  help=f"How the budget is split over the strata [{REGISTRY['dealrec'].allocation}]: equal (the "
                       f"paper's), sqrt, proportional, or auto; see 'dealrec select --help'.")
    @_score_options
    def prune_command(data, n, out, surrogate, surrogate_model, surrogate_minutes, surrogate_epochs, threads, lam, k,
                      hard_prune, allocation, quiet, **options):
        """Prepare DATA if raw, train the surrogate, score, select N samples and export them to OUT."""
        options["target"] = prune_target(options["target"], lam, options["target_init"], options["llm"])
        manifest = run_prune(data, out, n, surrogate, config_from_options(**options), lam, k, hard_prune,
                             surrogate_minutes, surrogate_epochs, progress=not quiet, threads=threads,
                             surrogate_model=surrogate_model, allocation=allocation)
        p = manifest["prune"]
        times = ", ".join(f"{name} {v['seconds']:.0f}s" for name, v in p["phases"].items())
        click.echo(f"coreset of {p['n_selected']} samples -> {storage.join(out, CORESET_FILE)} "
                   f"({times}; total {p['seconds']:.0f}s)")
        selection = manifest.get("selection", {})
        for note in (allocation_note(selection), check_note(selection.get("check"), data)):
            if note:
                click.echo(note, err=True)
    target = next(p for p in prune_command.params if p.name == "target")
    target.default, target.show_default = None, False
    target.help = ("Target model of the effort score ('none': influence only) [left out: none at --lambda 0, the "
                   f"default, where effort weighs nothing; {ScoreConfig.target} with another lambda, --target-init "
                   "or --llm].")
    return prune_command


prune_command = with_config(_make_command())
