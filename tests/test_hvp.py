"""The three H^-1 v solvers: exact == autograd's Hessian, CG == exact, LiSSA's fixed point, divergence; and
the stationary influence's low-rank damped inverse against the dense one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dealrec_core.errors import DealrecError
from dealrec.hvp import HessianPool, HvpConfig, lanczos_inverse, solve
from dealrec.influence import freeze_all_but
from surrogates.registry import build_surrogate
from surrogates.softmax import softmax_by_blocks
from tiny_surrogate import tiny_samples

N_ITEMS = 20


@pytest.fixture(scope="module")
def setup(one_thread):
    torch.manual_seed(0)
    model = build_surrogate("sasrec", n_items=N_ITEMS, hidden=4, n_blocks=1, n_heads=1, ffn_hidden=8,
                            max_len=6, dropout=0.0, init_std=0.3, seed=2).double().eval()
    block = model.influence_block()
    freeze_all_but(model, block)
    samples = tiny_samples(24, N_ITEMS, seed=4, max_hist=6)
    batches = [model.collate(samples.subset(np.arange(i, i + 8))) for i in range(0, 24, 8)]
    pool = HessianPool(model, block, batches)
    v = np.random.default_rng(0).standard_normal(block.weight.numel())
    return model, block, samples, batches, pool, v


def test_exact_hessian_equals_autograd_hessian(setup):
    model, block, samples, batches, pool, _ = setup
    w0 = block.weight.detach().clone()

    def loss_of(w):  # the pool's mean loss as a function of the block weight alone
        return sum(len(b["labels"]) * _sample_losses_with(model, block, w.reshape(w0.shape), b).mean()
                   for b in batches) / 24

    want = torch.autograd.functional.hessian(loss_of, w0.reshape(-1)).numpy()
    got = pool.matrix(chunk=5)  # chunk not dividing 16: exercises the last partial chunk
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


def _sample_losses_with(model, block, w, batch):
    """sample_losses with ``w`` in place of the block's weight (graph-connected to ``w``)."""
    original = block.weight
    try:
        del block.weight
        block.weight = w
        return model.sample_losses(batch)
    finally:
        block.weight = original


def test_cg_agrees_with_exact(setup):
    *_, pool, v = setup
    cfg = dict(damping=0.1, scale=10.0)
    exact = solve(pool, v, HvpConfig(solver="exact", **cfg))
    cg = solve(pool, v, HvpConfig(solver="cg", cg_tol=1e-12, **cfg))
    assert exact.residual < 1e-10 and cg.residual < 1e-9
    np.testing.assert_allclose(cg.x, exact.x, rtol=1e-7, atol=1e-9 * np.abs(exact.x).max())


def test_lissa_reaches_the_same_fixed_point(setup):
    """With one pool minibatch the recursion is deterministic and must converge to the exact solve;
    with several it is stochastic and lands close to it."""
    model, block, samples, batches, pool, v = setup
    cfg = dict(damping=0.3, scale=1.5)  # contraction <= 0.86 for this Hessian (|eigenvalues| < 0.25)
    single = HessianPool(model, block, [model.collate(samples)])
    exact1 = solve(single, v, HvpConfig(solver="exact", **cfg)).x
    lissa1 = solve(single, v, HvpConfig(solver="lissa", lissa_steps=200, **cfg))
    np.testing.assert_allclose(lissa1.x, exact1, rtol=1e-6, atol=1e-8 * np.abs(exact1).max())
    assert lissa1.trace[-1][2] < 1e-6  # the trace shows convergence

    exact = solve(pool, v, HvpConfig(solver="exact", **cfg)).x
    lissa = solve(pool, v, HvpConfig(solver="lissa", lissa_steps=200, **cfg)).x
    cos = float((lissa.ravel() @ exact.ravel()) / np.linalg.norm(lissa) / np.linalg.norm(exact))
    assert cos > 0.98


def test_lissa_is_deterministic_for_a_seed(setup):
    *_, pool, v = setup
    a = solve(pool, v, HvpConfig(solver="lissa", lissa_steps=50, damping=0.1, scale=10.0, seed=3)).x
    b = solve(pool, v, HvpConfig(solver="lissa", lissa_steps=50, damping=0.1, scale=10.0, seed=3)).x
    c = solve(pool, v, HvpConfig(solver="lissa", lissa_steps=50, damping=0.1, scale=10.0, seed=4)).x
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_lissa_divergence_is_a_clear_error(setup):
    *_, pool, v = setup
    eig = np.linalg.eigvalsh(pool.matrix())
    scale = float(eig[-1]) / 4  # far below the largest eigenvalue: the recursion must run away
    with pytest.raises(DealrecError, match=r"LiSSA diverged at step \d+.*raise --lissa-scale.*--damping"):
        solve(pool, v, HvpConfig(solver="lissa", lissa_steps=5000, damping=0.01, scale=scale))


