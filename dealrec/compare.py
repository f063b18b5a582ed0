"""``dealrec compare DATA --n 1024 --methods ... --target tiger --seeds 0,1,2 --out REPORT``.

A pruning method is worth what its coreset does downstream (docs/design.md, "Evidence"): this
command selects a coreset with every method and seed, trains the downstream model on each, and
reports the metrics side by side against random subsets of the same size, all data (``--full``)
and most-popular.

Layout of REPORT::

    scores/                      prune's first phases, run once: data/ (when DATA is raw), surrogate/,
                                 work/, scores.parquet, manifest.json
    scores/with-baselines/       the scores plus the baseline columns (el2n, grand), computed once;
                                 every run selects from here, so no (method, seed) recomputes them
    runs/<method>-seed<S>/       one run: the selection (coreset.parquet, scores.parquet, manifest.json,
                                 selection.png), the trained model (tiger/ or bigrec/) and result.json
    runs/all-seed<S>/            --full: the downstream model trained on every sample
    report.json, report.md       per method: mean, sd and every seed; paired differences to random;
                                 references; coreset composition; machine and wall times
    metrics.png, composition.png
    manifest.json                the options the comparison ran with (``options.compare``, dealrec.runconfig)

``result.json`` is written last, atomically, with the run's inputs (method, n, seed, selection
parameters, training options, a digest of the score columns the method ranks by, a digest of the
data): a rerun skips a run whose ``result.json`` records the same inputs and redoes any other, so a
killed comparison resumes with the unfinished runs only. Redoing a run selects again (in the driver,
seconds) and trains only when no run has trained on the same samples yet: the training key
(``training_key``: the coreset's histories and targets in order, the seed, the target and its options,
the data) is recorded in ``result.json``, and a run with a key already trained (``dealrec`` at lambda 0
and ``influence``; scores that changed in the last bits without changing the selection) takes that
training's metrics and model (``training_from`` names the run that trained). The runs are Ray tasks side by side
(``dealrec.engine``'s executors; ``--workers 0`` runs them one after another in this process).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import shutil
import time
import traceback
from pathlib import Path
from typing import Sequence

import click
import numpy as np
import pyarrow as pa

from dealrec_core.data import (PreparedData, atomic_file, read_table, write_json_atomic,
                          write_parquet_atomic, write_text_atomic)
from dealrec_core.devices import float_platform
from dealrec_core.errors import DealrecError
from dealrec_core.options import SEED_MAX
from dealrec_core.paths import check_output
from dealrec.manifest import MANIFEST_FILE, RunManifest
from dealrec.composition import composition, item_popularity, target_popularity_recall
from dealrec.methods import BASELINES, METHODS, REGISTRY, allocation_help, hard_prune_help
from dealrec.runconfig import with_config
from dealrec.select import CORESET_FILE, run_select
from dealrec.strata import (ALLOCATION_CHOICES, ALLOCATION_WORDS, AUTO_ALLOCATION, AUTO_FALLBACK, DEFAULT_K,
                            DEFAULT_LAMBDA, DEFAULT_N, FIRST_AUTO_FALLBACK, PAPER_LAMBDA, check_allocation,
                            n_hard_pruned)
from surrogates.config import DEFAULT_MODEL as SURROGATE_MODEL, DEFAULT_THREADS as SURROGATE_THREADS, \
    TrainConfig as SurrogateTrainConfig

DOWNSTREAM = ("tiger", "bigrec")
DEFAULT_TARGET = "tiger"
DEFAULT_METHODS = ("dealrec", "random", "influence", "effort", "el2n", "grand", "ccs")
DEFAULT_SEEDS = (0, 1, 2)
ALL = "all"                      # the --full reference run: every sample
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
SPLITS = ("valid", "test")
RESULT_FILE = "result.json"      # a run is done when this exists with the run's inputs
ERROR_FILE = "error.txt"
BASE_DIR = Path("scores") / "with-baselines"
COMPOSITION = ("empty_history_share", "mean_history_length", "median_target_popularity", "distinct_targets")
# Recall@10 of ranking items by how often they are a target of the training set (target_popularity_recall)
TARGET_POPULARITY = ("target_popularity_recall@10_valid", "target_popularity_recall@10_test")

# Options that compare sets itself: naming them in --finetune-args / --score-args would be ambiguous.
_FINETUNE_FIXED = {"tiger": ("--data", "--train", "--out", "--seed", "--overwrite", "--quiet", "--help"),
                   "bigrec": ("--llm", "--data", "--train", "--out", "--seed", "--overwrite", "--help")}
_FINETUNE_OWN = {"tiger": ("data_dir", "train_path", "out", "seed", "overwrite", "quiet"),
                 "bigrec": ("llm", "data", "train_path", "out", "seed", "overwrite")}
_SCORE_FIXED = ("--surrogate", "--out", "--target", "--llm", "--workers", "--ray-address", "--quiet", "--help")


# ----------------------------------------------------------------------------- parsing the request

def parse_methods(methods: str | Sequence[str]) -> list[str]:
    """Method names in the given order, each once; an unknown name is refused with the valid ones."""
    names = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods)]
    names = [m for m in names if m]
    if not names:
        raise DealrecError(f"--methods names no method (choose from {', '.join(METHODS)})")
    for m in names:
        if m not in REGISTRY:
            raise DealrecError(f"--methods: unknown method {m!r} (choose from {', '.join(METHODS)})")
    return list(dict.fromkeys(names))


def parse_seeds(seeds: str | Sequence[int]) -> list[int]:
    """Distinct non-negative integer seeds, in the given order."""
    parts = [s.strip() for s in seeds.split(",")] if isinstance(seeds, str) else [str(s) for s in seeds]
    if not parts or any(not (p.isascii() and p.isdigit()) for p in parts):
        raise DealrecError(f"--seeds {','.join(parts)!r}: give non-negative integers separated by commas, e.g. 0,1,2")
    values = [int(p) for p in parts]
    if any(v > SEED_MAX for v in values):
        raise DealrecError(f"--seeds: seed {next(v for v in values if v > SEED_MAX)} is out of range 0..{SEED_MAX}")
    if len(set(values)) != len(values):
        raise DealrecError(f"--seeds {','.join(parts)!r}: a seed is repeated")
    return values


def _parse_command_args(command, what: str, text: str, fixed: Sequence[str], base_argv: list[str]) -> dict:
    """The options of another dealrec command, parsed and defaulted by that command's own parser.

    So ``--finetune-args "--max-epochs 3"`` means exactly what ``--max-epochs 3`` means to ``dealrec
    finetune tiger``, defaults included, and a typo is refused before anything runs.
    """
    try:
        argv = shlex.split(text or "")
    except ValueError as e:
        raise DealrecError(f"{what} {text!r}: {e}") from None
    for token in argv:
        if token.split("=", 1)[0] in fixed:
            raise DealrecError(f"{what}: {token.split('=', 1)[0]} is set by dealrec compare itself "
                               f"(not allowed here: {', '.join(fixed)})")
    try:
        ctx = command.make_context(command.name, base_argv + argv)
    except click.ClickException as e:
        raise DealrecError(f"{what} {text!r}: {e.format_message()}") from None
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in ctx.params.items()}


def finetune_options(target: str, text: str = "") -> dict:
    """The training options of ``dealrec finetune TARGET`` (defaults + ``text``), less the ones compare sets."""
    if target == "tiger":
        from finetune.tiger_train import tiger_command as command

        base = ["--data", ".", "--train", ".", "--out", "."]   # placeholders: compare sets them per run
    else:
        from finetune.bigrec import bigrec_command as command

        base = ["--llm", ".", "--data", ".", "--train", ".", "--out", "."]
    params = _parse_command_args(command, "--finetune-args", text, _FINETUNE_FIXED[target], base)
    if target == "tiger":
        from finetune.tiger_train import check_metric

        check_metric(params["metric"])
    return {k: v for k, v in params.items() if k not in _FINETUNE_OWN[target]}


def score_config(text: str, score_target: str, llm: str | None, workers: int | None, ray_address: str | None):
    """The ``ScoreConfig`` of ``dealrec score``'s options (defaults + ``text``) with compare's target and engine."""
    from dealrec.score import config_from_options, score_command

    params = _parse_command_args(score_command, "--score-args", text, _SCORE_FIXED,
                                 [".", "--surrogate", ".", "--out", "."])
    options = {k: v for k, v in params.items() if k not in ("data", "surrogate", "out", "quiet")}
    options.update(target=score_target, llm=llm, workers=workers, ray_address=ray_address)
    config = config_from_options(**options)
    config.check()
    return config


# ----------------------------------------------------------------------------- digests

def data_digest(prepared: PreparedData) -> str:
    """sha256 over everything a downstream run reads from the data folder: samples, items, eval splits."""
    return prepared.content_digest()


def columns_digest(scores_path: Path, columns: Sequence[str]) -> str | None:
    """sha256 of ``columns`` in sample_id order: what a method ranks by, whatever else the file holds."""
    if not columns:
        return None
    table = read_table(scores_path, required=("sample_id", *columns), what="scores table")
    sid = table.column("sample_id").to_numpy().astype(np.int64)
    order = np.argsort(sid, kind="stable")
    h = hashlib.sha256(sid[order].tobytes())
    for c in columns:
        h.update(c.encode())
        h.update(table.column(c).to_numpy().astype(np.float64)[order].tobytes())
    return h.hexdigest()


def _llm_fingerprint(llm: str) -> dict:
    """The LLM folder's path, file names and sizes: hashing gigabytes of weights for every rerun costs more
    than it protects (replacing a model in place by another of the same sizes is not a use we serve)."""
    root = Path(llm)
    return {"llm": str(root.resolve()),
            "files": {p.name: p.stat().st_size for p in sorted(root.iterdir()) if p.is_file()}}


# ----------------------------------------------------------------------------- composition

def _composition_of(path: Path, context: dict, popularity: np.ndarray) -> dict:
    """A training set's composition plus its targets' popularity Recall@10 on valid and test; read and
    computed once per file and driver (the report is rewritten after every run)."""
    import pyarrow.compute as pc

    cache = context["composition_cache"]
    key = str(path)
    if key not in cache:
        table = read_table(path, required=("history", "target"), what="samples table")
        lengths = pc.list_value_length(table.column("history")).to_numpy(zero_copy_only=False)
        targets = table.column("target").to_numpy()
        recall = target_popularity_recall(targets, context["prepared"].n_items, context["eval_users"])
        cache[key] = {**composition(lengths, targets, popularity),
                      **{f"target_popularity_recall@10_{k}": v for k, v in recall.items()}}
    return cache[key]


# ----------------------------------------------------------------------------- one run (a task)

def compare_task(task: dict) -> dict:
    """One (method, seed): select, train and evaluate the downstream model, write ``result.json`` last.

    Runs in a Ray actor or in this process. A failure is written to the run's ``error.txt`` and
    returned, so that one bad run does not stop the others side by side.
    """
    try:
        return _run_one(task)
    except Exception as e:  # reported by the driver with the run's name; the traceback is in error.txt
        return _failure(task, e)


def _failure(task: dict, e: Exception) -> dict:
    folder = Path(task["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(folder / ERROR_FILE, traceback.format_exc())
    message = (str(e).splitlines() or [""])[0]
    if not isinstance(e, DealrecError):
        message = f"{type(e).__name__}: {message}"
    return {"name": task["name"], "error": message}


def _select_run(task: dict) -> None:
    """Select the run's training set, in the driver (seconds; the baseline columns are computed before), and
    fill in ``train``, ``selection_fields``, ``select_seconds`` and ``training_key``."""
    t0 = time.time()
    folder = Path(task["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (RESULT_FILE, ERROR_FILE):
        (folder / stale).unlink(missing_ok=True)
    if task["method"] == ALL:
        task["train"], digest, selection = str(PreparedData(task["data"]).samples_dir), ALL, None
    else:
        selection = run_select(task["base"], method=task["method"], n=task["n"], lam=task["lam"], k=task["k"],
                               hard_prune=task["hard_prune"], seed=task["seed"], data=task["data"],
                               surrogate=task["surrogate"], out=folder, plot=True, progress=False,
                               allocation=task.get("allocation"))
        task["train"] = str(folder / CORESET_FILE)
        digest = training_set_digest(folder / CORESET_FILE)
    task["selection_fields"] = _selection_fields(selection)
    task["select_seconds"] = round(time.time() - t0, 3)
    task["training_key"] = training_key(task["inputs"], digest)


def _run_one(task: dict) -> dict:
    """Train and evaluate on the training set the driver selected (``task["train"]``)."""
    import torch

    folder = Path(task["folder"])   # made, and cleared of an earlier result, by _select_run
    method, seed, train = task["method"], task["seed"], task["train"]
    t_train = time.time()
    model_dir = folder / task["target"]
    if task["target"] == "tiger":
        from finetune.tiger_train import run_tiger

        metrics = run_tiger(task["data"], str(train), str(model_dir), seed=seed, overwrite=True,
                            quiet=not task["progress"], **task["finetune"])
        threads = metrics.get("threads")
    else:
        from finetune.bigrec import bigrec_config, run_bigrec

        metrics = run_bigrec(task["llm"], task["data"], train, model_dir, bigrec_config(seed=seed, **task["finetune"]),
                             overwrite=True, log=lambda line: click.echo(line, err=True))
        threads = json.loads((model_dir / "manifest.json").read_text()).get("torch_threads")
    select_seconds, train_seconds = task["select_seconds"], round(time.time() - t_train, 3)
    result = {
        "name": task["name"], "method": method, "seed": seed, "inputs": task["inputs"],
        "valid": metrics["valid"], "test": metrics["test"],
        "train": str(train), "model": str(model_dir), "train_samples": metrics.get("train_samples"),
        "training_key": task["training_key"], "training_from": task["name"], **task["selection_fields"],
        "seconds": round(select_seconds + train_seconds, 3),
        "select_seconds": select_seconds, "train_seconds": train_seconds,
        "machine": {"host": platform.node(), "cpu_count": os.cpu_count(), "torch_threads": threads,
                    "torch_threads_outside_training": torch.get_num_threads(),
                    "torch_cpu_capability": float_platform()["torch_cpu_capability"]},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(folder / RESULT_FILE, result)
    return result


def _selection_fields(selection: dict | None) -> dict:
    return {"selection": None if selection is None else {
                k: selection.get(k) for k in ("n_samples", "n_selected", "n_hard_pruned", "allocation_used",
                                              "seconds")},
            "baseline_reused": None if selection is None else selection["inputs"].get("baseline_reused")}


def training_set_digest(path: Path) -> str:
    """sha256 of what the downstream trainer reads from a coreset: every row's history and target, in order."""
    table = read_table(path, required=("history", "target"), what="coreset")
    h = hashlib.sha256()
    h.update(np.asarray(table.column("target").to_numpy(), dtype=np.int64).tobytes())
    for history in table.column("history").to_pylist():
        h.update(np.int64(len(history)).tobytes())
        h.update(np.asarray(history, dtype=np.int64).tobytes())
    return h.hexdigest()


