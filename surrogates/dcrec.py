"""DCRec (Yang et al., WWW 2023, "Debiased Contrastive Learning for Sequential Recommendation").

Three views of a user's sequence, fused for the next-item prediction and contrasted in training:

- the **sequence view**: this project's SASRec encoder (causal self-attention over ``[BOS] +
  history``, next-item prediction at every position, the same batches and padding invariance);
- the **transition view**: the item embeddings propagated over the item transition graph (an
  edge between two items that follow each other in some training sequence, both directions, plus
  a self-loop on every node, symmetrically normalised ``D^-1/2 (A + I) D^-1/2``);
- the **co-interaction view**: the item embeddings propagated over the co-interaction graph (two
  items are linked through every user who interacted with both: ``Bn^T Bn`` with ``Bn`` the
  user x item incidence of the training sequences normalised by ``1 / sqrt(deg_user deg_item)``,
  applied as two sparse products, never as an item x item matrix).

Each graph encoder is LightGCN-style, as the reference code's: ``graph_layers`` parameter-free
propagations, the mean of the layers (input included), then ``LayerNorm(mean + input)``. Both graphs
are built by ``prepare_training`` from the training samples only (their histories and targets, never
validation or test items), with plain torch sparse products (no DGL), and saved as buffers with the
weights, so a loaded model scores exactly as the trained one.

- **Prediction**: at every position, the sequence state and the two graph views of that
  position's input item are fused by attention over the three views (``fusion``: a learned
  projection and query, softmax over the views), then scored against the item table.
- **Training loss** (``training_loss``): the recommendation loss (full-softmax cross-entropy at every
  position, as SASRec's ``ce``) plus ``cl_weight`` times the conformity-weighted contrastive loss at
  each sample's last position: an InfoNCE (cosine similarity over ``cl_temperature``, in-batch
  negatives) between the sequence view and the transition view of its last item, weighted by the
  sample's conformity ``w``, and one between the transition and co-interaction views, weighted by
  ``max(w) - w`` (the reference's "personalisation" weight). ``w`` is the agreement of the three
  views, ``sigmoid(mean of their pairwise cosines)``, min-max normalised in the batch and rescaled
  to mean ``conformity_mean``.
- **A sample's loss** (``sample_losses``, what influence differentiates): its recommendation loss
  only (the mean over its positions, as SASRec's); the contrastive part is a training device and
  is not in it. ``sample_weights`` are SASRec's (the positions it predicts).
- ``influence_block()``: the output projection of the sequence encoder's last attention layer, run
  once per forward pass (the graph views do not go through it).

Simplified against the paper and its code (docs/surrogates.md says the same):

- the conformity weight is the agreement of the sample's own three views; the reference measures
  it on a transition graph from which the batch's own edges are removed (a second graph pass per
  batch) with sampled neighbour read-outs, and learns it with a KL term towards a normal
  distribution. Here it is a detached weight, without the KL term;
- the graphs have no edge dropout, and transitions count once however often they occur;
- every position is a prediction (the SASRec training of this project), where the reference trains
  on the last position of each prefix; the fusion and the graph views are applied at every position.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dealrec_core.data import Samples
from dealrec_core.errors import DealrecError
from surrogates.base import option
from surrogates.sasrec import SASRec, SASRecConfig


@dataclass
class DCRecConfig(SASRecConfig):
    loss: str = "ce"               # not an option: the recommendation loss is the full softmax
    cl_weight: float = option(0.1, "Weight of the conformity-weighted contrastive loss.")
    cl_temperature: float = option(0.2, "Temperature of the contrastive (InfoNCE) loss.")
    conformity_mean: float = option(0.5, "Mean of the conformity weights in a batch.")
    graph_layers: int = option(2, "Propagation layers of each item graph.")
    # the graphs' sizes, set by prepare_training (so that a saved model's buffers load)
    n_users: int = 0
    n_transition_edges: int = 0
    n_interactions: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.loss != "ce":
            raise DealrecError(f"DCRec's recommendation loss is ce, not {self.loss!r}")
        if self.graph_layers < 0 or not self.cl_temperature > 0 or self.cl_weight < 0:
            raise DealrecError("graph_layers and cl_weight must be >= 0 and cl_temperature > 0")


def transition_edges(samples: Samples, n_nodes: int) -> np.ndarray:
    """int32 ``[2, E]``, sorted: both directions of every transition of the training sequences, and a
    self-loop on every node."""
    seqs = [np.append(np.asarray(h, dtype=np.int64), np.int64(t)) for h, t in zip(samples.history, samples.target)]
    src = np.concatenate([s[:-1] for s in seqs] + [np.zeros(0, np.int64)])
    dst = np.concatenate([s[1:] for s in seqs] + [np.zeros(0, np.int64)])
    moves = src != dst
    nodes = np.arange(n_nodes, dtype=np.int64)
    keys = np.unique(np.concatenate([src[moves] * n_nodes + dst[moves], dst[moves] * n_nodes + src[moves],
                                     nodes * n_nodes + nodes]))
    return np.stack([keys // n_nodes, keys % n_nodes]).astype(np.int32)


def interaction_pairs(samples: Samples, n_nodes: int) -> np.ndarray:
    """int32 ``[2, E]``, sorted: (user row, item) for every distinct item of each training sequence."""
    keys = np.unique(np.concatenate(
        [np.int64(u) * n_nodes + np.append(np.asarray(h, dtype=np.int64), np.int64(t))
         for u, (h, t) in enumerate(zip(samples.history, samples.target))] + [np.zeros(0, np.int64)]))
    return np.stack([keys // n_nodes, keys % n_nodes]).astype(np.int32)


def _sparse(index: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    return torch.sparse_coo_tensor(index, values, shape, is_coalesced=True, check_invariants=False)


class _CsrProduct(torch.autograd.Function):
    """``a @ x`` for a constant sparse CSR ``a`` whose transpose ``a_t`` is given: the backward is ``a_t @ grad``,
    itself this function (so it has derivatives of any order). torch's autograd through a COO product builds
    the transpose again at every backward pass; both products here are CSR: the views' forward and backward 3.3x
    faster on the CPU than through COO (Games' graphs, benchmarks/profile_surrogate_step.py: docs/surrogates.md,
    "DCRec's epoch")."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
        ctx.a, ctx.a_t = a, a_t   # constants of the model, never differentiated
        return a @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _CsrProduct.apply(grad, ctx.a_t, ctx.a), None, None


