"""SASRec and the surrogate contract: invariance, empty histories, shapes, save/load, determinism."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dealrec_core.data import Samples
from dealrec_core.errors import DealrecError
from surrogates.base import SURROGATES, save_surrogate
from surrogates.registry import build_surrogate, load_surrogate
from surrogates.sasrec import SASRec, hashed_negatives
from test_surrogate_contract import assert_losses_invariant

N_ITEMS = 30


def tiny(loss="ce", positions="from_start", seed=0, max_len=12) -> SASRec:
    model = build_surrogate("sasrec", n_items=N_ITEMS, max_len=max_len, hidden=16, n_heads=2, n_blocks=2,
                            ffn_hidden=32, loss=loss, positions=positions, seed=seed)
    return model.eval()


def random_samples(n=24, seed=0, max_hist=30) -> Samples:
    rng = np.random.default_rng(seed)
    hist = [rng.integers(1, N_ITEMS + 1, size=rng.integers(0, max_hist)).astype(np.int32) for _ in range(n)]
    hist[0] = np.zeros(0, np.int32)  # always at least one empty history
    return Samples(np.arange(n, dtype=np.int64) * 11 + 5, np.arange(n, dtype=np.int64), hist,
                   rng.integers(1, N_ITEMS + 1, size=n).astype(np.int32))


def trained_a_little(model: SASRec, samples: Samples, steps=5) -> SASRec:
    """Move the weights off their initial values so the invariance checks see a real model."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        model.training_loss(model.collate(samples)).backward()
        opt.step()
    return model.eval()


def test_registry_and_influence_block():
    assert SURROGATES["sasrec"] is SASRec
    model = tiny()
    block = model.influence_block()
    assert isinstance(block, torch.nn.Linear)
    assert block is model.blocks[-1].attn.out
    assert tuple(block.weight.shape) == (16, 16)
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())
    assert tuple(build_surrogate("sasrec", n_items=5).influence_block().weight.shape) == (64, 64)


@pytest.mark.parametrize("loss", ["ce", "bce"])
@pytest.mark.parametrize("positions", ["from_start", "from_end"])
def test_sample_losses_invariant_to_batch_and_padding(loss, positions):
    samples = random_samples()
    # alone, in the batch, shuffled, padded far beyond its length (paired with the longest sample), again
    assert_losses_invariant(trained_a_little(tiny(loss, positions), samples), samples)


def test_padding_tokens_get_no_gradient_at_the_influence_block():
    """Hooks on the influence block see padded positions; their output gradients must be zero."""
    samples = random_samples(n=6)
    model = tiny()
    grads = {}
    block = model.influence_block()
    handle = block.register_full_backward_hook(lambda m, gi, go: grads.__setitem__("g", go[0].detach()))
    batch = model.collate(samples)
    model.sample_losses(batch).sum().backward()
    handle.remove()
    pad = batch["labels"] == 0
    assert pad.any()
    assert torch.all(grads["g"][pad] == 0)
    assert grads["g"][~pad].abs().sum() > 0


def test_empty_history_gets_a_real_loss_and_gradient():
    samples = Samples(np.array([0, 1]), np.array([0, 1]), [np.zeros(0, np.int32), np.array([3, 4], np.int32)],
                      np.array([7, 9], np.int32))
    for loss in ("ce", "bce"):
        model = tiny(loss)
        losses = model.sample_losses(model.collate(samples))
        assert torch.isfinite(losses).all() and (losses > 0).all()
        model.zero_grad()
        losses[0].backward()
        assert model.influence_block().weight.grad.abs().sum() > 0
        # the BOS token is what the empty-history sample reads
        assert model.item_emb.weight.grad[model.bos].abs().sum() > 0


def test_collate_truncates_to_the_most_recent_items():
    model = tiny(max_len=4)
    samples = Samples(np.array([0]), np.array([0]), [np.arange(1, 10, dtype=np.int32)], np.array([10], np.int32))
    batch = model.collate(samples)
    assert batch["input_ids"].tolist() == [[6, 7, 8, 9]]
    assert batch["labels"].tolist() == [[7, 8, 9, 10]]
    assert batch["sample_id"].tolist() == [0]
    short = model.collate(Samples(np.array([3]), np.array([0]), [np.array([5], np.int32)], np.array([6], np.int32)))
    assert short["input_ids"].tolist() == [[model.bos, 5]] and short["labels"].tolist() == [[5, 6]]
    hist = model.collate_histories([np.arange(1, 10), np.zeros(0, np.int64)])
    assert hist["input_ids"].tolist() == [[6, 7, 8, 9], [model.bos, 0, 0, 0]]
    assert hist["lengths"].tolist() == [4, 1]


