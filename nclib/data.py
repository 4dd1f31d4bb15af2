"""Datasets, the paper's preprocessing, balanced subsets, random labels and augmentation.

Paper, Section 4 ("Setup of network architectures, dataset, and training"), Section 4.2
(random labels, Figure 5) and Section 4.3 with footnote 15 (augmentation); the exact
transforms are those of the authors' code (the book's ANCHORS, part 1):

* MNIST / Fashion-MNIST: ``Grayscale(3) -> Resize(32) (PIL, bilinear) -> ToTensor ->
  Normalize(0.1307, 0.3081)``;
* CIFAR-10: ``ToTensor -> Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))``;
* random-label runs: ImageNet mean/std (``normalization="imagenet"``);
* Section 4.3: ``RandomCrop(32, padding=4)`` of the normalised image + ``RandomHorizontalFlip``.

Design (why this module is fast and still faithful): a whole split is preprocessed ONCE
and held as one float32 tensor ``X`` (N, 3, 32, 32) on the training device.  Every step
that is an elementwise float32 operation (``ToTensor``'s ``/255``, ``Normalize``'s
``(x - mean) / std``) is done on the whole tensor with the same float32 operations, so
the result is bit-for-bit what torchvision's per-image transforms give (tested on the CPU).  The one
step that is not elementwise, MNIST's PIL resize 28 -> 32 (which rounds to uint8), is done
by PIL itself, once per image, never re-implemented with ``interpolate``.  Batches are
cut with ``randperm`` on the device, without a DataLoader (:func:`iterate_batches`).

File checks: torchvision's MNIST loaders only check that the four IDX files exist; its
CIFAR loaders compare the md5 of every file with the original CIFAR's, so a corrupt or
foreign file is refused (a RuntimeError from this module naming the root and the files).
The tests write tiny files in both on-disk formats; for CIFAR they replace torchvision's
``check_integrity`` by an existence check inside the test only (the loader is unchanged).

The grey-scale sets (MNIST, Fashion-MNIST, digits) are returned as a stride-0 ``expand``
of one channel to three: the values are those of ``Grayscale(3)``, with a third of the
memory.  Treat ``X`` as read-only (index it, or ``.contiguous()`` it before writing).

Shapes: images are (N, 3, 32, 32) float32, labels (N,) int64.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import tarfile
import tempfile
import zlib
from typing import Iterator

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "NORMALIZATIONS",
    "CIFAR10_CLASSES",
    "num_classes",
    "data_root",
    "cache_root",
    "load_dataset",
    "balanced_subset_indices",
    "balanced_random_labels",
    "augment",
    "iterate_batches",
    "mnist_transform",
    "cifar_transform",
]

DATASETS = ("mnist", "fashionmnist", "cifar10", "cifar100", "cifar10-jpeg", "digits", "gaussian")
_SPLITS = ("train", "test")

#: (mean, std) per named normalisation.  "mnist" and "cifar10" are the authors' constants
#: (ANCHORS part 1); "imagenet" is torchvision's ImageNet statistics, used by the authors
#: for the random-label runs (Section 4.2); "digits" are the pixel mean / std of
#: scikit-learn's digits after this module's 8 -> 32 resize (all 1797 images; a test
#: recomputes them); "none" only scales to [0, 1] (ToTensor).
NORMALIZATIONS = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "digits": ((0.3055,), (0.3235,)),
    "none": None,
}
_DEFAULT_NORMALIZATION = {
    "mnist": "mnist",
    "fashionmnist": "mnist",  # not in the paper: MNIST's pipeline and constants
    "cifar10": "cifar10",
    "cifar10-jpeg": "cifar10",
    "cifar100": "cifar10",  # the paper has no CIFAR-100 protocol: CIFAR-10's constants
    "digits": "digits",
    "gaussian": "none",
}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_NUM_CLASSES = {
    "mnist": 10,
    "fashionmnist": 10,
    "cifar10": 10,
    "cifar100": 100,
    "cifar10-jpeg": 10,
    "digits": 10,
    "gaussian": 10,
}
_JPEG_ARCHIVE = pathlib.Path("CIFAR10-JPEG") / "cifar10-jpeg-q75.tar.gz"
_DIGITS_SPLIT_SEED = 2021  # fixed: the digits train/test split never depends on `seed`
_DIGITS_TEST_FRACTION = 0.2


# ----------------------------------------------------------------------------- names, roots
def _check_name(name) -> str:
    if not isinstance(name, str) or name.lower() not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return name.lower()


def _check_split(split) -> str:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    return split


def num_classes(name: str) -> int:
    """Number of classes K of a dataset in :data:`DATASETS` (Section 4: K = 10 for MNIST and
    CIFAR-10).  For ``"gaussian"`` this is the default K (10); ``load_dataset("gaussian",
    num_classes=...)`` can change it."""
    return _NUM_CLASSES[_check_name(name)]


def data_root(root=None) -> pathlib.Path:
    """The folder holding the datasets: ``root`` if given, else the environment variable
    ``NCLIB_DATA``, else ``./data`` (relative to the current working directory).

    Laid out as torchvision expects: ``<root>/MNIST/raw/...``, ``<root>/FashionMNIST/raw/...``,
    ``<root>/cifar-10-batches-py/...``, ``<root>/cifar-100-python/...``, and for the JPEG
    stand-in ``<root>/CIFAR10-JPEG/cifar10-jpeg-q75.tar.gz``.  The root may be read-only
    when the files are already there.
    """
    if root is None:
        root = os.environ.get("NCLIB_DATA") or "data"
    return pathlib.Path(root).expanduser()


def cache_root() -> pathlib.Path:
    """A writable cache folder: environment variable ``NCLIB_CACHE``, else ``~/.cache/nclib``."""
    return pathlib.Path(os.environ.get("NCLIB_CACHE") or pathlib.Path.home() / ".cache" / "nclib").expanduser()


def _normalization(name: str, normalization):
    """-> (mean, std) tuples or None; accepts a name of NORMALIZATIONS or a (mean, std) pair."""
    if normalization is None:
        normalization = _DEFAULT_NORMALIZATION[name]
    if isinstance(normalization, str):
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"unknown normalization {normalization!r}; allowed: {', '.join(NORMALIZATIONS)} "
                "or a (mean, std) pair of tuples"
            )
        return NORMALIZATIONS[normalization]
    try:
        mean, std = normalization
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    except Exception as exc:
        raise ValueError(f"normalization must be a name or a (mean, std) pair, got {normalization!r}") from exc
    if len(mean) not in (1, 3) or len(std) != len(mean) or min(std) <= 0:
        raise ValueError(f"normalization (mean, std) needs 1 or 3 values each and std > 0, got {normalization!r}")
    return mean, std


def black_level(name: str, normalization=None) -> list | None:
    """The value a black pixel (0) takes after the dataset's normalisation, per channel:
    ``-mean/std`` in float32 as torchvision's ``Normalize`` computes it (3 channels; None when
    the dataset is not normalised).  Padding with it equals the authors' ``RandomCrop(32,
    padding=4)``, which pads the raw image with black *before* ``Normalize`` (Section 4.3)."""
    norm = _normalization(_check_name(name), normalization)
    if norm is None:
        return None
    mean, std = (torch.tensor(v, dtype=torch.float32) for v in norm)
    val = (torch.zeros_like(mean) - mean) / std
    return (val.expand(3) if val.numel() == 1 else val).tolist()


# ----------------------------------------------------------------------------- transforms
def _normalize_(x: torch.Tensor, norm) -> torch.Tensor:
    """In place ``(x - mean) / std`` per channel with float32 mean/std, exactly torchvision's
    ``Normalize`` (``tensor.sub_(mean[:, None, None]).div_(std[:, None, None])``)."""
    if norm is None:
        return x
    mean = torch.as_tensor(norm[0], dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(norm[1], dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x.sub_(mean).div_(std)


def _to_float(u8: torch.Tensor) -> torch.Tensor:
    """torchvision ``ToTensor`` on uint8: ``.to(float32).div(255)``."""
    return u8.to(torch.float32).div_(255)  # a fresh tensor: dividing in place is safe


def mnist_transform(normalization="mnist"):
    """torchvision's per-image MNIST pipeline of the authors' code (ANCHORS part 1):
    ``Grayscale(3) -> Resize(32) -> ToTensor -> Normalize``.  Reference for the tests; the
    loader computes the same numbers on the whole set at once."""
    from torchvision import transforms as T

    norm = NORMALIZATIONS[normalization] if isinstance(normalization, str) else normalization
    steps = [T.Grayscale(num_output_channels=3), T.Resize(32), T.ToTensor()]
    if norm is not None:
        steps.append(T.Normalize(*norm))
    return T.Compose(steps)


def cifar_transform(normalization="cifar10"):
    """torchvision's per-image CIFAR-10 pipeline of the authors' code: ``ToTensor ->
    Normalize``.  Reference for the tests."""
    from torchvision import transforms as T

    norm = NORMALIZATIONS[normalization] if isinstance(normalization, str) else normalization
    steps = [T.ToTensor()]
    if norm is not None:
        steps.append(T.Normalize(*norm))
    return T.Compose(steps)


def _resize_gray_pil(images: np.ndarray, size: int = 32) -> np.ndarray:
    """(n, h, w) uint8 -> (n, size, size) uint8 by PIL's bilinear resize, one image at a time.

    This is torchvision's ``Resize(size)`` on a square PIL image (``img.resize((size, size),
    BILINEAR)``).  ``Grayscale(3)`` before it only copies the channel, and PIL resizes each
    channel with the same integer arithmetic, so resizing the single channel gives the same
    bytes (tested against the full torchvision pipeline)."""
    from PIL import Image

    out = np.empty((len(images), size, size), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return out


def _gray_to_X(u8: np.ndarray, norm, device) -> torch.Tensor:
    """(n, 32, 32) uint8 -> (n, 3, 32, 32) float32 on device: ToTensor + Normalize, 3 channels
    as a stride-0 expand (= Grayscale(3)).  The uint8 bytes travel, the floats are made there."""
    x = _to_float(torch.from_numpy(np.ascontiguousarray(u8)).to(device)).unsqueeze(1)
    if norm is not None and len(norm[0]) == 3:  # per-channel constants on a grey image
        return _normalize_(x.expand(-1, 3, -1, -1).contiguous(), norm)
    return _normalize_(x, norm).expand(-1, 3, -1, -1)


def _rgb_to_X(u8_hwc: np.ndarray, norm, device) -> torch.Tensor:
    """(n, 32, 32, 3) uint8 (HWC, as CIFAR stores it) -> (n, 3, 32, 32) float32: ToTensor + Normalize."""
    x = torch.from_numpy(np.ascontiguousarray(u8_hwc)).to(device).permute(0, 3, 1, 2).contiguous()
    return _normalize_(_to_float(x), norm)


# ----------------------------------------------------------------------------- subsets, labels
def _generator(seed) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return torch.Generator().manual_seed(int(seed))


def balanced_subset_indices(targets, n_per_class: int, seed: int = 0, num_classes: int | None = None) -> torch.Tensor:
    """Indices (sorted, int64) of a balanced subset: ``n_per_class`` samples of every class,
    chosen uniformly without replacement from the labels alone (no image is decoded).

    For each class k the candidates are permuted by ``torch.randperm`` with a generator seeded
    by ``seed`` and the first ``n_per_class`` are kept, so a smaller subset with the same seed is
    contained in a larger one.  ValueError if a class has fewer than ``n_per_class`` samples.
    (Section 4 trains on the full sets; subsets serve the CPU profile, the ``n`` of eq. (2).)
    """
    t = targets.detach().cpu() if isinstance(targets, torch.Tensor) else torch.as_tensor(np.asarray(targets))
    t = t.long().flatten()
    if t.numel() == 0 or t.min() < 0:
        raise ValueError("targets must be a non-empty array of class labels >= 0")
    K = int(t.max()) + 1 if num_classes is None else int(num_classes)
    if t.max() >= K:
        raise ValueError(f"targets hold label {int(t.max())}, outside [0, {K}) for num_classes={K}")
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive integer, got {n_per_class!r}")
    g = _generator(seed)
    counts = torch.bincount(t, minlength=K)
    if (counts < n_per_class).any():
        short = {k: int(c) for k, c in enumerate(counts.tolist()) if c < n_per_class}
        raise ValueError(
            f"n_per_class={n_per_class} is larger than the samples available in class(es) {short} "
            f"(smallest class has {int(counts.min())})"
        )
    chosen = []
    for k in range(K):
        idx = torch.nonzero(t == k).flatten()
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:n_per_class]])
    return torch.sort(torch.cat(chosen)).values


def balanced_random_labels(N: int, K: int, seed: int = 0) -> torch.Tensor:
    """Exactly balanced random labels (Section 4.2, Figure 5): a seeded random permutation of
    ``[0]*(N/K) + [1]*(N/K) + ... + [K-1]*(N/K)``; int64 (N,) on the CPU.

    ValueError unless K >= 2 and K divides N.  Store ``seed`` with the results: the labels are
    a pure function of (N, K, seed).
    """
    for nm, v in (("N", N), ("K", K)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{nm} must be a positive integer, got {v!r}")
    if K < 2:
        raise ValueError(f"K must be >= 2, got {K}")
    if N % K:
        raise ValueError(f"exactly balanced labels need K to divide N; got N={N}, K={K}")
    labels = torch.arange(K, dtype=torch.int64).repeat_interleave(N // K)
    return labels[torch.randperm(N, generator=_generator(seed))]


# ----------------------------------------------------------------------------- loaders
def _torchvision_dataset(cls_name: str, root: pathlib.Path, train: bool, download: bool, expected: list[str]):
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    try:
        return cls(str(root), train=train, download=download)
    except Exception as exc:
        files = ", ".join(str(root / e) for e in expected)
        how = "the download failed" if download else "download=False"
        raise RuntimeError(
            f"{cls_name} not found (or corrupt) under data root {root} and {how}. Expected files: {files}. "
            f"Set the root with load_dataset(root=...) or the environment variable NCLIB_DATA. "
            f"torchvision said: {type(exc).__name__}: {exc}"
        ) from exc


_MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def _load_mnist_like(name, split, root, n_per_class, seed, download, device, norm):
    cls_name = {"mnist": "MNIST", "fashionmnist": "FashionMNIST"}[name]
    ds = _torchvision_dataset(cls_name, root, split == "train", download, [f"{cls_name}/raw/{f}" for f in _MNIST_FILES])
    targets = torch.as_tensor(ds.targets).long()
    data = ds.data  # (N, 28, 28) uint8 tensor: the raw IDX bytes, nothing decoded
    if n_per_class is not None:
        idx = balanced_subset_indices(targets, n_per_class, seed, num_classes=10)
        data, targets = data[idx], targets[idx]
    u8 = _resize_gray_pil(data.numpy())
    return _gray_to_X(u8, norm, device), targets.to(device)


def _load_cifar(name, split, root, n_per_class, seed, download, device, norm):
    cls_name, folder, files = {
        "cifar10": ("CIFAR10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]),
        "cifar100": ("CIFAR100", "cifar-100-python", ["train", "test", "meta"]),
    }[name]
    ds = _torchvision_dataset(cls_name, root, split == "train", download, [f"{folder}/{f}" for f in files])
    targets = torch.as_tensor(ds.targets).long()
    data = ds.data  # (N, 32, 32, 3) uint8 numpy (HWC)
    if n_per_class is not None:
        idx = balanced_subset_indices(targets, n_per_class, seed, num_classes=num_classes(name))
        data, targets = data[idx.numpy()], targets[idx]
    return _rgb_to_X(data, norm, device), targets.to(device)


def _jpeg_dir(root: pathlib.Path) -> pathlib.Path:
    """Extract the JPEG archive once into the cache (atomically: a temporary folder renamed)."""
    archive = root / _JPEG_ARCHIVE
    if not archive.is_file():
        raise RuntimeError(
            f"cifar10-jpeg: archive {archive} not found under data root {root}. Expected file: "
            f"{root / _JPEG_ARCHIVE} (CIFAR-10 re-encoded as JPEG q75, train/<class>/*.jpg, test/<class>/*.jpg). "
            "There is no download for this stand-in."
        )
    st = archive.stat()
    target = cache_root() / f"cifar10-jpeg-q75-{st.st_size}"
    if (target / "COMPLETE").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_extractions(target.parent)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".extract-{os.getpid()}-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        try:
            _extract(archive, tmp)
        except (EOFError, tarfile.TarError, OSError, zlib.error) as exc:
            raise RuntimeError(f"cifar10-jpeg: archive {archive} is truncated or corrupt ({type(exc).__name__}: "
                               f"{str(exc) or 'unexpected end of data'}); copy it again") from None
        (tmp / "COMPLETE").write_text(str(archive) + "\n")
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "COMPLETE").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _clean_stale_extractions(folder: pathlib.Path) -> None:
    """Remove ``.extract-PID-*`` folders of extractions whose process is gone (a killed run),
    and old-style ``.extract-*`` folders older than an hour."""
    import time
    for p in folder.glob(".extract-*"):
        parts = p.name.split("-")
        try:
            pid = int(parts[1])
            alive = True
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                alive = False
            except PermissionError:
                pass
            stale = pid != os.getpid() and not alive
        except (IndexError, ValueError):
            stale = time.time() - p.stat().st_mtime > 3600
        if stale:
            shutil.rmtree(p, ignore_errors=True)


def _extract(archive: pathlib.Path, tmp: pathlib.Path) -> None:
    """Extract the tar.gz ``archive`` into ``tmp``, refusing unsafe members."""
    with tarfile.open(archive, "r:gz") as tf:
        try:
            tf.extractall(tmp, filter="data")  # refuses absolute paths, '..', links out
        except TypeError:  # a Python without extraction filters (before 3.9.17 / 3.10.12 / 3.11.4)
            bad = [m.name for m in tf.getmembers() if m.name.startswith(("/", "\\")) or ".." in m.name.split("/")
                   or not (m.isfile() or m.isdir())]
            if bad:
                raise RuntimeError(f"cifar10-jpeg: refusing unsafe archive members {bad[:5]} in {archive}")
            tf.extractall(tmp)


def _decode_rgb(path) -> np.ndarray:
    """torchvision's ``pil_loader`` (what ``ImageFolder`` uses): open, ``convert("RGB")``."""
    from PIL import Image

    with open(path, "rb") as f:
        img = Image.open(f).convert("RGB")
        if img.size != (32, 32):
            raise RuntimeError(f"cifar10-jpeg: {path} is {img.size}, expected 32 x 32")
        return np.asarray(img)


