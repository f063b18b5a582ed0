"""``dealrec score``: influence and effort of every sample, sharded, resumable, on Ray.

Phases (each timed in ``RUN/manifest.json``):

1. ``capture`` (shards, in parallel): one forward/backward pass of the surrogate per batch with
   hooks on its ``influence_block()``; each shard keeps its rows ``(a_t, g_t)`` and the float64
   gradient sum of each of its batches;
2. ``solve`` (driver): ``v`` = the batch sums added in global batch order / N; ``U = H^-1 v`` by
   LiSSA, CG or the exact solve over the seeded Hessian pool;
3. ``influence`` (shards, in parallel): ``U`` is sent to the workers; each scores its own shard,
   ``sum_t g_t^T U a_t`` per sample from the shard's kept rows (no model pass);
4. ``effort`` (shards, in parallel): per-sample gradient norms of the target model.

Capture and effort run on ``--device`` (``auto``: a GPU when this machine or the Ray cluster has one,
else the CPU; the solve stays on the CPU); the LLM of a ``bigrec`` target loads in ``--dtype`` (or 8-/4-bit
with bitsandbytes on a GPU) and reads prompts in ``--template``'s wording, which the manifest records
(``target.template``) for ``dealrec export``.

Everything under ``RUN/work/`` is a resumable shard output; ``RUN/scores.parquet`` (``sample_id``,
``influence``, ``effort``) and ``RUN/manifest.json`` are written last, atomically.
"""
from __future__ import annotations

import contextlib
import importlib.metadata as md
import json
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import torch

from dealrec_core import storage
from dealrec_core.data import PreparedData, SampleRows, Samples, sha256_file, write_json_atomic, write_parquet_atomic
from dealrec.effort import EFFORT_TARGETS
from dealrec.engine import (ShardStore, batch_ranges, make_executor, peak_rss_mb, plan_shards, run_phase,
                            task_store)
from dealrec_core.data import stable_hash
from dealrec_core.devices import DEVICE_AUTO, DEVICE_HELP, DTYPE_CHOICES, float_platform, pick_device, reproducible_on
from dealrec_core.errors import DealrecError
from dealrec.hvp import HessianPool, HvpConfig, LowRankInverse, SOLVERS, lanczos_inverse, solve
from dealrec.influence import capture_ce_chunk
from surrogates.base import read_surrogate_config
from surrogates.softmax import softmax_by_blocks
from dealrec.manifest import MANIFEST_FILE, RunManifest, update_manifest
from dealrec_core.options import SEED
from dealrec_core.paths import check_output
from dealrec.runconfig import with_config
from finetune.llm import quantization
from finetune.prompts import DEFAULT_DOMAIN, DOMAIN_TEMPLATES

SCORES_FILE = "scores.parquet"
NO_TARGET = "none"                          # --target none: influence only
TARGETS = (*EFFORT_TARGETS.names(), NO_TARGET)   # the registered effort targets (tiger, bigrec), then none
V_WEIGHTINGS = ("training", "position", "sample")
INFLUENCE_VS = ("stationary", "measured")   # which v the influence is taken against (docs/selection.md)
CHECKPOINT_MEANS = ("influence", "weights")  # what --influence-checkpoints averages (docs/engine.md)
MEAN_WEIGHTS_DIR = "weights-mean"            # OUT/work/checkpoints/<this>: the averaged surrogate and its phases
RUN_WRITES = ("work", SCORES_FILE, MANIFEST_FILE)   # what run_score writes in its run folder
CAPTURE_FORMAT = 2  # 2: captures also hold the position-weighted gradient sums


@dataclass
class ScoreConfig:
    hvp: HvpConfig = field(default_factory=HvpConfig)
    target: str = "tiger"
    influence_v: str = "stationary"  # stationary: the leave-one-out influence at a stationary point, where the
                                     # other samples' mean gradient is -G_s/N (v measured is run noise); measured:
                                     # the paper's, against the mean training gradient measured at the weights
    v_weighting: str = "training"  # measured: the risk whose gradient is v: the one the surrogate was trained on
                                   # ("training"), or explicitly "position" / "sample" (docs/engine.md)
    influence_checkpoints: int = 3   # stationary: the influence over this many epochs of the surrogate, its best and
                                   # the ones it kept before it (train-surrogate --checkpoints); 1: the best alone;
                                   # the measured influence is always the best epoch's
    checkpoint_mean: str = "weights"   # weights (the default): the epochs' weights averaged, scored once; influence:
                                   # each epoch scored, the influences averaged (docs/selection.md, "The influence at
                                   # the last epochs' mean weights")
    llm: str | None = None
    adapter: str | None = None
    target_init: str | None = None
    effort_block: str | None = None
    batch_size: int = 256          # surrogate batches (fixed by the global row index)
    effort_batch_size: int = 64    # target-model batches (same rule)
    chunk_tokens: int = 1024       # a surrogate batch runs as length-sorted chunks of <= this many
                                   # padded positions (0: the batch as one block)
    shard_size: int = 4096
    workers: int | None = None     # None: Ray, pool sized from the cluster; 0: in this process
    ray_address: str | None = None
    threads: int = 1               # torch threads of every worker and of the solve: fixed, so that
                                   # results are the same bits whatever the number of workers
    worker_nice: int = 0           # Ray workers this dealrec starts run this many steps nicer than the
                                   # command itself (Ray's own default would be 15: starved under load)
    seed: int = 0
    template: str = DEFAULT_DOMAIN  # the prompt wording of a bigrec target (finetune.prompts.DOMAIN_TEMPLATES)
    device: str = DEVICE_AUTO      # capture and effort: auto (a GPU when there is one), cpu, cuda, cuda:N
    dtype: str = "auto"            # the bigrec target's weights: auto (bf16 on a GPU that has it, else fp32)
    load_in_8bit: bool = False     # the bigrec target quantized by bitsandbytes (a CUDA GPU only)
    load_in_4bit: bool = False

    def check(self) -> None:
        self.hvp.check()
        if self.target not in TARGETS:
            raise DealrecError(f"unknown --target {self.target!r} (choose from {', '.join(TARGETS)})")
        if self.influence_v not in INFLUENCE_VS:
            raise DealrecError(f"unknown --influence-v {self.influence_v!r} (choose from {', '.join(INFLUENCE_VS)})")
        if self.v_weighting not in V_WEIGHTINGS:
            raise DealrecError(f"unknown --v-weighting {self.v_weighting!r} (choose from {', '.join(V_WEIGHTINGS)})")
        if self.influence_checkpoints < 1:
            raise DealrecError(f"--influence-checkpoints must be at least 1, got {self.influence_checkpoints}")
        if self.checkpoint_mean not in CHECKPOINT_MEANS:
            raise DealrecError(f"unknown --checkpoint-mean {self.checkpoint_mean!r} "
                               f"(choose from {', '.join(CHECKPOINT_MEANS)})")
        if self.target != NO_TARGET:
            EFFORT_TARGETS.get(self.target).check_config(self)
        if self.chunk_tokens < 0:
            raise DealrecError(f"--chunk-tokens must be 0 or more, got {self.chunk_tokens}")
        # limits checked here, before any folder is made (a bad value used to surface after OUT existed)
        if self.workers is not None and self.workers < 0:
            raise DealrecError(f"--workers must be 0 or more, got {self.workers}")
        for option, value in (("--batch-size", self.batch_size), ("--effort-batch-size", self.effort_batch_size),
                              ("--shard-size", self.shard_size), ("--threads-per-worker", self.threads)):
            if value < 1:
                raise DealrecError(f"{option} must be at least 1, got {value}")
        if not 0 <= self.worker_nice <= 19:
            raise DealrecError(f"--worker-nice must be 0..19, got {self.worker_nice}")
        if self.template not in DOMAIN_TEMPLATES:
            raise DealrecError(f"unknown --template {self.template!r} (choose from {', '.join(DOMAIN_TEMPLATES)})")
        if self.dtype not in DTYPE_CHOICES:
            raise DealrecError(f"unknown --dtype {self.dtype!r} (choose from {', '.join(DTYPE_CHOICES)})")
        if (self.load_in_8bit or self.load_in_4bit) and self.target != "bigrec":
            raise DealrecError("--load-in-8bit/--load-in-4bit quantize the LLM of --target bigrec; this run's "
                               f"target is {self.target}")
        if self.ray_address is None:   # the work runs on this machine: its devices are the ones to check
            device = pick_device(self.device)
            if self.target == "bigrec":
                quantization(self.load_in_8bit, self.load_in_4bit, device)
        sizes = (self.batch_size, *((self.effort_batch_size,) if self.target != "none" else ()))   # what runs
        if any(self.shard_size % size for size in sizes):
            raise DealrecError(f"--shard-size ({self.shard_size}) must be a multiple of the batch sizes "
                               f"({', '.join(map(str, sizes))}) so that batches never depend on the sharding")

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- worker side

