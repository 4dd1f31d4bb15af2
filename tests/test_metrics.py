"""Tests for nclib.metrics: eqs. (7)-(10) against brute-force loops and hand-made cases."""
import math

import numpy as np
import pytest
import torch

from nclib import etf, metrics


# ----------------------------------------------------------------------------- references
def brute_force(W, b, H, y, K, convention="zhu"):
    """Eqs. (7)-(10) by per-sample loops and a d x d eigendecomposition (independent path)."""
    H = np.asarray(H, dtype=np.float64)
    N, d = H.shape
    means = np.zeros((K, d))
    counts = np.zeros(K)
    for i in range(N):
        means[y[i]] += H[i]
        counts[y[i]] += 1
    means /= counts[:, None]
    hG = H.sum(0) / N if convention == "zhu" else means.mean(0)
    SW = np.zeros((d, d))
    for i in range(N):
        r = H[i] - means[y[i]]
        SW += np.outer(r, r)
    SW /= N
    SB = np.zeros((d, d))
    for k in range(K):
        c = means[k] - hG
        SB += np.outer(c, c)
    SB /= K
    lam, U = np.linalg.eigh(SB)
    r = min(K - 1, d)
    lam, U = lam[::-1][:r], U[:, ::-1][:, :r]
    SBpinv = (U / lam) @ U.T
    nc1 = np.trace(SW @ SBpinv) / (K if convention == "zhu" else 1)
    target = (np.eye(K) - np.ones((K, K)) / K) / np.sqrt(K - 1)
    WWt = W @ W.T
    nc2 = np.linalg.norm(WWt / np.linalg.norm(WWt) - target)
    hG_z = H.sum(0) / N
    Hbar = (means - hG_z).T  # d x K, the paper's convention
    WH = W @ Hbar
    nc3 = np.linalg.norm(WH / np.linalg.norm(WH) - target)
    nc4 = np.linalg.norm(b + W @ hG_z)
    correct = sum(int(np.argmax(W @ H[i] + b) == y[i]) for i in range(N))
    return nc1, nc2, nc3, nc4, correct / N, means


def random_problem(K=4, n=30, d=7, seed=0, spread=3.0):
    rng = np.random.default_rng(seed)
    centres = spread * rng.standard_normal((K, d))
    y = rng.permutation(np.repeat(np.arange(K), n))
    H = centres[y] + rng.standard_normal((K * n, d))
    W = rng.standard_normal((K, d))
    b = rng.standard_normal(K)
    return W, b, H, y


# ----------------------------------------------------------------------------- brute force
@pytest.mark.parametrize("K,n,d", [(2, 20, 3), (3, 15, 5), (5, 12, 9), (4, 10, 2)])
def test_against_brute_force(K, n, d):
    W, b, H, y = random_problem(K, n, d, seed=K + d)
    nc1, nc2, nc3, nc4, acc, _ = brute_force(W, b, H, y, K)
    m = metrics.nc_metrics(W, b, H, y)
    np.testing.assert_allclose([m.nc1, m.nc2, m.nc3, m.nc4, m.accuracy], [nc1, nc2, nc3, nc4, acc],
                               rtol=1e-10, atol=1e-13)
    assert metrics.nc1(H, y) == pytest.approx(nc1, rel=1e-10)
    assert metrics.nc2(W) == pytest.approx(nc2, rel=1e-10)
    assert metrics.nc3(W, H, y) == pytest.approx(nc3, rel=1e-10)
    assert metrics.nc4(W, b, H) == pytest.approx(nc4, rel=1e-10)


def test_papyan_convention_against_brute_force():
    # unbalanced classes make the weighted and unweighted global means differ
    rng = np.random.default_rng(5)
    K, d = 3, 6
    y = np.concatenate([np.full(5, 0), np.full(20, 1), np.full(11, 2)])
    H = 2 * rng.standard_normal((K, d))[y] + rng.standard_normal((len(y), d))
    ref = brute_force(np.eye(K, d), np.zeros(K), H, y, K, convention="papyan")[0]
    assert metrics.nc1(H, y, convention="papyan") == pytest.approx(ref, rel=1e-10)
    zhu = brute_force(np.eye(K, d), np.zeros(K), H, y, K)[0]
    assert metrics.nc1(H, y) == pytest.approx(zhu, rel=1e-10)
    assert abs(zhu * K - ref) > 1e-3 * ref  # the conventions really differ here
    assert metrics.nc_metrics(np.eye(K, d), np.zeros(K), H, y).extras["nc1_papyan"] == pytest.approx(ref, rel=1e-10)


# ----------------------------------------------------------------------------- hand-made
def test_K2_by_hand():
    # 1-D features 0, 2 | 4, 6: means 1, 5, global 3; Sigma_B = 4, Sigma_W = 1 -> NC1 = (1/2)(1/4)
    H = np.array([[0.0], [2.0], [4.0], [6.0]])
    y = np.array([0, 0, 1, 1])
    assert metrics.nc1(H, y) == pytest.approx(1 / 8, rel=1e-14)
    assert metrics.nc1(H, y, convention="papyan") == pytest.approx(1 / 4, rel=1e-14)
    W = np.array([[-1.0], [1.0]])
    b = np.array([3.0, -3.0])  # b = -W h_G: bias collapse exact
    assert metrics.nc4(W, b, H) == pytest.approx(0.0, abs=1e-15)
    assert metrics.nc4(W, np.zeros(2), H) == pytest.approx(np.sqrt(18.0), rel=1e-14)
    # K = 2: any W with antipodal rows is a (scaled) simplex ETF
    assert metrics.nc2(W) == pytest.approx(0.0, abs=1e-15)
    assert metrics.nc3(W, H, y) == pytest.approx(0.0, abs=1e-15)
    assert metrics.nc3(-W, H, y) == pytest.approx(2.0, rel=1e-14)  # W Hbar = -target: distance 2


