"""SASRec (Kang & McAuley, 2018): next-item prediction with causal self-attention.

A sample is a user's sequence ``history + [target]``. The model reads
``[BOS] + history`` and predicts, at every position, the next item of the sequence, so a
sample with an empty history still has one real prediction (BOS -> target).

Padding invariance is exact by construction: sequences are padded on the RIGHT, attention
is causal (a real position never sees a padded one), position ids depend on the sample's
own length only, and losses are computed only at real positions. A sample's loss therefore
does not depend on the batch it sits in or on how much padding it gets.

Position ids count back from the sample's last input token by default (``from_end``, as the
original left-padded SASRec): the prediction of a user's most recent item, the one closest
in time to the validation and test periods, always sits at position 0, exactly where the
next-item query sits when scoring. ``from_start`` counts from the first token instead.

Losses:

- ``ce`` (default): full-softmax cross-entropy over all items at every position;
- ``bce``: the DEALRec reference's binary cross-entropy with one sampled negative per
  position. Negatives are a hash of (seed, sample_id, position, round), never fresh random
  draws, so ``sample_losses`` is a pure function of the parameters and the batch.

Attention uses plain ``nn.Linear`` modules for q/k/v/out (not ``nn.MultiheadAttention``,
whose fused path skips module hooks): influence hooks the last block's ``out``. The attention and
the block are shared with BERT4Rec (bidirectional) and DCRec (this encoder plus item graphs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dealrec_core.batching import pad_rows
from dealrec_core.data import Samples
from dealrec_core.errors import DealrecError
from dealrec_core.hashing import GOLDEN, mix64
from surrogates.base import Surrogate, SurrogateConfig, option
from surrogates.softmax import chunked_cross_entropy

LOSSES = ("ce", "bce")
POSITIONS = ("from_start", "from_end")


@dataclass
class TransformerConfig(SurrogateConfig):
    """The shape of a transformer over item sequences (SASRec's, BERT4Rec's, DCRec's encoder)."""

    hidden: int = option(64, "Hidden size.")
    n_blocks: int = option(2, "Transformer blocks.")
    n_heads: int = option(2, "Attention heads.")
    ffn_hidden: int = option(256, "Feed-forward inner size.")
    dropout: float = option(0.3, "Dropout rate.")


@dataclass
class SASRecConfig(TransformerConfig):
    # "ce" (full softmax) or "bce" (one sampled negative)
    loss: str = option("ce", "ce: full-softmax cross-entropy; bce: one sampled negative (DEALRec reference).",
                       LOSSES)
    # position ids counted back from the last item (see the module docstring) or from the start
    positions: str = option("from_end", "Position ids counted back from the sequence's end (from_end) or from its "
                                        "start (from_start).", POSITIONS)
    init_std: float = 0.02

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise DealrecError(f"unknown SASRec loss {self.loss!r} (choose from {', '.join(LOSSES)})")
        if self.positions not in POSITIONS:
            raise DealrecError(f"unknown positions {self.positions!r} (choose from {', '.join(POSITIONS)})")
        check_shape(self)


def check_shape(cfg) -> None:
    """The checks every config of a transformer over item sequences needs (SASRec's, BERT4Rec's)."""
    if cfg.hidden % cfg.n_heads:
        raise DealrecError(f"hidden ({cfg.hidden}) must be a multiple of n_heads ({cfg.n_heads})")
    if cfg.max_len < 1:
        raise DealrecError("max_len must be at least 1")


class SelfAttention(nn.Module):
    """Multi-head self-attention of plain Linear layers: causal (SASRec), or bidirectional over the
    positions ``keys`` marks real (BERT4Rec: a real position never attends to padding)."""

    def __init__(self, hidden: int, n_heads: int, dropout: float, causal: bool = True):
        super().__init__()
        self.n_heads = n_heads
        self.causal = causal
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)  # the influence block of the last layer
        self.attn_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        b, t, h = x.shape
        d = h // self.n_heads

        def heads(y):
            return y.view(b, t, self.n_heads, d).transpose(1, 2)  # [B, heads, T, d]
        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        if self.causal:
            future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            att = att.masked_fill(future, float("-inf"))
        if keys is not None:   # [B, T] bool: the positions that may be attended to
            att = att.masked_fill(~keys[:, None, None, :], float("-inf"))
        att = att.softmax(-1)
        y = self.attn_dropout(att) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, h))


