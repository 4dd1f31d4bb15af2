"""Tests of nclib.experiments: the named runs of Figures 3-7 and the JSON results store."""
from __future__ import annotations

import base64
import hashlib
import json

import pytest
import torch

import nclib.experiments as E
import nclib.train as T

TIMING = ("seconds", "train_seconds", "wall_time")


def strip(h):
    out = {k: v for k, v in h.items() if k not in TIMING}
    out["per_epoch"] = {k: v for k, v in h["per_epoch"].items() if k not in TIMING}
    return out


# ----------------------------------------------------------------------------- the configurations
def test_names_cover_figures_3_to_7():
    names = E.list_configs()
    assert len(names) == len(set(names)) == 6 + 8 + 8 + 12 + 3 + 3
    assert E.list_configs("fig4") == E.list_configs("fig3")
    assert {n.split("-")[0] for n in names} == {"fig3", "fig5", "fig6", "fig7", "loss", "imb"}
    assert not any("resnet50" in n or "authors" in n for n in E.list_configs(profile="cpu"))
    assert len(E.list_configs(profile="full")) == 6 + 8 + 8 + 12
    for ds in ("mnist", "cifar10"):
        for opt in ("sgd", "adam", "lbfgs"):
            assert f"fig3-{ds}-{opt}" in names


@pytest.mark.parametrize("bad, msg", [(("fig9-x", "cpu"), "unknown configuration"),
                                      (("fig3-mnist-sgd", "gpu"), "unknown profile")])
def test_unknown_names_and_profiles(bad, msg):
    with pytest.raises(ValueError, match=msg):
        E.get_config(*bad)


def test_unknown_figure():
    with pytest.raises(ValueError, match="unknown figure"):
        E.list_configs("fig8")


def test_full_profile_is_the_papers_protocol():
    """Section 4 and ANCHORS.md part 1, field by field."""
    for ds in ("mnist", "cifar10"):
        for opt, lr, bs, step in (("sgd", 0.05, 256, 40), ("adam", 1e-3, 64, 40), ("lbfgs", 0.1, 2048, None)):
            c = E.get_config(f"fig3-{ds}-{opt}", "full")
            assert (c.dataset, c.model, c.optimizer, c.lr, c.batch_size, c.lr_step, c.lr_gamma, c.epochs) == \
                (ds, "resnet18", opt, lr, bs, step, 0.1, 200)
            assert c.weight_decay == 5e-4 and c.regularization == "all" and c.n_per_class is None
            assert c.width is None and c.stem == "imagenet" and not c.augment
    for n in E.list_configs("fig5"):
        c = E.get_config(n, "full")
        assert c.random_labels and c.normalization == "imagenet" and c.dataset == "cifar10"
        assert (c.optimizer, c.lr, c.weight_decay, c.batch_size) == ("sgd", 0.01, 1e-4, 64)
        assert c.depth == (4 if c.model == "mlp" else None)
    widths = [E.get_config(f"fig5-mlp-w{i}", "full").width for i in range(1, 5)]
    assert widths == sorted(widths) and len(set(widths)) == 4
    for n in E.list_configs("fig5"):  # ResNet18_adapt: 3x3 stride-1 stem (footnote 13)
        assert E.get_config(n, "full").stem == ("cifar" if "resnet18" in n else "imagenet")
    for v in ("eq4", "batch_sum", "authors"):
        w = E.get_config(f"fig6-cifar10-{v}", "full")
        assert (w.regularization, w.lambda_W, w.lambda_b, w.lambda_H, w.feature_decay, w.batch_size) == \
            ("whb", 0.01, 0.01, 1e-5, v, 64)
    assert E.get_config("fig6-mnist-all", "full").regularization == "all"
    r50 = E.get_config("fig7-cifar10-resnet50-etf", "full")
    assert (r50.model, r50.stem, r50.augment, r50.fixed_classifier) == ("resnet50", "cifar", True, "etf")
    for setup in ("mnist-resnet18", "cifar10-resnet18", "cifar10-resnet50"):
        cs = {v: E.get_config(f"fig7-{setup}-{v}", "full") for v in ("learned", "etf", "dk", "etf-dk")}
        assert {c.batch_size for c in cs.values()} == {128}
        assert (cs["dk"].feature_dim, cs["etf-dk"].feature_dim, cs["etf-dk"].fixed_classifier) == (10, 10, "etf")
        assert {c.augment for c in cs.values()} == {setup.startswith("cifar10")}
    assert {E.get_config(n, "full").precision for n in E.list_configs(profile="full")} == {"fp32"}


