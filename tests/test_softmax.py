"""The full-softmax cross-entropy by blocks of items (surrogates/softmax.py) against autograd, and the trainer's
``--ce-chunk``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dealrec_core.errors import DealrecError
from surrogates.registry import surrogate_class
import surrogates.softmax as softmax_module
from surrogates.softmax import chunked_cross_entropy
from surrogates.train import TrainConfig, train_surrogate
from test_surrogate_train import TINY_MODEL, make_prepared


def _reference(h, table, y):
    logits = h @ table.T
    logits[:, 0] = float("-inf")   # the padding row is never a candidate
    return F.cross_entropy(logits, y, reduction="none")


@pytest.mark.parametrize("keep", [True, False], ids=["kept-exponentials", "recomputed"])
@pytest.mark.parametrize("chunk", [1, 7, 16, 33, 1000])
def test_loss_and_both_gradients_are_autograds_one_product_form(chunk, keep, monkeypatch):
    if not keep:   # the table's gradient recomputes each block's exponentials (a step too large to keep them)
        monkeypatch.setattr(softmax_module, "KEEP_EXPONENTIALS_BYTES", 0)
    gen = torch.Generator().manual_seed(chunk)
    n, items, dim = 23, 33, 5
    table = torch.randn(items, dim, generator=gen, dtype=torch.float64) * 2
    h = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    y = torch.randint(1, items, (n,), generator=gen)
    y[:4] = 3   # repeated targets: their table rows gather several positions' gradients
    weights = torch.rand(n, generator=gen, dtype=torch.float64)   # a non-uniform upstream gradient

    got = []
    for fn in (_reference, lambda a, b, c: chunked_cross_entropy(a, b, c, chunk)):
        hh, tt = h.clone().requires_grad_(), table.clone().requires_grad_()
        loss = fn(hh, tt, y)
        (loss * weights).sum().backward()
        got.append((loss.detach(), hh.grad, tt.grad))
    for ref, ours in zip(got[0], got[1]):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    assert torch.all(got[1][2][0] == 0)   # padding gets no gradient
    torch.autograd.gradcheck(lambda a, b: chunked_cross_entropy(a, b, y[:6], chunk),
                             (h[:6].clone().requires_grad_(), table.clone().requires_grad_()))


def _weighted_grads(h, table, y, chunk, weights):
    hh, tt = h.clone().requires_grad_(), table.clone().requires_grad_()
    return hh, tt, (chunked_cross_entropy(hh, tt, y, chunk) * weights).sum()


def _table_gradient_block_by_block(grad_table, h, lse, grad, slabs, maxima, chunk, skip):
    """The kept-exponential table gradient as it was until session 21: a product per block."""
    for k, lo in enumerate(range(skip, grad_table.shape[0], chunk)):
        e = slabs[k, :, :min(chunk, grad_table.shape[0] - lo)]
        grad_table[lo:lo + chunk] = e.T @ (h * (torch.exp(maxima[k] - lse) * grad)[:, None])


@pytest.mark.parametrize("items,chunk", [(2001, 256), (2049, 256), (100, 256), (700, 64)])
def test_the_batched_table_gradient_is_the_block_by_block_one_bit_for_bit(items, chunk, monkeypatch):
    """float32, as training runs: the full blocks' batched product gives the gradient of a product per block to
    the last bit (so a surrogate trained before keeps its bytes), with and without a narrower last block."""
    gen = torch.Generator().manual_seed(items)
    table = torch.randn(items, 24, generator=gen) * 0.3
    h = torch.randn(300, 24, generator=gen)
    y = torch.randint(1, items, (300,), generator=gen)
    weights = torch.rand(300, generator=gen)
    grads = []
    for gradient in (softmax_module._table_gradient_from_kept, _table_gradient_block_by_block):
        monkeypatch.setattr(softmax_module, "_table_gradient_from_kept", gradient)
        hh, tt, loss = _weighted_grads(h, table, y, chunk, weights)
        loss.backward()
        grads.append((hh.grad, tt.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert grads[0][1][1:].abs().sum() > 0


def test_kept_exponentials_are_never_overwritten_while_their_graph_lives():
    """Three graphs alive at once (the pool lends two buffers; the third forward gets its own memory), their
    backwards run in reverse order: each gradient is still autograd's. A later forward reuses a buffer only once
    the graph it was lent to is freed."""
    gen = torch.Generator().manual_seed(5)
    table = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    graphs = []
    for n in (9, 9, 12):
        h = torch.randn(n, 6, generator=gen, dtype=torch.float64)
        y = torch.randint(1, 40, (n,), generator=gen)
        w = torch.rand(n, generator=gen, dtype=torch.float64)
        graphs.append((h, y, w, *_weighted_grads(h, table, y, 8, w)))
    for h, y, w, hh, tt, loss in reversed(graphs):
        loss.backward()
        rh, rt = h.clone().requires_grad_(), table.clone().requires_grad_()
        (_reference(rh, rt, y) * w).sum().backward()
        torch.testing.assert_close(hh.grad, rh.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(tt.grad, rt.grad, rtol=1e-12, atol=1e-12)



def test_a_buffer_is_lent_again_only_after_its_graph_is_freed(monkeypatch):
    pool = softmax_module._BufferPool()
    monkeypatch.setattr(softmax_module, "_EXPONENTIAL_BUFFERS", pool)
    gen = torch.Generator().manual_seed(6)
    table = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    h = torch.randn(9, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(1, 40, (9,), generator=gen)
    w = torch.ones(9, dtype=torch.float64)

    def lent():
        return [b.data_ptr() for b, owner in zip(pool._buffers, pool._owners) if owner is not None and owner()]

    *_, first = _weighted_grads(h, table, y, 8, w)
    assert len(lent()) == 1
    *_, second = _weighted_grads(h, table, y, 8, w)   # the first graph is alive: the other buffer
    assert len(lent()) == 2 and len(set(lent())) == 2
    *_, third = _weighted_grads(h, table, y, 8, w)    # both lent: fresh memory, the pool unchanged
    assert len(pool._buffers) == 2
    third.backward()
    first.backward()   # backward alone does not free a graph the caller still holds
    assert len(lent()) == 2
    buffers = [b.data_ptr() for b in pool._buffers]
    del first
    *_, fourth = _weighted_grads(h, table, y, 8, w)   # the first graph's buffer, reused
    assert [b.data_ptr() for b in pool._buffers] == buffers and len(lent()) == 2
    del second, third, fourth
    assert lent() == []


def test_a_training_does_not_hold_the_pooled_memory_after_it(tmp_path):
    prepared = make_prepared(tmp_path / "prepared")
    lent = []
    pool = softmax_module._EXPONENTIAL_BUFFERS
    real_lend = pool.lend
    pool.lend = lambda *a: lent.append(1) or real_lend(*a)   # the training did use the pool
    try:
        train_surrogate(prepared, "sasrec", tmp_path / "s", TINY_MODEL,
                        TrainConfig(batch_size=16, max_epochs=1, threads=1, progress=False, ce_chunk=8))
    finally:
        del pool.lend
    assert lent and pool._buffers == []


def test_large_logits_do_not_overflow():
    h = torch.tensor([[100.0, -50.0], [0.0, 0.0]], dtype=torch.float64)
    table = torch.tensor([[0.0, 0.0], [10.0, 0.0], [9.0, 1.0], [-10.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([2, 3])
    ours = chunked_cross_entropy(h, table, y, 2)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, _reference(h, table, y))


def test_sasrec_training_loss_by_blocks_matches_the_one_product_form():
    cls = surrogate_class("sasrec")
    model = cls(cls.config_class(seed=0, n_items=40, **{**TINY_MODEL, "dropout": 0.0})).double()
    model.train()
    batch = {"input_ids": torch.tensor([[41, 5, 6, 7], [41, 9, 0, 0]]), "labels": torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])}
    grads = []
    for chunk in (0, 6):
        model.ce_chunk = chunk
        model.zero_grad()
        loss = model.training_loss(batch)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-12, atol=1e-12)
    for a, b in zip(grads[1][1], grads[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    model.eval()   # scoring and HVPs keep the autograd form whatever ce_chunk says
    with torch.no_grad():
        assert model.training_loss(batch).item() == pytest.approx(grads[0][0].item())


def test_trainer_takes_ce_chunk_for_sasrec_and_refuses_it_where_there_is_no_full_softmax(tmp_path):
    prepared = make_prepared(tmp_path / "prepared")
    cfg = dict(lr=1e-2, batch_size=16, max_epochs=2, patience=2, seed=1, threads=1, progress=False)
    plain = train_surrogate(prepared, "sasrec", tmp_path / "plain", TINY_MODEL, TrainConfig(**cfg))
    chunked = train_surrogate(prepared, "sasrec", tmp_path / "chunked", TINY_MODEL, TrainConfig(**cfg, ce_chunk=8))
    assert chunked["train_config"]["ce_chunk"] == 8
    # the same loss: float rounding apart, the same training (a few float32 steps cannot drift far)
    for a, b in zip(plain["history"], chunked["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    with pytest.raises(DealrecError, match="ce-chunk"):
        train_surrogate(prepared, "sasrec", tmp_path / "bce", {**TINY_MODEL, "loss": "bce"},
                        TrainConfig(**cfg, ce_chunk=8))
    with pytest.raises(DealrecError, match="ce_chunk"):
        TrainConfig(ce_chunk=-1)


@pytest.mark.parametrize("chunk", [1, 4, 100])
def test_second_derivatives_with_respect_to_h_are_autograds_and_the_tables_are_refused(chunk):
    """Hessian-vector products (the engine's pool, the item table frozen) go through the blocks: the same
    second derivatives as the one-product form; one with respect to the table raises instead of being wrong."""
    gen = torch.Generator().manual_seed(chunk)
    table = torch.randn(9, 3, generator=gen, dtype=torch.float64) * 2
    h = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    y = torch.tensor([1, 2, 3, 8, 2])
    weights = torch.rand(5, generator=gen, dtype=torch.float64)
    direction = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    hvps = []
    for fn in (_reference, lambda a, b, c: chunked_cross_entropy(a, b, c, chunk)):
        hh = h.clone().requires_grad_()
        (grad,) = torch.autograd.grad((fn(hh, table, y) * weights).sum(), hh, create_graph=True)
        (hvp,) = torch.autograd.grad((grad * direction).sum(), hh)
        hvps.append(hvp)
    torch.testing.assert_close(hvps[1], hvps[0], rtol=1e-12, atol=1e-12)
    torch.autograd.gradgradcheck(lambda a: chunked_cross_entropy(a, table, y, chunk), (h.clone().requires_grad_(),))

    hh, tt = h.clone().requires_grad_(), table.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="item table"):   # a graph of the backward that the table is in
        torch.autograd.grad(chunked_cross_entropy(hh, tt, y, chunk).sum(), hh, create_graph=True)


def test_bert4rec_cloze_loss_and_sample_losses_by_blocks_match_the_one_product_form():
    cls = surrogate_class("bert4rec")
    model = cls(cls.config_class(seed=0, n_items=40, **{**TINY_MODEL, "dropout": 0.0})).double()
    assert model.supports_ce_chunk()
    model.train()
    # [MASK] is id 41; labels hold the item at masked positions only
    cloze = {"input_ids": torch.tensor([[5, 41, 7, 41], [41, 9, 0, 0]]),
             "labels": torch.tensor([[0, 6, 0, 8], [3, 0, 0, 0]]), "lengths": torch.tensor([4, 2])}
    # scoring: history + [MASK], the target at the mask
    scoring = {"input_ids": torch.tensor([[5, 7, 41], [9, 41, 0]]), "lengths": torch.tensor([3, 2]),
               "labels": torch.tensor([8, 2])}
    got = []
    for chunk in (0, 6):
        model.ce_chunk = chunk
        model.zero_grad()
        loss = model.training_loss(cloze) + model.sample_losses(scoring).sum()
        loss.backward()
        got.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(got[1][0], got[0][0], rtol=1e-12, atol=1e-12)
    assert len(got[1][1]) == len(got[0][1])
    for a, b in zip(got[1][1], got[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