def training_key(inputs: dict, train_digest: str) -> str:
    """What decides a run's trained model: the training set's content, the seed, the downstream target and its
    options, the data (and BIGRec's LLM). Two runs with the same key train the same model, whatever method,
    scores or selection parameters led to their coreset."""
    what = {k: inputs.get(k) for k in ("seed", "target", "finetune", "data", "llm")}
    what["train"] = train_digest
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _key_of_result(result: dict, folder: Path) -> str | None:
    """A finished run's training key (recorded since 2026-11-27; recomputed from its coreset for older runs)."""
    if result.get("training_key"):
        return result["training_key"]
    inputs = result.get("inputs") or {}
    if inputs.get("method") == ALL:
        return training_key(inputs, ALL)
    coreset = folder / CORESET_FILE
    if not coreset.exists():
        return None
    try:
        return training_key(inputs, training_set_digest(coreset))
    except DealrecError:
        return None


def _trained_by(result: dict) -> str:
    """The run whose training a result holds (itself unless it took another's; results from before the field:
    itself)."""
    return result.get("training_from") or result["name"]


def _previous_result(folder: Path) -> dict | None:
    """The folder's result.json whatever inputs it records (None when absent or cut short)."""
    try:
        result = json.loads((folder / RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def _shared_result(task: dict, source: dict) -> dict:
    """The result of a run whose coreset another run (or this folder's earlier run) has trained on already:
    that training's metrics and model, this run's own selection and inputs."""
    import torch

    own = _trained_by(source) == task["name"]
    train_seconds = float(source.get("train_seconds") or 0.0)
    return {
        "name": task["name"], "method": task["method"], "seed": task["seed"], "inputs": task["inputs"],
        "valid": source["valid"], "test": source["test"],
        "train": str(task["train"]), "model": source["model"], "train_samples": source.get("train_samples"),
        "training_key": task["training_key"], "training_from": _trained_by(source),
        **task["selection_fields"],
        # the training's time stays with the run that trained (a folder that takes its own earlier training
        # keeps it), so that the report's total counts every training once
        "seconds": round(task["select_seconds"] + (train_seconds if own else 0.0), 3),
        "select_seconds": task["select_seconds"], "train_seconds": train_seconds if own else 0.0,
        "machine": {"host": platform.node(), "cpu_count": os.cpu_count(),
                    "torch_threads": (source.get("machine") or {}).get("torch_threads"),
                    "torch_threads_outside_training": torch.get_num_threads(),
                    "torch_cpu_capability": float_platform()["torch_cpu_capability"]},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _write_text_atomic(path: Path, text: str) -> None:
    write_text_atomic(path, text)


def _finished(folder: Path, inputs: dict) -> dict | None:
    """The run's result when it finished with these inputs, else None (never run, killed, other inputs)."""
    path = folder / RESULT_FILE
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None  # cut short: redo
    return result if isinstance(result, dict) and result.get("inputs") == inputs else None


# ----------------------------------------------------------------------------- the driver

class _LazyExecutor:
    """``dealrec.engine``'s executor, started on the first task: a rerun with every shard and run done
    never starts Ray."""

    def __init__(self, workers: int | None, address: str | None, threads: int, worker_nice: int = 0):
        self.workers, self.address, self.threads, self.worker_nice = workers, address, threads, worker_nice
        self._executor = None

    def _started(self):
        if self._executor is None:
            from dealrec.engine import make_executor

            self._executor = make_executor(self.workers, self.address, self.threads, self.worker_nice)
        return self._executor

    def run(self, fn, tasks, desc, progress=True, use_gpu=False):
        if not tasks:
            return iter(())
        return self._started().run(fn, tasks, desc, progress=progress, use_gpu=use_gpu)

    def describe(self) -> dict:
        if self._executor is None:
            return {"executor": "local" if self.workers == 0 else "ray", "workers": self.workers, "started": False}
        return self._executor.describe()

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None


def _sync_base(base: Path, scores_dir: Path | None, samples_dir: Path) -> None:
    """Write ``base``: the fresh scores (or the bare sample ids) plus the baseline columns computed before.

    ``run_score`` rewrites ``scores/scores.parquet`` with its own columns on every call, so the baseline
    columns live here instead; ``run_select`` keeps reusing them while its manifest record (surrogate,
    samples and values sha256) still matches, and recomputes them otherwise.
    """
    base.mkdir(parents=True, exist_ok=True)
    if scores_dir is not None:
        fresh = read_table(scores_dir / "scores.parquet", required=("sample_id",), what="scores table")
        fresh = fresh.select([c for c in fresh.column_names if c in ("sample_id", "influence", "effort")])
        manifest = RunManifest.read(scores_dir)
    else:
        fresh = read_table(samples_dir, required=("sample_id",), what="samples table").select(["sample_id"])
        manifest = RunManifest(base)
    fresh = fresh.take(pa.array(np.argsort(fresh.column("sample_id").to_numpy(), kind="stable")))
    old_path = base / "scores.parquet"
    known = {}
    if old_path.exists():
        old = read_table(old_path, required=("sample_id",), what="scores table")
        old_ids = old.column("sample_id").to_numpy().astype(np.int64)
        ids = fresh.column("sample_id").to_numpy().astype(np.int64)
        records = RunManifest.read(base).baseline_columns()
        if len(old_ids) == len(ids) and np.array_equal(np.sort(old_ids), ids):
            order = np.argsort(old_ids, kind="stable")
            for col in sorted(b.column for b in BASELINES):
                if col in old.column_names and col in records:
                    fresh = fresh.append_column(col, old.column(col).take(pa.array(order)))
                    known[col] = records[col]
    if known:
        manifest.data["selection"] = {"inputs": {"baseline_columns": known}}
    else:
        manifest.data.pop("selection", None)
    write_parquet_atomic(fresh, old_path)
    manifest.write(base)   # the scores' record, whose selection is only the baseline columns kept


def _check_out(out: Path, data: Path, llm, surrogate, needs_surrogate: bool, config, train_options: dict) -> None:
    """REPORT is written in place (the layout above): an input may sit beside what it writes (a prepared
    REPORT/scores/data, a given REPORT/scores/surrogate: only read), never be REPORT, hold it or be among it."""
    from dealrec.prune import is_prepared

    writes = ["scores/work", "scores/scores.parquet", "scores/manifest.json", BASE_DIR.as_posix(), "runs",
              "report.json", "report.md", "metrics.png", "composition.png", MANIFEST_FILE]
    if not is_prepared(data):
        writes.append("scores/data")
    if needs_surrogate and not surrogate:
        writes.append("scores/surrogate")
    check_output(out, {"DATA": data, "--llm": llm, "--surrogate": surrogate,
                       "--score-args --adapter": config.adapter, "--score-args --target-init": config.target_init,
                       "--finetune-args --init": train_options.get("init_ckpt"),
                       "--finetune-args --encoder": train_options.get("encoder_dir"),
                       "--finetune-args --adapter": train_options.get("adapter")}, writes=writes)


def run_compare(data, out, n: int = DEFAULT_N, methods: str | Sequence[str] = DEFAULT_METHODS,
                seeds: str | Sequence[int] = DEFAULT_SEEDS, target: str = DEFAULT_TARGET, full: bool = False,
                llm: str | None = None, workers: int | None = None, ray_address: str | None = None,
                surrogate: str | None = None, surrogate_model: str | None = None,
                surrogate_epochs: int = SurrogateTrainConfig.max_epochs,
                surrogate_minutes: float | None = SurrogateTrainConfig.max_minutes,
                threads: int | None = SurrogateTrainConfig.threads, lam: float = DEFAULT_LAMBDA, k: int = DEFAULT_K,
                hard_prune: float | None = None, score_args: str = "", finetune_args: str = "",
                progress: bool = True, log=None, allocation: str | None = None) -> dict:
    """Score once, run every (method, seed) not done yet, write the report; returns report.json's content.

    ``log(line)`` receives one line per finished run (the command prints them on stderr).
    """
    from dealrec.prune import prepare_phase, surrogate_model_for, surrogate_phase

    t_all = time.perf_counter()
    # ---- everything the request says is checked before anything is written
    methods = parse_methods(methods)
    seeds = parse_seeds(seeds)
    if target not in DOWNSTREAM:
        raise DealrecError(f"unknown --target {target!r} (choose from {', '.join(DOWNSTREAM)})")
    if target == "bigrec" and not llm:
        raise DealrecError("--target bigrec needs --llm DIR (a local HuggingFace causal LM folder)")
    if llm and not Path(llm).is_dir():
        raise DealrecError(f"{llm}: no such folder (--llm)")
    if n < 1:
        raise DealrecError(f"--n must be at least 1, got {n}")
    if k < 1:
        raise DealrecError(f"the number of strata --k must be at least 1, got {k}")
    if not np.isfinite(lam):
        raise DealrecError(f"--lambda must be a finite number, got {lam}")
    if hard_prune is not None:
        n_hard_pruned(0, hard_prune)  # refuses a share outside [0, 1)
    # None: each stratified method's own default share (dealrec.methods)
    shares = {m: REGISTRY[m].resolve_hard_prune(hard_prune) for m in methods if REGISTRY[m].stratified}
    check_allocation(allocation)
    allocations = {m: REGISTRY[m].resolve_allocation(allocation) for m in methods if REGISTRY[m].stratified}
    if workers is not None and workers < 0:
        raise DealrecError(f"--workers must be 0 or more, got {workers}")
    if workers == 0 and ray_address:
        raise DealrecError("--ray-address needs --workers >= 1 (or leave --workers out)")
    if surrogate and not (Path(surrogate) / "model.safetensors").exists():
        raise DealrecError(f"{surrogate}: not a trained surrogate folder (no model.safetensors)")
    needs = {c for m in methods for c in REGISTRY[m].columns}
    score_target = target if "effort" in needs else "none"   # effort is the downstream model's own gradient
    config = score_config(score_args, score_target, llm, workers, ray_address)
    train_options = finetune_options(target, finetune_args)
    data, out = Path(data), Path(out)
    if not data.exists():
        raise DealrecError(f"{data}: no such file or folder")
    _check_out(out, data, llm, surrogate, bool(needs), config, train_options)
    from dealrec.prune import is_prepared

    if needs:   # the surrogate model is known (and a given folder readable) before anything is written
        surrogate_model = surrogate_model_for(surrogate, surrogate_model)
    if surrogate and needs and is_prepared(data):   # raw DATA: checked by score once it is prepared
        from surrogates.base import check_surrogate_fits

        check_surrogate_fits(surrogate, PreparedData(data).n_items, data)

    out.mkdir(parents=True, exist_ok=True)
    scores_dir = out / "scores"
    phases: dict = {}
    executor = _LazyExecutor(workers, ray_address, config.threads, config.worker_nice)
    try:
        t0 = time.perf_counter()
        prepared_dir, prep_info = prepare_phase(data, scores_dir, progress)
        prepared = PreparedData(prepared_dir)
        phases["prepare"] = {"seconds": round(time.perf_counter() - t0, 3), **prep_info}
        n_samples = len(read_table(prepared.samples_dir, required=("sample_id",), what="samples table"))
        largest = max(shares.values(), default=0.0)
        available = n_samples - n_hard_pruned(n_samples, largest)
        if n > available:
            raise DealrecError(f"--n {n} exceeds the {available} samples that can be selected ({n_samples} samples"
                               + (f" less the hard prune of {largest}" if available < n_samples else "") + ")")

        surrogate_dir = None
        if needs:   # every method but random ranks by something the surrogate gives
            t0 = time.perf_counter()
            surrogate_dir, info = surrogate_phase(prepared.root, scores_dir, surrogate, config.seed, surrogate_minutes,
                                                  surrogate_epochs, progress, threads, device=config.device,
                                                  model=surrogate_model, checkpoints=config.influence_checkpoints)
            phases["train_surrogate"] = {"seconds": round(time.perf_counter() - t0, 3), **info}
        scored = bool(needs & {"influence", "effort"})
        if scored:
            from dealrec.score import run_score

            t0 = time.perf_counter()
            manifest = run_score(prepared.root, surrogate_dir, scores_dir, config, progress=progress,
                                 executor=executor)
            phases["score"] = {"seconds": round(time.perf_counter() - t0, 3),
                               **{k: v for k, v in manifest["phases"].items() if isinstance(v, dict)}}

        # ---- baseline columns, once for every method and seed
        base = out / BASE_DIR
        t0 = time.perf_counter()
        _sync_base(base, scores_dir if scored else None, prepared.samples_dir)
        baseline_info = {}
        for column in sorted({REGISTRY[m].baseline.column for m in methods if REGISTRY[m].baseline}):
            # the baseline method named after its column ranks by that column alone (tests/test_methods.py)
            section = run_select(base, method=column, n=min(n, n_samples), seed=0, data=str(prepared.root),
                                 surrogate=str(surrogate_dir), plot=False, progress=progress)
            (base / CORESET_FILE).unlink(missing_ok=True)   # a by-product of computing the column, not a result
            baseline_info[column] = {"reused": section["inputs"].get("baseline_reused") == column,
                                     "seconds": section["inputs"].get("baseline_seconds")}
        phases["baselines"] = {"seconds": round(time.perf_counter() - t0, 3), **baseline_info}

        # ---- the runs
        digest = data_digest(prepared)
        tasks, results, todo = [], {}, []
        trained: dict[str, dict] = {}   # training key -> the finished result that trained on it
        plan = ([(ALL, s) for s in seeds] if full else []) + [(m, s) for s in seeds for m in methods]
        for method, seed in plan:
            name = f"{method}-seed{seed}"
            folder = out / "runs" / name
            inputs = {"method": method, "seed": seed, "target": target, "finetune": train_options, "data": digest}
            if method != ALL:
                inputs["n"] = n
                if REGISTRY[method].uses_lambda:
                    inputs["lambda"] = lam
                if REGISTRY[method].stratified:
                    inputs.update(k=k, hard_prune=shares[method])
                    if allocations[method] != "equal":   # the only allocation before it was an option: old keys hold
                        inputs["allocation"] = allocations[method]
                    if allocations[method] == AUTO_ALLOCATION and AUTO_FALLBACK != FIRST_AUTO_FALLBACK:
                        inputs["auto_fallback"] = AUTO_FALLBACK   # another "auto" than the one earlier runs recorded
                inputs["scores"] = columns_digest(base / "scores.parquet", REGISTRY[method].columns)
            if target == "bigrec":
                inputs["llm"] = _llm_fingerprint(llm)
            inputs = json.loads(json.dumps(inputs))   # as result.json will hold it (tuples -> lists)
            done = _finished(folder, inputs)
            if done is not None:
                results[name] = {**done, "reused": True}
                key = _key_of_result(done, folder)
                if key is not None and _trained_by(done) == name:
                    trained.setdefault(key, done)
                continue
            todo.append({"name": name, "folder": str(folder), "method": method, "seed": seed, "n": n, "lam": lam,
                         "k": k, "hard_prune": shares.get(method, 0.0), "allocation": allocations.get(method),
                         "base": str(base), "data": str(prepared.root),
                         "surrogate": None if surrogate_dir is None else str(surrogate_dir), "target": target,
                         "finetune": train_options, "llm": llm, "inputs": inputs,
                         "progress": progress and workers == 0})
        # The others select here, one after another (seconds each). A run whose training set some run has trained
        # on already (another method that selected the same samples, or this folder's own earlier run whose score
        # digest or selection options changed without changing the selection) takes that training's result.
        failed: dict[str, str] = {}
        trainer_of: dict[str, str] = {}       # training key -> the task that trains on it here
        followers_of: dict[str, list[dict]] = {}   # that task -> the runs that wait for its training
        shared = 0

        def take(task: dict, source: dict) -> None:
            nonlocal shared
            trainer = _trained_by(source)
            if trainer != task["name"]:   # an earlier run's model here would no longer match this run's result
                shutil.rmtree(Path(task["folder"]) / target, ignore_errors=True)
            # where the trained model is now (REPORT may have been moved or copied since it was recorded)
            result = _shared_result(task, {**source, "model": str(out / "runs" / trainer / target)})
            write_json_atomic(Path(task["folder"]) / RESULT_FILE, result)
            results[task["name"]] = {**result, "reused": True}
            trained.setdefault(task["training_key"], result)
            shared += 1

        selected = []
        for task in todo:   # first every selection, and the folders whose own earlier training still holds
            folder = Path(task["folder"])
            previous = _previous_result(folder)
            previous_key = None if previous is None else _key_of_result(previous, folder)
            try:
                _select_run(task)
            except Exception as e:   # one bad selection does not stop the others
                failed[task["name"]] = _failure(task, e)["error"]
                continue
            if (previous is not None and previous_key == task["training_key"]
                    and _trained_by(previous) == task["name"]
                    and Path(previous.get("model", "")).is_dir()):
                take(task, previous)
            else:
                selected.append(task)
        for task in selected:   # then the trainings some run holds already, and one task per training set left
            key = task["training_key"]
            if key in trained:
                take(task, trained[key])
            elif key in trainer_of:
                followers_of[trainer_of[key]].append(task)
            else:
                trainer_of[key], followers_of[task["name"]] = task["name"], []
                tasks.append(task)
        say = log or (lambda line: None)
        if results or failed:
            say(f"compare: {len(results) - shared} of {len(plan)} runs already done with the same inputs"
                + (f", {shared} more trained already on the same samples" if shared else "")
                + f"; {len(tasks)} to train" + (f", {len(failed)} failed to select" if failed else ""))
        context = {"out": out, "data": data, "prepared": prepared, "n": n, "methods": methods, "seeds": seeds,
                   "target": target, "full": full, "lam": lam, "k": k, "hard_prune": shares,
                   "allocation": allocations,
                   "train_options": train_options, "score_config": config.to_dict(), "phases": phases,
                   "plan": plan, "executor": executor, "t_all": t_all, "say": say, "progress": progress}
        from dealrec_core.evaluate import stopping_split, users_with_truth   # torch: not on the --help path

        popularity = item_popularity(prepared)
        stop_users = train_options.get("valid_users", 0) if target == "tiger" else 0
        # the users every figure of the report is counted on: validation less the runs' early-stopping users
        stopping, reported = stopping_split(prepared.eval_split("valid"), stop_users)
        test = prepared.eval_split("test")
        context["eval_users"] = {"valid": reported, "test": test}
        context["user_counts"] = {"valid_stop": 0 if stopping is reported else len(stopping),
                                  "valid": len(reported), "test": len(users_with_truth(test))}
        context["composition_cache"] = {}
        references = most_popular_metrics(prepared, context["eval_users"])
        context["all_samples"] = _composition_of(prepared.samples_dir, context, popularity)
        for name, error in failed.items():
            say(f"compare: {name} failed: {error} (details: {out / 'runs' / name / ERROR_FILE})")
        t0 = time.perf_counter()
        for result in executor.run(compare_task, tasks, "compare: runs", progress=False,
                                   use_gpu=(target == "bigrec")):
            name = result["name"]
            followers = followers_of.get(name, [])
            if "error" in result:
                for task in [{"name": name}, *followers]:
                    failed[task["name"]] = result["error"]
                    say(f"compare: {task['name']} failed: {result['error']} "
                        f"(details: {out / 'runs' / name / ERROR_FILE})")
                continue
            results[name] = {**result, "reused": False}
            for task in followers:   # the same training set: the same model
                take(task, result)
            v, t = result["valid"], result["test"]
            say(f"compare: [{len(results)}/{len(plan)}] {name}: test R@10 {t['recall@10']:.4f} "
                f"N@10 {t['ndcg@10']:.4f}, valid R@10 {v['recall@10']:.4f}, {result['seconds']:.0f}s"
                + (f" (also {', '.join(t['name'] for t in followers)}: the same samples)" if followers else ""))
            write_report(context, results, popularity, references, failed, plots=False)
        trained_now = sum(1 for r in results.values() if not r["reused"])
        phases["runs"] = {"seconds": round(time.perf_counter() - t0, 3), "ran": trained_now,
                          "reused": len(results) - trained_now, "shared_training": shared, "failed": len(failed)}
        report = write_report(context, results, popularity, references, failed, plots=True)
    finally:
        executor.shutdown()
    if failed:
        first = next(iter(failed))
        raise DealrecError(f"{len(failed)} of {len(plan)} runs failed ({first}: {failed[first]}); details in "
                           f"{out / 'runs'}/<run>/{ERROR_FILE}; the report holds the others, and the same command "
                           f"again redoes only the unfinished runs")
    return report


def most_popular_metrics(prepared: PreparedData, eval_users: dict) -> dict:
    """Most-popular on valid and test: items ranked by their interactions over all samples' sequences,
    the project's reference row (``dealrec_core.evaluate.popularity_scorer``, counted as bench_surrogate.py does),
    on ``eval_users`` (split -> users: validation without the runs' early-stopping users)."""
    from dealrec_core.evaluate import evaluate_scorer, popularity_scorer

    score = popularity_scorer(prepared.samples().sequences(), prepared.n_items)
    return {split: evaluate_scorer(score, eval_users[split], prepared.n_items) for split in SPLITS}


# ----------------------------------------------------------------------------- the report

def _stats(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = float(np.mean(values))
    return mean, (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def _row(name: str, kind: str, by_seed: dict[int, dict]) -> dict:
    """A row of the report: every seed's metrics, their mean and sd (sample sd, ddof 1)."""
    row = {"name": name, "kind": kind, "seeds": sorted(by_seed),
           "per_seed": {split: {m: {str(s): by_seed[s][split][m] for s in sorted(by_seed)} for m in METRICS}
                        for split in SPLITS},
           "mean": {split: {} for split in SPLITS}, "sd": {split: {} for split in SPLITS}}
    for split in SPLITS:
        for m in METRICS:
            row["mean"][split][m], row["sd"][split][m] = _stats([by_seed[s][split][m] for s in sorted(by_seed)])
    return row


def _versus_random(row: dict, random_row: dict) -> dict:
    """Paired per seed (the same seed gives the same random draws and the same model initialisation):
    the difference to random on each seed both have, its mean and sd, and the ratio of the means."""
    common = [s for s in row["seeds"] if s in random_row["seeds"]]
    out = {"seeds": common, "diff": {}, "mean_diff": {}, "sd_diff": {}, "ratio_of_means": {}}
    for split in SPLITS:
        out["diff"][split], out["mean_diff"][split], out["sd_diff"][split], out["ratio_of_means"][split] = {}, {}, {}, {}
        for m in METRICS:
            mine = [row["per_seed"][split][m][str(s)] for s in common]
            theirs = [random_row["per_seed"][split][m][str(s)] for s in common]
            diffs = [a - b for a, b in zip(mine, theirs)]
            out["diff"][split][m] = {str(s): d for s, d in zip(common, diffs)}
            out["mean_diff"][split][m], out["sd_diff"][split][m] = _stats(diffs)
            denominator = float(np.mean(theirs)) if theirs else 0.0
            out["ratio_of_means"][split][m] = float(np.mean(mine)) / denominator if denominator > 0 else None
    return out


def _per_user_of(context: dict, folder: Path, backfill: bool) -> dict | None:
    """The per-user results (split -> ``PerUser``) of the model in ``folder``: its ``per_user.parquet``; for a
    TIGER run made before runs wrote one, with ``backfill``, its checkpoint ranks the users again and the file is
    written (once). None when there is none to be had."""
    from dealrec_core.evaluate import PER_USER_FILE, per_user_table, read_per_user

    path = folder / PER_USER_FILE
    if path.exists():
        return read_per_user(path)
    if not (backfill and context["target"] == "tiger" and (folder / "model.safetensors").exists()):
        return None
    from finetune.tiger_train import tiger_per_user

    context["say"](f"compare: {folder.parent.name} has no per-user results (made by an older dealrec): ranking its "
                   f"users again from its checkpoint")
    per_user = tiger_per_user(folder, context["prepared"].root, progress=context.get("progress", False))
    write_parquet_atomic(per_user_table(per_user), path)
    return per_user


def paired_comparisons(context: dict, results: dict, backfill: bool = False) -> dict:
    """Every method (and all data) against random, and every other method against dealrec (the default), paired
    user by user over the seeds both have (``dealrec.paired``): per split and metric the difference, its 95%
    interval over users and seeds, and the verdict. Methods whose runs lack per-user results are listed apart."""
    from dealrec.paired import BOOTSTRAP_SEED, LEVEL, REPLICATES, paired_differences

    names = list(context["methods"]) + ([ALL] if context["full"] else [])
    runs, lacking, read = {}, [], {}

    def per_user(result: dict) -> dict | None:   # runs that share a training (dealrec and influence) read it once
        folder = context["out"] / "runs" / _trained_by(result) / context["target"]
        if folder not in read:
            read[folder] = _per_user_of(context, folder, backfill)
        return read[folder]

    for method in names:
        by_seed = {s: results[f"{method}-seed{s}"] for s in context["seeds"] if f"{method}-seed{s}" in results}
        if not by_seed:
            continue
        got = {s: per_user(r) for s, r in by_seed.items()}
        if any(v is None for v in got.values()):
            lacking.append(method)
            continue
        runs[method] = got

    def versus(a: str, b: str) -> dict:
        seeds = sorted(set(runs[a]) & set(runs[b]))
        # the seeds both sides ran (paired.py resamples each side's on its own)
        return {split: paired_differences({s: runs[a][s][split] for s in seeds},
                                          {s: runs[b][s][split] for s in seeds}, METRICS)
                for split in SPLITS} if seeds else {}

    against_random = {m: versus(m, "random") for m in runs if m != "random"} if "random" in runs else {}
    default_against = {m: versus("dealrec", m) for m in runs if m not in ("dealrec", ALL)} if "dealrec" in runs else {}
    return {"method": f"paired bootstrap over users and seeds, {REPLICATES} replicates, {LEVEL:.0%} percentile "
                      f"interval, generator seed {BOOTSTRAP_SEED} (dealrec/paired.py)",
            "against_random": {m: v for m, v in against_random.items() if v},
            "dealrec_against": {m: v for m, v in default_against.items() if v},
            "without_per_user": lacking}


def build_report(context: dict, results: dict, popularity: np.ndarray, references: dict, failed: dict,
                 final: bool = False) -> dict:
    import torch

    prepared = context["prepared"]
    rows, compositions = [], {}
    names = list(context["methods"]) + ([ALL] if context["full"] else [])
    for method in names:
        by_seed = {s: results[f"{method}-seed{s}"] for s in context["seeds"] if f"{method}-seed{s}" in results}
        if not by_seed:
            continue
        row = _row("all data" if method == ALL else method, "reference" if method == ALL else "method", by_seed)
        row["method"] = method
        row["runs"] = {str(s): {"folder": str(Path("runs") / f"{method}-seed{s}"), "seconds": r["seconds"],
                                "reused": r["reused"], "train_samples": r.get("train_samples")}
                       for s, r in by_seed.items()}
        if method != ALL:
            per_seed = {str(s): _composition_of(context["out"] / "runs" / f"{method}-seed{s}" / CORESET_FILE,
                                                context, popularity) for s in by_seed}
            compositions[method] = {"per_seed": per_seed,
                                    "mean": {c: float(np.mean([v[c] for v in per_seed.values()]))
                                             for c in (*COMPOSITION, *TARGET_POPULARITY)}}
        rows.append(row)
    popular = {"name": "most popular", "kind": "reference", "method": "most-popular", "seeds": [],
               "mean": {split: {m: references[split][m] for m in METRICS} for split in SPLITS},
               "sd": {split: {m: None for m in METRICS} for split in SPLITS}, "per_seed": None,
               "counted_over": "every item of all samples' sequences (history and target)"}
    rows.append(popular)
    random_row = next((r for r in rows if r.get("method") == "random"), None)
    if random_row is not None:
        for row in rows:
            if row is random_row:
                continue
            if row["per_seed"] is not None:
                row["vs_random"] = _versus_random(row, random_row)
            else:
                row["vs_random"] = {"ratio_of_means": {
                    split: {m: (row["mean"][split][m] / random_row["mean"][split][m]
                                if random_row["mean"][split][m] else None) for m in METRICS} for split in SPLITS}}
    runs = {name: {"seconds": r["seconds"], "select_seconds": r.get("select_seconds"),
                   "train_seconds": r.get("train_seconds"), "reused": r["reused"], "finished": r.get("finished"),
                   "training_from": r.get("training_from", name),
                   "machine": r.get("machine"), "baseline_reused": r.get("baseline_reused")}
            for name, r in sorted(results.items())}
    threads = sorted({r["machine"]["torch_threads"] for r in results.values()
                      if r.get("machine", {}).get("torch_threads") is not None})
    return {
        "command": "dealrec compare",
        "data": str(context["data"]), "prepared": str(prepared.root),
        "n": context["n"], "methods": context["methods"], "seeds": context["seeds"], "target": context["target"],
        "full": context["full"], "metrics": list(METRICS),
        "selection": {"lambda": context["lam"], "k": context["k"], "hard_prune": context["hard_prune"],
                      "allocation": context["allocation"],
                      "allocation_used": {name: r["selection"]["allocation_used"] for name, r in sorted(results.items())
                                          if (r.get("selection") or {}).get("allocation_used")}},
        "finetune_options": context["train_options"], "score_options": context["score_config"],
        "users": context["user_counts"],
        "rows": rows,
        # the final report only: the intervals take seconds a comparison, too many to redo after every run
        "paired": paired_comparisons(context, results, backfill=True) if final else None,
        "composition": {"all_samples": context["all_samples"], "coresets": compositions,
                        "popularity": "interactions of the item over all samples' sequences (history and target)"},
        "runs": runs, "planned": [f"{m}-seed{s}" for m, s in context["plan"]],
        "missing": [f"{m}-seed{s}" for m, s in context["plan"] if f"{m}-seed{s}" not in results],
        "failed": failed,
        "machine": {"platform": platform.platform(), "machine": platform.machine(),
                    "python": platform.python_version(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads_per_run": threads, "executor": context["executor"].describe()},
        "phases": context["phases"],
        "seconds": round(time.perf_counter() - context["t_all"], 3),
        "run_seconds_total": round(sum(r["seconds"] for r in results.values()), 3),
    }


def write_report(context: dict, results: dict, popularity: np.ndarray, references: dict, failed: dict,
                 plots: bool = True) -> dict:
    """report.json and report.md (and the plots), each written to a temporary name and renamed. ``plots``: the
    final report, which also holds the paired intervals (a report written after each run has ``paired`` None)."""
    report = build_report(context, results, popularity, references, failed, final=plots)
    out = context["out"]
    write_json_atomic(out / "report.json", report)
    _write_text_atomic(out / "report.md", report_markdown(report))
    if plots:
        plot_metrics(report, out / "metrics.png")
        plot_composition(report, out / "composition.png")
        plot_paired(report, out / "paired.png")
    return report


def _fmt(x, digits: int = 4, sign: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def _influence_v(report: dict) -> str:
    """The score run's ``--influence-v`` (runs scored before the option had the paper's, measured), and for the
    stationary influence the epochs it was taken over (``phases.score.checkpoints``: how many were used, and how)."""
    influence_v = (report.get("score_options") or {}).get("influence_v", "measured")
    record = ((report.get("phases") or {}).get("score") or {}).get("checkpoints") or {}
    if influence_v != "stationary" or record.get("used", 1) < 2:
        return influence_v
    how = "mean weights" if record.get("mean") == "weights" else "mean influence"
    return f"{influence_v}, at the {how} of the surrogate's last {record['used']} epochs"


def _run_status(name: str, run: dict) -> str:
    source = run.get("training_from")
    if source and source != name:
        return f"the same samples as {source}: its training"
    return "reused" if run["reused"] else "ran now"


def _hard_prune_text(shares) -> str:
    """The report's hard prune: one share for every stratified method, or each method's (reports before session 16
    hold a single number)."""
    if not isinstance(shares, dict):
        return str(shares)
    if len(set(shares.values())) == 1:
        return f"{next(iter(shares.values())):g}"
    return ", ".join(f"{share:g} ({method})" for method, share in shares.items()) or "none (no stratified method)"


def _allocation_text(selection: dict) -> str:
    """The report's budget allocation: each stratified method's, and the runs where "auto" took other budgets than
    the paper's (reports before the option hold none: the paper's equal budgets)."""
    allocations = selection.get("allocation")
    if not allocations:
        return ""
    if len(set(allocations.values())) == 1:
        text = next(iter(allocations.values()))
    else:
        text = ", ".join(f"{how} ({method})" for method, how in allocations.items())
    switched = {}
    for name, how in (selection.get("allocation_used") or {}).items():
        if how != "equal" and allocations.get(name.rsplit("-seed", 1)[0]) == AUTO_ALLOCATION:
            switched.setdefault(how, []).append(name)
    for how, names in switched.items():
        text += (f"; auto took {ALLOCATION_WORDS[how]} in {', '.join(names)} (their equal budgets' check was below "
                 f"random)")
    return f", allocation {text}"


# Below this many users a split's Recall@10 moves by a point or more with one user's hit (a user with one target
# counts 1/N of the mean): on the cuts of docs/selection.md with fewer, single seeds swung by several points.
FEW_USERS = 100


def few_users_warning(users: dict | None) -> list[str]:
    """The report's lines on splits too small to tell methods apart (none when both have ``FEW_USERS`` or more)."""
    small = [f"{split} {users[split]}" for split in ("valid", "test") if users and users[split] < FEW_USERS]
    if not small:
        return []
    fewest = min(users[s] for s in ("valid", "test"))
    return [f"**Few users to count on** ({', '.join(small)}): one user's hit moves a mean Recall@10 by up to "
            f"{1 / max(fewest, 1):.3f}, so differences between methods of that size are noise; more seeds do not "
            f"fix it (they share the users), more data does. \"Decided or not\" below says which differences these "
            f"users and seeds decide.", ""]


PAIRED_SHOWN = ("recall@10", "ndcg@10")


def _comparisons(paired: dict) -> list[tuple[str, dict]]:
    """(label, split -> metric -> interval) of every paired comparison of a report, against random first."""
    out = [(f"{'all data' if m == ALL else m} - random", v) for m, v in paired.get("against_random", {}).items()]
    out += [(f"dealrec - {m}", v) for m, v in paired.get("dealrec_against", {}).items() if m != "random"]
    return out


def paired_markdown(paired: dict | None) -> list[str]:
    """The report's section on which differences the users and seeds decide (reports before it: none)."""
    if not paired:
        return []
    from dealrec.paired import interval_text

    comparisons = _comparisons(paired)
    lines = ["## Decided or not: paired over users and seeds", "",
             f"Each cell: the difference of the means, its 95% interval, and the verdict (better or worse only when "
             f"the whole interval is on one side of zero). {paired['method'].capitalize()}: the users are resampled "
             f"(the same ones for both sides) and so are each side's seeds, so the interval holds both the split's "
             f"sampling of users and the spread of the trainings. \"not decided\" means these users and runs "
             f"cannot tell the two apart: more users narrow the users' part, more seeds the trainings'.", ""]
    if comparisons:
        head = [f"{split} {m}" for split in reversed(SPLITS) for m in PAIRED_SHOWN]
        lines += ["| comparison | " + " | ".join(head) + " |", "| --- |" + " --- |" * len(head)]
        for label, by_split in comparisons:
            cells = [interval_text(by_split[split][m]) for split in reversed(SPLITS) for m in PAIRED_SHOWN]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        any_cell = comparisons[0][1]
        lines += ["", f"Users counted: valid {any_cell['valid'][PAIRED_SHOWN[0]]['users']}, test "
                      f"{any_cell['test'][PAIRED_SHOWN[0]]['users']}. report.json holds {', '.join(METRICS)}.", ""]
    if paired.get("without_per_user"):
        lines += [f"No per-user results for {', '.join(paired['without_per_user'])} (runs made by an older dealrec "
                  f"whose checkpoints could not be ranked again): left out of this section.", ""]
    return lines


def report_markdown(report: dict) -> str:
    lines = [f"# dealrec compare: {report['target']} on {report['n']}-sample coresets",
             "",
             f"Data `{report['data']}`; methods {', '.join(report['methods'])}; seeds "
             f"{', '.join(map(str, report['seeds']))}; lambda {report['selection']['lambda']}, k "
             f"{report['selection']['k']}, hard prune {_hard_prune_text(report['selection']['hard_prune'])}"
             f"{_allocation_text(report['selection'])}; influence "
             f"{_influence_v(report)}. Each cell: mean "
             f"(sd over seeds) and every seed's value in seed order. Choose on valid, report on test.",
             ""]
    stop_users = report["finetune_options"].get("valid_users") if report["target"] == "tiger" else None
    users = report.get("users")   # reports before the counts were kept hold none
    if stop_users:
        counted = (f"{users['valid']} users; {users['valid_stop']} others stop every run" if users else
                   f"{stop_users} users, at most half, stop every run")
        lines += [f"Validation is counted on the validation users that did not early-stop the runs ({counted}; the "
                  f"same users for every method and seed).", ""]
    elif stop_users == 0:
        lines += ["Validation is counted on the users that also early-stopped the runs (`--valid-users 0`): "
                  "optimistic.", ""]
    lines += few_users_warning(users)
    if report["missing"]:
        lines += [f"**Not finished:** {', '.join(report['missing'])}.", ""]
    for split in reversed(SPLITS):   # test first: it is what a comparison reports
        lines += [f"## {split.capitalize()}", "", "| method | " + " | ".join(METRICS) + " |",
                  "| --- |" + " --- |" * len(METRICS)]
        for row in report["rows"]:
            cells = []
            for m in METRICS:
                mean, sd = row["mean"][split][m], row["sd"][split][m]
                cell = _fmt(mean) + (f" (sd {_fmt(sd)})" if sd is not None else "")
                if row["per_seed"] is not None and len(row["seeds"]) > 1:
                    cell += " [" + ", ".join(_fmt(row["per_seed"][split][m][str(s)]) for s in row["seeds"]) + "]"
                cells.append(cell)
            label = row["name"] + (" (reference)" if row["kind"] == "reference" else "")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        paired = [r for r in report["rows"] if "vs_random" in r]
        if paired:
            lines += [f"Paired against random ({split}): mean difference (sd) [per seed], then the ratio of the means.",
                      "", "| method | " + " | ".join(METRICS) + " |", "| --- |" + " --- |" * len(METRICS)]
            for row in paired:
                vs = row["vs_random"]
                cells = []
                for m in METRICS:
                    ratio = vs["ratio_of_means"][split][m]
                    ratio_text = f"{ratio:.2f}x" if ratio is not None else "-"
                    if "diff" in vs:
                        per = ", ".join(_fmt(vs["diff"][split][m][str(s)], sign=True) for s in vs["seeds"])
                        sd = vs["sd_diff"][split][m]
                        cells.append(f"{_fmt(vs['mean_diff'][split][m], sign=True)}"
                                     + (f" (sd {_fmt(sd)})" if sd is not None else "") + f" [{per}]; {ratio_text}")
                    else:
                        cells.append(ratio_text)
                lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += paired_markdown(report.get("paired"))
    comp = report["composition"]
    lines += ["## Composition of the coresets", "",
              f"Popularity of an item: {comp['popularity']}. Coreset rows: mean over seeds [per seed].", "",
              "Targets' popularity R@10: Recall@10 of ranking items by how often they are a target of the "
              "training set (items tied at the tenth place share its slots, in expectation), valid / test; a "
              "downstream model near it has learnt little beyond that popularity.", "",
              "| training set | samples | empty histories | mean history length | median target popularity | "
              "distinct targets | targets' popularity R@10 (valid / test) |", "| --- |" + " --- |" * 6]

    def comp_cells(c: dict) -> list[str]:
        return [f"{c['empty_history_share']:.1%}", f"{c['mean_history_length']:.2f}",
                f"{c['median_target_popularity']:g}", f"{c['distinct_targets']:g}",
                f"{_fmt(c.get(TARGET_POPULARITY[0]))} / {_fmt(c.get(TARGET_POPULARITY[1]))}"]
    a = comp["all_samples"]
    lines.append(f"| all samples | {a['samples']} | " + " | ".join(comp_cells(a)) + " |")
    for method in report["methods"]:
        if method not in comp["coresets"]:
            continue
        c = comp["coresets"][method]
        per = list(c["per_seed"].values())
        cells = comp_cells(c["mean"])
        if len(per) > 1:
            cells = [f"{cell} [{', '.join(comp_cells(p)[i] for p in per)}]" for i, cell in enumerate(cells)]
        lines.append(f"| {method} | {per[0]['samples']} | " + " | ".join(cells) + " |")
    lines += ["", "## Runs", "", "| run | wall time | selection | training | threads | host | |",
              "| --- |" + " --- |" * 6]
    for name, r in report["runs"].items():
        machine = r.get("machine") or {}
        lines.append(f"| {name} | {_duration(r['seconds'])} | {_duration(r['select_seconds'] or 0)} | "
                     f"{_duration(r['train_seconds'] or 0)} | {machine.get('torch_threads', '-')} | "
                     f"{machine.get('host', '-')} | {_run_status(name, r)} |")
    for name, error in report["failed"].items():
        lines.append(f"| {name} | failed: {error} | | | | | |")
    m = report["machine"]
    phases = ", ".join(f"{k} {_duration(v['seconds'])}" for k, v in report["phases"].items() if "seconds" in v)
    lines += ["", "## Machine and time", "",
              f"{m['platform']}, {m['cpu_count']} CPUs, Python {m['python']}, torch {m['torch']}, torch threads per "
              f"run {', '.join(map(str, m['torch_threads_per_run'])) or '-'}; executor "
              f"{json.dumps(m['executor'])}.", "",
              f"This invocation: {_duration(report['seconds'])} wall ({phases}); the runs' own wall times add up to "
              f"{_duration(report['run_seconds_total'])}.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots

def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        with atomic_file(path, suffix=".png") as tmp:   # matplotlib picks the format by the suffix
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def plot_metrics(report: dict, path: Path) -> None:
    """Each metric per method, valid and test: every seed a point, the mean a bar; most-popular dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["per_seed"] is not None]
    popular = next((r for r in report["rows"] if r.get("method") == "most-popular"), None)
    fig, axes = plt.subplots(len(SPLITS), len(METRICS), figsize=(3.2 * len(METRICS), 3.4 * len(SPLITS)),
                             squeeze=False)
    for i, split in enumerate(reversed(SPLITS)):
        for j, m in enumerate(METRICS):
            ax = axes[i, j]
            for x, row in enumerate(rows):
                values = [row["per_seed"][split][m][str(s)] for s in row["seeds"]]
                jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
                color = "#636363" if row["kind"] == "reference" else "#08519c"
                ax.scatter(x + jitter, values, s=18, color=color, zorder=3)
                ax.hlines(row["mean"][split][m], x - 0.3, x + 0.3, color=color, linewidth=2, zorder=2)
            if popular is not None:
                ax.axhline(popular["mean"][split][m], color="#e6550d", linestyle="--", linewidth=1,
                           label="most popular")
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels([r["name"] for r in rows], rotation=45, ha="right", fontsize=8)
            ax.set_title(f"{split} {m}", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            if i == 0 and j == 0 and popular is not None:
                ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{report['target']} on {report['n']}-sample coresets; a point per seed, a bar at the mean",
                 fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_composition(report: dict, path: Path) -> None:
    """Each coreset's composition (a point per seed) against all samples (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comp = report["composition"]
    methods = [m for m in report["methods"] if m in comp["coresets"]]
    titles = {"empty_history_share": "share of empty histories", "mean_history_length": "mean history length",
              "median_target_popularity": "median target popularity", "distinct_targets": "distinct targets"}
    fig, axes = plt.subplots(1, len(COMPOSITION), figsize=(3.4 * len(COMPOSITION), 3.6), squeeze=False)
    for j, stat in enumerate(COMPOSITION):
        ax = axes[0, j]
        for x, method in enumerate(methods):
            values = [v[stat] for v in comp["coresets"][method]["per_seed"].values()]
            jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
            ax.scatter(x + jitter, values, s=18, color="#08519c", zorder=3)
        ax.axhline(comp["all_samples"][stat], color="#636363", linestyle="--", linewidth=1, label="all samples")
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=45, ha="right", fontsize=8)
        ax.set_title(titles[stat], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        if j == 0:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"composition of the {report['n']}-sample coresets against all samples", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_paired(report: dict, path: Path) -> None:
    """Each paired comparison's difference and 95% interval (a row each), per split and metric; green where the
    interval is above zero, red below, grey where it holds zero. Nothing is drawn without comparisons."""
    comparisons = _comparisons(report.get("paired") or {})
    if not comparisons:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"better": "#238b45", "worse": "#cb181d", "not decided": "#737373"}
    panels = [(split, m) for split in reversed(SPLITS) for m in PAIRED_SHOWN]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 0.45 * len(comparisons) + 1.6),
                             squeeze=False, sharey=True)
    for j, (split, m) in enumerate(panels):
        ax = axes[0, j]
        for y, (_, by_split) in enumerate(comparisons):
            r = by_split[split][m]
            ax.plot([r["low"], r["high"]], [y, y], color=colours[r["verdict"]], linewidth=2.2)
            ax.scatter([r["diff"]], [y], color=colours[r["verdict"]], s=22, zorder=3)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(f"{split} {m}", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
    axes[0, 0].set_yticks(range(len(comparisons)))
    axes[0, 0].set_yticklabels([label for label, _ in comparisons], fontsize=8)
    axes[0, 0].invert_yaxis()
    fig.suptitle(f"{report['target']}, {report['n']} samples: difference and 95% interval over users and seeds "
                 f"(green: decided better, red: decided worse, grey: not decided)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


# ----------------------------------------------------------------------------- command

def _make_command():
    @click.command("compare")
    @click.argument("data", type=click.Path())
    @click.option("--n", "n", type=int, default=DEFAULT_N, show_default=True, help="Samples in every coreset.")
    @click.option("--methods", default=",".join(DEFAULT_METHODS), show_default=True,
                  help=f"Comma-separated selection methods ({', '.join(METHODS)}).")
    @click.option("--full", is_flag=True, help="Also train on every sample (the 'all data' reference, one run a seed).")
    @click.option("--target", type=click.Choice(DOWNSTREAM), default=DEFAULT_TARGET, show_default=True,
                  help="Downstream model trained on each coreset (also the effort score's target model).")
    @click.option("--llm", type=click.Path(), default=None, help="Causal LM folder for --target bigrec.")
    @click.option("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), show_default=True,
                  help="Selection and training seeds, comma-separated: one run per method and seed.")
    @click.option("--out", required=True, type=click.Path(), help="Report folder (a rerun resumes it).")
    @click.option("--workers", type=int, default=None,
                  help="Ray workers for scoring and for the runs side by side (default: one a CPU); "
                       "0 runs everything one after another in this process.")
    @click.option("--ray-address", default=None, help="Join this Ray cluster instead of starting one.")
    @click.option("--surrogate", type=click.Path(), default=None,
                  help="A trained surrogate (default: train the --surrogate-model).")
    @click.option("--surrogate-model", default=None,
                  help=f"The surrogate to train when --surrogate is not given [{SURROGATE_MODEL}]: a model of "
                       f"'dealrec train-surrogate --model'.")
    @click.option("--surrogate-epochs", type=int, default=SurrogateTrainConfig.max_epochs, show_default=True,
                  help="At most this many surrogate epochs (early stopping on validation NDCG@10 too).")
    @click.option("--surrogate-minutes", type=float, default=SurrogateTrainConfig.max_minutes,
                  help="Wall-clock budget of surrogate training [default: none, early stopping alone].")
    @click.option("--threads", type=int, default=SurrogateTrainConfig.threads,
                  help=f"Torch threads for surrogate training [{SURROGATE_THREADS}, on any machine: the weights "
                       f"depend on it].")
    @click.option("--lambda", "lam", type=float, default=DEFAULT_LAMBDA, show_default=True,
                  help=f"Weight of the effort score in dealrec and greedy (0: the influence alone, chosen on "
                       f"validation, docs/selection.md; the paper's is {PAPER_LAMBDA}).")
    @click.option("--k", "k", type=int, default=DEFAULT_K, show_default=True, help="Strata (stratified methods).")
    @click.option("--hard-prune", type=float, default=None,
                  help=f"Share of top scores dropped (stratified methods) [each method's: {hard_prune_help()}].")
    @click.option("--allocation", type=click.Choice(ALLOCATION_CHOICES), default=None,
                  help=f"How a budget is split over the strata (stratified methods) [each method's: "
                       f"{allocation_help()}]; see 'dealrec select --help'.")
    @click.option("--score-args", default="",
                  help="Options of 'dealrec score' for the scoring, as one string, e.g. \"--hvp lissa --seed 1\".")
    @click.option("--finetune-args", default="",
                  help="Options of 'dealrec finetune TARGET' for every run, as one string, e.g. "
                       "\"--max-epochs 40 --valid-users 3000\".")
    @click.option("--quiet", is_flag=True, help="No progress bars and no line per finished run.")
    def compare_command(data, n, methods, full, target, llm, seeds, out, workers, ray_address, surrogate,
                        surrogate_model, surrogate_epochs, surrogate_minutes, threads, lam, k, hard_prune, allocation,
                        score_args, finetune_args, quiet):
        """Select N samples with every method and seed, train TARGET on each, report them side by side."""
        report = run_compare(data, out, n=n, methods=methods, seeds=seeds, target=target, full=full, llm=llm,
                             workers=workers, ray_address=ray_address, surrogate=surrogate,
                             surrogate_model=surrogate_model, surrogate_epochs=surrogate_epochs,
                             surrogate_minutes=surrogate_minutes, threads=threads, lam=lam, k=k, hard_prune=hard_prune, score_args=score_args,
                             finetune_args=finetune_args, progress=not quiet, allocation=allocation,
                             log=None if quiet else (lambda line: click.echo(line, err=True)))
        reused = sum(1 for r in report["runs"].values() if r["reused"])
        click.echo(f"compared {len(report['runs'])} runs ({reused} reused) in {_duration(report['seconds'])} "
                   f"-> {Path(out) / 'report.md'}")
    return compare_command


compare_command = with_config(_make_command())
