"""The scoring-task contract on every registered effort target (TIGER, a causal LM with LoRA), where it applies:
a sample's loss does not depend on its batch, scores are deterministic, an empty history has a real loss,
the batched gradient norms equal a per-sample autograd loop, and the options a target declares are
``dealrec score``'s. (The surrogates' share: test_surrogate_contract.py.)"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dealrec.effort import EFFORT_TARGETS, BigrecTarget, TigerTarget, per_sample_norm_loop
from dealrec.score import ScoreConfig
from dealrec_core.data import Samples
from dealrec_core.errors import DealrecError
from tiny_lm import make_tiny_causal_lm
from tiny_surrogate import tiny_samples

N_ITEMS = 12
TITLES = [""] + [f"Quest of the {w} Kingdom" for w in
                 ["Red", "Blue", "Green", "Silver", "Iron", "Golden", "Shadow", "Crystal", "Storm", "Ember", "Frost",
                  "Night"]]


def _tiger(tmp_path_factory):
    from finetune.rqvae import semantic_ids_from_codes
    from finetune.tiger import TigerConfig, TigerModel

    sem, _ = semantic_ids_from_codes(np.random.default_rng(0).integers(0, 4, size=(N_ITEMS, 3)), 4)
    config = TigerConfig(d_model=16, d_ff=32, num_layers=1, num_decoder_layers=2, num_heads=2, d_kv=8, dropout=0.1,
                         max_history_items=5)
    return TigerTarget(TigerModel(config, sem, seed=0))


def _bigrec(tmp_path_factory):
    llm = make_tiny_causal_lm("llama", TITLES[1:], tmp_path_factory.mktemp("llm") / "llama", hidden=32, layers=2)
    return BigrecTarget(str(llm), TITLES, max_tokens=96)


FACTORIES = {"tiger": _tiger, "bigrec": _bigrec}
NAMES = sorted(FACTORIES)


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    built = {}

    def get(name):
        if name not in built:
            built[name] = FACTORIES[name](tmp_path_factory)
        return built[name]
    return get


@pytest.fixture(scope="module")
def samples():
    return tiny_samples(9, N_ITEMS, seed=1, max_hist=6)   # empty, one- and two-item histories included


def test_every_registered_target_is_checked():
    assert set(FACTORIES) == set(EFFORT_TARGETS), "give every registered effort target a tiny factory"


@pytest.mark.parametrize("name", NAMES)
def test_a_sample_loss_does_not_depend_on_its_batch(name, targets, samples):
    target = targets(name)
    with torch.no_grad():
        together = target.sample_losses(target.collate(samples))
        alone = torch.cat([target.sample_losses(target.collate(samples.subset([i]))) for i in range(len(samples))])
        reversed_ = target.sample_losses(target.collate(samples.subset(np.arange(len(samples))[::-1])))
        again = target.sample_losses(target.collate(samples))
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reversed_.flip(0), together, atol=1e-5, rtol=1e-5)
    assert torch.equal(again, together)   # eval mode: no dropout, the same bits


@pytest.mark.parametrize("name", NAMES)
def test_an_empty_history_has_a_real_loss_and_effort(name, targets):
    target = targets(name)
    empty = Samples(np.array([0]), np.array([0]), [np.zeros(0, np.int32)], np.array([5], np.int32))
    loss = target.sample_losses(target.collate(empty))
    assert torch.isfinite(loss).all() and (loss > 0).all()
    assert target.norms(empty)[0] > 0


@pytest.mark.parametrize("name", NAMES)
def test_batched_norms_equal_the_per_sample_loop(name, targets, samples):
    target = targets(name)
    block_name, block = target.named_block()
    assert block is target.block and block_name == target.info["block"]
    loop = per_sample_norm_loop(target.sample_losses, block,
                                [target.collate(samples.subset([i])) for i in range(len(samples))])
    assert np.all(loop > 0)
    np.testing.assert_allclose(target.norms(samples), loop, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_declared_options_are_scores(name):
    cls = EFFORT_TARGETS.get(name)
    fields = {f.name for f in dataclasses.fields(ScoreConfig)}
    assert cls.name == name and set(cls.options) <= fields and set(cls.required) <= set(cls.options)
    for option in cls.required:   # a config without a required option is refused in one line
        config = ScoreConfig(target=name, **{option: None})
        with pytest.raises(DealrecError, match=f"--{option.replace('_', '-')}"):
            config.check()
    with pytest.raises(DealrecError, match="unknown effort target 'nope' \\(choose from bigrec, tiger\\)"):
        EFFORT_TARGETS.get("nope")
