"""Tools under tools/ that the README's commands use: hand-made cases."""
from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _result(nc1, W, wall, **prov):
    return dict(history=dict(nc1=nc1, per_epoch=dict(seconds=[wall, wall])), final=dict(nc1=nc1[-1]),
                geometry=dict(W=W), provenance=dict(wall_time_s=wall, **prov))


def test_compare_results_counts_equal_numbers_and_names_the_environment(tmp_path, capsys):
    C = _tool("compare_results")
    old = _result([1.0, 0.5], [[1.0, 2.0]], 60.0, host="a", cpu_capability="AVX512", cpu_threads=1)
    new = _result([1.0, 0.5 * (1 + 1e-6)], [[1.0, 2.0]], 90.0, host="a", cpu_capability="AVX2", cpu_threads=1)
    # numbers: history.nc1 (2), final.nc1, geometry.W (2); timings left out; two differ, by 1e-6 relative
    eq, n, worst, at = C.compare(old, new)
    assert (eq, n) == (3, 5) and abs(worst - 1e-6 / (1 + 1e-6)) < 1e-15 and at in ("history.nc1[1]", "final.nc1")
    assert C.compare(old, old)[:2] == (5, 5)
    assert C.environment_diff(old, new) == "cpu_capability: AVX512 -> AVX2"
    assert C.environment_diff(old, old) == "-"
    assert C.environment_diff(_result([1.0], [[1.0]], 1.0), new) == \
        "host: ? -> a; cpu_capability: ? -> AVX2; cpu_threads: ? -> 1"
    stored, regen = tmp_path / "stored", tmp_path / "regen"
    stored.mkdir(), regen.mkdir()
    (stored / "r1__cpu__abc.json").write_text(json.dumps(old))
    (regen / "r1__cpu__abc.json").write_text(json.dumps(new))
    assert C.main([str(stored), str(regen)]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("| r1 | 3 of 5 | 1.0e-06") and "1.0 min / 1.5 min" in row and "AVX512 -> AVX2" in row
    (stored / "r2__cpu__def.json").write_text(json.dumps(old))
    assert C.main([str(stored), str(regen)]) == 1  # a stored result that was not regenerated
    assert "| r2 | not regenerated |" in capsys.readouterr().out


def test_compare_results_refuses_a_missing_folder(tmp_path, capsys):
    C = _tool("compare_results")
    with pytest.raises(SystemExit) as exc:
        C.main([str(tmp_path), str(tmp_path / "nosuch")])
    assert exc.value.code == 2 and "nosuch is not a folder of results" in capsys.readouterr().err


def test_targets_report_frontier_table_pairs_records_with_stored_runs(tmp_path, capsys, monkeypatch):
    T = _tool("targets_report")
    hist = lambda last_acc: dict(epoch=[1, 100, 300, 375], train_acc=[0.5, 1.0, last_acc, 1.0],  # noqa: E731
                                 nc1=[1.0, 0.1, 0.01, 0.005], nc2=[0.5, 0.2, 0.1, 0.1], nc3=[0.5, 0.2, 0.1, 0.1],
                                 nc4=[1.0, 2.0, 0.5, 0.4])
    stored = dict(config=dict(name="fig7-mnist-resnet18-dk", profile="cpu", dataset="mnist", epochs=375,
                              lr_milestones=[175, 300]), history=hist(1.0))
    (tmp_path / "fig7-mnist-resnet18-dk").write_text(json.dumps(stored))
    monkeypatch.setattr(T.E, "results_path", lambda cfg, d: pathlib.Path(d) / cfg.name)
    monkeypatch.setattr(T.E, "load_results_file", lambda p: json.loads(pathlib.Path(p).read_text()))
    same = dict(name="fig7-mnist-resnet18-dk", factor=2.5, epochs=375, lr_milestones=[175, 300], wall_s=1800.0,
                history=hist(0.9996))  # one image wrong at epoch 300, in the last quarter
    shorter = dict(same, factor=1.5, epochs=225, lr_milestones=[105, 180])  # less than the stored run: not shown
    no_run = dict(same, name="fig6-cifar10-eq4")  # no stored result for it
    (tmp_path / "frontier.jsonl").write_text("\n".join(json.dumps(r) for r in (same, shorter, no_run)) + "\n")
    T.frontier_table(str(tmp_path))
    rows = capsys.readouterr().out.splitlines()[2:]
    assert rows == ["| fig7-mnist-resnet18-dk | the same: 375 epochs, steps at 175, 300 | 30.0 min | 0.005 | 0.1 | "
                    "0.1 | 99.96% | none | train acc = 100% (last quarter) |"]


def test_frontier_from_results_records_only_stretched_runs(tmp_path, monkeypatch):
    F = _tool("frontier")
    cfg = F.stretched("fig7-mnist-resnet18-dk", 2.0)  # epochs and both milestones doubled
    base = F.configs.get_config("fig7-mnist-resnet18-dk", "cpu")
    assert (cfg.epochs, cfg.lr_milestones) == (2 * base.epochs, tuple(2 * m for m in base.lr_milestones))
    hist = dict(epoch=[1, cfg.epochs], train_acc=[0.5, 1.0], nc1=[1.0, 0.001], nc2=[0.5, 0.1], nc3=[0.5, 0.1],
                nc4=[1.0, 0.4], test_acc=[0.4, 0.9], test_nc1=[2.0, 0.5], train_loss=[2.0, 0.01])
    prov = dict(git_commit="abc", cpu_model="Some CPU", wall_time_s=600.0, cpu_threads=1)
    cfgd = dict(name="fig7-mnist-resnet18-dk", profile="cpu", dataset="mnist", epochs=cfg.epochs)
    files = {"fig7-mnist-resnet18-dk__cpu__a.json": dict(config=cfgd, config_hash=F.configs.config_hash(cfg),
                                                          history=hist, provenance=prov),
             "fig7-mnist-resnet18-etf__cpu__b.json": dict(config=dict(cfgd, name="fig7-mnist-resnet18-etf"),
                                                           config_hash="not-stretched", history=hist, provenance=prov),
             "fig3-mnist-lbfgs__cpu__c.json": dict(config=dict(cfgd, name="fig3-mnist-lbfgs"), config_hash="x",
                                                   history=hist, provenance=prov),
             "fig7-mnist-resnet18-learned__cpu__d.json": dict(config=dict(cfgd, name="fig7-mnist-resnet18-learned"),
                                                               config_hash="y", history=hist,
                                                               provenance=dict(prov, copied_from="fig3-mnist-sgd"))}
    for name, res in files.items():
        (tmp_path / name).write_text(json.dumps(res))
    monkeypatch.setattr(F.experiments, "load_results_file", lambda p: json.loads(pathlib.Path(p).read_text()))
    recs = F.from_results(tmp_path, 2.0)
    assert [r["name"] for r in recs] == ["fig7-mnist-resnet18-dk"]
    r = recs[0]
    assert (r["epochs"], r["lr_milestones"], r["wall_s"], r["threads"], r["cpu"], r["commit"]) == \
        (cfg.epochs, list(cfg.lr_milestones), 600.0, 1, "Some CPU", "abc")
    assert "train_loss" not in r["history"] and r["history"]["test_nc1"] == [2.0, 0.5]
    assert [c["target"] for c in r["checks"] if not c["met"]] == []  # NC1 0.001 <= 1e-2, 1000x below epoch 1
    out = tmp_path / "f.jsonl"
    F.main(["--from-results", str(tmp_path), "--factor", "2.0", "--out", str(out)])
    assert [json.loads(line)["name"] for line in out.read_text().splitlines()] == ["fig7-mnist-resnet18-dk"]
    with pytest.raises(SystemExit):
        F.main(["--from-results", str(tmp_path), "--factor", "3.0", "--out", str(out)])  # none stretched 3x


def test_frontier_moved_milestones_keep_the_epochs_and_refuse_bad_steps(capsys):
    F = _tool("frontier")
    base = F.configs.get_config("fig6-cifar10-eq4", "cpu")
    cfg = F.moved("fig6-cifar10-eq4", [175, 275])
    assert (cfg.epochs, cfg.lr_milestones) == (base.epochs, (175, 275))
    assert cfg.replace(lr_milestones=base.lr_milestones) == base  # nothing else changed
    for bad in ([275, 175], [175, 175], [0, 100], [175, base.epochs]):
        with pytest.raises(ValueError, match="milestones must increase"):
            F.moved("fig6-cifar10-eq4", bad)
    with pytest.raises(ValueError, match="no learning-rate milestones"):
        F.moved("fig3-cifar10-lbfgs", [1, 2])
    for argv, msg in ((["--milestones", "175,x", "fig6-cifar10-eq4"], "separated by commas"),
                      (["--milestones", "175,400", "fig6-cifar10-eq4"], "milestones must increase")):
        with pytest.raises(SystemExit):
            F.main(argv)
        assert msg in capsys.readouterr().err


def test_targets_report_schedule_table_one_row_per_record(tmp_path, capsys):
    T = _tool("targets_report")
    hist = lambda last_acc: dict(epoch=[1, 100, 300, 375], train_acc=[0.5, 1.0, last_acc, 1.0],  # noqa: E731
                                 nc1=[1.0, 0.1, 0.01, 0.005], nc2=[0.5, 0.2, 0.1, 0.1], nc3=[0.5, 0.2, 0.1, 0.1],
                                 nc4=[1.0, 2.0, 0.5, 0.4])
    late = dict(name="fig7-mnist-resnet18-dk", factor=1.0, epochs=375, lr_milestones=[175, 300], wall_s=1200.0,
                cpu="Some CPU", history=hist(0.9996))  # one image wrong at epoch 300, in the last quarter
    early = dict(late, lr_milestones=[175, 275], wall_s=1260.0, history=hist(1.0))
    (tmp_path / "m.jsonl").write_text(json.dumps(late) + "\n" + json.dumps(early) + "\n")
    T.main(["--schedules", str(tmp_path / "m.jsonl")])
    rows = capsys.readouterr().out.splitlines()[2:]
    assert rows == ["| fig7-mnist-resnet18-dk | 175, 275 of 375 | Some CPU | 21.0 min | 0.005 | 0.1 | 0.1 | 100.00% "
                    "| all met |",
                    "| fig7-mnist-resnet18-dk | 175, 300 of 375 | Some CPU | 20.0 min | 0.005 | 0.1 | 0.1 | 99.96% "
                    "| missed: train acc = 100% (last quarter) |"]
