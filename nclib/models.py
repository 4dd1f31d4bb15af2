"""The networks of the paper's experiments, each exposing its penultimate features.

Paper, Section 4 (ResNet18 on MNIST / CIFAR-10, Figures 3-4, 6), Section 4.2 (MLPs and
ResNet18 of varying width on random labels, Figure 5) and Section 4.3 (a fixed simplex-ETF
classifier, and "feature dimension reduction by choosing d = K": 20.70% / 4.45% fewer
parameters for ResNet18 / ResNet50; Figure 7).

Every model returned by :func:`build` is an :class:`NCNet`:

* ``model.features(x)`` -> (B, d): the penultimate features h (rows; the paper's H is d x N);
* ``model.classifier``: an ``nn.Linear(d, K)``, weight W (K, d) and bias b (K,), the last
  layer of eq. (1);
* ``model(x) == model.classifier(model.features(x))``: the logits W h + b.

The ResNets are torchvision's own (``torchvision.models.resnet18/50(num_classes=K)``, so the
parameter counts are torchvision's exactly) with ``fc`` moved out as ``classifier``.

Fixed classifier (``fixed_classifier="etf"``, Section 4.3): W is set to the simplex ETF
``nclib.etf.simplex_etf(K, d)`` (the authors' ``eye(K, d)`` placement,
``sqrt(K/(K-1)) (I - 11^T/K)`` in the first K columns) and frozen with
``requires_grad = False``; the bias stays trainable.  Give the optimizer only the trainable
parameters, ``torch.optim.SGD(trainable_parameters(model), ...)`` (=
``[p for p in model.parameters() if p.requires_grad]``), and leave W out of any explicit
decay term (an L-BFGS closure, eq. (4)'s lambda_W term).  (Passing all parameters to SGD or
Adam would still leave W unchanged, since its ``.grad`` stays None, but a hand-written decay
term over all parameters would count a constant.)  Do not call ``model.requires_grad_(True)``:
it would unfreeze W.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .etf import simplex_etf

__all__ = [
    "MODELS",
    "STEMS",
    "NCNet",
    "build",
    "count_parameters",
    "trainable_parameters",
    "classifier_of",
    "classifier_fraction",
]

MODELS = ("resnet18", "resnet50", "mlp")
STEMS = ("imagenet", "cifar")
FIXED_CLASSIFIERS = (None, "etf")
_RESNET18_WIDTHS = (64, 128, 256, 512)
MLP_DEFAULT_WIDTH = 512
MLP_DEFAULT_DEPTH = 4  # the paper's Figure 5 (the authors' repository defaults to 6)


class NCNet(nn.Module):
    """A feature extractor ``body`` followed by a linear ``classifier`` (eq. (1): W h + b).

    ``features(x)`` returns the penultimate features (B, d); ``forward(x)`` the logits (B, K).
    ``config`` records the arguments of :func:`build` (for provenance).
    """

    def __init__(self, body: nn.Module, classifier: nn.Linear, config: dict | None = None):
        super().__init__()
        self.body = body
        self.classifier = classifier
        self.config = dict(config or {})

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    @property
    def feature_dim(self) -> int:
        return self.classifier.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features h (B, d) of eq. (1)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


class _MLPBody(nn.Module):
    def __init__(self, in_features: int, widths: list[int]):
        super().__init__()
        self.in_features = in_features
        layers, prev = [], in_features
        for w in widths:
            layers += [nn.Linear(prev, w), nn.BatchNorm1d(w), nn.ReLU(inplace=True)]
            prev = w
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"MLP expects inputs with {self.in_features} values per sample, got {x.shape[1]}")
        return self.layers(x)


# ----------------------------------------------------------------------------- helpers
def _init_like_torchvision(modules) -> None:
    """The initialisation of torchvision's ResNet for newly created conv / BN layers."""
    for mod in modules:
        for m in mod.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def _positive_int(name, v, allow_none=True):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _resnet(name, K, in_channels, feature_dim, width, stem):
    import torchvision
    from torchvision.models.resnet import BasicBlock

    net = getattr(torchvision.models, name)(weights=None, num_classes=K)
    fresh = []
    if width is not None and width != 1:
        # Section 4.2, footnote 13: ResNet18 with all widths (64, 128, 256, 512) scaled.
        w = [max(1, int(round(c * width))) for c in _RESNET18_WIDTHS]
        net.inplanes, net.dilation = w[0], 1
        net.conv1 = nn.Conv2d(in_channels, w[0], 7, 2, 3, bias=False)
        net.bn1 = nn.BatchNorm2d(w[0])
        net.layer1 = net._make_layer(BasicBlock, w[0], 2)
        net.layer2 = net._make_layer(BasicBlock, w[1], 2, stride=2)
        net.layer3 = net._make_layer(BasicBlock, w[2], 2, stride=2)
        net.layer4 = net._make_layer(BasicBlock, w[3], 2, stride=2)
        net.fc = nn.Linear(w[3], K)
        fresh += [net.conv1, net.bn1, net.layer1, net.layer2, net.layer3, net.layer4]
    c0 = net.conv1.out_channels
    if stem == "cifar":  # 3x3 stride-1 conv, no max-pool (Section 4.3's ResNet50)
        net.conv1 = nn.Conv2d(in_channels, c0, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
        fresh.append(net.conv1)
    elif in_channels != net.conv1.in_channels:
        net.conv1 = nn.Conv2d(in_channels, c0, 7, 2, 3, bias=False)
        fresh.append(net.conv1)
    d = net.fc.in_features
    if feature_dim is not None and feature_dim != d:
        # ANCHORS part 1 / Section 4.3: the last block of layer4 outputs feature_dim channels,
        # its shortcut becomes a 1x1 conv + BN, fc becomes Linear(feature_dim, K).
        blk = net.layer4[-1]
        if name == "resnet18":
            blk.conv2 = nn.Conv2d(blk.conv2.in_channels, feature_dim, 3, 1, 1, bias=False)
            blk.bn2 = nn.BatchNorm2d(feature_dim)
        else:
            blk.conv3 = nn.Conv2d(blk.conv3.in_channels, feature_dim, 1, 1, bias=False)
            blk.bn3 = nn.BatchNorm2d(feature_dim)
        blk.downsample = nn.Sequential(
            nn.Conv2d(blk.conv1.in_channels, feature_dim, 1, 1, bias=False), nn.BatchNorm2d(feature_dim)
        )
        fresh.append(blk)
        net.fc = nn.Linear(feature_dim, K)
    _init_like_torchvision(fresh)
    classifier = net.fc
    net.fc = nn.Identity()
    return net, classifier


def build(
    name: str,
    num_classes: int,
    *,
    in_channels: int = 3,
    feature_dim: int | None = None,
    fixed_classifier: str | None = None,
    width=None,
    depth: int | None = None,
    stem: str = "imagenet",
    input_size: int = 32,
) -> NCNet:
    """A network of the paper's experiments as an :class:`NCNet` (Section 4).

    Parameters
    ----------
    name : ``"resnet18"`` or ``"resnet50"`` (torchvision's, built with ``num_classes=K``, no
        pretrained weights), or ``"mlp"``.
    num_classes : K >= 2.
    in_channels : input channels (3 for every dataset of :mod:`nclib.data`).
    feature_dim : d, the dimension of the penultimate features.  None keeps the network's
        own (512 for ResNet18, 2048 for ResNet50, ``width`` for the MLP).  For the ResNets any
        other value changes the network as the authors did for d = K (Section 4.3): the last
        block of layer4 outputs d channels (ResNet18: its second 3x3 conv 512->d + BN(d);
        ResNet50: its last 1x1 conv 512->d + BN(d)), its shortcut becomes a 1x1 conv to d +
        BN(d), and the classifier is Linear(d, K).  For the MLP the last block has d units.
    fixed_classifier : None (learned W) or ``"etf"``: W frozen at the simplex ETF
        ``simplex_etf(K, d)`` (Definition A.1, Section 4.3), bias trainable; needs d >= K.
        See the module docstring for how to keep W out of the optimizer.
    width : ResNet18: a positive width multiplier of the base widths (64, 128, 256, 512)
        (Figure 5; footnote 13), each rounded to an integer.  MLP: the number of units per
        block (default 512).  Not allowed for ResNet50.
    depth : MLP only: the number of [Linear(width), BatchNorm1d, ReLU] blocks (default 4, the
        paper's Figure 5); the classifier follows the last block.
    stem : ResNets: ``"imagenet"`` (torchvision's 7x7 stride-2 conv + max-pool, the authors'
        default on 32 x 32 inputs) or ``"cifar"`` (3x3 stride-1 conv, no max-pool; the
        Section 4.3 ResNet50).  The MLP accepts only the default.
    input_size : MLP only: the input is ``in_channels * input_size**2`` values, flattened.

    ValueError for an unknown name, stem or fixed classifier, K < 2, a fixed ETF with
    d < K, and width / depth where they mean nothing or are not positive.
    """
    if not isinstance(name, str) or name.lower() not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    name = name.lower()
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    K = int(num_classes)
    in_channels = _positive_int("in_channels", in_channels, allow_none=False)
    feature_dim = _positive_int("feature_dim", feature_dim)
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; allowed: {', '.join(STEMS)}")
    if fixed_classifier not in FIXED_CLASSIFIERS:
        raise ValueError(f"unknown fixed_classifier {fixed_classifier!r}; allowed: None, 'etf'")
    config = dict(
        name=name, num_classes=K, in_channels=in_channels, feature_dim=feature_dim,
        fixed_classifier=fixed_classifier, width=width, depth=depth, stem=stem,
    )

    if name == "mlp":
        if stem != "imagenet":
            raise ValueError(f"stem={stem!r} means nothing for the MLP (only for the ResNets)")
        width = MLP_DEFAULT_WIDTH if width is None else _positive_int("width (MLP units per block)", width)
        depth = MLP_DEFAULT_DEPTH if depth is None else _positive_int("depth", depth)
        input_size = _positive_int("input_size", input_size, allow_none=False)
        widths = [width] * depth
        if feature_dim is not None:
            widths[-1] = feature_dim
        body = _MLPBody(in_channels * input_size * input_size, widths)
        classifier = nn.Linear(widths[-1], K)
        config.update(width=width, depth=depth, input_size=input_size)
    else:
        if depth is not None:
            raise ValueError(f"depth means nothing for {name} (only for the MLP), got depth={depth!r}")
        if input_size != 32:
            raise ValueError("input_size is an option of the MLP only (the ResNets pool globally)")
        if width is not None:
            if name != "resnet18":
                raise ValueError(f"width is a multiplier for resnet18 (Figure 5) only, not for {name}")
            if isinstance(width, bool) or not isinstance(width, (int, float, np.integer, np.floating)) or not (
                math.isfinite(width) and width > 0
            ):
                raise ValueError(f"width must be a positive number (a multiplier of 64, 128, 256, 512), got {width!r}")
        body, classifier = _resnet(name, K, in_channels, feature_dim, width, stem)

    d = classifier.in_features
    if fixed_classifier == "etf":
        if d < K:
            raise ValueError(
                f"a fixed simplex-ETF classifier needs feature dimension d >= K (Definition A.1); got d={d}, K={K}"
            )
        with torch.no_grad():
            classifier.weight.copy_(torch.from_numpy(simplex_etf(K, d)).to(classifier.weight.dtype))
        classifier.weight.requires_grad_(False)
    config["feature_dim_actual"] = d
    return NCNet(body, classifier, config)


# ----------------------------------------------------------------------------- counting
def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``), as in Section 4.3's
    savings (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should get: those with ``requires_grad`` (a fixed ETF
    classifier weight, Section 4.3, is left out)."""
    return [p for p in model.parameters() if p.requires_grad]


def classifier_of(model: nn.Module) -> nn.Linear:
    """The last-layer ``nn.Linear`` (W, b of eq. (1)) of an :class:`NCNet` or a torchvision
    classification model (``.classifier`` as in DenseNet / VGG, else ``.fc`` as in ResNet,
    ShuffleNet)."""
    for attr in ("classifier", "fc"):
        m = getattr(model, attr, None)
        if isinstance(m, nn.Linear):
            return m
        if isinstance(m, nn.Sequential):
            lins = [x for x in m.modules() if isinstance(x, nn.Linear)]
            if lins:
                return lins[-1]
    raise ValueError(f"cannot find the classifier of {type(model).__name__}: no Linear .classifier or .fc")


def classifier_fraction(model: nn.Module) -> float:
    """Classifier weight-matrix parameters (K x d, bias excluded) / all parameters: the share
    of parameters a fixed classifier saves (Section 4.3: 8.01% for ResNet50 and 11.76% for
    DenseNet169 on ImageNet, K = 1000)."""
    return classifier_of(model).weight.numel() / count_parameters(model)


# ----------------------------------------------------------------------------- Section 4.3 parameter savings
#: The paper's numbers (Section 4.3) for the tables of the exp_design chapter.
PAPER_SAVINGS = {"dk": {"resnet18": 20.70, "resnet50": 4.45},
                 "fixed": {"resnet50": 8.01, "densenet169": 11.76, "shufflenet": 52.56}}


def dk_savings(models=("resnet18", "resnet50"), num_classes: int = 10, stem: str = "imagenet") -> list:
    """Section 4.3, "d = K": parameters of each network with its own feature dimension and with
    d = K (:func:`nclib.models.build` with ``feature_dim=K``), counted from the models
    themselves.  Rows: dict(model, d, params, params_dk, saving_percent)."""
    rows = []
    for name in models:
        a = build(name, num_classes, stem=stem)
        b = build(name, num_classes, feature_dim=num_classes, stem=stem)
        pa, pb = count_parameters(a), count_parameters(b)
        rows.append(dict(model=name, d=int(a.classifier.in_features), params=pa, params_dk=pb,
                         saving_percent=100.0 * (pa - pb) / pa))
    return rows


def fixed_classifier_savings(models=("resnet50", "densenet169", "shufflenet_v2_x1_0"),
                             num_classes: int = 1000) -> list:
    """Section 4.3, fixed classifier on ImageNet: the share of all parameters in the classifier's
    K x d weight matrix (bias excluded; :func:`nclib.models.classifier_fraction`) of
    torchvision's models with ``num_classes`` outputs, no pretrained weights.  Rows:
    dict(model, K, d, classifier_weight, params, saving_percent)."""
    import torchvision

    rows = []
    for name in models:
        if not hasattr(torchvision.models, name):
            raise ValueError(f"unknown torchvision model {name!r}")
        m = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        fc = classifier_of(m)
        rows.append(dict(model=name, K=num_classes, d=int(fc.in_features), classifier_weight=int(fc.weight.numel()),
                         params=count_parameters(m), saving_percent=100.0 * classifier_fraction(m)))
    return rows
