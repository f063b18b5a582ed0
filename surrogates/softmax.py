"""Full-softmax cross-entropy over a large item table, a block of items at a time, in one pass.

``logits = h @ table.T`` over every item at every real position is most of a CE surrogate's training
step on the CPU (Games: 17,333 items; about 85% of a bucketed SASRec step, measured) and most of the
influence capture. Done as one product, the [positions, items] logits and their gradient pass through
memory several times (the product, the padding column, log-softmax, its backward, the products of the
backward). Here the items are taken ``chunk`` rows at a time and a block never leaves the cache: the
forward keeps, per position, a running maximum, the sum of the exponentials and their weighted sum of
the block's rows (the "online softmax"; one product per block gives both, the rows carrying a column of
ones), which gives the log-sum-exp and the softmax's expectation of the
item rows, ``E_p[table] = sum_i p_i table_i``. The gradient with respect to ``h`` is then
``E_p[table] - table[y]`` with no second pass; the table's gradient, when something asks for it (training;
the influence capture's item table is frozen and skips it), reuses the forward's exponentials when they fit in
``KEEP_EXPONENTIALS_BYTES`` (each block's ``exp(logit - running max)`` and that maximum: the probabilities are
those times a factor per position, which goes onto ``h``), and recomputes each block's otherwise. Keeping them
saves a product and the exponentials per block in the backward (a bucketed SASRec epoch 1.24x faster on the
2-core VM, ``benchmarks/profile_surrogate_step.py --keep-exponentials yes,no``; docs/surrogates.md); the memory
they are written to is lent by ``_EXPONENTIAL_BUFFERS`` and reused by later steps, because fresh memory of that
size costs more to fault in than the backward saves.

The same function, exactly: the loss and both gradients agree with autograd through the one-product form to
float rounding (tested). Second derivatives with respect to ``h`` too (the influence engine's Hessian-vector
products over a block upstream of the loss, the item table frozen): the backward's ``E_p[table]`` is then a
function of ``h`` whose derivative, the softmax's covariance of the item rows, is applied by blocks as well.
A second derivative with respect to the table raises an error instead of giving a wrong number.
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Iterator

import torch
from torch.autograd.function import once_differentiable

# Items per block of the full softmax on a CPU: the fastest of 128-2,048 on the 2-core VM for training
# (docs/surrogates.md, "Block size") and the size the influence capture and Hessian pool use
# (docs/engine.md). A block stays in the CPU's caches; on a GPU the one large product is faster.
CE_CHUNK_CPU = 256


def default_ce_chunk(device, model=None) -> int:
    """What ``ce_chunk=None`` (auto) means for training ``model``: blocks of ``CE_CHUNK_CPU`` items on the CPU
    for a model that trains so by default (``ce_blocks_on_cpu``) with a full-softmax loss, else the one product
    (0; always on a GPU). Without a model: blocks on the CPU (the influence capture and Hessian pool)."""
    if torch.device(device).type != "cpu":
        return 0
    if model is None:
        return CE_CHUNK_CPU
    # a class stands for its default options (what prune and compare train), whose loss is a full softmax
    full_softmax = True if isinstance(model, type) else model.supports_ce_chunk()
    return CE_CHUNK_CPU if model.ce_blocks_on_cpu and full_softmax else 0


# The forward's exponentials (``positions x items`` floats) are kept for the table's gradient up to this many
# bytes a step; a longer step recomputes them by blocks in the backward (the same gradient to float rounding).
KEEP_EXPONENTIALS_BYTES = 256 * 2**20


class _BufferPool:
    """CPU memory for kept exponentials, lent to one autograd graph at a time.

    A buffer goes back to the pool when the graph that saved it is freed (a weak reference to the Function's
    context), never while a backward may still read it, so a later step's forward cannot overwrite what an
    earlier graph needs; a training loop alternates between two buffers. When every pooled buffer is lent, a
    forward gets fresh, unpooled memory."""

    def __init__(self, size: int = 2):
        self.size = size
        self._buffers: list[torch.Tensor] = []
        self._owners: list = []   # for each buffer, a weak reference to the context it is lent to (None: never lent)
        self._lock = threading.Lock()

    def lend(self, ctx, numel: int, dtype: torch.dtype) -> torch.Tensor:
        with self._lock:
            free = [i for i, owner in enumerate(self._owners) if owner is None or owner() is None]
            fits = [i for i in free if self._buffers[i].dtype == dtype and self._buffers[i].numel() >= numel]
            if fits:
                i = min(fits, key=lambda j: self._buffers[j].numel())
            elif free or len(self._buffers) < self.size:
                if free:   # the smallest free one is replaced by one large enough
                    i = min(free, key=lambda j: self._buffers[j].numel())
                    self._buffers[i] = torch.empty(numel, dtype=dtype)
                else:
                    i = len(self._buffers)
                    self._buffers.append(torch.empty(numel, dtype=dtype))
                    self._owners.append(None)
            else:
                return torch.empty(numel, dtype=dtype)
            self._owners[i] = weakref.ref(ctx)
            return self._buffers[i][:numel]

    def clear(self) -> None:
        """Let the pooled memory go (a graph still alive keeps its own buffer until it is freed)."""
        with self._lock:
            self._buffers.clear()
            self._owners.clear()


_EXPONENTIAL_BUFFERS = _BufferPool()


class _ChunkedSoftmaxCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, table: torch.Tensor, y: torch.Tensor, chunk: int, skip: int):
        n, d = h.shape
        # the candidates with a column of ones: one product per block gives both the weighted sum of the
        # block's rows and the sum of the exponentials (its last column)
        ones = torch.ones(table.shape[0] - skip, 1, dtype=table.dtype, device=table.device)
        candidates = torch.cat([table[skip:], ones], dim=1)
        items = candidates.shape[0]
        blocks = -(-items // chunk)
        # the table's gradient (training) reuses the exponentials: a [n, chunk] slab per block, the last one
        # holding fewer columns; the influence capture (table frozen) and a GPU keep nothing
        keep = (ctx.needs_input_grad[1] and h.device.type == "cpu"
                and blocks * n * chunk * h.element_size() <= KEEP_EXPONENTIALS_BYTES)
        slabs = _EXPONENTIAL_BUFFERS.lend(ctx, blocks * n * chunk, h.dtype).view(blocks, n, chunk) if keep else None
        maxima = []
        m = torch.full((n,), float("-inf"), dtype=h.dtype, device=h.device)
        acc = torch.zeros(n, d + 1, dtype=h.dtype, device=h.device)   # rescaled as the running maximum grows
        for k, lo in enumerate(range(0, items, chunk)):
            block = candidates[lo:lo + chunk]
            if keep and block.shape[0] == chunk:
                w = torch.mm(h, block[:, :d].T, out=slabs[k])
            elif keep:   # the last, narrower block: a non-contiguous view of its slab, which mm cannot write into
                w = slabs[k, :, :block.shape[0]].copy_(h @ block[:, :d].T)
            else:
                w = h @ block[:, :d].T
            new_m = torch.maximum(m, w.amax(1))
            rescale = torch.exp(m - new_m)
            w.sub_(new_m[:, None]).exp_()
            acc.mul_(rescale[:, None]).addmm_(w, block)
            m = new_m
            if keep:
                maxima.append(new_m)
        s = acc[:, d]
        lse = m + torch.log(s)
        expect = acc[:, :d] / s[:, None]   # the softmax's expectation of the item rows
        # saved as tensors: autograd checks that nothing overwrote them and keeps them for a retained graph
        kept = (slabs, torch.stack(maxima)) if keep else ()
        ctx.save_for_backward(h, table, y, lse, expect, *kept)
        ctx.chunk, ctx.skip = chunk, skip
        return lse - (h * table[y]).sum(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, table, y, lse, expect, *kept = ctx.saved_tensors
        twice = torch.is_grad_enabled()   # create_graph: this backward is itself differentiated (an HVP)
        if twice and ctx.needs_input_grad[1]:
            raise RuntimeError("the full softmax by blocks has no second derivative with respect to the item table "
                               "(freeze the table, or use the one-product form)")
        grad_h = grad_table = None
        if ctx.needs_input_grad[0]:
            if twice:   # E_p[table] as a function of h, so that the product's derivative is Cov_p[table]
                expect = _SoftmaxExpectation.apply(h, table, lse, expect, ctx.chunk, ctx.skip)
            grad_h = grad[:, None] * (expect - table[y])
        if ctx.needs_input_grad[1]:
            grad_table = torch.zeros_like(table)
            if kept:   # p = kept exponentials * exp(that block's maximum - lse): the factor goes onto h
                _table_gradient_from_kept(grad_table, h, lse, grad, *kept, ctx.chunk, ctx.skip)
            else:
                for lo in range(ctx.skip, table.shape[0], ctx.chunk):
                    p = torch.exp(h @ table[lo:lo + ctx.chunk].T - lse[:, None]) * grad[:, None]
                    grad_table[lo:lo + ctx.chunk] = p.T @ h
            grad_table.index_add_(0, y, -grad[:, None] * h)
        return grad_h, grad_table, None, None, None


def _table_gradient_from_kept(grad_table: torch.Tensor, h: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor,
                              slabs: torch.Tensor, maxima: torch.Tensor, chunk: int, skip: int) -> None:
    """The softmax part of the table's gradient from the forward's exponentials, written into ``grad_table``'s rows
    ``skip:``: block ``k``'s rows get ``slabs[k].T @ (h * (exp(maxima[k] - lse) * grad)[:, None])``. The full blocks
    as one batched product straight into the gradient's rows, the narrower last block alone: the same floats as a
    product per block (each factor's exponential is taken over the same ``[positions]`` vector as before, and a
    product per block and the batched one give the same bits on the CPU; tests/test_softmax.py checks both
    against the per-block form), and faster: 13-14 against 22-23 ms for one 800-position batch alone, about 0.9 s
    less a Games epoch in the training step's profile (docs/surrogates.md, "Bit-exact savings")."""
    items, d = grad_table.shape[0] - skip, h.shape[1]
    full = items // chunk
    # a factor per block and position; the exponentials over [positions] vectors, one block at a time, as before
    onto_h = h[None] * torch.stack([torch.exp(m - lse) * grad for m in maxima])[:, :, None]
    if full:
        torch.bmm(slabs[:full].transpose(1, 2), onto_h[:full],
                  out=grad_table[skip:skip + full * chunk].view(full, chunk, d))
    if full < len(slabs):   # the last, narrower block
        lo = skip + full * chunk
        grad_table[lo:] = slabs[full, :, :items - full * chunk].T @ onto_h[full]


