"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional Transformer trained with the cloze task.

A sample is a user's sequence ``history + [target]``; ids are 0 padding, ``1..n_items`` the items
and ``n_items + 1`` the ``[MASK]`` token.

- **Training** (``training_batch``, ``training_loss``): the most recent ``max_len`` items of the
  sequence, each replaced by ``[MASK]`` with probability ``mask_prob``; the model predicts the
  masked items (full-softmax cross-entropy over all items, tied input/output embeddings). With
  ``mask_last`` the last item (the target) is always masked too, so every training sequence also
  holds the next-item query that scoring asks (Sun et al. add samples that mask only the last item
  for the same reason); without it a sequence where no item was drawn masks its last one. The
  draws are a splitmix64 hash of (seed, round, sample_id, position), so an epoch's batch is a pure
  function of its samples, and the trainer's epoch is the round (fresh masks each epoch).
- **A sample's loss** (``sample_losses``, what influence differentiates): the loss of predicting its
  target at a ``[MASK]`` appended after its history (the most recent ``max_len - 1`` items), the
  query ``full_sort_scores`` ranks by. A sample with an empty history reads ``[MASK]`` alone and
  still has a real loss.
- **Padding invariance** by construction: right padding, attention only to real positions (a
  key mask; padded positions never reach a real one), position ids counted back from the
  sequence's end (the masked query always sits at position 0, the target's place in training),
  losses only at masked real positions.
