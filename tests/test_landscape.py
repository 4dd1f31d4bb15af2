"""Tests for nclib.landscape against independent computations.

Independent references used: torch autograd (gradients, double backward, the dense Hessian by
torch.autograd.functional.hessian), central finite differences, numpy.linalg.eigvalsh on dense
Hessians, closed forms derived by hand, brute force over grids.
"""
import math

import numpy as np
import pytest
import torch

from nclib import landscape as L
from nclib import ufm

LAMS = (5e-3, 5e-3, 1e-2)          # lambda_W, lambda_H, lambda_b: the nonzero-minimiser regime
K, n, d = 4, 3, 6
Y = ufm.balanced_labels(K, n)


def _torch_f(W, H, b, y, lW, lH, lb):
    Z = H @ W.T + b
    return (torch.nn.functional.cross_entropy(Z, torch.as_tensor(y), reduction="mean")
            + 0.5 * lW * (W ** 2).sum() + 0.5 * lH * (H ** 2).sum() + 0.5 * lb * (b ** 2).sum())


def _autograd_grad_norm(W, H, b, y, lams):
    t = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (W, H, b)]
    g = torch.autograd.grad(_torch_f(*t, y, *lams), t)
    return math.sqrt(sum(float((x ** 2).sum()) for x in g))


def _autograd_hessian(W, H, b, y, lams):
    Kk, dd = W.shape
    N = H.shape[0]
    x = torch.tensor(L.pack(W, H, b), dtype=torch.float64)

    def f(v):
        return _torch_f(v[: Kk * dd].reshape(Kk, dd), v[Kk * dd: Kk * dd + N * dd].reshape(N, dd),
                        v[Kk * dd + N * dd:], y, *lams)

    return torch.autograd.functional.hessian(f, x).numpy()


def _second_derivative_along(W, H, b, y, lams, D):
    """d^2/dt^2 f(x + t D) at t = 0 by autograd (independent of the analytic HVP)."""
    t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    args = [torch.tensor(a) + t * torch.tensor(dd) for a, dd in zip((W, H, b), D)]
    f = _torch_f(*args, y, *lams)
    (g,) = torch.autograd.grad(f, t, create_graph=True)
    (h,) = torch.autograd.grad(g, t)
    return float(h)


def _random_point(seed, Kk=K, nn=n, dd=d, scale=1.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.standard_normal((Kk, dd)), scale * rng.standard_normal((Kk * nn, dd)),
            rng.standard_normal(Kk))


# ----------------------------------------------------------------------------- Hessian tools
def test_hvp_matches_finite_differences_autograd_and_dense():
    W, H, b = _random_point(0)
    rng = np.random.default_rng(1)
    x = L.pack(W, H, b)
    v = rng.standard_normal(x.size)
    hv = L.hvp(W, H, b, Y, *LAMS, v)
    # central differences of the gradient (ufm.gradients, eqs. 17-18)
    eps = 1e-5
    gp = np.concatenate([g.ravel() for g in ufm.gradients(*L.unpack(x + eps * v, K, K * n, d), Y, *LAMS)])
    gm = np.concatenate([g.ravel() for g in ufm.gradients(*L.unpack(x - eps * v, K, K * n, d), Y, *LAMS)])
    np.testing.assert_allclose(hv, (gp - gm) / (2 * eps), rtol=0, atol=1e-8)
    # torch double backward, and torch.autograd.functional.hessian
    np.testing.assert_allclose(hv, L.hvp(W, H, b, Y, *LAMS, v, method="autograd"), atol=1e-13)
    Ht = _autograd_hessian(W, H, b, Y, LAMS)
    np.testing.assert_allclose(L.hessian(W, H, b, Y, *LAMS), Ht, atol=1e-13)
    np.testing.assert_allclose(hv, Ht @ v, atol=1e-12)
    # the tuple form gives the same numbers as the flat form
    out = L.hvp(W, H, b, Y, *LAMS, L.unpack(v, K, K * n, d))
    np.testing.assert_allclose(np.concatenate([o.ravel() for o in out]), hv, atol=0)