def _load_cifar10_jpeg(split, root, n_per_class, seed, device, norm):
    """Reads ``<cache>/.../<split>/<class>/*.jpg``.  A whole split, once decoded, is kept as
    ``<split>-uint8.npy`` (HWC bytes, file order) beside the images, so later loads skip the
    50,000 JPEG decodes; a subset decodes only its own images unless that file exists."""
    extracted = _jpeg_dir(root)
    base = extracted / split
    files, targets = [], []
    for k, cls in enumerate(CIFAR10_CLASSES):
        folder = base / cls
        if not folder.is_dir():
            raise RuntimeError(f"cifar10-jpeg: class folder {folder} missing in the extracted archive")
        fk = sorted(folder.glob("*.jpg"))
        files += fk
        targets += [k] * len(fk)
    targets = torch.tensor(targets, dtype=torch.int64)
    idx = None if n_per_class is None else balanced_subset_indices(targets, n_per_class, seed, 10)
    cache = extracted / f"{split}-uint8.npy"
    if cache.is_file():
        arr = np.load(cache, mmap_mode="r")
        if arr.shape != (len(files), 32, 32, 3):
            raise RuntimeError(f"cifar10-jpeg: decoded cache {cache} has shape {arr.shape}, expected {(len(files), 32, 32, 3)}; delete it")
        u8 = np.array(arr if idx is None else arr[idx.numpy()])
    elif idx is None:
        u8 = np.stack([_decode_rgb(p) for p in files]) if files else np.empty((0, 32, 32, 3), np.uint8)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, u8)
        os.replace(tmp, cache)
    else:
        u8 = np.stack([_decode_rgb(files[i]) for i in idx.tolist()])
    y = targets if idx is None else targets[idx]
    return _rgb_to_X(u8, norm, device), y.to(device)


