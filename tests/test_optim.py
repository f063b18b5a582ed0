"""The trainers' Adam (``dealrec_core.optim.adam``, the multi-tensor form) gives the weights of torch's
per-parameter Adam bit for bit, so every model trained before it keeps its bytes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import surrogates.train
from dealrec_core.optim import adam
from surrogates.registry import load_surrogate
from surrogates.train import TrainConfig, train_surrogate
from test_surrogate_train import TINY_MODEL, make_prepared


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(50, 12), nn.Linear(12, 24), nn.GELU(), nn.LayerNorm(24), nn.Linear(24, 50))


def _steps(model: nn.Module, optimizer, n_steps: int = 25, schedule=None) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    for _ in range(n_steps):
        x = torch.randint(0, 50, (16,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), torch.randint(0, 50, (16,), generator=gen))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("decoupled,weight_decay,scheduled", [
    (False, 0.0, False), (False, 0.01, False), (True, 0.1, True), (True, 0.0, False)])
def test_the_multi_tensor_adam_is_the_per_parameter_one_bit_for_bit(decoupled, weight_decay, scheduled):
    runs = []
    for make in (lambda ps: adam(ps, decoupled=decoupled, lr=3e-3, weight_decay=weight_decay),
                 lambda ps: (torch.optim.AdamW if decoupled else torch.optim.Adam)(
                     ps, lr=3e-3, weight_decay=weight_decay, foreach=False)):
        model = _model()
        params = list(model.parameters())
        groups = [{"params": [p for p in params if p.ndim >= 2]},   # as TIGER's: decay and no-decay groups
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        opt = make(groups)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10)) if scheduled else None
        runs.append(_steps(model, opt, schedule=schedule))
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert not torch.equal(runs[0][1], _model().state_dict()["1.weight"])   # the steps moved the weights


def test_the_optimizer_is_multi_tensor():
    opt = adam([nn.Parameter(torch.zeros(3))], lr=1e-3)
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["foreach"] is True
    assert isinstance(adam([nn.Parameter(torch.zeros(3))], decoupled=True, lr=1e-3), torch.optim.AdamW)


def test_a_surrogate_trains_to_the_same_bytes_as_with_the_per_parameter_adam(tmp_path, monkeypatch):
    prepared = make_prepared(tmp_path / "prepared")
    cfg = TrainConfig(lr=5e-3, batch_size=16, max_epochs=2, patience=2, seed=3, threads=1, progress=False)
    fields = {**TINY_MODEL, "dropout": 0.2}
    train_surrogate(prepared, "sasrec", tmp_path / "a", fields, cfg)
    monkeypatch.setattr(surrogates.train, "adam",
                        lambda params, **kw: torch.optim.Adam(params, foreach=False, **kw))
    train_surrogate(prepared, "sasrec", tmp_path / "b", fields, cfg)
    a, b = load_surrogate(tmp_path / "a").state_dict(), load_surrogate(tmp_path / "b").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