def test_lanczos_matches_dense_eigvalsh():
    for seed, scale in [(2, 1.0), (3, 0.3)]:
        W, H, b = _random_point(seed, scale=scale)
        lam_dense = np.linalg.eigvalsh(_autograd_hessian(W, H, b, Y, LAMS))[0]
        r = L.hessian_min_eig(W, H, b, Y, *LAMS, tol=1e-12, return_vector=True)
        assert abs(r.value - lam_dense) <= 1e-10 * max(1.0, abs(r.shift))
        assert r.residual < 1e-8
        # the vector is an eigenvector: Rayleigh quotient equals the value
        assert abs(r.vector @ L.hvp(W, H, b, Y, *LAMS, r.vector) - r.value) < 1e-10


def test_lanczos_at_global_minimiser_is_zero_not_negative():
    W, H, b = ufm.global_minimizer(K, n, d, *LAMS, rotation="random", seed=4)
    ev = np.linalg.eigvalsh(_autograd_hessian(W, H, b, Y, LAMS))
    assert abs(ev[0]) < 1e-12                      # rotations (WQ, HQ) are flat directions
    lam = L.hessian_min_eig(W, H, b, Y, *LAMS, tol=1e-12)
    assert abs(lam) < 1e-9


@pytest.mark.parametrize("lams", [LAMS, (1e-1, 2e-1, 3e-3), (5e-3, 5e-3, 0.0)])
def test_origin_spectrum_closed_form_vs_dense_and_lanczos(lams):
    Kk, nn, dd = 3, 3, 5                     # P = 63 > 60: hessian_min_eig takes the Lanczos path
    y = ufm.balanced_labels(Kk, nn)
    W, H, b = L.origin_critical_point(Kk, nn, dd)
    ev = np.linalg.eigvalsh(_autograd_hessian(W, H, b, y, lams))
    spec = L.origin_hessian_spectrum(Kk, nn, dd, *lams)
    assert sum(m for _, m in spec) == ev.size
    closed = np.sort(np.concatenate([[v] * m for v, m in spec]))
    np.testing.assert_allclose(ev, closed, atol=1e-13)
    lo = L.origin_min_eig(Kk, nn, dd, *lams)
    assert abs(lo - ev[0]) < 1e-13
    assert abs(L.hessian_min_eig(W, H, b, y, *lams, tol=1e-12) - lo) < 1e-9
    # strict saddle iff K sqrt(n lW lH) < 1 (unless lambda_b is the smallest eigenvalue)
    thr = Kk * math.sqrt(nn * lams[0] * lams[1])
    assert (lo < 0) == (thr < 1)


def test_origin_min_eig_by_hand():
    # K=2, n=1, lW = lH = l: sigma = 1/2, min eig = l - 1/2 (and lambda_b = 1 is larger)
    assert abs(L.origin_min_eig(2, 1, 3, 0.1, 0.1, 1.0) - (0.1 - 0.5)) < 1e-15
    assert L.origin_min_eig(2, 1, 3, 0.1, 0.1, 0.0) == pytest.approx(-0.4)
    assert L.origin_min_eig(2, 1, 3, 1.0, 1.0, 0.01) == pytest.approx(0.01)   # then lambda_b is smallest


# ----------------------------------------------------------------------------- critical points and the proof
def _critical_points():
    return {
        "origin": L.origin_critical_point(K, n, d),
        "tied": L.tied_critical_point(K, n, d, *LAMS, [[0, 2], [1, 3]], rotation="random", seed=5),
        "dropped3": L.dropped_classes_critical_point(K, n, d, *LAMS, 3),
        "dropped2": L.dropped_classes_critical_point(K, n, d, *LAMS, 2),
    }


def test_constructed_critical_points_are_strict_saddles():
    cf = ufm.closed_form(K, n, *LAMS)
    for name, (W, H, b) in _critical_points().items():
        assert _autograd_grad_norm(W, H, b, Y, LAMS) < 1e-12, name
        assert L.balance_residual(W, H, LAMS[0], LAMS[1]) < 1e-12, name
        f = ufm.objective(W, H, b, Y, *LAMS)
        assert f > cf.value + 1e-3, name                       # not a global minimiser
        ev = np.linalg.eigvalsh(_autograd_hessian(W, H, b, Y, LAMS))[0]
        assert ev < -1e-3, name                                # a strict saddle
        assert L.certificate_c4(W, H, b, Y, LAMS[0], LAMS[1]) > 1 + 1e-3, name   # in C_2
    # the dropped-class points really use m classes
    W, H, b = _critical_points()["dropped3"]
    assert np.linalg.norm(W[3]) == 0 and np.linalg.norm(W[:3]) > 0.1


