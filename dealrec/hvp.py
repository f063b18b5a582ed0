"""``H^-1 v`` for one Linear block: LiSSA (the paper's), conjugate gradient, and an exact solve.

All three use the same Hessian: that of the mean training loss over the block's weight,
measured on a fixed, seeded sample of the training set (the *Hessian pool*, cut into
minibatches). LiSSA draws one pool minibatch per step, as the paper's recursion does; CG
multiplies by the whole pool's Hessian; exact builds that Hessian (``d x d`` for ``d`` weights,
4,096 for a 64x64 block) and solves. So CG and exact agree to solver tolerance, and LiSSA
agrees with them as far as its stochastic recursion converges.

Damping. The paper's LiSSA recursion (after Agarwal et al. and Koh & Liang)::

    h_0 = v;   h_j = v + (1 - damping) h_{j-1} - H_j h_{j-1} / scale;   x = h_J / scale

has the fixed point ``x = (H + damping * scale * I)^-1 v``. CG and exact therefore solve
``(H + damping * scale * I) x = v`` with the same ``damping`` and ``scale``, so that the three
solvers answer the same question (with the paper's 0.01 and 25 the Tikhonov term is 0.25).

Hessian-vector products are double backward passes through graphs kept for each pool
minibatch (built once; only the part of the model downstream of the block is recorded,
because nothing else requires a gradient).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from dealrec_core.errors import DealrecError

SOLVERS = ("lissa", "cg", "exact")


@dataclass
class HvpConfig:
    solver: str = "cg"            # `dealrec score --hvp`'s default: CG fits the time budget; "lissa" is the paper's
    damping: float = 0.01         # LiSSA's per-step damping (the paper's 0.01)
    scale: float = 25.0           # LiSSA's scale (the paper's 25)
    lissa_steps: int = 5000       # the paper's recursion depth
    hessian_samples: int = 1024   # size of the Hessian pool (seeded sample of the training set)
    hvp_batch: int = 64           # pool minibatch: one LiSSA step = one HVP on one of these
    cg_tol: float = 1e-8          # relative residual at which CG stops
    cg_max_iter: int = 500
    exact_chunk: int = 256        # Hessian columns built per vectorised double backward
    rank: int = 16                # stationary influence: Lanczos steps (H's directions kept exactly)
    trace_every: int = 100        # LiSSA convergence trace: one point every this many steps
    seed: int = 0

    @property
    def tikhonov(self) -> float:
        """The damping term of the system every solver targets: ``(H + tikhonov * I) x = v``."""
        return self.damping * self.scale

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        if self.solver not in SOLVERS:
            raise DealrecError(f"unknown --hvp {self.solver!r} (choose from {', '.join(SOLVERS)})")
        if not (self.scale > 0 and 0 <= self.damping < 1):
            raise DealrecError(f"need scale > 0 and 0 <= damping < 1 (got scale {self.scale}, damping {self.damping})")
        if self.lissa_steps < 1 or self.hessian_samples < 1 or self.hvp_batch < 1:
            raise DealrecError("lissa_steps, hessian_samples and hvp_batch must be positive")
        if self.rank < 0:
            raise DealrecError(f"--hessian-rank must be >= 0 (got {self.rank})")


@dataclass
class SolveResult:
    x: np.ndarray                 # float64, shaped like the block weight
    solver: str
    seconds: float
    iterations: int
    trace: list = field(default_factory=list)   # LiSSA: [step, |h|, |h_j - h_{j-k}| / |h|]; CG: [iter, rel residual]
    residual: float = float("nan")             # |(H + t I) x - v| / |v| measured with the pool Hessian

    def summary(self) -> dict:
        return {"solver": self.solver, "seconds": round(self.seconds, 3), "iterations": self.iterations,
                "relative_residual": self.residual, "trace": self.trace}


class HessianPool:
    """The Hessian of the mean loss of a fixed set of minibatches over ``block.weight``.

    ``batches`` are collated minibatches of the pool; the pool Hessian is the sample-weighted
    mean of the minibatch Hessians. The gradient graphs are built once and kept.
    """

    def __init__(self, model, block: nn.Linear, batches: list[dict]):
        if not batches:
            raise DealrecError("the Hessian pool is empty")
        self.weight = block.weight
        self.shape = tuple(block.weight.shape)
        self.dim = block.weight.numel()
        self.dtype = block.weight.dtype
        self.grads: list[torch.Tensor] = []
        sizes = []
        for batch in batches:
            losses = model.sample_losses(batch)
            (grad,) = torch.autograd.grad(losses.mean(), self.weight, create_graph=True)
            if not grad.requires_grad:
                raise DealrecError("the loss is linear in the scoring block: its Hessian is zero")
            self.grads.append(grad)
            sizes.append(losses.shape[0])
        self.batch_weights = np.asarray(sizes, dtype=np.float64) / float(sum(sizes))
        self.n_hvp = 0

    def __len__(self) -> int:
        return len(self.grads)

    def hvp_batch(self, i: int, vec: np.ndarray) -> np.ndarray:
        """``H_i vec`` for minibatch ``i`` (float64 in, float64 out; the product runs in the model's dtype)."""
        v = torch.from_numpy(np.ascontiguousarray(vec, dtype=np.float64).reshape(self.shape)).to(self.dtype)
        (hv,) = torch.autograd.grad(self.grads[i], self.weight, grad_outputs=v, retain_graph=True)
        self.n_hvp += 1
        return hv.double().numpy().reshape(-1)

    def hvp(self, vec: np.ndarray) -> np.ndarray:
        """``H vec`` for the whole pool, summed in float64 in minibatch order."""
        out = np.zeros(self.dim, dtype=np.float64)
        for i, w in enumerate(self.batch_weights):
            out += w * self.hvp_batch(i, vec)
        return out

    def matrix(self, chunk: int = 256) -> np.ndarray:
        """The pool Hessian ``[d, d]`` (float64, symmetrised), a chunk of columns per vectorised pass."""
        h = np.zeros((self.dim, self.dim), dtype=np.float64)
        eye = torch.eye(self.dim, dtype=self.dtype)
        for i, w in enumerate(self.batch_weights):
            for start in range(0, self.dim, chunk):
                basis = eye[start:start + chunk].reshape((-1,) + self.shape)
                try:
                    (cols,) = torch.autograd.grad(self.grads[i], self.weight, grad_outputs=basis,
                                                  retain_graph=True, is_grads_batched=True)
                except RuntimeError:
                    # some ops have no batching rule: fall back to one product per column
                    cols = torch.stack([torch.autograd.grad(self.grads[i], self.weight, grad_outputs=b,
                                                            retain_graph=True)[0] for b in basis])
                h[start:start + chunk] += w * cols.double().reshape(len(basis), -1).numpy()
        self.n_hvp += len(self.batch_weights) * self.dim
        return 0.5 * (h + h.T)


def solve(pool: HessianPool, v: np.ndarray, config: HvpConfig) -> SolveResult:
    config.check()
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    start = time.perf_counter()
    if config.solver == "lissa":
        result = _lissa(pool, v, config)
    elif config.solver == "cg":
        result = _cg(pool, v, config)
    else:
        result = _exact(pool, v, config)
    result.seconds = time.perf_counter() - start
    result.residual = relative_residual(pool, result.x, v, config.tikhonov)
    result.x = result.x.reshape(pool.shape)
    return result


def relative_residual(pool: HessianPool, x: np.ndarray, v: np.ndarray, tikhonov: float) -> float:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    r = pool.hvp(x) + tikhonov * x - v
    return float(np.linalg.norm(r) / max(np.linalg.norm(v), 1e-300))


def _lissa(pool: HessianPool, v: np.ndarray, config: HvpConfig) -> SolveResult:
    rng = np.random.default_rng(config.seed)
    order = rng.integers(0, len(pool), size=config.lissa_steps)
    d, s = config.damping, config.scale
    v_norm = float(np.linalg.norm(v))
    # A converging recursion keeps |h| below |v| / damping (partial sums of a contraction);
    # far above that the recursion is running away.
    limit = 10.0 * v_norm / max(d, 1e-12) if v_norm > 0 else math.inf
    h = v.copy()
    trace = [[0, v_norm, float("nan")]]
    previous = h.copy()
    for step in range(1, config.lissa_steps + 1):
        h = v + (1.0 - d) * h - pool.hvp_batch(int(order[step - 1]), h) / s
        norm = float(np.linalg.norm(h))
        if not math.isfinite(norm) or norm > limit:
            raise DealrecError(
                f"LiSSA diverged at step {step} of {config.lissa_steps} (|h| = {norm:.3g}, |v| = {v_norm:.3g}): "
                f"the Hessian's largest eigenvalue is too big for scale {s:g}; raise --lissa-scale "
                f"(e.g. to {4 * s:g}) or --damping (now {d:g}), or use --hvp cg or --hvp exact")
        if step % config.trace_every == 0 or step == config.lissa_steps:
            change = float(np.linalg.norm(h - previous) / max(norm, 1e-300))
            trace.append([step, norm, change])
            previous = h.copy()
    return SolveResult(h / s, "lissa", 0.0, config.lissa_steps, trace)


def _cg(pool: HessianPool, v: np.ndarray, config: HvpConfig) -> SolveResult:
    t = config.tikhonov
    x = np.zeros_like(v)
    r = v.copy()
    p = r.copy()
    rr = float(r @ r)
    v_norm = math.sqrt(rr)
    trace = [[0, 1.0]]
    if v_norm == 0:
        return SolveResult(x, "cg", 0.0, 0, trace)
    it = 0
    for it in range(1, config.cg_max_iter + 1):
        ap = pool.hvp(p) + t * p
        pap = float(p @ ap)
        if not pap > 0:
            raise DealrecError(
                f"conjugate gradient met a direction of non-positive curvature at iteration {it} "
                f"(the damped Hessian is not positive definite): raise --damping (now {config.damping:g}) "
                f"or --lissa-scale (now {config.scale:g}), or use --hvp exact")
        alpha = rr / pap
        x += alpha * p
        r -= alpha * ap
        rr_new = float(r @ r)
        trace.append([it, math.sqrt(rr_new) / v_norm])
        if math.sqrt(rr_new) <= config.cg_tol * v_norm:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return SolveResult(x, "cg", 0.0, it, trace)


def _exact(pool: HessianPool, v: np.ndarray, config: HvpConfig) -> SolveResult:
    h = pool.matrix(config.exact_chunk)
    h[np.diag_indices_from(h)] += config.tikhonov
    try:
        x = np.linalg.solve(h, v)
    except np.linalg.LinAlgError:
        raise DealrecError(f"the damped Hessian is singular: raise --damping (now {config.damping:g})") from None
    eig = np.linalg.eigvalsh(h)
    trace = [["min_eigenvalue", float(eig[0])], ["max_eigenvalue", float(eig[-1])]]
    return SolveResult(x, "exact", 0.0, 1, trace)


@dataclass
class LowRankInverse:
    """``(H_k + t I)^-1`` where ``H_k = V (V^T H V) V^T`` is the pool Hessian on the Krylov space ``V`` that
    ``lanczos_inverse`` explored (``k`` orthonormal columns) and ``t`` the Tikhonov term. With ``k`` equal
    to the block's size it is the exact damped inverse; with fewer steps the directions of largest curvature
    are kept (Lanczos finds the extreme eigenvalues first) and every other direction counts at the damping
    alone, a relative error of at most ``mu / t`` for the largest eigenvalue ``mu`` left out."""
    basis: np.ndarray             # float64 [d, k], orthonormal
    small: np.ndarray             # float64 [k, k] = (V^T H V + t I)^-1
    tikhonov: float
    ritz: list                    # eigenvalues of V^T H V, largest first
    seconds: float = 0.0
    residual: float = float("nan")  # |(H + t I) x - p| / |p| for x = this inverse applied to a probe p

    def apply(self, vec: np.ndarray) -> np.ndarray:
        """``(H_k + t I)^-1 vec`` (flat float64)."""
        vec = np.asarray(vec, dtype=np.float64).reshape(-1)
        proj = self.basis.T @ vec
        return (vec - self.basis @ proj) / self.tikhonov + self.basis @ (self.small @ proj)

    def quadratic(self, grads: np.ndarray) -> np.ndarray:
        """``G (H_k + t I)^-1 G^T`` for every row ``G`` of ``grads`` [m, d] (float64 [m])."""
        grads = np.asarray(grads, dtype=np.float64)
        total = np.einsum("md,md->m", grads, grads)
        proj = grads @ self.basis   # [m, 0] for rank 0: the correction terms are exact zeros
        return (total - np.einsum("mk,mk->m", proj, proj)) / self.tikhonov + np.einsum(
            "mk,kj,mj->m", proj, self.small, proj)

    def summary(self) -> dict:
        return {"solver": "lanczos", "seconds": round(self.seconds, 3), "iterations": int(self.basis.shape[1]),
                "relative_residual": self.residual, "trace": [[i, float(x)] for i, x in enumerate(self.ritz)],
                "tikhonov": self.tikhonov}


def lanczos_inverse(pool: HessianPool, config: HvpConfig, probe: np.ndarray | None = None) -> LowRankInverse:
    """``config.rank`` Lanczos steps on the pool Hessian from a seeded random start, with full
    reorthogonalisation (twice), then Rayleigh-Ritz: ``V^T (H V)`` from the products themselves rather than
    the recursion's tridiagonal, so rounding in the recursion does not enter the inverse. Stops early when the
    Krylov space is invariant (then the inverse is exact on it). With a ``probe`` (e.g. the mean gradient),
    one more pool product measures how well the result solves ``(H + t I) x = probe`` (``residual``); the
    summary's trace lists the Ritz values, largest first."""
    config.check()
    start = time.perf_counter()
    t = config.tikhonov
    steps = min(config.rank, pool.dim)
    rng = np.random.default_rng([config.seed, 0x1A7C])
    q = rng.standard_normal(pool.dim)
    q /= np.linalg.norm(q)
    basis, products = [], []
    for _ in range(steps):
        basis.append(q)
        w = pool.hvp(q)
        products.append(w)
        v = np.array(basis)
        for _ in range(2):
            w = w - v.T @ (v @ w)
        norm = float(np.linalg.norm(w))
        if norm <= 1e-10 * max(float(np.linalg.norm(products[-1])), 1e-300):
            break
        q = w / norm
    v = np.array(basis).T if basis else np.zeros((pool.dim, 0))
    hv = np.array(products).T if products else np.zeros((pool.dim, 0))
    projected = v.T @ hv
    projected = 0.5 * (projected + projected.T)
    ritz = sorted(np.linalg.eigvalsh(projected).tolist(), reverse=True) if steps else []
    damped = projected + t * np.eye(v.shape[1])
    if ritz and not ritz[-1] + t > 0:
        raise DealrecError(f"the damped Hessian is not positive definite (an eigenvalue {ritz[-1]:.3g} below "
                           f"-{t:g}): raise --damping (now {config.damping:g}) or --lissa-scale (now {config.scale:g})")
    small = np.linalg.inv(damped) if v.shape[1] else np.zeros((0, 0))
    inverse = LowRankInverse(v, 0.5 * (small + small.T), t, ritz)
    if probe is not None and np.linalg.norm(probe) > 0:
        inverse.residual = relative_residual(pool, inverse.apply(probe), np.asarray(probe).reshape(-1), t)
    inverse.seconds = time.perf_counter() - start
    return inverse
