"""The README's table of stored ``cpu`` runs against the terminal-phase targets (Markdown, stdout).

Usage::

    python tools/targets_report.py [--profile cpu] [--results-dir book/results]
    python tools/targets_report.py --frontier     # the runs of tools/frontier.py (results/frontier.jsonl)
    python tools/targets_report.py --schedules FILE   # records of tools/frontier.py --milestones, by run

One row per configuration of the profile that has a stored result; a run that another run trains
(e.g. ``fig6-*-all`` is ``fig3-*-sgd``) is a copy of that result and its wall time says "copy of ...";
columns: steps, wall time, final NC1-NC4 on the
training / test set, accuracies, and the targets missed (``nclib.pages.terminal_phase_checks``;
"-" for runs outside Figures 3, 4, 6 and 7, which have no targets).
"""
import argparse
import json
import math

from nclib import configs as C
from nclib import experiments as E
from nclib import pages as P

FIGURES_WITH_TARGETS = ("fig3", "fig6", "fig7")


def _g(v):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def row(res: dict) -> str:
    c, h, f = res["config"], res["history"], res["final"]
    steps = P.optimizer_steps(res)
    src = res["provenance"].get("copied_from")
    wall = f"copy of {src.split('__')[0]}" if src else f"{res['provenance'].get('wall_time_s', float('nan')) / 60:.1f} min"
    nc = [f"{_g(h[k][-1])} / {_g(h.get('test_' + k, [None])[-1])}" for k in ("nc1", "nc3", "nc4")]
    if c["figure"] in FIGURES_WITH_TARGETS:
        missed = [x["target"] for x in P.terminal_phase_checks(res) if not x["met"]]
        verdict = "all met" if not missed else "missed: " + ", ".join(missed)
    else:
        verdict = "-"
    return (f"| {c['name']} | {steps} | {wall} | {nc[0]} | {_g(h['nc2'][-1])} | "
            f"{nc[1]} | {nc[2]} | {100 * f['train_acc']:.2f}% | {100 * f['test_acc']:.1f}% | {verdict} |")


def frontier_table(results_dir: str) -> None:
    """The records of ``tools/frontier.py`` that trained the stored run's configuration longer than it
    or on its very schedule: the targets the stored run misses against those the record misses."""
    print("| run | schedule | wall time | NC1 | NC2 | NC3 | train acc, last quarter (min) | missed by the stored run "
          "| missed by the record |")
    print("|---|---|---:|---:|---:|---:|---:|---|---|")
    records = P.read_jsonl(results_dir, "frontier.jsonl")
    stored = {}
    for r in records:
        path = E.results_path(C.get_config(r["name"], "cpu"), results_dir)
        if path.exists():
            stored[r["name"]] = E.load_results_file(path)
    longer = [(n, rec, b, [c["target"] for c in a]) for n, rec, b, a in P.frontier_rows(records, stored)]
    for name, rec, before, after in longer + P.same_schedule_rows(records, stored):
        h = rec["history"]
        last_q = P.frontier_checks(rec)[0]["value"]  # the smallest train accuracy of the last quarter
        f = rec["epochs"] / stored[name]["config"]["epochs"]
        print(f"| {name} | {'the same' if f == 1 else f'{f:.3g}x'}: {rec['epochs']} epochs, steps at "
              f"{', '.join(map(str, rec['lr_milestones']))} | {rec['wall_s'] / 60:.1f} min | {_g(h['nc1'][-1])} | "
              f"{_g(h['nc2'][-1])} | {_g(h['nc3'][-1])} | {100 * last_q:.2f}% | "
              f"{', '.join(before) or 'none'} | {', '.join(after) or 'none: all met'} |")


def schedule_table(path: str) -> None:
    """The records in ``path`` (``tools/frontier.py --milestones``: one configuration trained with its
    learning-rate steps at different epochs), grouped by run: what each schedule reaches on the
    training set and the targets it misses."""
    print("| run | steps at | CPU | wall time | NC1 | NC2 | NC3 | train acc, last quarter (min) | targets |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    records = [json.loads(line) for line in open(path) if line.strip()]
    for rec in sorted(records, key=lambda r: (r["name"], r["lr_milestones"])):
        h, checks = rec["history"], P.frontier_checks(rec)
        missed = [c["target"] for c in checks if not c["met"]]
        print(f"| {rec['name']} | {', '.join(map(str, rec['lr_milestones']))} of {rec['epochs']} | "
              f"{rec.get('cpu') or '-'} | {rec['wall_s'] / 60:.1f} min | {_g(h['nc1'][-1])} | {_g(h['nc2'][-1])} | "
              f"{_g(h['nc3'][-1])} | {100 * checks[0]['value']:.2f}% | "
              f"{'all met' if not missed else 'missed: ' + ', '.join(missed)} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--results-dir", default="book/results")
    ap.add_argument("--frontier", action="store_true", help="the table of tools/frontier.py's runs instead")
    ap.add_argument("--schedules", default=None, metavar="FILE",
                    help="the table of the records of tools/frontier.py --milestones in FILE instead")
    a = ap.parse_args(argv)
    if a.schedules:
        return schedule_table(a.schedules)
    if a.frontier:
        return frontier_table(a.results_dir)
    print("| run | steps | wall time | NC1 train / test | NC2 | NC3 train / test | NC4 train / test | train acc "
          "| test acc | targets |")
    print("|---|---:|---:|---|---:|---|---|---:|---:|---|")
    for name in C.list_configs(profile=a.profile):
        cfg = C.get_config(name, a.profile)
        path = E.results_path(cfg, a.results_dir)
        if not path.exists():
            continue
        res = E.load_results_file(path)
        if res["config"]["name"] != name:
            continue
        print(row(res))


if __name__ == "__main__":
    main()
