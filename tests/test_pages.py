"""Tests of nclib.pages: the terminal-phase targets, the tables and the computed summaries."""
from __future__ import annotations

import json
import math
import pathlib

import pytest

from nclib import configs, experiments, pages


def fake_result(dataset="mnist", epochs=8, nc1=(1.0, 0.5, 0.02, 0.004), nc2=(0.5, 0.3, 0.1, 0.1),
                nc3=(0.9, 0.5, 0.2, 0.12), nc4=(0.2, 0.8, 0.5, 0.3), acc=(0.5, 0.9, 1.0, 1.0),
                log=(1, 2, 7, 8)):
    c = configs.get_config("fig3-mnist-sgd", "smoke").replace(dataset=dataset, epochs=epochs)
    h = dict(epoch=list(log), nc1=list(nc1), nc2=list(nc2), nc3=list(nc3), nc4=list(nc4), train_acc=list(acc),
             test_acc=[0.9] * 4, test_nc1=[v * 10 for v in nc1], test_nc2=list(nc2), test_nc3=list(nc3),
             test_nc4=list(nc4))
    final = {k: v[-1] for k, v in h.items()}
    return dict(config=c.to_dict(), history=h, final=final, data=dict(n_train=100),
                provenance=dict(wall_time_s=12.0))


def by_target(res):
    return {c["target"]: c for c in pages.terminal_phase_checks(res)}


def test_targets_by_hand():
    ok = by_target(fake_result())
    assert all(c["met"] for c in ok.values())
    assert ok["NC1 drop from epoch 1"]["value"] == pytest.approx(1.0 / 0.004)
    assert ok["NC4 final / max NC4"]["value"] == pytest.approx(0.3 / 0.8)
    assert ok["train acc = 100% (last quarter)"]["value"] == 1.0  # epochs 7 and 8 > 0.75 * 8
    # one logged epoch of the last quarter below 100% fails the first target
    bad = by_target(fake_result(acc=(0.5, 0.9, 0.9998, 1.0)))
    assert not bad["train acc = 100% (last quarter)"]["met"]
    # MNIST threshold 0.15 for NC2/NC3, CIFAR-10 0.2; NC1 1e-2 vs 5e-2
    m = by_target(fake_result(nc1=(1.0, 0.5, 0.1, 0.03), nc3=(1, 1, 1, 0.18)))
    c = by_target(fake_result(dataset="cifar10-jpeg", nc1=(10.0, 0.5, 0.1, 0.03), nc3=(1, 1, 1, 0.18)))
    assert not m["NC1 final"]["met"] and c["NC1 final"]["met"]
    assert not m["NC3 final"]["met"] and c["NC3 final"]["met"]
    # NC1 must fall 100x from epoch 1; NC4 must end at most half its maximum
    assert not by_target(fake_result(nc1=(0.3, 0.1, 0.01, 0.004)))["NC1 drop from epoch 1"]["met"]
    assert not by_target(fake_result(nc4=(0.2, 0.8, 0.5, 0.41)))["NC4 final / max NC4"]["met"]
    # an epoch-0 record does not count as "after epoch 1"; a zero NC1 is an infinite drop
    z = by_target(fake_result(nc1=(5.0, 1.0, 0.1, 0.0), log=(0, 1, 7, 8)))
    assert z["NC1 drop from epoch 1"]["value"] == math.inf and z["NC1 drop from epoch 1"]["met"]


