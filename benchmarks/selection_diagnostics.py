"""What a coreset is made of, for selection variants, judged on the VALIDATION split only.

Reads a scored run folder (``dealrec score``/``prune`` output: its captures, surrogate, data and
``scores.parquet``), recomputes influence with ``v`` from each training-risk weighting, and for each
selection variant (k, hard prune, lambda, whether histories of at most one item get zero influence)
prints, as means over seeds:

- ``valid pop``: the mean number of validation-period interactions of the coreset's targets (how
  much of what the coreset teaches is still being bought when the model is used; a random set
  scores the data's mean). This is a cheap diagnostic: the judge of a default is the downstream
  model trained on the coreset (``dealrec compare``), not this number;
- the share of empty histories, mean history length, median target popularity over the training
  sequences, distinct targets.

    python benchmarks/selection_diagnostics.py RUN [--seeds 0,1,2] [--n 1024]
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import pyarrow.parquet as pq
import torch

from dealrec.manifest import RunManifest
from dealrec import select as S
from dealrec_core.data import PreparedData


def influence_with(run: Path, data: PreparedData, weighting: str, surrogate: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    from dealrec.hvp import HvpConfig
    from dealrec.influence import influence_from_rows
    from dealrec.score import mean_gradient, solve_influence_system

    manifest = RunManifest.read(run).data
    hvp = HvpConfig(**manifest["parameters"]["hvp"])
    captures = [load_file(str(p)) for p in sorted((run / "work" / "capture").glob("*.safetensors"))]
    samples = data.samples()
    u = solve_influence_system(surrogate, samples, mean_gradient(captures, weighting), hvp).x
    return np.concatenate([influence_from_rows(c["row_sample"], c["a"], c["g"], u, len(c["sample_id"]))
                           for c in captures])


@click.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--n", default=1024, show_default=True)
def main(run, seeds, n):
    torch.set_num_threads(1)
    run = Path(run)
    manifest = RunManifest.read(run).data
    data = PreparedData(manifest["inputs"]["data"])
    surrogate = Path(manifest["inputs"]["surrogate"])
    samples = data.samples()
    ids = np.asarray(samples.sample_id)
    hist = np.array([len(h) for h in samples.history])
    target = np.asarray(samples.target)
    valid = data.eval_split("valid")
    vpop = np.bincount(np.concatenate([np.asarray(t)[np.asarray(t) > 0] for t in valid.targets]),
                       minlength=data.n_items + 1)
    pop = np.bincount(np.concatenate(samples.sequences()), minlength=data.n_items + 1)
    table = pq.read_table(run / "scores.parquet")
    order = np.argsort(table["sample_id"].to_numpy())
    if not np.array_equal(table["sample_id"].to_numpy()[order], ids):
        raise click.ClickException(f"{run / 'scores.parquet'} does not cover the samples table")
    effort = table["effort"].to_numpy()[order] if "effort" in table.column_names else np.zeros(len(ids))
    seeds = [int(s) for s in seeds.split(",") if s]

    def describe(rows_of_seed):
        sel = [rows_of_seed(s) for s in seeds]
        cols = [np.mean([vpop[target[r]].mean() for r in sel]), np.std([vpop[target[r]].mean() for r in sel]),
                np.mean([np.mean(hist[r] == 0) for r in sel]), np.mean([hist[r].mean() for r in sel]),
                np.mean([np.median(pop[target[r]]) for r in sel]), np.mean([len(np.unique(target[r])) for r in sel])]
        return "| {:.2f} ± {:.2f} | {:.3f} | {:.2f} | {:.0f} | {:.0f} |".format(*cols)

    print(f"run {run}: {len(ids)} samples; validation interactions per target item, all samples: "
          f"{vpop[target].mean():.2f}\n")
    print("| v weighting | zero influence for <= 1 item | lambda | k | hard prune | valid pop (mean ± sd over seeds) "
          "| empty histories | mean history | median target popularity | distinct targets |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("| random | | | | | " + describe(lambda s: np.argsort(S.sample_keys(ids, s))[:n])[2:])
    for weighting in ("sample", "position"):
        infl = influence_with(run, data, weighting, surrogate)
        for zero_short in (False, True):
            x = np.where(hist <= 1, 0.0, infl) if zero_short else infl
            for lam, k, hard in ((0.3, 50, 0.1), (0.0, 50, 0.1), (0.3, 50, 0.0), (0.3, 10, 0.1), (0.3, 200, 0.1)):
                score = S.combine_scores(x, effort, lam)

                def rows(seed):
                    chosen, _ = S.stratified_select(ids, score, n, k, hard, seed)
                    return np.searchsorted(ids, chosen)
                print(f"| {weighting} | {'yes' if zero_short else 'no'} | {lam} | {k} | {hard} " + describe(rows))


if __name__ == "__main__":
    main()