def test_cpu_profile_uses_real_data_at_a_tenth_of_the_papers_scale():
    """Issue: every ResNet18 run of Figures 3, 4, 6, 7 on >= 500 images per class, >= 1,000 test images."""
    for n in E.list_configs(profile="cpu"):
        c = E.get_config(n, "cpu")
        assert c.dataset in ("mnist", "cifar10-jpeg"), n
        if c.figure in ("fig3", "fig6", "fig7"):
            assert c.n_per_class >= 500 and c.n_test_per_class * 10 >= 1000 and c.model == "resnet18", n
    for n in E.list_configs():
        s = E.get_config(n, "smoke")
        assert s.dataset in ("digits", "gaussian") and s.epochs <= 2


def test_hash_and_path():
    c = E.get_config("fig3-mnist-sgd", "smoke")
    assert E.config_hash(c) == E.config_hash(E.get_config("fig3-mnist-sgd", "smoke"))
    assert E.config_hash(c.replace(lr=0.01)) != E.config_hash(c)
    assert E.config_hash(c.replace(precision="bf16")) != E.config_hash(c)
    # fields at their defaults are left out of the hash (so new fields do not orphan results):
    # an independent computation over the non-default fields only
    import dataclasses
    defaults = {f.name: f.default for f in dataclasses.fields(E.ExperimentConfig)
                if f.default is not dataclasses.MISSING}
    d = {k: v for k, v in c.to_dict().items() if k not in defaults or v != defaults[k]}
    assert "precision" not in d and "loss" not in d
    want = hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
    assert E.config_hash(c) == want
    p = E.results_path(c, "somewhere")
    assert p.name == f"fig3-mnist-sgd__smoke__{E.config_hash(c)}.json" and p.parent.name == "somewhere"
    with pytest.raises(ValueError, match="ExperimentConfig"):
        E.config_hash({"name": "x"})
    with pytest.raises(ValueError, match="ExperimentConfig"):
        E.load_or_run({"name": "x"})
    with pytest.raises(ValueError, match="ExperimentConfig"):
        E.load_or_run("fig3-mnist-sgd")
    # a dict of the fields (as read back from a results file) is the same configuration
    assert E.config_hash(json.loads(json.dumps(c.to_dict()))) == E.config_hash(c)