class _SoftmaxExpectation(torch.autograd.Function):
    """``E_p[table] = sum_i p_i table_i`` with ``p = softmax(h @ table[skip:].T)``, given (the forward computed
    it); its backward is the derivative, ``u -> Cov_p[table] u = E_p[table (table . u)] - E_p[table] (E_p[table]
    . u)``, by blocks of items. With respect to ``h`` only; no third derivative."""

    @staticmethod
    def forward(ctx, h, table, lse, expect, chunk: int, skip: int):
        ctx.save_for_backward(h, table, lse, expect)
        ctx.chunk, ctx.skip = chunk, skip
        return expect.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, u: torch.Tensor):
        h, table, lse, expect = ctx.saved_tensors
        acc = torch.zeros_like(h)
        for lo in range(ctx.skip, table.shape[0], ctx.chunk):
            block = table[lo:lo + ctx.chunk]
            p = torch.exp(h @ block.T - lse[:, None])
            acc.addmm_(p * (u @ block.T), block)
        return acc - expect * (expect * u).sum(1, keepdim=True), None, None, None, None, None


def chunked_cross_entropy(h: torch.Tensor, table: torch.Tensor, y: torch.Tensor, chunk: int,
                          skip: int = 1) -> torch.Tensor:
    """``F.cross_entropy(h @ table.T, y, reduction="none")`` with the first ``skip`` rows of ``table`` never a
    candidate (row 0: padding), computed ``chunk`` items at a time (see the module docstring)."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    return _ChunkedSoftmaxCE.apply(h, table, y, int(chunk), int(skip))


@contextlib.contextmanager
def softmax_by_blocks(model, ce_chunk: int) -> Iterator[None]:
    """Within: the model's full-softmax losses (a model that has them, ``supports_ce_chunk``) by blocks of
    ``ce_chunk`` items, the same function and derivatives (second ones with respect to the hidden states,
    not the item table); the model's own setting after. 0: leave the model as it is. The one switch for the
    trainer (``--ce-chunk``) and the influence engine (capture, Hessian pool)."""
    if not ce_chunk or not getattr(model, "supports_ce_chunk", lambda: False)():
        yield
        return
    before = model.ce_chunk
    model.ce_chunk = ce_chunk
    try:
        yield
    finally:
        model.ce_chunk = before
        _EXPONENTIAL_BUFFERS.clear()   # a training's up to 2 x KEEP_EXPONENTIALS_BYTES, not held after it
