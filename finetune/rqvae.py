"""Semantic IDs: a residual-quantised VAE over item embeddings (TIGER, Rajput et al. 2023).

An MLP encoder maps an item's text embedding to a small latent; three codebooks quantise
it residually (level 1 quantises the latent, level 2 what level 1 left over, ...); an MLP
decoder reconstructs the embedding from the sum of the chosen codes. The loss is the
reconstruction error plus, per level, the codebook loss and the commitment loss
(``beta * ||r - sg(e)||^2``), with a straight-through gradient past the quantiser.

Codebooks start from k-means on the first latents (level by level, on the residuals), and
codes left unused are re-seeded from random residuals during the first half of training:
both keep codebook usage high, which keeps collisions rare.

An item's semantic ID is its three codes plus a fourth token that numbers the items
sharing the same three codes (0 for the first in item-id order), so every item gets a
unique 4-token ID.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dealrec_core.data import atomic_file, write_text_atomic
from dealrec_core.errors import DealrecError
from dealrec_core.optim import adam
from dealrec_core.threads import fixed_threads


@dataclass
class RQVAEConfig:
    levels: int = 3
    codebook_size: int = 256
    latent_dim: int = 32
    hidden_dims: tuple = (256, 128)
    beta: float = 0.25            # commitment weight
    epochs: int = 40
    batch_size: int = 1024
    lr: float = 1e-3
    kmeans_iters: int = 25
    reseed_dead_until: float = 0.5  # share of epochs during which unused codes are re-seeded
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "RQVAEConfig":
        d = dict(d)
        if "hidden_dims" in d:
            d["hidden_dims"] = tuple(d["hidden_dims"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _mlp(dims: list[int]) -> nn.Sequential:
    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means with k-means++-lite seeding (random distinct rows); returns ``[k, d]`` centres."""
    n = x.shape[0]
    if n >= k:
        centres = x[torch.randperm(n, generator=generator)[:k]].clone()
    else:  # fewer points than codes: repeat points with a little noise so codes stay distinct
        reps = x[torch.randint(0, n, (k,), generator=generator)]
        centres = reps + 1e-3 * torch.randn(reps.shape, generator=generator)
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