def test_tables_and_summary():
    runs = {"a": fake_result(), "b": fake_result(nc3=(1, 1, 1, 0.5))}
    t = pages.targets_table(runs)
    assert list(t["all met"]) == ["yes", "no"] and "MISSED" in t.loc["b", "NC3 final"]
    f = pages.final_metrics_table(runs, {"a": 99.6})
    assert f.loc["a", "NC1 train"] == "0.004" and f.loc["a", "NC1 test"] == "0.04"
    assert f.loc["a", "paper test acc (full data)"] == "99.60%" and f.loc["b", "paper test acc (full data)"] == "-"
    s = pages.summary_markdown(runs, {"a": "cpu", "b": "cpu"})
    assert "1 of the 2 runs shown meet every terminal-phase target" in s and "NC3 final: 0.5 against 0.15" in s
    assert "10 to 10 times its training-set value" in s
    assert "1 run misses at least one target: b (NC3 final" in s
    assert "2 runs miss at least one target" in pages.summary_markdown({"b": runs["b"], "c": runs["b"]},
                                                                        {"b": "cpu", "c": "cpu"})
    assert "smoke" in pages.summary_markdown(runs, {"a": "smoke", "b": "smoke"})
    # a fixed ETF classifier: NC2 is 0 by construction, shown as not applying, counted as met
    fx = fake_result(nc2=(0.0, 0.0, 0.0, 0.0))
    fx["config"]["fixed_classifier"] = "etf"
    assert [c["applies"] for c in pages.terminal_phase_checks(fx)] == [True, True, True, False, True, True]
    assert "n/a" in pages.targets_table({"f": fx}).loc["f", "NC2 final"]
    assert "by construction in f" in pages.summary_markdown({"f": fx}, {"f": "cpu"})
    assert all(c["applies"] for c in pages.terminal_phase_checks(runs["a"]))


def test_load_runs_never_trains_outside_smoke(tmp_path, monkeypatch):
    from nclib import experiments as E
    monkeypatch.setattr(E, "run_experiment", lambda *a, **k: pytest.fail("trained"))
    assert pages.load_runs(["fig3-mnist-sgd", "loss-mnist-mse"], "auto", tmp_path) == \
        {"fig3-mnist-sgd": None, "loss-mnist-mse": None}
    assert pages.load_runs(["loss-mnist-mse"], "full", tmp_path) == {"loss-mnist-mse": None}  # no full profile
    with pytest.raises(ValueError, match="unknown profile"):
        pages.load_runs(["fig3-mnist-sgd"], "gpu", tmp_path)


def test_load_runs_smoke_goes_to_the_smoke_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NCLIB_SMOKE_RESULTS", str(tmp_path / "smoke"))
    res = pages.load_runs(["loss-mnist-mse"], "smoke", tmp_path / "book")
    assert res["loss-mnist-mse"]["config"]["loss"] == "mse"
    assert list((tmp_path / "smoke").glob("loss-mnist-mse__smoke__*.json")) and not (tmp_path / "book").exists()


def test_best_before_first_step_hand_made():
    t = dict(epoch=[1, 2, 5, 9, 12], train_acc=[0.1, 0.4, 0.3, 0.95, 1.0], lr_step=0, lr_milestones=[5, 10])
    assert pages.best_before_first_step(t) == 0.4          # epochs 1, 2, 5: the step comes after epoch 5
    assert pages.best_before_first_step(dict(t, lr_milestones=None, lr_step=9)) == 0.95
    assert pages.best_before_first_step(dict(t, lr_milestones=None, lr_step=0)) == 1.0   # no schedule: the whole run


def test_optimizer_steps_counts_the_partial_last_batch():
    res = dict(data=dict(n_train=5000), config=dict(batch_size=64, epochs=150))
    assert pages.optimizer_steps(res) == 79 * 150      # 78 full batches and one of 8
    assert pages.optimizer_steps(dict(res, config=dict(batch_size=2500, epochs=8))) == 16


def test_read_jsonl_reads_the_given_folder_and_falls_back_to_the_repository(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"a": 1}\n\n{"a": 2}\n')
    assert pages.read_jsonl(tmp_path, "x.jsonl") == [{"a": 1}, {"a": 2}]
    assert pages.read_jsonl(tmp_path, "nosuch.jsonl") == []
    stored = pages.read_jsonl(tmp_path, "recipe_search.jsonl")  # not in tmp_path: the repository's copy
    assert stored and stored == pages.recipe_search_trials(tmp_path) and "nc1" in stored[0]


