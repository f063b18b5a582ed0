"""``dealrec select``: read a run's scores, select a coreset, write scores, coreset, manifest and a plot.

The algorithm is elsewhere and pure: the methods in ``dealrec.methods`` (one entry each), the
score and strata math in ``dealrec.strata``, the selection on tables in ``dealrec.coreset``; the
surrogate-scored baseline columns in ``dealrec.baselines``. This module finds the inputs, runs
them and writes the outputs. See docs/selection.md for the methods and the papers they come from.
"""
from __future__ import annotations

import pyarrow as pa

from dealrec_core.errors import DealrecError, InputError
from dealrec.coreset import SelectionConfig, select_coreset
from dealrec.methods import METHODS, REGISTRY, method_help, method_list
from dealrec.strata import DEFAULT_HARD_PRUNE, DEFAULT_K, DEFAULT_LAMBDA, DEFAULT_N
# the algorithm's names that tests and scripts import from here
from dealrec.strata import (PRUNED, allocate_budget, combine_scores, minmax, n_hard_pruned,  # noqa: F401
                            random_select, sample_keys, stratified_select, stratify, top_n_select)

# ----------------------------------------------------------------------------- command

SCORES_FILE = "scores.parquet"
CORESET_FILE = "coreset.parquet"
MANIFEST_FILE = "manifest.json"
PLOT_FILE = "selection.png"


