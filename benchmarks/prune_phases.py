"""Print the phases of one or more prune runs side by side, from each RUN/manifest.json (``prune.phases``).

    python benchmarks/prune_phases.py RUN [RUN ...]

One row a phase (the score's sub-phases indented), one column a run, seconds; then the surrogate's epochs and
validation NDCG@10, and the sha256 of each run's surrogate, scores and coreset (the first 12 hex digits), so a
table of repeated runs shows at a glance whether they gave the same bytes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from dealrec_core.data import sha256_file

SCORE_PARTS = ("capture", "solve", "influence", "effort")


def _digest(path: Path) -> str:
    if not path.exists():
        return "missing"
    return sha256_file(path)[:12]


def _seconds(entry) -> str:
    return f"{entry['seconds']:.1f}" if isinstance(entry, dict) and "seconds" in entry else "-"


def phase_rows(run: Path) -> dict[str, str]:
    manifest = json.loads((run / "manifest.json").read_text())
    prune = manifest.get("prune")
    if not prune:
        raise SystemExit(f"{run / 'manifest.json'}: no 'prune' entry (not a prune run, or it did not finish)")
    phases = prune["phases"]
    rows: dict[str, str] = {}
    for name, entry in phases.items():
        rows[name] = _seconds(entry)
        if name == "score":
            for part in SCORE_PARTS:
                if part in entry:
                    rows[f"  score: {part}"] = _seconds(entry[part])
    rows["total"] = f"{prune['seconds']:.1f}"
    metrics = run / "surrogate" / "metrics.json"
    if metrics.exists():
        m = json.loads(metrics.read_text())
        rows["surrogate epochs (best)"] = f"{m.get('epochs')} ({m.get('best_epoch')})"
        rows["surrogate valid NDCG@10"] = f"{m['valid']['ndcg@10']:.4f}"
    for name in ("surrogate/model.safetensors", "scores.parquet", "coreset.parquet"):
        rows[f"sha256 {name}"] = _digest(run / name)
    return rows


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip())
        return 2
    runs = [Path(a) for a in argv]
    columns = [phase_rows(r) for r in runs]
    names: list[str] = []
    for col in columns:
        names.extend(n for n in col if n not in names)
    print("| phase (seconds) | " + " | ".join(r.name for r in runs) + " |")
    print("| --- |" + " --- |" * len(runs))
    for name in names:
        print(f"| {name} | " + " | ".join(col.get(name, "-") for col in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