# ----------------------------------------------------------------------------- smoke runs
@pytest.mark.parametrize("name", E.list_configs())
def test_smoke_run_of_every_configuration(name, tmp_path, monkeypatch):
    c = E.get_config(name, "smoke")
    res = E.load_or_run(c, tmp_path, device="cpu", checkpoint_dir=tmp_path / "ck", progress=False)
    path = E.results_path(c, tmp_path)
    assert path.exists() and not list((tmp_path / "ck").glob("*.pt"))  # checkpoint removed when done
    h = res["history"]
    assert h["epoch"] == list(range(1, c.epochs + 1))
    for k in ("nc1", "nc2", "nc3", "nc4", "train_acc", "test_acc", "test_nc1", "test_nc3", "test_nc4"):
        assert len(h[k]) == c.epochs
    assert res["content_hash"] == E.content_hash(res)
    g = res["geometry"]
    K = len(g["W"])
    assert K == 10 and len(g["class_means_train"]) == K and len(g["test_acc_per_class"]) == K
    if c.class_counts is not None:
        assert res["data"]["class_counts"] == list(c.class_counts)
    assert res["final"]["train_acc"] == h["train_acc"][-1]
    assert res["config"] == json.loads(json.dumps(c.to_dict()))
    p = res["provenance"]
    for k in ("nclib_version", "git_commit", "torch_version", "device", "device_name", "tf32_matmul",
              "tf32_cudnn", "precision", "torch_compile", "wall_time_s", "date", "cpu_threads"):
        assert k in p, k
    assert p["device"] == "cpu" and p["precision"] == "fp32" and p["cpu_threads"] == torch.get_num_threads()
    # parameter counts: independent count on a freshly built model
    from nclib import models
    m = models.build(c.model, 10, feature_dim=c.feature_dim, fixed_classifier=c.fixed_classifier,
                     width=c.width, depth=c.depth, stem=c.stem)
    assert res["parameters"]["total"] == sum(q.numel() for q in m.parameters())
    assert res["parameters"]["trainable"] == sum(q.numel() for q in m.parameters() if q.requires_grad)
    if c.fixed_classifier:
        assert res["parameters"]["trainable"] == res["parameters"]["total"] - res["parameters"]["classifier_weight"]
    if c.random_labels:
        rl = res["data"]["random_labels"]
        u8 = base64.b64decode(rl["uint8_base64"])
        assert hashlib.sha256(u8).hexdigest() == rl["sha256"]
        labels = torch.frombuffer(bytearray(u8), dtype=torch.uint8)
        assert torch.bincount(labels.long(), minlength=10).unique().numel() == 1  # exactly balanced
    # a second call loads and never trains
    monkeypatch.setattr(E, "run_experiment", lambda *a, **k: pytest.fail("trained instead of loading"))
    again = E.load_or_run(c, tmp_path, run=False)
    assert again == res


@pytest.mark.parametrize("name", ["imb-mnist-r10", "fig5-resnet18-w1"])
def test_config_data_is_what_a_run_describes(name):
    # class sizes and random labels: the sets a run trains on, against an independent load
    from nclib import data as D
    c = E.get_config(name, "smoke")
    (X, y), (Xt, yt), info = E.config_data(c)
    assert info["n_train"] == X.shape[0] == y.shape[0] and info["n_test"] == Xt.shape[0] == yt.shape[0]
    assert info["class_counts"] == torch.bincount(y, minlength=10).tolist()
    if c.class_counts is not None:
        assert info["class_counts"] == list(c.class_counts)
    X0, y0 = D.load_dataset(c.dataset, "train", n_per_class=max(c.class_counts or [c.n_per_class]),
                            normalization=c.normalization, seed=c.seed)
    if c.random_labels:  # same images, labels redrawn (balanced, seeded)
        assert torch.equal(X, X0) and torch.equal(y, D.balanced_random_labels(X.shape[0], 10, c.seed))
    else:  # the first class_counts[k] images of each class, in the subset's order
        keep = torch.cat([torch.nonzero(y0 == k).flatten()[:n] for k, n in enumerate(c.class_counts)]).sort().values
        assert torch.equal(X, X0[keep]) and torch.equal(y, y0[keep])


# ----------------------------------------------------------------------------- the store
@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    d = tmp_path_factory.mktemp("results")
    c = E.get_config("fig5-mlp-w1", "smoke")
    res = E.load_or_run(c, d, device="cpu", checkpoint_dir=d, progress=False)
    return c, d, res


def test_run_false_and_missing_raises(tmp_path):
    c = E.get_config("fig5-mlp-w2", "smoke")
    with pytest.raises(ResultsNotFoundAlias, match="no stored results.*run=True"):
        E.load_or_run(c, tmp_path, run=False)
    assert not list(tmp_path.iterdir())


ResultsNotFoundAlias = E.ResultsNotFound
assert issubclass(E.ResultsNotFound, FileNotFoundError)


def test_corrupt_file_raises(stored, tmp_path):
    c, d, res = stored
    p = E.results_path(c, tmp_path)
    p.write_text(E.results_path(c, d).read_text()[:200])  # truncated: a killed writer without atomicity
    with pytest.raises(ValueError, match="corrupt"):
        E.load_or_run(c, tmp_path, run=False)
    with pytest.raises(ValueError, match="corrupt"):  # even with run=True it must not silently retrain
        E.load_or_run(c, tmp_path, run=True)
    p.write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match="corrupt"):
        E.load_or_run(c, tmp_path, run=False)


