"""Shards, resumable shard outputs and the executors that run them (Ray, or in-process).

The unit of work is a *shard*: a row range of the samples table (in the order the table is
read). Shards are cut on batch boundaries that are fixed by the global row index, so every
batch is the same whatever the shard size or the number of workers, and so is every number
computed from it.

Every shard's output is written under a temporary name and renamed into place, followed by a
small JSON manifest holding a key (a hash of the phase, the row range, the input hashes and the
parameters). A rerun skips a shard whose output and manifest exist with the same key; a job
killed at any moment therefore resumes where it stopped and never reads half a file.

Executors run a task function over shards and yield results as shards finish, with a tqdm bar:

- ``LocalExecutor`` (``--workers 0``): in this process, in shard order;
- ``RayExecutor``: a pool of Ray actors sized from ``ray.cluster_resources()``. With no address
  Ray is started in this process's machine (``ray.init`` local, no dashboard); ``--ray-address``
  joins a running cluster. Actors never take every CPU of a small machine (Ray's own tasks need
  room), and ask for a GPU only when the cluster has one and the phase can use it.

Both executors call the same task functions with the same arguments, so they write the same
bytes (a test checks it).
"""
from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

from dealrec_core import storage
from dealrec_core.data import commit_file, stable_hash, temporary_file, write_json_atomic
from dealrec_core.errors import DealrecError


@dataclass(frozen=True)
class Shard:
    index: int
    start: int   # first row (inclusive)
    stop: int    # last row (exclusive)

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"

    def __len__(self) -> int:
        return self.stop - self.start


def plan_shards(n_rows: int, shard_size: int, batch_size: int) -> list[Shard]:
    """Row ranges of ``shard_size`` rows; ``shard_size`` must be a multiple of ``batch_size`` so that
    batches (rows ``[k * batch_size, (k + 1) * batch_size)``) never straddle two shards."""
    if batch_size < 1 or shard_size < 1:
        raise DealrecError("--shard-size and --batch-size must be positive")
    if shard_size % batch_size:
        raise DealrecError(f"--shard-size ({shard_size}) must be a multiple of --batch-size ({batch_size}) "
                           f"so that batches are the same whatever the sharding")
    return [Shard(i, start, min(start + shard_size, n_rows))
            for i, start in enumerate(range(0, n_rows, shard_size))]


def batch_ranges(shard: Shard, batch_size: int) -> list[tuple[int, int]]:
    """The batches of a shard, as row ranges relative to the shard's first row."""
    return [(s - shard.start, min(s + batch_size, shard.stop) - shard.start)
            for s in range(shard.start, shard.stop, batch_size)]


class ShardStore:
    """One phase's shard outputs under ``root``: ``<shard>.<suffix>`` plus ``<shard>.json``."""

    def __init__(self, root: str | Path, phase: str, suffix: str):
        self.root = Path(root)
        self.phase = phase
        self.suffix = suffix
        self.root.mkdir(parents=True, exist_ok=True)

    def output(self, shard: Shard) -> Path:
        return self.root / f"{shard.name}.{self.suffix}"

    def manifest(self, shard: Shard) -> Path:
        return self.root / f"{shard.name}.json"

    def key(self, shard: Shard, inputs: dict) -> str:
        return stable_hash({"phase": self.phase, "start": shard.start, "stop": shard.stop, "inputs": inputs})

    def is_done(self, shard: Shard, key: str) -> bool:
        m = self.manifest(shard)
        if not (m.exists() and self.output(shard).exists()):
            return False
        try:
            return json.loads(m.read_text()).get("key") == key
        except ValueError:
            return False  # a manifest cut short by a crash: redo the shard

    def temporary(self, shard: Shard) -> Path:
        """This process's temporary name for the shard's output; a killed run's temporary of it is removed."""
        return temporary_file(self.output(shard))

    def commit(self, shard: Shard, tmp: Path, key: str, extra: dict | None = None) -> None:
        """Rename the finished output into place, then write its manifest (the manifest marks it done)."""
        commit_file(tmp, self.output(shard))
        write_json_atomic(self.manifest(shard), {"key": key, "phase": self.phase, "start": shard.start,
                                                 "stop": shard.stop, **(extra or {})})