def read_manifest(run) -> dict:
    import json
    from pathlib import Path

    path = Path(run) / MANIFEST_FILE
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise InputError(path, f"not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise InputError(path, "not a JSON object")
    return manifest


def manifest_path(manifest: dict, key: str, run) -> "str | None":
    """The folder that ``manifest`` records under ``key`` (``data``, ``surrogate``).

    Accepts ``{key: "DIR"}``, ``{key: {"path"|"dir": "DIR", ...}}`` and the same under an
    ``inputs`` section (``dealrec score``) or ``selection.inputs`` (a run ``select`` started); a relative path is tried against the working folder, then ``run``.
    """
    from pathlib import Path

    def lookup(section):
        v = section.get(key) if isinstance(section, dict) else None
        if isinstance(v, str):
            return v
        if isinstance(v, dict):
            for k in ("path", "dir", "root", "out"):
                if isinstance(v.get(k), str):
                    return v[k]
        return None

    selection = manifest.get("selection") if isinstance(manifest.get("selection"), dict) else {}
    value = lookup(manifest) or lookup(manifest.get("inputs")) or lookup(selection.get("inputs"))
    if value is None:
        return None
    p = Path(value)
    if not p.is_absolute() and not p.exists() and (Path(run) / p).exists():
        p = Path(run) / p
    return str(p)


def run_select(run=None, method: str = "dealrec", n: int = DEFAULT_N, lam: float = DEFAULT_LAMBDA,
               k: int = DEFAULT_K, hard_prune: float = DEFAULT_HARD_PRUNE, seed: int = 0, data=None,
               surrogate=None, out=None, plot: bool = True, progress: bool = True) -> dict:
    """``dealrec select``: read RUN's scores (and samples), select, write scores/coreset/manifest/plot.

    Returns the manifest's ``selection`` section.
    """
    import time
    from pathlib import Path

    from dealrec_core.data import PreparedData, read_table, sha256_file, write_json_atomic, write_parquet_atomic

    t0 = time.time()
    SelectionConfig(method, n, lam, k, hard_prune, seed)  # a bad method or parameter: one line before any work
    spec = REGISTRY[method]
    if run is None and out is None:
        raise DealrecError("give a RUN folder (or --out for a fresh run)")
    if run is not None and not Path(run).is_dir():
        raise DealrecError(f"{run}: no such run folder" if not Path(run).exists() else f"{run}: not a folder (RUN)")
    out = Path(out if out is not None else run)
    run = Path(run) if run is not None else out
    manifest = read_manifest(run)
    scores_path = run / SCORES_FILE
    data = data or manifest_path(manifest, "data", run)
    if data is None:
        raise DealrecError(f"no data folder: {run / MANIFEST_FILE} names none; pass --data DIR")
    # OUT (RUN by default: select rewrites RUN's scores by design) is written in place; the data and the
    # surrogate may sit beside what it writes (RUN/data of 'dealrec prune'), never be OUT or contain it.
    from dealrec_core.paths import check_output

    used_surrogate = surrogate or (manifest_path(manifest, "surrogate", run) if spec.baseline else None)
    check_output(out, {"--data": data, "--surrogate": used_surrogate},
                 writes=(SCORES_FILE, CORESET_FILE, MANIFEST_FILE, PLOT_FILE), option="--out" if out != run else "RUN")
    prepared = PreparedData(data)
    samples_tbl = read_table(prepared.samples_dir, required=("sample_id", "history", "target"),
                             what="samples table")

    needs = spec.columns
    if scores_path.exists():
        scores = read_table(scores_path, required=("sample_id",), what="scores table")
    elif needs and spec.baseline is None:
        raise InputError(scores_path, f"no such file; --method {method} needs the scores of "
                                      f"'dealrec score' (columns sample_id, {', '.join(needs)})")
    else:
        scores = pa.table({"sample_id": samples_tbl.column("sample_id")})
    # stale selection columns of an earlier run are replaced, never mixed in
    scores = scores.select([c for c in scores.column_names if c not in ("score", "stratum", "selected")])

    inputs = {"data": str(prepared.root), "samples_sha256": [sha256_file(p) for p in prepared.shard_paths()]}
    if scores_path.exists():
        inputs["scores_sha256"] = sha256_file(scores_path)
    # baseline columns already in the scores, with the surrogate and samples they came from
    known = {c: v for c, v in manifest.get("selection", {}).get("inputs", {}).get("baseline_columns", {}).items()
             if c in scores.column_names}
    baseline = spec.baseline
    if baseline is not None:
        from dealrec.baselines import add_baseline_column

        surrogate = surrogate or manifest_path(manifest, "surrogate", run)
        if surrogate is None:
            raise DealrecError(f"--method {method} scores samples with a trained surrogate: "
                               f"{run / MANIFEST_FILE} names none; pass --surrogate DIR")
        scores, used, known[baseline.column] = add_baseline_column(
            scores, baseline, surrogate, prepared, inputs["samples_sha256"], known.get(baseline.column),
            source=str(scores_path), progress=progress)
        inputs.update(used)
    if known:
        inputs["baseline_columns"] = known

    result = select_coreset(scores, samples_tbl, method, n, lam, k, hard_prune, seed, source=str(scores_path))
    out.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(result.scores, out / SCORES_FILE)
    write_parquet_atomic(result.coreset, out / CORESET_FILE)
    section = {**result.summary, "inputs": inputs,
               "outputs": {"scores": SCORES_FILE, "coreset": CORESET_FILE},
               "seconds": None}
    if plot:
        from dealrec.plots import plot_selection

        plot_selection(result, out / PLOT_FILE)
        section["outputs"]["plot"] = PLOT_FILE
    section["seconds"] = round(time.time() - t0, 3)
    # re-read (only our section changes); a fresh --out starts from RUN's manifest
    manifest = read_manifest(out) if (out / MANIFEST_FILE).exists() else read_manifest(run)
    manifest["selection"] = section
    write_json_atomic(out / MANIFEST_FILE, manifest)
    return section


def _select_command():
    import click

    from dealrec_core.options import SEED

    @click.command("select", epilog="\b\nMethods:\n" + method_list())
    @click.argument("run", required=False, type=click.Path(file_okay=False))
    @click.option("--method", type=click.Choice(METHODS), default="dealrec", show_default=True,
                  help=method_help())
    @click.option("--n", "n", type=int, default=DEFAULT_N, show_default=True, help="Coreset size.")
    @click.option("--lambda", "lam", type=float, default=DEFAULT_LAMBDA, show_default=True,
                  help="Weight of the effort score.")
    @click.option("--k", "k", type=int, default=DEFAULT_K, show_default=True, help="Number of strata.")
    @click.option("--hard-prune", type=float, default=DEFAULT_HARD_PRUNE, show_default=True,
                  help="Share of the highest scores dropped before stratifying.")
    @click.option("--seed", type=SEED, default=0, show_default=True)
    @click.option("--data", type=click.Path(file_okay=False), default=None,
                  help="Prepared data folder (default: the one RUN/manifest.json names).")
    @click.option("--surrogate", type=click.Path(file_okay=False), default=None,
                  help="Trained surrogate for el2n/grand/ccs (default: the one the manifest names).")
    @click.option("--out", type=click.Path(file_okay=False), default=None,
                  help="Write here instead of RUN (e.g. --method random --data DATA --out RUN).")
    @click.option("--no-plot", is_flag=True, help="Skip RUN/selection.png.")
    def select_cmd(run, method, n, lam, k, hard_prune, seed, data, surrogate, out, no_plot):
        """Select a coreset from RUN/scores.parquet; write scores, coreset, manifest and a plot."""
        section = run_select(run, method, n, lam, k, hard_prune, seed, data, surrogate, out, plot=not no_plot)
        where = out or run
        click.echo(f"selected {section['n_selected']} of {section['n_samples']} samples "
                   f"(method {method}, seed {seed}) -> {where}/{CORESET_FILE}")

    return select_cmd


select_command = _select_command()