def test_tied_value_is_log_q_plus_closed_form():
    W, H, b = L.tied_critical_point(K, n, d, *LAMS, [[0, 1], [2, 3]])
    q, G = 2, 2
    cf = ufm.closed_form(G, n * q, q * LAMS[0], LAMS[1], q * LAMS[2])
    assert abs(ufm.objective(W, H, b, Y, *LAMS) - (math.log(q) + cf.value)) < 1e-13
    assert np.linalg.matrix_rank(W, tol=1e-10) == G - 1


def test_proof_direction_curvature_matches_formula():
    for name, (W, H, b) in _critical_points().items():
        pd = L.proof_direction(W, H, b, Y, LAMS[0], LAMS[1])
        assert pd.Ha < 1e-12 and np.linalg.norm(W @ pd.a) < 1e-12
        q = _second_derivative_along(W, H, b, Y, LAMS, pd.direction)
        assert abs(q - pd.predicted) < 1e-12, name
        assert pd.predicted < 0
        # the formula -2 ||a||^2 (sigma_1 - sqrt(lW lH)) with sigma_1 = ||grad g||_2
        s1 = np.linalg.norm(L.grad_g(W, H, b, Y), 2)
        assert abs(pd.predicted + 2 * (s1 - math.sqrt(LAMS[0] * LAMS[1]))) < 1e-14
        ray = L.curvature(W, H, b, Y, *LAMS, pd.direction)
        assert abs(ray - pd.predicted_rayleigh) < 1e-12
        assert ray >= np.linalg.eigvalsh(_autograd_hessian(W, H, b, Y, LAMS))[0] - 1e-12


def test_certificate_c4_at_global_minimisers():
    W, H, b = ufm.global_minimizer(K, n, d, *LAMS, rotation="random", seed=6)
    assert abs(L.certificate_c4(W, H, b, Y, LAMS[0], LAMS[1]) - 1.0) < 1e-12   # tight: = 1
    # origin regime: K sqrt(n lW lH) >= 1, the origin is the global minimiser and <= 1
    big = (0.3, 0.3, 0.1)
    assert ufm.closed_form(K, n, *big).origin_only
    W0, H0, b0 = L.origin_critical_point(K, n, d)
    c = L.certificate_c4(W0, H0, b0, Y, big[0], big[1])
    assert c <= 1 and abs(c - 1 / (K * math.sqrt(n)) / 0.3) < 1e-14


def test_proof_direction_needs_a_null_space():
    rng = np.random.default_rng(7)
    W = rng.standard_normal((3, 3))                     # d = K, full rank: no null vector
    H = rng.standard_normal((6, 3))
    with pytest.raises(ValueError, match="null space"):
        L.proof_direction(W, H, np.zeros(3), ufm.balanced_labels(3, 2), 0.1, 0.1)
    Wr = rng.standard_normal((3, 5))
    with pytest.raises(ValueError, match="null space"):
        L.proof_direction(Wr, rng.standard_normal((6, 5)), np.zeros(3), ufm.balanced_labels(3, 2),
                          0.1, 0.1, a=np.ones(5))


# ----------------------------------------------------------------------------- lemma checks
def test_balance_residual_by_hand():
    W = np.array([[1.0, 0.0], [0.0, 0.0]])
    H = np.array([[2.0, 0.0]])
    # W^T W = diag(1, 0), (lH/lW) H^T H = 0.25 * diag(4, 0) = diag(1, 0)
    assert L.balance_residual(W, H, 1.0, 0.25) == 0.0
    assert L.balance_residual(W, H, 1.0, 1.0, relative=False) == pytest.approx(3.0)
    assert L.balance_residual(W, H, 1.0, 1.0) == pytest.approx(3.0 / 5.0)