class RQVAE(nn.Module):
    def __init__(self, input_dim: int, config: RQVAEConfig):
        super().__init__()
        self.config = config
        self.input_dim = input_dim
        dims = [input_dim, *config.hidden_dims, config.latent_dim]
        self.encoder = _mlp(dims)
        self.decoder = _mlp(dims[::-1])
        self.codebooks = nn.Parameter(torch.zeros(config.levels, config.codebook_size, config.latent_dim))

    def quantise(self, z: torch.Tensor):
        """Residual quantisation: codes ``[N, L]``, quantised latent, summed codebook+commitment loss."""
        residual = z
        quantised = torch.zeros_like(z)
        codes, loss = [], z.new_zeros(())
        for level in range(self.config.levels):
            book = self.codebooks[level]
            idx = torch.cdist(residual.detach(), book.detach()).argmin(1)
            chosen = book[idx]
            loss = loss + ((residual.detach() - chosen) ** 2).sum(-1).mean() \
                + self.config.beta * ((residual - chosen.detach()) ** 2).sum(-1).mean()
            quantised = quantised + chosen
            residual = residual - chosen.detach()
            codes.append(idx)
        return torch.stack(codes, 1), quantised, loss

    def forward(self, x: torch.Tensor):
        z = self.encoder(x)
        codes, quantised, quant_loss = self.quantise(z)
        # straight-through: the decoder sees the quantised latent, the encoder gets its gradient
        z_q = z + (quantised - z).detach()
        recon = self.decoder(z_q)
        recon_loss = ((recon - x) ** 2).sum(-1).mean()
        return codes, recon_loss, quant_loss

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, generator: torch.Generator) -> None:
        residual = self.encoder(x)
        for level in range(self.config.levels):
            centres = kmeans(residual, self.config.codebook_size, self.config.kmeans_iters, generator)
            self.codebooks.data[level] = centres
            residual = residual - centres[torch.cdist(residual, centres).argmin(1)]

    @torch.no_grad()
    def reseed_unused(self, x: torch.Tensor, generator: torch.Generator) -> int:
        """Move every code that no item uses onto a random item's residual at that level."""
        residual = self.encoder(x)
        moved = 0
        for level in range(self.config.levels):
            book = self.codebooks.data[level]
            idx = torch.cdist(residual, book).argmin(1)
            used = torch.bincount(idx, minlength=self.config.codebook_size) > 0
            dead = torch.nonzero(~used).flatten()
            if len(dead):
                pick = torch.randint(0, residual.shape[0], (len(dead),), generator=generator)
                book[dead] = residual[pick]
                idx = torch.cdist(residual, book).argmin(1)
                moved += len(dead)
            residual = residual - book[idx]
        return moved

    @torch.no_grad()
    def codes(self, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
        out = [self.quantise(self.encoder(x[s:s + batch_size]))[0] for s in range(0, len(x), batch_size)]
        return torch.cat(out, 0)


@dataclass
class SemanticIDs:
    """Item id -> 4-token semantic ID. Row 0 (padding) is all -1."""

    codes: np.ndarray                 # int64 [n_items + 1, levels + 1]
    level_sizes: list                 # number of distinct values each token position can take
    stats: dict = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return self.codes.shape[0] - 1


def add_collision_token(codes: np.ndarray) -> tuple[np.ndarray, dict]:
    """Append a token numbering items that share all their codes (item-id order), and stats."""
    n = codes.shape[0]
    keys = [tuple(row) for row in codes.tolist()]
    seen: dict = {}
    extra = np.zeros(n, dtype=np.int64)
    for i, key in enumerate(keys):
        extra[i] = seen.get(key, 0)
        seen[key] = extra[i] + 1
    group_sizes = np.array(list(seen.values()))
    colliding = int(group_sizes[group_sizes > 1].sum())
    stats = {
        "distinct_prefixes": int(len(seen)),
        "collision_rate": colliding / max(n, 1),   # share of items whose 3 codes another item shares
        "max_group": int(group_sizes.max()) if len(group_sizes) else 0,
    }
    return np.concatenate([codes, extra[:, None]], 1), stats


def train_rqvae(embeddings: np.ndarray, config: RQVAEConfig, progress: bool = True) -> tuple[RQVAE, SemanticIDs]:
    """Train an RQ-VAE on item embeddings (row 0 = padding, ignored) and derive every item's semantic ID.

    Deterministic for ``config.seed``: all randomness comes from explicit generators, and the fit
    runs on one torch thread whatever the caller's setting. With two threads, two runs on the same
    machine gave different codebooks (reduction order changes the last bits, and code assignments
    amplify them), and so different semantic IDs and effort scores.
    """
    with fixed_threads(1):
        return _train_rqvae(embeddings, config, progress)


def _train_rqvae(embeddings: np.ndarray, config: RQVAEConfig, progress: bool) -> tuple[RQVAE, SemanticIDs]:
    x = torch.from_numpy(np.ascontiguousarray(embeddings[1:], dtype=np.float32))
    if len(x) == 0:
        raise DealrecError("cannot build semantic IDs: the item catalogue is empty")
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = RQVAE(x.shape[1], config)
    model.init_codebooks(x, gen)
    opt = adam(model.parameters(), lr=config.lr)
    reseed_epochs = int(config.epochs * config.reseed_dead_until)
    bar = tqdm(range(config.epochs), desc="rq-vae", disable=not progress, unit="epoch")
    for epoch in bar:
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for s in range(0, len(x), config.batch_size):
            batch = x[perm[s:s + config.batch_size]]
            _, recon_loss, quant_loss = model(batch)
            loss = recon_loss + quant_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
        if epoch < reseed_epochs and epoch % 5 == 4:
            model.reseed_unused(x, gen)
        bar.set_postfix(loss=f"{total / len(x):.4f}")
    model.eval()
    codes = model.codes(x).numpy().astype(np.int64)
    sem, stats = semantic_ids_from_codes(codes, config.codebook_size)
    with torch.no_grad():
        _, recon_loss, _ = model(x)
    sem.stats["reconstruction_mse"] = float(recon_loss)
    return model, sem


def semantic_ids_from_codes(codes: np.ndarray, codebook_size: int) -> tuple[SemanticIDs, dict]:
    """``codes``: ``[n_items, levels]`` for items 1..n. Adds the collision token and padding row 0."""
    full, stats = add_collision_token(codes)
    levels = codes.shape[1]
    usage = [len(np.unique(codes[:, lv])) / codebook_size for lv in range(levels)]
    stats["codebook_usage"] = usage
    full = np.concatenate([np.full((1, full.shape[1]), -1, np.int64), full], 0)
    sizes = [codebook_size] * levels + [max(stats["max_group"], 1)]
    return SemanticIDs(full, sizes, stats), stats


def save_semantic_ids(sem: SemanticIDs, rqvae: RQVAE | None, folder: str | Path) -> None:
    from safetensors.torch import save_file
    folder = Path(folder)
    tensors = {"semantic_ids": torch.from_numpy(sem.codes)}
    if rqvae is not None:
        tensors.update({f"rqvae.{k}": v.contiguous() for k, v in rqvae.state_dict().items()})
    with atomic_file(folder / "semantic_ids.safetensors") as tmp:
        save_file(tensors, str(tmp))
    meta = {"level_sizes": list(sem.level_sizes), "stats": sem.stats}
    if rqvae is not None:
        meta["rqvae"] = {**asdict(rqvae.config), "input_dim": rqvae.input_dim}
    write_text_atomic(folder / "semantic_ids.json", json.dumps(meta, indent=2) + "\n")


def load_semantic_ids(folder: str | Path) -> tuple[SemanticIDs, RQVAE | None]:
    from safetensors.torch import load_file
    folder = Path(folder)
    meta_path, tensor_path = folder / "semantic_ids.json", folder / "semantic_ids.safetensors"
    if not meta_path.exists() or not tensor_path.exists():
        raise DealrecError(f"{folder}: no semantic_ids.json/.safetensors (not a TIGER checkpoint)")
    meta = json.loads(meta_path.read_text())
    tensors = load_file(str(tensor_path))
    sem = SemanticIDs(tensors["semantic_ids"].numpy().astype(np.int64), list(meta["level_sizes"]),
                      meta.get("stats", {}))
    rqvae = None
    if "rqvae" in meta:
        cfg = RQVAEConfig.from_dict(meta["rqvae"])
        rqvae = RQVAE(int(meta["rqvae"]["input_dim"]), cfg)
        rqvae.load_state_dict({k[len("rqvae."):]: v for k, v in tensors.items() if k.startswith("rqvae.")})
    return sem, rqvae
