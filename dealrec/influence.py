"""Influence scores over one Linear block, with hooks and no per-sample gradients.

For a Linear block ``y_t = W a_t (+ b)`` applied at positions ``t`` of a sample ``s``, the
gradient of the sample's loss with respect to ``W`` is ``G_s = sum_t g_t a_t^T`` where
``g_t = dL(s)/dy_t``. One forward pass of the whole batch and one backward pass of
``sum_s L(s)`` give every ``(a_t, g_t)`` of every sample at once, because ``L(s)`` depends only on
sample ``s`` (the surrogate contract). From those rows:

- the mean gradient of the training risk, ``v = sum_s w_s G_s / sum_s w_s``, where ``w_s`` is the
  sample's weight in the objective the surrogate was trained on (``sample_weights``: the number
  of positions it predicts for a position-weighted SASRec; 1 for a sample-weighted one). Both
  sums (``sum_s G_s`` and ``sum_s w_s G_s``) are kept in float64 per fixed batch and added in batch
  order, so the result does not depend on how batches are grouped into shards;
- the influence ``G_s . U = sum_t g_t^T U a_t`` for ``U = H^-1 v`` reshaped like ``W``.

The rows ``(a_t, g_t)`` are kept (only those with a non-zero ``g_t``: padding rows contribute
nothing), so influence needs no second pass over the model once ``U`` is known.

Only ``W`` requires a gradient while capturing (everything else is frozen), so autograd
records nothing upstream of the block and the backward pass stops at it.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

from dealrec_core.devices import to_device
from dealrec_core.errors import DealrecError
from surrogates.softmax import CE_CHUNK_CPU, default_ce_chunk, softmax_by_blocks


def freeze_all_but(model: nn.Module, block: nn.Linear) -> None:
    """Let only ``block.weight`` require a gradient (bias included in nothing: the block is W)."""
    for p in model.parameters():
        p.requires_grad_(False)
    block.weight.requires_grad_(True)


class LinearTaps:
    """Forward/backward hooks on one Linear: its inputs ``a`` and the gradients ``g`` of its output.

    Active only inside ``with taps.recording():`` so that Hessian-vector products (double
    backward through the same layer) are not disturbed.
    """

    def __init__(self, block: nn.Linear):
        if not isinstance(block, nn.Linear):
            raise DealrecError(f"the scoring block must be a torch.nn.Linear, got {type(block).__name__}")
        self.block = block
        self.inputs: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []
        self._active = False
        self._handle = block.register_forward_hook(self._on_forward)

    def _on_forward(self, module, inputs, output):
        if not self._active:
            return
        self.inputs.append(inputs[0].detach())
        if output.requires_grad:
            slot = len(self.grads)
            self.grads.append(None)  # type: ignore[arg-type]

            def keep(grad, slot=slot):
                self.grads[slot] = grad.detach()
            output.register_hook(keep)

    @contextlib.contextmanager
    def recording(self) -> Iterator["LinearTaps"]:
        self.inputs, self.grads = [], []
        self._active = True
        try:
            yield self
        finally:
            self._active = False

    def remove(self) -> None:
        self._handle.remove()

    def rows(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(sample_index [R], a [R, d_in], g [R, d_out])`` for rows whose output gradient is non-zero.

        The block's inputs must have the batch as their first dimension (``[B, ..., d_in]``).
        """
        if len(self.inputs) != 1 or len(self.grads) != 1 or self.grads[0] is None:
            raise DealrecError(f"the scoring block ran {len(self.inputs)} times in one forward pass "
                               f"(expected exactly once, with a gradient reaching it)")
        a, g = self.inputs[0], self.grads[0]
        if a.shape[0] != batch_size:
            raise DealrecError(f"the scoring block's input has leading dimension {a.shape[0]}, not the "
                               f"batch size {batch_size}: hooks need inputs shaped [batch, ..., features]")
        a = a.reshape(batch_size, -1, a.shape[-1])
        g = g.reshape(batch_size, -1, g.shape[-1])
        keep = (g != 0).any(dim=-1)  # [B, T]; padding rows have g == 0 exactly and add nothing
        sample_index = torch.arange(batch_size, device=keep.device).unsqueeze(1).expand_as(keep)[keep]
        return sample_index, a[keep], g[keep]