def test_K3_by_hand():
    # classifier with orthonormal rows: W W^T / ||.||_F = I/sqrt(3) against (I - 11^T/3)/sqrt(2)
    W = np.eye(3)
    diag = 1 / np.sqrt(3) - (2 / 3) / np.sqrt(2)
    off = (1 / 3) / np.sqrt(2)
    assert metrics.nc2(W) == pytest.approx(np.sqrt(3 * diag**2 + 6 * off**2), rel=1e-14)
    # features exactly at the ETF (one per class): NC1 = 0, NC3 = 0 when W is the same ETF
    M = 5.0 * etf.simplex_etf(3, 4)
    y = np.array([0, 1, 2, 0, 1, 2])
    H = M[y]
    assert metrics.nc1(H, y) == pytest.approx(0.0, abs=1e-28)
    assert metrics.nc3(etf.simplex_etf(3, 4), H, y) == pytest.approx(0.0, abs=1e-14)


# ----------------------------------------------------------------------------- invariances
def test_rotation_and_order_invariance():
    W, b, H, y = random_problem(K=5, n=20, d=8, seed=3)
    base = metrics.nc_metrics(W, b, H, y)
    Q = etf.random_orthonormal(8, 8, seed=7)
    rot = metrics.nc_metrics(W @ Q, b, H @ Q, y)
    perm = np.random.default_rng(1).permutation(len(y))
    shuf = metrics.nc_metrics(W, b, H[perm], y[perm])
    for other in (rot, shuf):
        for key in ("nc1", "nc2", "nc3", "nc4", "accuracy"):
            assert getattr(other, key) == pytest.approx(getattr(base, key), rel=1e-9, abs=1e-12)


def test_scale_invariance_of_nc1_nc2_nc3():
    W, b, H, y = random_problem(seed=4)
    a = metrics.nc_metrics(W, b, H, y)
    s = metrics.nc_metrics(10 * W, b, 0.01 * H, y)
    for key in ("nc1", "nc2", "nc3"):
        assert getattr(s, key) == pytest.approx(getattr(a, key), rel=1e-9)


# ----------------------------------------------------------------------------- inputs
def test_torch_and_numpy_inputs_agree():
    W, b, H, y = random_problem(seed=6)
    a = metrics.nc_metrics(W, b, H, y).to_dict()
    t = metrics.nc_metrics(torch.tensor(W), torch.tensor(b), torch.tensor(H, dtype=torch.float64),
                           torch.tensor(y)).to_dict()
    for k, v in a.items():
        assert t[k] == pytest.approx(v, rel=1e-12, abs=1e-15), k


def test_float32_input_is_computed_in_float64():
    # features near collapse: float32 storage, float64 arithmetic -> NC1 matches the float64 value
    K, n, d, sigma = 10, 200, 64, 1e-4 / 8
    H, y = etf.noisy_etf_features(K, n, d, sigma, seed=0)
    ref = metrics.nc1(H, y)
    got = metrics.nc1(torch.tensor(H, dtype=torch.float32), torch.tensor(y))
    assert got == pytest.approx(ref, rel=1e-2)
    assert ref == pytest.approx(etf.expected_nc1_noisy_etf(K, n, sigma), rel=0.1)


# ----------------------------------------------------------------------------- extras
def test_extras_against_loops():
    W, b, H, y = random_problem(K=4, n=25, d=6, seed=8)
    m = metrics.nc_metrics(W, b, H, y)
    *_, means = brute_force(W, b, H, y, 4)
    C = means - means.mean(0)  # Papyan et al.: centred on the unweighted mean of the class means
    norms = np.linalg.norm(C, axis=1)
    assert m.extras["equinorm_H"] == pytest.approx(norms.std(ddof=1) / norms.mean(), rel=1e-10)
    cos = [C[k] @ C[l] / (norms[k] * norms[l]) for k in range(4) for l in range(4) if k != l]
    assert m.extras["equiangularity_H"] == pytest.approx(np.mean(np.abs(np.array(cos) + 1 / 3)), rel=1e-10)
    wn = np.linalg.norm(W, axis=1)
    assert m.extras["equinorm_W"] == pytest.approx(wn.std(ddof=1) / wn.mean(), rel=1e-12)
    mism = 0
    for i in range(len(y)):
        net = np.argmax(W @ H[i] + b)
        ncc = np.argmin([np.sum((H[i] - means[k]) ** 2) for k in range(4)])
        mism += int(net != ncc)
    assert m.extras["ncc_mismatch"] == pytest.approx(mism / len(y), abs=1e-15)
    assert metrics.ncc_mismatch(W, b, H, y) == pytest.approx(mism / len(y), abs=1e-15)


def brute_force_decisions(W, b, H, y, means):
    """Per sample: the classifier's argmax and the nearest class centre (loops, float64)."""
    H = np.asarray(H, dtype=np.float64)
    net = np.array([np.argmax(W @ h + b) for h in H])
    ncc = np.array([np.argmin([np.sum((h - m) ** 2) for m in means]) for h in H])
    return float(np.mean(net == y)), float(np.mean(net != ncc))


