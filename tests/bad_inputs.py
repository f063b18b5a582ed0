"""Bad input of every kind we could think of, tried on every command; prints the results table.

    python tests/bad_inputs.py [--work DIR]        # the table in docs/reliability.md

Each case builds its inputs in its own folder (next to a shared tiny release, prepared folder,
surrogate and run), runs one ``dealrec`` command in this process, and checks:

- **outcome**: refused (exit 2) or accepted (exit 0), as the case expects;
- **traceback**: none (any exception other than a clean exit counts as one);
- **message**: a refusal says ``error:`` (or click's ``Error:`` for a malformed option) on one line;
- **inputs unchanged**: every file under the case folder and the shared fixtures has the same bytes
  afterwards, and none is gone;
- **nothing partial**: a refusal leaves no new file or folder anywhere under them.

``tests/test_bad_inputs.py`` runs every case in the suite and fails on any row that is not clean.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@dataclass
class Fixtures:
    root: Path
    raw: Path          # a release-format folder
    prepared: Path     # dealrec prepare of raw
    surrogate: Path    # a trained SASRec on prepared
    small_surrogate: Path  # a SASRec trained on a smaller catalogue than prepared's
    run: Path          # a finished influence-only prune of prepared (scores, coreset, exports)


@dataclass
class Case:
    command: str
    name: str
    build: Callable[[Path, Fixtures], list[str]]   # makes the case's files under its folder; returns argv
    expect: str = "refused"                         # or "accepted"
    limit_file_size: int | None = None              # bytes: writes past it fail (a full disk, simulated)
    result: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- fixtures

def build_fixtures(root: Path) -> Fixtures:
    from click.testing import CliRunner

    from dealrec.cli import main
    from test_prune import write_release

    root.mkdir(parents=True, exist_ok=True)
    raw = write_release(root / "raw")
    run = CliRunner()

    def ok(args):
        r = run.invoke(main, args)
        if r.exit_code != 0:
            raise RuntimeError(f"fixture command failed: {args}: {r.output}")

    ok(["prepare", str(raw), "--out", str(root / "prepared")])
    ok(["train-surrogate", str(root / "prepared"), "--out", str(root / "surrogate"), "--max-epochs", "1",
        "--hidden", "16", "--ffn-hidden", "16", "--quiet"])
    small = root / "small-raw"
    shutil.copytree(raw, small)
    for name in ("sequential_train.txt", "sequential_valid.txt", "sequential_test.txt"):
        lines = [" ".join([ln.split()[0]] + [str((int(i) - 1) % 30 + 1) for i in ln.split()[1:]])
                 for ln in (small / name).read_text().splitlines()]   # items 1..30 only
        (small / name).write_text("\n".join(lines) + "\n")
    items = [ln for ln in (small / "items.jsonl").read_text().splitlines() if json.loads(ln)["item"] <= 30]
    (small / "items.jsonl").write_text("\n".join(items) + "\n")
    ok(["prepare", str(small), "--out", str(root / "small-prepared")])
    ok(["train-surrogate", str(root / "small-prepared"), "--out", str(root / "small-surrogate"), "--max-epochs", "1",
        "--hidden", "16", "--ffn-hidden", "16", "--quiet"])
    ok(["prune", str(root / "prepared"), "--n", "12", "--surrogate", str(root / "surrogate"), "--target", "none",
        "--workers", "0", "--hvp", "cg", "--hessian-samples", "32", "--hvp-batch", "16", "--batch-size", "16",
        "--effort-batch-size", "16", "--shard-size", "32", "--k", "4", "--out", str(root / "run"), "--quiet"])
    return Fixtures(root, raw, root / "prepared", root / "surrogate", root / "small-surrogate", root / "run")


# ----------------------------------------------------------------------------- the cases

def _release(d: Path, f: Fixtures, edit: Callable[[Path], None] | None = None) -> Path:
    src = d / "release"
    shutil.copytree(f.raw, src)
    if edit:
        edit(src)
    return src


def _train_line(src: Path, index: int, line: str) -> None:
    path = src / "sequential_train.txt"
    lines = path.read_text().splitlines()
    lines[index] = line
    path.write_text("\n".join(lines) + "\n")


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _log_csv(d: Path, rows: list[str], header: str = "user,item,timestamp") -> Path:
    return _write(d / "log.csv", "\n".join([header, *rows]) + "\n")


def _copy_run(d: Path, f: Fixtures) -> Path:
    run = d / "run"
    shutil.copytree(f.run, run)
    return run


def _selection_run(d: Path, f: Fixtures, edit) -> Path:
    import pyarrow.parquet as pq

    run = _copy_run(d, f)
    table = pq.read_table(run / "scores.parquet")
    pq.write_table(edit(table), run / "scores.parquet")
    return run


def _nan_influence(table):
    import numpy as np
    import pyarrow as pa

    values = table.column("influence").to_numpy().copy()
    values[3] = np.nan
    return table.set_column(table.column_names.index("influence"), "influence", pa.array(values))


def _coreset_with_unknown_item(d: Path, f: Fixtures) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = _copy_run(d, f)
    table = pq.read_table(run / "coreset.parquet")
    targets = table.column("target").to_pylist()
    targets[2] = 10 ** 6
    pq.write_table(table.set_column(table.column_names.index("target"), "target", pa.array(targets, pa.int64())),
                   run / "coreset.parquet")
    return run


SEED_HUGE = str(2 ** 70)
SURR_FAST = ["--hvp", "cg", "--hessian-samples", "32", "--hvp-batch", "16", "--batch-size", "16", "--workers", "0",
             "--quiet"]


def cases() -> list[Case]:
    C = Case
    return [
        # ---- prepare: the data files
        C("prepare", "source does not exist", lambda d, f: ["prepare", str(d / "nope"), "--out", str(d / "o")]),
        C("prepare", "empty folder", lambda d, f: ["prepare", str((d / "empty").mkdir() or d / "empty"),
                                                   "--out", str(d / "o")]),
        C("prepare", "release: an item id that is not a number",
          lambda d, f: ["prepare", str(_release(d, f, lambda s: _train_line(s, 4, "5 3 x 7"))), "--out", str(d / "o")]),
        C("prepare", "release: item id 2147483647",
          lambda d, f: ["prepare", str(_release(d, f, lambda s: _train_line(s, 4, "5 3 2147483647"))),
                        "--out", str(d / "o")]),
        C("prepare", "release: a negative item id",
          lambda d, f: ["prepare", str(_release(d, f, lambda s: _train_line(s, 4, "5 3 -2"))), "--out", str(d / "o")]),
        C("prepare", "release: a user whose training line is the user id alone",
          lambda d, f: ["prepare", str(_release(d, f, lambda s: _train_line(s, 4, "5"))), "--out", str(d / "o")],
          expect="accepted"),
        C("prepare", "release: items.jsonl with a broken JSON line",
          lambda d, f: ["prepare", str(_release(d, f, lambda s: _write(
              s / "items.jsonl", (s / "items.jsonl").read_text().replace('"title"', '"title', 1)))),
                        "--out", str(d / "o")]),
        C("prepare", "release: items.jsonl missing",
          lambda d, f: ["prepare", str(_release(d, f, lambda s: (s / "items.jsonl").unlink())), "--out", str(d / "o")]),
        C("prepare", "release: control bytes in a title",
          lambda d, f: ["prepare", str(_release(d, f, lambda s: _write(
              s / "items.jsonl", (s / "items.jsonl").read_text().replace("Quest", "Qu\\u001b[31mest", 1)))),
                        "--out", str(d / "o")], expect="accepted"),
        C("prepare", "log: no item column", lambda d, f: ["prepare", str(_log_csv(d, ["u1,5"], "user,timestamp")),
                                                         "--out", str(d / "o")]),
        C("prepare", "log: a timestamp that is not a number",
          lambda d, f: ["prepare", str(_log_csv(d, ["u1,i1,10", "u1,i2,yesterday"])), "--out", str(d / "o")]),
        C("prepare", "log: empty file", lambda d, f: ["prepare", str(_write(d / "log.csv", "")), "--out", str(d / "o")]),
        C("prepare", "log: binary garbage",
          lambda d, f: ["prepare", str(_write(d / "log.csv", bytes(range(256)) * 8)), "--out", str(d / "o")]),
        C("prepare", "log: JSON boolean user id",
          lambda d, f: ["prepare", str(_write(d / "log.jsonl", "\n".join(json.dumps(r) for r in [
              {"user": "u1", "item": "a", "timestamp": 1}, {"user": "u1", "item": "b", "timestamp": 2},
              {"user": True, "item": "a", "timestamp": 3}, {"user": True, "item": "b", "timestamp": 4}]) + "\n")),
                        "--out", str(d / "o")]),
        C("prepare", "log: ids 007 and 7 (two users, leading zeros kept)",
          lambda d, f: ["prepare", str(_log_csv(d, [f"{u},{i},{t}" for t, (u, i) in enumerate(
              [("007", "01"), ("007", "02"), ("007", "03"), ("7", "01"), ("7", "03"), ("7", "02"), ("8", "02"),
               ("8", "01"), ("8", "03")])])), "--out", str(d / "o"), "--split", "0.6,0.2,0.2"], expect="accepted"),
        C("prepare", "--out is the source folder (--overwrite)",
          lambda d, f: ["prepare", str(_release(d, f)), "--out", str(d / "release"), "--overwrite"]),
        C("prepare", "--out is the source file (--overwrite)",
          lambda d, f: ["prepare", str(_log_csv(d, ["u1,i1,1", "u1,i2,2"])), "--out", str(d / "log.csv"),
                        "--overwrite"]),
        C("prepare", "--out inside the source folder",
          lambda d, f: ["prepare", str(_release(d, f)), "--out", str(d / "release" / "prepared")]),
        C("prepare", "--out contains the source (--overwrite)",
          lambda d, f: ["prepare", str(_release(d, f)), "--out", str(d), "--overwrite"]),
        C("prepare", "--out below a file",
          lambda d, f: ["prepare", str(_release(d, f)), "--out", str(_write(d / "afile", "x") / "sub")]),
        C("prepare", "--out exists, no --overwrite",
          lambda d, f: ["prepare", str(_release(d, f)), "--out", str(_write(d / "o" / "keep.txt", "x").parent)]),
        C("prepare", "disk full while writing", lambda d, f: ["prepare", str(_release(d, f)), "--out", str(d / "o")],
          limit_file_size=2000),
        C("prepare", "--split that does not add up",
          lambda d, f: ["prepare", str(_log_csv(d, ["u1,i1,1", "u1,i2,2"])), "--out", str(d / "o"),
                        "--split", "0.8,0.8,0.1"]),
        # ---- train-surrogate
        C("train-surrogate", "data is not a prepared folder",
          lambda d, f: ["train-surrogate", str(_release(d, f)), "--out", str(d / "s")]),
        C("train-surrogate", "--max-epochs 0",
          lambda d, f: ["train-surrogate", str(f.prepared), "--out", str(d / "s"), "--max-epochs", "0"]),
        C("train-surrogate", "--seed 2**70",
          lambda d, f: ["train-surrogate", str(f.prepared), "--out", str(d / "s"), "--seed", SEED_HUGE]),
        C("train-surrogate", "--out is the data folder",
          lambda d, f: ["train-surrogate", str(f.prepared), "--out", str(f.prepared), "--overwrite"]),
        C("train-surrogate", "--lr -1",
          lambda d, f: ["train-surrogate", str(f.prepared), "--out", str(d / "s"), "--lr", "-1"]),
        # ---- score
        C("score", "surrogate folder without a model",
          lambda d, f: ["score", str(f.prepared), "--surrogate", str((d / "s").mkdir() or d / "s"),
                        "--out", str(d / "o"), "--target", "none", *SURR_FAST]),
        C("score", "surrogate trained on a smaller catalogue than the data",
          lambda d, f: ["score", str(f.prepared), "--surrogate", str(f.small_surrogate), "--out", str(d / "o"),
                        "--target", "none", *SURR_FAST]),
        C("score", "--workers -1",
          lambda d, f: ["score", str(f.prepared), "--surrogate", str(f.surrogate), "--out", str(d / "o"),
                        "--target", "none", "--hvp", "cg", "--workers", "-1"]),
        C("score", "--out is the data folder",
          lambda d, f: ["score", str(f.prepared), "--surrogate", str(f.surrogate), "--out", str(f.prepared),
                        "--target", "none", *SURR_FAST]),
        C("score", "--out is the surrogate folder",
          lambda d, f: ["score", str(f.prepared), "--surrogate", str(f.surrogate), "--out", str(f.surrogate),
                        "--target", "none", *SURR_FAST]),
        C("score", "--llm folder that does not exist",
          lambda d, f: ["score", str(f.prepared), "--surrogate", str(f.surrogate), "--out", str(d / "o"),
                        "--target", "bigrec", "--llm", str(d / "nollm"), *SURR_FAST]),
        # ---- select
        C("select", "run folder does not exist", lambda d, f: ["select", str(d / "NOSUCHRUN")]),
        C("select", "--n 0", lambda d, f: ["select", str(_copy_run(d, f)), "--method", "influence", "--n", "0"]),
        C("select", "--n larger than the samples",
          lambda d, f: ["select", str(_copy_run(d, f)), "--method", "influence", "--n", "100000"]),
        C("select", "--k 0", lambda d, f: ["select", str(_copy_run(d, f)), "--method", "influence", "--k", "0"]),
        C("select", "--lambda nan", lambda d, f: ["select", str(_copy_run(d, f)), "--lambda", "nan"]),
        C("select", "--hard-prune 1.5",
          lambda d, f: ["select", str(_copy_run(d, f)), "--method", "influence", "--hard-prune", "1.5"]),
        C("select", "unknown --method", lambda d, f: ["select", str(_copy_run(d, f)), "--method", "nosuch"]),
        C("select", "--seed 2**70",
          lambda d, f: ["select", str(_copy_run(d, f)), "--method", "random", "--seed", SEED_HUGE]),
        C("select", "dealrec on scores without effort", lambda d, f: ["select", str(_copy_run(d, f))]),
        C("select", "scores.parquet cut short", lambda d, f: ["select", str(_cut(_copy_run(d, f) / "scores.parquet")),
                                                               "--method", "influence"]),
        C("select", "a NaN influence",
          lambda d, f: ["select", str(_selection_run(d, f, _nan_influence)), "--method", "influence"]),
        C("select", "--out is the data folder",
          lambda d, f: ["select", "--method", "random", "--data", str(f.prepared), "--out", str(f.prepared)]),
        # ---- export
        C("export", "a file where the tiger/ folder goes",
          lambda d, f: ["export", str(_replace_with_file(_copy_run(d, f) / "tiger"))]),
        C("export", "run without a coreset",
          lambda d, f: ["export", str(_unlink(_copy_run(d, f) / "coreset.parquet"))]),
        C("export", "a coreset item id beyond the catalogue",
          lambda d, f: ["export", str(_coreset_with_unknown_item(d, f))]),
        C("export", "disk full while writing", lambda d, f: ["export", str(_copy_run(d, f))],
          limit_file_size=600),
        # ---- finetune tiger
        C("finetune tiger", "--train file does not exist",
          lambda d, f: ["finetune", "tiger", "--data", str(f.prepared), "--train", str(d / "nope.parquet"),
                        "--out", str(d / "t")]),
        C("finetune tiger", "--train without a target column",
          lambda d, f: ["finetune", "tiger", "--data", str(f.prepared), "--train", str(_table(d / "t.parquet", {
              "sample_id": [0], "history": [[1, 2]]})), "--out", str(d / "t")]),
        C("finetune tiger", "--seed 2**70",
          lambda d, f: ["finetune", "tiger", "--data", str(f.prepared), "--train", str(f.run / "coreset.parquet"),
                        "--out", str(d / "t"), "--seed", SEED_HUGE]),
        C("finetune tiger", "--out is the data folder",
          lambda d, f: ["finetune", "tiger", "--data", str(f.prepared), "--train", str(f.run / "coreset.parquet"),
                        "--out", str(f.prepared), "--overwrite"]),
        C("finetune tiger", "--train item ids beyond the catalogue",
          lambda d, f: ["finetune", "tiger", "--data", str(f.prepared), "--train", str(_table(d / "t.parquet", {
              "sample_id": [0], "history": [[1, 2]], "target": [10 ** 6]})), "--out", str(d / "t")]),
        # ---- prune and compare
        C("prune", "data does not exist", lambda d, f: ["prune", str(d / "nope"), "--out", str(d / "o")]),
        C("prune", "--n 0", lambda d, f: ["prune", str(f.prepared), "--n", "0", "--out", str(d / "o")]),
        # the selection's parameters are refused before the surrogate's training, not at the selection after it
        C("prune", "--k 0", lambda d, f: ["prune", str(f.prepared), "--k", "0", "--out", str(d / "o")]),
        C("prune", "--hard-prune 1.5",
          lambda d, f: ["prune", str(f.prepared), "--hard-prune", "1.5", "--out", str(d / "o")]),
        C("prune", "--seed 2**70", lambda d, f: ["prune", str(f.prepared), "--seed", SEED_HUGE, "--out", str(d / "o")]),
        C("prune", "--out is the raw data folder",
          lambda d, f: ["prune", str(_release(d, f)), "--n", "12", "--out", str(d / "release")]),
        C("compare", "unknown method",
          lambda d, f: ["compare", str(f.prepared), "--methods", "dealrec,nosuch", "--out", str(d / "o")]),
        C("compare", "seeds that are not numbers",
          lambda d, f: ["compare", str(f.prepared), "--seeds", "0,one", "--out", str(d / "o")]),
        # ---- the command line itself
        C("cli", "unknown command", lambda d, f: ["nosuch"]),
        C("cli", "unknown option", lambda d, f: ["select", str(_copy_run(d, f)), "--nosuch"]),
    ]


def _cut(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path.parent


def _unlink(path: Path) -> Path:
    path.unlink()
    return path.parent


def _replace_with_file(path: Path) -> Path:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    path.write_text("not a folder")
    return path.parent


def _table(path: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


# ----------------------------------------------------------------------------- running them

def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file and a marker for every folder under ``roots``."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            out[dirpath + "/"] = "dir"
            for name in filenames:
                p = os.path.join(dirpath, name)
                if os.path.islink(p):
                    out[p] = "link"
                    continue
                with open(p, "rb") as fh:
                    out[p] = hashlib.sha256(fh.read()).hexdigest()
    return out


def run_case(case: Case, folder: Path, fixtures: Fixtures) -> dict:
    from click.testing import CliRunner

    from dealrec.cli import main

    folder.mkdir(parents=True)
    # every case gets its own copy of the fixtures: a case that (wrongly) writes over one must not
    # change what the next case sees, and its damage shows up in this case's row
    shutil.copytree(fixtures.root, folder / "fx", symlinks=True)
    shared = fixtures.root   # still read through paths recorded in the run's manifest
    fixtures = Fixtures(*(folder / "fx" / Path(p).relative_to(fixtures.root) for p in (
        fixtures.root, fixtures.raw, fixtures.prepared, fixtures.surrogate, fixtures.small_surrogate, fixtures.run)))
    fixtures.root = folder / "fx"
    argv = case.build(folder, fixtures)
    before = snapshot(folder, shared)
    limits = None
    if case.limit_file_size is not None:
        limits = resource.getrlimit(resource.RLIMIT_FSIZE)
        old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (case.limit_file_size, limits[1]))
    try:
        result = CliRunner().invoke(main, argv)
    finally:
        if limits is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
            signal.signal(signal.SIGXFSZ, old_handler)
    after = snapshot(folder, shared)
    traceback = result.exception is not None and not isinstance(result.exception, SystemExit)
    err = [ln for ln in (result.stderr or "").splitlines() if ln.strip()]
    error_lines = [ln for ln in err if ln.startswith(("error:", "Error:"))]
    outcome = {0: "accepted", 2: "refused"}.get(result.exit_code, f"exit {result.exit_code}")
    changed = [p for p, h in before.items() if after.get(p) != h]
    new = [p for p in after if p not in before]
    row = {
        "outcome": outcome,
        "traceback": traceback,
        "message": (error_lines[0] if error_lines else (err[-1] if err else ""))[:160],
        "one_line": outcome != "refused" or (len(error_lines) == 1 and not traceback),
        "inputs_changed": changed,
        "partial": new if outcome != "accepted" else [],
    }
    row["clean"] = (outcome == case.expect and not traceback and row["one_line"] and not changed
                    and not row["partial"])
    if traceback:
        import traceback as tb

        row["exception"] = "".join(tb.format_exception(result.exception))[-1500:]
    return row


def run_all(work: Path, only: Callable[[Case], bool] | None = None) -> list[Case]:
    fixtures = build_fixtures(work / "fixtures")
    todo = [c for c in cases() if only is None or only(c)]
    for i, case in enumerate(todo):
        case.result = run_case(case, work / f"case-{i:03d}", fixtures)
    return todo


def table(done: list[Case], work: Path | None = None) -> str:
    """Markdown table of the results; paths under ``work`` are shown as ``WORK/...``."""
    rows = ["| command | input | expected | outcome | traceback | inputs changed | partial output | message |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in done:
        r = c.result
        msg = r["message"].replace("|", "\\|")
        if work is not None:
            msg = msg.replace(str(work.resolve()), "WORK").replace(str(work), "WORK")
        rows.append(f"| {c.command} | {c.name} | {c.expect} | {r['outcome']}{'' if r['clean'] else ' **(!)**'} | "
                    f"{'**yes**' if r['traceback'] else 'no'} | {len(r['inputs_changed']) or 'none'} | "
                    f"{len(r['partial']) or 'none'} | {msg} |")
    n_bad = sum(not c.result["clean"] for c in done)
    rows.append("")
    rows.append(f"{len(done)} cases: {sum(c.result['traceback'] for c in done)} tracebacks, "
                f"{sum(bool(c.result['partial']) for c in done)} partial outputs, "
                f"{sum(bool(c.result['inputs_changed']) for c in done)} with inputs changed, "
                f"{n_bad} not as expected.")
    return "\n".join(rows)


def main_script() -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Try every bad input; print the results table.")
    ap.add_argument("--work", default=None, help="Folder for the cases (default: a temporary one, removed).")
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="dealrec-bad-inputs-"))
    try:
        done = run_all(work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(table(done, work))
    for c in done:
        if c.result.get("exception"):
            print(f"\n--- {c.command}: {c.name}\n{c.result['exception']}", file=sys.stderr)
    return 0 if all(c.result["clean"] for c in done) else 1


if __name__ == "__main__":
    sys.exit(main_script())