def test_mismatched_file_raises(stored, tmp_path):
    c, d, res = stored
    obj = json.loads(E.results_path(c, d).read_text())
    obj["config"]["lr"] = 0.5
    obj["content_hash"] = E.content_hash(obj)
    E.results_path(c, tmp_path).write_text(json.dumps(obj))
    with pytest.raises(ValueError, match="does not match.*lr"):
        E.load_or_run(c, tmp_path, run=False)
    obj["config"]["lr"] = c.lr
    obj["config_hash"] = "0" * 12
    obj["content_hash"] = E.content_hash(obj)
    E.results_path(c, tmp_path).write_text(json.dumps(obj))
    with pytest.raises(ValueError, match="does not match"):
        E.load_or_run(c, tmp_path, run=False)


def test_edited_number_is_caught_by_the_content_hash(stored, tmp_path):
    c, d, res = stored
    obj = json.loads(E.results_path(c, d).read_text())
    obj["final"]["test_acc"] = 0.995
    E.results_path(c, tmp_path).write_text(json.dumps(obj))
    with pytest.raises(ValueError, match="changed after it was written"):
        E.load_or_run(c, tmp_path, run=False)


def test_missing_file_hint_names_other_hashes(stored):
    c, d, res = stored
    with pytest.raises(E.ResultsNotFound, match=E.results_path(c, d).name):
        E.load_or_run(c.replace(lr=0.123), d, run=False)


def test_load_or_run_resumes_from_checkpoint(stored, tmp_path, interrupt_after_epoch):
    c, d, ref = stored
    c = c.replace(epochs=3, lr_step=2)
    ref = E.run_experiment(c, device="cpu", progress=False)
    interrupt_after_epoch(2)
    with pytest.raises(KeyboardInterrupt):
        E.load_or_run(c, tmp_path, device="cpu", checkpoint_dir=tmp_path / "ck", progress=False)
    ck = tmp_path / "ck" / (E.results_path(c, tmp_path).stem + ".pt")
    assert ck.exists() and not E.results_path(c, tmp_path).exists()
    interrupt_after_epoch(None)
    res = E.load_or_run(c, tmp_path, device="cpu", checkpoint_dir=tmp_path / "ck", progress=False)
    assert strip(res["history"]) == strip(json.loads(json.dumps(ref["history"])))
    assert not ck.exists()


def test_provenance_names_the_commit_the_run_started_with(monkeypatch):
    """A commit made while a run trains does not relabel it: ``git_commit`` is read at the start."""
    commits = iter(["commit-at-start", "commit-at-end"])
    monkeypatch.setattr(E, "_git_commit", lambda: next(commits))
    res = E.run_experiment(E.get_config("fig3-mnist-sgd", "smoke"), device="cpu", progress=False)
    assert res["provenance"]["git_commit"] == "commit-at-start"


def test_provenance_names_the_cpu_and_its_kernels(monkeypatch, tmp_path):
    """The same code trains differently on a CPU whose kernels round differently (the Adam and
    Figure 5 results of commit fc6ffbd: that code reproduces today's numbers on today's machine, not
    the stored ones): the results say which CPU and which vector kernels torch chose."""
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    res = E.run_experiment(E.get_config("fig3-mnist-sgd", "smoke"), device="cpu", progress=False)
    p = res["provenance"]
    assert p["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert p["kernel_env"].get("MKL_CBWR") == "AVX2" and "ONEDNN_MAX_CPU_ISA" not in p["kernel_env"]
    assert isinstance(p["cpu_model"], str) and p["cpu_model"]
    # the model line is read from /proc/cpuinfo (hand-made file); without it, platform's answer
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7B13\n\n"
                    "processor\t: 1\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7B13\n")
    assert E._cpu_model(info) == "AMD EPYC 7B13 (family 25, model 1)"
    monkeypatch.setattr(E.platform, "processor", lambda: "x86_64-test")
    assert E._cpu_model(tmp_path / "absent") == "x86_64-test"