@pytest.mark.parametrize("order", ["by class", "shuffled", "by class, one run reversed"])
def test_class_ordered_chunks_against_brute_force(order):
    # 1,500 samples per class: class-ordered labels give chunks of one class (a broadcast
    # subtraction) and chunks that straddle two classes; the per-sample decisions are then
    # counted class by class, which must equal the per-sample loops in any label order
    K, n, d = 3, 1500, 5
    rng = np.random.default_rng(21)
    y = np.repeat(np.arange(K), n)
    if order == "shuffled":
        y = rng.permutation(y)
    elif order != "by class":
        y[1000:2000] = y[1000:2000][::-1].copy()
    H = (1.5 * rng.standard_normal((K, d))[y] + rng.standard_normal((K * n, d))).astype(np.float32)
    W, b = rng.standard_normal((K, d)), rng.standard_normal(K)
    nc1, nc2, nc3, nc4, acc, means = brute_force(W, b, H, y, K)
    acc_loop, mism = brute_force_decisions(W, b, H, y, means)
    assert acc_loop == acc and 0.05 < acc < 0.95 and mism > 0.05  # a case where both count
    m = metrics.nc_metrics(W, b, H, y)
    # float32 features: NC1 to the float32 grade the module documents (3e-8 .. 4e-7); NC3 and NC4
    # through float32 products of residuals as large as the means here: float32's eps, 6e-8
    assert m.nc1 == pytest.approx(nc1, rel=1e-6)
    np.testing.assert_allclose([m.nc2, m.nc3, m.nc4], [nc2, nc3, nc4], rtol=1e-7)
    assert m.accuracy == acc and m.extras["ncc_mismatch"] == pytest.approx(mism, abs=1e-15)
    for logits in (False, True):  # the accumulator, with the decisions from given logits or from (W, b)
        a = metrics.NCAccumulator(K, copy=False)
        for i in range(0, K * n, 700):
            hb = torch.from_numpy(H[i:i + 700])
            a.update(hb, y[i:i + 700], logits=hb.double() @ torch.tensor(W).T + torch.tensor(b) if logits else None)
        got = a.compute(W, b)
        assert got.accuracy == acc and got.extras["ncc_mismatch"] == pytest.approx(mism, abs=1e-15)
        assert got.nc1 == pytest.approx(nc1, rel=1e-6)


def test_tied_logits_are_decided_as_argmax_decides_them():
    # two identical classifier rows: every sample of class 1 ties with class 0 and argmax
    # (the first largest) says 0, so only class 0 and class 2 count as right
    K, n, d = 3, 1200, 4
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(K), n)
    H = 4.0 * np.eye(K, d)[y] + 0.1 * rng.standard_normal((K * n, d))
    W = np.eye(K, d)
    W[1] = W[0]
    b = np.zeros(K)
    m = metrics.nc_metrics(W, b, H, y)
    assert m.accuracy == np.mean(np.argmax(H @ W.T + b, 1) == y) == pytest.approx(2 / 3)


def test_first_best_is_argmax_and_argmin_with_ties_and_nan():
    S = torch.tensor([[1.0, 2.0, 5.0, 0.0, float("nan")],
                      [3.0, 2.0, 5.0, 0.0, 1.0],
                      [3.0, 0.0, 1.0, 0.0, 2.0]], dtype=torch.float64)
    for largest, ref in ((True, S.argmax(0)), (False, S.argmin(0))):
        hit = metrics._first_best(S, largest)
        assert hit.sum(0).tolist() == [1] * 5
        assert hit.to(torch.int8).argmax(0).tolist() == ref.tolist()
    # a NaN column (no hit) beside a tied one (two hits): n hits in all, still decided as argmax decides
    S2 = torch.tensor([[float("nan"), 1.0], [0.0, 1.0]], dtype=torch.float64)
    assert metrics._first_best(S2, True).to(torch.int8).argmax(0).tolist() == S2.argmax(0).tolist()
    assert metrics._first_best(S2, True).sum(0).tolist() == [1, 1]
    clean = S[:, :2]  # no tie in a column: the fast path
    assert metrics._first_best(clean, True).to(torch.int8).argmax(0).tolist() == clean.argmax(0).tolist()


def test_chunk_classes_names_the_chunks_of_one_class():
    y = torch.cat([torch.zeros(1500, dtype=torch.long), torch.ones(1000, dtype=torch.long),
                   torch.tensor([2, 2, 1])])
    src = metrics._Source([torch.zeros(len(y), 2)], [y])
    # chunks of 1,024 rows: [0, 1024) class 0; [1024, 2048) classes 0 and 1; [2048, 2503) classes 1, 2
    assert src.chunk_classes() == [0, None, None]
    two = metrics._Source([torch.zeros(1024, 2), torch.zeros(3, 2)], [y[:1024], torch.tensor([2, 2, 2])])
    assert two.chunk_classes() == [0, 2]


def test_mixed_and_one_class_chunks_against_brute_force():
    """Chunks of one class (a broadcast) and of several (index by index) in one H: the numbers
    of a per-sample float64 computation."""
    rng = np.random.default_rng(11)
    K, d = 5, 6
    y = np.concatenate([np.repeat([0, 1, 2], [1100, 600, 900]), rng.integers(0, K, 1100)])
    H = (np.eye(K, d)[y] * 3.0 + 0.2 * rng.standard_normal((len(y), d))).astype(np.float32)
    W, b = rng.standard_normal((K, d)), rng.standard_normal(K)
    kinds = metrics._Source([torch.from_numpy(H)], [torch.from_numpy(y)]).chunk_classes()
    assert kinds[0] == 0 and kinds[-1] is None  # both kinds of chunk occur
    m = metrics.nc_metrics(W, b, H, y)
    X = H.astype(np.float64)
    mu = np.stack([X[y == k].mean(0) for k in range(K)])
    assert np.allclose(metrics.class_means(H, y)[1].numpy(), mu, rtol=0, atol=1e-12)
    SW = sum(np.outer(r, r) for r in X - mu[y]) / len(y)
    C = mu - X.mean(0)  # eq. (7): centred on the global mean of the samples
    assert m.nc1 == pytest.approx(np.trace(SW @ np.linalg.pinv(C.T @ C / K)) / K, rel=1e-6)
    logits = X @ W.T + b
    assert m.accuracy == np.mean(logits.argmax(1) == y)
    dist = ((X[:, None, :] - mu[None]) ** 2).sum(-1)
    assert m.extras["ncc_mismatch"] == np.mean(dist.argmin(1) != logits.argmax(1))


