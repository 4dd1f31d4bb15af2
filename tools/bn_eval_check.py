"""Which training images does a stored ``cpu`` run still misclassify, and is it BatchNorm's eval mode?

Several CIFAR-10 runs of the ``cpu`` profile (fixed ETF classifier, d = K, eq. (4)'s feature decay)
end at 99.92-99.98% training accuracy: 1-4 of their 5,000 images stay wrong, also with a 1.5x schedule
(``book/results/frontier.jsonl``).  The target is the logged *eval-mode* accuracy, which classifies with
the BatchNorm running statistics.  This retrains such a configuration exactly as the profile does (same
seed and settings; a checkpoint keeps the final weights), checks that the retrained history equals the
stored one, and then measures, at the final weights, on the training set only:

- ``eval_running``: eval mode with the running statistics (what the run logged), and which images
  it gets wrong (index in the training subset, label, prediction, logit margin);
- ``eval_recalibrated``: eval mode after re-estimating the statistics at the final weights
  (``nclib.train.recalibrate_batchnorm``, batches of ``eval_batch_size``), and which images it gets wrong.

If the same images stay wrong after the re-estimation, the running statistics are not the cause: the
network has not fitted them.  (Train-mode accuracy on batches in the subset's order is not measured:
the subset is sorted by class, so such batches hold one class and their statistics mean nothing.)

Usage::

    python tools/bn_eval_check.py NAME [NAME ...]   # appends to book/results/bn_eval_check.jsonl
"""
import argparse
import copy
import datetime
import json
import pathlib
import tempfile
import time

import torch

from nclib import configs, experiments, models as M, threads, train as T

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "book" / "results"
OUT = RESULTS / "bn_eval_check.jsonl"


@torch.no_grad()
def logits(model, X, batch_size):
    m = copy.deepcopy(model).eval()
    return torch.cat([m(X[i:i + batch_size]) for i in range(0, X.shape[0], batch_size)])


def wrong(z, y):
    """The misclassified images: index, label, prediction and margin (top logit - logit of the label)."""
    pred = z.argmax(1)
    idx = (pred != y).nonzero().flatten().tolist()
    return [dict(index=i, label=int(y[i]), pred=int(pred[i]), margin=float(z[i, pred[i]] - z[i, y[i]])) for i in idx]


def check(name: str) -> dict:
    cfg = configs.get_config(name, "cpu")
    stored = experiments.load_results_file(experiments.results_path(cfg, RESULTS))
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        ck = pathlib.Path(tmp) / "ck.pt"
        res = experiments.run_experiment(cfg, checkpoint=str(ck), progress=True)
        state = torch.load(ck, weights_only=False)["model"]
    (X, y), _, info = experiments.config_data(cfg)
    model = M.build(cfg.model, info["num_classes"], feature_dim=cfg.feature_dim,
                    fixed_classifier=cfg.fixed_classifier, width=cfg.width, depth=cfg.depth, stem=cfg.stem)
    model.load_state_dict(state)
    z_eval = logits(model, X, cfg.eval_batch_size)
    recal = copy.deepcopy(model)
    T.recalibrate_batchnorm(recal, X, cfg.eval_batch_size)
    z_recal = logits(recal, X, cfg.eval_batch_size)
    h, hs = res["history"], stored["history"]
    same = all(h[k] == hs[k] for k in ("train_loss", "train_acc"))
    acc = lambda z: float((z.argmax(1) == y).double().mean())  # noqa: E731
    return dict(name=name, stored_content_hash=stored["content_hash"], n_train=int(X.shape[0]), reproduces_stored_history=same,
                logged_train_acc=h["train_acc"][-1], stored_train_acc=hs["train_acc"][-1],
                eval_running=acc(z_eval), eval_recalibrated=acc(z_recal),
                wrong_eval_running=wrong(z_eval, y), wrong_eval_recalibrated=wrong(z_recal, y),
                batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
                wall_s=time.time() - t0, git_commit=res["provenance"].get("git_commit"),
                cpu_threads=torch.get_num_threads(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+")
    ap.add_argument("--out", type=pathlib.Path, default=OUT)
    args = ap.parse_args(argv)
    for name in args.names:  # every name checked before the first run trains
        try:
            configs.get_config(name, "cpu")
        except (KeyError, ValueError) as exc:
            ap.error(str(exc))
        path = experiments.results_path(configs.get_config(name, "cpu"), RESULTS)
        if not path.exists():
            ap.error(f"no stored cpu result for {name!r}: {path} is missing")
    threads.configure(1)
    for name in args.names:
        rec = check(name)
        with open(args.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(name, {k: rec[k] for k in ("reproduces_stored_history", "eval_running", "eval_recalibrated")}, flush=True)


if __name__ == "__main__":
    main()
