"""Tests for nclib.models: exact parameter counts (paper Section 4.3, ANCHORS part 1), the
structure of the d = K change, the fixed ETF classifier, features/logits, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from nclib import models as M
from nclib.etf import etf_gram, simplex_etf


def _resnet18_count(c, K, in_ch=3, stem=7):
    """Hand count of a ResNet18 with widths c = (c0, c1, c2, c3): convs have no bias, BN has 2 per channel."""
    n = in_ch * stem * stem * c[0] + 2 * c[0]
    n += 2 * (2 * (9 * c[0] * c[0] + 2 * c[0]))  # layer1: two blocks, no shortcut conv
    for a, b in zip(c[:-1], c[1:]):  # layers 2-4: a strided block with a 1x1 shortcut, then a plain block
        n += 9 * a * b + 2 * b + 9 * b * b + 2 * b + a * b + 2 * b
        n += 2 * (9 * b * b + 2 * b)
    return n + c[3] * K + K


# ----------------------------------------------------------------------------- parameter counts
def test_resnet_parameter_counts_and_d_equals_K_savings():
    r18, r18k = M.build("resnet18", 10), M.build("resnet18", 10, feature_dim=10)
    r50, r50k = M.build("resnet50", 10), M.build("resnet50", 10, feature_dim=10)
    n18, n18k, n50, n50k = (M.count_parameters(m) for m in (r18, r18k, r50, r50k))
    assert (n18, n18k) == (11_181_642, 8_867_542)
    assert (n50, n50k) == (23_528_522, 22_481_110)
    assert round(100 * (n18 - n18k) / n18, 2) == 20.70
    assert round(100 * (n50 - n50k) / n50, 2) == 4.45
    # independent: torchvision's own models, and a hand count of the changed layers
    assert n18 == sum(p.numel() for p in torchvision.models.resnet18(num_classes=10).parameters())
    assert n18 == _resnet18_count((64, 128, 256, 512), 10)
    K = 10
    assert n18 - n18k == (9 * 512 * 512 + 2 * 512 + 512 * K + K) - (9 * 512 * K + 2 * K + 512 * K + 2 * K + K * K + K)
    assert n50 - n50k == (512 * 2048 + 2 * 2048 + 2048 * K + K) - (512 * K + 2 * K + 2048 * K + 2 * K + K * K + K)


def test_d_equals_K_structure():
    K = 10
    m = M.build("resnet18", K, feature_dim=K)
    blk = m.body.layer4[-1]
    assert blk.conv2.weight.shape == (K, 512, 3, 3) and blk.bn2.num_features == K
    assert blk.downsample[0].weight.shape == (K, 512, 1, 1) and blk.downsample[1].num_features == K
    assert m.classifier.weight.shape == (K, K) and m.feature_dim == K
    m50 = M.build("resnet50", K, feature_dim=K)
    b50 = m50.body.layer4[-1]
    assert b50.conv3.weight.shape == (K, 512, 1, 1) and b50.bn3.num_features == K
    assert b50.downsample[0].weight.shape == (K, 2048, 1, 1)
    x = torch.randn(2, 3, 32, 32)
    for net in (m.eval(), m50.eval()):
        h = net.features(x)
        assert h.shape == (2, K) and torch.equal(net(x), net.classifier(h))


def test_is_torchvision_resnet18():
    """Same seed, same numbers: build("resnet18") is torchvision's resnet18 with fc split off."""
    x = torch.randn(3, 3, 32, 32)
    torch.manual_seed(0)
    ours = M.build("resnet18", 7).eval()
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(num_classes=7).eval()
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
        ref.fc = nn.Identity()
        assert torch.equal(ours.features(x), ref(x))


def test_classifier_fraction_imagenet_models():
    fr = {
        name: round(100 * M.classifier_fraction(getattr(torchvision.models, name)(weights=None)), 2)
        for name in ("resnet50", "densenet169", "shufflenet_v2_x1_0")
    }
    assert fr == {"resnet50": 8.01, "densenet169": 11.76, "shufflenet_v2_x1_0": 44.94}
    r50 = torchvision.models.resnet50(weights=None)
    assert M.classifier_fraction(r50) == 2048 * 1000 / sum(p.numel() for p in r50.parameters())
    ours = M.build("resnet18", 10)
    assert M.classifier_fraction(ours) == 5120 / 11_181_642
    with pytest.raises(ValueError, match="cannot find the classifier"):
        M.classifier_of(nn.Sequential(nn.Conv2d(1, 1, 1)))


