"""The scoring-task contract: what any model that gives per-sample losses to the engine provides.

Surrogates (for influence) and target models (for effort) are the same kind of thing to the engine
(after Kronfluence's ``Task``): they collate samples into a batch, give every sample of a batch its own
loss, and name the one ``nn.Linear`` whose weight gradient is scored. A model fills this contract and
registers itself by name where it is defined::

    class SASRec(Surrogate, name="sasrec"): ...
    class TigerTarget(EffortTarget, name="tiger"): ...

Each family (``surrogates.base.Surrogate``, ``dealrec.effort.EffortTarget``) has its own
``Registry``; the engine and the commands find a model by name there, never by ``if name == ...``.

The contract, for a batch of ``B`` samples:

- ``collate(samples) -> dict``: the scoring batch of a ``dealrec_core.data.Samples``;
- ``sample_losses(batch) -> Tensor[B]``: each sample's own loss. It must not depend on the other
  samples of the batch or on padding, and must be a pure function of the weights and the batch
  (no randomness at scoring time), so scores do not depend on batching and reproduce bit for bit;
  a sample with an empty history still gets a real (finite, positive) loss;
- ``named_block() -> (name, nn.Linear)``: the layer whose weight gradient is scored, applied once per
  forward pass to inputs shaped ``[batch, ..., features]`` (the engine's hooks rely on both);
- ``sample_weights(batch) -> Tensor[B]``: each sample's weight in the risk the model was trained on
  (all ones by default; influence's ``v`` is that risk's gradient: docs/engine.md, "Which risk");
- ``options``: the options the model accepts (a surrogate: its config fields; an effort target: the
  fields of ``dealrec score``'s config it reads).
"""
from __future__ import annotations

from typing import Any, ClassVar, Iterator

import torch

from dealrec_core.errors import DealrecError


class Registry:
    """Classes by name, in the order they registered; a lookup miss is one line listing the names."""

    def __init__(self, what: str):
        self.what = what   # "surrogate model", "effort target": the noun of the error message
        self._classes: dict[str, type] = {}

    def register(self, name: str, cls: type) -> None:
        if not name or not isinstance(name, str):
            raise TypeError(f"{cls.__name__}: a {self.what} needs a non-empty name")
        known = self._classes.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise TypeError(f"{self.what} name {name!r} is taken by {known.__module__}.{known.__qualname__}")
        self._classes[name] = cls   # the same class defined again (a module reloaded) replaces itself

    def get(self, name: str) -> type:
        if name not in self._classes:
            raise DealrecError(f"unknown {self.what} {name!r} (choose from {', '.join(sorted(self._classes))})")
        return self._classes[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._classes)

    # read like the dict it used to be (``SURROGATES["sasrec"]``, ``sorted(SURROGATES)``)
    def __getitem__(self, name: str) -> type:
        return self._classes[name]

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def items(self):
        return self._classes.items()


class ScoringTask:
    """Base of every model that gives per-sample losses to the engine (see the module docstring)."""

    registry: ClassVar[Registry | None] = None   # set by each family's base class
    name: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if name is not None:
            if cls.registry is None:
                raise TypeError(f"{cls.__name__}: no registry to register {name!r} in")
            cls.name = name
            cls.registry.register(name, cls)

    def collate(self, samples) -> dict:
        raise NotImplementedError

    def sample_losses(self, batch: dict):
        raise NotImplementedError

    def named_block(self):
        raise NotImplementedError

    def sample_weights(self, batch: dict):
        """Each sample's weight in the training risk; one each by default."""
        return torch.ones(batch_size(batch), dtype=torch.float64)


def batch_size(batch: dict) -> int:
    """The number of samples in a batch dict: the leading dimension of its first tensor."""
    for value in batch.values():
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape):
            return int(shape[0])
    raise DealrecError("a batch without tensors has no size")
