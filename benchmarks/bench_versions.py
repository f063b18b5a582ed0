"""Two checkouts of dealrec side by side on one command: interleaved runs, phase times, coreset bytes.

    python benchmarks/bench_versions.py --old WORKTREE --new WORKTREE --work DIR [--reps 3] \\
        -- prune ../shared/data/games --n 1024 --surrogate SURR --quiet

Everything after ``--`` is a ``dealrec`` command line without ``--out``: each run gets its own
``--out DIR/LABEL-REP``. Runs alternate (old, new, old, new, ...), so a machine whose speed drifts
through the afternoon (this project's 2-core VM does, by 25%) weighs on both sides alike. Each run is
``python -m dealrec`` started *in* its checkout (``python -m`` puts the working folder first on
``sys.path``; started elsewhere, the installed checkout's code would run instead) with ``PYTHONPATH``
set to it too, and the script checks which ``dealrec`` package each side really imports before any
run. ``--seed-runs LABEL:DIR`` copies a finished run folder into each of that side's runs first, so a
run resumes it and times only what is left (e.g. effort after the influence phases).

The table gives each run's wall time and every phase the manifest times, then the medians and the
ratio new / old; the last column is the coreset's (or scores') sha256, which must match.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from dealrec_core.data import sha256_file


def imported_from(checkout: Path) -> str:
    """The folder of the ``dealrec`` package that ``python -m dealrec`` started in ``checkout`` imports."""
    out = subprocess.run([sys.executable, "-c", "import dealrec, os; print(os.path.dirname(dealrec.__file__))"],
                         cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)}, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def digest(run: Path) -> str:
    for name in ("coreset.parquet", "scores.parquet"):
        if (run / name).exists():
            return f"{name.split('.')[0]} {sha256_file(run / name)[:12]}"
    return "-"


def run_once(checkout: Path, command: list[str], out: Path, seed_run: Path | None) -> dict:
    if out.exists():
        shutil.rmtree(out)
    if seed_run is not None:
        shutil.copytree(seed_run, out)
        for name in ("coreset.parquet", "scores.parquet"):
            (out / name).unlink(missing_ok=True)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dealrec", *command, "--out", str(out)], cwd=checkout,
                          env={**os.environ, "PYTHONPATH": str(checkout)}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: dealrec {' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    phases = {k: v["seconds"] for k, v in manifest.get("phases", {}).items()
              if isinstance(v, dict) and "seconds" in v}
    workers = manifest.get("executor", {}).get("workers")
    return {"wall": wall, "phases": phases, "workers": workers, "digest": digest(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, type=Path, help="The checkout to compare against.")
    ap.add_argument("--new", required=True, type=Path, help="The checkout under test.")
    ap.add_argument("--work", required=True, type=Path, help="Folder for the runs (one --out each).")
    ap.add_argument("--reps", type=int, default=3, help="Runs of each side (interleaved).")
    ap.add_argument("--seed-runs", action="append", default=[], metavar="LABEL:DIR",
                    help="old:DIR or new:DIR: copy this run folder into each of that side's runs first.")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the dealrec command without --out.")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the dealrec command after --")
    if "--out" in command:
        ap.error("leave --out out: every run gets its own under --work")
    sides = {"old": args.old.resolve(), "new": args.new.resolve()}
    seeds = {}
    for spec in args.seed_runs:
        label, _, folder = spec.partition(":")
        if label not in sides or not Path(folder).is_dir():
            ap.error(f"--seed-runs {spec!r}: expected old:DIR or new:DIR with an existing DIR")
        seeds[label] = Path(folder)
    for label, checkout in sides.items():
        where = imported_from(checkout)
        if Path(where).resolve().parent != checkout:
            raise SystemExit(f"{label}: python -m dealrec in {checkout} imports {where}, not that checkout's code")
        print(f"{label}: {checkout} (imports {where})", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)

    results: dict[str, list[dict]] = {"old": [], "new": []}
    for rep in range(1, args.reps + 1):
        for label in ("old", "new"):
            r = run_once(sides[label], command, args.work / f"{label}-{rep}", seeds.get(label))
            r["at"] = time.strftime("%H:%M")
            results[label].append(r)
            print(f"{label} {rep}: {r['wall']:.1f} s {r['phases']} {r['digest']}", flush=True)

    phases = list(dict.fromkeys(k for runs in results.values() for r in runs for k in r["phases"]))
    print(f"\ndealrec {' '.join(command)}; {platform.node()} {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d')}\n")
    print("| side | run | at | workers | wall s | " + " | ".join(f"{p} s" for p in phases) + " | output |")
    print("|" + " --- |" * (6 + len(phases)))
    for label, runs in results.items():
        for i, r in enumerate(runs, 1):
            cells = [f"{r['phases'][p]:.1f}" if p in r["phases"] else "" for p in phases]
            print(f"| {label} | {i} | {r['at']} | {r['workers']} | {r['wall']:.1f} | " + " | ".join(cells)
                  + f" | {r['digest']} |")
    for label, runs in results.items():
        cells = [f"{statistics.median(r['phases'][p] for r in runs if p in r['phases']):.1f}"
                 if any(p in r["phases"] for r in runs) else "" for p in phases]
        print(f"| {label} | median | | | {statistics.median(r['wall'] for r in runs):.1f} | " + " | ".join(cells)
              + " | |")

    def ratio(key):
        old = [r["wall"] if key is None else r["phases"].get(key) for r in results["old"]]
        new = [r["wall"] if key is None else r["phases"].get(key) for r in results["new"]]
        old, new = [x for x in old if x is not None], [x for x in new if x is not None]
        if not old or not new or statistics.median(old) == 0:
            return ""
        return f"{statistics.median(new) / statistics.median(old):.2f}x"
    print("| new / old | | | | " + ratio(None) + " | " + " | ".join(ratio(p) for p in phases) + " | |")
    digests = {r["digest"] for runs in results.values() for r in runs}
    print(f"\noutputs: {'all the same' if len(digests) == 1 else 'DIFFER: ' + ', '.join(sorted(digests))}")


if __name__ == "__main__":
    main()