@dataclass
class BatchRows:
    """What one batch contributes: its rows and its float64 gradient sum."""

    losses: np.ndarray        # [B] each sample's own loss
    sample_index: np.ndarray  # int64 [R], index of the row's sample within the batch
    a: np.ndarray             # [R, d_in]
    g: np.ndarray             # [R, d_out]
    grad_sum: np.ndarray      # float64 [d_out, d_in] = sum over the batch of G_s
    weighted_sum: np.ndarray  # float64 [d_out, d_in] = sum over the batch of w_s G_s
    weight: float             # sum over the batch of w_s


# Items per block of a full-softmax loss on the CPU, in the capture and in the Hessian pool (surrogates/softmax.py):
# the softmax, its gradient and its Hessian-vector products pass over the item table block by block, in cache,
# instead of through [positions x items] tensors. 256-1,024 ran alike on the 2-core VM (docs/engine.md);
# 0 keeps autograd's one-product form.
CAPTURE_CE_CHUNK = CE_CHUNK_CPU


def capture_ce_chunk(device) -> int:
    """The ``ce_chunk`` work on ``device`` uses: blocks on the CPU, the one-product form on a GPU (where
    one large product is the fast way); the rule the trainer's default follows too (``default_ce_chunk``)."""
    return default_ce_chunk(device)


def capture_batch(model, taps: LinearTaps, batch: dict, ce_chunk: int = 0) -> BatchRows:
    """One forward and one backward pass of ``sum_s L(s)`` over the batch, recorded by the taps (on the
    block's device; what it returns is on the host). ``ce_chunk``: see ``softmax_by_blocks``."""
    batch = to_device(batch, taps.block.weight.device)
    with taps.recording(), softmax_by_blocks(model, ce_chunk):
        losses = model.sample_losses(batch)
        if losses.dim() != 1:
            raise DealrecError(f"sample_losses must return one loss per sample, got shape {tuple(losses.shape)}")
        if not torch.isfinite(losses).all():
            raise DealrecError("the surrogate returned a non-finite sample loss")
        torch.autograd.grad(losses.sum(), taps.block.weight)
    index, a, g = taps.rows(losses.shape[0])
    weights = _sample_weights(model, batch, losses.shape[0])
    a64, g64 = a.double(), g.double()
    return BatchRows(losses.detach().double().cpu().numpy(), index.cpu().numpy().astype(np.int64),
                     a.cpu().numpy(), g.cpu().numpy(), (g64.T @ a64).cpu().numpy(),
                     ((g64 * weights[index].unsqueeze(1)).T @ a64).cpu().numpy(), float(weights.sum()))


def _sample_weights(model, batch: dict, n: int) -> torch.Tensor:
    """float64 ``[n]``: the model's ``sample_weights`` (all ones for a model without them)."""
    fn = getattr(model, "sample_weights", None)
    if fn is None:
        return torch.ones(n, dtype=torch.float64)
    w = torch.as_tensor(fn(batch)).detach().to(torch.float64).reshape(-1)
    if w.shape[0] != n or not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise DealrecError(f"sample_weights must give {n} finite, non-negative weights, got shape {tuple(w.shape)}")
    return w


def padding_groups(sorted_lengths: np.ndarray, waste: float = 0.25, max_tokens: int = 16384) -> list[np.ndarray]:
    """Cut ascending lengths into runs whose padding adds at most ``waste`` of their real tokens
    and whose padded size (rows x longest) stays within ``max_tokens`` (a run has at least one row)."""
    groups, start = [], 0
    for end in range(1, len(sorted_lengths) + 1):
        if end == len(sorted_lengths):
            groups.append(np.arange(start, end))
            break
        longest = sorted_lengths[end]
        real = sorted_lengths[start:end + 1].sum()
        padded = longest * (end + 1 - start)
        if padded > (1 + waste) * real or padded > max_tokens:
            groups.append(np.arange(start, end))
            start = end
    return groups


