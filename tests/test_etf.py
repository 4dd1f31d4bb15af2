"""Tests for nclib.etf against Definition A.1 and hand computations."""
import numpy as np
import pytest

from nclib import etf


@pytest.mark.parametrize("K,d", [(2, 2), (3, 3), (3, 7), (4, 4), (10, 512), (100, 128)])
@pytest.mark.parametrize("rotation", [None, "random"])
def test_simplex_etf_is_unit_norm_and_equiangular(K, d, rotation):
    W = etf.simplex_etf(K, d, rotation=rotation, seed=0)
    assert W.shape == (K, d) and W.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), 1.0, atol=1e-13)
    G = W @ W.T
    off = G[~np.eye(K, dtype=bool)]
    np.testing.assert_allclose(off, -1.0 / (K - 1), atol=1e-13)
    # rows sum to zero: the frame is centred
    np.testing.assert_allclose(W.sum(0), 0.0, atol=1e-12)


def test_default_embedding_is_authors_eye_K_d():
    # footnote 14: W^T = sqrt(K/(K-1)) P (I - 11^T/K) with P the first K columns of I_d
    K, d = 4, 6
    W = etf.simplex_etf(K, d)
    expected = np.zeros((K, d))
    expected[:, :K] = np.sqrt(K / (K - 1)) * (np.eye(K) - 1.0 / K)
    np.testing.assert_allclose(W, expected, atol=1e-15)


def test_K2_is_antipodal_pair():
    W = etf.simplex_etf(2, 2)
    np.testing.assert_allclose(W[0], -W[1], atol=1e-15)
    np.testing.assert_allclose(W @ W.T, [[1, -1], [-1, 1]], atol=1e-15)


def test_explicit_rotation_and_random_rotation_reproducible():
    d, K = 5, 3
    U = etf.random_orthonormal(d, d, seed=3)
    W = etf.simplex_etf(K, d, rotation=U)
    np.testing.assert_allclose(W, etf.simplex_etf(K, d) @ U.T, atol=1e-13)
    np.testing.assert_array_equal(etf.simplex_etf(K, d, rotation="random", seed=1),
                                  etf.simplex_etf(K, d, rotation="random", seed=1))


def test_etf_gram_and_in_span():
    K = 5
    np.testing.assert_allclose(etf.etf_gram(K), np.where(np.eye(K, dtype=bool), 1.0, -0.25), atol=1e-15)
    E = etf.etf_in_span(K)
    assert E.shape == (K, K - 1)
    np.testing.assert_allclose(E @ E.T, etf.etf_gram(K), atol=1e-13)


@pytest.mark.parametrize("K,d", [(1, 3), (0, 3), (5, 4), (3, 2)])
def test_bad_K_d_raise(K, d):
    with pytest.raises(ValueError, match="K"):
        etf.simplex_etf(K, d)


def test_bad_rotation_raises():
    with pytest.raises(ValueError, match="rotation"):
        etf.simplex_etf(3, 4, rotation="spin")
    with pytest.raises(ValueError, match="shape"):
        etf.simplex_etf(3, 4, rotation=np.eye(3))
    with pytest.raises(ValueError, match="orthogonal"):
        etf.simplex_etf(3, 4, rotation=2 * np.eye(4))


def test_noisy_features_statistics():
    K, n, d, sigma = 4, 3000, 6, 0.1
    H, y = etf.noisy_etf_features(K, n, d, sigma, seed=0)
    assert H.shape == (K * n, d)
    np.testing.assert_array_equal(y, np.repeat(np.arange(K), n))
    means = np.stack([H[y == k].mean(0) for k in range(K)])
    np.testing.assert_allclose(means, etf.simplex_etf(K, d), atol=5 * sigma / np.sqrt(n))
    np.testing.assert_allclose((H - etf.simplex_etf(K, d)[y]).std(), sigma, rtol=0.02)
    with pytest.raises(ValueError, match="sigma"):
        etf.noisy_etf_features(K, n, d, -1.0)
