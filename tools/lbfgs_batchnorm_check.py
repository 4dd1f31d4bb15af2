"""Is the eval-mode accuracy collapse of full-batch L-BFGS a BatchNorm running-statistics effect?

Trains ResNet18 (width 0.25) with full-batch L-BFGS (lr 0.1, weight decay 5e-3) on 500 training images
per class, as the trial ``lbfgs-fullbatch-<dataset>`` of ``tools/recipe_search.py`` does (same seed),
for STEPS steps *without* re-estimating the BatchNorm statistics (the engine's behaviour before
``nclib.train.recalibrate_batchnorm``), then measures the training accuracy three ways: eval mode with
the running statistics the line search left, train mode (full-batch statistics: what L-BFGS sees) and
eval mode after re-estimating the statistics at the same parameters.  Training-set metrics only.

Usage::

    python tools/lbfgs_batchnorm_check.py DATASET STEPS   # appends to book/results/lbfgs_batchnorm_check.jsonl
"""
import copy
import datetime
import json
import pathlib
import subprocess
import sys
import time

import torch

torch.set_num_threads(1)
from nclib import data as D, models as M, train as T  # noqa: E402


def accuracy(model, X, y, mode):
    m = copy.deepcopy(model)
    if mode == "recalibrated":
        T.recalibrate_batchnorm(m, X, batch_size=len(y))
    m.train(mode == "train")
    with torch.no_grad():
        return float((m(X).argmax(1) == y).float().mean())


def main(ds, steps):
    X, y = D.load_dataset(ds, "train", n_per_class=500, seed=0)
    torch.manual_seed(0)
    model = M.build("resnet18", 10, width=0.25)
    real, T.recalibrate_batchnorm = T.recalibrate_batchnorm, lambda *a, **k: False  # the old engine
    t0 = time.time()
    try:
        h = T.train(model, (X, y), None, num_classes=10, optimizer="lbfgs", epochs=steps, lr=0.1,
                    batch_size=len(y), lr_step=None, weight_decay=5e-3, log_epochs="log", progress=True)
    finally:
        T.recalibrate_batchnorm = real
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rec = dict(dataset=ds, n_per_class=500, steps=steps, lr=0.1, weight_decay=5e-3, batch_size=len(y),
               logged_train_acc=h["train_acc"][-1], eval_mode_line_search_stats=accuracy(model, X, y, "eval"),
               train_mode_batch_stats=accuracy(model, X, y, "train"),
               eval_mode_recalibrated=accuracy(model, X, y, "recalibrated"), wall_s=time.time() - t0,
               date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), git_commit=commit,
               cpu_threads=torch.get_num_threads())
    out = pathlib.Path(__file__).resolve().parents[1] / "book" / "results" / "lbfgs_batchnorm_check.jsonl"
    with open(out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
