"""Is a prune the same on every run? The check of issue 12 at the scale where it failed.

Runs the same ``dealrec prune DATA --n N --surrogate SURR`` three times into fresh folders:
with ``--workers 1``, with ``--workers 2``, and with ``--workers 2`` killed (SIGKILL of the whole
process group) once the effort phase has written its first shard, then run again to resume.
The fresh TIGER effort target (RQ-VAE semantic IDs included) is built in every run. Prints one row a
run: the content hashes of what was built and chosen, and whether each equals the first run's.

    python benchmarks/reproduce_prune.py --data ../shared/data/games --surrogate RUN/surrogate \\
        --n 256 --work /tmp/repro

A trained surrogate is passed so that the three runs spend their time on what differed before
(semantic IDs, effort); the surrogate's own determinism is tested in tests/test_surrogate_train.py.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dealrec.manifest import RunManifest
from dealrec.effort import tensors_digest


def column_digest(path: Path, column: str) -> str:
    table = pq.read_table(path)
    order = np.argsort(table.column("sample_id").to_numpy(), kind="stable")
    values = np.ascontiguousarray(table.column(column).to_numpy()[order])
    return hashlib.sha256(values.tobytes()).hexdigest()[:16]


def run(cmd: list[str], log: Path, kill_when=None) -> tuple[int, float, bool]:
    """Run ``cmd`` in its own process group; with ``kill_when``, SIGKILL the group once it returns True."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        killed = False
        while proc.poll() is None:
            time.sleep(2)
            if kill_when is not None and kill_when():
                kill_session(proc.pid)
                proc.wait()
                killed = True
                break
    return proc.returncode, time.perf_counter() - t0, killed


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid``: the run and the Ray processes it started (a crash or an
    OOM kill takes them all), and nothing else (never `ray stop`, which stops every Ray on the machine)."""
    ps = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.split()
    for pid, s in zip(ps[::2], ps[1::2]):
        if int(s) == sid:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def summary(out: Path) -> dict:
    manifest = RunManifest.read(out).data
    target = manifest.get("target", {})
    return {
        "coreset": column_digest(out / "coreset.parquet", "sample_id"),
        "influence": column_digest(out / "scores.parquet", "influence"),
        "effort": column_digest(out / "scores.parquet", "effort"),
        "target_built": str(target.get("built_sha256", "?"))[:16],
        "semantic_ids": tensors_digest(out / "work" / "tiger-init" / "semantic_ids.safetensors")[:16],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "games"))
    ap.add_argument("--surrogate", required=True)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    exe = [str(Path(sys.executable).parent / "dealrec")]

    def prune(out: Path, workers: int) -> list[str]:
        return [*exe, "prune", args.data, "--n", str(args.n), "--surrogate", args.surrogate,
                "--workers", str(workers), "--out", str(out), "--quiet"]

    rows = []
    for name, workers, kill in (("workers 1", 1, False), ("workers 2", 2, False), ("workers 2, killed", 2, True)):
        out = work / name.replace(" ", "").replace(",", "-")
        log = work / f"{out.name}.log"
        if kill:
            effort = out / "work" / "effort"
            rc, seconds, killed = run(prune(out, workers), log,
                                      kill_when=lambda: effort.is_dir() and any(effort.glob("shard-*.safetensors")))
            if not killed:
                print(f"{name}: finished before the kill point (rc {rc}); see {log}", file=sys.stderr)
            rc, more, _ = run(prune(out, workers), log)
            seconds += more
            name += " + resumed" if killed else ""
        else:
            rc, seconds, _ = run(prune(out, workers), log)
        if rc != 0:
            print(f"{name}: exit {rc}; see {log}", file=sys.stderr)
            return 1
        rows.append((name, seconds, summary(out)))

    first = rows[0][2]
    keys = list(first)
    print(f"| run | seconds | {' | '.join(keys)} | same as the first |")
    print("|" + " --- |" * (len(keys) + 3))
    for name, seconds, s in rows:
        same = all(s[k] == first[k] for k in keys)
        print(f"| {name} | {seconds:.0f} | " + " | ".join(str(s[k]) for k in keys) + f" | {'yes' if same else 'NO'} |")
    return 0 if all(all(s[k] == first[k] for k in keys) for _, _, s in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