class Block(nn.Module):
    """Pre-LayerNorm transformer block (stable without warm-up at small sizes)."""

    def __init__(self, cfg: SASRecConfig, causal: bool = True):
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.hidden)
        self.attn = SelfAttention(cfg.hidden, cfg.n_heads, cfg.dropout, causal)
        self.ln_ffn = nn.LayerNorm(cfg.hidden)
        self.ffn_in = nn.Linear(cfg.hidden, cfg.ffn_hidden)
        self.ffn_out = nn.Linear(cfg.ffn_hidden, cfg.hidden)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln_attn(x), keys))
        return x + self.dropout(self.ffn_out(self.dropout(F.gelu(self.ffn_in(self.ln_ffn(x))))))


def position_keys(seed: int, round_: int, sample_id: np.ndarray, width: int) -> np.ndarray:
    """uint64 ``[B, width]``: a hash of (seed, round, sample_id, position), the key of every per-position
    draw of a training batch (SASRec's negatives, BERT4Rec's cloze masks)."""
    pos = np.arange(width, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        key = mix64(np.uint64(seed) * GOLDEN + np.uint64(round_))
        return mix64(key ^ mix64(np.asarray(sample_id).astype(np.uint64)[:, None] * np.uint64(1 << 8) + pos))


def hashed_negatives(seed: int, sample_id: np.ndarray, labels: np.ndarray, n_items: int,
                     round_: int = 0) -> np.ndarray:
    """One negative item per position, a pure function of (seed, round, sample_id, position).

    ``labels`` is [B, T] (0 = padding); the negative never equals the label it is paired with.
    """
    h = position_keys(seed, round_, sample_id, labels.shape[1])
    neg = (h % np.uint64(n_items)).astype(np.int64) + 1
    clash = neg == labels
    neg[clash] = neg[clash] % n_items + 1  # the next item id, wrapping around
    neg[labels == 0] = 0
    return neg


def sample_means(losses: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[B]``: the mean of each row's position losses (``rows``: the row of each loss; ``labels > 0``
    marks the positions that have one)."""
    sums = torch.zeros(labels.shape[0], dtype=losses.dtype, device=losses.device).index_add(0, rows, losses)
    return sums / (labels > 0).sum(1).clamp(min=1)


def add_encoder(model: nn.Module, cfg, causal: bool) -> None:
    """The item table (padding, items and one special token), learned positions, the blocks and a final
    LayerNorm, as ``model``'s modules (in this order: it fixes the initialisation's draws)."""
    if cfg.n_items < 1:
        raise DealrecError(f"{type(model).__name__} needs n_items >= 1")
    model.item_emb = nn.Embedding(cfg.n_items + 2, cfg.hidden, padding_idx=0)
    model.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
    model.emb_dropout = nn.Dropout(cfg.dropout)
    model.blocks = nn.ModuleList(Block(cfg, causal) for _ in range(cfg.n_blocks))
    model.ln_final = nn.LayerNorm(cfg.hidden)


def init_weights(model: nn.Module, seed: int, std: float) -> None:
    """normal(0, std) Linear and Embedding weights, zero biases, a zero padding row (``model.item_emb``),
    from a private generator: the initial weights depend on the seed only, not on global state."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std, generator=gen)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
        model.item_emb.weight[0].zero_()


