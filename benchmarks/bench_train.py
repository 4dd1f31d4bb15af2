"""Benchmark: one epoch of nclib's engine vs. a standard PyTorch training loop (issue 4, part 6).

Both sides train the same model (same initial weights) on the same images with SGD (momentum
0.9, weight decay 5e-4, batch 256) and, every epoch, produce the same quantities: the training
loss, NC1-NC4, train accuracy and test accuracy.  "One epoch" = training + metrics + test pass.

* standard loop (what the authors' code does, ANCHORS.md part 2): a torchvision dataset with
  per-image PIL transforms behind a ``DataLoader``; after every step an extra eval-mode forward
  of the batch only for logging, with ``.item()`` calls; metrics from separate passes over the
  training set through the DataLoader (pass 1: class means and accuracy; pass 2: a per-sample
  Python loop of d x d outer products for Sigma_W, then a d x d ``scipy.linalg.pinv`` of
  Sigma_B in float32); a test pass.
* engine: :func:`nclib.data.load_dataset` (whole split preprocessed once, on the device) and
  :func:`nclib.train.train` with ``log_epochs="all"`` (one eval pass through the streaming
  ``NCAccumulator``, one test pass, no per-step sync).  The one-time preprocessing is timed
  separately.

Epochs alternate between the two sides (after one warm-up epoch each) and the median is
reported, so that a machine shared with other jobs slows both alike.  Peak memory: peak
resident set size of the whole process sampled every 5 ms during the side's epochs, and its
largest rise above the value at the start of an epoch (CPU; Linux /proc); on CUDA
``torch.cuda.max_memory_allocated`` and its rise above ``memory_allocated`` at the start.
The process-wide figures include both sides' resident data, so only the rise is per side.

CPU (default when there is no GPU): MNIST subset from ``--root`` (torchvision layout), a narrow
ResNet18 (width x0.25, d = 128) where the input pipeline matters.  CUDA: ResNet18 (full width)
on CIFAR-10-sized data: 32 x 32 RGB uint8 images served by a CIFAR10-style dataset
(``PIL.Image.fromarray`` + ToTensor + Normalize per image), and the same images as tensors
for the engine.

    python benchmarks/bench_train.py --root /work/shared/data            # CPU
    python benchmarks/bench_train.py --device cuda --n 50000             # GPU
"""
from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as TT
from PIL import Image

from nclib import data as D
from nclib import models as M
from nclib import train as T


