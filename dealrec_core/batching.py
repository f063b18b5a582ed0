"""Padding: ragged rows of ids to one rectangular batch, written once for every model.

- ``pad_rows(rows, value, side)``: an ``int64 [B, width]`` array, ``width`` the longest row (at least
  ``min_width``). SASRec's item sequences and TIGER's token rows use it with right padding.
- ``pad_batch(sequences, pad_id, side, labels)``: a causal LM's batch (``input_ids``,
  ``attention_mask``, ``labels`` padded with -100, ``position_ids`` counting real tokens only), as
  BIGRec trains (right padding), generates and embeds (left padding), and as its effort target scores.

Right padding keeps a row's real tokens at positions ``0..n-1``, where causal attention never lets
them see the padding: a sample's numbers do not depend on the batch it is in.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

SIDES = ("right", "left")
IGNORE_INDEX = -100   # the label of a token without a loss (torch's cross_entropy default)


def pad_rows(rows: Sequence[Sequence[int]], value: int = 0, side: str = "right", min_width: int = 1) -> np.ndarray:
    """``rows`` as one ``int64 [len(rows), width]`` array filled with ``value``: each row at the start
    (``side="right"``, the padding after it) or at the end (``side="left"``). ``width`` is the longest
    row's length, and at least ``min_width`` (so that no rows, or only empty ones, still give a column)."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {', '.join(SIDES)}, not {side!r}")
    width = max([min_width, *(len(r) for r in rows)])
    out = np.full((len(rows), width), value, dtype=np.int64)
    for i, r in enumerate(rows):
        if len(r):
            if side == "left":
                out[i, width - len(r):] = r
            else:
                out[i, :len(r)] = r
    return out


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right",
              labels: Sequence[Sequence[int]] | None = None, position_ids: bool = True) -> dict[str, torch.Tensor]:
    """Token id lists as a causal LM's batch of ``torch.long`` tensors: ``input_ids`` (padded with
    ``pad_id``), ``attention_mask`` (1 on real tokens), ``labels`` when given (padded with -100), and
    with ``position_ids`` the position of each token among its row's real tokens (0 on padding), which
    makes left padding safe for models that would otherwise count the padding."""
    ids = torch.from_numpy(pad_rows(sequences, pad_id, side, min_width=0))
    mask = torch.from_numpy(pad_rows([np.ones(len(s), dtype=np.int64) for s in sequences], 0, side, min_width=0))
    out = {"input_ids": ids, "attention_mask": mask}
    if position_ids:
        out["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
    if labels is not None:
        out["labels"] = torch.from_numpy(pad_rows(labels, IGNORE_INDEX, side, min_width=ids.shape[1]))
    return out
