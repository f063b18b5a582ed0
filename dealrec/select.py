"""``dealrec select``: read a run's scores, select a coreset, write scores, coreset, manifest and a plot.

The algorithm is elsewhere and pure: the methods in ``dealrec.methods`` (one entry each), the
score and strata math in ``dealrec.strata``, the selection on tables in ``dealrec.coreset``; the
surrogate-scored baseline columns in ``dealrec.baselines``. This module finds the inputs, runs
them and writes the outputs. See docs/selection.md for the methods and the papers they come from.
"""
from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
import pyarrow as pa

from dealrec_core.errors import DealrecError, InputError
from dealrec_core.options import SEED
from dealrec.manifest import MANIFEST_FILE, RunManifest, update_manifest
from dealrec.coreset import SelectionConfig, select_coreset
from dealrec.methods import METHODS, REGISTRY, allocation_help, hard_prune_help, method_help, method_list
from dealrec.runconfig import with_config
from dealrec.strata import (ALLOCATION_CHOICES, AUTO_FALLBACK, DEFAULT_K, DEFAULT_LAMBDA, DEFAULT_N,
                            PAPER_HARD_PRUNE, PAPER_LAMBDA)
# the algorithm's names that tests and scripts import from here
from dealrec.strata import (PRUNED, allocate_budget, combine_scores, minmax, n_hard_pruned,  # noqa: F401
                            random_select, sample_keys, stratified_select, stratify, top_n_select)

# ----------------------------------------------------------------------------- command

SCORES_FILE = "scores.parquet"
CORESET_FILE = "coreset.parquet"
PLOT_FILE = "selection.png"


def run_select(run=None, method: str = SelectionConfig.method, n: int = DEFAULT_N, lam: float = DEFAULT_LAMBDA,
               k: int = DEFAULT_K, hard_prune: float | None = None, seed: int = SelectionConfig.seed, data=None,
               surrogate=None, out=None, plot: bool = True, progress: bool = True,
               allocation: str | None = None) -> dict:
    """``dealrec select``: read RUN's scores (and samples), select, write scores/coreset/manifest/plot.

    Returns the manifest's ``selection`` section.
    """
    from dealrec_core.data import PreparedData, SampleRows, read_table, sha256_file, write_parquet_atomic

    t0 = time.time()
    # a bad method or parameter: one line before any work; None: the method's default share
    hard_prune = SelectionConfig(method, n, lam, k, hard_prune, seed, allocation).hard_prune
    spec = REGISTRY[method]
    if run is None and out is None:
        raise DealrecError("give a RUN folder (or --out for a fresh run)")
    if run is not None and not Path(run).is_dir():
        raise DealrecError(f"{run}: no such run folder" if not Path(run).exists() else f"{run}: not a folder (RUN)")
    out = Path(out if out is not None else run)
    run = Path(run) if run is not None else out
    manifest = RunManifest.read(run)
    if out != run:
        RunManifest.read(out)   # the manifest that gets the selection: an unreadable one is refused before any work
    scores_path = run / SCORES_FILE
    data = data or manifest.data_folder()
    if data is None:
        raise DealrecError(f"no data folder: {run / MANIFEST_FILE} names none; pass --data DIR")
    # OUT (RUN by default: select rewrites RUN's scores by design) is written in place; the data and the
    # surrogate may sit beside what it writes (RUN/data of 'dealrec prune'), never be OUT or contain it.
    from dealrec_core.paths import check_output

    if spec.baseline is not None:   # the surrogate that scores a baseline column: given, or the run's
        surrogate = surrogate or manifest.surrogate_folder()
        if surrogate is None:
            raise DealrecError(f"--method {method} scores samples with a trained surrogate: "
                               f"{run / MANIFEST_FILE} names none; pass --surrogate DIR")
    check_output(out, {"--data": data, "--surrogate": surrogate},
                 writes=(SCORES_FILE, CORESET_FILE, MANIFEST_FILE, PLOT_FILE), option="--out" if out != run else "RUN")
    prepared = PreparedData(data)
    samples = SampleRows(prepared.samples_dir)   # read by rows: its sample_id column and the coreset's rows

    needs = spec.columns
    if scores_path.exists():
        scores = read_table(scores_path, required=("sample_id",), what="scores table")
    elif needs and spec.baseline is None:
        raise InputError(scores_path, f"no such file; --method {method} needs the scores of "
                                      f"'dealrec score' (columns sample_id, {', '.join(needs)})")
    else:
        scores = pa.table({"sample_id": samples.column("sample_id")})
    # stale selection columns of an earlier run are replaced, never mixed in
    scores = scores.select([c for c in scores.column_names if c not in ("score", "stratum", "selected")])

    inputs = {"data": str(prepared.root), "samples_sha256": [sha256_file(p) for p in prepared.shard_paths()]}
    if scores_path.exists():
        inputs["scores_sha256"] = sha256_file(scores_path)
    # baseline columns already in the scores, with the surrogate and samples they came from
    known = {c: v for c, v in manifest.baseline_columns().items() if c in scores.column_names}
    baseline = spec.baseline
    if baseline is not None:
        from dealrec.baselines import add_baseline_column

        scores, used, known[baseline.column] = add_baseline_column(
            scores, baseline, surrogate, prepared, inputs["samples_sha256"], known.get(baseline.column),
            source=str(scores_path), progress=progress)
        inputs.update(used)
    if known:
        inputs["baseline_columns"] = known

    judge = _check_judge(samples, prepared, seed) if method != "random" else None
    result = select_coreset(scores, samples, method, n, lam, k, hard_prune, seed, source=str(scores_path),
                            allocation=allocation, judge=judge)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(result.scores, out / SCORES_FILE)
    write_parquet_atomic(result.coreset, out / CORESET_FILE)
    section = {**result.summary, "inputs": inputs,
               "outputs": {"scores": SCORES_FILE, "coreset": CORESET_FILE},
               "seconds": None}
    if judge is not None:
        # a check that costs no training: the coreset's targets' popularity against random draws'
        section["check"] = (result.check if result.check is not None
                             else judge(result.coreset.column("sample_id").to_numpy()))
    if plot:
        from dealrec.plots import plot_selection

        plot_selection(result, out / PLOT_FILE)
        section["outputs"]["plot"] = PLOT_FILE
    section["seconds"] = round(time.time() - t0, 3)
    # only our section changes; a fresh --out starts from RUN's manifest
    update_manifest(out, {"selection": section}, start_from=run)
    return section