_CACHE: dict = {}


def _cached(key, build):
    """Keep one loaded model / table per worker process (Ray actors run many shards)."""
    if key not in _CACHE:
        if len(_CACHE) > 8:
            _CACHE.clear()
        _CACHE[key] = build()
    return _CACHE[key]


def _shard_samples(samples_dir: str, digest: str, start: int, stop: int) -> Samples:
    """The shard's rows only, read from the files that hold them (never the whole table: a worker's memory
    does not grow with the data). Keyed by content too: a long-lived worker must not serve a folder's old
    samples after it changed."""
    return _cached(("samples", samples_dir, digest), lambda: SampleRows(samples_dir)).rows(start, stop)


def _surrogate(path: str, digest: str, device: str = "cpu"):
    def build():
        from dealrec.influence import LinearTaps, freeze_all_but
        from surrogates.registry import load_surrogate

        model = load_surrogate(path).to(pick_device(device)).eval()
        _, block = model.named_block()
        freeze_all_but(model, block)
        return model, block, LinearTaps(block)
    return _cached(("surrogate", path, digest, device), build)


def capture_task(task: dict) -> dict:
    """Phase 1 on one shard: rows and per-batch gradient sums, written as one safetensors file."""
    from safetensors.numpy import save_file

    from dealrec.influence import capture_samples

    store, shard = task_store(task)
    ce_chunk = task.get("ce_chunk", 0)
    model, block, taps = _surrogate(task["surrogate"], task["surrogate_sha256"], task.get("device", "cpu"))
    samples = _shard_samples(task["samples_dir"], task["samples_sha256"], shard.start, shard.stop)
    index, a, g, sums, weighted, weights, losses = [], [], [], [], [], [], []
    with reproducible_on(model.device):
        for lo, hi in batch_ranges(shard, task["batch_size"]):
            rows = capture_samples(model, taps, samples.subset(np.arange(lo, hi)), task["chunk_tokens"], ce_chunk)
            index.append(rows.sample_index + lo)
            a.append(rows.a)
            g.append(rows.g)
            sums.append(rows.grad_sum)
            weighted.append(rows.weighted_sum)
            weights.append(rows.weight)
            losses.append(rows.losses)
    tmp = store.temporary(shard)
    save_file({"sample_id": samples.sample_id.astype(np.int64), "losses": np.concatenate(losses),
               "row_sample": np.concatenate(index).astype(np.int64),
               "a": np.ascontiguousarray(np.concatenate(a)), "g": np.ascontiguousarray(np.concatenate(g)),
               "batch_grad_sums": np.stack(sums), "batch_weighted_sums": np.stack(weighted),
               "batch_weights": np.asarray(weights, dtype=np.float64)}, str(tmp))
    store.commit(shard, tmp, task["key"], {"rows": int(sum(len(x) for x in index)), "peak_rss_mb": peak_rss_mb()})
    return {"shard": shard.index}


def influence_task(task: dict) -> dict:
    """Phase 3 on one shard: ``sum_t g_t^T U a_t`` per sample from the shard's captured rows and the broadcast
    ``U``, written as the shard's ``sample_id`` and ``influence``."""
    from safetensors.numpy import load_file, save_file

    from dealrec.influence import influence_from_rows, self_influence_from_rows

    store, shard = task_store(task)
    c = load_file(task["capture"])
    if "basis" in task:   # stationary: -G_s (H + tI)^-1 G_s / N
        inverse = LowRankInverse(np.asarray(task["basis"]), np.asarray(task["small"]), float(task["tikhonov"]), [])
        influence = -self_influence_from_rows(c["row_sample"], c["a"], c["g"], inverse.quadratic,
                                              len(c["sample_id"])) / float(task["n"])
    else:
        influence = influence_from_rows(c["row_sample"], c["a"], c["g"], np.asarray(task["u"]),
                                        len(c["sample_id"]))
    tmp = store.temporary(shard)
    save_file({"sample_id": c["sample_id"], "influence": influence}, str(tmp))
    store.commit(shard, tmp, task["key"], {"rows": int(len(c["row_sample"])), "peak_rss_mb": peak_rss_mb()})
    return {"shard": shard.index}


