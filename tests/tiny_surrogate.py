"""A tiny sequential recommender that fills the surrogate contract, for the scoring tests.

One causal self-attention layer whose output projection is the influence block, then a
position-wise feed-forward and a full softmax over the items. Left padding, positions counted
from the right and a key mask make every sample's loss independent of its batch (the contract).
A BOS token lets a sample with an empty history still predict its target.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from dealrec_core.data import Samples, samples_table, write_samples
from surrogates.base import save_surrogate
from surrogates.registry import build_surrogate


class TinySurrogate(nn.Module):
    def __init__(self, n_items: int, dim: int = 8, max_len: int = 10, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.n_items, self.max_len = n_items, max_len
        self.bos = n_items + 1
        self.item_emb = nn.Embedding(n_items + 2, dim, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)          # the influence block
        self.norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def _pad(self, rows: list[np.ndarray]) -> torch.Tensor:
        width = max(len(r) for r in rows)
        out = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            if len(r):
                out[i, width - len(r):] = r
        return torch.from_numpy(out)

    def collate(self, samples: Samples) -> dict:
        inputs, labels = [], []
        for h, t in zip(samples.history, samples.target):
            seq = np.concatenate([[self.bos], h, [t]]).astype(np.int64)[-(self.max_len + 1):]
            inputs.append(seq[:-1])
            labels.append(seq[1:])
        return {"input": self._pad(inputs), "labels": self._pad(labels),
                "sample_id": torch.from_numpy(np.asarray(samples.sample_id, dtype=np.int64))}

    def collate_histories(self, histories):
        return {"input": self._pad([np.concatenate([[self.bos], h]).astype(np.int64)[-self.max_len:]
                                    for h in histories])}

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        b, width = x.shape
        pos = torch.arange(width - 1, -1, -1).clamp(max=self.max_len - 1)  # counted from the right
        h = self.item_emb(x) + self.pos_emb(pos)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        att = (q @ k.transpose(1, 2)) / q.shape[-1] ** 0.5
        allowed = torch.tril(torch.ones(width, width, dtype=torch.bool)) & (x != 0).unsqueeze(1)
        allowed = allowed | torch.eye(width, dtype=torch.bool)  # padding rows see themselves: no NaN
        att = att.masked_fill(~allowed, float("-inf")).softmax(-1)
        h = self.norm(h + self.out(att @ v))
        return h + self.ff(h)

    def sample_losses(self, batch: dict) -> torch.Tensor:
        h = self._hidden(batch["input"])
        logits = h @ self.item_emb.weight[1:self.n_items + 1].T
        labels = batch["labels"]
        mask = labels != 0
        ce = nn.functional.cross_entropy(logits.reshape(-1, self.n_items), (labels - 1).clamp(min=0).reshape(-1),
                                         reduction="none").reshape(labels.shape)
        return (ce * mask).sum(1) / mask.sum(1)

    def full_sort_scores(self, batch):
        h = self._hidden(batch["input"])[:, -1]
        return torch.cat([torch.full((h.shape[0], 1), -1e9, dtype=h.dtype), h @ self.item_emb.weight[1:self.n_items + 1].T], 1)

    def influence_block(self) -> nn.Linear:
        return self.out


def tiny_samples(n: int = 40, n_items: int = 30, seed: int = 0, max_hist: int = 12) -> Samples:
    """Random samples with histories of length 0..max_hist (several empty and one-item ones)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_hist + 1, size=n)
    lengths[:3] = [0, 1, 2]
    hist = [rng.integers(1, n_items + 1, size=k).astype(np.int32) for k in lengths]
    target = rng.integers(1, n_items + 1, size=n).astype(np.int32)
    sample_id = (np.arange(n, dtype=np.int64) * 7 + 3)  # ids that are not row numbers
    return Samples(sample_id, sample_id + 1000, hist, target)


def write_tiny_prepared(root: Path, samples: Samples, n_items: int, shard_size: int = 16) -> Path:
    """A prepared data folder (samples shards + items) for the command-level tests."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    write_samples(samples_table(samples.sample_id, samples.user, samples.history, samples.target),
                  root / "samples", shard_size=shard_size)
    items = pa.table({"item": pa.array(np.arange(1, n_items + 1, dtype=np.int32)),
                      "title": [f"Item number {i}" for i in range(1, n_items + 1)]})
    pq.write_table(items, root / "items.parquet")
    return root


def save_tiny_sasrec(folder: Path, n_items: int, max_len: int, seed: int = 1, **options) -> Path:
    """A tiny untrained SASRec (hidden 8, one block of two heads, no dropout) saved as a surrogate folder."""
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(hidden=8, n_blocks=1, n_heads=2, ffn_hidden=16, max_len=max_len, dropout=0.0, init_std=0.3,
                  seed=seed)
    save_surrogate(build_surrogate("sasrec", n_items=n_items, **{**config, **options}), folder)
    return folder