def _digits_split():
    """Fixed stratified split of scikit-learn's digits: per class, a permutation seeded by
    ``_DIGITS_SPLIT_SEED``; the first ceil(20%) go to test.  Returns (train_idx, test_idx)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(_DIGITS_SPLIT_SEED)
    tr, te = [], []
    for k in range(10):
        idx = rng.permutation(np.flatnonzero(y == k))
        n_te = int(np.ceil(_DIGITS_TEST_FRACTION * len(idx)))
        te.append(idx[:n_te])
        tr.append(idx[n_te:])
    return d.images, y, np.sort(np.concatenate(tr)), np.sort(np.concatenate(te))


def _digits_uint8(images: np.ndarray) -> np.ndarray:
    """8 x 8 images with 17 grey levels (0..16) -> 32 x 32 uint8 (0..255) by PIL bilinear resize."""
    u8 = np.rint(images * (255.0 / 16.0)).astype(np.uint8)
    return _resize_gray_pil(u8, 32)


def _load_digits(split, n_per_class, seed, device, norm):
    images, y, tr, te = _digits_split()
    idx = tr if split == "train" else te
    targets = torch.from_numpy(y[idx])
    if n_per_class is not None:
        sub = balanced_subset_indices(targets, n_per_class, seed, 10).numpy()
        idx, targets = idx[sub], targets[sub]
    return _gray_to_X(_digits_uint8(images[idx]), norm, device), targets.to(device)


def _load_gaussian(split, n_per_class, seed, device, norm, K, noise):
    """Class means mu_k ~ N(0, I_3072) drawn from ``seed``; samples mu_k + noise * N(0, I)
    drawn from a stream that depends on (seed, split), so train and test share the means."""
    n = 100 if n_per_class is None else n_per_class
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n_per_class must be a positive integer, got {n!r}")
    g = _generator(seed)
    means = torch.randn(K, 3, 32, 32, generator=g)
    gs = torch.Generator().manual_seed(int(seed) * 2 + (1 if split == "train" else 2) + 10**9)
    y = torch.arange(K, dtype=torch.int64).repeat_interleave(n)
    X = means[y] + float(noise) * torch.randn(K * n, 3, 32, 32, generator=gs)
    if norm is not None:
        X = _normalize_(X, norm)
    return X.to(device), y.to(device)


def load_dataset(
    name: str,
    split: str = "train",
    *,
    root=None,
    n_per_class: int | None = None,
    seed: int = 0,
    download: bool = True,
    device="cpu",
    normalization=None,
    num_classes: int | None = None,
    noise: float | None = None,
):
    """A whole split, preprocessed as in the paper (Section 4; ANCHORS part 1), as tensors.

    Returns ``(X, y)``: X float32 (N, 3, 32, 32) on ``device``, y int64 (N,) on ``device``.

    Parameters
    ----------
    name : one of :data:`DATASETS`:
        ``"mnist"``, ``"fashionmnist"``, ``"cifar10"``, ``"cifar100"`` through torchvision
        (``torchvision.datasets.MNIST(root, download=...)`` etc.) under :func:`data_root`;
        downloaded when missing if ``download=True``; otherwise (or when the download fails)
        a RuntimeError naming the root and the files expected -- never a substitute.
        ``"cifar10-jpeg"``: NOT the original CIFAR-10 but its JPEG quality-75 re-encoding
        (``<root>/CIFAR10-JPEG/cifar10-jpeg-q75.tar.gz``), extracted once into
        :func:`cache_root` and read from ``train|test/<class>/*.jpg`` with the classes in
        CIFAR-10's label order, decoded with PIL as ``ImageFolder`` does, normalised like
        CIFAR-10.  Results on it must be labelled "CIFAR-10 (JPEG q75 copy)".
        ``"digits"``: scikit-learn's 1797 handwritten digits (8 x 8, grey levels 0..16),
        offline: scaled to uint8, PIL-resized to 32 x 32, three equal channels, normalised
        with their own mean/std; a fixed stratified split (about 80% train / 20% test) that
        does not depend on ``seed``.
        ``"gaussian"``: a synthetic Gaussian mixture shaped (3, 32, 32): ``num_classes``
        (default 10) means drawn from ``seed``, ``n_per_class`` (default 100) samples
        ``mu_k + noise * N(0, I)`` per class (``noise`` default 1.0), not normalised.
    split : ``"train"`` or ``"test"``.
    n_per_class : a balanced subset with this many samples per class, chosen from the labels
        alone (:func:`balanced_subset_indices`, seeded by ``seed``); None = the whole split.
    normalization : None (the dataset's default: ``"mnist"`` for MNIST/Fashion-MNIST,
        ``"cifar10"`` for the CIFARs), a name in :data:`NORMALIZATIONS` (``"imagenet"`` for
        the random-label runs of Section 4.2), or a ``(mean, std)`` pair.

    Preprocessing is done once for the whole set and equals torchvision's per-image
    transforms bit for bit (tested against :func:`mnist_transform` / :func:`cifar_transform`).
    """
    name = _check_name(name)
    split = _check_split(split)
    if n_per_class is not None and (
        isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1
    ):
        raise ValueError(f"n_per_class must be None or a positive integer, got {n_per_class!r}")
    _generator(seed)  # validates seed
    if name != "gaussian" and (num_classes is not None or noise is not None):
        raise ValueError(f"num_classes and noise are options of the 'gaussian' dataset only, not of {name!r}")
    norm = _normalization(name, normalization)
    device = torch.device(device)
    root = data_root(root)
    if name in ("mnist", "fashionmnist"):
        return _load_mnist_like(name, split, root, n_per_class, seed, download, device, norm)
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, split, root, n_per_class, seed, download, device, norm)
    if name == "cifar10-jpeg":
        return _load_cifar10_jpeg(split, root, n_per_class, seed, device, norm)
    if name == "digits":
        return _load_digits(split, n_per_class, seed, device, norm)
    K = 10 if num_classes is None else num_classes
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    noise = 1.0 if noise is None else noise
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    return _load_gaussian(split, n_per_class, seed, device, norm, int(K), noise)


# ----------------------------------------------------------------------------- augmentation, batches
def augment(X: torch.Tensor, generator: torch.Generator | None = None, *, padding: int = 4,
            fill=None) -> torch.Tensor:
    """Section 4.3 / footnote 15: ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip(0.5)``.

    Batched on X's device, one independent crop offset and flip per image: the normalised
    image is padded by ``padding`` pixels on each side with ``fill`` (per channel; None = 0,
    which is the mean colour after normalisation; :func:`black_level` gives the authors'
    black padding, applied before ``Normalize`` in their pipeline), a window of the original size is cut at a uniform offset
    ``(i, j) in {0..2*padding}^2`` and mirrored left-right with probability 1/2.
    X: (B, C, H, W); returns a new tensor of the same shape (X is not modified).  The random
    numbers come from ``generator`` (on any device; None = torch's default generator).
    """
    if X.ndim != 4:
        raise ValueError(f"augment expects a batch (B, C, H, W), got shape {tuple(X.shape)}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an integer >= 0, got {padding!r}")
    B, C, H, W = X.shape
    gdev = generator.device if generator is not None else torch.device("cpu")
    off = torch.randint(0, 2 * padding + 1, (2, B), generator=generator, device=gdev).to(X.device)
    flip = (torch.rand(B, generator=generator, device=gdev) < 0.5).to(X.device)
    Xp = torch.nn.functional.pad(X, (padding, padding, padding, padding))
    if fill is not None and padding > 0:
        f = torch.as_tensor(fill, dtype=X.dtype, device=X.device).reshape(-1)
        if f.numel() not in (1, C):
            raise ValueError(f"fill must have 1 or {C} values (one per channel), got {f.numel()}")
        border = torch.ones(H + 2 * padding, W + 2 * padding, dtype=torch.bool, device=X.device)
        border[padding:padding + H, padding:padding + W] = False
        Xp = torch.where(border, f.expand(C)[None, :, None, None], Xp)
    ar_h = torch.arange(H, device=X.device)
    ar_w = torch.arange(W, device=X.device)
    rows = off[0][:, None] + ar_h  # (B, H)
    cols = off[1][:, None] + torch.where(flip[:, None], ar_w.flip(0), ar_w)  # (B, W)
    b = torch.arange(B, device=X.device)[:, None, None, None]
    c = torch.arange(C, device=X.device)[None, :, None, None]
    return Xp[b, c, rows[:, None, :, None], cols[:, None, None, :]]


def iterate_batches(
    X: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    augment: bool = False,
    drop_last: bool = False,
    fill=None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches ``(xb, yb)`` of tensors already on the device; no DataLoader.

    One pass (an epoch): the order is ``torch.randperm(N)`` (from ``generator``) when
    ``shuffle``, else 0..N-1; the last, smaller batch is kept unless ``drop_last``
    (the authors' loaders keep it).  With ``augment=True`` every batch goes through
    :func:`augment` (Section 4.3) with the same generator and padding value ``fill``.  ``xb`` is a fresh tensor
    (indexing copies), so the caller may modify it.
    """
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X and y disagree on N: {X.shape[0]} vs {y.shape[0]}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    N = X.shape[0]
    if shuffle:
        gdev = generator.device if generator is not None else X.device
        order = torch.randperm(N, generator=generator, device=gdev).to(X.device)
    else:
        order = torch.arange(N, device=X.device)
    do_aug = augment
    stop = N - N % batch_size if drop_last else N
    for s in range(0, stop, batch_size):
        idx = order[s : s + batch_size]
        xb, yb = X[idx], y[idx.to(y.device)]
        if do_aug:
            xb = _augment(xb, generator, fill=fill)
        yield xb, yb


_augment = augment  # iterate_batches' keyword `augment` shadows the function inside it