def _effort_target(task: dict):
    planned = tuple(sorted((k, str(v)) for k, v in task["target_task"].items()))
    return _cached(("effort", task["target"], planned, task.get("effort_block"), task["target_sha256"],
                    task.get("device")),
                   lambda: EFFORT_TARGETS.get(task["target"]).from_task({**task, **task["target_task"]}))


def effort_task(task: dict) -> dict:
    from safetensors.numpy import save_file

    store, shard = task_store(task)
    target = _effort_target(task)
    samples = _shard_samples(task["samples_dir"], task["samples_sha256"], shard.start, shard.stop)
    with reproducible_on(target.block.weight.device):
        norms = [target.norms(samples.subset(np.arange(lo, hi)))
                 for lo, hi in batch_ranges(shard, task["batch_size"])]
    tmp = store.temporary(shard)
    save_file({"sample_id": samples.sample_id.astype(np.int64), "effort": np.concatenate(norms)}, str(tmp))
    store.commit(shard, tmp, task["key"], {"target": target.info})
    return {"shard": shard.index}


# ----------------------------------------------------------------------------- driver side

def surrogate_digest(surrogate_dir: Path) -> str:
    return stable_hash([sha256_file(surrogate_dir / "model.safetensors"), sha256_file(surrogate_dir / "config.json")])


