"""Tests of nclib.train: the paper's protocol (Section 4), eq. (2)/(4) regularisation, resume, NaN."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nclib.train as T
from nclib.metrics import ClassMeansCoincide, nc_metrics

TIMING_KEYS = ("seconds", "train_seconds", "wall_time")


class Tiny(nn.Module):
    """features: Flatten -> Linear -> (BN) -> ReLU; classifier: Linear(d, K)."""

    def __init__(self, in_dim=12, d=8, K=3, bn=True, fixed=False):
        super().__init__()
        layers = [nn.Flatten(), nn.Linear(in_dim, d)]
        if bn:
            layers.append(nn.BatchNorm1d(d))
        layers.append(nn.ReLU())
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(d, K)
        if fixed:
            self.classifier.weight.requires_grad_(False)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.classifier(self.features(x))


def blobs(K=3, n=10, seed=0, shape=(3, 2, 2), scale=3.0):
    g = torch.Generator().manual_seed(seed)
    means = scale * torch.randn(K, *shape, generator=g)
    y = torch.arange(K).repeat_interleave(n)
    X = means[y] + torch.randn(K * n, *shape, generator=g)
    return X, y


def make(seed=0, **kw):
    torch.manual_seed(seed)
    return Tiny(**kw)


def strip(h):
    """A history without its timing entries (the only entries allowed to differ between runs)."""
    out = {k: v for k, v in h.items() if k not in TIMING_KEYS}
    out["per_epoch"] = {k: v for k, v in h["per_epoch"].items() if k not in TIMING_KEYS}
    return out


KW = dict(device="cpu", progress=False)


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "lbfgs"])
def test_resume_after_kill_equals_uninterrupted_bitwise(tmp_path, monkeypatch, optimizer):
    X, y = blobs(n=12)
    Xt, yt = blobs(n=4, seed=1)
    args = dict(optimizer=optimizer, epochs=3, batch_size=8, lr=0.05 if optimizer != "adam" else 1e-3,
                lr_step=1, lr_gamma=0.5, augment=False, seed=7, max_iter=3, **KW)
    if optimizer == "lbfgs":
        args["lr_step"] = None
    ref_model = make()
    ref = T.train(ref_model, (X, y), (Xt, yt), **args)

    # "kill" the run right after the checkpoint of epoch 2 has been written
    real_save, calls = T._atomic_save, []

    def save_then_die(obj, path):
        real_save(obj, path)
        calls.append(obj["epoch"])
        if obj["epoch"] == 2:
            raise KeyboardInterrupt("killed")

    ck = tmp_path / "run.pt"
    monkeypatch.setattr(T, "_atomic_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        T.train(make(), (X, y), (Xt, yt), checkpoint=ck, **args)
    monkeypatch.setattr(T, "_atomic_save", real_save)
    assert calls == [1, 2] and ck.exists()

    # a fresh process would build a fresh model (other init, other global RNG): resume must not care
    torch.manual_seed(12345)
    model = make(seed=99)
    resumed = T.train(model, (X, y), (Xt, yt), checkpoint=ck, **args)
    assert strip(resumed) == strip(ref)
    for (k, a), (_, b) in zip(ref_model.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), k
    assert resumed["per_epoch"]["epoch"] == [1, 2, 3]
    # calling again on a finished run trains nothing and returns the same history
    again = T.train(make(), (X, y), (Xt, yt), checkpoint=ck, **args)
    assert strip(again) == strip(ref)


def test_resume_with_augmentation_and_step_schedule(tmp_path, monkeypatch):
    X, y = blobs(n=6, shape=(3, 8, 8))
    args = dict(optimizer="sgd", epochs=3, batch_size=5, lr=0.05, lr_step=2, augment=True, seed=3,
                log_epochs=[0, 3], **KW)
    ref = T.train(make(in_dim=192), (X, y), **args)
    ck = tmp_path / "a.pt"
    real = T._atomic_save

    def die(obj, path):
        real(obj, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "_atomic_save", die)
    with pytest.raises(KeyboardInterrupt):
        T.train(make(in_dim=192), (X, y), checkpoint=ck, **args)
    monkeypatch.setattr(T, "_atomic_save", real)
    torch.rand(5)  # disturb the global RNG
    res = T.train(make(in_dim=192), (X, y), checkpoint=ck, **args)
    assert strip(res) == strip(ref)
    assert res["epoch"] == [0, 3]
    assert res["per_epoch"]["lr"] == pytest.approx([0.05, 0.05, 0.005])
    assert res["lr"] == pytest.approx([0.05, 0.005])  # logged at epochs 0 and 3: the lr used in them


def test_checkpoint_with_other_settings_is_refused(tmp_path):
    X, y = blobs()
    ck = tmp_path / "c.pt"
    T.train(make(), (X, y), epochs=1, batch_size=8, checkpoint=ck, **KW)
    with pytest.raises(ValueError, match="other settings.*lr"):
        T.train(make(), (X, y), epochs=1, batch_size=8, lr=0.01, checkpoint=ck, **KW)
    ck.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        T.train(make(), (X, y), epochs=1, batch_size=8, checkpoint=ck, **KW)


# ----------------------------------------------------------------------------- divergence
def test_nan_loss_stops_with_epoch_and_keeps_last_good_checkpoint(tmp_path):
    X, y = blobs()
    ck = tmp_path / "d.pt"
    model = make()
    # lr is fine in epoch 1, then multiplied by 1e30: epoch 2 diverges
    with pytest.raises(T.TrainingDiverged, match="epoch 2") as info:
        T.train(model, (X, y), epochs=4, batch_size=8, lr=0.01, lr_step=1, lr_gamma=1e30,
                checkpoint=ck, **KW)
    err = info.value
    assert isinstance(err, RuntimeError) and err.epoch == 2 and err.checkpoint == ck
    assert err.history["per_epoch"]["epoch"] == [1]
    saved = torch.load(ck, weights_only=False)
    assert saved["epoch"] == 1
    for k, v in model.state_dict().items():  # the model is back at the last good state
        assert torch.equal(v, saved["model"][k]), k
        if v.is_floating_point():
            assert torch.isfinite(v).all()


def test_nan_in_first_epoch_without_checkpoint():
    X, y = blobs()
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(T.TrainingDiverged, match="epoch 1"):
        T.train(model, (X, y), epochs=2, batch_size=8, lr=1e30, **KW)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("kw, msg", [
    (dict(optimizer="rmsprop"), "unknown optimizer"),
    (dict(regularization="l1"), "unknown regularization"),
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(lambda_H=-1e-5), "lambda_H"),
    (dict(lambda_W=float("nan")), "lambda_W"),
    (dict(epochs=0), "epochs"),
    (dict(batch_size=0), "batch_size"),
    (dict(lr=-0.1), "lr"),
    (dict(lr_step=0), "lr_step"),
    (dict(log_epochs="sometimes"), "log_epochs"),
    (dict(log_epochs=[5]), "log_epochs"),
    (dict(device="tpu"), "device"),
    (dict(num_classes=4), "num_classes"),
])
def test_bad_arguments_raise_value_error(kw, msg):
    X, y = blobs()
    args = dict(epochs=1, batch_size=8, **KW)
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        T.train(make(), (X, y), **args)


def test_bad_data_and_models_raise_value_error():
    X, y = blobs()
    with pytest.raises(ValueError, match="same N"):
        T.train(make(), (X, y[:-1]), epochs=1, **KW)
    with pytest.raises(ValueError, match="train labels"):
        T.train(make(), (X, y + 5), epochs=1, **KW)
    with pytest.raises(ValueError, match="test labels"):
        T.train(make(), (X, y), (X, y - 1), epochs=1, **KW)
    with pytest.raises(ValueError, match="integers"):
        T.train(make(), (X, y.float()), epochs=1, **KW)
    with pytest.raises(ValueError, match="classifier"):
        T.train(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), (X, y), epochs=1, **KW)
    m = make()
    for p in m.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        T.train(m, (X, y), epochs=1, **KW)


def test_resolve_device():
    assert T.resolve_device("cpu") == torch.device("cpu")
    assert T.resolve_device(None).type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            T.resolve_device("cuda")
    with pytest.raises(ValueError):
        T.resolve_device("quantum")


def test_log_spaced_epochs():
    e = T.log_spaced_epochs(200, 30)
    assert e[0] == 1 and e[-1] == 200 and e == sorted(set(e)) and 15 <= len(e) <= 31
    assert T._log_epoch_list("all", 4) == [1, 2, 3, 4]
    assert T._log_epoch_list(3, 7) == [3, 6, 7]
    assert T._log_epoch_list([0, 2], 4) == [0, 2]


# ----------------------------------------------------------------------------- regularisation
def test_feature_decay_gradient_is_nonzero_and_matches_closed_form():
    torch.manual_seed(0)
    N, B, lam = 1000, 16, 1e-5
    h = torch.randn(B, 5, dtype=torch.float64, requires_grad=True)
    T.feature_decay(h, lam, N).backward()
    # d/dh_i of (lam/2)(N/B) sum ||h_i||^2 = (N lam / B) h_i  (closed form)
    assert h.grad.abs().max() > 0
    assert torch.allclose(h.grad.double(), (N * lam / B) * h.detach(), rtol=1e-6, atol=0)
    # the authors' term penalised F.normalize(h): a constant, zero gradient
    h2 = h.detach().clone().requires_grad_(True)
    (0.5 * lam * F.normalize(h2, dim=1).pow(2).sum()).backward()
    assert h2.grad.abs().max() < 1e-12
    # expectation over batches = eq. (4)'s lam/2 ||H||_F^2 on the full set: with B = N it is exact
    H = torch.randn(N, 5, dtype=torch.float64)
    assert float(T.feature_decay(H, lam, N)) == pytest.approx(0.5 * lam * float((H ** 2).sum()), rel=1e-6)


def test_whb_step_is_gradient_of_eq4_and_backbone_gets_H_gradient():
    """One full-batch SGD step (momentum buffer = gradient at step 1) equals -lr * grad f,
    f = mean CE + lW/2||W||^2 + lb/2||b||^2 + lH/2 ||H||_F^2 (eq. 4), computed independently."""
    X, y = blobs(n=5)
    N, lr, lW, lH, lb = X.shape[0], 0.1, 0.03, 0.02, 0.05
    model = make(bn=False)
    ref = make(bn=False)
    feats = ref.features(X)
    f = (F.cross_entropy(ref.classifier(feats), y) + lW / 2 * ref.classifier.weight.pow(2).sum()
         + lb / 2 * ref.classifier.bias.pow(2).sum() + lH / 2 * feats.pow(2).sum())
    grads = torch.autograd.grad(f, list(ref.parameters()))
    # the H term alone reaches the backbone with a nonzero gradient
    gH = torch.autograd.grad(lH / 2 * ref.features(X).pow(2).sum(), ref.body[1].weight)[0]
    assert gH.abs().max() > 1e-4
    T.train(model, (X, y), epochs=1, batch_size=N, lr=lr, regularization="whb", lambda_W=lW, lambda_H=lH,
            lambda_b=lb, weight_decay=123.0, log_epochs="last", **KW)  # weight_decay unused in "whb"
    for p0, p1, g in zip(ref.parameters(), model.parameters(), grads):
        assert torch.allclose(p1, p0 - lr * g, rtol=1e-5, atol=1e-7)


def test_all_mode_sgd_step_is_gradient_of_eq2():
    X, y = blobs(n=5)
    lr, wd = 0.1, 0.3
    model, ref = make(bn=False), make(bn=False)
    f = F.cross_entropy(ref(X), y) + wd / 2 * sum(p.pow(2).sum() for p in ref.parameters())
    grads = torch.autograd.grad(f, list(ref.parameters()))
    h = T.train(model, (X, y), epochs=1, batch_size=X.shape[0], lr=lr, weight_decay=wd, **KW)
    for p0, p1, g in zip(ref.parameters(), model.parameters(), grads):
        assert torch.allclose(p1, p0 - lr * g, rtol=1e-5, atol=1e-7)
    # the running loss is the training forward's CE at the starting point
    assert h["per_epoch"]["loss"][0] == pytest.approx(float(F.cross_entropy(ref(X), y).detach()), rel=1e-6)


def test_lbfgs_closure_includes_weight_decay():
    """With huge decay, L-BFGS must shrink the weights towards 0 (the term is in the closure)."""
    X, y = blobs(n=5)
    m0, m1 = make(bn=False), make(bn=False)
    T.train(m0, (X, y), optimizer="lbfgs", epochs=2, batch_size=15, weight_decay=0.0, **KW)
    T.train(m1, (X, y), optimizer="lbfgs", epochs=2, batch_size=15, weight_decay=10.0, **KW)
    n0 = sum(float(p.detach().pow(2).sum()) for p in m0.parameters())
    n1 = sum(float(p.detach().pow(2).sum()) for p in m1.parameters())
    assert n1 < 0.05 * n0


# ----------------------------------------------------------------------------- fixed classifier
@pytest.mark.parametrize("optimizer, reg", [("sgd", "all"), ("adam", "all"), ("sgd", "whb"), ("lbfgs", "all")])
def test_fixed_classifier_stays_fixed(optimizer, reg):
    X, y = blobs()
    model = make(fixed=True)
    W0, b0 = model.classifier.weight.detach().clone(), model.classifier.bias.detach().clone()
    T.train(model, (X, y), optimizer=optimizer, regularization=reg, epochs=2, batch_size=10, **KW)
    assert torch.equal(model.classifier.weight, W0)
    assert not torch.equal(model.classifier.bias, b0)  # the bias is trained


def test_fixed_etf_classifier_from_models_stays_fixed():
    models = pytest.importorskip("nclib.models")
    from nclib import data
    X, y = data.load_dataset("gaussian", n_per_class=6, num_classes=4)
    torch.manual_seed(0)
    model = models.build("mlp", 4, width=16, depth=2, fixed_classifier="etf")
    W0 = model.classifier.weight.detach().clone()
    h = T.train(model, (X, y), epochs=2, batch_size=8, **KW)
    assert torch.equal(model.classifier.weight, W0)
    assert h["settings"]["n_trainable"] == h["settings"]["n_parameters"] - W0.numel()


# ----------------------------------------------------------------------------- tracking
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "lbfgs"])
def test_smoke_each_optimizer_reaches_full_train_accuracy(optimizer):
    X, y = blobs(n=20, scale=4.0)
    Xt, yt = blobs(n=5, seed=0)
    model = make()
    lr = {"sgd": 0.1, "adam": 1e-2, "lbfgs": 0.5}[optimizer]
    bs = {"sgd": 16, "adam": 16, "lbfgs": 60}[optimizer]
    h = T.train(model, (X, y), (Xt, yt), optimizer=optimizer, epochs=8, lr=lr, batch_size=bs, **KW)
    assert h["epoch"] == list(range(1, 9))
    for key in ("nc1", "nc2", "nc3", "nc4", "train_acc", "test_acc", "lr", "feature_norm", "W_norm",
                "nc1_papyan", "equinorm_W"):
        assert len(h[key]) == 8 and all(np.isfinite(h[key])), key
    assert h["train_acc"][-1] == 1.0
    assert h["nc1"][-1] < h["nc1"][0]
    assert h["settings"]["optimizer"] == optimizer and h["settings"]["precision"] == "fp32"
    assert h["settings"]["compile"] is False and "tf32_matmul" in h["settings"]
    # the logged metrics are those of the final model, computed independently
    model.eval()
    with torch.no_grad():
        H = model.features(X)
    m = nc_metrics(model.classifier.weight, model.classifier.bias, H, y)
    assert h["nc1"][-1] == pytest.approx(m.nc1, rel=1e-6)
    assert h["nc3"][-1] == pytest.approx(m.nc3, rel=1e-6)
    assert h["nc4"][-1] == pytest.approx(m.nc4, rel=1e-5, abs=1e-7)
    assert h["train_acc"][-1] == m.accuracy
    with torch.no_grad():
        assert h["test_acc"][-1] == float((model(Xt).argmax(1) == yt).double().mean())


def test_no_extra_forward_per_training_step():
    X, y = blobs(n=10)
    model = make()
    calls = []
    orig = model.features
    model.features = lambda x: (calls.append(x.shape[0]), orig(x))[1]
    T.train(model, (X, y), (X[:7], y[:7]), epochs=3, batch_size=8, log_epochs=[3], eval_batch_size=100, **KW)
    # 3 epochs x 4 batches (8+8+8+6) of training forwards + one train pass (30) + one test pass (7)
    assert calls == [8, 8, 8, 6] * 3 + [30, 7]


@pytest.mark.parametrize("in_memory", [True, False])
def test_evaluate_geometry_is_the_brute_force_class_means_from_one_forward_pass(monkeypatch, in_memory):
    X, y = blobs(K=3, n=9)
    model = make()
    if not in_memory:  # N d beyond the limit: the streamed accumulator
        monkeypatch.setattr(T, "IN_MEMORY_LIMIT", 8)
    calls = []
    orig = model.features
    model.features = lambda x: (calls.append(x.shape[0]), orig(x))[1]
    ev = T.evaluate(model, X, y, num_classes=3, batch_size=10, nc=False, geometry=True)
    assert calls == [10, 10, 7]  # one pass, no second forward for the means
    model.eval()
    with torch.no_grad():
        H = torch.cat([orig(X[i:i + 10]) for i in range(0, len(y), 10)]).double()  # the same batches
        pred = torch.cat([model(X[i:i + 10]) for i in range(0, len(y), 10)]).argmax(1)
    for k in range(3):
        rows = [H[i] for i in range(len(y)) if y[i] == k]
        np.testing.assert_allclose(ev["class_means"][k], (sum(rows) / len(rows)).numpy(), rtol=1e-12, atol=1e-15)
        assert ev["acc_per_class"][k] == sum(int(pred[i] == k) for i in range(len(y)) if y[i] == k) / len(rows)


def test_bf16_autocast_runs_and_is_recorded():
    X, y = blobs()
    h = T.train(make(), (X, y), epochs=1, batch_size=10, precision="bf16", **KW)
    assert h["settings"]["precision"] == "bf16" and np.isfinite(h["nc1"][0])


def test_a_finished_run_can_be_extended(tmp_path):
    """epochs/log_epochs may grow on resume: 2 epochs then extended to 3 == 3 epochs straight."""
    X, y = blobs()
    args = dict(batch_size=8, lr_step=1, lr_gamma=0.5, seed=1, **KW)
    ref = T.train(make(), (X, y), epochs=3, **args)
    ck = tmp_path / "e.pt"
    T.train(make(), (X, y), epochs=2, checkpoint=ck, **args)
    ext = T.train(make(), (X, y), epochs=3, checkpoint=ck, **args)
    a, b = strip(ext), strip(ref)
    a["settings"].pop("epochs"), b["settings"].pop("epochs")
    assert a == b
    with pytest.raises(ValueError, match="other settings.*epochs"):
        T.train(make(), (X, y), epochs=1, checkpoint=ck, **args)  # cannot shrink below the checkpoint


def test_check_divergence_hand_made_cases():
    import torch as _t
    ok = [_t.ones(3)]
    assert T.check_divergence(2.5, None, ok, num_classes=10) is None               # chance level in epoch 1
    assert T.check_divergence(229.0, None, ok, num_classes=10) is None             # below 100 x log 10 = 230.3
    assert "first epoch" in T.check_divergence(2.4e17, None, ok, num_classes=10)   # exploded within epoch 1
    assert T.check_divergence(2.4e17, None, ok) is None                            # no K: no epoch-1 reference
    assert "exploded" in T.check_divergence(301.0, 3.0, ok)                        # 100 x first epoch's 3.0
    assert T.check_divergence(0.5, 0.2, ok) is None                                # 100 x max(0.2, 1) = 100
    assert "NaN" in T.check_divergence(1.0, 1.0, [_t.tensor([float("nan")])])
    assert "became" in T.check_divergence(float("inf"), None, ok, num_classes=10)


# ----------------------------------------------------------------------------- BatchNorm statistics of L-BFGS
def _bn_layers(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_recalibrate_batchnorm_gives_the_statistics_of_the_data_by_hand():
    X, y = blobs(n=8)
    model = make()
    bn = _bn_layers(model)[0]
    bn.running_mean.fill_(123.0)
    bn.running_var.fill_(1e-6)  # garbage, as a line search may leave
    seen = []
    hook = bn.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    assert T.recalibrate_batchnorm(model, X, batch_size=len(y))  # one batch: the full-data statistics
    hook.remove()
    A = seen[0].transpose(0, 1).reshape(bn.num_features, -1).double()  # channels x (N * spatial)
    assert torch.allclose(bn.running_mean.double(), A.mean(1), atol=1e-6)
    assert torch.allclose(bn.running_var.double(), A.var(1, unbiased=True), rtol=1e-5)
    assert not T.recalibrate_batchnorm(make(bn=False), X)  # no BatchNorm: nothing to do


def test_lbfgs_evaluations_use_statistics_of_the_current_parameters():
    # after training, the BatchNorm statistics are those re-estimated at the final parameters (a second
    # re-estimation changes nothing) and the logged training accuracy is the eval-mode accuracy with them
    X, y = blobs(n=10)
    model = make()
    h = T.train(model, (X, y), optimizer="lbfgs", epochs=3, batch_size=30, lr=1.0, **KW)
    before = [(b.running_mean.clone(), b.running_var.clone()) for b in _bn_layers(model)]
    T.recalibrate_batchnorm(model, X, batch_size=1024)
    for (m0, v0), b in zip(before, _bn_layers(model)):
        assert torch.allclose(m0, b.running_mean, atol=1e-6) and torch.allclose(v0, b.running_var, atol=1e-6)
    assert h["train_acc"][-1] == T.evaluate(model, X, y, num_classes=3, nc=False)["accuracy"]
    # SGD keeps its running averages (no re-estimation): they differ from the re-estimated ones
    sgd = make()
    T.train(sgd, (X, y), optimizer="sgd", epochs=3, batch_size=5, **KW)
    mean0 = _bn_layers(sgd)[0].running_mean.clone()
    T.recalibrate_batchnorm(sgd, X)
    assert not torch.allclose(mean0, _bn_layers(sgd)[0].running_mean, atol=1e-6)


def test_flush_denormal_while_training_only():
    """``flush_denormal=True``: subnormal floats count as zero during training (checked inside the
    forward pass: 1e-39 * 1 gives 0), and the CPU's setting is restored afterwards; off by default."""
    tiny = torch.tensor(1e-39, dtype=torch.float32)
    assert float(tiny * 1.0) != 0.0  # a float32 subnormal, kept by default
    (X, y), seen = blobs(), []

    def record(module, inp, out):
        seen.append(float(tiny * 1.0))

    for flush in (False, True):
        seen.clear()
        model = make()
        handle = model.classifier.register_forward_hook(record)  # training calls features and classifier
        h = T.train(model, (X, y), optimizer="sgd", epochs=1, lr=0.1, batch_size=10, flush_denormal=flush, **KW)
        handle.remove()
        assert seen and all((v == 0.0) == flush for v in seen), (flush, seen)
        assert h["settings"]["flush_denormal"] is flush
        assert float(tiny * 1.0) != 0.0  # restored
    with pytest.raises(ValueError, match="flush_denormal must be True or False, got 'yes'"):
        T.train(make(), (X, y), epochs=1, lr=0.1, batch_size=10, flush_denormal="yes", **KW)


def test_a_dead_network_stops_as_diverged_naming_the_coinciding_class_means():
    # every input mapped to one feature vector (the L-BFGS trial at weight decay 1e-1 ended so): the class
    # means coincide, NC1 is undefined (before, float32 rounding gave NC1 = -6.8e-4); the run stops
    X, y = blobs(K=3, n=10)
    model = make(bn=False)
    with torch.no_grad():
        model.body[1].weight.zero_()
        model.body[1].bias.copy_(torch.arange(1.0, 9.0))  # features (1, ..., 8) for every input
    with pytest.raises(ClassMeansCoincide, match="coincide"):
        T.evaluate(model, X, y, num_classes=3)
    with pytest.raises(T.TrainingDiverged, match="coincide") as info:
        T.train(model, (X, y), epochs=2, batch_size=10, lr=1e-12, **KW)
    assert info.value.epoch == 1