def test_cg_refuses_an_indefinite_system(setup):
    *_, pool, v = setup
    eig = np.linalg.eigvalsh(pool.matrix())
    if eig[0] >= 0:
        pytest.fail("the test model's Hessian should be indefinite at this random point")
    with pytest.raises(DealrecError, match="non-positive curvature"):
        solve(pool, v, HvpConfig(solver="cg", damping=0.0, scale=1.0))


def test_bad_solver_name():
    with pytest.raises(DealrecError, match="unknown --hvp"):
        HvpConfig(solver="newton").check()


def _dense_quadratic(pool, grads, tikhonov):
    h = pool.matrix() + tikhonov * np.eye(pool.dim)
    return np.einsum("md,md->m", grads, np.linalg.solve(h, grads.T).T)


def test_lanczos_inverse_of_full_rank_is_the_exact_damped_inverse(setup):
    *_, pool, _ = setup
    config = HvpConfig(damping=0.1, scale=10.0, rank=pool.dim)
    probe = np.random.default_rng(5).standard_normal(pool.dim)
    inverse = lanczos_inverse(pool, config, probe)
    assert inverse.residual < 1e-9
    np.testing.assert_allclose(inverse.apply(probe), solve(pool, probe, HvpConfig(solver="exact", damping=0.1,
                                                                                  scale=10.0)).x.reshape(-1),
                               rtol=1e-8)
    grads = np.random.default_rng(3).standard_normal((7, pool.dim))
    np.testing.assert_allclose(inverse.quadratic(grads), _dense_quadratic(pool, grads, config.tikhonov),
                               rtol=1e-8)
    # the Krylov space holds every direction of non-zero curvature (this pool's Hessian has rank < dim, so
    # Lanczos may stop early there): each such eigenvalue is a Ritz value, and each Ritz value an eigenvalue
    eig, ritz = np.linalg.eigvalsh(pool.matrix()), np.asarray(inverse.ritz)
    assert np.abs(ritz[:, None] - eig[None, :]).min(1).max() < 1e-9
    assert np.abs(eig[np.abs(eig) > 1e-9][:, None] - ritz[None, :]).min(1).max() < 1e-9


def test_lanczos_inverse_keeps_the_largest_curvature_and_damps_the_rest(setup):
    *_, pool, _ = setup
    t = 1.0
    grads = np.random.default_rng(4).standard_normal((9, pool.dim))
    exact = _dense_quadratic(pool, grads, t)
    eig = np.linalg.eigvalsh(pool.matrix())
    errors = []
    for rank in (0, 3, 6, 12):
        config = HvpConfig(damping=0.1, scale=10.0, rank=rank)
        inverse = lanczos_inverse(pool, config)
        got = inverse.quadratic(grads)
        k = inverse.basis.shape[1]
        assert k <= rank   # fewer where the Krylov space is invariant (this Hessian has rank 10 of 16)
        np.testing.assert_allclose(inverse.basis.T @ inverse.basis, np.eye(k), atol=1e-10)
        # every direction is weighted between 1/(mu_max + t) and 1/(mu_min + t): never outside the exact range
        norms = np.einsum("md,md->m", grads, grads)
        assert np.all(got <= norms / (eig[0] + t) * (1 + 1e-9)) and np.all(got >= norms / (eig[-1] + t) * (1 - 1e-9))
        errors.append(np.abs(got - exact).max())
        # the same seed gives the same bits
        np.testing.assert_array_equal(lanczos_inverse(pool, config).quadratic(grads), got)
    np.testing.assert_allclose(lanczos_inverse(pool, HvpConfig(damping=0.1, scale=10.0, rank=0)).quadratic(grads),
                               np.einsum("md,md->m", grads, grads) / t, rtol=1e-12)
    assert errors[-1] < errors[0] / 10


def test_lanczos_refuses_an_indefinite_damped_hessian(setup):
    *_, pool, _ = setup
    if np.linalg.eigvalsh(pool.matrix())[0] >= 0:
        pytest.fail("the test model's Hessian should be indefinite at this random point")
    with pytest.raises(DealrecError, match="not positive definite"):
        lanczos_inverse(pool, HvpConfig(damping=0.0, scale=1.0, rank=pool.dim))
    with pytest.raises(DealrecError, match="--hessian-rank"):
        HvpConfig(rank=-1).check()


@pytest.mark.parametrize("ce_chunk", [1, 7, 100])
def test_pool_with_the_softmax_by_blocks_gives_the_same_hessian(setup, ce_chunk):
    """The engine builds its pool with the full softmax by blocks of items on the CPU: the same Hessian-vector
    products (and so the same Lanczos inverse) as autograd's one-product form, to float rounding."""
    model, block, samples, batches, pool, v = setup
    with softmax_by_blocks(model, ce_chunk):
        blocked = HessianPool(model, block, batches)
    assert model.ce_chunk == 0
    want = pool.matrix()
    got = np.stack([blocked.hvp(e) for e in np.eye(pool.dim)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
    config = HvpConfig(rank=5)
    a, b = lanczos_inverse(pool, config, v), lanczos_inverse(blocked, config, v)
    np.testing.assert_allclose(b.apply(v), a.apply(v), rtol=1e-9)