def test_papyan_extras_by_hand():
    # norms 1, 2, 3, 6: mean 3, unbiased variance (4 + 1 + 0 + 9) / 3 = 14/3 -> equinorm sqrt(14/3)/3
    X = np.diag([1.0, 2.0, 3.0, 6.0])
    assert metrics.equinorm(X) == pytest.approx(np.sqrt(14 / 3) / 3, rel=1e-14)
    # orthogonal rows: cos = 0 for every pair, |0 + 1/3| = 1/3
    assert metrics.equiangularity(X) == pytest.approx(1 / 3, rel=1e-14)
    # unbalanced classes: 1 sample at (0, 0), 3 samples at (4, 0), 2 at (0, 2).  Unweighted mean of
    # the means (4/3, 2/3); weighted global mean (2, 2/3).  Papyan's centring gives norms
    # |(-4/3, -2/3)| = sqrt(20)/3, |(8/3, -2/3)| = sqrt(68)/3, |(-4/3, 4/3)| = sqrt(32)/3.
    H = np.array([[0, 0], [4, 0], [4, 0], [4, 0], [0, 2], [0, 2]], dtype=float)
    y = np.array([0, 1, 1, 1, 2, 2])
    n = np.sqrt([20.0, 68.0, 32.0]) / 3
    m = metrics.nc_metrics(np.eye(3, 2), np.zeros(3), H, y)
    assert m.extras["equinorm_H"] == pytest.approx(n.std(ddof=1) / n.mean(), rel=1e-12)
    C = np.array([[-4, -2], [8, -2], [-4, 4]]) / 3.0
    U = C / n[:, None]
    cos = np.array([U[0] @ U[1], U[0] @ U[2], U[1] @ U[2]])
    assert m.extras["equiangularity_H"] == pytest.approx(np.mean(np.abs(cos + 0.5)), rel=1e-12)
    # a simplex ETF (any scale) is equinorm and equiangular
    M = 7.0 * etf.simplex_etf(5, 6)
    assert metrics.equinorm(M) == pytest.approx(0.0, abs=1e-14)
    assert metrics.equiangularity(M) == pytest.approx(0.0, abs=1e-14)


# ----------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("budget", [2 ** 30, 0])
@pytest.mark.parametrize("batch", [1, 7, 64, 10_000])
def test_accumulator_equals_in_memory(batch, budget):
    # budget 2**30: batches kept, the in-memory method; budget 0: the streaming d x d scatter
    W, b, H, y = random_problem(K=5, n=40, d=9, seed=9)
    ref = metrics.nc_metrics(W, b, H, y)
    acc = metrics.NCAccumulator(5, max_buffer_bytes=budget)
    for i in range(0, len(y), batch):
        hb = torch.tensor(H[i:i + batch])
        acc.update(hb, y[i:i + batch], logits=hb @ torch.tensor(W).T + torch.tensor(b))
    assert acc.streaming == (budget == 0)
    got = acc.compute(W, b)
    for key in ("nc1", "nc2", "nc3", "nc4", "accuracy"):
        assert getattr(got, key) == pytest.approx(getattr(ref, key), rel=1e-9, abs=1e-14), key
    for key in ("nc1_papyan", "equinorm_H", "equiangularity_H", "equinorm_W"):
        assert got.extras[key] == pytest.approx(ref.extras[key], rel=1e-9, abs=1e-14), key
    if budget:
        assert got.extras["ncc_mismatch"] == ref.extras["ncc_mismatch"]
    else:
        assert got.extras["ncc_mismatch"] is None


def test_accumulator_switches_to_streaming_past_its_budget_and_copies_batches():
    W, b, H, y = random_problem(K=3, n=30, d=4, seed=2)
    ref = metrics.nc_metrics(W, b, H, y)
    acc = metrics.NCAccumulator(3, max_buffer_bytes=40 * 4 * 8)  # 40 rows of float64
    buf = np.empty((15, 4))
    for i in range(0, len(y), 15):
        buf[:] = H[i:i + 15]  # the caller reuses its buffer: the accumulator must have copied it
        acc.update(buf, y[i:i + 15])
        assert acc.streaming == (i + 15 > 40)
    got = acc.compute(W, b)
    assert got.nc1 == pytest.approx(ref.nc1, rel=1e-10)
    assert np.isnan(got.accuracy)  # streaming mode without logits
    acc2 = metrics.NCAccumulator(3)
    for i in range(0, len(y), 15):
        buf[:] = H[i:i + 15]
        acc2.update(buf, y[i:i + 15])
    got2 = acc2.compute(W, b)
    assert got2.nc1 == pytest.approx(ref.nc1, rel=1e-12)
    assert got2.accuracy == ref.accuracy  # kept batches: accuracy from (W, b)


