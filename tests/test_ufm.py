"""Tests of nclib.ufm against independent computations (autograd, finite differences,
per-sample loops, brute-force grids over rho, the plain full-problem L-BFGS)."""
import math

import numpy as np
import pytest
import torch

from nclib import ufm
from nclib.etf import etf_gram
from nclib.ufm import (balanced_labels, closed_form, global_minimizer, gradients, objective, solve, xi)

LAMS = (5e-3, 1e-2, 2e-3)


def _rand(K=4, n=3, d=6, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.standard_normal((K, d)), scale * rng.standard_normal((K * n, d)),
            scale * rng.standard_normal(K), balanced_labels(K, n))


def _autograd(W, H, b, y, lW, lH, lb):
    Wt, Ht, bt = (torch.tensor(a, requires_grad=True) for a in (W, H, b))
    f = (torch.nn.functional.cross_entropy(Ht @ Wt.T + bt, torch.as_tensor(y))
         + lW / 2 * Wt.pow(2).sum() + lH / 2 * Ht.pow(2).sum() + lb / 2 * bt.pow(2).sum())
    f.backward()
    return f.item(), Wt.grad.numpy(), Ht.grad.numpy(), bt.grad.numpy()


# ----------------------------------------------------------------------------- f and gradients
def test_balanced_labels_class_major():
    assert balanced_labels(3, 2).tolist() == [0, 0, 1, 1, 2, 2]


def test_objective_matches_per_sample_loop():
    W, H, b, y = _rand(K=3, n=4, d=5, seed=1, scale=2.0)
    lW, lH, lb = LAMS
    total = 0.0
    for i in range(H.shape[0]):
        z = [sum(W[k, j] * H[i, j] for j in range(5)) + b[k] for k in range(3)]
        m = max(z)
        total += m + math.log(sum(math.exp(zk - m) for zk in z)) - z[y[i]]
    ref = total / H.shape[0] + lW / 2 * (W**2).sum() + lH / 2 * (H**2).sum() + lb / 2 * (b**2).sum()
    assert objective(W, H, b, y, lW, lH, lb) == pytest.approx(ref, rel=1e-13)