def test_full_sort_scores_shape_and_consistency_with_the_loss():
    samples = random_samples(n=8)
    model = trained_a_little(tiny(), samples)
    with torch.no_grad():
        scores = model.full_sort_scores(model.collate_histories(samples.history))
        assert scores.shape == (8, N_ITEMS + 1)
        assert torch.isinf(scores[:, 0]).all() and torch.isfinite(scores[:, 1:]).all()
        # the last position's CE loss is -log softmax(scores)[target] when history fits max_len
        short = [i for i, h in enumerate(samples.history) if len(h) + 1 <= model.config.max_len]
        for i in short:
            batch = model.collate(samples.subset([i]))
            losses, _ = model.position_losses(batch)
            expected = -scores[i].log_softmax(-1)[samples.target[i]]
            torch.testing.assert_close(losses[-1], expected, atol=1e-5, rtol=0)
        # scores for one history do not depend on the others in the batch
        one = model.full_sort_scores(model.collate_histories([samples.history[3]]))
        torch.testing.assert_close(one[0, 1:], scores[3, 1:], atol=1e-5, rtol=0)


def test_save_load_round_trip(tmp_path):
    samples = random_samples()
    model = trained_a_little(tiny("bce", seed=3), samples)
    save_surrogate(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model"] == "sasrec" and cfg["config"]["loss"] == "bce" and cfg["config"]["seed"] == 3
    loaded = load_surrogate(tmp_path)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded.sample_losses(loaded.collate(samples)), model.sample_losses(model.collate(samples)))
        h = model.collate_histories(samples.history)
        assert torch.equal(loaded.full_sort_scores(h), model.full_sort_scores(h))


def test_load_rejects_a_folder_without_a_model(tmp_path):
    with pytest.raises(DealrecError, match="config.json"):
        load_surrogate(tmp_path)
    (tmp_path / "config.json").write_text('{"model": "nope", "config": {}}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(DealrecError, match="unknown surrogate model 'nope'"):
        load_surrogate(tmp_path)


def test_initialisation_depends_on_the_seed_only():
    torch.manual_seed(123)
    a = tiny(seed=5).state_dict()
    torch.manual_seed(456)
    b = tiny(seed=5).state_dict()
    c = tiny(seed=6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["item_emb.weight"], c["item_emb.weight"])


def test_bce_negatives_are_deterministic_and_never_the_label():
    samples = random_samples()
    m1, m2 = tiny("bce", seed=7), tiny("bce", seed=7)
    b1, b2 = m1.collate(samples), m2.collate(samples.subset(np.arange(len(samples))[::-1]))
    assert torch.equal(b1["negatives"], m1.collate(samples)["negatives"])
    # a sample's negatives depend on its sample_id, not on its place in the batch
    one = m1.collate(samples.subset([5]))["negatives"][0]
    row = b1["negatives"][5]
    assert torch.equal(one, row[:len(one)])
    assert torch.equal(b2["negatives"][len(samples) - 1 - 5][:len(one)], one)
    real = b1["labels"] > 0
    assert torch.all(b1["negatives"][real] != b1["labels"][real])
    assert torch.all((b1["negatives"][real] >= 1) & (b1["negatives"][real] <= N_ITEMS))
    assert torch.all(b1["negatives"][~real] == 0)
    # another seed or round draws other negatives
    assert not torch.equal(tiny("bce", seed=8).collate(samples)["negatives"], b1["negatives"])
    assert not torch.equal(m1.collate(samples, negative_round=1)["negatives"], b1["negatives"])
    with torch.no_grad():
        assert torch.equal(m1.sample_losses(b1), m2.sample_losses(m2.collate(samples)))


def test_hashed_negatives_cover_the_catalogue():
    labels = np.ones((200, 50), dtype=np.int64)
    negs = hashed_negatives(0, np.arange(200), labels, N_ITEMS)
    counts = np.bincount(negs.ravel(), minlength=N_ITEMS + 1)
    assert counts[0] == 0 and counts[1] == 0  # never padding, never the label (1)
    assert (counts[2:] > 0.5 * counts[2:].mean()).all()  # roughly uniform over the other items


def test_bad_config_is_rejected():
    with pytest.raises(DealrecError, match="loss"):
        build_surrogate("sasrec", n_items=5, loss="hinge")
    with pytest.raises(DealrecError, match="n_heads"):
        build_surrogate("sasrec", n_items=5, hidden=10, n_heads=3)
    with pytest.raises(DealrecError, match="unknown surrogate"):
        build_surrogate("gru4rec", n_items=5)