class _Propagator:
    """A fixed sparse operator: with ``csr`` (the operator and its transpose as CSR: on the CPU) CSR products,
    else torch's COO product of ``coo`` (other devices: the path the CUDA tests cover)."""

    def __init__(self, coo: torch.Tensor, csr: tuple[torch.Tensor, torch.Tensor] | None):
        self.coo, self.csr = coo, csr

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        if self.csr is None:
            return torch.sparse.mm(self.coo, y)
        return _CsrProduct.apply(y, *self.csr)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """``[B]``: each row's InfoNCE between ``a[i]`` and ``b[i]`` against every ``b[j]`` of the batch."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device), reduction="none")


class DCRec(SASRec, name="dcrec"):
    config_class = DCRecConfig
    # random batches, one product: bucketed with blocks of 256 trains 2.6x faster but lost on validation NDCG@10 by a
    # rule set before the runs (docs/surrogates.md, "DCRec's epoch, and its batches")
    default_batching = "random"
    ce_blocks_on_cpu = False

    def __init__(self, config: DCRecConfig):
        super().__init__(config)
        cfg = config
        self.graph_norm = nn.LayerNorm(cfg.hidden)
        self.fusion = nn.Linear(cfg.hidden, cfg.hidden, bias=False)
        self.fusion_query = nn.Parameter(torch.zeros(cfg.hidden))
        self.register_buffer("transition_index", torch.zeros(2, cfg.n_transition_edges, dtype=torch.int32))
        self.register_buffer("interaction_index", torch.zeros(2, cfg.n_interactions, dtype=torch.int32))
        self._init_weights()
        with torch.no_grad():
            gen = torch.Generator().manual_seed(cfg.seed + 1)
            self.fusion_query.normal_(0.0, cfg.init_std, generator=gen)
        self._graphs_key, self._graphs = None, None
        self._views_key, self._views = None, None

    @property
    def n_nodes(self) -> int:
        return self.config.n_items + 2   # padding, the items, BOS

    def prepare_training(self, samples: Samples) -> None:
        """Build both item graphs from the training samples (replacing any built before)."""
        trans = torch.from_numpy(transition_edges(samples, self.n_nodes))
        inter = torch.from_numpy(interaction_pairs(samples, self.n_nodes))
        self.config.n_users = len(samples)
        self.config.n_transition_edges = trans.shape[1]
        self.config.n_interactions = inter.shape[1]
        self.transition_index = trans
        self.interaction_index = inter

    # ---- the graph views ------------------------------------------------------------------

    def _propagators(self):
        """The normalised sparse operators, rebuilt only when the graph buffers change."""
        dtype = self.item_emb.weight.dtype
        key = (dtype, *((t.data_ptr(), t._version, tuple(t.shape)) for t in (self.transition_index,
                                                                           self.interaction_index)))
        if key != self._graphs_key:
            n, n_users = self.n_nodes, self.config.n_users
            t_index = self.transition_index.long()
            deg = torch.bincount(t_index[0], minlength=n).to(dtype)
            t_values = (deg[t_index[0]] * deg[t_index[1]]).rsqrt()
            u_index = self.interaction_index.long()
            deg_u = torch.bincount(u_index[0], minlength=max(n_users, 1)).to(dtype)
            deg_i = torch.bincount(u_index[1], minlength=n).to(dtype)
            u_values = (deg_u[u_index[0]] * deg_i[u_index[1]]).rsqrt()
            order = torch.argsort(u_index[1] * max(n_users, 1) + u_index[0])   # item-major for the transpose
            adjacency = _sparse(t_index, t_values, (n, n))   # symmetric: its own transpose
            incidence = _sparse(u_index, u_values, (max(n_users, 1), n))
            incidence_t = _sparse(u_index.flip(0)[:, order], u_values[order], (n, max(n_users, 1)))
            operators = (adjacency, incidence, incidence_t)
            csr = (None, None, None)
            if adjacency.device.type == "cpu":   # each matrix converted once; the adjacency is its own transpose
                with warnings.catch_warnings():   # "sparse CSR support is in beta": the products used here are tested
                    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                    a, b, b_t = (m.to_sparse_csr() for m in operators)
                csr = ((a, a), (b, b_t), (b_t, b))
            self._graphs = tuple(_Propagator(m, c) for m, c in zip(operators, csr))
            self._graphs_key = key
        return self._graphs

    def _encode_graph(self, x: torch.Tensor, step) -> torch.Tensor:
        layers, y = [x], x
        for _ in range(self.config.graph_layers):
            y = step(y)
            layers.append(y)
        return self.graph_norm(torch.stack(layers).mean(0) + x)

    def graph_views(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[n_items + 2, hidden]`` each: the transition view and the co-interaction view of every id.
        Kept between calls when nothing they depend on can change or carry a gradient (scoring)."""
        adjacency, incidence, incidence_t = self._propagators()
        inputs = (self.item_emb.weight, self.graph_norm.weight, self.graph_norm.bias)
        frozen = not self.training and not (torch.is_grad_enabled() and any(t.requires_grad for t in inputs))
        key = (tuple((t.data_ptr(), t._version) for t in inputs), self._graphs_key) if frozen else None
        if key is not None and key == self._views_key:
            return self._views
        x = self.emb_dropout(self.item_emb.weight)
        views = (self._encode_graph(x, adjacency), self._encode_graph(x, lambda y: incidence_t(incidence(y))))
        if key is not None:
            self._views_key, self._views = key, views
        return views

    def _fuse(self, states: torch.Tensor, *views: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack([states, *views], dim=-2)                  # [..., 3, hidden]
        weights = (self.fusion(stacked) * self.fusion_query).sum(-1).softmax(-1)
        return (stacked * weights.unsqueeze(-1)).sum(-2)

    # ---- the model ---------------------------------------------------------------------------

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The fused states: what ``sample_losses`` and ``full_sort_scores`` (SASRec's) score with."""
        transition, interaction = self.graph_views()
        return self._fuse(super().hidden_states(input_ids), transition[input_ids], interaction[input_ids])

    def training_loss(self, batch: dict[str, torch.Tensor], weighting: str = "position",
                      states: torch.Tensor | None = None) -> torch.Tensor:
        ids = batch["input_ids"]
        sequence = super().hidden_states(ids)
        transition, interaction = self.graph_views()
        fused = self._fuse(sequence, transition[ids], interaction[ids])
        loss = super().training_loss(batch, weighting, states=fused)
        if self.config.cl_weight == 0:
            return loss
        rows = torch.arange(ids.shape[0], device=ids.device)
        last = (ids > 0).sum(1) - 1
        item = ids[rows, last]
        keep = item != self.bos   # an empty history has no last item to contrast
        if int(keep.sum()) < 2:
            return loss
        z_seq, z_trans, z_inter = sequence[rows, last][keep], transition[item[keep]], interaction[item[keep]]
        w = self.conformity(z_seq, z_trans, z_inter)
        tau = self.config.cl_temperature
        contrast = w * info_nce(z_seq, z_trans, tau) + (w.max() - w) * info_nce(z_trans, z_inter, tau)
        return loss + self.config.cl_weight * contrast.mean()

    @torch.no_grad()
    def conformity(self, z_seq: torch.Tensor, z_trans: torch.Tensor, z_inter: torch.Tensor) -> torch.Tensor:
        """``[B]``: how far each sample's three views agree, min-max scaled in the batch, mean
        ``conformity_mean`` (a weight, not learnt through)."""
        agree = (F.cosine_similarity(z_seq, z_trans, dim=-1) + F.cosine_similarity(z_seq, z_inter, dim=-1)
                 + F.cosine_similarity(z_trans, z_inter, dim=-1)) / 3
        agree = torch.sigmoid(agree)
        agree = (agree - agree.min()) / (agree.max() - agree.min()).clamp(min=1e-12)
        return agree * (self.config.conformity_mean / agree.mean().clamp(min=1e-12))
