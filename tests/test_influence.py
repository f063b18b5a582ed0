"""Influence by hooks == the per-sample autograd loop, on two small models with opposite padding."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dealrec_core.errors import DealrecError
from dealrec.influence import LinearTaps, capture_batch, capture_samples, freeze_all_but, influence_from_rows, \
    length_groups, per_sample_gradient_loop, sample_gradients_from_rows, self_influence_from_rows
from surrogates.registry import build_surrogate
from tiny_surrogate import TinySurrogate, tiny_samples

N_ITEMS = 30


def _sasrec(loss: str):
    model = build_surrogate("sasrec", n_items=N_ITEMS, hidden=8, n_blocks=2, n_heads=2, ffn_hidden=16,
                            max_len=8, dropout=0.0, loss=loss, init_std=0.3, seed=1)
    return model.double().eval()


MODELS = {
    "tiny-left-padded": lambda: TinySurrogate(N_ITEMS, dim=8, max_len=8).double().eval(),
    "sasrec-ce": lambda: _sasrec("ce"),
    "sasrec-bce": lambda: _sasrec("bce"),
}


def _capture(model, samples, batch_size, chunk_tokens=0):
    block = model.influence_block()
    freeze_all_but(model, block)
    taps = LinearTaps(block)
    parts = []
    for lo in range(0, len(samples), batch_size):
        idx = np.arange(lo, min(lo + batch_size, len(samples)))
        parts.append((idx, capture_samples(model, taps, samples.subset(idx), chunk_tokens)))
    taps.remove()
    return parts


def _tapped(name: str, n: int, seed: int):
    """A model of MODELS with its block alone live and tapped, and ``n`` tiny samples."""
    model = MODELS[name]()
    block = model.influence_block()
    freeze_all_but(model, block)
    return model, block, LinearTaps(block), tiny_samples(n, N_ITEMS, seed=seed)


def _influence(parts, u, n):
    out = np.zeros(n)
    for idx, rows in parts:
        out[idx] = influence_from_rows(rows.sample_index, rows.a, rows.g, u, len(idx))
    return out


@pytest.mark.parametrize("chunk_tokens", [0, 20])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_influence_equals_per_sample_autograd_loop(name, chunk_tokens):
    model = MODELS[name]()
    samples = tiny_samples(37, N_ITEMS, seed=3)  # lengths 0..12 (truncated at max_len), 37 = ragged batches
    block = model.influence_block()
    parts = _capture(model, samples, batch_size=8, chunk_tokens=chunk_tokens)
    loop = per_sample_gradient_loop(model, block, model.collate, samples)   # [N, out, in]

    # the mean gradient v from the float64 batch sums equals the mean of the loop's gradients
    v = sum(rows.grad_sum for _, rows in parts) / len(samples)
    np.testing.assert_allclose(v, loop.mean(0), rtol=1e-10, atol=1e-14)

    u = np.random.default_rng(0).standard_normal(block.weight.shape)
    got = _influence(parts, u, len(samples))
    want = np.einsum("nij,ij->n", loop, u)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=0)
    # every sample has a real score, one-item and empty histories included
    assert np.all(got != 0)
    assert np.all(np.abs(loop).reshape(len(samples), -1).max(1) > 0)


@pytest.mark.parametrize("chunk_tokens", [0, 20])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_self_influence_equals_per_sample_autograd_loop(name, chunk_tokens):
    model = MODELS[name]()
    samples = tiny_samples(37, N_ITEMS, seed=3)
    block = model.influence_block()
    parts = _capture(model, samples, batch_size=8, chunk_tokens=chunk_tokens)
    loop = per_sample_gradient_loop(model, block, model.collate, samples).reshape(len(samples), -1)
    m = np.random.default_rng(2).standard_normal((loop.shape[1], loop.shape[1]))
    metric = m @ m.T / loop.shape[1] + np.eye(loop.shape[1])   # any symmetric positive definite form
    got = np.zeros(len(samples))
    for idx, rows in parts:
        got[idx] = self_influence_from_rows(rows.sample_index, rows.a, rows.g,
                                            lambda grads: np.einsum("md,de,me->m", grads, metric, grads), len(idx))
    np.testing.assert_allclose(got, np.einsum("nd,de,ne->n", loop, metric, loop), rtol=1e-8)
    assert np.all(got > 0)


def test_sample_gradients_do_not_depend_on_the_row_chunking():
    model = MODELS["sasrec-ce"]()
    samples = tiny_samples(30, N_ITEMS, seed=6)
    (idx, rows), = _capture(model, samples, batch_size=30, chunk_tokens=20)
    shuffled = np.random.default_rng(0).permutation(len(rows.sample_index))   # rows of a sample interleaved
    by_chunk = {}
    for chunk in (1, 5, 10_000):
        got = np.zeros((len(idx), rows.g.shape[1] * rows.a.shape[1]))
        for which, grads in sample_gradients_from_rows(rows.sample_index[shuffled], rows.a[shuffled],
                                                       rows.g[shuffled], chunk_rows=chunk):
            assert not got[which].any()   # each sample once, whole
            got[which] = grads
        by_chunk[chunk] = got
    np.testing.assert_array_equal(by_chunk[1], by_chunk[10_000])
    np.testing.assert_array_equal(by_chunk[5], by_chunk[10_000])
    loop = per_sample_gradient_loop(model, model.influence_block(), model.collate, samples).reshape(len(samples), -1)
    np.testing.assert_allclose(by_chunk[1], loop, rtol=1e-8, atol=1e-12)


def test_scores_do_not_depend_on_batch_boundaries():
    model = MODELS["sasrec-ce"]()
    samples = tiny_samples(40, N_ITEMS, seed=5)
    u = np.random.default_rng(1).standard_normal(model.influence_block().weight.shape)
    by_batch = {b: _influence(_capture(model, samples, b), u, len(samples)) for b in (1, 7, 40)}
    np.testing.assert_allclose(by_batch[7], by_batch[1], rtol=1e-12)
    np.testing.assert_allclose(by_batch[40], by_batch[1], rtol=1e-12)


def test_capture_chunks_cover_the_batch_within_the_budget():
    lengths = np.random.default_rng(4).integers(1, 60, size=300)
    for budget in (1, 50, 64, 1000, 10**6):
        chunks = length_groups(lengths, waste=np.inf, max_tokens=budget)  # as capture_samples cuts
        together = np.concatenate(chunks)
        assert sorted(together.tolist()) == list(range(len(lengths)))       # every row exactly once
        assert np.all(np.diff(lengths[together]) >= 0)                      # shortest first
        for c in chunks:  # within the budget, unless one row alone exceeds it
            assert len(c) == 1 or len(c) * lengths[c].max() <= budget
        if budget >= 60 * 300:
            assert len(chunks) == 1


def test_chunked_capture_matches_one_block():
    model, _, taps, samples = _tapped("sasrec-bce", 40, 6)
    whole = capture_samples(model, taps, samples, 0)
    for budget in (1, 16, 40):
        part = capture_samples(model, taps, samples, budget)
        np.testing.assert_allclose(part.losses, whole.losses, rtol=1e-12)
        np.testing.assert_allclose(part.grad_sum, whole.grad_sum, rtol=1e-10, atol=1e-14)
        # the same rows, in another order
        key = lambda r: np.lexsort(np.c_[r.a, r.sample_index].T)  # noqa: E731
        assert len(part.sample_index) == len(whole.sample_index)
        np.testing.assert_array_equal(part.sample_index[key(part)], whole.sample_index[key(whole)])
        np.testing.assert_allclose(part.g[key(part)], whole.g[key(whole)], rtol=1e-10, atol=1e-14)


def test_padding_rows_are_dropped():
    """Only real positions (non-zero output gradient) are kept: one row per predicted item."""
    model = MODELS["sasrec-ce"]()
    samples = tiny_samples(20, N_ITEMS, seed=2)
    parts = _capture(model, samples, batch_size=20)
    real_positions = sum(min(len(h) + 1, 8) for h in samples.history)
    assert len(parts[0][1].sample_index) == real_positions


def test_block_must_be_linear_and_run_once():
    with pytest.raises(DealrecError, match="must be a torch.nn.Linear"):
        LinearTaps(nn.Conv1d(2, 2, 1))

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def sample_losses(self, batch):
            return self.lin(self.lin(batch["x"])).pow(2).sum(-1)

    m = Twice()
    freeze_all_but(m, m.lin)
    with pytest.raises(DealrecError, match="ran 2 times"):
        capture_batch(m, LinearTaps(m.lin), {"x": torch.randn(4, 3)})


@pytest.mark.parametrize("chunk_tokens", [0, 20])
@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_position_weighted_v_is_the_gradient_of_the_training_risk(loss, chunk_tokens):
    """v with position weighting == autograd of SASRec's position-weighted training loss over all
    samples at once (the risk the surrogate minimised), whatever the batches and chunks."""
    model = _sasrec(loss)
    samples = tiny_samples(37, N_ITEMS, seed=5)
    block = model.influence_block()
    parts = _capture(model, samples, batch_size=8, chunk_tokens=chunk_tokens)
    v = sum(rows.weighted_sum for _, rows in parts) / sum(rows.weight for _, rows in parts)
    (want,) = torch.autograd.grad(model.training_loss(model.collate(samples), weighting="position"), block.weight)
    np.testing.assert_allclose(v, want.numpy(), rtol=1e-9, atol=1e-14)
    # ... and it is not the sample-weighted mean (samples of different lengths weigh differently)
    v_sample = sum(rows.grad_sum for _, rows in parts) / len(samples)
    assert not np.allclose(v, v_sample, rtol=1e-3)
    (want_sample,) = torch.autograd.grad(model.training_loss(model.collate(samples), weighting="sample"),
                                         block.weight)
    np.testing.assert_allclose(v_sample, want_sample.numpy(), rtol=1e-9, atol=1e-14)


def test_models_without_sample_weights_weigh_every_sample_alike():
    model = MODELS["tiny-left-padded"]()
    samples = tiny_samples(19, N_ITEMS, seed=2)
    parts = _capture(model, samples, batch_size=8)
    assert sum(rows.weight for _, rows in parts) == len(samples)
    np.testing.assert_array_equal(sum(rows.weighted_sum for _, rows in parts), sum(rows.grad_sum for _, rows in parts))


@pytest.mark.parametrize("ce_chunk", [1, 7, 1000])
def test_capture_with_the_softmax_by_blocks_equals_the_one_product_form(ce_chunk):
    """The engine's CPU capture computes a full-softmax loss a block of items at a time (first order only):
    the same rows to float rounding, the loop's gradients, and the model's own setting back afterwards."""
    model, block, taps, samples = _tapped("sasrec-ce", 37, 3)
    whole = capture_samples(model, taps, samples, 20)
    blocks = capture_samples(model, taps, samples, 20, ce_chunk)
    assert model.ce_chunk == 0
    np.testing.assert_array_equal(blocks.sample_index, whole.sample_index)
    np.testing.assert_array_equal(blocks.a, whole.a)   # upstream of the loss: the same forward
    np.testing.assert_allclose(blocks.g, whole.g, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(blocks.losses, whole.losses, rtol=1e-12)
    loop = per_sample_gradient_loop(model, block, model.collate, samples)
    got = np.zeros_like(loop)
    for s, grads in sample_gradients_from_rows(blocks.sample_index, blocks.a, blocks.g):
        got[s] = grads.reshape((-1,) + loop.shape[1:])
    np.testing.assert_allclose(got, loop, rtol=1e-9, atol=1e-12)


def test_ce_chunk_leaves_a_model_without_a_full_softmax_alone():
    model, _, taps, samples = _tapped("sasrec-bce", 20, 4)
    whole, blocks = capture_samples(model, taps, samples, 0), capture_samples(model, taps, samples, 0, 5)
    np.testing.assert_array_equal(blocks.g, whole.g)
    np.testing.assert_array_equal(blocks.grad_sum, whole.grad_sum)