def test_nuclear_norm_variational_form():
    rng = np.random.default_rng(8)
    for alpha in (0.1, 1.0, 7.0):
        W, H = rng.standard_normal((4, 5)), rng.standard_normal((9, 5))
        bound, nuc = L.nuclear_norm_variational(W, H, alpha)
        assert bound >= nuc - 1e-12
        s = np.linalg.svd(H @ W.T, compute_uv=False)
        assert nuc == pytest.approx(s.sum(), rel=1e-14)
        # the balanced factorisation attains it (Lemma A.3's proof)
        Wb, Hb, _ = L.factorize(H @ W.T, np.zeros(4), 5, 1.0, alpha)
        np.testing.assert_allclose(Hb @ Wb.T, H @ W.T, atol=1e-12)
        bb, nb = L.nuclear_norm_variational(Wb, Hb, alpha)
        assert abs(bb - nb) < 1e-12 * nb
        # and rescaling it (W c, H / c) with c != 1 is strictly worse
        assert L.nuclear_norm_variational(2 * Wb, Hb / 2, alpha)[0] > nb * 1.1


def test_ce_lower_bound_lemma_b5():
    rng = np.random.default_rng(9)
    for _ in range(20):
        z = rng.standard_normal(5) * 3
        k = int(rng.integers(5))
        ce = float(np.log(np.exp(z).sum()) - z[k])
        for c1 in np.geomspace(1e-3, 1e3, 13):
            assert L.ce_lower_bound(z, k, c1) <= ce + 1e-12
        assert L.ce_lower_bound(z, k) < ce - 1e-9            # off-class entries differ: strict
    # equality conditions (35): z_i equal for i != k and c1 from (35)
    for zk, zo in [(2.0, -0.5), (-1.0, 0.3), (0.0, 0.0)]:
        z = np.array([zo, zk, zo, zo])
        ce = float(np.log(np.exp(z).sum()) - z[1])
        assert abs(L.ce_lower_bound(z, 1) - ce) < 1e-14
        c1 = L.lemma_b5_c1(z, 1)
        assert c1 == pytest.approx(1 / (3 * math.exp((z.sum() - 4 * zk) / 3)))
        assert L.ce_lower_bound(z, 1, 2 * c1) < ce - 1e-6     # another c1: strict
    # brute force: the bound maximised over a c1 grid approaches CE from below
    z = np.array([0.4, -0.2, 1.0])
    ce = float(np.log(np.exp(z).sum()) - z[2])
    best = max(L.ce_lower_bound(z, 2, c) for c in np.geomspace(1e-3, 1e3, 2001))
    assert best <= ce and best > ce - 0.05


# ----------------------------------------------------------------------------- the convex counterpart
@pytest.mark.parametrize("Kk,nn,lams", [(4, 5, LAMS), (5, 4, (1e-3, 2e-2, 5e-3)), (3, 4, (5e-3, 5e-3, 0.0))])
def test_convex_solver_reaches_closed_form(Kk, nn, lams):
    y = ufm.balanced_labels(Kk, nn)
    cf = ufm.closed_form(Kk, nn, *lams)
    r = L.solve_convex(y, *lams, tol=1e-12)
    assert r.converged, r.message
    assert abs(r.value - cf.value) < 1e-10                   # Lemma C.2: same value as (4)
    assert abs(L.convex_objective(r.Z, r.b, y, *lams) - r.value) < 1e-14
    assert r.rank == Kk - 1 and r.kkt["rank"] == Kk - 1
    assert r.kkt["max"] < 1e-7
    if lams[2] > 0:
        assert 0 <= r.gap <= 1e-12 and r.value - cf.value <= r.gap + 1e-14
    # back to (W, H, b): reproduces Z, balanced, and f equals the convex value
    W, H, b = L.factorize(r.Z, r.b, Kk + 1, lams[0], lams[1], rotation="random", seed=0)
    np.testing.assert_allclose(H @ W.T, r.Z, atol=1e-10)
    assert L.balance_residual(W, H, lams[0], lams[1]) < 1e-12
    assert abs(ufm.objective(W, H, b, y, *lams) - r.value) < 1e-12
    assert _autograd_grad_norm(W, H, b, y, lams) < 1e-6
    assert abs(L.certificate_c4(W, H, b, y, lams[0], lams[1]) - 1) < 1e-6