def _package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("dealrec", "torch", "numpy", "ray", "pyarrow", "transformers", "peft", "safetensors"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def resolve_v_weighting(v_weighting: str, surrogate_dir: Path) -> str:
    """``training`` becomes the weighting recorded in the surrogate's ``metrics.json`` (the risk it
    minimised); a surrogate without that record was trained by something else, and is taken as
    position-weighted, the usual next-item objective."""
    if v_weighting != "training":
        return v_weighting
    path = Path(surrogate_dir) / "metrics.json"
    recorded = None
    if path.exists():
        try:
            recorded = (json.loads(path.read_text()).get("train_config") or {}).get("weighting")
        except (ValueError, AttributeError):
            raise DealrecError(f"{path}: not valid JSON (cannot tell how the surrogate was trained)") from None
    if recorded is None:
        return "position"
    if recorded not in ("position", "sample"):
        raise DealrecError(f"{path}: train_config.weighting is {recorded!r}, expected 'position' or 'sample'")
    return recorded


def mean_gradient(captures: list[dict], weighting: str) -> np.ndarray:
    """``v``: the gradient of the training risk over the block, from the captured per-batch float64 sums
    added in global batch order. ``sample``: ``sum_s G_s / N``; ``position``: ``sum_s w_s G_s / sum_s w_s``."""
    key, norm_key = ("batch_weighted_sums", "batch_weights") if weighting == "position" else ("batch_grad_sums", None)
    total = np.zeros_like(captures[0]["batch_grad_sums"][0])
    norm = 0.0
    for c in captures:
        for i, batch_sum in enumerate(c[key]):  # global batch order, float64
            total += batch_sum
            norm += float(c[norm_key][i]) if norm_key else 0.0
    if norm_key is None:
        norm = float(sum(len(c["sample_id"]) for c in captures))
    if not norm > 0:
        raise DealrecError("the training risk has no weight (every sample has weight 0)")
    return total / norm


def hessian_pool_rows(n_rows: int, config: HvpConfig) -> np.ndarray:
    """The seeded sample of rows whose Hessian every solver uses (sorted row indices)."""
    rng = np.random.default_rng([config.seed, 0x4E55])
    return np.sort(rng.choice(n_rows, size=min(config.hessian_samples, n_rows), replace=False))


def solve_influence_system(surrogate_dir: Path, samples: Samples, v: np.ndarray, config: HvpConfig,
                           collate_batch: int | None = None, ce_chunk: int = 0):
    """``U = (H + damping * scale * I)^-1 v`` over the Hessian pool (see ``dealrec.hvp``)."""
    return solve(hessian_pool(surrogate_dir, samples, config, collate_batch, ce_chunk), v, config)


def stationary_inverse(surrogate_dir: Path, samples: Samples, config: HvpConfig, probe: np.ndarray | None = None,
                       collate_batch: int | None = None, ce_chunk: int = 0):
    """``(H + damping * scale * I)^-1`` over the Hessian pool, its ``config.rank`` directions of largest
    curvature exact and the rest at the damping (``dealrec.hvp.lanczos_inverse``; ``probe``: a vector whose
    system's residual is recorded)."""
    return lanczos_inverse(hessian_pool(surrogate_dir, samples, config, collate_batch, ce_chunk), config, probe)


def hessian_pool(surrogate_dir: Path, samples: Samples, config: HvpConfig, collate_batch: int | None = None,
                 ce_chunk: int = 0):
    """The surrogate's Hessian pool: its block alone requiring a gradient, the seeded pool's minibatches
    (``ce_chunk``: a full-softmax loss by blocks of items, ``surrogates.softmax.softmax_by_blocks``)."""
    from dealrec.influence import freeze_all_but
    from surrogates.registry import load_surrogate

    model = load_surrogate(surrogate_dir).eval()
    block = model.influence_block()
    freeze_all_but(model, block)
    rows = hessian_pool_rows(len(samples), config)
    pool_samples = samples.subset(rows)   # only the pool's rows are read (samples may be a SampleRows)
    step = collate_batch or config.hvp_batch
    batches = [model.collate(pool_samples.subset(np.arange(i, min(i + step, len(rows)))))
               for i in range(0, len(rows), step)]
    with softmax_by_blocks(model, ce_chunk):   # the graphs of the pool's gradients are built here, once
        return HessianPool(model, block, batches)


@dataclass
class ScoreJob:
    """What every phase of ``run_score`` reads: the checked inputs, their content hashes and OUT."""
    prepared: PreparedData
    surrogate: Path
    out: Path
    samples: SampleRows            # read by rows: the driver never holds the whole table
    samples_sha: list[str]         # sha256 of each samples shard
    samples_key: str               # one digest of those
    surrogate_sha: str
    work_dir: Path | None = None   # a checkpoint's phases: OUT/work/checkpoints/epoch-NNN

    @property
    def work(self) -> Path:
        return self.work_dir or self.out / "work"

    @property
    def samples_dir(self) -> str:
        return str(self.prepared.samples_dir)


@dataclass
class InfluenceResult:
    sample_id: np.ndarray          # in the samples table's order
    influence: np.ndarray
    n_rows: int
    solve_summary: dict


def run_score(data: str | Path, surrogate: str | Path, out: str | Path, config: ScoreConfig,
              progress: bool = True, executor=None) -> dict:
    """Score every sample of the prepared ``data``; returns the manifest written to ``out``.

    ``data``, ``surrogate`` and ``out`` may be URIs (``s3://...``: ``dealrec_core.storage``): the work is done
    on this node's mirror of them, and every worker reads and writes through the storage."""
    config.check()
    with storage.open_location(data) as data, storage.open_location(surrogate) as surrogate, \
            storage.open_location(out, writes=True) as out, model_locations(config) as config:
        return _run_score(data, surrogate, out, config, progress, executor)


@contextlib.contextmanager
def model_locations(config: ScoreConfig):
    """``config`` with its model folders (``--llm``, ``--adapter``, ``--target-init``) that are URIs replaced by
    this node's mirrors of them (registered: workers on other nodes read them through the storage)."""
    with contextlib.ExitStack() as stack:
        local = {name: str(stack.enter_context(storage.open_location(getattr(config, name))))
                 for name in ("llm", "adapter", "target_init") if storage.is_uri(getattr(config, name) or "")}
        yield replace(config, **local) if local else config


def _run_score(data: Path, surrogate: Path, out: Path, config: ScoreConfig, progress: bool, executor) -> dict:
    t_start = time.perf_counter()
    job = prepare_score_inputs(data, surrogate, out, config)
    phases: dict = {}
    own_executor = executor is None
    executor = executor or make_executor(config.workers, config.ray_address, config.threads, config.worker_nice)
    try:
        device = work_device(config.device, executor)
        result = influence_over_checkpoints(job, config, executor, phases, progress, device)
        effort, target_info = effort_phase(job, config, executor, phases, result.sample_id, progress, device)
        executor_info = {**executor.describe(), "device": device}
    finally:
        if own_executor:
            executor.shutdown()
    return write_score_outputs(job, config, result, effort, target_info, executor_info, phases, t_start)


def influence_checkpoints(surrogate: Path, config: ScoreConfig) -> list[Path]:
    """The checkpoint folders whose influence is averaged with the best epoch's, oldest first: the last
    ``config.influence_checkpoints - 1`` of those the surrogate kept (fewer when it kept fewer); none for the
    measured influence."""
    if config.influence_v != "stationary" or config.influence_checkpoints <= 1:
        return []
    from surrogates.base import kept_checkpoints

    return kept_checkpoints(surrogate)[-(config.influence_checkpoints - 1):]   # the latest ones (all if fewer)


SAMPLED_LOSS_NOTE = ("was trained with --loss bce (one sampled negative a position): on Games the coresets its "
                     "influence selects trained a TIGER far below a random subset's (the default stationary "
                     "influence; docs/selection.md, \"Ablations on TIGER\"); the defaults were "
                     "chosen with the full-softmax surrogate, --loss ce")


def influence_over_checkpoints(job: ScoreJob, config: ScoreConfig, executor, phases: dict, progress: bool,
                               device: str) -> InfluenceResult:
    """The influence at the best epoch, or, with ``influence_checkpoints`` K > 1, over the best and the latest
    K - 1 epochs the surrogate kept before it (``influence_checkpoints``): ``checkpoint_mean`` "influence" scores
    each epoch and averages the influences; "weights" averages the epochs' weights and scores that once.
    ``phases["checkpoints"]`` records which epochs, how, and (influence) each one's phases."""
    if read_surrogate_config(job.surrogate)[1].get("loss") == "bce":   # SASRec's sampled loss
        click.echo(f"note: {job.surrogate} {SAMPLED_LOSS_NOTE}", err=True)
    folders = influence_checkpoints(job.surrogate, config)
    if config.influence_v != "stationary":   # the measured influence: the best epoch's weights and its own v
        return influence_phase(job, config, executor, phases, progress, device)
    if len(folders) + 1 < config.influence_checkpoints:
        what = "weights" if config.checkpoint_mean == "weights" else "influences"
        got = (f"the {what} of {len(folders) + 1} epochs are averaged" if folders else
               "the influence is taken at the best epoch alone")
        click.echo(f"note: {job.surrogate} kept {len(folders)} epoch(s) before its best ('train-surrogate "
                   f"--checkpoints {config.influence_checkpoints}' keeps them): {got}, not over "
                   f"{config.influence_checkpoints}", err=True)
    record = {"epochs": [f.name for f in folders], "mean": config.checkpoint_mean, "seconds": 0.0,
              "asked": config.influence_checkpoints, "used": len(folders) + 1}
    if config.influence_checkpoints > 1:
        phases["checkpoints"] = record
    if not folders:
        return influence_phase(job, config, executor, phases, progress, device)
    summary = {"checkpoints": record["epochs"] + ["best"], "checkpoint_mean": config.checkpoint_mean}
    if config.checkpoint_mean == "weights":
        t0 = time.perf_counter()
        work = job.work / "checkpoints" / MEAN_WEIGHTS_DIR
        averaged = write_mean_weights(folders + [job.surrogate], work / "surrogate")
        record["seconds"] = round(time.perf_counter() - t0, 3)
        record["sha256"] = sha256_file(averaged / "model.safetensors")
        sub = replace(job, surrogate=averaged, surrogate_sha=surrogate_digest(averaged), work_dir=work)
        result = influence_phase(sub, config, executor, phases, progress, device)
        return replace(result, solve_summary={**result.solve_summary, **summary})
    best = influence_phase(job, config, executor, phases, progress, device)
    t0 = time.perf_counter()
    columns = []
    for folder in folders:
        sub = replace(job, surrogate=folder, surrogate_sha=surrogate_digest(folder),
                      work_dir=job.work / "checkpoints" / folder.name)
        sub_phases: dict = {}
        part = influence_phase(sub, config, executor, sub_phases, progress, device,
                               label=f"influence ({folder.name})")
        if not np.array_equal(part.sample_id, best.sample_id):
            raise DealrecError(f"{folder}: its influence came back in another sample order than the best epoch's")
        columns.append(part.influence)
        record[folder.name] = sub_phases
    columns.append(best.influence)
    record["seconds"] = round(time.perf_counter() - t0, 3)
    mean = np.mean(np.stack(columns), axis=0)
    return InfluenceResult(best.sample_id, mean, best.n_rows, {**best.solve_summary, **summary})


def write_mean_weights(folders: list[Path], out_dir: Path) -> Path:
    """A surrogate folder in ``out_dir`` whose weights are the uniform mean of the ``folders``' weights (the last
    one's model, config and ``metrics.json``): summed in float64 in the given order, so the same folders give the
    same bytes. Tensors that are not floating point (counters, index buffers) must be equal in every folder."""
    from safetensors.torch import load_file
    from surrogates.base import save_surrogate
    from surrogates.registry import load_surrogate

    model = load_surrogate(folders[-1])
    own = model.state_dict()
    total: dict = {}
    for folder in folders:
        weights = load_file(str(folder / "model.safetensors"))
        if weights.keys() != own.keys() or any(weights[k].shape != own[k].shape for k in own):
            raise DealrecError(f"{folder / 'model.safetensors'}: not the same model as {folders[-1]} "
                               "(other tensors or shapes): its weights cannot be averaged with it")
        for name, tensor in weights.items():
            if not tensor.is_floating_point():
                if not torch.equal(tensor, own[name]):
                    raise DealrecError(f"{folder / 'model.safetensors'}: {name} differs from {folders[-1]}'s "
                                       "and is not a weight that can be averaged")
                total[name] = tensor
            else:
                total[name] = total[name] + tensor.double() if name in total else tensor.double()
    state = {k: (v / len(folders)).to(own[k].dtype) if v.is_floating_point() else v for k, v in total.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_surrogate(model, out_dir, state=state)
    metrics = folders[-1] / "metrics.json"
    if metrics.exists():
        write_json_atomic(out_dir / "metrics.json", json.loads(metrics.read_text()))
    return out_dir


def work_device(device: str, executor) -> str:
    """The device capture and effort run on, as one name for every worker: ``auto`` is ``cuda`` when this
    machine or the Ray cluster has a GPU, else ``cpu``; a named device is checked here unless a Ray cluster
    with GPUs runs the work (its actors check it on theirs)."""
    cluster_gpus = float(getattr(executor, "gpus", 0.0) or 0.0)
    if device == DEVICE_AUTO:
        return "cuda" if torch.cuda.is_available() or cluster_gpus > 0 else "cpu"
    if cluster_gpus > 0 and str(device).startswith("cuda"):
        return str(device)
    return str(pick_device(device))


def prepare_score_inputs(data: str | Path, surrogate: str | Path, out: str | Path,
                         config: ScoreConfig) -> ScoreJob:
    """Check every input before OUT is created, then create it, hash the inputs and read the samples."""
    prepared = PreparedData(data)
    surrogate = Path(surrogate)
    for f in ("model.safetensors", "config.json"):
        if not (surrogate / f).exists():
            raise DealrecError(f"{surrogate / f}: missing (is {surrogate} a trained surrogate folder?)")
    # OUT is a run folder written in place (work/, scores.parquet, manifest.json); an input may sit beside
    # those (RUN/data, RUN/surrogate of 'dealrec prune'), never be OUT, contain it or be one of them.
    check_output(out, {"DATA": data, "--surrogate": surrogate, "--llm": config.llm, "--adapter": config.adapter,
                       "--target-init": config.target_init}, writes=RUN_WRITES)
    from surrogates.base import check_surrogate_fits

    check_surrogate_fits(surrogate, prepared.n_items, prepared.root)   # before OUT is created
    for option, path in (("--llm", config.llm), ("--adapter", config.adapter), ("--target-init", config.target_init)):
        if path and not Path(path).exists():
            raise DealrecError(f"{path}: no such folder ({option})")
    RunManifest.read(out)   # a manifest the run cannot update is refused now, not after the work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    samples_dir = str(prepared.samples_dir)
    samples_sha = [sha256_file(p) for p in prepared.shard_paths()]
    samples = SampleRows(samples_dir)
    if len(samples) == 0:
        raise DealrecError(f"{samples_dir}: the samples table is empty")
    samples.check_unique_ids()   # one column read: refused here, before any work, as the whole-table read did
    return ScoreJob(prepared, surrogate, out, samples, samples_sha, stable_hash(samples_sha),
                    surrogate_digest(surrogate))


def influence_phase(job: ScoreJob, config: ScoreConfig, executor, phases: dict,
                    progress: bool = True, device: str = "cpu", label: str = "influence") -> InfluenceResult:
    """Phases ``capture`` (shards), ``solve`` (driver) and ``influence`` (shards); each is timed into ``phases``.

    The driver reads the samples by rows (the Hessian pool), the captures' per-batch sums (``v``) and the
    shards' influence columns; never the captured rows, nor the whole samples table."""
    from safetensors.numpy import load_file, save_file

    n, surrogate, work = len(job.samples), job.surrogate, job.work
    # ---- capture
    shards = plan_shards(n, config.shard_size, config.batch_size)
    cap_store = ShardStore(work / "capture", "capture", "safetensors")
    ce_chunk = capture_ce_chunk(device)   # a full-softmax loss by blocks of items on the CPU: other float sums
    cap_inputs = {"samples": job.samples_sha, "surrogate": job.surrogate_sha, "batch_size": config.batch_size,
                  "chunk_tokens": config.chunk_tokens, "threads": executor.threads, "format": CAPTURE_FORMAT,
                  "ce_chunk": ce_chunk, **_device_key(device)}
    phases["capture"] = run_phase(
        executor, capture_task, cap_store, shards,
        lambda s: {"samples_dir": job.samples_dir, "samples_sha256": job.samples_key,
                   "surrogate": str(surrogate), "surrogate_sha256": job.surrogate_sha,
                   "batch_size": config.batch_size, "chunk_tokens": config.chunk_tokens, "device": device,
                   "ce_chunk": ce_chunk},
        cap_inputs, f"{label}: capture", progress, use_gpu=device.startswith("cuda"))

    # ---- mean gradient and solve: only the per-batch sums are read (never the rows)
    t0 = time.perf_counter()
    captures = [_capture_sums(cap_store.output(s)) for s in shards]
    weighting = resolve_v_weighting(config.v_weighting, surrogate)
    v = mean_gradient(captures, weighting)
    del captures
    solve_store = ShardStore(work / "solve", "solve", "safetensors")
    stationary = config.influence_v == "stationary"
    # the pool runs here, on the CPU: its softmax by blocks, except for the exact solver, whose vectorised
    # columns need autograd's own form
    pool_chunk = 0 if (not stationary and config.hvp.solver == "exact") else capture_ce_chunk("cpu")
    key = {"capture": cap_inputs, "hvp": config.hvp.to_dict(), "n": n, "threads": config.threads,
           "v_weighting": weighting, "pool_ce_chunk": pool_chunk}
    if stationary:   # measured runs keep the layout of the key they had (no influence_v)
        key["influence_v"] = config.influence_v
    else:
        key["hvp"].pop("rank")
    solve_key = stable_hash(key)
    solve_shard = plan_shards(1, 1, 1)[0]
    if solve_store.is_done(solve_shard, solve_key):
        solved = load_file(str(solve_store.output(solve_shard)))
        solve_summary = json.loads(solve_store.manifest(solve_shard).read_text())["summary"]
        solve_summary["resumed"] = True
    else:
        before = torch.get_num_threads()
        torch.set_num_threads(config.threads)
        try:
            result = (stationary_inverse(surrogate, job.samples, config.hvp, v, ce_chunk=pool_chunk) if stationary
                      else solve_influence_system(surrogate, job.samples, v, config.hvp, ce_chunk=pool_chunk))
        finally:
            torch.set_num_threads(before)
        solved = ({"basis": result.basis, "small": result.small} if stationary else {"u": result.x})
        solved["v"] = v
        solve_summary = result.summary()
        tmp = solve_store.temporary(solve_shard)
        save_file({k: np.ascontiguousarray(x) for k, x in solved.items()}, str(tmp))
        solve_store.commit(solve_shard, tmp, solve_key, {"summary": solve_summary})
    phases["solve"] = {"seconds": round(time.perf_counter() - t0, 3),
                       "solver": "lanczos" if stationary else config.hvp.solver,
                       "influence_v": config.influence_v, "v_weighting": weighting}
    if stationary:
        solve_summary["v_norm"] = float(np.linalg.norm(v))
        # the workers get (H + tI)^-1 as its low-rank factors and the sample count of the risk
        broadcast = {"basis": np.ascontiguousarray(solved["basis"]), "small": np.ascontiguousarray(solved["small"]),
                     "tikhonov": config.hvp.tikhonov, "n": n}
    else:
        broadcast = {"u": np.ascontiguousarray(solved["u"])}

    # ---- influence: U is sent to the workers, each scores its own shard's rows; the driver reads the results
    inf_store = ShardStore(work / "influence", "influence", "safetensors")
    inf_inputs = {"capture": cap_inputs, "solve": solve_key, "threads": executor.threads}
    phases["influence"] = run_phase(
        executor, influence_task, inf_store, shards,
        lambda s: {"capture": str(cap_store.output(s)), **broadcast},
        inf_inputs, f"{label}: scores", progress)
    parts = [load_file(str(inf_store.output(s))) for s in shards]
    influence = np.concatenate([p["influence"] for p in parts])
    sample_id = np.concatenate([p["sample_id"] for p in parts])
    n_rows = int(sum(json.loads(inf_store.manifest(s).read_text())["rows"] for s in shards))
    phases["influence"]["rows"] = n_rows
    return InfluenceResult(sample_id, influence, n_rows, solve_summary)


def _capture_sums(path: Path) -> dict:
    """What ``mean_gradient`` reads of a capture shard: its per-batch sums and sample ids, not its rows."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in ("sample_id", "batch_grad_sums", "batch_weighted_sums",
                                             "batch_weights")}


def _device_key(device: str) -> dict:
    """The device as part of a shard's key: absent for the CPU, so that shards written before the option
    (all on the CPU) still match, and present otherwise (a GPU's float sums are not the CPU's bits)."""
    return {} if device == "cpu" else {"device": device}


def effort_phase(job: ScoreJob, config: ScoreConfig, executor, phases: dict, sample_id: np.ndarray,
                 progress: bool = True, device: str = "cpu") -> tuple[np.ndarray | None, dict]:
    """Phase ``effort`` (shards; TIGER's ``semantic_ids`` first): the effort per sample, in ``sample_id``'s
    order, and what the target was (None and ``{"target": "none"}`` for ``--target none``)."""
    from safetensors.numpy import load_file

    target_info: dict = {"target": config.target}
    if config.target == NO_TARGET:
        return None, target_info
    prepared, work = job.prepared, job.work
    # the target builds or hashes what its workers will load (TIGER: semantic IDs and a fresh model)
    plan = EFFORT_TARGETS.get(config.target).plan(prepared, work, config, progress)
    task_base = {"samples_dir": job.samples_dir, "samples_sha256": job.samples_key, "data": str(prepared.root),
                 "target": config.target, "target_task": plan.task,
                 "batch_size": config.effort_batch_size, "effort_block": config.effort_block, "device": device}
    eff_inputs = {"samples": job.samples_sha, "target": config.target, "batch_size": config.effort_batch_size,
                  "block": config.effort_block, "threads": executor.threads, **_device_key(device), **plan.inputs}
    phases.update(plan.phases)
    target_info.update(plan.info)
    task_base["target_sha256"] = stable_hash({k: v for k, v in eff_inputs.items() if k != "samples"})
    eff_store = ShardStore(work / "effort", "effort", "safetensors")
    eff_shards = plan_shards(len(job.samples), config.shard_size, config.effort_batch_size)
    phases["effort"] = run_phase(executor, effort_task, eff_store, eff_shards,
                                 lambda s: dict(task_base), eff_inputs, "effort", progress,
                                 use_gpu=device.startswith("cuda"))
    parts = [load_file(str(eff_store.output(s))) for s in eff_shards]
    if not np.array_equal(np.concatenate([p["sample_id"] for p in parts]), sample_id):
        raise DealrecError(f"{eff_store.root}: effort shards do not line up with the samples table")
    effort = np.concatenate([p["effort"] for p in parts])
    target_info.update(json.loads(eff_store.manifest(eff_shards[0]).read_text())["target"])
    return effort, target_info


def write_score_outputs(job: ScoreJob, config: ScoreConfig, result: InfluenceResult,
                        effort: np.ndarray | None, target_info: dict, executor_info: dict, phases: dict,
                        t_start: float) -> dict:
    """``scores.parquet`` (keyed and sorted by sample_id), then score's keys of the manifest; returns it."""
    out, surrogate, sample_id, influence = job.out, job.surrogate, result.sample_id, result.influence
    order = np.argsort(sample_id, kind="stable")
    columns = {"sample_id": pa.array(sample_id[order], pa.int64()),
               "influence": pa.array(influence[order], pa.float64())}
    if effort is not None:
        columns["effort"] = pa.array(effort[order], pa.float64())
    write_parquet_atomic(pa.table(columns), out / SCORES_FILE)

    lengths = job.samples.history_lengths()
    return update_manifest(out, {
        "command": "dealrec score",
        "inputs": {"data": str(job.prepared.root), "surrogate": str(surrogate), "samples_sha256": job.samples_sha,
                   "surrogate_sha256": {"model.safetensors": sha256_file(surrogate / "model.safetensors"),
                                        "config.json": sha256_file(surrogate / "config.json")},
                   # the kept epochs the influence was averaged over (their weights' sha256)
                   "surrogate_checkpoints_sha256": {f.name: sha256_file(f / "model.safetensors")
                                                    for f in influence_checkpoints(surrogate, config)}},
        "parameters": config.to_dict(),
        "seed": config.seed,
        "hvp": result.solve_summary,
        "target": target_info,
        "executor": executor_info,
        "counts": {"samples": len(job.samples), "rows": result.n_rows,
                   "influence_exactly_zero": int(np.sum(influence == 0)),
                   "influence_exactly_zero_short_histories": int(np.sum((influence == 0) & (lengths <= 1))),
                   "effort_exactly_zero": int(np.sum(effort == 0)) if effort is not None else None},
        "package_versions": _package_versions(),
        "float_platform": float_platform(),
        "phases": phases,
        "score_seconds": round(time.perf_counter() - t_start, 3),
        "outputs": {"scores": SCORES_FILE},
    }, merge=("phases",)).data


# ----------------------------------------------------------------------------- command

def _score_options(f):
    options = [
        click.option("--hvp", "hvp", type=click.Choice(SOLVERS), default=HvpConfig.solver, show_default=True,
                     help=f"How H^-1 v is computed for --influence-v measured: cg, conjugate gradient (fits the time budget); lissa, the "
                          f"paper's LiSSA ({HvpConfig.lissa_steps:,} minibatch HVPs); exact, the exact solve "
                          f"(small blocks/pools)."),
        click.option("--damping", type=float, default=HvpConfig.damping, show_default=True,
                     help="LiSSA damping; CG/exact solve (H + damping*scale*I) x = v, LiSSA's fixed point; "
                          "--influence-v stationary inverts the same damped Hessian."),
        click.option("--lissa-scale", type=float, default=HvpConfig.scale, show_default=True, help="LiSSA scale."),
        click.option("--lissa-steps", type=int, default=HvpConfig.lissa_steps, show_default=True,
                     help="LiSSA recursion depth."),
        click.option("--hessian-samples", type=int, default=HvpConfig.hessian_samples, show_default=True,
                     help="Samples in the seeded Hessian pool used by every solver."),
        click.option("--hvp-batch", type=int, default=HvpConfig.hvp_batch, show_default=True,
                     help="Pool minibatch size (one LiSSA step = one HVP on one minibatch)."),
        click.option("--influence-v", "influence_v", type=click.Choice(INFLUENCE_VS),
                     default=ScoreConfig.influence_v, show_default=True,
                     help="What the influence is taken against. stationary: the surrogate taken at a stationary "
                          "point of its training risk, where the other samples' mean gradient is -G_s/N, so "
                          "influence(s) = -G_s (H + damping*scale*I)^-1 G_s / N (same on every surrogate run); "
                          "measured: the paper's, against the mean training gradient v measured at the weights "
                          "(on Games its sign and ranking changed with the surrogate's seed; docs/selection.md)."),
        click.option("--hessian-rank", type=click.IntRange(min=0), default=HvpConfig.rank, show_default=True,
                     help="--influence-v stationary: Lanczos steps on the pool Hessian; its directions of largest "
                          "curvature are kept exactly, the others count at the damping (0: damping only)."),
        click.option("--influence-checkpoints", "influence_checkpoints", type=click.IntRange(min=1),
                     default=ScoreConfig.influence_checkpoints, show_default=True,
                     help="--influence-v stationary: take the influence over this many epochs of the surrogate, "
                          "its best and the ones it kept before it ('train-surrogate --checkpoints K'; prune and "
                          "compare train theirs keeping K), as --checkpoint-mean says; 1: the best epoch alone. "
                          "On Games the mean of the last three epochs' weights made the coreset depend far less on "
                          "the surrogate's draw (docs/selection.md). --influence-v measured: the best epoch alone, "
                          "whatever this says."),
        click.option("--checkpoint-mean", "checkpoint_mean", type=click.Choice(CHECKPOINT_MEANS),
                     default=ScoreConfig.checkpoint_mean, show_default=True,
                     help="What --influence-checkpoints K > 1 averages: 'weights' averages the epochs' weights and "
                          "scores that model once (no extra scoring); 'influence' scores each epoch (K captures, "
                          "solves and influence passes) and averages the influences."),
        click.option("--v-weighting", type=click.Choice(V_WEIGHTINGS), default=ScoreConfig.v_weighting,
                     show_default=True,
                     help="Whose gradient v is: the risk the surrogate was trained on ('training', read from its "
                          "metrics.json), every predicted position alike ('position'), or every sample alike "
                          "('sample', what dealrec used before this option)."),
        click.option("--target", type=click.Choice(TARGETS), default=ScoreConfig.target, show_default=True,
                     help="Target model of the effort score ('none': influence only)."),
        click.option("--llm", type=click.Path(), default=ScoreConfig.llm, help="Causal LM folder for --target bigrec."),
        click.option("--adapter", type=click.Path(), default=ScoreConfig.adapter,
                     help="LoRA adapter to load first (bigrec)."),
        click.option("--target-init", type=click.Path(), default=ScoreConfig.target_init,
                     help="TIGER checkpoint to start from (default: fresh for the data's semantic IDs)."),
        click.option("--effort-block", default=ScoreConfig.effort_block,
                     help="Linear module (name or unique suffix) whose gradient norm is the effort."),
        click.option("--batch-size", type=int, default=ScoreConfig.batch_size, show_default=True,
                     help="Surrogate batch size."),
        click.option("--effort-batch-size", type=int, default=ScoreConfig.effort_batch_size, show_default=True,
                     help="Target batch size."),
        click.option("--chunk-tokens", type=int, default=ScoreConfig.chunk_tokens, show_default=True,
                     help="Influence capture runs each surrogate batch as length-sorted chunks of at most "
                          "this many padded positions (0: one block); the scores do not depend on it beyond "
                          "float rounding."),
        click.option("--workers", type=int, default=ScoreConfig.workers,
                     help="Ray workers (default: one a CPU); 0 runs in this process without Ray."),
        click.option("--shard-size", type=int, default=ScoreConfig.shard_size, show_default=True,
                     help="Rows per shard."),
        click.option("--ray-address", default=ScoreConfig.ray_address,
                     help="Join this Ray cluster instead of starting one."),
        click.option("--threads-per-worker", "threads_per_worker", type=int, default=ScoreConfig.threads,
                     show_default=True,
                     help="Torch threads of each worker and of the solve (fixed: results do not depend on "
                          "--workers; the same value gives the same bits)."),
        click.option("--worker-nice", "worker_nice", type=click.IntRange(0, 19), default=ScoreConfig.worker_nice,
                     show_default=True,
                     help="Run the Ray workers this dealrec starts this many steps nicer than the command itself "
                          "(0: the same priority; raise it to let other work on the machine go first). A joined "
                          "cluster (--ray-address) keeps its own setting."),
        click.option("--seed", type=SEED, default=ScoreConfig.seed, show_default=True,
                     help="Seed of the Hessian pool, the Lanczos start and the fresh TIGER target; prune's "
                          "surrogate training and selection too. With --influence-v measured the coreset's "
                          "downstream quality on Games varied widely with the surrogate's seed; the stationary "
                          "default ranks alike across seeds (docs/selection.md)."),
        click.option("--template", type=click.Choice(sorted(DOMAIN_TEMPLATES)), default=ScoreConfig.template,
                     show_default=True,
                     help="Prompt wording of --target bigrec's effort; recorded in the manifest, and 'dealrec export' "
                          "renders its trainer files with it."),
        click.option("--device", default=ScoreConfig.device, show_default=True,
                     help=f"Where influence capture and effort run: {DEVICE_HELP}. The solve runs on the CPU."),
        click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default=ScoreConfig.dtype, show_default=True,
                     help="Weights of --target bigrec's LLM; auto: bf16 on a GPU that has it, else fp32."),
        click.option("--load-in-8bit", is_flag=True, default=ScoreConfig.load_in_8bit,
                     help="Load --target bigrec's LLM in 8 bits (bitsandbytes; a CUDA GPU only)."),
        click.option("--load-in-4bit", is_flag=True, default=ScoreConfig.load_in_4bit,
                     help="Load --target bigrec's LLM in 4 bits, nf4 (bitsandbytes; a CUDA GPU only)."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def config_from_options(hvp, damping, lissa_scale, lissa_steps, hessian_samples, hvp_batch, target, llm, adapter,
                        target_init, effort_block, batch_size, effort_batch_size, workers, shard_size,
                        ray_address, seed, threads_per_worker=ScoreConfig.threads,
                        chunk_tokens=ScoreConfig.chunk_tokens, v_weighting=ScoreConfig.v_weighting,
                        influence_v=ScoreConfig.influence_v, hessian_rank=HvpConfig.rank,
                        influence_checkpoints=ScoreConfig.influence_checkpoints,
                        checkpoint_mean=ScoreConfig.checkpoint_mean, worker_nice=ScoreConfig.worker_nice,
                        template=ScoreConfig.template,
                        device=ScoreConfig.device, dtype=ScoreConfig.dtype, load_in_8bit=ScoreConfig.load_in_8bit,
                        load_in_4bit=ScoreConfig.load_in_4bit) -> ScoreConfig:
    return ScoreConfig(
        hvp=HvpConfig(solver=hvp, damping=damping, scale=lissa_scale, lissa_steps=lissa_steps,
                      hessian_samples=hessian_samples, hvp_batch=hvp_batch, rank=hessian_rank, seed=seed),
        target=target, influence_v=influence_v, influence_checkpoints=influence_checkpoints,
        checkpoint_mean=checkpoint_mean, v_weighting=v_weighting, llm=llm, adapter=adapter, target_init=target_init,
        effort_block=effort_block,
        batch_size=batch_size, effort_batch_size=effort_batch_size, chunk_tokens=chunk_tokens, shard_size=shard_size,
        workers=workers, ray_address=ray_address, threads=threads_per_worker, worker_nice=worker_nice, seed=seed,
        template=template, device=device, dtype=dtype, load_in_8bit=load_in_8bit, load_in_4bit=load_in_4bit)


def _make_command():
    @click.command("score")
    @click.argument("data", type=click.Path())
    @click.option("--surrogate", required=True, type=click.Path(), help="Trained surrogate folder.")
    @click.option("--out", required=True, type=click.Path(), help="Run folder (a rerun resumes it).")
    @_score_options
    def score_command(data, surrogate, out, quiet, **options):
        """Influence and effort of every sample of DATA (a prepared folder) -> OUT/scores.parquet."""
        manifest = run_score(data, surrogate, out, config_from_options(**options), progress=not quiet)
        phases = ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in manifest["phases"].items() if "seconds" in v)
        click.echo(f"scored {manifest['counts']['samples']} samples -> {storage.join(out, SCORES_FILE)} ({phases})")
    return score_command


score_command = with_config(_make_command())