def test_streaming_near_collapse_with_large_mean_has_no_cancellation():
    # ReLU-like features: big global mean, tiny within-class spread. A raw second moment
    # would cancel catastrophically; the per-class shift keeps NC1 accurate.
    K, n, d, sigma = 10, 100, 32, 1e-6
    H, y = etf.noisy_etf_features(K, n, d, sigma, mean=50.0 * np.ones(d), seed=2)
    ref = metrics.nc1(H, y)
    acc = metrics.NCAccumulator(K)
    for i in range(0, len(y), 128):
        acc.update(H[i:i + 128], y[i:i + 128])
    assert acc.compute(etf.simplex_etf(K, d), np.zeros(K)).nc1 == pytest.approx(ref, rel=1e-6)


def test_streaming_errors():
    acc = metrics.NCAccumulator(3)
    with pytest.raises(ValueError, match="no batch"):
        acc.compute(np.eye(3), np.zeros(3))
    acc.update(np.ones((2, 4)), [0, 1])
    with pytest.raises(ValueError, match="no samples"):
        acc.compute(np.eye(3, 4), np.zeros(3))
    with pytest.raises(ValueError, match="d=5"):
        acc.update(np.ones((2, 5)), [0, 2])
    with pytest.raises(ValueError, match="out of range"):
        acc.update(np.ones((2, 4)), [0, 3])
    with pytest.raises(ValueError, match="num_classes"):
        metrics.NCAccumulator(1)


def test_accumulator_pass_one_as_batches_arrive_gives_nc_metrics_numbers_bitwise():
    # the kept-batch accumulator adds pass 1's class sums up as batches arrive, chunk by chunk in
    # the same order as nc_metrics on the concatenated features: with batches that are multiples
    # of the 1,024-row chunk, every number is the same float
    rng = np.random.default_rng(4)
    K, n, d = 4, 700, 16
    y = rng.permutation(np.repeat(np.arange(K), n))
    H = (3.0 * rng.standard_normal((K, d))[y] + 0.01 * rng.standard_normal((K * n, d))).astype(np.float32)
    W, b = rng.standard_normal((K, d)).astype(np.float32), rng.standard_normal(K).astype(np.float32)
    ref = metrics.nc_metrics(W, b, H, y).to_dict()
    acc = metrics.NCAccumulator(K, copy=False)
    for i in range(0, K * n, 1024):
        acc.update(torch.from_numpy(H[i:i + 1024]), y[i:i + 1024])
    assert acc.compute(W, b).to_dict() == ref


def test_accumulator_refuses_a_nan_batch_and_stays_usable():
    W, b, H, y = random_problem(K=3, n=30, d=4, seed=5)
    ref = metrics.nc_metrics(W, b, H, y)
    acc = metrics.NCAccumulator(3)
    acc.update(H[:45], y[:45])
    bad = H[45:].copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="H contains NaN or inf"):
        acc.update(bad, y[45:])
    assert acc.N == 45
    acc.update(H[45:], y[45:])
    got = acc.compute(W, b)
    assert got.nc1 == pytest.approx(ref.nc1, rel=1e-12)
    assert got.nc3 == pytest.approx(ref.nc3, rel=1e-12)


def test_accumulator_float64_sums_that_overflow_are_rescaled():
    # finite features near 1e308: their float64 class sums overflow; the accumulator keeps the
    # batches and compute() redoes pass 1 on rescaled chunks (NC1 is scale-invariant)
    W, b, H, y = random_problem(K=4, n=20, d=6, seed=13)
    ref = metrics.nc1(H, y)
    acc = metrics.NCAccumulator(4)
    for i in range(0, len(y), 16):
        acc.update(H[i:i + 16] * 1e306, y[i:i + 16])
    assert acc._sums is False  # the overflow path was taken
    assert acc.compute(W, b).nc1 == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("budget", [2 ** 30, 0])
@pytest.mark.parametrize("scale", [1.0, 1e306, "float32"])
def test_accumulator_class_means_are_the_brute_force_means(budget, scale):
    # kept batches (pass 1 + residual correction) and the streaming sums, at unit scale, where
    # the float64 sums overflow, and on float32 features far from collapse (float32 residuals
    # would be rounded): the per-class loop with correctly rounded sums
    W, b, H, y = random_problem(K=4, n=25, d=6, seed=21)
    if scale == "float32":
        H, scale = (100.0 * H).astype(np.float32), 1.0
    H = H * scale
    acc = metrics.NCAccumulator(4, max_buffer_bytes=budget)
    for i in range(0, len(y), 16):
        acc.update(H[i:i + 16], y[i:i + 16])
    got = acc.class_means().numpy()
    for k in range(4):
        rows = H[y == k].astype(np.float64) / scale
        want = np.array([math.fsum(c) for c in rows.T]) / len(rows)  # correctly rounded sums
        np.testing.assert_allclose(got[k] / scale, want, rtol=1e-13, atol=0)
    ref = metrics.class_means(H, y)[1].numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-13)
    empty = metrics.NCAccumulator(5)
    empty.update(H[:10], y[:10])
    with pytest.raises(ValueError, match="no samples"):
        empty.class_means()
    part = empty.class_means(allow_empty=True).numpy()  # classes 0-3 seen, class 4 not: a zero row
    np.testing.assert_array_equal(part[4], 0.0)
    np.testing.assert_allclose(part[:4], metrics.class_means(H[:10], y[:10], 4)[1].numpy(), rtol=1e-13)
    with pytest.raises(ValueError, match="no batch"):
        metrics.NCAccumulator(3).class_means()