def test_stems_widths_in_channels():
    cifar = M.build("resnet18", 10, stem="cifar")
    assert cifar.body.conv1.kernel_size == (3, 3) and cifar.body.conv1.stride == (1, 1)
    assert isinstance(cifar.body.maxpool, nn.Identity)
    assert M.count_parameters(cifar) == _resnet18_count((64, 128, 256, 512), 10, stem=3)
    # spatial size before pooling: 32 -> 4 with the CIFAR stem, 32 -> 1 with the ImageNet stem
    x = torch.randn(2, 3, 32, 32)
    sizes = {}
    for stem in ("cifar", "imagenet"):
        net = M.build("resnet18", 10, stem=stem, width=0.25).eval()
        net.body.layer4.register_forward_hook(lambda mod, inp, out, s=stem: sizes.__setitem__(s, out.shape[-1]))
        net(x)
    assert sizes == {"cifar": 4, "imagenet": 1}
    for w in (1, 1.0, 0.5, 0.25, 2):
        c = tuple(max(1, int(round(b * w))) for b in (64, 128, 256, 512))
        net = M.build("resnet18", 10, width=w)
        assert M.count_parameters(net) == _resnet18_count(c, 10) and net.feature_dim == c[3]
    thin = M.build("resnet18", 10, width=0.125, feature_dim=10, fixed_classifier="etf", stem="cifar").eval()
    assert thin.features(x).shape == (2, 10)
    one = M.build("resnet18", 10, in_channels=1).eval()
    assert one.body.conv1.in_channels == 1 and one(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert M.count_parameters(one) == _resnet18_count((64, 128, 256, 512), 10, in_ch=1)


def test_new_layers_initialised_like_torchvision():
    for kw in (dict(), dict(width=0.5), dict(stem="cifar")):
        net = M.build("resnet18", 10, feature_dim=10, **kw)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        conv2 = net.body.layer4[-1].conv2.weight  # kaiming_normal fan_out: std sqrt(2 / (K * 9))
        assert abs(conv2.std().item() - np.sqrt(2 / (10 * 9))) < 0.1 * np.sqrt(2 / 90)
        conv1 = net.body.conv1.weight  # fan_out = 64 * w * k * k
        fan_out = conv1.shape[0] * conv1.shape[2] * conv1.shape[3]
        assert abs(conv1.std().item() - np.sqrt(2 / fan_out)) < 0.1 * np.sqrt(2 / fan_out)


def test_mlp():
    K, w, depth = 10, 64, 3
    m = M.build("mlp", K, width=w, depth=depth).eval()
    lin = [x for x in m.body.modules() if isinstance(x, nn.Linear)]
    assert [l.weight.shape for l in lin] == [(w, 3072), (w, w), (w, w)]
    assert sum(isinstance(x, nn.BatchNorm1d) for x in m.modules()) == depth
    n = 3072 * w + w + 2 * w + (depth - 1) * (w * w + w + 2 * w) + w * K + K
    assert M.count_parameters(m) == n
    x = torch.randn(4, 3, 32, 32)
    h = m.features(x)
    assert h.shape == (4, w) and (h >= 0).all()  # the output of the last ReLU
    assert torch.equal(m(x), m.classifier(h))
    # by hand: Linear -> BN (eval: running stats 0/1) -> ReLU, depth times
    z = x.flatten(1)
    for l, bn in zip(lin, [x for x in m.body.modules() if isinstance(x, nn.BatchNorm1d)]):
        z = torch.relu((z @ l.weight.T + l.bias) / torch.sqrt(torch.tensor(1 + bn.eps)))
    torch.testing.assert_close(h, z)
    d = M.build("mlp", K, width=w, depth=2, feature_dim=K, in_channels=1, input_size=8)
    assert d.feature_dim == K and d.eval()(torch.randn(2, 1, 8, 8)).shape == (2, K)
    default = M.build("mlp", K)
    assert default.config["width"] == 512 and default.config["depth"] == 4
    with pytest.raises(ValueError, match="3072 values per sample"):
        m(torch.randn(2, 1, 32, 32))


# ----------------------------------------------------------------------------- fixed classifier
@pytest.mark.parametrize("opt_name", ["sgd", "adam", "sgd_all_params"])
def test_fixed_etf_classifier_stays_fixed(opt_name):
    K, d = 4, 16
    torch.manual_seed(0)
    m = M.build("mlp", K, width=d, depth=2, fixed_classifier="etf", in_channels=1, input_size=4)
    W0 = torch.from_numpy(simplex_etf(K, d)).float()
    assert torch.equal(m.classifier.weight, W0) and not m.classifier.weight.requires_grad
    np.testing.assert_allclose((m.classifier.weight.double() @ m.classifier.weight.double().T).numpy(), etf_gram(K), atol=1e-6)
    # the authors' eye(K, d) placement: the frame lives in the first K columns
    assert torch.all(m.classifier.weight[:, K:] == 0)
    params = M.trainable_parameters(m)
    assert all(p is not m.classifier.weight for p in params) and any(p is m.classifier.bias for p in params)
    assert M.count_parameters(m, trainable_only=True) == M.count_parameters(m) - K * d
    if opt_name == "sgd":
        opt = torch.optim.SGD(params, lr=0.5, momentum=0.9, weight_decay=5e-4)
    elif opt_name == "adam":
        opt = torch.optim.Adam(params, lr=0.1, weight_decay=5e-4)
    else:  # even given every parameter, decay does not touch W (its grad stays None)
        opt = torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    b0 = m.classifier.bias.detach().clone()
    x, y = torch.randn(8, 1, 4, 4), torch.arange(8) % K
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    assert torch.equal(m.classifier.weight, W0)
    assert m.classifier.weight.grad is None
    assert not torch.equal(m.classifier.bias, b0)


def test_fixed_etf_resnet_and_state_dict():
    m = M.build("resnet18", 10, fixed_classifier="etf")
    assert torch.equal(m.classifier.weight, torch.from_numpy(simplex_etf(10, 512)).float())
    m2 = M.build("resnet18", 10, fixed_classifier="etf")
    m2.load_state_dict(m.state_dict())  # W is saved with the checkpoint
    assert not m2.classifier.weight.requires_grad


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("vgg11", 10), {}, "unknown model 'vgg11'; allowed: resnet18, resnet50, mlp"),
        (("resnet18", 1), {}, "num_classes must be an integer >= 2"),
        (("resnet18", 10.0), {}, "num_classes"),
        (("resnet18", 10), dict(feature_dim=5, fixed_classifier="etf"), r"d >= K .*d=5, K=10"),
        (("mlp", 10), dict(width=8, fixed_classifier="etf"), r"d=8, K=10"),
        (("resnet18", 10), dict(fixed_classifier="orthogonal"), "unknown fixed_classifier"),
        (("resnet18", 10), dict(stem="vit"), "unknown stem 'vit'"),
        (("mlp", 10), dict(stem="cifar"), "means nothing for the MLP"),
        (("resnet50", 10), dict(width=2), "resnet18"),
        (("resnet18", 10), dict(width=0), "width must be a positive"),
        (("resnet18", 10), dict(width=-1.0), "width must be a positive"),
        (("resnet18", 10), dict(width=float("inf")), "width must be a positive"),
        (("resnet18", 10), dict(width="wide"), "width must be a positive"),
        (("resnet18", 10), dict(depth=4), "depth means nothing for resnet18"),
        (("mlp", 10), dict(depth=0), "depth must be a positive integer"),
        (("mlp", 10), dict(width=0), "width"),
        (("mlp", 10), dict(width=2.5), "width"),
        (("resnet18", 10), dict(feature_dim=0), "feature_dim must be a positive integer"),
        (("resnet18", 10), dict(in_channels=0), "in_channels"),
        (("resnet18", 10), dict(input_size=28), "input_size"),
    ],
)
def test_build_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        M.build(*args, **kwargs)


def test_etf_needs_d_at_least_K_without_feature_dim():
    with pytest.raises(ValueError, match="d=512, K=600"):
        M.build("resnet18", 600, fixed_classifier="etf")
