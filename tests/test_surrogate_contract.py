"""The scoring-task contract, checked on every registered surrogate (as transformers' shared model tests):

exact padding and batch invariance, per-sample losses independent of the rest of the batch, influence by
hooks equal to a per-sample autograd loop (1e-5), save/load round trip, deterministic scores, a real loss
for an empty history. A new model registers itself and gets all of these by adding its tiny config below
(the first test fails until it does). The effort targets' share of the contract is in
test_effort_contract.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dealrec.influence import CAPTURE_CE_CHUNK, LinearTaps, capture_samples, freeze_all_but, influence_from_rows, \
    per_sample_gradient_loop
from dealrec_core.data import Samples
from surrogates.base import save_surrogate
from surrogates.registry import SURROGATES, build_surrogate, load_surrogate
from tiny_surrogate import tiny_samples

N_ITEMS = 30
SHAPE = dict(hidden=8, n_blocks=2, n_heads=2, ffn_hidden=16, max_len=8)
# each registered surrogate's tiny configuration (SHAPE plus its own options where they matter)
TINY = {
    "sasrec": {},
    "bert4rec": {"mask_prob": 0.3},
    "dcrec": {"cl_weight": 0.5, "graph_layers": 2},
}
NAMES = sorted(TINY)


def make(name: str, samples: Samples, dropout: float = 0.0, steps: int = 3, seed: int = 1):
    """A tiny model of ``name``, its training data prepared, moved off its initial weights, in eval mode."""
    model = build_surrogate(name, n_items=N_ITEMS, seed=seed, dropout=dropout, **SHAPE, **TINY[name])
    model.prepare_training(samples)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        opt.zero_grad()
        model.training_loss(model.training_batch(samples, step)).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def samples():
    return tiny_samples(37, N_ITEMS, seed=3)   # histories of 0..12 items (truncated at max_len), ragged batches


def test_every_registered_surrogate_is_checked():
    assert set(TINY) == set(SURROGATES), "give every registered surrogate a tiny configuration in TINY"


def assert_losses_invariant(model, samples: Samples) -> None:
    """Each sample's loss alone, in the whole batch, in a shuffled batch and padded to the longest sample is
    the same (1e-6), and the same bits when computed again."""
    with torch.no_grad():
        together = model.sample_losses(model.collate(samples))
        alone = torch.cat([model.sample_losses(model.collate(samples.subset([i]))) for i in range(len(samples))])
        perm = np.random.default_rng(1).permutation(len(samples))
        shuffled = model.sample_losses(model.collate(samples.subset(perm)))
        longest = int(np.argmax([len(h) for h in samples.history]))
        padded = torch.stack([model.sample_losses(model.collate(samples.subset([i, longest])))[0]
                              for i in range(len(samples))])
        again = model.sample_losses(model.collate(samples))
    assert together.shape == (len(samples),)
    torch.testing.assert_close(alone, together, atol=1e-6, rtol=0)
    torch.testing.assert_close(shuffled, together[perm], atol=1e-6, rtol=0)
    torch.testing.assert_close(padded, together, atol=1e-6, rtol=0)
    assert torch.equal(again, together)


@pytest.mark.parametrize("name", NAMES)
def test_padding_and_batch_invariance(name, samples):
    model = make(name, samples)
    assert_losses_invariant(model, samples)
    with torch.no_grad():
        scores = model.full_sort_scores(model.collate_histories(samples.history))
        one = model.full_sort_scores(model.collate_histories([samples.history[5]]))
    assert scores.shape == (len(samples), N_ITEMS + 1)
    assert torch.isinf(scores[:, 0]).all() and torch.isfinite(scores[:, 1:]).all()
    torch.testing.assert_close(one[0, 1:], scores[5, 1:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_a_sample_loss_ignores_its_batch_mates(name, samples):
    """Whatever else is in the batch, a sample's loss and its gradient at the block are the same."""
    model = make(name, samples)
    _, block = model.named_block()
    others = tiny_samples(12, N_ITEMS, seed=9)
    first = []
    for mates in (samples.subset([1, 2, 3]), others, others.subset([7])):
        batch = Samples(np.r_[samples.sample_id[:1], mates.sample_id], np.r_[samples.user[:1], mates.user],
                        [samples.history[0], *mates.history], np.r_[samples.target[:1], mates.target])
        losses = model.sample_losses(model.collate(batch))
        (grad,) = torch.autograd.grad(losses[0], block.weight)
        first.append((losses[0].detach(), grad))
    for loss, grad in first[1:]:
        torch.testing.assert_close(loss, first[0][0], atol=1e-6, rtol=0)
        torch.testing.assert_close(grad, first[0][1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("chunk_tokens,ce_chunk", [(0, 0), (20, 0), (20, CAPTURE_CE_CHUNK), (20, 3)])
@pytest.mark.parametrize("name", NAMES)
def test_influence_equals_the_per_sample_autograd_loop(name, chunk_tokens, ce_chunk, samples):
    """Also as the engine captures on the CPU (``ce_chunk``: a full softmax by blocks of items, where a model
    has one)."""
    model = make(name, samples).double()
    _, block = model.named_block()
    freeze_all_but(model, block)
    taps = LinearTaps(block)
    got = np.zeros(len(samples))
    u = np.random.default_rng(0).standard_normal(block.weight.shape)
    grad_sum = 0.0
    for lo in range(0, len(samples), 8):
        idx = np.arange(lo, min(lo + 8, len(samples)))
        rows = capture_samples(model, taps, samples.subset(idx), chunk_tokens, ce_chunk)
        got[idx] = influence_from_rows(rows.sample_index, rows.a, rows.g, u, len(idx))
        grad_sum = grad_sum + rows.grad_sum
    taps.remove()
    loop = per_sample_gradient_loop(model, block, model.collate, samples)   # [N, out, in]
    np.testing.assert_allclose(grad_sum / len(samples), loop.mean(0), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(got, np.einsum("nij,ij->n", loop, u), rtol=1e-5, atol=0)
    assert np.all(got != 0)   # every sample has a score, empty and one-item histories included


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, samples, tmp_path):
    model = make(name, samples, seed=4)
    save_surrogate(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"] == name and config["config"]["seed"] == 4
    loaded = load_surrogate(tmp_path)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.named_block()[0] == model.named_block()[0]
    with torch.no_grad():
        assert torch.equal(loaded.sample_losses(loaded.collate(samples)), model.sample_losses(model.collate(samples)))
        histories = model.collate_histories(samples.history)
        assert torch.equal(loaded.full_sort_scores(histories), model.full_sort_scores(histories))


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_scores_and_seeded_initialisation(name, samples):
    torch.manual_seed(123)
    a = make(name, samples, dropout=0.2, seed=5)
    torch.manual_seed(456)
    b = make(name, samples, dropout=0.2, seed=5)
    torch.manual_seed(123)
    c = build_surrogate(name, n_items=N_ITEMS, seed=6, **SHAPE, **TINY[name])
    fresh = build_surrogate(name, n_items=N_ITEMS, seed=5, **SHAPE, **TINY[name])
    assert not torch.equal(c.item_emb.weight, fresh.item_emb.weight)   # the seed, not the global state, decides
    with torch.no_grad():
        losses = a.sample_losses(a.collate(samples))
        assert torch.equal(a.sample_losses(a.collate(samples)), losses)   # eval mode: no randomness
        histories = a.collate_histories(samples.history)
        assert torch.equal(a.full_sort_scores(histories), a.full_sort_scores(histories))
    # an epoch's training batch is a function of its samples and the round
    batch, again = a.training_batch(samples, 2), b.training_batch(samples, 2)
    assert batch.keys() == again.keys() and all(torch.equal(batch[k], again[k]) for k in batch)


@pytest.mark.parametrize("name", NAMES)
def test_an_empty_history_gets_a_real_loss_and_gradient(name, samples):
    model = make(name, samples)
    empty = Samples(np.array([0, 1]), np.array([0, 1]), [np.zeros(0, np.int32), np.array([3, 4], np.int32)],
                    np.array([7, 9], np.int32))
    losses = model.sample_losses(model.collate(empty))
    assert torch.isfinite(losses).all() and (losses > 0).all()
    (grad,) = torch.autograd.grad(losses[0], model.named_block()[1].weight)
    assert grad.abs().sum() > 0
    train_loss = model.training_loss(model.training_batch(empty.subset([0]), 0))
    assert torch.isfinite(train_loss) and train_loss > 0


@pytest.mark.parametrize("name", NAMES)
def test_training_lowers_the_loss_and_weights_are_per_sample(name, samples):
    model = make(name, samples, steps=0)
    before = model.sample_losses(model.collate(samples)).mean().item()
    model = make(name, samples, steps=30)
    after = model.sample_losses(model.collate(samples)).mean().item()
    assert after < before
    batch = model.collate(samples)
    weights = model.sample_weights(batch)
    assert weights.shape == (len(samples),) and weights.dtype == torch.float64 and bool((weights > 0).all())