def test_convex_solver_origin_regime_gives_zero():
    y = ufm.balanced_labels(3, 2)
    lams = (0.5, 0.5, 0.1)
    r = L.solve_convex(y, *lams, tol=1e-12)
    assert r.rank == 0 and np.abs(r.Z).max() == 0
    assert abs(r.value - math.log(3)) < 1e-12


def test_weak_duality_brute_force():
    y = ufm.balanced_labels(3, 2)
    rng = np.random.default_rng(10)
    lams = (2e-2, 3e-2, 5e-2)
    mu = math.sqrt(lams[0] * lams[1])
    N = 6
    for _ in range(20):
        Z, b = rng.standard_normal((N, 3)), rng.standard_normal(3)
        P = rng.dirichlet(np.ones(3), size=N)           # a row-stochastic Q, Lam = (Q - Y)/N
        Lam = P.copy()
        Lam[np.arange(N), y] -= 1
        Lam /= N
        Lam *= min(1.0, mu / np.linalg.norm(Lam, 2))
        assert L.convex_dual(Lam, y, *lams) <= L.convex_objective(Z, b, y, *lams)
    assert L.convex_dual(np.ones((N, 3)), y, *lams) == -math.inf


# ----------------------------------------------------------------------------- perturbed gradient descent
def test_perturbed_gd_escapes_saddles_and_plain_gd_does_not():
    cf = ufm.closed_form(K, n, *LAMS)
    for name, x0 in _critical_points().items():
        r = L.perturbed_gd(*x0, Y, *LAMS, lr=3.0, radius=1e-3, t_thres=300, seed=0, max_iter=5000)
        assert r.converged, (name, r.message)
        assert abs(r.value - cf.value) < 1e-10, name
        assert r.perturbations[0] == 0
    # at the origin W = H = 0 the gradient in W and H is exactly 0 (in floating point too):
    # plain gradient descent never leaves it.  (At the other saddles rounding errors act as a
    # tiny perturbation and plain GD may escape slowly: the chapter shows it.)
    x0 = L.origin_critical_point(K, n, d)
    stuck = L.perturbed_gd(*x0, Y, *LAMS, lr=3.0, perturb=False, max_iter=300)
    assert abs(stuck.value - math.log(K)) < 1e-12 and np.abs(stuck.W).max() == 0


def test_perturbed_gd_divergence_keeps_last_finite_state():
    W, H, b = _random_point(11, scale=3.0)
    with pytest.warns(RuntimeWarning, match="diverged"):
        r = L.perturbed_gd(W, H, b, Y, *LAMS, lr=1e200, max_iter=50)
    assert not r.converged and np.all(np.isfinite(r.W)) and math.isfinite(r.value)


