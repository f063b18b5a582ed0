"""How ``dealrec prepare`` scales with the size of an interaction log: time and peak memory.

    python benchmarks/bench_prepare.py --sizes 10000000,100000000 [--format parquet] [--work DIR] [--keep]

For each size, a synthetic log (``benchmarks/synth_log.py``, with its item catalogue, seeded) is
written under ``--work`` (kept between runs with ``--keep``: a later run reuses it), then the real
``dealrec prepare LOG --items CATALOGUE --out DIR`` runs under ``/usr/bin/time -v`` in its own
process; the table gives its wall time, rows per second and peak resident memory, and each size's
ratio to the smallest. The work folder needs room for the log, its staging copy, DuckDB's spill
files and the prepared folder (about 60 bytes an interaction for the default Parquet log).

Prepare's memory should stay flat as the log grows (docs/data.md, "How prepare scales").
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import synth_log  # noqa: E402  (a script beside this one, not a package)

TIME = "/usr/bin/time"


def measure(cmd: list[str]) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v``: wall seconds and peak resident memory (bytes)."""
    started = time.perf_counter()
    out = subprocess.run([TIME, "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr)
    if rss is None:
        raise SystemExit(f"{TIME} -v gave no peak memory:\n{out.stderr[-2000:]}")
    return {"wall": wall, "rss": int(rss.group(1)) * 1024, "stdout": out.stdout}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,5000000", help="Interactions of each log, comma-separated.")
    ap.add_argument("--format", choices=("parquet", "csv", "jsonl"), default="parquet")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="Folder for the logs and outputs (default: a temporary one).")
    ap.add_argument("--keep", action="store_true", help="Keep the generated logs (a later run reuses them).")
    ap.add_argument("--no-items", action="store_true", help="Prepare without the item catalogue.")
    args = ap.parse_args(argv)
    if not Path(TIME).exists():
        raise SystemExit(f"{TIME} not found (GNU time; e.g. apt-get install time)")
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for n in sizes:
            log = work / f"log-{n}-seed{args.seed}.{args.format}"
            items = synth_log.default_items_path(log, args.format)
            generated = None
            if not (log.exists() and items.exists()):
                started = time.perf_counter()
                synth_log.generate(n, log, args.format, seed=args.seed)
                generated = time.perf_counter() - started
            out = work / f"prepared-{n}"
            cmd = [sys.executable, "-c", "from dealrec.cli import main; main()", "prepare", str(log),
                   "--out", str(out), "--overwrite"] + ([] if args.no_items else ["--items", str(items)])
            result = measure(cmd)
            shutil.rmtree(out, ignore_errors=True)
            if not args.keep:
                log.unlink()
                items.unlink()
            rows.append({"n": n, **result, "generated": generated})
            print(f"{n:,} interactions: {result['wall']:.1f} s, {result['rss'] / 2**30:.2f} GB", file=sys.stderr)
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    base = rows[0]
    print(f"`dealrec prepare` of synthetic {args.format} logs{'' if args.no_items else ' with --items'}; "
          f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}\n")
    print("| interactions | wall s | rows/s | peak RSS GB | time / smallest | RSS / smallest |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['n']:,} | {r['wall']:.1f} | {r['n'] / r['wall']:,.0f} | {r['rss'] / 2**30:.2f} | "
              f"{r['wall'] / base['wall']:.2f}x | {r['rss'] / base['rss']:.2f}x |")


if __name__ == "__main__":
    main()
