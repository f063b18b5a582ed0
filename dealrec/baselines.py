"""Per-sample scores of the pruning baselines, from a trained surrogate (docs/selection.md).

- EL2N (Paul et al., NeurIPS 2021): ``|| softmax(f(x)) - onehot(y) ||_2`` at every position
  the sample is trained on, averaged over the sample's positions.
- GraNd (same paper): ``|| grad_theta L(s) ||_2`` of the sample's own loss
  (``sample_losses``) over the surrogate's trainable parameters (all of them by default).

CCS (Zheng et al., ICLR 2023) needs no score of its own: it stratifies EL2N
(``dealrec.methods``, method ``ccs``).

Both use nothing but the surrogate contract (``collate``, ``collate_histories``,
``full_sort_scores``, ``sample_losses``), so they serve every surrogate. Scores come back
aligned with the rows of the given samples; each sample's value does not depend on which
other samples share its batch (the surrogates are padding-invariant and eval mode is
deterministic).

``add_baseline_column`` is what ``dealrec select`` runs for a baseline method: load the
surrogate, compute the column and add it to the scores table, or reuse the column already
there when it came from the same surrogate and samples.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from dealrec_core.data import PreparedData, Samples, load_samples, sha256_file
from dealrec_core.errors import DealrecError
from dealrec.coreset import check_same_samples
from dealrec.methods import REGISTRY, Baseline
from surrogates.base import check_surrogate_fits
from surrogates.registry import load_surrogate


def prediction_positions(samples: Samples, max_len: int | None) -> tuple[np.ndarray, list, np.ndarray]:
    """Every (sample row, prefix, next item) the sample is trained on.

    A sample's sequence ``s = history + [target]`` of length T is trained on predicting
    ``s[t]`` from ``s[:t]`` for the last ``max_len`` positions t (t = 0 is the empty
    prefix: a sample with an empty history still has its one prediction).
    """
    rows, prefixes, labels = [], [], []
    for i, seq in enumerate(samples.sequences()):
        first = 0 if max_len is None else max(0, len(seq) - max_len)
        for t in range(first, len(seq)):
            rows.append(i)
            prefixes.append(seq[:t])
            labels.append(int(seq[t]))
    return np.asarray(rows, dtype=np.int64), prefixes, np.asarray(labels, dtype=np.int64)


@torch.no_grad()
def el2n_scores(model, samples: Samples, batch_size: int = 512, progress: bool = True) -> np.ndarray:
    """EL2N of every sample (float64 [N]), mean over its positions of ``||softmax - onehot||_2``.

    Predictions come from ``full_sort_scores`` on each prefix, so the probabilities are over
    all real items (padding has score -inf and probability 0).
    """
    model.eval()
    max_len = getattr(getattr(model, "config", None), "max_len", None)
    rows, prefixes, labels = prediction_positions(samples, max_len)
    per_position = np.zeros(len(rows), dtype=np.float64)
    # longest prefixes together: less padding, and the batching never changes a value
    order = np.argsort([len(p) for p in prefixes], kind="stable")
    bar = tqdm(total=len(order), desc="EL2N", unit="pos", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        scores = model.full_sort_scores(model.collate_histories([prefixes[j] for j in idx])).float()
        prob = torch.softmax(scores, dim=-1)
        y = torch.from_numpy(labels[idx])
        if int(y.max()) >= prob.shape[1] or int(y.min()) < 1:
            raise DealrecError(f"item id {int(y.max())} is outside the surrogate's catalogue "
                               f"(1..{prob.shape[1] - 1}): was it trained on this data?")
        # ||p - e_y||^2 = ||p||^2 - 2 p_y + 1, formed without an [B, V] one-hot
        p_y = prob.gather(1, y[:, None])[:, 0].double()
        sq = (prob.double() ** 2).sum(1) - 2 * p_y + 1
        per_position[idx] = sq.clamp(min=0).sqrt().numpy()
        bar.update(len(idx))
    bar.close()
    sums = np.bincount(rows, weights=per_position, minlength=len(samples))
    counts = np.bincount(rows, minlength=len(samples))
    return sums / np.maximum(counts, 1)


def _trainable(model, param_names: Sequence[str] | None) -> tuple[list[str], list[torch.Tensor]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if param_names is not None:
        wanted = tuple(param_names)
        named = [(n, p) for n, p in named if n.startswith(wanted)]
        if not named:
            raise DealrecError(f"no trainable parameter of the surrogate starts with {', '.join(wanted)}")
    return [n for n, _ in named], [p for _, p in named]


def grand_scores(model, samples: Samples, batch_size: int = 1, param_names: Sequence[str] | None = None,
                 progress: bool = True) -> np.ndarray:
    """GraNd of every sample (float64 [N]): the L2 norm of ``grad sample_losses(s)``.

    Per-sample gradients come from one batched backward pass per batch: autograd's
    ``is_grads_batched`` vmaps the backward over the rows of an identity matrix, so row b
    is exactly the gradient of sample b's loss (the other samples get zero weight). Each
    vmapped backward costs a backward of the whole batch, so on a CPU the total grows with
    the batch size and batch 1 is the fastest (benchmarks/baseline_scores.py); larger
    batches only pay where the device runs the vmapped rows in parallel.
    ``param_names`` restricts the norm to parameters whose names start with one of them.
    """
    model.eval()
    names, params = _trainable(model, param_names)
    out = np.zeros(len(samples), dtype=np.float64)
    bar = tqdm(total=len(samples), desc="GraNd", unit="sample", disable=not progress)
    for start in range(0, len(samples), batch_size):
        idx = np.arange(start, min(start + batch_size, len(samples)))
        batch = model.collate(samples.subset(idx))
        losses = model.sample_losses(batch)
        eye = torch.eye(len(idx), dtype=losses.dtype)
        grads = torch.autograd.grad(losses, params, grad_outputs=eye, is_grads_batched=True,
                                    allow_unused=True)
        sq = torch.zeros(len(idx), dtype=torch.float64)
        for g in grads:
            if g is not None:
                sq += g.reshape(len(idx), -1).double().pow(2).sum(1)
        out[idx] = sq.sqrt().numpy()
        bar.update(len(idx))
    bar.close()
    return out


def grand_scores_loop(model, samples: Samples) -> np.ndarray:
    """GraNd by the plain per-sample autograd loop (one backward per sample over every trainable
    parameter): the yardstick that ``grand_scores`` is tested against and timed against."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(len(samples)):
        loss = model.sample_losses(model.collate(samples.subset([i])))[0]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out.append(float(sum((g.double() ** 2).sum() for g in grads if g is not None)) ** 0.5)
    return np.asarray(out)