class SASRec(Surrogate, name="sasrec"):
    config_class = SASRecConfig
    # measured on Games: 2.4x an epoch, the same or better validation NDCG@10 (docs/surrogates.md)
    default_batching = "bucketed"
    ce_blocks_on_cpu = True

    def __init__(self, config: SASRecConfig):
        super().__init__(config)
        cfg = config
        self.bos = cfg.n_items + 1
        # ids: 0 padding, 1..n_items items, n_items + 1 the begin-of-sequence token.
        # The same table scores the next item (tied input/output embeddings).
        add_encoder(self, cfg, causal=True)
        self._init_weights()

    def _init_weights(self) -> None:
        init_weights(self, self.config.seed, self.config.init_std)

    # ---- batches -------------------------------------------------------------------------

    def _pad(self, rows: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(pad_rows(rows, 0, "right"))   # padding id 0, at least one column

    def collate(self, samples: Samples, negative_round: int = 0) -> dict[str, torch.Tensor]:
        """Training batch: ``input_ids`` = [BOS] + history, ``labels`` = history + [target].

        Both keep the most recent ``max_len`` positions. ``negative_round`` changes the
        hashed negatives of the ``bce`` loss (the trainer passes the epoch); scoring uses 0.
        """
        L = self.config.max_len
        inputs, labels = [], []
        for hist, target in zip(samples.history, samples.target):
            seq = np.append(np.asarray(hist, dtype=np.int64), np.int64(target))
            inputs.append(np.concatenate([[self.bos], seq[:-1]])[-L:])
            labels.append(seq[-L:])
        batch = {
            "input_ids": self._pad(inputs),
            "labels": self._pad(labels),
            "sample_id": torch.as_tensor(np.asarray(samples.sample_id, dtype=np.int64)),
        }
        if self.config.loss == "bce":
            negs = hashed_negatives(self.config.seed, np.asarray(samples.sample_id), batch["labels"].numpy(),
                                    self.config.n_items, negative_round)
            batch["negatives"] = torch.from_numpy(negs)
        return batch

    def training_batch(self, samples: Samples, round_: int) -> dict[str, torch.Tensor]:
        return self.collate(samples, negative_round=round_)   # fresh bce negatives each epoch

    def collate_histories(self, histories: list[np.ndarray]) -> dict[str, torch.Tensor]:
        L = self.config.max_len
        inputs = [np.concatenate([[self.bos], np.asarray(h, dtype=np.int64)])[-L:] for h in histories]
        return {"input_ids": self._pad(inputs),
                "lengths": torch.as_tensor([len(x) for x in inputs], dtype=torch.long)}

    # ---- model -------------------------------------------------------------------------------

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, T, hidden] states; position t summarises input tokens 0..t."""
        b, t = input_ids.shape
        if self.config.positions == "from_start":
            pos = torch.arange(t, device=input_ids.device).expand(b, t)
        else:
            lengths = (input_ids > 0).sum(1, keepdim=True)
            pos = (lengths - 1 - torch.arange(t, device=input_ids.device)).clamp(min=0)
        x = self.emb_dropout(self.item_emb(input_ids) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.ln_final(x)

    def _item_table(self) -> torch.Tensor:
        return self.item_emb.weight[: self.config.n_items + 1]  # padding + real items, no BOS

    def position_losses(self, batch: dict[str, torch.Tensor],
                        states: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss at every real position, flattened, and the batch row each belongs to (``states``:
        the hidden states of the batch when the caller has them already)."""
        labels = batch["labels"]
        states = self.hidden_states(batch["input_ids"]) if states is None else states
        real = labels > 0
        rows = real.nonzero()[:, 0]
        h = states[real]            # [N, hidden]: only real positions ever reach the loss
        y = labels[real]
        table = self._item_table()
        if self.config.loss == "ce" and self.ce_chunk and torch.is_grad_enabled():
            losses = chunked_cross_entropy(h, table, y, self.ce_chunk)   # the same loss, by blocks of items
        elif self.config.loss == "ce":
            logits = h @ table.T
            logits[:, 0] = float("-inf")  # padding is never a candidate
            losses = F.cross_entropy(logits, y, reduction="none")
        else:
            neg = batch["negatives"][real]
            pos_logit = (h * table[y]).sum(-1)
            neg_logit = (h * table[neg]).sum(-1)
            losses = F.softplus(-pos_logit) + F.softplus(neg_logit)
        return losses, rows

    def supports_ce_chunk(self) -> bool:
        return self.config.loss == "ce"

    def sample_losses(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return sample_means(*self.position_losses(batch), batch["labels"])

    def sample_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The number of positions each sample's mean loss averages (its weight in ``position`` training)."""
        return (batch["labels"] > 0).sum(1).to(torch.float64)

    def training_loss(self, batch: dict[str, torch.Tensor], weighting: str = "position",
                      states: torch.Tensor | None = None) -> torch.Tensor:
        """``position``: every predicted item weighs the same (the usual SASRec objective);
        ``sample``: every sample weighs the same (the quantity influence is defined on)."""
        losses, rows = self.position_losses(batch, states)
        if weighting == "sample":
            return sample_means(losses, rows, batch["labels"]).mean()
        return losses.mean()

    def full_sort_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        states = self.hidden_states(batch["input_ids"])
        last = states[torch.arange(states.shape[0]), batch["lengths"] - 1]
        scores = last @ self._item_table().T
        scores[:, 0] = float("-inf")
        return scores

    def influence_block(self) -> nn.Linear:
        return self.blocks[-1].attn.out
