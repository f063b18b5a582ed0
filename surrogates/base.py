"""The surrogate contract: what every small recommender provides (SASRec, in sasrec.py, is the one built in).

The trainer, the evaluator and the scoring engine only talk to a surrogate through this
class, so adding a model means one new file plus one line in ``SURROGATES``.

- ``collate(samples)``: a batch dict of tensors for training samples (with ``sample_id``);
- ``collate_histories(histories)``: a batch dict for scoring the next item after each history;
- ``sample_losses(batch) -> [B]``: each sample's own mean loss over its positions. It must
  not depend on the other samples of the batch or on padding, and must be a pure function of
  the parameters and the batch (no randomness in eval mode), so influence scores are the same
  whatever the batching and reproduce bit for bit;
- ``full_sort_scores(batch) -> [B, n_items + 1]``: a score for every item id (0 is padding);
- ``influence_block() -> nn.Linear``: the layer that influence puts its hooks on;
- ``sample_weights(batch) -> [B]`` (optional, default all ones): each sample's weight in the
  training objective when every predicted position weighs the same (for SASRec: the number
  of positions its mean loss averages). Influence's ``v`` is the gradient of the risk the
  surrogate was trained on, so it needs these weights (see docs/engine.md, "Which risk").

Checkpoints are ``model.safetensors`` plus ``config.json`` (never pickles).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from dealrec_core.data import Samples, atomic_file, write_json_atomic
from dealrec_core.devices import to_device
from dealrec_core.errors import DealrecError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class SurrogateConfig:
    """Fields every surrogate has; each model subclasses this with its own hyper-parameters."""

    n_items: int = 0          # real items are 1..n_items; tables are sized n_items + 1 (+ specials)
    max_len: int = 50         # the most recent max_len positions are kept
    seed: int = 0             # for initialisation and for deterministic negatives

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SurrogateConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise DealrecError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
        return cls(**d)


class Surrogate(nn.Module):
    """Base class of the surrogate models (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[SurrogateConfig]] = SurrogateConfig

    def __init__(self, config: SurrogateConfig):
        super().__init__()
        self.config = config

    # ---- the contract -------------------------------------------------------------------

    def collate(self, samples: Samples, **kwargs) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def collate_histories(self, histories: list[np.ndarray]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def sample_losses(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def full_sort_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def influence_block(self) -> nn.Linear:
        raise NotImplementedError

    def sample_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each sample's weight in the position-weighted training risk; one position each by default."""
        return torch.ones(len(batch["sample_id"]), dtype=torch.float64)

    # ---- conveniences shared by all models -------------------------------------------------

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The objective the trainer minimises; by default the mean of the sample losses."""
        return self.sample_losses(batch).mean()

    @property
    def device(self) -> torch.device:
        """Where the model's weights are; its batches are moved there."""
        return next(self.parameters()).device

    @torch.no_grad()
    def score_histories(self, histories: list[np.ndarray]) -> torch.Tensor:
        """Scores of every item after each history (on the host): the ``score_fn`` of ``evaluate_scorer``."""
        was_training = self.training
        self.eval()
        try:
            return self.full_sort_scores(to_device(self.collate_histories(histories), self.device)).cpu()
        finally:
            self.train(was_training)


# Filled by the model modules at import time (see the bottom of this file).
SURROGATES: dict[str, type[Surrogate]] = {}


def surrogate_class(name: str) -> type[Surrogate]:
    if name not in SURROGATES:
        raise DealrecError(f"unknown surrogate model {name!r} (choose from {', '.join(sorted(SURROGATES))})")
    return SURROGATES[name]


def build_surrogate(name: str, **config_fields) -> Surrogate:
    cls = surrogate_class(name)
    return cls(cls.config_class(**config_fields))


def save_surrogate(model: Surrogate, out_dir: str | Path) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``out_dir`` (which must exist)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_file(out_dir / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"model": model.name})
    write_json_atomic(out_dir / CONFIG_FILE, {"model": model.name, "config": model.config.to_dict()})


def check_surrogate_fits(model_dir: str | Path, n_items: int, data="the data", option: str = "--surrogate") -> None:
    """Refuse, in one line naming the surrogate folder, a surrogate whose item table is smaller than the
    data's catalogue (it would fail with an index error deep in scoring). Reads only ``config.json``,
    so it can run before any output folder is created."""
    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_FILE
    for p in (config_path, model_dir / WEIGHTS_FILE):
        if not p.exists():
            raise DealrecError(f"{p}: missing (is {model_dir} a trained surrogate folder?) ({option})")
    try:
        trained = json.loads(config_path.read_text(encoding="utf-8"))["config"]["n_items"]
    except (ValueError, KeyError, TypeError) as e:
        raise DealrecError(f"{config_path}: not a surrogate config ({type(e).__name__}: {e}) ({option})") from None
    if isinstance(trained, bool) or not isinstance(trained, int):
        raise DealrecError(f"{config_path}: config.n_items is not an integer ({option})")
    if trained < n_items:
        raise DealrecError(f"{model_dir}: this surrogate knows items 1..{trained:,} but {data} has item ids up "
                           f"to {n_items:,}: it was trained on a smaller catalogue ({option}: give one trained on "
                           f"this data)")


def load_surrogate(model_dir: str | Path, map_location: str = "cpu") -> Surrogate:
    """Rebuild a surrogate from a folder written by ``save_surrogate``; returned in eval mode."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    config_path, weights_path = model_dir / CONFIG_FILE, model_dir / WEIGHTS_FILE
    for p in (config_path, weights_path):
        if not p.exists():
            raise DealrecError(f"{p}: missing (is {model_dir} a trained surrogate folder?)")
    try:
        meta = json.loads(config_path.read_text())
        name, fields = meta["model"], meta["config"]
    except (ValueError, KeyError, TypeError) as e:
        raise DealrecError(f"{config_path}: not a surrogate config ({type(e).__name__}: {e})") from None
    cls = surrogate_class(name)
    model = cls(cls.config_class.from_dict(fields))
    state = load_file(str(weights_path), device=map_location)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DealrecError(f"{weights_path}: weights do not match the config "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


# The built-in models register themselves in SURROGATES when their module is imported;
# importing them here makes ``from surrogates.base import SURROGATES`` see all of them.
# (A plain ``import`` also works when a model module is imported first: it then finds the
# partly initialised module and the model registers itself when its module finishes.)
import surrogates.sasrec  # noqa: E402,F401