# ----------------------------------------------------------------------------- bad input
def test_value_errors():
    W, H, b = _random_point(12)
    with pytest.raises(ValueError, match="method"):
        L.hvp(W, H, b, Y, *LAMS, L.pack(W, H, b), method="fd")
    with pytest.raises(ValueError, match="length"):
        L.hvp(W, H, b, Y, *LAMS, np.ones(5))
    with pytest.raises(ValueError, match="shapes"):
        L.hvp(W, H, b, Y, *LAMS, (W, H, np.ones(3)))
    with pytest.raises(ValueError, match="lambda_H"):
        L.hessian_min_eig(W, H, b, Y, 1e-3, -1.0, 0.0)
    with pytest.raises(ValueError, match="max_params"):
        L.hessian(W, H, b, Y, *LAMS, max_params=10)
    with pytest.raises(ValueError, match="NaN"):
        L.hvp(W * np.nan, H, b, Y, *LAMS, L.pack(W, H, b))
    with pytest.raises(ValueError, match="partition"):
        L.tied_critical_point(K, n, d, *LAMS, [[0, 1], [1, 2, 3]])
    with pytest.raises(ValueError, match="equal size"):
        L.tied_critical_point(K, n, d, *LAMS, [[0], [1, 2, 3]])
    with pytest.raises(ValueError, match="m must"):
        L.dropped_classes_critical_point(K, n, d, *LAMS, K)
    with pytest.raises(ValueError, match="smaller than rank"):
        L.factorize(np.random.default_rng(0).standard_normal((6, 4)), np.zeros(4), 2, 1.0, 1.0)
    with pytest.raises(ValueError, match="c1"):
        L.ce_lower_bound(np.zeros(3), 0, -1.0)
    with pytest.raises(ValueError, match="k < K"):
        L.lemma_b5_c1(np.zeros(3), 3)
    with pytest.raises(ValueError, match="lambda_b > 0"):
        L.convex_dual(np.zeros((12, 4)), Y, 1e-3, 1e-3, 0.0)
    with pytest.raises(ValueError, match="Z must be"):
        L.convex_objective(np.zeros((5, 4)), np.zeros(4), Y, *LAMS)
    with pytest.raises(ValueError, match="lr"):
        L.perturbed_gd(W, H, b, Y, *LAMS, lr=0.0)
    with pytest.raises(ValueError, match="alpha"):
        L.nuclear_norm_variational(W, H, 0.0)


# ----------------------------------------------------------------------------- multistart = R separate runs
@pytest.mark.parametrize("opt,kw", [("gd", dict(lr=2.0)), ("adam", dict(lr=1e-2)), ("sgd", dict(lr=0.3))])
def test_multistart_equals_separate_ufm_solve_runs(opt, kw):
    seeds = [3, 8]
    T = 40
    r = L.multistart(K, n, d, *LAMS, opt, seeds, max_iter=T, **kw)
    for j, sd in enumerate(seeds):
        s = ufm.solve(K, n, d, *LAMS, opt, sd, tol=0.0, max_iter=T, reduced=False, **kw)
        np.testing.assert_allclose(r.W[j], s.W, atol=1e-12)
        np.testing.assert_allclose(r.H[j], s.H, atol=1e-12)
        np.testing.assert_allclose(r.b[j], s.b, atol=1e-12)
        assert abs(r.values[j] - ufm.objective(s.W, s.H, s.b, Y, *LAMS)) < 1e-13


def test_multistart_minibatch_sgd_is_unbiased_and_converges():
    # with mini-batches every run still reaches the closed-form value closely
    cf = ufm.closed_form(K, n, *LAMS)
    r = L.multistart(K, n, d, *LAMS, "sgd", range(5), lr=0.5, batch_size=4, max_iter=3000)
    assert np.all(r.values - cf.value > -1e-12) and np.all(r.values - cf.value < 1e-5)
    # the gradients it reports are of the full f (autograd)
    assert abs(r.grad_norms[0] - _autograd_grad_norm(r.W[0], r.H[0], r.b[0], Y, LAMS)) < 1e-12
    with pytest.raises(ValueError, match="optimizer"):
        L.multistart(K, n, d, *LAMS, "lbfgs", [0], lr=1.0, max_iter=1)
    with pytest.raises(ValueError, match="batch_size"):
        L.multistart(K, n, d, *LAMS, "sgd", [0], lr=1.0, max_iter=1, batch_size=0)


def test_multistart_divergence_freezes_runs():
    with pytest.warns(RuntimeWarning, match="diverged"):
        r = L.multistart(K, n, d, *LAMS, "gd", [0, 1], lr=1e200, max_iter=5, init_scale=3.0)
    assert r.diverged.all() and np.all(np.isfinite(r.W)) and np.all(np.isfinite(r.values))


