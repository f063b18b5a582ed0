"""Semantic IDs: item texts, the real MiniLM encoder, the embedding cache, the RQ-VAE and its IDs."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from finetune import embed
from finetune.rqvae import (RQVAEConfig, add_collision_token, kmeans, load_semantic_ids, save_semantic_ids,
                            train_rqvae)

FAST = RQVAEConfig(codebook_size=16, latent_dim=8, hidden_dims=(32,), epochs=12, batch_size=64, kmeans_iters=10)


def clustered_embeddings(n=300, dim=24, seed=0, duplicates=20):
    """Items around a few centres, with ``duplicates`` exact copies (same title on two platforms)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, dim))
    x = centres[rng.integers(0, 6, n)] + 0.3 * rng.normal(size=(n, dim))
    x[-duplicates:] = x[:duplicates]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.concatenate([np.zeros((1, dim)), x], 0).astype(np.float32)   # row 0 = padding


def test_item_texts_use_title_categories_and_other_text():
    items = pa.table({"item": pa.array([2, 1], pa.int32()), "title": ["Halo 3", None],
                      "categories": [["Video Games", "Xbox 360"], []], "description": ["a shooter", "a puzzle"],
                      "price": [9.5, 3.0]})
    texts = embed.item_texts(items, 3)
    assert texts[0] == "" and texts[3] == ""
    assert texts[2] == "Halo 3. Categories: Video Games, Xbox 360. a shooter"
    assert texts[1] == "a puzzle"