- ``influence_block()``: the output projection of the last attention layer (a plain ``nn.Linear``,
  as SASRec's). Everything after it is position-wise, so only the ``[MASK]`` position's row has a
  gradient: one row per sample.
- ``sample_weights``: the expected number of masked positions of the sample's training sequence
  (``1 + mask_prob * (n - 1)`` with ``mask_last``, ``mask_prob * n + (1 - mask_prob) ** n``
  without), its weight in the position-weighted cloze objective (docs/engine.md, "Which risk").

Pre-LayerNorm blocks (as this project's SASRec; stable without warm-up) with GELU feed-forward,
learned positions and a final LayerNorm.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dealrec_core.batching import pad_rows
from dealrec_core.data import Samples
from dealrec_core.errors import DealrecError
from surrogates.base import Surrogate, option
from surrogates.sasrec import TransformerConfig, add_encoder, check_shape, init_weights, position_keys, sample_means
from surrogates.softmax import chunked_cross_entropy


@dataclass
class BERT4RecConfig(TransformerConfig):
    mask_prob: float = option(0.2, "Cloze task: the chance that each item of a training sequence is masked.")
    mask_last: bool = option(True, "Cloze task: always mask the last item (the next-item query scoring asks).")
    init_std: float = 0.02

    def __post_init__(self):
        check_shape(self)
        if not 0.0 <= self.mask_prob <= 1.0:
            raise DealrecError(f"mask_prob must be within [0, 1], got {self.mask_prob}")


class BERT4Rec(Surrogate, name="bert4rec"):
    config_class = BERT4RecConfig

    def __init__(self, config: BERT4RecConfig):
        super().__init__(config)
        self.mask = config.n_items + 1
        add_encoder(self, config, causal=False)
        init_weights(self, config.seed, config.init_std)

    # ---- batches -------------------------------------------------------------------------

    def _queries(self, histories) -> list[np.ndarray]:
        """Each history's most recent ``max_len - 1`` items followed by ``[MASK]``."""
        keep = self.config.max_len - 1
        return [np.append(np.asarray(h, dtype=np.int64)[-keep:] if keep else np.zeros(0, np.int64),
                          np.int64(self.mask)) for h in histories]

    def collate(self, samples: Samples) -> dict[str, torch.Tensor]:
        """Scoring batch: ``input_ids`` = history + [MASK], ``labels`` = the target at that mask."""
        inputs = self._queries(samples.history)
        return {"input_ids": torch.from_numpy(pad_rows(inputs, 0, "right")),
                "lengths": torch.as_tensor([len(x) for x in inputs], dtype=torch.long),
                "labels": torch.as_tensor(np.asarray(samples.target, dtype=np.int64)),
                "sample_id": torch.as_tensor(np.asarray(samples.sample_id, dtype=np.int64))}

    def training_batch(self, samples: Samples, round_: int) -> dict[str, torch.Tensor]:
        """Cloze batch: the most recent ``max_len`` items of history + [target], some replaced by [MASK];
        ``labels`` holds the masked items (0 elsewhere)."""
        cfg = self.config
        seqs = [np.append(np.asarray(h, dtype=np.int64), np.int64(t))[-cfg.max_len:]
                for h, t in zip(samples.history, samples.target)]
        items = pad_rows(seqs, 0, "right")
        real = items > 0
        lengths = real.sum(1)
        keys = position_keys(cfg.seed, round_, np.asarray(samples.sample_id), items.shape[1])
        masked = ((keys >> np.uint64(11)).astype(np.float64) * 2.0 ** -53 < cfg.mask_prob) & real
        last = np.zeros_like(real)
        last[np.arange(len(seqs)), lengths - 1] = True
        masked |= last & (cfg.mask_last | ~masked.any(1, keepdims=True))
        return {"input_ids": torch.from_numpy(np.where(masked, self.mask, items)),
                "labels": torch.from_numpy(np.where(masked, items, 0)),
                "sample_id": torch.as_tensor(np.asarray(samples.sample_id, dtype=np.int64))}

    def collate_histories(self, histories: list[np.ndarray]) -> dict[str, torch.Tensor]:
        inputs = self._queries(histories)
        return {"input_ids": torch.from_numpy(pad_rows(inputs, 0, "right")),
                "lengths": torch.as_tensor([len(x) for x in inputs], dtype=torch.long)}

    # ---- model -------------------------------------------------------------------------------

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, T, hidden]: every real position attends to every real position of its own row."""
        real = input_ids > 0
        lengths = real.sum(1, keepdim=True)
        pos = (lengths - 1 - torch.arange(input_ids.shape[1], device=input_ids.device)).clamp(min=0)
        x = self.emb_dropout(self.item_emb(input_ids) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x, real)
        return self.ln_final(x)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        logits = h @ self.item_emb.weight[: self.config.n_items + 1].T   # padding + real items, no [MASK]
        logits[:, 0] = float("-inf")  # padding is never a candidate
        return logits

    def _at_query(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        states = self.hidden_states(batch["input_ids"])
        return states[torch.arange(states.shape[0]), batch["lengths"] - 1]

    def _cross_entropy(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The full-softmax loss of each row of ``h``; by blocks of ``ce_chunk`` items when it is set and a gradient
        is wanted (surrogates/softmax.py: the same function)."""
        if self.ce_chunk and torch.is_grad_enabled():
            return chunked_cross_entropy(h, self.item_emb.weight[: self.config.n_items + 1], labels, self.ce_chunk)
        return F.cross_entropy(self._logits(h), labels, reduction="none")

    def supports_ce_chunk(self) -> bool:
        return True

    def sample_losses(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._cross_entropy(self._at_query(batch), batch["labels"])

    def full_sort_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._logits(self._at_query(batch))

    def training_loss(self, batch: dict[str, torch.Tensor], weighting: str = "position") -> torch.Tensor:
        """The cloze loss: every masked position alike (``position``) or every sample alike (``sample``)."""
        labels = batch["labels"]
        masked = labels > 0
        states = self.hidden_states(batch["input_ids"])
        losses = self._cross_entropy(states[masked], labels[masked])
        if weighting == "sample":
            return sample_means(losses, masked.nonzero()[:, 0], labels).mean()
        return losses.mean()

    def sample_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Expected masked positions of each sample's training sequence (``n`` items, at most max_len)."""
        n = batch["lengths"].to(torch.float64)   # history kept + 1 = the training sequence's length
        p = float(self.config.mask_prob)
        if self.config.mask_last:
            return 1.0 + p * (n - 1.0)
        return p * n + (1.0 - p) ** n

    def influence_block(self) -> nn.Linear:
        return self.blocks[-1].attn.out