def baseline_scores(method: str, model, samples: Samples, progress: bool = True, **kwargs) -> dict[str, np.ndarray]:
    """The score column a baseline method needs, as ``{column: values aligned with samples}``."""
    baseline = REGISTRY[method].baseline if method in REGISTRY else None
    if baseline is None:
        raise DealrecError(f"{method!r} is not a surrogate-scored baseline (choose from "
                           f"{', '.join(name for name, m in REGISTRY.items() if m.baseline)})")
    return {baseline.column: baseline.compute(model, samples, progress=progress, **kwargs)}


def add_baseline_column(scores: pa.Table, baseline: Baseline, surrogate, prepared: PreparedData,
                        samples_sha256: list, record: dict | None = None, source: str = "scores table",
                        progress: bool = True) -> tuple[pa.Table, dict, dict]:
    """``scores`` with ``baseline``'s column, computed with ``surrogate`` on ``prepared``'s samples.

    ``record`` is what an earlier selection recorded about the column already in ``scores``
    (``surrogate_sha256``, ``samples_sha256``, ``values_sha256``): when all three still match,
    the column is reused as it is. Returns ``(scores, inputs, record)``: what the selection's
    manifest records as its inputs (the surrogate, its sha256, and ``baseline_reused`` or
    ``baseline_seconds``) and the column's record.
    """
    column = baseline.column
    origin = {"surrogate_sha256": sha256_file(Path(surrogate) / "model.safetensors"),
              "samples_sha256": samples_sha256}
    inputs = {"surrogate": str(surrogate), "surrogate_sha256": origin["surrogate_sha256"]}
    if record is not None and record.get("values_sha256") == _column_digest(scores, column) and \
            {k: record.get(k) for k in origin} == origin:
        inputs["baseline_reused"] = column  # same surrogate, same samples, untouched values
        return scores, inputs, record
    check_surrogate_fits(surrogate, prepared.n_items, prepared.root)
    model = load_surrogate(surrogate)
    samples = load_samples(prepared.samples_dir)
    t_base = time.time()
    values = baseline.compute(model, samples, progress=progress)
    inputs["baseline_seconds"] = round(time.time() - t_base, 3)
    scores = _join_by_sample_id(scores, samples.sample_id, {column: values}, source)
    return scores, inputs, {**origin, "values_sha256": _column_digest(scores, column)}


def _column_digest(scores: pa.Table, column: str) -> "str | None":
    """sha256 of a score column in sample_id order (detects a column edited after it was computed)."""
    if column not in scores.column_names:
        return None
    sid = scores.column("sample_id").to_numpy().astype(np.int64)
    order = np.argsort(sid, kind="stable")
    values = scores.column(column).to_numpy().astype(np.float64)[order]
    return hashlib.sha256(sid[order].tobytes() + values.tobytes()).hexdigest()


def _join_by_sample_id(scores: pa.Table, sample_id: np.ndarray, cols: dict, source: str) -> pa.Table:
    """Add baseline columns (aligned with ``sample_id``) to ``scores`` by sample_id."""
    sid = scores.column("sample_id").to_numpy().astype(np.int64)
    check_same_samples(sid, np.asarray(sample_id, dtype=np.int64), source)
    pos = np.argsort(sample_id)
    rows = pos[np.searchsorted(np.asarray(sample_id)[pos], sid)]
    for name, values in cols.items():
        arr = pa.array(np.asarray(values, dtype=np.float64)[rows], pa.float64())
        if name in scores.column_names:
            scores = scores.set_column(scores.column_names.index(name), name, arr)
        else:
            scores = scores.append_column(name, arr)
    return scores