def test_gd_stays_in_the_row_span_and_ends_at_a_lower_rank_saddle():
    # the chapter's argument: GD never leaves the span of the rows of [W; H]; after one step
    # along the proof's direction from the origin it solves the d = 1 problem, a saddle of d = 6
    W, H, b = L.origin_critical_point(K, n, d)
    pdir = L.proof_direction(W, H, b, Y, LAMS[0], LAMS[1])
    r = L.perturbed_gd(W + 1e-3 * pdir.dW, H + 1e-3 * pdir.dH, b, Y, *LAMS, lr=3.0, perturb=False,
                       tol=1e-11, max_iter=5000)
    assert r.converged and r.grad_norm <= 1e-11 and r.n_iter < 5000
    a = pdir.a
    assert np.linalg.norm(r.W - np.outer(r.W @ a, a)) < 1e-14 and np.linalg.norm(r.H - np.outer(r.H @ a, a)) < 1e-14
    d1 = L.multistart(K, n, 1, *LAMS, "gd", [0], lr=3.0, max_iter=3000)
    assert abs(r.value - d1.values[0]) < 1e-12
    assert np.linalg.eigvalsh(_autograd_hessian(r.W, r.H, r.b, Y, LAMS))[0] < -1e-3


@pytest.mark.parametrize("lams", [(5e-3, 5e-3, 0.0), (1e-2, 1e-3, 0.1)])
def test_constructions_other_sizes_and_zero_bias_decay(lams):
    Kk, nn, dd = 6, 2, 7
    y = ufm.balanced_labels(Kk, nn)
    pts = [L.dropped_classes_critical_point(Kk, nn, dd, *lams, m) for m in (2, 4, 5)]
    pts += [L.tied_critical_point(Kk, nn, dd, *lams, g) for g in ([[0, 1, 2], [3, 4, 5]], [[0, 3], [1, 4], [2, 5]])]
    for W, H, b in pts:
        assert _autograd_grad_norm(W, H, b, y, lams) < 1e-12
        assert L.certificate_c4(W, H, b, y, lams[0], lams[1]) > 1


def test_subspace_critical_points():
    cf = ufm.closed_form(K, n, *LAMS)
    vals = {}
    for r in (1, 2, 3):
        W, H, b = L.subspace_critical_point(K, n, d, *LAMS, r, rotation="random", seed=1)
        assert _autograd_grad_norm(W, H, b, Y, LAMS) < 1e-10
        assert np.linalg.matrix_rank(np.vstack([W, H]), tol=1e-8) <= r
        vals[r] = ufm.objective(W, H, b, Y, *LAMS)
        lmin = np.linalg.eigvalsh(_autograd_hessian(W, H, b, Y, LAMS))[0]
        if r < K - 1:
            assert vals[r] > cf.value + 1e-3 and lmin < -1e-3      # a strict saddle of d = 6
        else:
            assert abs(vals[r] - cf.value) < 1e-12 and lmin > -1e-10
    assert vals[1] > vals[2] > vals[3]
    with pytest.raises(ValueError, match="r must"):
        L.subspace_critical_point(K, n, d, *LAMS, 0)


# ----------------------------------------------------------------------------- other losses, class sizes
OTHER = [("mse", {}), ("label_smoothing", {"smoothing": 0.2}), ("focal", {"gamma": 2.0})]


def _loss_f(loss, kw, y, lams):
    from nclib import losses

    def f(W, H, b):
        Z = H @ W.T + b
        return (losses.loss(Z, torch.as_tensor(y), loss, **kw) + 0.5 * lams[0] * (W ** 2).sum()
                + 0.5 * lams[1] * (H ** 2).sum() + 0.5 * lams[2] * (b ** 2).sum())
    return f


@pytest.mark.parametrize("loss,kw", OTHER)
def test_hvp_other_losses_vs_finite_differences_of_gradients(loss, kw):
    W, H, b = _random_point(7, scale=0.7)
    rng = np.random.default_rng(1)
    D = tuple(rng.standard_normal(a.shape) for a in (W, H, b))
    hv = L.hvp(W, H, b, Y, *LAMS, D, loss=loss, **kw)
    eps = 1e-5
    gp = ufm.gradients(*(a + eps * e for a, e in zip((W, H, b), D)), Y, *LAMS, loss=loss, **kw)
    gm = ufm.gradients(*(a - eps * e for a, e in zip((W, H, b), D)), Y, *LAMS, loss=loss, **kw)
    for h, p, m in zip(hv, gp, gm):
        np.testing.assert_allclose(h, (p - m) / (2 * eps), atol=2e-7)
    with pytest.raises(ValueError, match="analytic"):
        L.hvp(W, H, b, Y, *LAMS, D, loss=loss, method="analytic", **kw)


