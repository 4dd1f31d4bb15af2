"""Tests of nclib.deep_ufm against autograd, nclib.ufm (L = 1), closed forms and hand-made frames."""
import math

import numpy as np
import pytest
import torch

from nclib import deep_ufm as D
from nclib import etf, ufm


def _point(K, n, widths, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    dims = list(widths) + [K]
    H1 = rng.standard_normal((K * n, dims[0]))
    Ws = [rng.standard_normal((dims[i + 1], dims[i])) / math.sqrt(dims[i]) for i in range(len(widths))]
    b = rng.standard_normal(K) if bias else None
    return H1, Ws, b, np.repeat(np.arange(K), n)


def _autograd(H1, Ws, b, y, lams, loss, activation, **kw):
    """Independent F and gradient: torch autograd on a plain re-implementation."""
    lW, lH, lb = lams
    lWs = list(lW) if isinstance(lW, (list, tuple)) else [lW] * len(Ws)
    Ht = torch.tensor(H1, requires_grad=True)
    Wt = [torch.tensor(W, requires_grad=True) for W in Ws]
    bt = torch.tensor(np.zeros(Ws[-1].shape[0]) if b is None else b, requires_grad=True)
    X = Ht
    for W in Wt[:-1]:
        X = X @ W.T
        if activation == "relu":
            X = torch.relu(X)
    Z = X @ Wt[-1].T + bt
    yt = torch.as_tensor(y)
    if loss == "ce":
        lv = torch.nn.functional.cross_entropy(Z, yt)
    elif loss == "mse":
        lv = 0.5 * (Z - torch.nn.functional.one_hot(yt, Z.shape[1]).double()).pow(2).sum(1).mean()
    else:  # focal
        p = torch.softmax(Z, 1).gather(1, yt[:, None])[:, 0]
        lv = (-(1 - p) ** kw["gamma"] * torch.log(p)).mean()
    F = lv + lH / 2 * Ht.pow(2).sum() + sum(l / 2 * W.pow(2).sum() for l, W in zip(lWs, Wt)) + lb / 2 * bt.pow(2).sum()
    F.backward()
    return F.item(), Ht.grad.numpy(), [W.grad.numpy() for W in Wt], bt.grad.numpy()


@pytest.mark.parametrize("loss,kw", [("ce", {}), ("mse", {}), ("focal", {"gamma": 2.0})])
@pytest.mark.parametrize("activation", ["linear", "relu"])
@pytest.mark.parametrize("widths", [[5], [5, 7, 3]])
def test_value_and_gradients_match_autograd(loss, kw, activation, widths):
    H1, Ws, b, y = _point(4, 3, widths, seed=1)
    lams = ([1e-2, 2e-2, 3e-2][:len(widths)], 5e-3, 7e-3)
    F_ref, gH_ref, gW_ref, gb_ref = _autograd(H1, Ws, b, y, lams, loss, activation, **kw)
    assert D.objective(H1, Ws, b, y, lams, loss=loss, activation=activation, **kw) == pytest.approx(F_ref, abs=1e-13)
    gH, gWs, gb = D.gradients(H1, Ws, b, y, lams, loss=loss, activation=activation, **kw)
    assert np.abs(gH - gH_ref).max() < 1e-13
    assert all(np.abs(g - r).max() < 1e-13 for g, r in zip(gWs, gW_ref))
    assert np.abs(gb - gb_ref).max() < 1e-13


def test_internal_value_equals_objective_through_losses():
    H1, Ws, b, y = _point(3, 2, [4, 4], seed=2)
    lams = (1e-2, 1e-2, 1e-2)
    v, *_ = D._value_grads(H1, Ws, b, y, [1e-2, 1e-2], 1e-2, 1e-2, "relu", "ce", {})
    assert v == pytest.approx(D.objective(H1, Ws, b, y, lams, loss="ce", activation="relu"), abs=1e-14)


def test_L1_reduces_to_ufm_exactly():
    H1, Ws, b, y = _point(5, 4, [6], seed=3)
    lams = (5e-3, 1e-2, 2e-3)
    f = ufm.objective(Ws[0], H1, b, y, *lams)
    gW, gH, gb = ufm.gradients(Ws[0], H1, b, y, *lams)
    assert D.objective(H1, Ws[0], b, y, lams, loss="ce") == pytest.approx(f, abs=1e-14)
    dH, dWs, db = D.gradients(H1, Ws, b, y, lams, loss="ce")
    assert np.abs(dH - gH).max() < 1e-15 and np.abs(dWs[0] - gW).max() < 1e-15 and np.abs(db - gb).max() < 1e-15


def test_solve_L1_reaches_theorem_31_minimum():
    K, n, d, lams = 4, 3, 6, (5e-3, 5e-3, 5e-3)
    cf = ufm.closed_form(K, n, *lams)
    for opt in ("lbfgs", "gd"):
        r = D.solve(K, n, [d], lambdas=lams, loss="ce", optimizer=opt, seed=0, tol=1e-8)
        assert r.converged, (opt, r.message)
        assert r.value == pytest.approx(cf.value, abs=1e-10)


def test_dnc_value_ce_L1_is_closed_form():
    for K, n, lams in [(3, 2, (1e-2, 1e-2, 0.0)), (10, 5, (5e-4, 5e-4, 0.0)), (4, 1, (0.3, 0.3, 0.0))]:
        v, s = D.dnc_value(K, n, 1, lams, loss="ce")
        cf = ufm.closed_form(K, n, *lams)
        assert v == pytest.approx(cf.value, abs=1e-11)
        assert s == pytest.approx(cf.margin, abs=1e-6)


@pytest.mark.parametrize("L", [2, 3])
def test_dnc_value_mse_linear_is_the_minimum_found_by_multistart(L):
    # deep LINEAR UFM with MSE: the minimum over many random starts equals the DNC value
    K, n, lams = 3, 2, (2e-3, 2e-3, 0.0)
    v, s = D.dnc_value(K, n, L, lams, loss="mse")
    best = min(D.solve(K, n, [4] * L, lambdas=lams, loss="mse", bias=False, seed=sd, tol=1e-10).value
               for sd in range(4))
    assert best == pytest.approx(v, abs=1e-9)
    assert 0 < s < 1


def test_dnc_value_mse_attained_by_explicit_relu_configuration():
    K, n, L, lams = 4, 2, 3, (1e-3, 1e-3, 0.0)
    v, s = D.dnc_value(K, n, L, lams, loss="mse")
    # balanced nonnegative scaled identities: H1 rows a0 e_k, W_l = a_l I, a0^2 n lH = a_l^2 lW
    c = (n * lams[1] * lams[0] ** L) ** (1 / (L + 1))
    a0 = math.sqrt(c * s ** (2 / (L + 1)) / (n * lams[1]))
    al = math.sqrt(c * s ** (2 / (L + 1)) / lams[0])
    H1 = a0 * np.eye(K)[np.repeat(np.arange(K), n)]
    Ws = [al * np.eye(K) for _ in range(L)]
    y = np.repeat(np.arange(K), n)
    assert a0 * al ** L == pytest.approx(s, rel=1e-12)
    F = D.objective(H1, Ws, None, y, lams, loss="mse", activation="relu")
    assert F == pytest.approx(v, abs=1e-12)
    gH, gWs, _ = D.gradients(H1, Ws, None, y, lams, loss="mse", activation="relu")
    assert max(np.abs(gH).max(), max(np.abs(g).max() for g in gWs)) < 1e-7   # a critical point


def test_nonnegative_solve_is_feasible_and_stationary():
    K, n, d, lams = 4, 2, 6, (5e-3, 5e-3, 5e-3)
    vals = []
    for opt in ("lbfgs", "gd"):
        r = D.solve(K, n, [d], lambdas=lams, loss="ce", optimizer=opt, nonnegative=True, seed=0, tol=1e-8)
        assert r.H1.min() >= 0
        assert r.grad_norm < 1e-6, (opt, r.grad_norm, r.message)
        vals.append(r.value)
        # KKT by hand: where H1 > 0 the gradient vanishes, where H1 = 0 it is >= 0
        gH, _, _ = D.gradients(r.H1, r.Ws, r.b, r.y, lams, loss="ce")
        assert np.abs(gH[r.H1 > 1e-10]).max() < 1e-6 and gH[r.H1 <= 1e-10].min() > -1e-6
    assert vals[0] == pytest.approx(vals[1], abs=1e-7)
    # never below the unconstrained minimum
    assert min(vals) >= ufm.closed_form(K, n, *lams).value - 1e-12


def test_frame_distances_hand_made():
    K = 5
    of_means = 2.0 * np.eye(K, 7)
    assert D.frame_distances(of_means) == pytest.approx((0.0, 0.0), abs=1e-14)
    etf_means = etf.simplex_etf(K, 7)
    e, o = D.frame_distances(etf_means)
    assert e == pytest.approx(0.0, abs=1e-14)
    # Gram of a centred simplex ETF is (I - 11^T/K)*K/(K-1): its distance to I/sqrt(K) after normalising
    G = (np.eye(K) - 1 / K) / math.sqrt(K - 1)
    assert o == pytest.approx(np.linalg.norm(G - np.eye(K) / math.sqrt(K)), abs=1e-14)


def test_layer_report_on_dnc_configuration():
    K, n, L = 3, 2, 2
    r = D.solve(K, n, [5, 5], lambdas=(1e-3, 1e-3, 0.0), loss="mse", bias=False, seed=0, tol=1e-11)
    rep = D.layer_report(r)
    assert len(rep) == L
    for row in rep:
        assert row["nc1"] < 1e-8 and row["rank_means"] == K


def test_bad_input_raises():
    with pytest.raises(ValueError, match="activation"):
        D.solve(3, 1, [3], lambdas=(1e-3, 1e-3, 0), activation="tanh")
    with pytest.raises(ValueError, match="lambda_W"):
        D.solve(3, 1, [3, 3], lambdas=([1e-3], 1e-3, 0))
    with pytest.raises(ValueError, match="optimizer"):
        D.solve(3, 1, [3], lambdas=(1e-3, 1e-3, 0), optimizer="newton")
    with pytest.raises(ValueError, match="widths"):
        D.solve(3, 1, [], lambdas=(1e-3, 1e-3, 0))
    H1, Ws, b, y = _point(3, 2, [4])
    with pytest.raises(ValueError, match="W_1"):
        D.objective(H1, [Ws[0].T], b, y, (1e-3, 1e-3, 0))
    with pytest.raises(ValueError, match="loss"):
        D.objective(H1, Ws, b, y, (1e-3, 1e-3, 0), loss="hinge")


def test_code_value_simplex_is_theorem_31():
    for K, n in [(4, 2), (7, 3)]:
        lams = (5e-3, 5e-3, 0.0)
        v, m = D.code_value(etf.simplex_etf(K, K), n, lams[0], lams[1])
        cf = ufm.closed_form(K, n, *lams)
        assert v == pytest.approx(cf.value, abs=1e-10)
        assert m * K / (K - 1) == pytest.approx(cf.margin, rel=1e-5)   # logit gap m(1 + 1/(K-1))


def test_code_value_polygon_is_attained_by_explicit_point():
    K, n, lW, lH = 5, 2, 5e-3, 5e-3
    th = 2 * np.pi * np.arange(K) / K
    U = np.stack([np.cos(th), np.sin(th)], 1)
    v, m = D.code_value(U, n, lW, lH)
    # balanced scales: lW a^2 = n lH h^2, a h = m
    a = math.sqrt(m * math.sqrt(n * lH / lW))
    h = m / a
    y = ufm.balanced_labels(K, n)
    f = ufm.objective(a * U, h * U[y], np.zeros(K), y, lW, lH, 0.0)
    assert f == pytest.approx(v, abs=1e-12)
    # and m is optimal: the derivative of f along the family vanishes
    eps = 1e-5
    fp = D.code_value(U, n, lW, lH)[0]
    assert fp <= ufm.objective(a * (1 + eps) * U, h * U[y], np.zeros(K), y, lW, lH, 0.0) + 1e-15


def test_one_vs_rest_distance_hand_made():
    # square: the hull of the other three vertices of a unit square; nearest point is the
    # midpoint of the two neighbours' chord: distance 1 - cos(pi/2)... = 1 - 0 -> from (1,0) to
    # the segment (0,1)-(0,-1) the distance is 1
    U = np.array([[1.0, 0], [0, 1], [-1, 0], [0, -1]])
    assert D.one_vs_rest_distance(U) == pytest.approx(1.0, abs=1e-8)
    # simplex ETF of K points: distance from a vertex to the opposite facet = K/(K-1) * height ...
    K = 4
    E = etf.simplex_etf(K, K)
    # facet centroid is -u_k/(K-1): distance 1 + 1/(K-1)
    assert D.one_vs_rest_distance(E) == pytest.approx(1 + 1 / (K - 1), abs=1e-8)


def test_nonnegative_ufm_reaches_orthogonal_frame_value():
    # the orthogonal-frame configuration costs the unconstrained minimum with lambda_H -> lambda_H K/(K-1)
    K, n, lams = 3, 2, (5e-3, 5e-3, 5e-3)
    of_value = ufm.closed_form(K, n, lams[0], lams[1] * K / (K - 1), lams[2]).value
    r = D.solve(K, n, [2 * K], lambdas=lams, loss="ce", nonnegative=True, seed=0, tol=1e-9)
    assert r.value == pytest.approx(of_value, abs=1e-9)
    M = r.H1.reshape(K, n, -1).mean(axis=1)
    assert D.frame_distances(M)[1] < 1e-6
