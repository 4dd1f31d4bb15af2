"""Tests of nclib.protocol: the generated columns of the protocol appendix.

The generated ``full`` column is checked against the authors' stated values (their README and
args.py, transcribed here by hand), the feature-decay scales against a direct computation over a
partition of a feature matrix into batches, and the summarising of several configurations
against hand-made cases.
"""
from __future__ import annotations

import pytest
import torch

from nclib import configs as C
from nclib import data as D
from nclib import protocol as P
from nclib import train as T


def test_tables_have_every_setting_and_column():
    for fig in P.FIGURES:
        t = P.protocol_table(fig)
        assert list(t.index) == list(P.ROWS)
        assert list(t.columns) == ["paper", "authors' code", "ours: full", "ours: cpu", "why they differ"]
        for col in ("paper", "authors' code", "ours: full", "ours: cpu"):
            assert all(isinstance(v, str) and v for v in t[col]), (fig, col)
        assert set(P.HAND[fig]) == set(P.ROWS)


def test_unknown_figure():
    with pytest.raises(ValueError, match="unknown figure"):
        P.protocol_table("fig8")
    with pytest.raises(ValueError, match="unknown figure"):
        P.generated_column("fig4", "full")


def test_full_column_matches_the_authors_readme():
    """README l.31, 37, 43 (batch 256 / 64 / 2048; lr 0.05 / 0.001 / 0.1), l.71 (Fig. 5: batch 64,
    lr 0.01, wd 1e-4), l.79 (--sep_decay: batch 64); args.py:38 (default batch 128, Fig. 7)."""
    fig3 = P.generated_column("fig3", "full")
    assert fig3["batch size"] == "SGD: 256; Adam: 64; L-BFGS: 2048"
    assert fig3["epochs"] == "200"
    assert "SGD lr 0.05, momentum 0.9" in fig3["optimizer and hyperparameters"]
    assert "Adam lr 0.001, betas (0.9, 0.999)" in fig3["optimizer and hyperparameters"]
    assert "L-BFGS lr 0.1, history 10, max_iter 20" in fig3["optimizer and hyperparameters"]
    assert fig3["learning-rate schedule"] == \
        "SGD, Adam: x0.1 every 40 epochs (StepLR, per epoch); L-BFGS: none (constant)"
    assert fig3["augmentation (where padding happens)"] == "none"
    assert fig3["precision"] == "float32, TF32 off"
    fig5 = P.generated_column("fig5", "full")
    assert fig5["batch size"] == "64" and fig5["optimizer and hyperparameters"] == "SGD lr 0.01, momentum 0.9"
    assert fig5["weight decay (on what)"].startswith("0.0001 on all trainable parameters")
    assert "ResNet18: ResNet18 (torchvision's blocks); stem: 3x3 stride-1 conv, no max-pool" in fig5["model and stem"]
    fig6 = P.generated_column("fig6", "full")
    assert fig6["batch size"] == "all: 256; eq4, batch_sum, authors: 64"
    fig7 = P.generated_column("fig7", "full")
    assert fig7["batch size"] == "128"
    assert fig7["classifier"].startswith("learned, dk: learned (nn.Linear); etf, etf-dk: fixed simplex ETF")


def test_absent_configurations_are_named():
    fig7 = P.generated_column("fig7", "cpu")
    assert fig7["batch size"].endswith("[not in this profile: CIFAR-10 ResNet50]")
    fig6 = P.generated_column("fig6", "cpu")
    assert fig6["seed"].endswith("[not in this profile: authors]")


def test_summarise_groups_by_the_fewest_name_parts():
    keys = {f"x-{a}-{b}": {"a": a, "b": b} for a in ("p", "q") for b in ("u", "v")}
    by_b = {n: ("1" if k["b"] == "u" else "2") for n, k in keys.items()}
    assert P._summarise(by_b, keys) == "u: 1; v: 2"
    both = {n: k["a"] + k["b"] for n, k in keys.items()}
    assert P._summarise(both, keys) == "p u: pu; p v: pv; q u: qu; q v: qv"
    same = {n: "z" for n in keys}
    assert P._summarise(same, keys) == "z"
    some = dict(same, **{"x-q-v": None})
    assert P._summarise(some, keys) == "z [not in this profile: q v]"


def test_feature_decay_scales_against_a_partition_into_batches():
    """Summing the per-batch H term over a partition of H into batches of size B and dividing by
    the number of batches gives the expected per-batch term, (scale / 2) ||H||_F^2."""
    torch.manual_seed(0)
    N, B, d, lam = 120, 20, 7, 1e-3
    H = torch.randn(N, d, dtype=torch.float64)
    base = C.get_config("fig6-mnist-eq4", "full")
    for mode in ("eq4", "batch_sum", "authors"):
        cfg = base.replace(feature_decay=mode, lambda_H=lam, batch_size=B, n_per_class=N // 10)
        per_batch = sum(float(T.feature_decay(H[i:i + B], lam, N, mode)) for i in range(0, N, B)) / (N // B)
        if mode == "authors":
            assert P.feature_decay_scales(cfg) == 0.0  # a constant: lam B / 2 whatever H is
            assert per_batch == pytest.approx(lam * B / 2)
        else:
            assert per_batch == pytest.approx(0.5 * P.feature_decay_scales(cfg) * float(H.pow(2).sum()))
    assert P.feature_decay_scales(C.get_config("fig6-cifar10-batch_sum", "full")) == pytest.approx(1e-5 * 64 / 50000)
    assert P.feature_decay_scales(C.get_config("fig6-mnist-all", "full")) == 0.0


def test_describe_reads_the_configuration():
    c = C.get_config("fig7-cifar10-resnet50-etf-dk", "full")
    d = P.describe(c)
    assert d["feature dimension d"] == "10" and d["batch size"] == "128"
    assert "3x3 stride-1 conv, no max-pool" in d["model and stem"] and "ResNet50" in d["model and stem"]
    fill = [-m / s for m, s in zip(*D.NORMALIZATIONS["cifar10"])]
    assert all(f"{v:.3f}" in d["augmentation (where padding happens)"] for v in fill)
    assert P.describe(C.get_config("fig7-cifar10-resnet50-learned", "full"))["feature dimension d"] == "2048"
    assert P.describe(C.get_config("fig5-resnet18-w1", "full"))["feature dimension d"] == str(round(512 * 0.125))
    assert P.describe(C.get_config("fig5-mlp-w3", "full"))["feature dimension d"] == "2048"
    d = P.describe(c.replace(precision="bf16", lr_step=None, lr_milestones=(3, 5), log_epochs="log", epochs=10))
    assert d["precision"].startswith("bf16") and d["learning-rate schedule"] == "x0.1 at epochs 3, 5"
    assert d["NC evaluation"].endswith(f"{len(T.log_spaced_epochs(10))} log-spaced epochs in 1-10")