# ----------------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    W, b, H, y = random_problem(K=3, n=5, d=4, seed=0)
    with pytest.raises(ValueError, match="labels but H has"):
        metrics.nc1(H, y[:-1])
    with pytest.raises(ValueError, match="2-D"):
        metrics.nc1(H[0], y[:1])
    with pytest.raises(ValueError, match=r"class\(es\) 1 \(K=3\) have no samples"):
        metrics.nc1(H[y != 1], np.where(y[y != 1] == 2, 2, 0))
    with pytest.raises(ValueError, match="K >= 2"):
        metrics.nc1(H, np.zeros_like(y))
    bad = H.copy(); bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.nc1(bad, y)
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.nc_metrics(W, b, bad, y)
    with pytest.raises(ValueError, match="features have d=4"):
        metrics.nc_metrics(W[:, :3], b, H, y)
    with pytest.raises(ValueError, match=r"b must have shape"):
        metrics.nc_metrics(W, b[:2], H, y)
    with pytest.raises(ValueError, match="K >= 2 rows"):
        metrics.nc2(W[:1])
    with pytest.raises(ValueError, match="integer"):
        metrics.nc1(H, y + 0.5)
    with pytest.raises(ValueError, match=">= 0"):
        metrics.nc1(H, y - 1)
    with pytest.raises(ValueError, match="convention"):
        metrics.nc1(H, y, convention="mine")
    with pytest.raises(ValueError, match="out of range"):
        metrics.nc_metrics(W[:2], b[:2], H, y)
    with pytest.raises(ValueError, match="coincide"):
        metrics.nc1(np.ones((6, 3)), np.array([0, 1, 2, 0, 1, 2]))


@pytest.mark.parametrize("sigma,mean", [(1e-4, 0.0), (1e-6, 0.0), (1e-5, 3.0)])
def test_float32_path_matches_float64_on_the_same_values(sigma, mean):
    # The in-memory metrics keep float32 features in float32 and work on exactly centred
    # residuals; the result must equal the float64 computation on the same (rounded) values.
    K, n, d = 10, 300, 64
    H, y = etf.noisy_etf_features(K, n, d, sigma / np.sqrt(d), mean=mean * np.ones(d), seed=3,
                                  dtype=np.float32)
    W = etf.simplex_etf(K, d)
    m32 = metrics.nc_metrics(W, np.zeros(K), torch.from_numpy(H), torch.from_numpy(y))
    m64 = metrics.nc_metrics(W, np.zeros(K), H.astype(np.float64), y)
    assert m64.nc1 > 0
    for key in ("nc1", "nc3", "nc4", "accuracy"):
        assert getattr(m32, key) == pytest.approx(getattr(m64, key), rel=1e-5, abs=1e-15), key
    assert m32.extras["nc1_papyan"] == pytest.approx(m64.extras["nc1_papyan"], rel=1e-5)


# ----------------------------------------------------------------------------- precision and scale
def float64_nc1(H, y, K):
    """Eq. (7) on the given values in float64: d x d scatter, top K-1 eigendirections."""
    H = np.asarray(H, dtype=np.float64)
    counts = np.bincount(y, minlength=K)
    means = np.zeros((K, H.shape[1]))
    np.add.at(means, y, H)
    means /= counts[:, None]
    R = H - means[y]
    C = means - counts @ means / len(y)
    lam, U = np.linalg.eigh(C.T @ C / K)
    lam, U = lam[::-1][:K - 1], U[:, ::-1][:, :K - 1]
    return np.sum((U.T @ (R.T @ R / len(y)) @ U).diagonal() / lam) / K


@pytest.mark.parametrize("noise,offset", [(1e-1, 0.0), (1e-3, 30.0), (1e-5, 0.0), (2.8e-7, 0.0)])
def test_float32_features_keep_float64_grade_nc1_down_to_1e_14(noise, offset):
    # float32 features (their values are the data); the reference is float64 on the same values
    K, n, d = 10, 300, 64
    H, y = etf.noisy_etf_features(K, n, d, noise / np.sqrt(d), mean=offset * np.ones(d), seed=4,
                                  dtype=np.float32)
    ref = float64_nc1(H, y, K)
    if noise == 2.8e-7:
        assert 3e-15 < ref < 3e-14  # the NC1 ~ 1e-14 regime
    assert metrics.nc1(torch.from_numpy(H), torch.from_numpy(y)) == pytest.approx(ref, rel=1e-5)
    m = metrics.nc_metrics(etf.simplex_etf(K, d), np.zeros(K), torch.from_numpy(H), torch.from_numpy(y))
    assert m.nc1 == pytest.approx(ref, rel=1e-5)
    assert metrics.nc1(H.astype(np.float64), y) == pytest.approx(ref, rel=1e-11)


@pytest.mark.parametrize("exponent", [-300, -200, -160, -155, -100, 0, 100, 155, 160, 200, 300])
def test_nc1_is_scale_invariant_at_any_finite_scale(exponent):
    W, b, H, y = random_problem(K=4, n=20, d=6, seed=11)
    base = metrics.nc_metrics(W, b, H, y)
    f = 10.0 ** exponent
    assert metrics.nc1(H * f, y) == pytest.approx(base.nc1, rel=1e-12)
    assert metrics.nc1(H * f, y, convention="papyan") == pytest.approx(base.extras["nc1_papyan"], rel=1e-12)
    m = metrics.nc_metrics(W, b, H * f, y)
    for key in ("nc1", "nc2", "nc3"):
        assert getattr(m, key) == pytest.approx(getattr(base, key), rel=1e-12), key
    assert m.accuracy == np.mean(np.argmax((H * f) @ W.T + b, 1) == y)  # b is not rescaled
    v = b + f * (W @ H.mean(0))
    a = np.abs(v).max()
    assert m.nc4 == pytest.approx(a * np.linalg.norm(v / a), rel=1e-12)  # without overflowing squares
    assert metrics.nc3(W, H * f, y) == pytest.approx(base.nc3, rel=1e-12)
    assert metrics.nc2(W * f) == pytest.approx(base.nc2, rel=1e-12)
    assert metrics.equinorm(H * f) == pytest.approx(metrics.equinorm(H), rel=1e-12)
    counts, means = metrics.class_means(H * f, y)
    np.testing.assert_allclose(means.numpy() / f, metrics.class_means(H, y)[1].numpy(), rtol=1e-13)