def length_groups(lengths, waste: float = 0.25, max_tokens: int = 16384) -> list[np.ndarray]:
    """A batch's row indices sorted by length (stable) and cut by ``padding_groups``.

    The groups depend only on the batch's own lengths, so work split this way stays independent
    of sharding and workers.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    return [order[group] for group in padding_groups(lengths[order], waste, max_tokens)]


def capture_samples(model, taps: LinearTaps, samples, token_budget: int = 0, ce_chunk: int = 0) -> BatchRows:
    """``capture_batch`` over a batch of samples, run as length-sorted chunks of at most
    ``token_budget`` padded positions (0: one chunk); ``ce_chunk``: see ``softmax_by_blocks``. Random batches of
    a long-tailed log are mostly padding (on Games 16% of a 256-sample batch's positions are real; about 65% in chunks).
    Rows come chunk by chunk; ``sample_index`` and ``losses`` refer to the batch's order and
    ``grad_sum``/``weighted_sum``/``weight`` add the chunks' float64 sums in chunk order."""
    n = len(samples)
    if token_budget <= 0:
        return capture_batch(model, taps, model.collate(samples), ce_chunk)
    lengths = np.fromiter((len(h) + 1 for h in samples.history), dtype=np.int64, count=n)
    max_len = getattr(getattr(model, "config", None), "max_len", None)
    if max_len:  # a model that keeps only the most recent positions pads to at most max_len
        lengths = np.minimum(lengths, int(max_len))
    losses = np.zeros(n, dtype=np.float64)
    index, a, g, grad_sum, weighted_sum, weight = [], [], [], None, None, 0.0
    for chunk in length_groups(lengths, waste=math.inf, max_tokens=token_budget):
        part = capture_batch(model, taps, model.collate(samples.subset(chunk)), ce_chunk)
        losses[chunk] = part.losses
        index.append(chunk[part.sample_index])
        a.append(part.a)
        g.append(part.g)
        grad_sum = part.grad_sum if grad_sum is None else grad_sum + part.grad_sum
        weighted_sum = part.weighted_sum if weighted_sum is None else weighted_sum + part.weighted_sum
        weight += part.weight
    return BatchRows(losses, np.concatenate(index).astype(np.int64), np.concatenate(a), np.concatenate(g), grad_sum,
                     weighted_sum, weight)


def influence_from_rows(sample_index: np.ndarray, a: np.ndarray, g: np.ndarray, u: np.ndarray,
                        n_samples: int) -> np.ndarray:
    """``sum_t g_t^T U a_t`` for every sample, in float64 (samples without rows score 0)."""
    a64 = torch.from_numpy(np.asarray(a, dtype=np.float64))
    g64 = torch.from_numpy(np.asarray(g, dtype=np.float64))
    u64 = torch.from_numpy(np.asarray(u, dtype=np.float64))
    per_row = ((a64 @ u64.T) * g64).sum(dim=1).numpy()
    # bincount adds in row order: the same rows in the same order give the same bits
    return np.bincount(sample_index, weights=per_row, minlength=n_samples).astype(np.float64)


def sample_gradients_from_rows(sample_index: np.ndarray, a: np.ndarray, g: np.ndarray,
                               chunk_rows: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each sample's ``G_s = sum_t g_t a_t^T`` flattened like the block's weight (``[d_out * d_in]``,
    float64), as ``(samples, G)`` pairs over groups of whole samples of about ``chunk_rows`` rows. Rows are
    added in their captured order within a sample, so the same rows give the same bits."""
    order = np.argsort(sample_index, kind="stable")
    index = sample_index[order]
    if len(index) == 0:
        return
    firsts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
    ends = np.r_[firsts[1:], len(index)]
    lo = 0
    while lo < len(firsts):
        hi = int(np.searchsorted(ends, firsts[lo] + chunk_rows, side="right"))
        hi = max(hi, lo + 1)
        rows = order[firsts[lo]:ends[hi - 1]]
        outer = (np.asarray(g[rows], dtype=np.float64)[:, :, None]
                 * np.asarray(a[rows], dtype=np.float64)[:, None, :]).reshape(len(rows), -1)
        yield index[firsts[lo:hi]], np.add.reduceat(outer, firsts[lo:hi] - firsts[lo], axis=0)
        lo = hi


def self_influence_from_rows(sample_index: np.ndarray, a: np.ndarray, g: np.ndarray, quadratic,
                             n_samples: int) -> np.ndarray:
    """``quadratic(G_s)`` (e.g. ``G_s (H + t I)^-1 G_s``) for every sample, float64 (samples without rows
    score 0)."""
    out = np.zeros(n_samples, dtype=np.float64)
    for samples, grads in sample_gradients_from_rows(sample_index, a, g):
        out[samples] = quadratic(grads)
    return out


def per_sample_gradient_loop(model, block: nn.Linear, collate, samples) -> np.ndarray:
    """The paper's way, kept as the reference: one autograd call per sample, ``[N, d_out, d_in]``.

    ``collate(samples_subset) -> batch``. Used by tests and benchmark (a), never by the engine.
    """
    out = np.zeros((len(samples),) + tuple(block.weight.shape), dtype=np.float64)
    for i in range(len(samples)):
        batch = collate(samples.subset([i]))
        loss = model.sample_losses(batch).sum()
        (grad,) = torch.autograd.grad(loss, block.weight)
        out[i] = grad.double().numpy()
    return out