@pytest.mark.parametrize("loss,kw", OTHER + [("ce", {})])
def test_origin_spectrum_other_losses_and_sizes_vs_dense_hessian(loss, kw):
    """The origin's spectrum (general path: numerical G and b0) against the dense autograd Hessian
    at (0, 0, b0); also imbalanced sizes."""
    for sizes in ([3, 3, 3, 3], [4, 3, 2, 1]):
        dd = 3
        spec = L.origin_hessian_spectrum(K, sizes, dd, *LAMS, loss=loss, **kw)
        ev = np.sort(np.concatenate([np.full(m, v) for v, m in spec]))
        y = ufm.class_labels(K, sizes)
        N = len(y)
        b0 = L._origin_bias(y, K, LAMS[2], loss, ufm._check_loss(loss, kw))
        g = ufm.gradients(np.zeros((K, dd)), np.zeros((N, dd)), b0, y, *LAMS, loss=loss, **kw)
        assert max(np.abs(x).max() for x in g) < 1e-9              # (0, 0, b0) is a critical point
        Hd = L.hessian(np.zeros((K, dd)), np.zeros((N, dd)), b0, y, *LAMS, loss=loss, **kw)
        np.testing.assert_allclose(ev, np.linalg.eigvalsh(Hd), atol=1e-9)


def test_origin_min_eig_label_smoothing_threshold():
    """Label smoothing alpha: the origin is a strict saddle iff K sqrt(n lW lH) < 1 - alpha (the
    sigma of G is (1 - alpha)/(K sqrt n)); the same threshold as closed_form's origin_at."""
    a = 0.3
    for x in (0.95 * (1 - a), 1.05 * (1 - a)):
        lam = x / (K * math.sqrt(n))
        e = L.origin_min_eig(K, n, d, lam, lam, 1e-2, loss="label_smoothing", smoothing=a)
        assert (e < 0) == (x < 1 - a)


@pytest.mark.parametrize("loss,kw", OTHER)
def test_multistart_other_losses_and_sizes_equal_separate_solve_runs(loss, kw):
    sizes = [4, 3, 2, 2]
    y = ufm.class_labels(K, sizes)
    r = L.multistart(K, sizes, d, *LAMS, "gd", [2, 9], lr=0.5, max_iter=30, loss=loss, **kw)
    for j, sd in enumerate([2, 9]):
        s = ufm.solve(K, sizes, d, *LAMS, "gd", sd, lr=0.5, tol=0.0, max_iter=30, reduced=False, loss=loss, **kw)
        np.testing.assert_allclose(r.W[j], s.W, atol=1e-12)
        np.testing.assert_allclose(r.H[j], s.H, atol=1e-12)
        assert abs(r.values[j] - ufm.objective(s.W, s.H, s.b, y, *LAMS, loss=loss, **kw)) < 1e-13


def test_hessian_min_eig_other_loss_matches_dense():
    W, H, b = _random_point(4, scale=0.5)
    Hd = L.hessian(W, H, b, Y, *LAMS, loss="mse")
    lam = L.hessian_min_eig(W, H, b, Y, *LAMS, loss="mse", tol=1e-12)
    assert lam == pytest.approx(np.linalg.eigvalsh(Hd)[0], abs=1e-8)


def test_origin_value_by_hand():
    K, n, d, lb = 4, 5, 6, 1e-2
    # CE, balanced: every logit equal at the origin, best bias 0, f = log K
    assert L.origin_value(K, n, d, 0.1, 0.1, lb) == pytest.approx(np.log(K), abs=1e-12)
    # MSE: b = beta 1 with (beta - 1) + (K - 1) beta + lb K beta = 0
    beta = 1.0 / (K * (1.0 + lb))
    f = 0.5 * ((beta - 1) ** 2 + (K - 1) * beta ** 2) + 0.5 * lb * K * beta ** 2
    assert L.origin_value(K, n, d, 0.1, 0.1, lb, loss="mse") == pytest.approx(f, abs=1e-12)
