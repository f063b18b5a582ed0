"""Effort: batched per-sample gradient norms == a per-sample autograd loop (tiny Llama with LoRA)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dealrec.effort import batch_grad_norms, bigrec_target, find_linear, norms_from_rows, per_sample_norm_loop
from dealrec_core.errors import DealrecError
from tiny_lm import make_tiny_causal_lm
from tiny_surrogate import tiny_samples

N_ITEMS = 12
TITLES = [""] + [f"Quest of the {w} Kingdom {i}" for i, w in
                 enumerate(["Red", "Blue", "Green", "Silver", "Iron", "Golden", "Shadow", "Crystal",
                            "Storm", "Ember", "Frost", "Night"], 1)]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return make_tiny_causal_lm("llama", TITLES[1:], tmp_path_factory.mktemp("llm") / "llama", hidden=32, layers=2)


def test_direct_and_ghost_norms_equal_the_explicit_gradient():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.standard_normal((5, 7, 3)))
    g = torch.from_numpy(rng.standard_normal((5, 7, 4)))
    g[:, 5:] = 0  # padding rows
    explicit = np.array([np.linalg.norm(sum(np.outer(g[b, t], a[b, t]) for t in range(7))) for b in range(5)])
    np.testing.assert_allclose(norms_from_rows(a, g, "direct"), explicit, rtol=1e-12)
    np.testing.assert_allclose(norms_from_rows(a, g, "ghost"), explicit, rtol=1e-12)
    np.testing.assert_allclose(norms_from_rows(a, g, "auto"), explicit, rtol=1e-12)


def test_bigrec_effort_equals_per_sample_loop(llama_dir):
    target = bigrec_target(str(llama_dir), TITLES, max_tokens=96)
    assert target.block_name.endswith("layers.1.self_attn.v_proj.lora_B.default")  # the last layer's
    assert tuple(target.block.weight.shape) == (32, 8)                         # d_out x r
    samples = tiny_samples(9, N_ITEMS, seed=1, max_hist=6)                      # empty, 1- and 2-item histories
    loop = per_sample_norm_loop(target.sample_losses, target.block,
                                [target.collate(samples.subset([i])) for i in range(len(samples))])
    assert np.all(loop > 0)
    batch = target.collate(samples)
    for method in ("direct", "ghost"):
        got = batch_grad_norms(target.sample_losses, target.block, target.taps, batch, method)
        np.testing.assert_allclose(got, loop, rtol=1e-4)
    # deterministic: eval mode switches LoRA dropout off, so a second pass gives the same bits
    assert target.norms(samples).tobytes() == target.norms(samples).tobytes()


def test_effort_on_a_wide_block_by_name(llama_dir):
    target = bigrec_target(str(llama_dir), TITLES, block="layers.0.mlp.down_proj", max_tokens=96)
    samples = tiny_samples(5, N_ITEMS, seed=2, max_hist=4)
    loop = per_sample_norm_loop(target.sample_losses, target.block,
                                [target.collate(samples.subset([i])) for i in range(len(samples))])
    np.testing.assert_allclose(target.norms(samples), loop, rtol=1e-4)


def test_unknown_block_names_the_choices(llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    with pytest.raises(DealrecError, match="no module match.*Linear modules include"):
        find_linear(model, "no_such_proj")
    with pytest.raises(DealrecError, match="not a Linear"):
        find_linear(model, "model.layers.0.input_layernorm")


def test_length_sorted_sub_batches_give_the_same_norms(llama_dir):
    from dealrec.influence import padding_groups

    groups = padding_groups(np.array([3, 3, 4, 10, 11, 30]))
    assert [list(g) for g in groups] == [[0, 1, 2], [3, 4], [5]]
    target = bigrec_target(str(llama_dir), TITLES, max_tokens=96)
    samples = tiny_samples(12, N_ITEMS, seed=6, max_hist=8)
    whole = batch_grad_norms(target.sample_losses, target.block, target.taps, target.collate(samples))
    np.testing.assert_allclose(target.norms(samples), whole, rtol=1e-5)


def test_tiger_effort_equals_per_sample_loop(tmp_path):
    from dealrec.effort import tiger_target
    from finetune.rqvae import semantic_ids_from_codes
    from finetune.tiger import TigerConfig, TigerModel, save_tiger

    codes = np.random.default_rng(0).integers(0, 4, size=(N_ITEMS, 3))
    sem, _ = semantic_ids_from_codes(codes, 4)
    cfg = TigerConfig(d_model=16, d_ff=32, num_layers=1, num_decoder_layers=2, num_heads=2, d_kv=8,
                      dropout=0.1, max_history_items=5)
    save_tiger(TigerModel(cfg, sem, seed=0), tmp_path / "tiger")
    target = tiger_target(str(tmp_path / "tiger"))
    assert target.block_name == "t5.decoder.block.1.layer.0.SelfAttention.v"   # the last decoder layer's
    samples = tiny_samples(10, N_ITEMS, seed=3, max_hist=8)
    loop = per_sample_norm_loop(target.sample_losses, target.block,
                                [target.collate(samples.subset([i])) for i in range(len(samples))])
    assert np.all(loop > 0)
    np.testing.assert_allclose(target.norms(samples), loop, rtol=1e-4)
    assert target.norms(samples).tobytes() == target.norms(samples).tobytes()  # eval mode: no dropout


def test_bigrec_effort_scores_the_loss_that_finetune_bigrec_trains(llama_dir):
    """One definition: effort's labelled tokens are the trainer's (``BigrecConfig.loss_on``)."""
    from finetune.bigrec import BigrecConfig
    from finetune.llm import load_causal_lm
    from finetune.prompts import PromptTemplate, encode_example

    samples = tiny_samples(5, N_ITEMS, seed=2, max_hist=4)
    _, tokenizer = load_causal_lm(str(llama_dir))
    default = bigrec_target(str(llama_dir), TITLES, max_tokens=96)
    assert default.info["loss_on"] == BigrecConfig.loss_on == "all"
    batch = default.collate(samples)
    for i, (h, t) in enumerate(zip(samples.history, samples.target)):
        want = encode_example(tokenizer, [TITLES[j] for j in h], TITLES[t], PromptTemplate(), 96, BigrecConfig.loss_on)
        n = len(want["labels"])
        assert batch["labels"][i, :n].tolist() == want["labels"]
    response = bigrec_target(str(llama_dir), TITLES, max_tokens=96, loss_on="response")
    assert (response.collate(samples)["labels"] != -100).sum() < (batch["labels"] != -100).sum()
    assert not np.allclose(response.norms(samples), default.norms(samples))
    with pytest.raises(DealrecError, match="loss_on"):
        bigrec_target(str(llama_dir), TITLES, loss_on="prompt")
