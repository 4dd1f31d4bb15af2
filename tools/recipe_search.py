"""The small recipe search behind the ``cpu`` profile (training-set metrics only; never the test set).

Each trial trains ResNet18 (width 0.25, ImageNet stem) with SGD on a balanced subset and records
the *training-set* NC1-NC4 and train accuracy at log-spaced epochs.  The test set is not loaded.
Usage::

    python tools/recipe_search.py NAME DATASET N_PER_CLASS BATCH WD LR_STEP EPOCHS [OPTIMIZER LR]

``LR_STEP`` is one epoch (lr x 0.1 every LR_STEP epochs), ``0`` (no schedule) or a comma-separated
list of milestones (lr x 0.1 at each, e.g. ``70,120``: the cpu profile's form).

Each trial appends one JSON line to ``book/results/recipe_search.jsonl``; a trial that stops as diverged
(:class:`nclib.train.TrainingDiverged`) is recorded with what it logged before and ``diverged``
(the epoch and the reason).
"""
import json
import pathlib
import sys
import time

import torch

torch.set_num_threads(1)
from nclib import data as D, experiments as E, models as M, train as T  # noqa: E402


def main(argv):
    name, ds, npc, batch, wd, step, epochs = argv[:7]
    opt = argv[7] if len(argv) > 7 else "sgd"
    lr = float(argv[8]) if len(argv) > 8 else 0.05
    milestones = [int(e) for e in step.split(",")] if "," in step else None
    step = 0 if milestones else int(step)
    npc, batch, wd, epochs = int(npc), int(batch), float(wd), int(epochs)
    X, y = D.load_dataset(ds, "train", n_per_class=npc, seed=0)
    torch.manual_seed(0)
    model = M.build("resnet18", 10, width=0.25)
    t0 = time.time()
    diverged = None
    try:
        h = T.train(model, (X, y), None, num_classes=10, optimizer=opt, epochs=epochs, lr=lr, batch_size=batch,
                    lr_step=None if step == 0 else step, lr_milestones=milestones, weight_decay=wd, log_epochs="log",
                    progress=False)
    except T.TrainingDiverged as exc:  # recorded too: what was logged before, and why it stopped
        h, diverged = exc.history, dict(epoch=exc.epoch, reason=exc.reason)
    rec = dict(name=name, dataset=ds, n_per_class=npc, batch_size=batch, weight_decay=wd, lr_step=step,
               lr_milestones=milestones,
               epochs=epochs, optimizer=opt, lr=lr, wall_s=time.time() - t0, threads=torch.get_num_threads(),
               cpu_model=E._cpu_model(),
               **{k: h.get(k, []) for k in ("epoch", "train_acc", "nc1", "nc2", "nc3", "nc4")})
    if diverged:
        rec["diverged"] = diverged
    out = pathlib.Path(__file__).resolve().parents[1] / "book" / "results" / "recipe_search.jsonl"
    with open(out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    last = {k: rec[k][-1] for k in ("train_acc", "nc1", "nc2", "nc3", "nc4") if rec[k]}
    print(name, last, f"{rec['wall_s']:.0f}s", f"diverged: {diverged}" if diverged else "")


if __name__ == "__main__":
    main(sys.argv[1:])
