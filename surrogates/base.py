"""The surrogate contract: what every small recommender provides (SASRec, BERT4Rec, DCRec).

A surrogate is a ``dealrec_core.tasks.ScoringTask`` (the contract the engine scores with, shared
with the effort targets) plus what training and evaluation need. The trainer, the evaluator and
the scoring engine only talk to a surrogate through this class, so adding a model is one new file
(a ``Surrogate`` subclass that registers itself, ``class SASRec(Surrogate, name="sasrec")``) plus
its line in ``surrogates/registry.py``, which imports the built-in models and finds them by name.

- ``collate(samples)``: the scoring batch dict of training samples (with ``sample_id``);
- ``training_batch(samples, round_)``: the trainer's batch for epoch ``round_`` (default: ``collate``);
  a model whose training draws at random (sampled negatives, cloze masks) keys the draws by
  ``(seed, round_, sample_id, position)``, so an epoch's batches are a pure function of their samples;
- ``collate_histories(histories)``: a batch dict for scoring the next item after each history;
- ``sample_losses(batch) -> [B]``: each sample's own loss. It must not depend on the other samples
  of the batch or on padding, and must be a pure function of the parameters and the batch (no
  randomness in eval mode), so influence scores are the same whatever the batching and reproduce
  bit for bit;
- ``training_loss(batch, weighting) -> scalar``: what the trainer minimises; ``weighting`` is
  ``position`` (every predicted position weighs the same) or ``sample`` (every sample does);
- ``full_sort_scores(batch) -> [B, n_items + 1]``: a score for every item id (0 is padding);
- ``influence_block() -> nn.Linear``: the layer that influence puts its hooks on (``named_block``
  gives it with its module name);
- ``sample_weights(batch) -> [B]``: each sample's weight in the ``position``-weighted training
  risk (for SASRec: the number of positions its mean loss averages). Influence's ``v`` is the
  gradient of the risk the surrogate was trained on, so it needs these weights (see
  docs/engine.md, "Which risk");
- ``prepare_training(samples)``: called once by the trainer with every training sample before the
  first epoch (default: nothing); a model that builds structures from the data (DCRec's item graphs)
  builds them here, as buffers saved with the weights;
- ``options``: the config fields a user may set (``dealrec train-surrogate``'s model options), each
  with the help text in its dataclass field's ``metadata["help"]``.

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
from dealrec_core.tasks import Registry, ScoringTask
from surrogates.config import WEIGHTINGS

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"   # checkpoints/epoch-NNN/: the weights of validated epochs before the best one


def option(default, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A config field that ``dealrec train-surrogate`` offers as ``--name`` (its help, its choices)."""
    metadata = {"help": help, **({"choices": tuple(choices)} if choices else {})}
    return dataclasses.field(default=default, metadata=metadata)


@dataclass
class SurrogateConfig:
    """Fields every surrogate has; each model subclasses this with its own hyper-parameters."""

    n_items: int = 0          # real items are 1..n_items; tables are sized n_items + 1 (+ specials)
    max_len: int = option(50, "Most recent positions kept.")   # the most recent max_len positions are kept
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

    @classmethod
    def option_fields(cls) -> tuple[dataclasses.Field, ...]:
        """The fields a user may set: those whose metadata carries a ``help`` text."""
        return tuple(f for f in dataclasses.fields(cls) if "help" in f.metadata)


# Every surrogate class registers here when its module is imported (``surrogates/registry.py``
# imports the built-in ones and looks models up by name).
SURROGATES = Registry("surrogate model")


