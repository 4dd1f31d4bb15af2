"""Tests for nclib.data: loaders on tiny files in torchvision's on-disk formats, the real MNIST,
preprocessing against torchvision's per-image transforms, subsets, random labels, augmentation."""
from __future__ import annotations

import hashlib
import io
import os
import pathlib
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image

from nclib import data as D

# the real MNIST / Fashion-MNIST: $NCLIB_DATA if it holds them, else the project's shared copy
SHARED = pathlib.Path(os.environ.get("NCLIB_DATA") or "/work/shared/data")
if not (SHARED / "MNIST" / "raw").is_dir():
    SHARED = pathlib.Path("/work/shared/data")
HAVE_MNIST = (SHARED / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
HAVE_FMNIST = (SHARED / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


# ----------------------------------------------------------------------------- tiny on-disk files
def _write_idx(path: pathlib.Path, arr: np.ndarray) -> None:
    """The IDX format of MNIST: magic 0x0000 08 nd (uint8), big-endian int32 dims, raw bytes."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, arr.ndim))
        f.write(struct.pack(">" + "I" * arr.ndim, *arr.shape))
        f.write(arr.tobytes())


def _tiny_mnist(root: pathlib.Path, folder="MNIST", n_train=6, n_test=3, seed=0):
    """Random 28 x 28 images, n per class, written as the four uncompressed IDX files."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = rng.permutation(np.repeat(np.arange(10), n)).astype(np.uint8)
        img = rng.integers(0, 256, size=(len(y), 28, 28), dtype=np.uint8)
        img[:, :4] = 0  # a dark margin like MNIST's
        _write_idx(raw / f"{split}-images-idx3-ubyte", img)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", y)
        out[split] = (img, y)
    return out


def _tiny_cifar(root: pathlib.Path, n_per_batch=20, n_test=20, seed=0, cifar100=False):
    """cifar-10-batches-py (data_batch_1..5, test_batch, batches.meta) or cifar-100-python
    (train, test, meta), pickled dicts with 'data' (n, 3072) uint8 in CHW order."""
    rng = np.random.default_rng(seed)
    K = 100 if cifar100 else 10
    if cifar100:
        base = root / "cifar-100-python"
        files = {"train": 5 * n_per_batch, "test": n_test}
        key, meta_name, meta = "fine_labels", "meta", {"fine_label_names": [f"c{k}" for k in range(K)]}
    else:
        base = root / "cifar-10-batches-py"
        files = {f"data_batch_{i}": n_per_batch for i in range(1, 6)} | {"test_batch": n_test}
        key, meta_name, meta = "labels", "batches.meta", {"label_names": list(D.CIFAR10_CLASSES)}
    base.mkdir(parents=True)
    out = {}
    for fname, n in files.items():
        y = (np.arange(n) % K).tolist()
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        with open(base / fname, "wb") as f:
            pickle.dump({"data": data, key: y}, f)
        out[fname] = (data, y)
    with open(base / meta_name, "wb") as f:
        pickle.dump(meta, f)
    return out


@pytest.fixture
def no_md5(monkeypatch):
    """torchvision's CIFAR loaders check the md5 of every file against the real CIFAR's.
    Our tiny files cannot match, so in these tests only, the check is reduced to 'the file
    exists' (the loader itself is unchanged: on real data the md5s are checked)."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


# ----------------------------------------------------------------------------- names, roots, errors
def test_names_and_num_classes():
    assert D.DATASETS == ("mnist", "fashionmnist", "cifar10", "cifar100", "cifar10-jpeg", "digits", "gaussian")
    assert [D.num_classes(n) for n in D.DATASETS] == [10, 10, 10, 100, 10, 10, 10]
    with pytest.raises(ValueError, match="unknown dataset 'svhn'.*mnist"):
        D.num_classes("svhn")


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("NCLIB_DATA", str(tmp_path / "env"))
    assert D.data_root(tmp_path / "arg") == tmp_path / "arg"
    assert D.data_root() == tmp_path / "env"
    monkeypatch.delenv("NCLIB_DATA")
    assert D.data_root() == pathlib.Path("data")
    monkeypatch.setenv("NCLIB_CACHE", str(tmp_path / "cache"))
    assert D.cache_root() == tmp_path / "cache"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="svhn"), "unknown dataset 'svhn'; allowed: mnist, fashionmnist"),
        (dict(name="digits", split="val"), "split must be one of"),
        (dict(name="digits", n_per_class=0), "n_per_class"),
        (dict(name="digits", n_per_class=2.5), "n_per_class"),
        (dict(name="digits", n_per_class=1000), r"n_per_class=1000 is larger than the samples available"),
        (dict(name="digits", normalization="zca"), "unknown normalization 'zca'"),
        (dict(name="digits", normalization=((0.1,), (0.0,))), "std > 0"),
        (dict(name="digits", seed="a"), "seed must be an integer"),
        (dict(name="digits", num_classes=5), "gaussian"),
        (dict(name="gaussian", num_classes=1), "num_classes must be an integer >= 2"),
        (dict(name="gaussian", noise=-1.0), "noise"),
        (dict(name="gaussian", noise=float("nan")), "noise"),
    ],
)
def test_load_dataset_bad_input(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        D.load_dataset(name, **kwargs)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
        ("fashionmnist", "FashionMNIST/raw/t10k-labels-idx1-ubyte"),
        ("cifar10", "cifar-10-batches-py/data_batch_1"),
        ("cifar100", "cifar-100-python/train"),
        ("cifar10-jpeg", "CIFAR10-JPEG/cifar10-jpeg-q75.tar.gz"),
    ],
)
def test_missing_files_offline_error_names_root_and_files(tmp_path, monkeypatch, name, expected):
    monkeypatch.setenv("NCLIB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "empty-root"
    root.mkdir()
    with pytest.raises(RuntimeError) as err:
        D.load_dataset(name, root=root, download=False)
    msg = str(err.value)
    assert str(root) in msg and expected in msg
    assert list(root.iterdir()) == []  # nothing written, nothing substituted


# ----------------------------------------------------------------------------- MNIST-format loaders
@pytest.mark.parametrize("folder, name", [("MNIST", "mnist"), ("FashionMNIST", "fashionmnist")])
def test_tiny_mnist_idx_matches_torchvision_per_image(tmp_path, folder, name):
    raw = _tiny_mnist(tmp_path, folder=folder)
    cls = getattr(torchvision.datasets, folder)
    for split, tv_split in (("train", "train"), ("test", "t10k")):
        X, y = D.load_dataset(name, split, root=tmp_path, download=False)
        img, lab = raw[tv_split]
        assert X.shape == (len(lab), 3, 32, 32) and X.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(y, torch.from_numpy(lab.astype(np.int64)))
        ref_ds = cls(str(tmp_path), train=split == "train", transform=D.mnist_transform(), download=False)
        ref = torch.stack([ref_ds[i][0] for i in range(len(ref_ds))])
        assert torch.equal(X, ref)  # bit for bit, the per-image torchvision pipeline
    # the bytes went through: undoing the normalisation of a hand-made PIL resize of image 0
    u8 = np.asarray(Image.fromarray(raw["train"][0][0]).resize((32, 32), Image.BILINEAR))
    X, _ = D.load_dataset(name, root=tmp_path, download=False)
    np.testing.assert_allclose((X[0, 1] * 0.3081 + 0.1307).numpy(), u8 / 255.0, atol=1e-6)


def test_tiny_mnist_subsets_and_imagenet_normalisation(tmp_path):
    raw = _tiny_mnist(tmp_path, n_train=6)
    X, y = D.load_dataset("mnist", root=tmp_path, n_per_class=4, seed=3, download=False, normalization="imagenet")
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), 4))
    idx = D.balanced_subset_indices(torch.from_numpy(raw["train"][1].astype(np.int64)), 4, seed=3)
    ref_ds = torchvision.datasets.MNIST(str(tmp_path), train=True, transform=D.mnist_transform("imagenet"))
    ref = torch.stack([ref_ds[i][0] for i in idx.tolist()])
    assert torch.equal(X, ref)
    assert not torch.equal(X[:, 0], X[:, 1])  # per-channel constants on a grey image


def test_grey_sets_are_three_equal_channels(tmp_path):
    _tiny_mnist(tmp_path)
    X, _ = D.load_dataset("mnist", root=tmp_path, download=False)
    assert torch.equal(X[:, 0], X[:, 1]) and torch.equal(X[:, 0], X[:, 2])


@pytest.mark.skipif(not HAVE_MNIST, reason="real MNIST not present")
def test_real_mnist_same_code_path():
    root = SHARED
    with open(root / "MNIST/raw/train-images-idx3-ubyte", "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == "6bbc9ace898e44ae57da46a324031adb"
    ds = D._torchvision_dataset("MNIST", root, True, False, [])
    counts = torch.bincount(torch.as_tensor(ds.targets), minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    X, y = D.load_dataset("mnist", root=root, n_per_class=100, seed=0, download=False)
    assert X.shape == (1000, 3, 32, 32) and torch.equal(torch.bincount(y), torch.full((10,), 100))
    assert abs(X.mean().item()) < 0.03 and 0.85 < X.std().item() < 1.0  # normalised
    # the first 20 images against torchvision's per-image pipeline
    idx = D.balanced_subset_indices(ds.targets, 100, seed=0)[:20]
    ref_ds = torchvision.datasets.MNIST(str(root), train=True, transform=D.mnist_transform())
    assert torch.equal(X[:20], torch.stack([ref_ds[i][0] for i in idx.tolist()]))
    assert torch.equal(y[:20], ds.targets[idx])
    Xt, yt = D.load_dataset("mnist", "test", root=root, n_per_class=3, download=False)
    assert Xt.shape == (30, 3, 32, 32)


@pytest.mark.skipif(not HAVE_FMNIST, reason="real Fashion-MNIST not present")
def test_real_fashionmnist_loads():
    X, y = D.load_dataset("fashionmnist", root=SHARED, n_per_class=5, download=False)
    assert X.shape == (50, 3, 32, 32) and torch.equal(torch.bincount(y), torch.full((10,), 5))


# ----------------------------------------------------------------------------- CIFAR-format loaders
def test_tiny_cifar10_md5_checked_without_patch(tmp_path):
    _tiny_cifar(tmp_path)
    with pytest.raises(RuntimeError, match="cifar-10-batches-py/data_batch_1"):
        D.load_dataset("cifar10", root=tmp_path, download=False)


def test_tiny_cifar10_matches_torchvision_per_image(tmp_path, no_md5):
    raw = _tiny_cifar(tmp_path)
    X, y = D.load_dataset("cifar10", root=tmp_path, download=False)
    assert X.shape == (100, 3, 32, 32) and X.dtype == torch.float32
    assert y.tolist() == sum((raw[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    ref_ds = torchvision.datasets.CIFAR10(str(tmp_path), train=True, transform=D.cifar_transform())
    assert torch.equal(X, torch.stack([ref_ds[i][0] for i in range(len(ref_ds))]))
    # independent of torchvision: CIFAR's rows are R, G, B planes of 32 x 32
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2023, 0.1994, 0.2010]).view(3, 1, 1)
    first = torch.from_numpy(raw["data_batch_1"][0][0].reshape(3, 32, 32).astype(np.float32)) / 255
    torch.testing.assert_close(X[0], (first - mean) / std)
    Xt, yt = D.load_dataset("cifar10", "test", root=tmp_path, n_per_class=2, seed=1, download=False)
    assert Xt.shape == (20, 3, 32, 32) and torch.equal(torch.bincount(yt), torch.full((10,), 2))
    idx = D.balanced_subset_indices(raw["test_batch"][1], 2, seed=1)
    ref_t = torchvision.datasets.CIFAR10(str(tmp_path), train=False, transform=D.cifar_transform("imagenet"))
    Xi, _ = D.load_dataset("cifar10", "test", root=tmp_path, n_per_class=2, seed=1, download=False, normalization="imagenet")
    assert torch.equal(Xi, torch.stack([ref_t[i][0] for i in idx.tolist()]))


def test_tiny_cifar100(tmp_path, no_md5):
    _tiny_cifar(tmp_path, n_per_batch=40, n_test=100, cifar100=True)
    X, y = D.load_dataset("cifar100", root=tmp_path, n_per_class=2, download=False)
    assert X.shape == (200, 3, 32, 32) and torch.equal(torch.bincount(y), torch.full((100,), 2))
    ref_ds = torchvision.datasets.CIFAR100(str(tmp_path), train=True, transform=D.cifar_transform())
    idx = D.balanced_subset_indices(ref_ds.targets, 2, seed=0)
    assert torch.equal(X, torch.stack([ref_ds[i][0] for i in idx.tolist()]))


# ----------------------------------------------------------------------------- the JPEG stand-in
def _tiny_jpeg_archive(root: pathlib.Path, n_train=3, n_test=2, seed=0):
    rng = np.random.default_rng(seed)
    (root / "CIFAR10-JPEG").mkdir(parents=True)
    with tarfile.open(root / "CIFAR10-JPEG" / "cifar10-jpeg-q75.tar.gz", "w:gz") as tf:
        for split, n in (("train", n_train), ("test", n_test)):
            for cls in reversed(D.CIFAR10_CLASSES):  # archive order must not matter
                for i in range(n):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=75)
                    info = tarfile.TarInfo(f"{split}/{cls}/{i:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tf.addfile(info, buf)


def test_cifar10_jpeg_tiny_archive(tmp_path, monkeypatch):
    root, cache = tmp_path / "root", tmp_path / "cache"
    _tiny_jpeg_archive(root)
    monkeypatch.setenv("NCLIB_CACHE", str(cache))
    X, y = D.load_dataset("cifar10-jpeg", root=root)
    assert X.shape == (30, 3, 32, 32) and y.tolist() == [k for k in range(10) for _ in range(3)]
    extracted = next(cache.glob("cifar10-jpeg-q75-*"))
    ref = torchvision.datasets.ImageFolder(str(extracted / "train"), transform=D.cifar_transform())
    assert tuple(ref.classes) == D.CIFAR10_CLASSES  # alphabetical = CIFAR-10's label order
    assert torch.equal(X, torch.stack([ref[i][0] for i in range(len(ref))]))
    assert torch.equal(y, torch.tensor(ref.targets))
    # extracted once: a second load does not open the archive again
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-extracted")))
    Xt, yt = D.load_dataset("cifar10-jpeg", "test", root=root, n_per_class=1, seed=5)
    assert Xt.shape == (10, 3, 32, 32) and yt.tolist() == list(range(10))
    assert [p.name for p in cache.iterdir()] == [extracted.name]  # no temporary folder left
    # the decoded train split was kept: later loads (whole or subset) decode nothing
    assert sorted(p.name for p in extracted.iterdir()) == ["COMPLETE", "test", "train", "train-uint8.npy"]
    monkeypatch.setattr(D, "_decode_rgb", lambda p: (_ for _ in ()).throw(AssertionError("decoded again")))
    X2, y2 = D.load_dataset("cifar10-jpeg", root=root)
    assert torch.equal(X2, X) and torch.equal(y2, y)
    Xs, ys = D.load_dataset("cifar10-jpeg", root=root, n_per_class=2, seed=1)
    sub = D.balanced_subset_indices(y, 2, seed=1)
    assert torch.equal(Xs, X[sub]) and torch.equal(ys, y[sub])


# ----------------------------------------------------------------------------- digits, gaussian
def test_digits_matches_per_image_pipeline_and_split():
    from sklearn.datasets import load_digits
    from torchvision import transforms as T

    X, y = D.load_dataset("digits")
    Xt, yt = D.load_dataset("digits", "test")
    assert X.shape == (1433, 3, 32, 32) and Xt.shape == (364, 3, 32, 32)
    assert X.dtype == torch.float32 and y.dtype == torch.int64
    images, target, tr, te = D._digits_split()
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 1797
    assert torch.equal(y, torch.from_numpy(target[tr]))
    # independent: the MNIST-like torchvision pipeline image by image from sklearn's 8x8 images
    d = load_digits()
    tf = T.Compose([T.Grayscale(3), T.Resize(32), T.ToTensor(), T.Normalize(*D.NORMALIZATIONS["digits"])])
    for j in (0, 1, 500, 1432):
        u8 = np.rint(d.images[tr[j]] * 255 / 16).astype(np.uint8)
        assert torch.equal(X[j], tf(Image.fromarray(u8)))
    # the digits constants are the mean/std of all 1797 preprocessed images
    allx = torch.cat([X, Xt])[:, 0].double()
    m, s = D.NORMALIZATIONS["digits"][0][0], D.NORMALIZATIONS["digits"][1][0]
    raw = allx * s + m
    assert abs(raw.mean().item() - m) < 1e-4 and abs(raw.std().item() - s) < 1e-4
    # subsets: balanced, seeded, nested
    Xa, ya = D.load_dataset("digits", n_per_class=5, seed=1)
    Xb, yb = D.load_dataset("digits", n_per_class=5, seed=1)
    Xc, _ = D.load_dataset("digits", n_per_class=5, seed=2)
    assert torch.equal(Xa, Xb) and not torch.equal(Xa, Xc)
    assert torch.equal(torch.bincount(ya), torch.full((10,), 5))


def test_gaussian_mixture():
    X, y = D.load_dataset("gaussian", n_per_class=20, num_classes=4, noise=0.5, seed=3)
    Xt, yt = D.load_dataset("gaussian", "test", n_per_class=20, num_classes=4, noise=0.5, seed=3)
    assert X.shape == (80, 3, 32, 32) and torch.equal(torch.bincount(y), torch.full((4,), 20))
    assert not torch.equal(X, Xt)  # fresh samples in the test split
    X0, _ = D.load_dataset("gaussian", n_per_class=2, num_classes=4, noise=0.0, seed=3)
    X0t, _ = D.load_dataset("gaussian", "test", n_per_class=2, num_classes=4, noise=0.0, seed=3)
    assert torch.equal(X0, X0t)  # same means in both splits
    torch.testing.assert_close(X.view(4, 20, -1).mean(1), X0.view(4, 2, -1)[:, 0], atol=0.5, rtol=0)
    # samples scatter around the means with std = noise
    resid = X.view(4, 20, -1) - X0.view(4, 2, -1)[:, :1]
    assert abs(resid.std().item() - 0.5) < 0.01
    assert D.load_dataset("gaussian")[0].shape == (1000, 3, 32, 32)


# ----------------------------------------------------------------------------- subsets, random labels
def test_balanced_subset_indices():
    t = torch.tensor([0, 1, 2] * 10 + [0, 0, 1])
    a = D.balanced_subset_indices(t, 5, seed=0)
    assert torch.equal(torch.bincount(t[a]), torch.full((3,), 5))
    assert torch.equal(a, torch.sort(a).values) and len(torch.unique(a)) == 15
    assert torch.equal(a, D.balanced_subset_indices(t, 5, seed=0))
    assert not torch.equal(a, D.balanced_subset_indices(t, 5, seed=1))
    small = D.balanced_subset_indices(t, 3, seed=0)
    assert set(small.tolist()) <= set(a.tolist())  # nested
    full = D.balanced_subset_indices(t, 10, seed=0)
    assert torch.equal(torch.bincount(t[full]), torch.full((3,), 10))
    with pytest.raises(ValueError, match=r"class\(es\) \{2: 10\}"):
        D.balanced_subset_indices(t, 11)
    with pytest.raises(ValueError, match=r"label 2, outside \[0, 2\)"):
        D.balanced_subset_indices(t, 1, num_classes=2)
    with pytest.raises(ValueError, match="labels >= 0"):
        D.balanced_subset_indices([0, -1], 1)
    with pytest.raises(ValueError, match=r"class\(es\) \{3: 0\}"):  # an empty class is short too
        D.balanced_subset_indices(t, 1, num_classes=4)
    # uniform choice: over many seeds every index of class 2 (10 of them) is chosen ~ half the time
    hits = torch.zeros(len(t))
    for s in range(400):
        hits[D.balanced_subset_indices(t, 5, seed=s)] += 1
    frac = hits[t == 2] / 400
    assert ((frac > 0.4) & (frac < 0.6)).all()


def test_balanced_random_labels():
    lab = D.balanced_random_labels(5000, 10, seed=7)
    assert lab.dtype == torch.int64 and lab.shape == (5000,)
    assert torch.equal(torch.bincount(lab), torch.full((10,), 500))
    assert torch.equal(lab, D.balanced_random_labels(5000, 10, seed=7))
    assert not torch.equal(lab, D.balanced_random_labels(5000, 10, seed=8))
    assert (lab[:-1] != lab[1:]).float().mean() > 0.8  # shuffled, not blocks
    for bad, match in (((10, 3), "divide N"), ((10, 1), "K must be >= 2"), ((0, 2), "N must be"), ((10, 2.0), "K must be")):
        with pytest.raises(ValueError, match=match):
            D.balanced_random_labels(*bad, seed=0)


# ----------------------------------------------------------------------------- augmentation
def _all_crops(x: torch.Tensor, pad=4):
    """Brute force with torchvision: every (i, j, flip) of RandomCrop(32, padding) + hflip."""
    H, W = x.shape[-2:]
    xp = TF.pad(x, [pad], fill=0)
    out, keys = [], []
    for i in range(2 * pad + 1):
        for j in range(2 * pad + 1):
            c = TF.crop(xp, i, j, H, W)
            out += [c, TF.hflip(c)]
            keys += [(i, j, 0), (i, j, 1)]
    return torch.stack(out), keys


def test_augment_equals_torchvision_crops_and_distribution():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 32, 32, generator=g)
    B = 3000
    X = x.expand(B, -1, -1, -1)
    before = X.clone()
    out = D.augment(X, generator=torch.Generator().manual_seed(1))
    assert out.shape == X.shape and out.dtype == X.dtype and torch.equal(X, before)
    cands, keys = _all_crops(x)
    r = torch.randn(3 * 32 * 32, dtype=torch.float64)
    fo, fc = out.reshape(B, -1).double() @ r, cands.reshape(len(keys), -1).double() @ r
    match = (fo[:, None] - fc[None, :]).abs().argmin(1)
    assert torch.equal(out, cands[match])  # every output IS one of torchvision's crops, exactly
    ij = torch.tensor([keys[m][:2] for m in match.tolist()])
    flips = torch.tensor([keys[m][2] for m in match.tolist()]).float()
    assert abs(flips.mean().item() - 0.5) < 0.04
    for col in (0, 1):
        freq = torch.bincount(ij[:, col], minlength=9).float() / B
        assert ((freq > 1 / 9 - 0.03) & (freq < 1 / 9 + 0.03)).all()
    assert (ij[:, 0] == ij[:, 1]).float().mean() < 0.2  # offsets independent, not shared
    # reproducible from the generator; padding=0 leaves only the flip
    assert torch.equal(out, D.augment(X, generator=torch.Generator().manual_seed(1)))
    out0 = D.augment(X[:50], generator=torch.Generator().manual_seed(2), padding=0)
    assert all(torch.equal(o, x) or torch.equal(o, x.flip(-1)) for o in out0)
    with pytest.raises(ValueError, match="B, C, H, W"):
        D.augment(x)


def test_augment_fixed_offset_equals_torchvision_random_crop(monkeypatch):
    """torchvision's RandomCrop(32, padding=4) with its offset forced = our crop at that offset."""
    from torchvision import transforms as T

    x = torch.randn(1, 3, 32, 32)
    out = D.augment(x, generator=torch.Generator().manual_seed(4))
    cands, keys = _all_crops(x[0])
    i, j, f = keys[[torch.equal(out[0], c) for c in cands].index(True)]
    monkeypatch.setattr(T.RandomCrop, "get_params", staticmethod(lambda img, size: (i, j, 32, 32)))
    ref = T.RandomCrop(32, padding=4)(x[0])
    assert torch.equal(out[0], TF.hflip(ref) if f else ref)


# ----------------------------------------------------------------------------- batches
def test_iterate_batches():
    X = torch.arange(23, dtype=torch.float32).view(23, 1, 1, 1).expand(23, 3, 4, 4)
    y = torch.arange(23)
    batches = list(D.iterate_batches(X, y, 5, generator=torch.Generator().manual_seed(0)))
    assert [len(b[1]) for b in batches] == [5, 5, 5, 5, 3]
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(23)) and seen.tolist() != list(range(23))
    assert all(torch.equal(xb[:, 0, 0, 0], yb.float()) for xb, yb in batches)  # pairs kept
    again = torch.cat([b[1] for b in D.iterate_batches(X, y, 5, generator=torch.Generator().manual_seed(0))])
    assert torch.equal(seen, again)
    ordered = [b[1].tolist() for b in D.iterate_batches(X, y, 10, shuffle=False, drop_last=True)]
    assert ordered == [list(range(10)), list(range(10, 20))]
    aug = list(D.iterate_batches(X, y, 8, augment=True, generator=torch.Generator().manual_seed(0)))
    assert [tuple(b[0].shape) for b in aug] == [(8, 3, 4, 4), (8, 3, 4, 4), (7, 3, 4, 4)]
    with pytest.raises(ValueError, match="disagree"):
        next(D.iterate_batches(X, y[:3], 5))
    with pytest.raises(ValueError, match="batch_size"):
        next(D.iterate_batches(X, y, 0))