def _check_judge(samples, prepared, seed: int):
    """selected sample_ids -> their check (``dealrec.composition.popularity_check``) on the validation split;
    None when the data has no validation split."""
    if not (prepared.root / "eval" / "valid.parquet").exists():
        return None
    from dealrec.composition import popularity_check   # pyarrow's readers: not on the --help path

    ids = samples.column("sample_id").to_numpy().astype(np.int64)
    targets = samples.column("target").to_numpy()
    order = np.argsort(ids)
    valid = prepared.eval_split("valid")
    drawn: dict[int, list[float]] = {}   # coreset size -> the random draws' figures ("auto" checks two of one size)

    def judge(selected) -> dict | None:
        rows = order[np.searchsorted(ids[order], np.asarray(selected, dtype=np.int64))]
        check = popularity_check(targets[rows], targets, prepared.n_items, valid, seed=seed,
                                 random_draws=drawn.get(len(rows)))
        if check is not None:
            drawn[len(rows)] = check["random_draws"]
        return check

    return judge


def _select_command():
    @click.command("select", epilog="\b\nMethods:\n" + method_list())
    @click.argument("run", required=False, type=click.Path(file_okay=False))
    @click.option("--method", type=click.Choice(METHODS), default=SelectionConfig.method, show_default=True,
                  help=method_help())
    @click.option("--n", "n", type=int, default=DEFAULT_N, show_default=True, help="Coreset size.")
    @click.option("--lambda", "lam", type=float, default=DEFAULT_LAMBDA, show_default=True,
                  help=f"Weight of the effort score (0: the influence alone, chosen on validation, "
                       f"docs/selection.md; the paper's is {PAPER_LAMBDA}).")
    @click.option("--k", "k", type=int, default=DEFAULT_K, show_default=True, help="Number of strata.")
    @click.option("--hard-prune", type=float, default=None,
                  help=f"Share of the highest scores dropped before stratifying [the method's: {hard_prune_help()}; "
                       f"the paper's is {PAPER_HARD_PRUNE}].")
    @click.option("--allocation", type=click.Choice(ALLOCATION_CHOICES), default=None,
                  help=f"How the budget is split over the strata (stratified methods) [the method's: "
                       f"{allocation_help()}]: equal (the paper's), sqrt (by the square root of each stratum's "
                       f"count), proportional (in proportion to each stratum's count: with no hard prune, a random "
                       f"sample stratified by score), auto (equal unless the check puts that coreset below random "
                       f"draws', then {AUTO_FALLBACK}; docs/selection.md).")
    @click.option("--seed", type=SEED, default=SelectionConfig.seed, show_default=True)
    @click.option("--data", type=click.Path(file_okay=False), default=None,
                  help="Prepared data folder (default: the one RUN/manifest.json names).")
    @click.option("--surrogate", type=click.Path(file_okay=False), default=None,
                  help="Trained surrogate for el2n/grand/ccs (default: the one the manifest names).")
    @click.option("--out", type=click.Path(file_okay=False), default=None,
                  help="Write here instead of RUN (e.g. --method random --data DATA --out RUN).")
    @click.option("--no-plot", is_flag=True, help="Skip RUN/selection.png.")
    def select_cmd(run, method, n, lam, k, hard_prune, allocation, seed, data, surrogate, out, no_plot):
        """Select a coreset from RUN/scores.parquet; write scores, coreset, manifest and a plot."""
        section = run_select(run, method, n, lam, k, hard_prune, seed, data, surrogate, out, plot=not no_plot,
                             allocation=allocation)
        where = out or run
        click.echo(f"selected {section['n_selected']} of {section['n_samples']} samples "
                   f"(method {method}, seed {seed}) -> {where}/{CORESET_FILE}")
        from dealrec.composition import allocation_note, check_note   # likewise

        for note in (allocation_note(section), check_note(section.get("check"), section["inputs"]["data"])):
            if note:
                click.echo(note, err=True)

    return select_cmd


select_command = with_config(_select_command())