# ----------------------------------------------------------------------------- executors

def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="shard", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, leave=True)


class LocalExecutor:
    """Runs tasks one after another in this process (``--workers 0``)."""

    def __init__(self, threads: int = 1):
        self.workers = 0
        self.threads = threads

    def describe(self) -> dict:
        return {"executor": "local", "workers": 0, "threads": self.threads}

    def run(self, fn: Callable[[dict], dict], tasks: list[dict], desc: str, progress: bool = True,
            use_gpu: bool = False) -> Iterator[dict]:
        import torch

        bar = _progress(len(tasks), desc, progress)
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)  # the same thread count as a Ray actor: the same bytes
        try:
            for task in tasks:
                result = fn(task)
                bar.update(1)
                yield result
        finally:
            torch.set_num_threads(before)
            bar.close()

    def shutdown(self) -> None:
        pass


class _Actor:
    """A Ray actor: runs task functions by name, keeping loaded models between shards."""

    def __init__(self, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))

    def call(self, fn_path: str, task: dict) -> dict:
        module, name = fn_path.rsplit(":", 1)
        return getattr(importlib.import_module(module), name)(task)

    def niceness(self) -> int:
        return os.nice(0)


ACTOR_RETRIES = 2   # a task whose Ray actor died is tried again on a fresh actor this many times
RAY_NICENESS_ENV = "RAY_worker_niceness"   # Ray's setting: workers' niceness above their starter's


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