class Surrogate(nn.Module, ScoringTask):
    """Base class of the surrogate models (see the module docstring for the contract)."""

    registry = SURROGATES
    config_class: ClassVar[type[SurrogateConfig]] = SurrogateConfig
    # The trainer's defaults for this model (TrainConfig's batching and ce_chunk left at None): batches of
    # similar length, and the full softmax by blocks of items on the CPU, where they were measured to train
    # as good a model faster (docs/surrogates.md); random batches and one product elsewhere.
    default_batching: ClassVar[str] = "random"
    ce_blocks_on_cpu: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.options = tuple(f.name for f in cls.config_class.option_fields())

    def __init__(self, config: SurrogateConfig):
        super().__init__()
        self.config = config
        # set by the trainer (--ce-chunk) and the influence capture on the CPU, first-order passes only: the
        # full-softmax loss a block of this many items at a time (surrogates/softmax.py); 0: one product
        # (what a second derivative needs). Not part of the model: never saved.
        self.ce_chunk = 0

    def supports_ce_chunk(self) -> bool:
        """Whether the training loss is a full softmax over the items that ``ce_chunk`` can compute by blocks."""
        return False

    # ---- the contract -------------------------------------------------------------------

    def collate(self, samples: Samples) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def training_batch(self, samples: Samples, round_: int) -> dict[str, torch.Tensor]:
        """The trainer's batch in epoch ``round_``; by default the scoring batch."""
        return self.collate(samples)

    def prepare_training(self, samples: Samples) -> None:
        """Build what the model derives from the training data (nothing by default)."""

    def collate_histories(self, histories: list[np.ndarray]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def sample_losses(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def full_sort_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def influence_block(self) -> nn.Linear:
        raise NotImplementedError

    def named_block(self) -> tuple[str, nn.Linear]:
        block = self.influence_block()
        return next(name for name, module in self.named_modules() if module is block), block

    def sample_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each sample's weight in the position-weighted training risk; one position each by default."""
        return torch.ones(len(batch["sample_id"]), dtype=torch.float64)

    def training_loss(self, batch: dict[str, torch.Tensor], weighting: str = "position") -> torch.Tensor:
        """The objective the trainer minimises: by default (``position``) the mean of the sample losses
        weighted by ``sample_weights``; ``sample``: their plain mean."""
        check_weighting(weighting)
        losses = self.sample_losses(batch)
        if weighting == "sample":
            return losses.mean()
        w = self.sample_weights(batch).to(losses.dtype)
        return (losses * w).sum() / w.sum().clamp(min=1e-12)

    # ---- conveniences shared by all models -------------------------------------------------

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


def check_weighting(weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise DealrecError(f"unknown weighting {weighting!r} (choose from {', '.join(WEIGHTINGS)})")


def save_surrogate(model: Surrogate, out_dir: str | Path, state: dict | None = None) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``out_dir`` (which must exist); ``state``: other
    weights of the same model (a kept epoch's ``state_dict``) instead of the model's own."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    state = {k: v.detach().contiguous().cpu() for k, v in (model.state_dict() if state is None else state).items()}
    with atomic_file(out_dir / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"model": model.name})
    write_json_atomic(out_dir / CONFIG_FILE, {"model": model.name, "config": model.config.to_dict()})


def checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:03d}"


def kept_checkpoints(model_dir: str | Path) -> list[Path]:
    """The surrogate folders of the epochs kept before the best one (``train-surrogate --checkpoints``), oldest
    first; empty for a surrogate trained with ``--checkpoints 1`` or before the option. Each is a surrogate
    folder of its own (``model.safetensors``, ``config.json``)."""
    root = Path(model_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("epoch-")
                  and (p / WEIGHTS_FILE).is_file() and (p / CONFIG_FILE).is_file())


def check_surrogate_fits(model_dir: str | Path, n_items: int, data="the data", option: str = "--surrogate") -> None:
    """Refuse, in one line naming the surrogate folder, a surrogate whose item table is smaller than the
    data's catalogue (it would fail with an index error deep in scoring). Reads only ``config.json``,
    so it can run before any output folder is created."""
    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_FILE
    try:
        trained = read_surrogate_config(model_dir, option)[1]["n_items"]
    except KeyError as e:
        raise DealrecError(f"{config_path}: not a surrogate config (KeyError: {e}) ({option})") from None
    if isinstance(trained, bool) or not isinstance(trained, int):
        raise DealrecError(f"{config_path}: config.n_items is not an integer ({option})")
    if trained < n_items:
        raise DealrecError(f"{model_dir}: this surrogate knows items 1..{trained:,} but {data} has item ids up "
                           f"to {n_items:,}: it was trained on a smaller catalogue ({option}: give one trained on "
                           f"this data)")


def read_surrogate_config(model_dir: str | Path, option: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(model name, config fields)`` of a surrogate folder, from its ``config.json`` alone (no torch work);
    a folder that is not a trained surrogate is one line naming the file (and ``option`` when given)."""
    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_FILE
    which = f" ({option})" if option else ""
    for p in (config_path, model_dir / WEIGHTS_FILE):
        if not p.exists():
            raise DealrecError(f"{p}: missing (is {model_dir} a trained surrogate folder?){which}")
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
        name, fields = meta["model"], meta["config"]
        if not isinstance(name, str) or not isinstance(fields, dict):
            raise TypeError("model must be a name and config an object")
    except (ValueError, KeyError, TypeError) as e:
        raise DealrecError(f"{config_path}: not a surrogate config ({type(e).__name__}: {e}){which}") from None
    return name, fields