def test_objective_unbalanced_labels_and_torch_inputs():
    W, H, b, _ = _rand(K=3, n=4, d=5, seed=2)
    y = np.array([0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    ref = _autograd(W, H, b, y, *LAMS)[0]
    assert objective(torch.tensor(W), torch.tensor(H), torch.tensor(b), torch.tensor(y), *LAMS) == pytest.approx(ref, rel=1e-13)


def test_gradients_match_autograd():
    W, H, b, y = _rand(K=5, n=3, d=7, seed=3)
    _, aW, aH, ab = _autograd(W, H, b, y, *LAMS)
    gW, gH, gb = gradients(W, H, b, y, *LAMS)
    np.testing.assert_allclose(gW, aW, atol=1e-14)
    np.testing.assert_allclose(gH, aH, atol=1e-14)
    np.testing.assert_allclose(gb, ab, atol=1e-14)


def test_gradients_match_finite_differences():
    W, H, b, y = _rand(K=3, n=2, d=4, seed=4)
    g = np.concatenate([a.ravel() for a in gradients(W, H, b, y, *LAMS)])
    x = np.concatenate([W.ravel(), H.ravel(), b.ravel()])

    def f(v):
        return objective(v[:12].reshape(3, 4), v[12:36].reshape(6, 4), v[36:], y, *LAMS)

    rng = np.random.default_rng(0)
    for _ in range(5):
        u = rng.standard_normal(x.size)
        eps = 1e-5
        fd = (f(x + eps * u) - f(x - eps * u)) / (2 * eps)
        assert fd == pytest.approx(g @ u, rel=1e-7, abs=1e-10)
    # and coordinate-wise on a few entries
    for j in (0, 13, 37):
        e = np.zeros(x.size)
        e[j] = 1e-6
        assert (f(x + e) - f(x - e)) / 2e-6 == pytest.approx(g[j], abs=1e-8)


# ----------------------------------------------------------------------------- closed form
@pytest.mark.parametrize("K,n,lam", [(2, 3, (1e-2, 1e-2, 1e-2)), (4, 5, (5e-3, 1e-2, 2e-3)), (5, 2, (1e-1, 1e-3, 0.0))])
def test_closed_form_matches_plain_lbfgs(K, n, lam):
    cf = closed_form(K, n, *lam)
    r = solve(K, n, K + 2, *lam, optimizer="lbfgs", reduced=False, seed=1, tol=1e-10, max_iter=3000)
    assert not r.reduced
    assert r.value == pytest.approx(cf.value, abs=1e-10)
    # norms of the solution (Theorem 3.1)
    assert np.sum(r.W**2) == pytest.approx(cf.rho, rel=1e-5)
    np.testing.assert_allclose(np.linalg.norm(r.W, axis=1), cf.w_norm, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(r.H, axis=1), cf.h_norm, rtol=1e-5)
    np.testing.assert_allclose(r.H, cf.h_over_w * r.W[r.y], atol=1e-5 * cf.h_norm)
    if lam[2] > 0:
        np.testing.assert_allclose(r.b, 0.0, atol=1e-6)
    else:  # lambda_b = 0: only b = beta 1 is determined
        np.testing.assert_allclose(r.b - r.b.mean(), 0.0, atol=1e-6)


@pytest.mark.parametrize("K,n,lW,lH", [(3, 10, 1e-3, 5e-3), (10, 100, 5e-4, 5e-4), (4, 1, 0.3, 0.4)])
def test_closed_form_vs_bruteforce_grid_over_rho(K, n, lW, lH):
    cf = closed_form(K, n, lW, lH, 0.0)
    top = max(4 * cf.rho, 1.0)
    rho = np.linspace(0.0, top, 400001)
    v = xi(rho, K, n, lW, lH)
    j = int(np.argmin(v))
    assert v[j] == pytest.approx(cf.value, abs=1e-9)
    assert abs(rho[j] - cf.rho) <= 2 * (rho[1] - rho[0]) * max(1.0, cf.rho) ** 0.5 + 1e-3 * cf.rho
    assert v.min() >= cf.value - 1e-12


def test_xi_literal_formula_equals_objective_on_etf_family():
    K, n, d, lW, lH = 4, 3, 6, 1e-2, 2e-2
    E = global_minimizer(K, n, d, lW, lH, 0.0)[0]
    E = E / np.linalg.norm(E, axis=1, keepdims=True)            # unit simplex ETF rows
    y = balanced_labels(K, n)
    c = math.sqrt(lW / (n * lH))
    for rho in (0.0, 0.5, 3.0, 40.0, 3000.0):
        W = math.sqrt(rho / K) * E
        H = c * W[y]
        assert xi(rho, K, n, lW, lH) == pytest.approx(objective(W, H, np.zeros(K), y, lW, lH, 0.0), rel=1e-12, abs=1e-12)


def test_global_minimizer_is_critical_with_closed_form_value():
    for rot, seed in ((None, None), ("random", 3)):
        K, n, d = 5, 4, 9
        W, H, b = global_minimizer(K, n, d, *LAMS, rotation=rot, seed=seed)
        y = balanced_labels(K, n)
        cf = closed_form(K, n, *LAMS)
        assert objective(W, H, b, y, *LAMS) == pytest.approx(cf.value, abs=1e-14)
        for g in gradients(W, H, b, y, *LAMS):
            assert np.abs(g).max() < 1e-14
        np.testing.assert_allclose(W @ W.T / cf.w_norm**2, etf_gram(K), atol=1e-12)
        np.testing.assert_allclose(H.reshape(K, n, d).mean(0), 0.0, atol=1e-14)   # h_bar_i = 0 (eq. 5)
        np.testing.assert_allclose(H, cf.h_over_w * W[y], atol=1e-15)
        # a perturbation does not go below the minimum
        rng = np.random.default_rng(0)
        for _ in range(3):
            dW, dH, db = (1e-3 * rng.standard_normal(a.shape) for a in (W, H, b))
            assert objective(W + dW, H + dH, b + db, y, *LAMS) > cf.value


def test_closed_form_hand_case_K2():
    # K=2, n=1, lambda_W = lambda_H = lam: q = lam, c = 1, t* = log((1-q)/q), rho* = t*,
    # f* = -log(1-q) + q log((1-q)/q)  (the binary logistic case, by hand)
    lam = 0.1
    cf = closed_form(2, 1, lam, lam, 0.3)
    t = math.log(0.9 / 0.1)
    assert cf.rho == pytest.approx(t, rel=1e-14)
    assert cf.value == pytest.approx(-math.log(0.9) + 0.1 * t, rel=1e-14)
    assert cf.margin == pytest.approx(t, rel=1e-14)
    assert cf.regime == "etf"


# ----------------------------------------------------------------------------- the origin regime
def test_origin_regime_threshold_both_sides():
    K, n, lW = 4, 10, 1e-2
    lH_star = 1.0 / (K**2 * n * lW)                               # K sqrt(n lW lH) = 1
    below = closed_form(K, n, lW, lH_star * 0.98, 0.1)
    at = closed_form(K, n, lW, lH_star, 0.1)
    above = closed_form(K, n, lW, lH_star * 1.02, 0.1)
    assert not below.origin_only and below.rho > 0 and below.value < math.log(K)
    assert at.origin_only and above.origin_only
    assert at.value == math.log(K) and above.value == math.log(K) and above.rho == 0.0
    # continuity at the threshold
    assert closed_form(K, n, lW, lH_star * (1 - 1e-9), 0.1).value == pytest.approx(math.log(K), abs=1e-12)
    # numerically: just below, the solver leaves the origin; above, it goes to W = H = 0
    rb = solve(K, n, K + 1, lW, lH_star * 0.9, 0.1, "lbfgs", reduced=False, tol=1e-10, max_iter=3000)
    assert rb.value == pytest.approx(closed_form(K, n, lW, lH_star * 0.9, 0.1).value, abs=1e-10)
    assert rb.value < math.log(K) - 1e-4
    ra = solve(K, n, K + 1, lW, lH_star * 1.1, 0.1, "lbfgs", reduced=False, tol=1e-10, max_iter=3000)
    assert ra.value == pytest.approx(math.log(K), abs=1e-12)
    assert np.abs(ra.W).max() < 1e-5 and np.abs(ra.H).max() < 1e-5
    # the origin is critical (balanced labels, b = 0) with value log K
    W, H, b = global_minimizer(K, n, K + 1, lW, lH_star * 1.1, 0.1)
    assert np.all(W == 0) and np.all(H == 0)
    y = balanced_labels(K, n)
    assert objective(W, H, b, y, lW, lH_star, 0.1) == pytest.approx(math.log(K), abs=1e-15)
    assert max(np.abs(g).max() for g in gradients(W, H, b, y, lW, lH_star, 0.1)) < 1e-15


# ----------------------------------------------------------------------------- solve
@pytest.mark.parametrize("opt,kw,gap", [
    ("gd", {}, 1e-10),
    ("sgd", dict(batch_size=4, lr=0.05, max_iter=4000), 1e-4),
    ("adam", dict(max_iter=4000), 1e-10),
    ("lbfgs", {}, 1e-10),
    ("lbfgs", dict(reduced=False), 1e-10),
    ("gd", dict(reduced=True), 1e-10),
])
def test_solve_reaches_closed_form(opt, kw, gap):
    K, n, d, lam = 3, 4, 5, (1e-2, 1e-2, 1e-2)
    r = solve(K, n, d, *lam, optimizer=opt, seed=0, tol=1e-7, history_every=20, **kw)
    cf = closed_form(K, n, *lam)
    assert r.value == pytest.approx(cf.value, abs=gap)
    assert r.value >= cf.value - 1e-12                             # never below the global minimum
    assert r.W.shape == (K, d) and r.H.shape == (K * n, d) and r.b.shape == (K,)
    # the reported value and gradient norm are those of the returned full point
    assert r.value == pytest.approx(objective(r.W, r.H, r.b, r.y, *lam), abs=1e-15)
    gn = math.sqrt(sum(float(np.sum(g**2)) for g in gradients(r.W, r.H, r.b, r.y, *lam)))
    assert r.grad_norm == pytest.approx(gn, rel=1e-12)
    h = r.history
    assert len(h["iter"]) == len(h["value"]) == len(h["grad_norm"]) == len(h["nc1"]) == len(h["nc4"]) >= 2
    if opt != "sgd":
        assert r.converged and r.grad_norm <= 1e-7
        assert h["nc2"][-1] < 1e-4 and h["nc3"][-1] < 1e-4 and h["nc4"][-1] < 1e-4
        assert h["value"][-1] == pytest.approx(r.value, abs=1e-12)


def test_reduced_path_exactness():
    """The class-wise reduction: same value as the plain path, exact lift, H collapsed, and the
    full gradient at the lifted point is as small as the reduced one."""
    K, n, d, lam = 4, 6, 11, (2e-3, 3e-3, 1e-3)
    rr = solve(K, n, d, *lam, "lbfgs", seed=5, tol=1e-9)
    rf = solve(K, n, d, *lam, "lbfgs", seed=5, tol=1e-9, reduced=False, max_iter=5000)
    assert rr.reduced and not rf.reduced
    assert rr.value == pytest.approx(rf.value, abs=1e-12)
    assert rr.grad_norm < 1e-8
    np.testing.assert_array_equal(rr.H.reshape(K, n, d), np.repeat(rr.H.reshape(K, n, d)[:, :1], n, axis=1))
    np.testing.assert_allclose(rr.W @ rr.W.T, rf.W @ rf.W.T, atol=1e-6)   # same Gram (rotation-invariant)
    # Jensen: replacing H by its class means never increases f (the reduced path's start)
    W, H, b, y = _rand(K, n, d, seed=7)
    Hc = H.reshape(K, n, d).mean(1)[y]
    assert objective(W, Hc, b, y, *lam) <= objective(W, H, b, y, *lam)


def test_solve_from_given_init_and_at_a_critical_point():
    K, n, d, lam = 3, 2, 4, (1e-2, 1e-2, 1e-2)
    W, H, b = global_minimizer(K, n, d, *lam)
    r = solve(K, n, d, *lam, "gd", init=(W, H, b), tol=1e-12)
    assert r.n_iter == 0 and r.converged
    np.testing.assert_array_equal(r.W, W)
    # the origin is a critical point: GD started exactly there stays there (a saddle)
    z = (np.zeros((K, d)), np.zeros((K * n, d)), np.zeros(K))
    r0 = solve(K, n, d, *lam, "gd", init=z, tol=1e-12)
    assert r0.n_iter == 0 and r0.value == pytest.approx(math.log(K), abs=1e-15)


def test_solve_divergence_keeps_last_good_state():
    with pytest.warns(RuntimeWarning, match="diverged"):
        r = solve(3, 2, 4, 1e-2, 1e-2, 1e-2, "gd", lr=1e6, max_iter=200, seed=0, init_scale=10.0)
    assert "diverged" in r.message and np.isfinite(r.value) and np.all(np.isfinite(r.W))


# ----------------------------------------------------------------------------- errors
def test_value_errors():
    W, H, b, y = _rand()
    bad = [
        lambda: objective(W, H, b, y, -1e-3, 0, 0),
        lambda: objective(W, H, b, y, 0, float("nan"), 0),
        lambda: objective(W[:, :3], H, b, y, *LAMS),
        lambda: objective(W, H, b[:2], y, *LAMS),
        lambda: objective(W, H, b, y[:-1], *LAMS),
        lambda: objective(W, H, b, y + 10, *LAMS),
        lambda: objective(W, H, b, y + 0.5, *LAMS),
        lambda: objective(W[:1], H, b[:1], np.zeros_like(y), *LAMS),
        lambda: gradients(np.full_like(W, np.nan), H, b, y, *LAMS),
        lambda: closed_form(1, 3, *LAMS),
        lambda: closed_form(3, 0, *LAMS),
        lambda: closed_form(3, 2, 0.0, 1e-2, 0),
        lambda: closed_form(3, 2, 1e-2, 1e-2, -1),
        lambda: xi(-1.0, 3, 2, 1e-2, 1e-2),
        lambda: global_minimizer(5, 2, 3, *LAMS),
        lambda: solve(3, 2, 4, *LAMS, optimizer="newton"),
        lambda: solve(3, 2, 0, *LAMS),
        lambda: solve(1, 2, 4, *LAMS),
        lambda: solve(3, 0, 4, *LAMS),
        lambda: solve(3, 2, 4, -1e-2, 1e-2, 1e-2),
        lambda: solve(3, 2, 4, 1e-2, 1e-2, -1e-2),
        lambda: solve(3, 2, 4, *LAMS, optimizer="sgd", reduced=True),
        lambda: solve(3, 2, 4, *LAMS, optimizer="sgd", batch_size=0),
        lambda: solve(3, 2, 4, *LAMS, init=(np.zeros((3, 5)), np.zeros((6, 5)), np.zeros(3))),
        lambda: solve(3, 2, 4, *LAMS, lr=-1.0),
    ]
    for i, f in enumerate(bad):
        with pytest.raises(ValueError):
            f()
            pytest.fail(f"case {i} did not raise")


def test_error_messages_name_the_value():
    with pytest.raises(ValueError, match="newton"):
        solve(3, 2, 4, *LAMS, optimizer="newton")
    with pytest.raises(ValueError, match="d=3"):
        global_minimizer(5, 2, 3, *LAMS)
    with pytest.raises(ValueError, match="lambda_H"):
        closed_form(3, 2, 1e-2, -2.0, 0)


def test_public_names():
    for name in ufm.__all__:
        assert hasattr(ufm, name), name


def test_minimum_depends_only_on_q_and_reduced_problem_gradients():
    """Proposition 'class-wise reduction': f on collapsed H equals the n = 1 problem with
    n lambda_H, with grad_W, grad_b equal and grad_h = grad_c / n (checked against autograd on the
    full problem), and min f depends on (n, lambda_W, lambda_H) only through q = sqrt(n lW lH)."""
    K, n, d, (lW, lH, lb) = 3, 5, 4, LAMS
    rng = np.random.default_rng(11)
    W, C, b = rng.standard_normal((K, d)), rng.standard_normal((K, d)), rng.standard_normal(K)
    y = balanced_labels(K, n)
    H = C[y]
    fc = objective(W, C, b, np.arange(K), lW, n * lH, lb)
    val, aW, aH, ab = _autograd(W, H, b, y, lW, lH, lb)
    assert val == pytest.approx(fc, rel=1e-13)
    cW, cC, cb = gradients(W, C, b, np.arange(K), lW, n * lH, lb)
    np.testing.assert_allclose(aW, cW, atol=1e-14)
    np.testing.assert_allclose(ab, cb, atol=1e-14)
    np.testing.assert_allclose(aH, cC[y] / n, atol=1e-14)
    q = math.sqrt(n * lW * lH)
    assert closed_form(K, 1, q, q, lb).value == pytest.approx(closed_form(K, n, lW, lH, lb).value, rel=1e-14)
    assert closed_form(K, 4 * n, lW / 2, lH / 2, lb).value == pytest.approx(closed_form(K, n, lW, lH, lb).value, rel=1e-14)


# ----------------------------------------------------------------------------- other losses, class sizes
LOSS_CASES = [("ce", {}), ("mse", {}), ("label_smoothing", {"smoothing": 0.2}), ("focal", {"gamma": 2.0}),
              ("focal", {"gamma": 0.5})]


def _autograd_loss(W, H, b, y, lW, lH, lb, loss, kw):
    """Independent: torch autograd through nclib.losses.loss (plain formulas for mse/ls below)."""
    from nclib import losses

    Wt, Ht, bt = (torch.tensor(a, requires_grad=True) for a in (W, H, b))
    Z = Ht @ Wt.T + bt
    yt = torch.as_tensor(y)
    if loss == "mse":
        L = 0.5 * (Z - torch.nn.functional.one_hot(yt, W.shape[0]).double()).pow(2).sum(1).mean()
    elif loss == "label_smoothing":
        K = W.shape[0]
        T = (1 - kw["smoothing"]) * torch.nn.functional.one_hot(yt, K).double() + kw["smoothing"] / K
        L = -(T * torch.log_softmax(Z, 1)).sum(1).mean()
    else:
        L = losses.loss(Z, yt, loss, **kw)
    f = L + lW / 2 * Wt.pow(2).sum() + lH / 2 * Ht.pow(2).sum() + lb / 2 * bt.pow(2).sum()
    f.backward()
    return f.item(), Wt.grad.numpy(), Ht.grad.numpy(), bt.grad.numpy()


@pytest.mark.parametrize("loss,kw", LOSS_CASES)
def test_losses_value_and_gradient_vs_autograd_and_finite_differences(loss, kw):
    W, H, b, _ = _rand(K=4, n=3, d=5, seed=11, scale=1.5)
    y = np.array([0, 0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 3])               # imbalanced labels
    v = objective(W, H, b, y, *LAMS, loss=loss, **kw)
    g = gradients(W, H, b, y, *LAMS, loss=loss, **kw)
    ref = _autograd_loss(W, H, b, y, *LAMS, loss, kw)
    assert v == pytest.approx(ref[0], rel=1e-13)
    for a, r in zip(g, ref[1:]):
        np.testing.assert_allclose(a, r, atol=1e-13)
    rng = np.random.default_rng(0)
    D = [rng.standard_normal(a.shape) for a in (W, H, b)]
    eps = 1e-6
    fp = objective(*(a + eps * e for a, e in zip((W, H, b), D)), y, *LAMS, loss=loss, **kw)
    fm = objective(*(a - eps * e for a, e in zip((W, H, b), D)), y, *LAMS, loss=loss, **kw)
    assert (fp - fm) / (2 * eps) == pytest.approx(sum(float((a * e).sum()) for a, e in zip(g, D)), rel=1e-7)


def test_bfloat16_inputs_and_tiny_lambdas():
    W, H, b, y = _rand(K=3, n=2, d=4, seed=1)
    Wb, Hb, bb = (torch.tensor(a).to(torch.bfloat16) for a in (W, H, b))
    ref = objective(Wb.double().numpy(), Hb.double().numpy(), bb.double().numpy(), y, *LAMS)
    assert objective(Wb, Hb, bb, y, *LAMS) == ref
    cf = closed_form(4, 5, 1e-300, 1e-300, 0)
    # q = sqrt(5) 1e-300: t* = log((1 - 3q)/q), value -log(1-3q) + 3 q t* ~ 3 q t*  (tiny but finite)
    q = math.sqrt(5) * 1e-300
    assert cf.margin == pytest.approx(-math.log(q), rel=1e-12) and not cf.origin_only
    assert cf.value == pytest.approx(3 * q * (1 - math.log(q)), rel=1e-6)


def test_closed_form_d_check_and_d_equals_K_minus_1():
    with pytest.raises(ValueError, match="d >= K-1"):
        closed_form(5, 10, 1e-3, 1e-3, 1e-3, d=3)
    assert closed_form(5, 10, 1e-3, 1e-3, 1e-3, d=4).value == closed_form(5, 10, 1e-3, 1e-3, 1e-3).value
    cf = closed_form(5, 10, 1e-3, 1e-3, 1e-3)
    W, H, b = global_minimizer(5, 10, 4, 1e-3, 1e-3, 1e-3)            # d = K - 1 attains it
    y = balanced_labels(5, 10)
    assert objective(W, H, b, y, 1e-3, 1e-3, 1e-3) == pytest.approx(cf.value, abs=1e-13)
    assert max(np.abs(g).max() for g in gradients(W, H, b, y, 1e-3, 1e-3, 1e-3)) < 1e-12
    np.testing.assert_allclose(W @ W.T, cf.w_norm ** 2 * etf_gram(5), atol=1e-13)


def test_solve_d_smaller_than_K_minus_1_beats_independent_multistart():
    """K=5, d=3 (no ETF fits; issue 8's case): solve's best-of-restarts value is <= an independent
    minimisation (scipy BFGS on the FULL problem from 12 random starts) + 1e-8, and above the
    d >= K-1 closed form."""
    from scipy.optimize import minimize

    K, n, d, lams = 5, 2, 3, (1e-3, 1e-3, 1e-3)
    r = solve(K, n, d, *lams, tol=1e-10)
    y = balanced_labels(K, n)
    best = np.inf
    for s in range(12):
        rng = np.random.default_rng(100 + s)
        x0 = rng.standard_normal(K * d + K * n * d + K) / math.sqrt(d)

        def fg(x):
            W, H, b = x[:K * d].reshape(K, d), x[K * d:-K].reshape(K * n, d), x[-K:]
            v = objective(W, H, b, y, *lams)
            return v, np.concatenate([g.ravel() for g in gradients(W, H, b, y, *lams)])

        best = min(best, minimize(fg, x0, jac=True, method="BFGS", options={"gtol": 1e-10, "maxiter": 20000}).fun)
    assert r.value <= best + 1e-8
    assert r.value > closed_form(K, n, *lams).value + 1e-3
    assert len(r.restart_values) == 10


@pytest.mark.parametrize("loss,kw", [("mse", {}), ("label_smoothing", {"smoothing": 0.1}), ("focal", {"gamma": 2.0})])
@pytest.mark.parametrize("lam", [1e-3, 3e-2])
def test_closed_forms_other_losses_vs_solve_and_gd(loss, kw, lam):
    """closed_form for each loss (both regimes: K q = 0.045 and 1.34 for n = 5, K = 4... see lam)
    against the reduced L-BFGS and the plain full-problem L-BFGS."""
    K, n, d = 4, 5, 6
    cf = closed_form(K, n, lam, lam, lam, loss=loss, **kw)
    r = solve(K, n, d, lam, lam, lam, loss=loss, tol=1e-10, **kw)
    rf = solve(K, n, d, lam, lam, lam, loss=loss, tol=1e-9, reduced=False, seed=3, **kw)
    assert r.value == pytest.approx(cf.value, abs=1e-10)
    assert rf.value == pytest.approx(cf.value, abs=1e-9)
    assert np.sum(r.W ** 2) == pytest.approx(cf.rho, abs=1e-5)


def test_mse_closed_form_bruteforce_and_no_bias():
    """MSE closed form vs a brute-force scan over the 2 scalars (alpha, beta) of M = alpha C + beta J/K
    and over b, and the bias-free version vs solve(bias=False)."""
    K, n = 3, 4
    for lam, lb in [(1e-2, 0.5), (1e-2, 0.0), (2e-1, 0.1), (5e-3, 2.0)]:
        cf = closed_form(K, n, lam, lam, lb, loss="mse")
        q = math.sqrt(n) * lam
        C = np.eye(K) - 1.0 / K
        J = np.ones((K, K)) / K
        al = np.linspace(0, 1.2, 241)
        best = np.inf
        for a_ in al:
            for b_ in al:
                M = a_ * C + b_ * J
                # optimal bias for this M: minimise (1/2K)||M + 1 beta^T - I||^2 + lb/2||beta||^2
                beta = (np.eye(K) - M).mean(0) / (1 + lb)
                v = (0.5 / K) * np.sum((M + beta[None, :] - np.eye(K)) ** 2) + lb / 2 * beta @ beta \
                    + q * np.abs(np.linalg.eigvalsh(M)).sum()
                best = min(best, v)
        assert cf.value <= best + 1e-12 and best - cf.value < 5e-4
        assert solve(K, n, 5, lam, lam, lb, loss="mse", tol=1e-11).value == pytest.approx(cf.value, abs=1e-10)
    cf0 = closed_form(K, n, 1e-2, 1e-2, 0.0, loss="mse", bias=False)
    r0 = solve(K, n, 5, 1e-2, 1e-2, 0.0, loss="mse", bias=False, tol=1e-11)
    assert np.all(r0.b == 0) and r0.value == pytest.approx(cf0.value, abs=1e-10)
    assert cf0.rank == K
    with pytest.raises(ValueError, match="rank"):
        closed_form(K, n, 1e-2, 1e-2, 0.0, loss="mse", bias=False, d=2)
    with pytest.raises(ValueError, match="balanced"):
        closed_form(K, [4, 4, 2], 1e-2, 1e-2, 0.0, loss="mse")


def test_origin_thresholds_per_loss():
    K, n = 4, 5
    for loss, kw, at in [("ce", {}, 1.0), ("mse", {}, 1.0), ("label_smoothing", {"smoothing": 0.3}, 0.7)]:
        for x in (0.98 * at, 1.02 * at):
            lam = x / (K * math.sqrt(n))
            cf = closed_form(K, n, lam, lam, 1e-2, loss=loss, **kw)
            assert cf.origin_only == (x >= at) and cf.origin_at == pytest.approx(at)


@pytest.mark.parametrize("loss,kw", [("ce", {}), ("mse", {}), ("focal", {"gamma": 1.0})])
def test_imbalanced_reduced_solve_equals_full_problem(loss, kw):
    sizes = [6, 6, 2, 1]
    lams = (5e-3, 5e-3, 1e-3)
    r = solve(4, sizes, 7, *lams, loss=loss, tol=1e-10, **kw)
    rf = solve(4, sizes, 7, *lams, loss=loss, tol=1e-8, reduced=False, seed=5, max_iter=20000, **kw)
    assert r.value == pytest.approx(rf.value, abs=1e-8)
    y = ufm.class_labels(4, sizes)
    assert r.y.tolist() == y.tolist()
    assert r.value == pytest.approx(objective(r.W, r.H, r.b, y, *lams, loss=loss, **kw), abs=1e-14)
    g = gradients(r.W, r.H, r.b, y, *lams, loss=loss, **kw)
    assert r.grad_norm == pytest.approx(math.sqrt(sum(float((x * x).sum()) for x in g)), rel=1e-6, abs=1e-14)


def test_sizes_validation_names_assumption():
    with pytest.raises(ValueError, match="balanced"):
        balanced_labels(3, [2, 2, 2])
    with pytest.raises(ValueError, match="K=3"):
        solve(3, [2, 2], 4, *LAMS)
    with pytest.raises(ValueError, match="loss"):
        objective(*_rand(), *LAMS, loss="hinge")
    assert ufm.class_labels(3, [2, 1, 3]).tolist() == [0, 0, 1, 2, 2, 2]


def test_ufm_does_not_import_landscape():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import sys, nclib.ufm; print('nclib.landscape' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
    assert not hasattr(ufm, "hessian_min_eig")