class RayExecutor:
    """A pool of Ray actors sized from the cluster's resources."""

    def __init__(self, workers: int | None = None, address: str | None = None, threads: int = 1,
                 retries: int = ACTOR_RETRIES, worker_nice: int = 0):
        import ray

        self.retries = retries
        self.retried = 0   # tasks run again because their actor died (a node lost, a worker killed)
        self.worker_nice = None   # a joined cluster keeps its own setting

        self.started_here = False
        if not ray.is_initialized():
            os.environ.setdefault("RAY_DEDUP_LOGS", "0")
            kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                          configure_logging=True)
            # No address: always a fresh local instance ("local"), never whatever cluster ray.init() would
            # find by itself (the last `ray start` recorded in /tmp/ray, possibly stopping or stopped).
            # RAY_ADDRESS in the environment still counts as naming a cluster.
            address = address or os.environ.get("RAY_ADDRESS") or None
            # Ray starts its workers at niceness +15 by default, so on a machine with other work a user's
            # own command starved (a one-minute phase took 39). Ray adds this much to the niceness of the
            # process that starts it, i.e. to this command's.
            before = os.environ.get(RAY_NICENESS_ENV)
            if not address:
                os.environ[RAY_NICENESS_ENV] = str(int(worker_nice))
            try:
                ray.init(address=address or "local", **kwargs)
            except Exception as e:  # connection refused, bad address, ...
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise DealrecError(f"could not start or join {where}: {str(e).splitlines()[0]}") from None
            finally:
                if before is None:
                    os.environ.pop(RAY_NICENESS_ENV, None)
                else:
                    os.environ[RAY_NICENESS_ENV] = before
            if not address:
                self.worker_nice = int(worker_nice)
            self.started_here = True
        self.ray = ray
        resources = ray.cluster_resources()
        self.cpus = float(resources.get("CPU", 1.0))
        self.gpus = float(resources.get("GPU", 0.0))
        # Leave Ray's own tasks some room: on 2 cores the pool takes at most 1.8 CPUs.
        budget = max(0.5, self.cpus - max(0.2, 0.1 * self.cpus))
        if workers is None:
            # one actor a CPU: the driver only waits while the actors work (its own phases, the solve and
            # training, run while they are idle), so keeping a CPU back for it left one of two cores idle
            # through capture and effort on a 2-core machine
            workers = max(1, int(self.cpus))
        if workers < 1:
            raise DealrecError("a Ray pool needs --workers >= 1 (--workers 0 runs in this process)")
        self.workers = workers
        self.cpus_per_actor = min(1.0, budget / workers) if self.cpus <= workers + 1 else \
            max(1.0, float(int(budget // workers)))
        # A fixed thread count, not one derived from the pool size: matrix products may add in a
        # different order with more threads, and results must not depend on --workers.
        self.threads = max(1, int(threads))
        self._pools: dict[bool, list] = {}

    def describe(self) -> dict:
        return {"executor": "ray", "workers": self.workers, "cluster_cpus": self.cpus, "cluster_gpus": self.gpus,
                "cpus_per_actor": self.cpus_per_actor, "threads_per_actor": self.threads,
                "worker_nice": self.worker_nice, "retried": self.retried}

    def _actor_class(self, gpu: bool):
        return self.ray.remote(_Actor).options(
            num_cpus=self.cpus_per_actor, num_gpus=(min(1.0, self.gpus / self.workers) if gpu else 0))

    def _pool(self, use_gpu: bool) -> list:
        gpu = bool(use_gpu and self.gpus > 0)
        if gpu not in self._pools:
            self._pools[gpu] = [self._actor_class(gpu).remote(self.threads) for _ in range(self.workers)]
        return self._pools[gpu]

    def run(self, fn: Callable[[dict], dict], tasks: list[dict], desc: str, progress: bool = True,
            use_gpu: bool = False) -> Iterator[dict]:
        """Results in completion order. A task whose actor dies (killed, out of memory, crashed) runs again
        on a fresh actor, up to ``retries`` times; tasks are idempotent (outputs are committed
        atomically under their key), so a retry cannot leave a half result behind."""
        fn_path = f"{fn.__module__}:{fn.__name__}"
        actors = self._pool(use_gpu)
        idle = list(range(len(actors)))
        pending: dict = {}
        queue = [(task, 0) for task in tasks]
        bar = _progress(len(tasks), desc, progress)
        try:
            while queue or pending:
                while queue and idle:
                    slot = idle.pop()
                    task, attempt = queue.pop(0)
                    pending[actors[slot].call.remote(fn_path, task)] = (slot, task, attempt)
                done, _ = self.ray.wait(list(pending), num_returns=1)
                for ref in done:
                    slot, task, attempt = pending.pop(ref)
                    try:
                        result = self.ray.get(ref)
                    except self.ray.exceptions.RayTaskError as e:
                        idle.append(slot)
                        cause = e.cause if hasattr(e, "cause") else None
                        if isinstance(cause, (DealrecError, OSError)):   # one line, as in this process
                            raise cause from None
                        raise
                    except self.ray.exceptions.RayActorError as e:
                        what = _one_line(e)
                        if attempt >= self.retries:
                            times = "once" if attempt == 0 else f"{attempt + 1} times"
                            raise DealrecError(
                                f"{desc}: a Ray worker died {times} running the same task ({what}); "
                                f"finished work is kept, so the same command again resumes") from None
                        self.retried += 1
                        tqdm.write(f"{desc}: a Ray worker died ({what}); its shard runs again on a fresh worker",
                                   file=sys.stderr)
                        actors[slot] = self._replace(actors[slot], use_gpu)   # a fresh actor in its place
                        idle.append(slot)
                        queue.insert(0, (task, attempt + 1))
                        continue
                    idle.append(slot)
                    bar.update(1)
                    yield result
        finally:
            bar.close()

    def _replace(self, actor, use_gpu: bool):
        pool = self._pools[bool(use_gpu and self.gpus > 0)]
        try:
            self.ray.kill(actor)
        except Exception:  # already gone
            pass
        fresh = self._actor_class(bool(use_gpu and self.gpus > 0)).remote(self.threads)
        pool[pool.index(actor)] = fresh
        return fresh

    def shutdown(self) -> None:
        for pool in self._pools.values():
            for actor in pool:
                self.ray.kill(actor)
        self._pools = {}
        if self.started_here:
            self.ray.shutdown()


def make_executor(workers: int | None, address: str | None = None, threads: int = 1, worker_nice: int = 0):
    """``workers == 0``: in-process; otherwise Ray (local unless ``address``); ``None`` sizes the pool."""
    if workers == 0:
        if address:
            raise DealrecError("--ray-address needs --workers >= 1 (or leave --workers out)")
        return LocalExecutor(threads)
    return RayExecutor(workers, address, threads, worker_nice=worker_nice)


def run_phase(executor, fn: Callable[[dict], dict], store: ShardStore, shards: Iterable[Shard],
              make_task: Callable[[Shard], dict], inputs: dict, desc: str, progress: bool = True,
              use_gpu: bool = False) -> dict:
    """Run ``fn`` over the shards not yet done; returns ``{"ran": n, "skipped": n, "seconds": s}``.

    ``make_task(shard)`` gives the task dict; the executor's function must write
    ``store.output(shard)`` through ``store.temporary``/``store.commit`` with ``task["key"]``.
    """
    t0 = time.perf_counter()
    todo, skipped = [], 0
    for shard in shards:
        key = store.key(shard, inputs)
        if store.is_done(shard, key):
            skipped += 1
            continue
        task = make_task(shard)
        task.update({"key": key, "store_root": str(store.root), "phase": store.phase, "suffix": store.suffix,
                     "shard": [shard.index, shard.start, shard.stop]})
        todo.append(task)
    maps = storage.active_maps()
    if maps and todo:
        # a run on shared storage: what the driver wrote goes up first, the tasks carry the mapping, and
        # their outputs come back through the storage (workers on other nodes share no disk with this one)
        storage.sync_active()
        todo = [{"fn": f"{fn.__module__}:{fn.__name__}", "task": task, "maps": maps} for task in todo]
        fn = task_on_storage
    for _ in executor.run(fn, todo, desc, progress=progress, use_gpu=use_gpu):
        pass
    mirror = storage.mirror_for(store.root) if maps else None
    if mirror is not None and todo:
        mirror.pull(mirror.rel(store.root))
    return {"ran": len(todo), "skipped": skipped, "seconds": round(time.perf_counter() - t0, 3)}


def task_on_storage(wrapped: dict) -> dict:
    """A shard task of a run on shared storage, on any node: its inputs are copied from the storage into this
    node's mirror (those already there are kept), the task runs on the mirror as it would on a local run
    folder, and its output and manifest are pushed back (the manifest last: it marks the shard done)."""
    task, paths = storage.translate_task(wrapped["task"], wrapped["maps"])
    root = Path(task["store_root"])
    out = None   # the mirror that holds the phase's outputs (store_root is one of the translated paths)
    for mirror, rel in paths:
        local = mirror.local / rel if rel else mirror.local
        if local == root:
            out = mirror
        if local == root or root in local.parents or local in root.parents:
            continue   # the phase's outputs (and the folders above them) are written, not read
        mirror.pull(rel)
    module, name = wrapped["fn"].rsplit(":", 1)
    result = getattr(importlib.import_module(module), name)(task)
    if out is not None:   # else the run folder is local (only an input is on the storage): nothing to push
        store, shard = task_store(task)
        out.push(out.rel(store.output(shard)))
        out.push(out.rel(store.manifest(shard)))
    return result


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (a worker's, recorded in its shard manifests so a
    benchmark can read how much a worker needed; ``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def task_store(task: dict) -> tuple[ShardStore, Shard]:
    """Inside a task function: the store and the shard it should write."""
    index, start, stop = task["shard"]
    return ShardStore(task["store_root"], task["phase"], task["suffix"]), Shard(index, start, stop)