# ----------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak RSS (MB) sampled by a thread on the CPU; peak allocated CUDA memory on a GPU."""

    def __init__(self, device):
        self.device = device
        self.peak = 0.0
        self.start = 0.0

    def _rss(self):
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:  # not Linux: fall back to the process-wide maximum
            import resource
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated() / 2**20
            return self
        self.start = self._rss()
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, self._rss())
                time.sleep(0.005)

        self._t = threading.Thread(target=sample, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._t.join()
            self.peak = max(self.peak, self._rss())


# ----------------------------------------------------------------------------- the standard loop
class CIFARLike(torch.utils.data.Dataset):
    """Like torchvision.datasets.CIFAR10.__getitem__: uint8 HWC array -> PIL image -> transform."""

    def __init__(self, images_u8, labels, transform):
        self.images, self.labels, self.transform = images_u8, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def standard_epoch(model, opt, train_loader, eval_loader, test_loader, device, K):
    """One epoch the way the authors' scripts do it (see the module docstring)."""
    model.train()
    loss_sum, n = 0.0, 0
    for xb, yb in train_loader:
        xb, yb = xb.to(device), yb.to(device)
        model.train()
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.eval()  # the extra forward, only for logging
        with torch.no_grad():
            out = model(xb)
        (out.argmax(1) == yb).float().mean().item()
        loss_sum += loss.item() * len(yb)
        n += len(yb)
    model.eval()
    fc = model.classifier
    with torch.no_grad():
        # pass 1: class means, global mean, accuracy
        d = fc.in_features
        sums = torch.zeros(K, d, device=device)
        counts = torch.zeros(K, device=device)
        correct = 0
        for xb, yb in eval_loader:
            xb, yb = xb.to(device), yb.to(device)
            h = model.features(xb)
            correct += (fc(h).argmax(1) == yb).sum().item()
            for c in range(K):
                sums[c] += h[yb == c].sum(0)
                counts[c] += (yb == c).sum()
        means = sums / counts[:, None]
        hG = means.mean(0)
        # pass 2: within-class covariance, one outer product per sample
        SW = torch.zeros(d, d, device=device)
        for xb, yb in eval_loader:
            xb, yb = xb.to(device), yb.to(device)
            h = model.features(xb)
            for i in range(len(yb)):
                r = (h[i] - means[yb[i]])[:, None]
                SW += r @ r.T
        SW /= counts.sum()
        C = (means - hG).T
        SB = (C @ C.T / K).cpu().numpy()
        nc1 = float(np.trace(SW.cpu().numpy() @ scipy.linalg.pinv(SB)) / K)
        W = fc.weight
        WWT = W @ W.T
        etf = (torch.eye(K, device=device) - 1 / K) / (K - 1) ** 0.5
        nc2 = float(torch.linalg.norm(WWT / torch.linalg.norm(WWT) - etf))
        WH = W @ C
        nc3 = float(torch.linalg.norm(WH / torch.linalg.norm(WH) - etf))
        nc4 = float(torch.linalg.norm(fc.bias + W @ hG))
        tcorrect, tn = 0, 0
        for xb, yb in test_loader:
            xb, yb = xb.to(device), yb.to(device)
            tcorrect += (model(xb).argmax(1) == yb).sum().item()
            tn += len(yb)
    return dict(loss=loss_sum / n, nc1=nc1, nc2=nc2, nc3=nc3, nc4=nc4, train_acc=correct / n, test_acc=tcorrect / tn)


# ----------------------------------------------------------------------------- data for both sides
def mnist_setup(root, n_per_class, n_test_per_class, seed):
    tf = TT.Compose([TT.Grayscale(3), TT.Resize(32), TT.ToTensor(), TT.Normalize((0.1307,), (0.3081,))])
    tr = torchvision.datasets.MNIST(root, train=True, download=False, transform=tf)
    te = torchvision.datasets.MNIST(root, train=False, download=False, transform=tf)
    itr = D.balanced_subset_indices(tr.targets, n_per_class, seed=seed, num_classes=10).tolist()
    ite = D.balanced_subset_indices(te.targets, n_test_per_class, seed=seed, num_classes=10).tolist()
    std = (torch.utils.data.Subset(tr, itr), torch.utils.data.Subset(te, ite))

    def engine_data(device):
        a = D.load_dataset("mnist", "train", root=root, n_per_class=n_per_class, seed=seed, download=False,
                           device=device)
        b = D.load_dataset("mnist", "test", root=root, n_per_class=n_test_per_class, seed=seed,
                           download=False, device=device)
        return a, b

    return std, engine_data


def cifar_sized_setup(n, n_test, seed):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n + n_test, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(n + n_test) % 10
    mean, std_ = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    tf = TT.Compose([TT.ToTensor(), TT.Normalize(mean, std_)])
    std = (CIFARLike(imgs[:n], labels[:n], tf), CIFARLike(imgs[n:], labels[n:], tf))

    def engine_data(device):
        def conv(a, lab):
            X = torch.from_numpy(a).to(device).permute(0, 3, 1, 2).float().div_(255)
            m = torch.tensor(mean, device=device)[:, None, None]
            s = torch.tensor(std_, device=device)[:, None, None]
            return (X - m) / s, torch.from_numpy(lab).long().to(device)

        return conv(imgs[:n], labels[:n]), conv(imgs[n:], labels[n:])

    return std, engine_data


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: auto)")
    ap.add_argument("--root", default=os.environ.get("NCLIB_DATA", "/work/shared/data"), help="MNIST root (CPU)")
    ap.add_argument("--n", type=int, default=None, help="training images (default: CPU 2000, CUDA 50000)")
    ap.add_argument("--n-test", type=int, default=None, help="test images (default: n/5)")
    ap.add_argument("--width", type=float, default=None, help="ResNet18 width multiplier (CPU default 0.25)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per side (after one warm-up)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: CPU 0, CUDA 4)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--data", choices=("mnist", "cifar-sized"), default=None,
                    help="default: mnist on the CPU, cifar-sized on CUDA")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = T.resolve_device(args.device)
    cuda = dev.type == "cuda"
    n = args.n or (50000 if cuda else 2000)
    n_test = args.n_test or n // 5
    width = args.width if args.width is not None else (None if cuda else 0.25)
    workers = args.workers if args.workers is not None else (4 if cuda else 0)
    K = 10

    if (args.data or ("cifar-sized" if cuda else "mnist")) == "cifar-sized":
        (std_tr, std_te), engine_data = cifar_sized_setup(n, n_test, 0)
        what = f"CIFAR-10-sized random images {n}/{n_test}"
    else:
        (std_tr, std_te), engine_data = mnist_setup(args.root, n // K, n_test // K, 0)
        what = f"MNIST subset {n}/{n_test} (torchvision files under {args.root})"
    t0 = time.perf_counter()
    (X, y), (Xt, yt) = engine_data(dev)
    if cuda:
        torch.cuda.synchronize()
    prep = time.perf_counter() - t0

    torch.manual_seed(0)
    model0 = M.build("resnet18", K, width=width)
    init = {k: v.clone() for k, v in model0.state_dict().items()}

    # standard side: persistent model/optimizer across its epochs
    std_model = M.build("resnet18", K, width=width).to(dev)
    std_model.load_state_dict(init)
    std_opt = torch.optim.SGD(std_model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    pin = cuda
    train_loader = torch.utils.data.DataLoader(std_tr, batch_size=args.batch_size, shuffle=True,
                                               num_workers=workers, pin_memory=pin,
                                               persistent_workers=workers > 0)
    eval_loader = torch.utils.data.DataLoader(std_tr, batch_size=args.batch_size, shuffle=False,
                                              num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    test_loader = torch.utils.data.DataLoader(std_te, batch_size=args.batch_size, shuffle=False,
                                              num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)

    eng_model = M.build("resnet18", K, width=width).to(dev)
    eng_model.load_state_dict(init)
    ckpt = f"/tmp/bench_train_{os.getpid()}.pt"

    def engine_epoch():
        # a fresh one-epoch run on the persistent model (its checkpoint written, as every epoch of a run)
        if os.path.exists(ckpt):
            os.remove(ckpt)
        h = T.train(eng_model, (X, y), (Xt, yt), optimizer="sgd", epochs=1, lr=0.05,
                    batch_size=args.batch_size, weight_decay=5e-4, eval_batch_size=1024, device=dev,
                    checkpoint=ckpt, progress=False)
        return {k: h[k][-1] for k in ("nc1", "train_acc", "test_acc")}

    times = {"standard": [], "engine": []}
    peaks = {"standard": 0.0, "engine": 0.0}
    rises = {"standard": 0.0, "engine": 0.0}
    last = {}
    for r in range(args.epochs + 1):
        for side in ("standard", "engine"):
            with PeakMemory(dev) as pm:
                t = time.perf_counter()
                out = (standard_epoch(std_model, std_opt, train_loader, eval_loader, test_loader, dev, K)
                       if side == "standard" else engine_epoch())
                if cuda:
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t
            if r > 0:  # round 0 is the warm-up
                times[side].append(dt)
                peaks[side] = max(peaks[side], pm.peak)
                rises[side] = max(rises[side], pm.peak - pm.start)
            last[side] = out
    if os.path.exists(ckpt):
        os.remove(ckpt)

    name = torch.cuda.get_device_name(dev) if cuda else f"CPU, {torch.get_num_threads()} torch threads"
    mem = "peak CUDA MB" if cuda else "peak RSS MB"
    print(f"# bench_train: one epoch = train + NC metrics + test accuracy; {what}")
    print(f"# device: {name}; model: ResNet18 width {width or 1} (d = {eng_model.classifier.in_features}); "
          f"batch {args.batch_size}; DataLoader workers {workers}; median of {args.epochs} epochs")
    print(f"# engine one-time preprocessing: {prep:.2f} s")
    print(f"| loop | s / epoch (median) | images / s | {mem} | rise during epoch MB | speed-up |")
    print("| --- | --- | --- | --- | --- | --- |")
    med = {k: statistics.median(v) for k, v in times.items()}
    for side in ("standard", "engine"):
        print(f"| {side} | {med[side]:.2f} | {n / med[side]:.0f} | {peaks[side]:.0f} | {rises[side]:.0f} | "
              f"{med['standard'] / med[side]:.2f}x |")
    print(f"# all epoch times (s): standard {[round(t, 2) for t in times['standard']]}, "
          f"engine {[round(t, 2) for t in times['engine']]}")
    print(f"# last epoch, standard: {last['standard']}")
    print(f"# last epoch, engine:   {last['engine']}")


if __name__ == "__main__":
    main()