def test_full_batch_summary_hand_made():
    # 5 steps in 500 s: 100 s per step; a 300 s budget holds the logged steps 1, 2 and 3
    t = dict(dataset="mnist", epochs=5, wall_s=500.0, epoch=[1, 2, 3, 5], train_acc=[0.5, 1.0, 0.1, 1.0],
             nc1=[1.0, 0.2, 0.05, 0.005], nc2=[0.5, 0.4, 0.3, 0.1], nc3=[0.6, 0.5, 0.2, 0.1])
    s = pages.full_batch_summary(t, budget_s=300)
    assert s["s_per_step"] == 100.0 and s["steps"] == 5 and s["budget_s"] == 300.0
    assert (s["best_acc"], s["best_step"], s["best_nc1"]) == (1.0, 2, 0.2)
    assert (s["min_nc1"], s["min_nc2"], s["min_nc3"]) == (0.05, 0.3, 0.2)
    assert (s["nc1_target"], s["nc23_target"]) == (1e-2, 0.15) and not s["nc1_met_in_budget"]   # 0.05 > 1e-2
    assert (s["final_acc"], s["final_nc1"], s["final_nc2"], s["final_nc3"]) == (1.0, 0.005, 0.1, 0.1)
    assert (s["lowest_acc"], s["lowest_step"]) == (0.1, 3)
    assert (s["first_100_step"], s["first_100_s"]) == (2, 200.0)
    # the whole run within 500 s: step 5 (NC1 0.005) meets the MNIST target; ties keep the earliest step
    s = pages.full_batch_summary(t, budget_s=500)
    assert s["nc1_met_in_budget"] and s["best_step"] == 2 and s["min_nc1"] == 0.005
    # CIFAR-10 (the JPEG copy too): targets 5e-2 and 0.2; NC1 0.05 at step 3 meets it
    s = pages.full_batch_summary(dict(t, dataset="cifar10-jpeg"), budget_s=300)
    assert (s["nc1_target"], s["nc23_target"]) == (5e-2, 0.2) and s["nc1_met_in_budget"]
    # nothing logged within the budget, nothing after step 1, never 100%: None
    s = pages.full_batch_summary(dict(t, epoch=[1], train_acc=[0.5], nc1=[1.0], nc2=[0.5], nc3=[0.6]), budget_s=50)
    assert s["best_acc"] is s["best_step"] is s["best_nc1"] is s["min_nc1"] is None and not s["nc1_met_in_budget"]
    assert s["lowest_acc"] is s["lowest_step"] is s["first_100_step"] is s["first_100_s"] is None
    assert s["final_acc"] == 0.5 and s["s_per_step"] == 100.0


def test_trial_as_run_cuts_a_trial_for_the_targets():
    t = dict(name="t", dataset="mnist", epochs=5, wall_s=500.0, epoch=[1, 2, 3, 4, 5],
             train_acc=[0.5, 0.9, 1.0, 1.0, 0.99], nc1=[1.0, 0.2, 0.05, 0.005, 0.004],
             nc2=[0.5, 0.4, 0.3, 0.1, 0.1], nc3=[0.6, 0.5, 0.2, 0.1, 0.1], nc4=[2.0, 3.0, 1.0, 1.0, 1.0])
    run = pages.trial_as_run(t, 4)
    assert run["config"] == dict(name="t", dataset="mnist", epochs=4) and run["history"]["epoch"] == [1, 2, 3, 4]
    met = {c["target"]: c["met"] for c in pages.terminal_phase_checks(run)}
    # last quarter of 4 steps: step 4 (100%); NC1 0.005 <= 1e-2 and 200x below step 1; NC4 1 <= 3 / 2
    assert all(met.values()), met
    met5 = {c["target"]: c["met"] for c in pages.terminal_phase_checks(pages.trial_as_run(t, 5))}
    assert not met5["train acc = 100% (last quarter)"] and met5["NC1 final"]   # step 5 at 99%
    with pytest.raises(ValueError, match="steps must be in"):
        pages.trial_as_run(t, 6)
    with pytest.raises(ValueError, match="no logged epoch 3"):
        pages.trial_as_run(dict(t, epoch=[1, 2, 4, 5]), 3)