@pytest.mark.parametrize("k", [-120, -60, 60, 120])
def test_float32_scale_extremes(k):
    W, b, H, y = random_problem(K=4, n=20, d=6, seed=12)
    H32 = torch.tensor(H, dtype=torch.float32)
    base = metrics.nc1(H32, y)
    assert metrics.nc1(H32 * 2.0 ** k, y) == pytest.approx(base, rel=1e-5)


def test_streaming_at_extreme_scales():
    W, b, H, y = random_problem(K=4, n=20, d=6, seed=13)
    ref = metrics.nc1(H, y)
    for f in (1e-300, 1e300):
        acc = metrics.NCAccumulator(4, max_buffer_bytes=0)
        acc.update(H * f, y)
        assert acc.compute(W, b).nc1 == pytest.approx(ref, rel=1e-10)


# ----------------------------------------------------------------------------- the Sigma_B cutoff
def near_degenerate(s, n=50, seed=0):
    """K = 3, d = 4: class means (+-1, s, 0, 0), (0, -2s, 0, 0) exactly, noise 0.1 (zero class mean)."""
    rng = np.random.default_rng(seed)
    M = np.array([[1.0, s, 0, 0], [-1.0, s, 0, 0], [0, -2 * s, 0, 0]])
    y = np.repeat(np.arange(3), n)
    E = 0.1 * rng.standard_normal((3 * n, 4))
    for k in range(3):
        E[y == k] -= E[y == k].mean(0)
    return M[y] + E, y


def pinv_nc1(H, y, K=3):
    """Eq. (7) with numpy's Moore-Penrose pseudo-inverse (every eigenvalue above 1e-15 max)."""
    means = np.stack([H[y == k].mean(0) for k in range(K)])
    R = H - means[y]
    C = means - H.mean(0)
    return np.trace(R.T @ R / len(y) @ np.linalg.pinv(C.T @ C / K)) / K


def test_sigma_b_cutoff_near_degenerate_means():
    # Sigma_B eigenvalues 2/3 and 2 s^2: ratio 3 s^2, the cutoff 1e-12 sits at s = 5.77e-7
    H, y = near_degenerate(5e-7)
    exact = pinv_nc1(H, y)  # eq. (7) with the Moore-Penrose inverse: the tiny direction counts
    assert 1e9 < exact < 1e11
    ours = metrics.nc1(H, y)  # that direction (ratio 7.5e-13) is treated as absent
    x = H[:, 0] - np.array([1.0, -1.0, 0.0])[y]
    assert ours == pytest.approx(np.mean(x ** 2) / (2 / 3) / 3, rel=1e-9)  # = 5.0e-3 with noise 0.1
    assert ours == pytest.approx(5.0e-3, rel=0.2)
    # just above the edge (ratio 1.08e-12) the direction is kept: ours equals the pseudo-inverse's
    H, y = near_degenerate(6e-7)
    assert metrics.nc1(H, y) == pytest.approx(pinv_nc1(H, y), rel=1e-5)
    # and far from it the two agree as they should
    H, y = near_degenerate(0.3)
    assert metrics.nc1(H, y) == pytest.approx(pinv_nc1(H, y), rel=1e-10)


# ----------------------------------------------------------------------------- bad input, short messages
def test_stray_label_gives_a_short_message():
    W, b, H, y = random_problem(K=3, n=5, d=4, seed=0)
    y = y.copy()
    y[0] = 10 ** 6
    with pytest.raises(ValueError) as err:
        metrics.nc1(H, y)
    msg = str(err.value)
    assert len(msg) < 300 and "\n" not in msg
    assert "K=1,000,001" in msg and "have no samples" in msg


def test_float_and_complex_inputs_give_exact_messages():
    W, b, H, y = random_problem(K=3, n=5, d=4, seed=0)
    yf = y.astype(float)
    yf[0] = 1e20
    with pytest.raises(ValueError, match=r"label 1e\+20 is not a class index"):
        metrics.nc1(H, yf)
    yf[0] = np.nan
    with pytest.raises(ValueError, match="integer class labels, found nan"):
        metrics.nc1(H, yf)
    assert metrics.nc1(H, y.astype(float)) == metrics.nc1(H, y)  # integer-valued floats are fine
    with pytest.raises(ValueError, match="H must be real, got dtype torch.complex128"):
        metrics.nc1(H + 0j, y)
    with pytest.raises(ValueError, match="H must be real, got dtype torch.complex64"):
        metrics.nc_metrics(W, b, torch.tensor(H, dtype=torch.complex64), y)
    with pytest.raises(ValueError, match="W must be real"):
        metrics.nc2(W + 1j)


