"""How much the influence ranking depends on which surrogate training run scored it.

    python benchmarks/influence_stability.py --data PREPARED s0=SURROGATE0@SCORE_RUN0 s1=SURROGATE1@SCORE_RUN1 ...

Each ``NAME=SURROGATE@RUN`` is a trained surrogate folder and a ``dealrec score`` run folder that scored with it
(``RUN/work/capture`` and ``RUN/work/solve`` are read; nothing is recomputed but one validation gradient). Prints,
per run: the norms of ``v`` (the training gradient the influence is taken against) and ``U = H^-1 v`` and their
cosine (near 1: the solve is little more than the damping's scale, so the influence is about ``<grad L(s), v>``);
then the Spearman correlation of every pair of runs' influence, (a) as scored (``v`` = the mean training
gradient at the surrogate's best epoch) and (b) with ``v`` replaced by the gradient of the validation loss
(each validation user's next item after their training sequence, the last position only). (b) is an
experiment, not something dealrec offers: it reads the validation split, which the selection's defaults are
chosen on, so a method built on it would need another split to be judged on. With ``--write DIR`` the (b)
influence is written as ``DIR/valid-v-NAME.parquet`` (``sample_id``, ``influence``), and the mean of every run's
standardised influence as scored (an ensemble of the runs) as ``DIR/ensemble.parquet``, for
``benchmarks/coreset_proxy.py``.
"""
from __future__ import annotations

import argparse
import glob
import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file
from scipy.stats import spearmanr

from dealrec.influence import influence_from_rows
from dealrec_core.data import PreparedData
from surrogates.registry import load_surrogate


def validation_gradient(surrogate: str, data: PreparedData, batch: int = 512) -> np.ndarray:
    """Mean gradient of the influence block's weight over the validation users' next-item losses."""
    model = load_surrogate(surrogate).eval()
    block = model.influence_block()
    for p in model.parameters():
        p.requires_grad_(False)
    block.weight.requires_grad_(True)
    valid = data.eval_split("valid")
    total = torch.zeros_like(block.weight, dtype=torch.float64)
    for lo in range(0, len(valid), batch):
        part = valid.subset(np.arange(lo, min(lo + batch, len(valid))))
        targets = torch.as_tensor([int(t[0]) for t in part.targets])
        # the next-item loss of the validation item after the user's whole training sequence (the model's own
        # full-catalogue scores, padding excluded, with the gradient kept)
        logits = model.full_sort_scores(model.collate_histories(list(part.history)))
        loss = F.cross_entropy(logits, targets, reduction="sum")
        (grad,) = torch.autograd.grad(loss, block.weight)
        total += grad.double()
    return (total / len(valid)).numpy()


def cos(x: np.ndarray, y: np.ndarray) -> float:
    return float((x * y).sum() / np.linalg.norm(x) / np.linalg.norm(y))


def influence_with(run: Path, *us: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Every sample's ``<grad L(s), u>`` for each ``u``, from the run's captured rows (each shard read once),
    in sample_id order."""
    ids, influence = [], [[] for _ in us]
    for shard in sorted(glob.glob(str(run / "work" / "capture" / "shard-*.safetensors"))):
        c = load_file(shard)
        ids.append(c["sample_id"])
        for out, u in zip(influence, us):
            out.append(influence_from_rows(c["row_sample"], c["a"], c["g"], u, len(c["sample_id"])))
    ids = np.concatenate(ids)
    order = np.argsort(ids, kind="stable")
    return ids[order], [np.concatenate(x)[order] for x in influence]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--write", help="folder for the validation-v influence parquet files")
    ap.add_argument("runs", nargs="+", metavar="NAME=SURROGATE@RUN")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = PreparedData(args.data)
    if args.write:
        Path(args.write).mkdir(parents=True, exist_ok=True)
    scored, valid_v = {}, {}
    print("| run | norm v | norm U | cos(U, v) | cos(v, validation gradient) |")
    print("| --- | --- | --- | --- | --- |")
    for spec in args.runs:
        name, _, rest = spec.partition("=")
        surrogate, _, run = rest.partition("@")
        if not (name and surrogate and run):
            ap.error(f"{spec!r} is not NAME=SURROGATE@RUN")
        run = Path(run)
        solve = load_file(str(run / "work" / "solve" / "shard-00000.safetensors"))
        u, v = solve["u"], solve["v"]
        g_valid = validation_gradient(surrogate, data)
        print(f"| {name} | {np.linalg.norm(v):.4f} | {np.linalg.norm(u):.4f} | {cos(u, v):.4f} | {cos(v, g_valid):+.3f} |")
        ids, (as_scored, with_valid) = influence_with(run, u, g_valid)
        scored[name], valid_v[name] = (ids, as_scored), (ids, with_valid)
        if args.write:
            pq.write_table(pa.table({"sample_id": ids.astype(np.int64), "influence": with_valid}),
                           Path(args.write) / f"valid-v-{name}.parquet")
    if args.write:
        ids = next(iter(scored.values()))[0]
        mean = sum((x - x.mean()) / x.std() for _, x in scored.values()) / len(scored)
        pq.write_table(pa.table({"sample_id": ids.astype(np.int64), "influence": mean}), Path(args.write) / "ensemble.parquet")
    print("\n| pair | Spearman, influence as scored (v: training gradient) | Spearman, v: validation gradient |")
    print("| --- | --- | --- |")
    for a, b in itertools.combinations(scored, 2):
        if not np.array_equal(scored[a][0], scored[b][0]):
            raise SystemExit(f"{a} and {b} scored different samples")
        print(f"| {a} / {b} | {spearmanr(scored[a][1], scored[b][1]).statistic:+.2f} | "
              f"{spearmanr(valid_v[a][1], valid_v[b][1]).statistic:+.2f} |")


if __name__ == "__main__":
    main()