def _frontier_history(last_acc, nc1_final):
    return dict(epoch=[1, 100, 200, 225], train_acc=[0.5, 1.0, last_acc, 1.0], nc1=[1.0, 0.1, 0.01, nc1_final],
                nc2=[0.5, 0.2, 0.1, 0.1], nc3=[0.5, 0.2, 0.1, 0.1], nc4=[1.0, 2.0, 0.5, 0.4])


def _unfitted_record(name, before, after):
    w = lambda idx: [dict(index=i, label=i % 10, pred=(i + 1) % 10, margin=0.5) for i in idx]  # noqa: E731
    return dict(name=name, stored_content_hash=f"hash-{name}", n_train=5000, reproduces_stored_history=True,
                eval_running=1 - len(before) / 5000,
                wrong_eval_running=w(before), wrong_eval_recalibrated=w(after))


def test_unfitted_rows_and_markdown_hand_made():
    cfg = lambda name, profile="cpu": dict(config=dict(name=name, profile=profile, dataset="cifar10-jpeg"),  # noqa: E731
                                           content_hash=f"hash-{name}")
    runs = {"cifar etf": cfg("fig7-cifar10-resnet18-etf"), "cifar eq4": cfg("fig6-cifar10-eq4")}
    same = _unfitted_record("fig7-cifar10-resnet18-etf", [12], [12])
    fewer = _unfitted_record("fig6-cifar10-eq4", [3, 7, 9], [7, 9, 21])
    other = _unfitted_record("fig3-mnist-sgd", [1], [1])  # no run shown for it
    rows = pages.unfitted_rows([same, fewer, other], runs)
    assert [(label, b, a) for label, _, b, a in rows] == [("cifar etf", {12}, {12}), ("cifar eq4", {3, 7, 9}, {7, 9, 21})]
    names = {"cifar10-jpeg": ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")}
    lines = pages.unfitted_markdown([same, fewer, other], runs, names).split("\n\n")
    assert lines[1].splitlines() == [
        "- cifar etf: 1 of 5,000 training images wrong at the final weights: #12 (bird taken for cat, margin 0.50). "
        "With re-estimated statistics: 1 wrong (the same image).",
        "- cifar eq4: 3 of 5,000 training images wrong at the final weights: #3 (cat taken for deer, margin 0.50), "
        "#7 (horse taken for ship, margin 0.50), #9 (truck taken for plane, margin 0.50). "
        "With re-estimated statistics: 3 wrong (1 of these fixed, 1 other now wrong)."]
    assert lines[2].startswith("No run reaches 100% with re-estimated statistics (at most 1 image of a run fixed)")
    none = pages.unfitted_markdown([same], runs)
    assert "(not one image fixed)" in none and "#12 (2 taken for 3, margin 0.50)" in none
    assert none.endswith("The run does not reach 100% with re-estimated statistics (not one image fixed): the running "
                         "statistics are not what keeps it from the target; the network has not fitted the images "
                         "that stay wrong.")
    fixed = _unfitted_record("fig6-cifar10-eq4", [3], [])
    text = pages.unfitted_markdown([same, fixed], runs)  # label numbers without names
    assert "#3 (3 taken for 4, margin 0.50)" in text
    assert text.endswith("With re-estimated statistics, cifar eq4 classifies every training image: there the miss "
                         "is eval mode's running statistics.")
    assert pages.unfitted_markdown([same], {}) == ""
    earlier = dict(same, stored_content_hash="hash-of-an-earlier-run")  # the same name, another run
    assert pages.unfitted_rows([earlier], runs) == [] and pages.unfitted_markdown([earlier], runs) == ""
    legacy = {k: v for k, v in same.items() if k != "stored_content_hash"}  # records made before the field
    assert pages.unfitted_rows([legacy], runs) == []
    assert pages.unfitted_markdown([same], {"cifar etf": cfg("fig7-cifar10-resnet18-etf", "smoke")}) == ""


def test_frontier_checks_and_markdown_hand_made():
    # fig7-mnist-resnet18-dk is an MNIST run: NC1 <= 1e-2 and a 100x drop; the last quarter of 225
    # epochs holds the logged epochs 200 and 225
    rec = dict(name="fig7-mnist-resnet18-dk", factor=1.5, epochs=225, lr_milestones=[105, 180], wall_s=600.0,
               history=_frontier_history(1.0, 0.005))
    assert all(c["met"] for c in pages.frontier_checks(rec))
    worse = dict(rec, history=_frontier_history(0.998, 0.02))
    missed = [c["target"] for c in pages.frontier_checks(worse) if not c["met"]]
    assert missed == ["train acc = 100% (last quarter)", "NC1 final", "NC1 drop from epoch 1"]
    stored = dict(config=dict(name="fig7-mnist-resnet18-dk", profile="cpu", dataset="mnist", epochs=150),
                  history=dict(epoch=[1, 150], train_acc=[0.5, 1.0], nc1=[1.0, 0.001], nc2=[0.5, 0.2],
                               nc3=[0.5, 0.1], nc4=[1.0, 0.4]))
    text = pages.frontier_markdown([rec, worse, dict(rec, name="fig3-mnist-sgd")], {"mnist dk": stored})
    lines = text.splitlines()[2:]
    assert len(lines) == 2  # the fig3 record has no run shown
    assert lines[0].startswith("- mnist dk: 225 epochs (1.5x the stored run's 150), steps at 105 and 180, 10.0 min; "
                               "missed before: NC2 final; ") and lines[0].endswith("**every target met**.")
    on = pages.frontier_markdown([dict(rec, cpu="Intel Xeon")], {"mnist dk": stored})
    assert "steps at 105 and 180, 10.0 min on Intel Xeon; missed before" in on
    # a record no longer than the stored run (made before the recipe grew) is not more compute
    longer = dict(stored, config=dict(stored["config"], epochs=225))
    assert pages.frontier_rows([rec], {"mnist dk": longer}) == [] and pages.frontier_markdown([rec], {"mnist dk": longer}) == ""
    assert "still missed: train acc = 100% (last quarter) 99.80% against 100.00%; NC1 final 0.02 against 0.01" in lines[1]
    assert pages.frontier_markdown([rec], {}) == ""
    smoke = dict(stored, config=dict(stored["config"], profile="smoke"))  # same name, another profile
    assert pages.frontier_markdown([rec], {"mnist dk": smoke}) == ""


def test_accuracy_difference_se_by_hand():
    # p = 0.5, n = 1000: sqrt(2 * 0.25 / 1000) = 0.02236 -> 2.236 points
    assert pages.accuracy_difference_se(0.5, 1000) == pytest.approx(100 * math.sqrt(0.0005))
    assert pages.accuracy_difference_se(1.0, 1000) == 0.0
    with pytest.raises(ValueError, match="acc=1.5"):
        pages.accuracy_difference_se(1.5, 1000)


def test_provenance_line_names_the_cpu_when_recorded():
    res = fake_result()
    res["config"]["name"] = "fig3-mnist-sgd"
    res["provenance"] = dict(device="cpu", device_name="x86_64", date="2026-12-02T05:00:00+00:00",
                             git_commit="0123456789abcdef", wall_time_s=754.0)
    assert pages.provenance_line(res) == ("fig3-mnist-sgd: cpu (x86_64), 2026-12-02T05:00:00+00:00, commit "
                                          "0123456789ab, wall time 12.6 min")
    res["provenance"].update(cpu_model="AMD EPYC (family 25, model 1)", cpu_capability="AVX2")
    assert pages.provenance_line(res).startswith("fig3-mnist-sgd: cpu (AMD EPYC (family 25, model 1), AVX2 kernels), ")
    res["provenance"].update(device="cuda", device_name="NVIDIA H200")  # a GPU run: the GPU's name
    assert pages.provenance_line(res).startswith("fig3-mnist-sgd: cuda (NVIDIA H200), ")


def test_frontier_on_stored_schedule_pairs_same_schedule_only(tmp_path):
    cfg = configs.get_config("fig6-mnist-batch_sum", "cpu")
    stored_dir = pathlib.Path(__file__).resolve().parents[1] / "book" / "results"
    if not experiments.results_path(cfg, stored_dir).exists():
        pytest.skip("no stored cpu result for fig6-mnist-batch_sum")
    rec = dict(name=cfg.name, epochs=cfg.epochs, lr_milestones=list(cfg.lr_milestones))
    longer = dict(rec, epochs=2 * cfg.epochs)  # another schedule: not paired
    moved = dict(rec, lr_milestones=[m + 1 for m in cfg.lr_milestones])  # same epochs, other steps: not paired
    got = pages.frontier_on_stored_schedule([rec, longer, moved], stored_dir)
    assert [(r is rec, res["config"]["name"], res["config"]["epochs"]) for r, res in got] == [(True, cfg.name, cfg.epochs)]
    assert pages.frontier_on_stored_schedule([rec], tmp_path) == []  # nothing stored there


def test_same_schedule_rows_and_markdown_hand_made():
    # the stored run and a record of the same 225-epoch schedule: the record misses the last-quarter
    # accuracy (99.8% at the logged epoch 200), the stored run meets every target
    rec = dict(name="fig7-mnist-resnet18-dk", factor=1.5, epochs=225, lr_milestones=[105, 180], wall_s=1080.0,
               history=_frontier_history(0.998, 0.005))
    h = _frontier_history(1.0, 0.005)
    stored = dict(config=dict(name="fig7-mnist-resnet18-dk", profile="cpu", dataset="mnist", epochs=225,
                              lr_milestones=[105, 180]), history=h)
    rows = pages.same_schedule_rows([rec, dict(rec, epochs=375, lr_milestones=[175, 300])], {"mnist dk": stored})
    assert [(label, a, b) for label, _, a, b in rows] == [("mnist dk", [], ["train acc = 100% (last quarter)"])]
    text = pages.same_schedule_markdown([rec], {"mnist dk": stored})
    assert ("- mnist dk: stored run: every target met; trained on an earlier session's machine (18.0 min): "
            "train acc = 100% (last quarter).") in text
    assert "differ in 1 of 1 cases" in text.replace("miss different targets in", "differ in")
    both = pages.same_schedule_markdown([dict(rec, history=h, cpu="Intel Xeon")], {"mnist dk": stored})
    assert "trained on Intel Xeon (18.0 min): every target met." in both
    assert both.endswith("\n\nThe two trainings meet and miss the same targets.")
    two = pages.same_schedule_markdown([dict(rec, history=h), dict(rec, history=h, cpu="Intel Xeon")],
                                       {"mnist dk": stored})
    assert two.endswith("\n\nIn both cases the two trainings meet and miss the same targets.")
    other_milestones = dict(rec, lr_milestones=[100, 180])
    assert pages.same_schedule_rows([other_milestones], {"mnist dk": stored}) == []
    assert pages.same_schedule_markdown([rec], {}) == ""


def test_profile_core_hours_counts_trainings_not_copies(tmp_path, monkeypatch):
    # hand-made: three stored cpu results, one a copy (trained nothing): 1800 s + 5400 s = 2 h, n = 2
    names = ["fig3-mnist-sgd", "fig3-mnist-adam", "fig6-mnist-all"]
    prov = {names[0]: dict(wall_time_s=1800.0), names[1]: dict(wall_time_s=5400.0),
            names[2]: dict(wall_time_s=1800.0, copied_from="fig3-mnist-sgd__cpu__x.json")}
    for n in names:
        (tmp_path / n).write_text(json.dumps(dict(provenance=prov[n])))
    monkeypatch.setattr(pages.E, "results_path", lambda cfg, d: pathlib.Path(d) / cfg.name)
    monkeypatch.setattr(pages.E, "load_results_file", lambda p: json.loads(pathlib.Path(p).read_text()))
    assert pages.profile_core_hours(tmp_path, "cpu") == (2.0, 2)
    assert pages.profile_core_hours(tmp_path / "empty", "cpu") == (0.0, 0)
    with pytest.raises(ValueError, match="unknown profile 'auto'"):
        pages.profile_core_hours(tmp_path, "auto")


def test_moved_schedule_rows_and_markdown_hand_made():
    # a CIFAR-10 run of 400 epochs, steps at 200 and 300 (the recipe) or 200 and 280; the last quarter
    # holds the logged epochs 350 and 400; 5,000 training images, so 99.96% is 2 wrong
    def rec(ms, acc_350, cpu="CPU A", early=0.5):
        h = dict(epoch=[1, 200, 350, 400], train_acc=[early, 0.99, acc_350, 1.0], nc1=[1.0, 0.1, 0.01, 0.004],
                 nc2=[0.5, 0.2, 0.1, 0.1], nc3=[0.5, 0.2, 0.1, 0.1], nc4=[1.0, 2.0, 0.5, 0.4])
        return dict(name="fig6-cifar10-eq4", factor=1.0, epochs=400, lr_milestones=ms, wall_s=900.0, cpu=cpu, history=h)
    stored = dict(config=dict(name="fig6-cifar10-eq4", profile="cpu", dataset="cifar10-jpeg", epochs=400,
                              lr_milestones=[200, 300]), data=dict(n_train=5000))
    runs = {"cifar eq4": stored}
    recipe, moved = rec([200, 300], 0.9996), rec([200, 280], 0.9998)
    other_cpu = rec([200, 280], 1.0, cpu="CPU B")  # no record of the recipe's schedule on CPU B: not paired
    rows = pages.moved_schedule_rows([moved, recipe, other_cpu], runs)
    assert [(label, cpu, [r["lr_milestones"] for r, _, _ in recs], [w for _, w, _ in recs],
             [on for _, _, on in recs], same)
            for label, cpu, recs, same in rows] == [("cifar eq4", "CPU A", [[200, 280], [200, 300]],
                                                     [[(350, 1)], [(350, 2)]], [False, True], True)]
    text = pages.moved_schedule_markdown([moved, recipe, other_cpu], runs)
    assert text.split("\n\n")[1] == (
        "- cifar eq4, on CPU A (the same training up to the first step that moved): steps at 200, 280: at most 1 "
        "training image wrong (epoch 350), missed train acc = 100% (last quarter); steps at 200, 300 (the recipe): "
        "at most 2 training images wrong (epoch 350), missed train acc = 100% (last quarter).")
    assert text.endswith("The moved schedule did not meet every target either: the images left wrong in "
                         "the last quarter are not a matter of where the last step falls.")
    both = pages.moved_schedule_markdown([moved, recipe, dict(moved, name="fig7-cifar10-resnet18-dk"),
                                          dict(recipe, name="fig7-cifar10-resnet18-dk")],
                                         dict(runs, dk=dict(stored, config=dict(stored["config"], name="fig7-cifar10-resnet18-dk"))))
    assert both.endswith("In none of these 2 trainings did the moved schedule meet every target: the images left "
                         "wrong in the last quarter are not a matter of where the last step falls.")
    fixed = rec([200, 280], 1.0)
    text = pages.moved_schedule_markdown([fixed, recipe], runs)
    assert "steps at 200, 280: none wrong, every target met" in text
    assert text.endswith("The moved schedule met every target.")
    diverged_early = rec([200, 280], 1.0, early=0.6)  # epoch 1 differs: not the same training before the step
    assert "(the same training" not in pages.moved_schedule_markdown([diverged_early, recipe], runs)
    assert pages.moved_schedule_markdown([moved], runs) == ""  # no record of the recipe's schedule to compare
    assert pages.moved_schedule_markdown([moved, recipe], {}) == ""