def test_real_minilm_embeds_titles_and_caches(tmp_path, monkeypatch):
    """The packaged all-MiniLM-L6-v2, loaded offline: normalised vectors whose geometry makes sense."""
    items = pa.table({"item": pa.array([1, 2, 3, 4], pa.int32()),
                      "title": ["Super Mario Kart", "Mario Kart 8 Deluxe", "Microsoft Flight Simulator",
                                "Flight Simulator X"]})
    emb = embed.item_embeddings(items, 4, cache_dir=tmp_path, progress=False)
    assert emb.shape == (5, 384) and np.all(emb[0] == 0)
    assert np.allclose(np.linalg.norm(emb[1:], axis=1), 1.0, atol=1e-5)
    sim = emb[1:] @ emb[1:].T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[2, 3] > sim[1, 2] + 0.2   # Mario with Mario, flight with flight
    # a second call reads the cache and never runs the encoder
    monkeypatch.setattr(embed, "encode_texts", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-encoded")))
    again = embed.item_embeddings(items, 4, cache_dir=tmp_path, progress=False)
    assert np.array_equal(again, emb)
    # another text is another cache key
    other = items.set_column(1, "title", pa.array(["a", "b", "c", "d"]))
    with pytest.raises(AssertionError, match="re-encoded"):
        embed.item_embeddings(other, 4, cache_dir=tmp_path, progress=False)


def test_missing_encoder_folder_is_a_one_line_error(tmp_path):
    from dealrec_core.errors import DealrecError
    with pytest.raises(DealrecError, match="no config.json"):
        embed.encode_texts(["x"], tmp_path, progress=False)


def test_every_item_gets_a_unique_four_token_id():
    x = clustered_embeddings()
    _, sem = train_rqvae(x, FAST, progress=False)
    codes = sem.codes[1:]
    assert codes.shape == (300, 4) and (sem.codes[0] == -1).all()
    assert len({tuple(r) for r in codes.tolist()}) == 300
    for lv, size in enumerate(sem.level_sizes):
        assert codes[:, lv].min() >= 0 and codes[:, lv].max() < size
    # identical embeddings collide on the 3 codes and are told apart by the 4th token only
    for i in range(20):
        a, b = codes[i], codes[280 + i]
        assert a[:3].tolist() == b[:3].tolist() and a[3] != b[3]
    assert sem.stats["collision_rate"] >= 40 / 300
    assert sem.level_sizes[3] == sem.stats["max_group"] >= 2
    assert all(0 < u <= 1 for u in sem.stats["codebook_usage"])


def test_rqvae_is_deterministic_for_a_seed_and_differs_across_seeds():
    x = clustered_embeddings(n=200)
    _, a = train_rqvae(x, FAST, progress=False)
    _, b = train_rqvae(x, FAST, progress=False)
    _, c = train_rqvae(x, RQVAEConfig(**{**FAST.__dict__, "seed": 1}), progress=False)
    assert np.array_equal(a.codes, b.codes)
    assert not np.array_equal(a.codes, c.codes)


def test_training_reduces_reconstruction_and_uses_the_codebooks():
    x = clustered_embeddings(n=400)
    _, short = train_rqvae(x, RQVAEConfig(**{**FAST.__dict__, "epochs": 1}), progress=False)
    _, long = train_rqvae(x, RQVAEConfig(**{**FAST.__dict__, "epochs": 40}), progress=False)
    assert long.stats["reconstruction_mse"] < short.stats["reconstruction_mse"]
    assert long.stats["codebook_usage"][0] >= 0.5       # k-means init + re-seeding keep codes alive


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = centres.repeat_interleave(50, 0) + 0.1 * torch.randn(150, 2, generator=g)
    found = kmeans(x, 3, 20, g)
    assert torch.cdist(centres, found).min(1).values.max() < 0.5


def test_collision_token_numbers_items_in_id_order():
    codes = np.array([[1, 2, 3], [0, 0, 0], [1, 2, 3], [1, 2, 3], [4, 4, 4]])
    full, stats = add_collision_token(codes)
    assert full[:, 3].tolist() == [0, 0, 1, 2, 0]
    assert stats["collision_rate"] == pytest.approx(3 / 5) and stats["max_group"] == 3


def test_semantic_ids_and_rqvae_round_trip(tmp_path):
    x = clustered_embeddings(n=120)
    model, sem = train_rqvae(x, FAST, progress=False)
    save_semantic_ids(sem, model, tmp_path)
    sem2, model2 = load_semantic_ids(tmp_path)
    assert np.array_equal(sem.codes, sem2.codes) and sem.level_sizes == sem2.level_sizes
    xs = torch.from_numpy(x[1:])
    assert torch.equal(model.codes(xs), model2.codes(xs))


def test_semantic_ids_do_not_depend_on_the_callers_thread_count(monkeypatch):
    """With two threads, two fits on Games gave different codebooks (reduction order changes the last
    bits; code assignments amplify them). The fit runs on one thread whatever the caller set, and gives
    the caller's setting back."""
    from finetune.rqvae import RQVAE

    seen = []
    forward = RQVAE.forward

    def spy(self, x):
        seen.append(torch.get_num_threads())
        return forward(self, x)
    monkeypatch.setattr(RQVAE, "forward", spy)
    x = clustered_embeddings(n=400, dim=24, seed=4)
    runs = []
    for threads in (2, 1):
        torch.set_num_threads(threads)
        _, sem = train_rqvae(x, FAST, progress=False)
        assert torch.get_num_threads() == threads
        runs.append(sem.codes)
    torch.set_num_threads(1)
    assert seen and set(seen) == {1}
    assert np.array_equal(runs[0], runs[1])


def test_semantic_ids_are_fitted_once_and_served_bit_for_bit_from_the_cache(tmp_path, monkeypatch):
    """Issue 15, "semantic IDs once": the second build with the same embeddings and options reads the
    cache (the fit never runs) and gives exactly what a fresh fit gives; another option is another fit."""
    from finetune import tiger

    x = clustered_embeddings(n=150)
    fresh_model, fresh = train_rqvae(x, FAST, progress=False)
    first_model, first = tiger.cached_rqvae(x, FAST, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("semantic-ids-*"))) == 1
    monkeypatch.setattr(tiger, "train_rqvae", lambda *a, **k: (_ for _ in ()).throw(AssertionError("refitted")))
    model, sem = tiger.cached_rqvae(x, FAST, cache_dir=tmp_path, progress=False)
    for got in (first, sem):
        assert np.array_equal(got.codes, fresh.codes) and got.level_sizes == fresh.level_sizes
        assert got.stats == fresh.stats
    for got_model in (first_model, model):
        assert not got_model.training
        for (k, a), (_, b) in zip(fresh_model.state_dict().items(), got_model.state_dict().items()):
            assert torch.equal(a, b), k
    with pytest.raises(AssertionError, match="refitted"):   # another seed, or other embeddings: not a hit
        tiger.cached_rqvae(x, RQVAEConfig(**{**FAST.__dict__, "seed": 1}), cache_dir=tmp_path, progress=False)
    with pytest.raises(AssertionError, match="refitted"):
        tiger.cached_rqvae(clustered_embeddings(n=150, seed=3), FAST, cache_dir=tmp_path, progress=False)
    # a damaged entry is fitted again, not served
    for f in next(tmp_path.glob("semantic-ids-*")).iterdir():
        f.write_bytes(b"broken")
    monkeypatch.undo()
    _, again = tiger.cached_rqvae(x, FAST, cache_dir=tmp_path, progress=False)
    assert np.array_equal(again.codes, fresh.codes)