def test_bfloat16_and_float16_features_are_accepted():
    W, b, H, y = random_problem(K=3, n=20, d=8, seed=1)
    for dt in (torch.bfloat16, torch.float16):
        Hl = torch.tensor(H, dtype=dt)
        assert metrics.nc1(Hl, y) == pytest.approx(metrics.nc1(Hl.double(), y), rel=1e-6)
        m = metrics.nc_metrics(W, b, Hl, y)
        assert m.nc1 == pytest.approx(metrics.nc1(Hl.double(), y), rel=1e-6)


# ----------------------------------------------------------------------------- coinciding class means
def test_features_of_a_dead_network_raise_class_means_coincide():
    # every sample the same float32 vector (a network that lost all class information), classes
    # interleaved across chunks as in a training subset of 500 per class: the exact class means are
    # equal, so NC1 and NC3 are undefined; before the check NC1 came out as a small negative number
    rng = np.random.default_rng(0)
    K, n, d = 10, 500, 128
    h = (rng.random(d) * 3e-7).astype(np.float32)
    H = np.tile(h, (K * n, 1))
    y = np.repeat(np.arange(K), n)
    assert np.unique(H, axis=0).shape[0] == 1  # independent check: one distinct feature vector
    W, b = rng.standard_normal((K, d)), rng.standard_normal(K)
    for call in (lambda: metrics.nc1(H, y), lambda: metrics.nc_metrics(W, b, H, y), lambda: metrics.nc3(W, H, y)):
        with pytest.raises(metrics.ClassMeansCoincide, match="coincide"):
            call()
    for budget in (2 ** 30, 0):  # in memory, then streamed (d x d scatter)
        acc = metrics.NCAccumulator(K, max_buffer_bytes=budget)
        for i in range(0, K * n, 1024):
            acc.update(H[i:i + 1024], y[i:i + 1024])
        with pytest.raises(ValueError, match="coincide"):  # ClassMeansCoincide is a ValueError
            acc.compute(W, b)


@pytest.mark.parametrize("rel,defined", [(1e-14, False), (1e-11, True)])
def test_class_means_spread_threshold_both_sides_float64(rel, defined):
    # float64 features at size ~5 whose class means differ by `rel` of that size: below 1e-13 they
    # count as coinciding; above, NC1 is the brute-force value on the features less their common offset
    rng = np.random.default_rng(1)
    K, n, d = 3, 40, 6
    base = 5.0 + rng.random(d)
    y = np.repeat(np.arange(K), n)
    small = 5.0 * rel * (rng.standard_normal((K, d))[y] + 0.3 * rng.standard_normal((K * n, d)))
    H = base + small
    if not defined:
        with pytest.raises(metrics.ClassMeansCoincide):
            metrics.nc1(H, y)
        return
    ref = brute_force(np.eye(K, d), np.zeros(K), H - base, y, K)[0]  # exact offset removal (Sterbenz)
    # the class means carry float64 rounding of the offset (eps * 5 ~ 1e-15) against a spread of 5e-11: ~2e-5
    assert metrics.nc1(H, y) == pytest.approx(ref, rel=1e-4)


@pytest.mark.parametrize("changed,defined", [(1, False), (1000, True)])
def test_class_means_spread_threshold_both_sides_float32(changed, defined):
    # float32: every sample the same vector, except that in classes 1 and 2 `changed` of their 5,000 samples
    # have one coordinate one ulp higher; their means differ by changed/5000 ulp, about 2.4e-11 (below the
    # float32 cutoff 1e-10: coinciding) or 2.4e-8 (above: NC1 is the brute-force value)
    K, n, d = 3, 5000, 8
    h = np.full(d, 1.0, dtype=np.float32)
    H = np.tile(h, (K * n, 1))
    y = np.repeat(np.arange(K), n)
    up = np.nextafter(np.float32(1.0), np.float32(2.0))
    H[n:n + changed, 0] = up  # class 1, first coordinate
    H[2 * n:2 * n + changed, 1] = up  # class 2, second coordinate (Sigma_B of rank K - 1 = 2)
    assert (H[:, 0].astype(np.float64) - 1.0).sum() / n == pytest.approx(changed / n * 2.0 ** -23)
    if not defined:
        with pytest.raises(metrics.ClassMeansCoincide):
            metrics.nc1(H, y)
        return
    ref = brute_force(np.eye(K, d), np.zeros(K), H.astype(np.float64) - 1.0, y, K)[0]  # exact: the offset removed
    assert metrics.nc1(H, y) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("n", [500, 9000])  # 9,000 per class: blocks of 8,192 and a between-block term
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_features_at_their_class_means_give_nc1_zero_never_negative(n, dtype):
    rng = np.random.default_rng(2)
    K, d = 3, 16
    M = (5 + 3 * rng.standard_normal((K, d))).astype(dtype)
    y = np.repeat(np.arange(K), n)
    for order in (np.arange(K * n), rng.permutation(K * n)):
        v = metrics.nc1(M[y[order]], y[order])
        if dtype == np.float32:
            assert v == 0.0  # the scatter is a sum of squares of exact zeros
        else:
            assert 0.0 <= v < 1e-40  # float64 pass-1 means carry rounding: squares of ~1e-16 residuals


def test_classes_of_several_blocks_match_brute_force():
    # 9,000 samples per class in float32 (two post-processing blocks per class): the between-block term
    rng = np.random.default_rng(3)
    K, n, d = 3, 9000, 8
    M = 4 + rng.standard_normal((K, d))
    y = np.repeat(np.arange(K), n)
    H = (M[y] + 1e-3 * rng.standard_normal((K * n, d))).astype(np.float32)
    ref = brute_force(np.eye(K, d), np.zeros(K), H, y, K)[0]
    assert metrics.nc1(H, y) == pytest.approx(ref, rel=1e-6)
