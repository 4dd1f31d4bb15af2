"""What the experiment chapters show: their runs, the stored results they load, captions and provenance.

The experiment chapters of the book reproduce Sections 4.1-4.3 of Zhu et al. (2021) and go
beyond them:

* ``exp_optimizers``   -- Section 4.1, Figures 3 and 4 (``fig3-*`` runs of :mod:`nclib.configs`);
* ``exp_ufm_validity`` -- Section 4.2, Figures 5 and 6 (``fig5-*``, ``fig6-*``);
* ``exp_design``       -- Section 4.3, Figure 7 (``fig7-*``);
* ``other_losses``, ``imbalance`` -- beyond the paper (``loss-*``, ``imb-*``).

Each chapter is a parameterized notebook (a cell tagged ``parameters``).  This module holds
what the chapters and the batch runner (:mod:`nclib.runner`) share: which configurations a
chapter shows for a profile and its parameters (:func:`chapter_groups`), how they are loaded
(or trained) and where the shown results came from (:func:`load_chapter`), and captions
(:func:`describe_data`, :func:`describe_run`, :func:`provenance_line`).

Profiles: ``"smoke"``, ``"cpu"``, ``"full"`` as in :mod:`nclib.configs`, and ``"auto"``: per
figure panel (a *group* of runs drawn together), the stored ``"full"`` results when all of the
panel's runs have them, else the ``"cpu"`` profile (loaded when stored, else trained while
the estimated cost stays within ``auto_run_limit_s``; runs beyond it are left out and named in
the note).  :attr:`ChapterResults.note` says which profile each panel shows and where its
results came from (device, date, commit, wall time).

Equivalent runs: e.g. ``fig6-<ds>-all`` and ``fig7-<ds>-resnet18-learned`` (cpu) train exactly
what ``fig3-<ds>-sgd`` trains (only name, figure and label differ).  Such a run is trained
once; the others get a copy of its results with their own configuration and
``provenance["copied_from"]`` naming the source file (:func:`copy_equivalent`).

Smoke results (meaningless numbers, for CI) are never written into the book's results folder:
they go to ``$NCLIB_SMOKE_RESULTS``, else ``_build/smoke-results`` (relative to the working
directory, which is ``book/`` for the book build, nbval and the runner).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib

from . import configs as C
from . import experiments as E
from .costs import batches_per_epoch, dataset_sizes, estimate_seconds, fmt_seconds

__all__ = [
    "CHAPTERS",
    "PROFILES",
    "COMMON_PARAMS",
    "chapter_names",
    "chapter_parameters",
    "chapter_groups",
    "chapter_configs",
    "apply_overrides",
    "results_dir_for",
    "training_key",
    "find_equivalent",
    "copy_equivalent",
    "describe_data",
    "describe_run",
    "ChapterResults",
    "load_chapter",
    "provenance_line",
    "results_table",
    "TERMINAL_TARGETS",
    "terminal_phase_checks",
    "targets_table",
    "final_metrics_table",
    "summary_markdown",
    "accuracy_difference_se",
    "load_runs",
    "recipe_search_trials",
    "read_jsonl",
    "best_before_first_step",
    "full_batch_summary",
    "trial_as_run",
    "frontier_checks",
    "frontier_rows",
    "frontier_markdown",
    "frontier_on_stored_schedule",
    "same_schedule_rows",
    "same_schedule_markdown",
    "profile_core_hours",
    "unfitted_rows",
    "unfitted_markdown",
    "optimizer_steps",
]

PROFILES = ("auto",) + tuple(E.PROFILES)

_SMOKE_DIR = os.path.join("_build", "smoke-results")


# ----------------------------------------------------------------------------- chapter specs
def _g_optimizers(p):
    return {ds: {opt: f"fig3-{ds}-{opt}" for opt in p["OPTIMIZERS"]} for ds in p["DATASETS"]}


def _g_ufm(p):
    groups = {}
    for model in p["FIG5_MODELS"]:
        groups[f"fig5-{model}"] = {f"w{i}": f"fig5-{model}-w{i}" for i in p["FIG5_WIDTHS"]}
    for ds in p["FIG6_DATASETS"]:
        groups[f"fig6-{ds}"] = {r: f"fig6-{ds}-{r}" for r in p["FIG6_VARIANTS"]}
    return groups


def _g_design(p):
    return {s: {v: f"fig7-{s}-{v}" for v in p["VARIANTS"]} for s in p["SETUPS"]}


def _g_losses(p):
    return {"losses": {w: f"loss-mnist-{w}" for w in p["RUN_LOSSES"]}}


def _g_imbalance(p):
    return {"imbalance": {f"r{r}": f"imb-mnist-r{r}" for r in p["RUN_RATIOS"]}}


#: chapter -> title, its own parameters (names as in its ``parameters`` cell) with their
#: defaults and allowed values, and the function mapping parameters to groups of run names.
CHAPTERS = {
    "exp_optimizers": dict(
        title="Neural collapse with any optimizer (Section 4.1)", figures=("fig3", "fig4"),
        params=dict(DATASETS=(["mnist", "cifar10"], ("mnist", "cifar10")),
                    OPTIMIZERS=(["sgd", "adam", "lbfgs"], ("sgd", "adam", "lbfgs"))),
        groups=_g_optimizers),
    "exp_ufm_validity": dict(
        title="Is the unconstrained feature model valid? (Section 4.2)", figures=("fig5", "fig6"),
        params=dict(FIG5_MODELS=(["mlp", "resnet18"], ("mlp", "resnet18")),
                    FIG5_WIDTHS=([1, 2, 3, 4], (1, 2, 3, 4)),
                    FIG6_DATASETS=(["mnist", "cifar10"], ("mnist", "cifar10")),
                    FIG6_VARIANTS=(list(C.FIG6_VARIANTS), C.FIG6_VARIANTS)),
        groups=_g_ufm),
    "exp_design": dict(
        title="Designing networks with neural collapse (Section 4.3)", figures=("fig7",),
        params=dict(SETUPS=(["mnist-resnet18", "cifar10-resnet18", "cifar10-resnet50"],
                            ("mnist-resnet18", "cifar10-resnet18", "cifar10-resnet50")),
                    VARIANTS=(list(C.FIG7_VARIANTS), C.FIG7_VARIANTS)),
        groups=_g_design),
    "other_losses": dict(
        title="Other losses: MSE, label smoothing, focal", figures=("loss",),
        params=dict(RUN_LOSSES=(["ce", "mse", "ls"], ("ce", "mse", "ls"))), groups=_g_losses),
    "imbalance": dict(
        title="Imbalanced classes and minority collapse", figures=("imb",),
        params=dict(RUN_RATIOS=([1, 10, 50], (1, 10, 50))), groups=_g_imbalance),
}

#: parameters every experiment chapter has (besides its own): name -> default.
COMMON_PARAMS = dict(PROFILE="auto", RESULTS_DIR="results", EPOCHS=None, DEVICE=None, AUTO_RUN_LIMIT_S=300)


def chapter_names() -> list:
    """The experiment chapters (file stems in ``book/``)."""
    return list(CHAPTERS)


def _check_chapter(chapter) -> dict:
    if chapter not in CHAPTERS:
        raise ValueError(f"unknown chapter {chapter!r}; allowed: {', '.join(CHAPTERS)}")
    return CHAPTERS[chapter]


def _check_profile(profile, allowed=PROFILES) -> str:
    if profile not in allowed:
        raise ValueError(f"unknown profile {profile!r}; allowed: {', '.join(allowed)}")
    return profile


def chapter_parameters(chapter: str) -> dict:
    """All parameters of a chapter (the common ones and its own) with their defaults."""
    spec = _check_chapter(chapter)
    out = dict(COMMON_PARAMS)
    out.update({k: v[0] for k, v in spec["params"].items()})
    return out


def _resolve_params(chapter: str, params: dict) -> dict:
    spec = _check_chapter(chapter)
    allowed = chapter_parameters(chapter)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for chapter {chapter!r}; "
                         f"allowed: {', '.join(allowed)}")
    p = {k: v[0] for k, v in spec["params"].items()}
    p.update({k: v for k, v in params.items() if k in spec["params"] and v is not None})
    for k, (_, choices) in spec["params"].items():
        vals = p[k]
        if isinstance(vals, (str, int)):
            vals = [vals]
        if not isinstance(vals, (list, tuple)) or not vals:
            raise ValueError(f"{k} must be a non-empty list drawn from {list(choices)}, got {p[k]!r}")
        bad = [v for v in vals if v not in choices]
        if bad:
            raise ValueError(f"unknown value(s) {bad} for {k} in chapter {chapter!r}; allowed: {list(choices)}")
        p[k] = list(vals)
    ep = params.get("EPOCHS")
    if ep is not None and (isinstance(ep, bool) or not isinstance(ep, int) or ep < 1):
        raise ValueError(f"EPOCHS must be None (the profile's) or an integer >= 1, got {ep!r}")
    return p


def apply_overrides(config: E.ExperimentConfig, epochs: int | None = None) -> E.ExperimentConfig:
    """``config`` with another number of epochs and the same shape of schedule: the lr step
    scaled with the epochs (e.g. 200 epochs with steps every 40, Section 4 -> 10 epochs with
    steps every 2).  A changed configuration has another hash, hence its own results file."""
    if epochs is None or epochs == config.epochs:
        return config
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be None or an integer >= 1, got {epochs!r}")
    lr_step = None if config.lr_step is None else max(1, round(config.lr_step * epochs / config.epochs))
    ms = None if config.lr_milestones is None else \
        tuple(sorted({max(1, round(m * epochs / config.epochs)) for m in config.lr_milestones}))
    return config.replace(epochs=epochs, lr_step=lr_step, lr_milestones=ms)


def chapter_groups(chapter: str, profile: str, **params) -> dict:
    """The figure panels of a chapter: ``{group: {member: ExperimentConfig}}`` for a concrete
    profile (``"smoke"``, ``"cpu"``, ``"full"``) and the chapter's parameters (upper-case
    names as in its ``parameters`` cell; unknown names raise ValueError)."""
    _check_profile(profile, E.PROFILES)
    p = _resolve_params(chapter, params)
    names = CHAPTERS[chapter]["groups"](p)
    groups = {g: {m: apply_overrides(E.get_config(n, profile), params.get("EPOCHS")) for m, n in mem.items()
                  if C.has_profile(n, profile)} for g, mem in names.items()}
    return {g: mem for g, mem in groups.items() if mem}


def chapter_configs(chapter: str, profile: str, **params) -> list:
    """The configurations of :func:`chapter_groups` as one flat list."""
    return [c for mem in chapter_groups(chapter, profile, **params).values() for c in mem.values()]


def results_dir_for(profile: str, results_dir="results") -> pathlib.Path:
    """Where a profile's results live: ``results_dir`` for "cpu"/"full"; for "smoke"
    ``$NCLIB_SMOKE_RESULTS`` or ``_build/smoke-results`` (never the book's results folder)."""
    if profile == "smoke":
        return pathlib.Path(os.environ.get("NCLIB_SMOKE_RESULTS") or _SMOKE_DIR)
    return pathlib.Path(results_dir)


# ----------------------------------------------------------------------------- equivalent runs
_NOT_TRAINING = ("name", "figure", "label")


def training_key(config: E.ExperimentConfig) -> str:
    """A hash of everything that determines the *training* (the configuration without its
    name, figure and label): two configurations with the same key train identically."""
    import hashlib
    d = {k: v for k, v in config.to_dict().items() if k not in _NOT_TRAINING}
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def find_equivalent(config: E.ExperimentConfig, results_dir) -> pathlib.Path | None:
    """A stored results file (of another name) whose run trains exactly what ``config`` trains."""
    key = training_key(config)
    for path in sorted(pathlib.Path(results_dir).glob(f"*__{config.profile}__*.json")):
        if path.name.startswith(config.name + "__"):
            continue
        try:
            with open(path) as f:
                res = json.load(f)
            other = C.check_config(res["config"])
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if training_key(other) == key:
            return path
    return None


def copy_equivalent(config: E.ExperimentConfig, results_dir) -> dict | None:
    """If an equivalent run is stored (:func:`find_equivalent`), store its results under
    ``config``'s own name (its configuration, hash and ``provenance["copied_from"]``) and
    return them; else None.  Nothing is trained."""
    src = find_equivalent(config, results_dir)
    if src is None:
        return None
    with open(src) as f:
        res = json.load(f)
    res["config"] = config.to_dict()
    res["config_hash"] = E.config_hash(config)
    res.setdefault("provenance", {})["copied_from"] = src.name
    res["content_hash"] = E.content_hash(res)
    path = E.results_path(config, results_dir)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return E.load_or_run(config, results_dir, run=False)


# ----------------------------------------------------------------------------- captions
_DATA_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar10-jpeg": "CIFAR-10 (JPEG q75 copy)",
               "fashionmnist": "Fashion-MNIST", "cifar100": "CIFAR-100",
               "digits": "scikit-learn digits (8 x 8, upsampled; smoke test only)",
               "gaussian": "a synthetic Gaussian mixture (smoke test only)"}


def _as_config(x) -> E.ExperimentConfig:
    """An ExperimentConfig from itself, its dict, or a results dict holding it."""
    if isinstance(x, E.ExperimentConfig):
        return x
    if isinstance(x, dict):
        return C.check_config(x["config"] if "config" in x else x)
    raise ValueError(f"expected an ExperimentConfig, its dict or a results dict, got {type(x).__name__}")


def describe_data(config) -> str:
    """What a run was trained on, for a caption: the dataset's honest name (the JPEG stand-in
    is always called "CIFAR-10 (JPEG q75 copy)"), the subset sizes and random labels.
    ``config``: an ExperimentConfig, its dict, or a results dict."""
    config = _as_config(config)
    name = _DATA_NAMES.get(config.dataset, config.dataset)
    n, nt = dataset_sizes(config)
    if config.class_counts is not None:
        cc = sorted(set(config.class_counts), reverse=True)
        sub = (f"an imbalanced subset ({n:,} training images; per class "
               f"{' / '.join(str(v) for v in cc)}: {list(config.class_counts)})")
    elif config.n_per_class is None:
        sub = f"all {n:,} training images"
    else:
        sub = f"a balanced subset of {config.n_per_class} per class ({n:,} training images)"
    test = f", {nt:,} test images" if config.n_test_per_class is not None else ""
    rnd = ", random labels" if config.random_labels else ""
    aug = ", crop + flip augmentation" if config.augment else ""
    return f"{name}, {sub}{test}{rnd}{aug}"


def describe_run(config) -> str:
    """Model, optimizer and schedule of a run, for a caption (same arguments as :func:`describe_data`)."""
    config = _as_config(config)
    model = config.model.replace("resnet", "ResNet").replace("mlp", f"MLP (depth {config.depth or 4})")
    if config.width is not None:
        model += f" width {config.width:g}" + ("" if config.model == "mlp" else "x")
    if config.stem == "cifar":
        model += " (3x3 stem)"
    if config.lr_milestones:
        sched = f"lr x{config.lr_gamma:g} after epochs {', '.join(str(m) for m in config.lr_milestones)}"
    elif config.lr_step is not None:
        sched = f"lr x{config.lr_gamma:g} every {config.lr_step} epochs"
    else:
        sched = "no schedule"
    opt = {"sgd": "SGD", "adam": "Adam", "lbfgs": "L-BFGS"}.get(config.optimizer, config.optimizer)
    if config.regularization == "all":
        reg = f"weight decay {config.weight_decay:g} on all parameters"
    else:
        reg = (f"decay lambda_W = lambda_b = {config.lambda_W:g}, lambda_H = {config.lambda_H:g} "
               f"({config.feature_decay} scaling), none on the backbone")
    loss = "" if config.loss == "ce" else f", {config.loss.replace('_', ' ')}" + \
        (f" {config.smoothing:g}" if config.smoothing else "")
    if config.fixed_classifier:
        model += ", fixed ETF classifier"
    if config.feature_dim:
        model += f", d = {config.feature_dim}"
    return (f"{model}, {opt} lr {config.lr:g}, batch {config.batch_size}, "
            f"{config.epochs} epochs, {sched}, {reg}{loss}")


# ----------------------------------------------------------------------------- loading for a chapter
def provenance_line(res: dict) -> str:
    """One line naming where a stored result came from (device, date, commit, wall time); on a CPU,
    its model and torch's vector kernels when the result recorded them (from 2026-12-02 on)."""
    pv = res.get("provenance", {})
    wall = pv.get("wall_time_s")
    wall_s = fmt_seconds(wall) if isinstance(wall, (int, float)) else "?"
    dev = pv.get("device_name") or pv.get("device") or "?"
    if pv.get("device") == "cpu" and pv.get("cpu_model"):
        dev = pv["cpu_model"] + (f", {pv['cpu_capability']} kernels" if pv.get("cpu_capability") else "")
    line = (f"{res['config']['name']}: {pv.get('device', '?')} ({dev}), {pv.get('date', '?')}, "
            f"commit {str(pv.get('git_commit', '?'))[:12]}, wall time {wall_s}")
    if pv.get("copied_from"):
        line += f" [same training as {pv['copied_from'].split('__')[0]}]"
    return line


@dataclasses.dataclass
class ChapterResults:
    """What a chapter shows.  ``groups``: ``{group: {member: results dict}}`` (only runs that
    are available); ``profiles``: the profile shown per group; ``sources``: per run name,
    "stored", "copied" or "trained now"; ``missing``: run names left out and why; ``note``:
    the text the chapter prints (never silent about where numbers came from)."""

    requested: str
    groups: dict
    profiles: dict
    sources: dict
    missing: dict
    note: str

    @property
    def note_markdown(self) -> str:
        """The note as Markdown for the page (a sentence and a bullet list), so that it wraps
        at the column width instead of running off the page as printed text would."""
        lines = self.note.split("\n")
        out = [f"**Where these numbers come from.** {lines[0]}"]
        body = [ln for ln in lines[1:] if not ln.startswith("  - ")]
        if body:
            out += ["", " ".join(body)]
        items = [ln[4:] for ln in lines[1:] if ln.startswith("  - ")]
        if items:
            out += [""] + [f"- {it}" for it in items]
        return "\n".join(out)

    def get(self, group, member):
        """The results of one run, or None if it is not available."""
        return self.groups.get(group, {}).get(member)


def _stored(config, results_dir):
    try:
        return E.load_or_run(config, results_dir, run=False)
    except E.ResultsNotFound:
        return None


def load_chapter(chapter: str, profile: str = "auto", results_dir="results", *, epochs=None, device=None,
                 auto_run_limit_s: float = 300, progress: bool = False, **params) -> ChapterResults:
    """The results a chapter shows, loaded or trained (see the module docstring for "auto").

    ``profile``: "auto", "smoke", "cpu" or "full".  An explicit profile loads what is stored
    and trains the rest (:func:`nclib.experiments.load_or_run`); "auto" shows stored "full"
    results per group when complete, else "cpu" results, training missing cpu runs only
    while their summed estimated cost (:func:`estimate_seconds`) stays within
    ``auto_run_limit_s``; in "auto", a run that cannot be trained here (e.g. its dataset is
    missing: RuntimeError/OSError) is left out and named in the note instead of failing.  ``params``: the chapter's own parameters (e.g. ``DATASETS``).
    """
    _check_profile(profile)
    kw = dict(params, EPOCHS=epochs)
    groups_by = {p: chapter_groups(chapter, p, **kw) for p in (("full", "cpu") if profile == "auto" else (profile,))}
    out, profiles, sources, missing, lines = {}, {}, {}, {}, []
    budget = float(auto_run_limit_s)
    for g in groups_by[next(iter(groups_by))]:
        if profile == "auto":
            full = {m: _stored(c, results_dir) for m, c in groups_by["full"][g].items()}
            if all(r is not None for r in full.values()):
                out[g], profiles[g] = full, "full"
                sources.update({r["config"]["name"]: "stored" for r in full.values()})
                continue
            prof = "cpu"
        else:
            prof = profile
        profiles[g] = prof
        rdir = results_dir_for(prof, results_dir)
        out[g] = {}
        if g not in groups_by[prof]:  # e.g. ResNet50 has no cpu profile
            for c in groups_by["full"][g].values():
                missing[c.name] = (f"no stored full-profile result, and the run has no {prof!r} profile "
                                   f"(see nclib.configs)")
            continue
        for m, c in groups_by[prof][g].items():
            res = _stored(c, rdir)
            src = "stored"
            if res is None:
                res = copy_equivalent(c, rdir)
                src = "copied"
            if res is None:
                est = estimate_seconds(c, "cpu" if prof != "full" else "auto")
                if profile == "auto" and est > budget:
                    missing[c.name] = (f"not stored in {rdir}; estimated {est / 60:.0f} min on one CPU thread "
                                       f"exceeds the auto-run limit ({budget / 60:.0f} min left)")
                    continue
                budget -= est
                try:
                    res = E.load_or_run(c, rdir, device=device, progress=progress)
                except (RuntimeError, OSError) as exc:  # e.g. the dataset is not there
                    if profile != "auto":
                        raise
                    missing[c.name] = f"not stored in {rdir}, and training it here failed ({exc})"
                    continue
                src = "trained now"
            out[g][m] = res
            sources[c.name] = src
    shown = sorted({p for g, p in profiles.items() if out[g]})
    lines.append(f"Requested profile {profile!r}; showing profile(s): {', '.join(shown) or 'none'} "
                 f"({', '.join(f'{g}: {p}' for g, p in profiles.items())}).")
    if "full" not in shown:
        lines.append("No full-profile (GPU, paper-scale) results are stored yet: the curves below are "
                     "small-scale runs (see the captions), not the paper's experiment.")
    for g, mem in out.items():
        for res in mem.values():
            lines.append(f"  - [{profiles[g]}, {sources[res['config']['name']]}] {provenance_line(res)}")
    for name, why in missing.items():
        prof = "full" if "has no" in why else "cpu"
        lines.append(f"  - MISSING {name}: {why}. Run: python -m nclib run {chapter} --profile {prof}")
    return ChapterResults(requested=profile, groups=out, profiles=profiles, sources=sources, missing=missing,
                          note="\n".join(lines))


def results_table(results_dir="book/results", profile: str | None = None) -> str:
    """A Markdown table of the stored results (for the README): run, profile, data, device,
    wall time, epochs, final train/test accuracy and NC1, date and commit; one row per file,
    sorted by name."""
    rows = ["| run | profile | data | device | wall time | epochs | train acc | test acc | NC1 | date | commit |",
            "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for path in sorted(pathlib.Path(results_dir).glob("*__*__*.json")):
        with open(path) as f:
            res = json.load(f)
        c = _as_config(res)
        if profile is not None and c.profile != profile:
            continue
        pv, fin = res.get("provenance", {}), res.get("final", {})
        wall = pv.get("wall_time_s")
        same = f" (copy of {pv['copied_from'].split('__')[0]})" if pv.get("copied_from") else ""
        rows.append(f"| {c.name}{same} | {c.profile} | {describe_data(c)} | {pv.get('device', '?')} "
                    f"({pv.get('device_name', '?')}, {pv.get('cpu_threads', '?')} threads) | "
                    f"{fmt_seconds(wall) if isinstance(wall, (int, float)) else '?'} | {fin.get('epoch', '?')} | "
                    f"{100 * fin.get('train_acc', float('nan')):.1f}% | {100 * fin.get('test_acc', float('nan')):.1f}% | "
                    f"{fin.get('nc1', float('nan')):.3g} | {str(pv.get('date', '?'))[:10]} | "
                    f"{str(pv.get('git_commit', '?'))[:12]} |")
    return "\n".join(rows)


# ----------------------------------------------------------------------------- the terminal phase
#: Targets of the cpu profile (fixed before any run, from the issue "Experiments whose own runs
#: show neural collapse"): per dataset family, the largest final NC1 and the largest final NC2/NC3.
TERMINAL_TARGETS = {"mnist": dict(nc1=1e-2, nc23=0.15), "cifar10": dict(nc1=5e-2, nc23=0.2)}
#: NC1 must fall by at least this factor from its value after epoch 1 (L-BFGS: after its first epoch).
NC1_DROP = 100.0


def _family(dataset: str) -> str:
    return "mnist" if dataset in ("mnist", "fashionmnist", "digits") else "cifar10"


def _last_quarter(history: dict, epochs: int) -> list:
    """``(epoch, train_acc)`` at the logged epochs of the last quarter of a run of ``epochs``
    epochs (``epoch > 0.75 epochs``): where the accuracy target is checked."""
    return [(e, a) for e, a in zip(history["epoch"], history["train_acc"]) if e > 0.75 * epochs]


def terminal_phase_checks(res: dict) -> list:
    """The terminal-phase targets (:data:`TERMINAL_TARGETS`, :data:`NC1_DROP`) checked on one
    run's stored history.  Rows ``dict(target, value, threshold, met)``:

    * ``train acc = 100% (last quarter)``: the eval-mode training accuracy at every logged
      epoch in the last quarter of the run (value: the smallest of them);
    * ``NC1 final``, ``NC1 drop from epoch 1`` (value: NC1 at epoch 1 / final NC1),
      ``NC2 final``, ``NC3 final``;
    * ``NC4 <= max/2``: the final NC4 at most half its largest logged value (value: the ratio).

    Each row also has ``applies``: False for NC2 of a run whose classifier is fixed to a simplex
    ETF (NC2 is 0 by construction there, not a result; such a row counts as met).
    """
    h, cfg = res["history"], res["config"]
    t = TERMINAL_TARGETS[_family(cfg["dataset"])]
    E_ = cfg["epochs"]
    last_q = [a for _, a in _last_quarter(h, E_)]
    nc1_first = next(v for e, v in zip(h["epoch"], h["nc1"]) if e >= 1)
    drop = nc1_first / h["nc1"][-1] if h["nc1"][-1] > 0 else float("inf")
    nc4_max = max(h["nc4"])
    rows = [
        ("train acc = 100% (last quarter)", min(last_q) if last_q else float("nan"), 1.0, bool(last_q) and min(last_q) >= 1.0),
        ("NC1 final", h["nc1"][-1], t["nc1"], h["nc1"][-1] <= t["nc1"]),
        ("NC1 drop from epoch 1", drop, NC1_DROP, drop >= NC1_DROP),
        ("NC2 final", h["nc2"][-1], t["nc23"], h["nc2"][-1] <= t["nc23"]),
        ("NC3 final", h["nc3"][-1], t["nc23"], h["nc3"][-1] <= t["nc23"]),
        ("NC4 final / max NC4", h["nc4"][-1] / nc4_max if nc4_max > 0 else 0.0, 0.5, h["nc4"][-1] <= 0.5 * nc4_max),
    ]
    fixed = bool(cfg.get("fixed_classifier"))
    return [dict(target=a, value=float(v), threshold=float(th), met=bool(ok),
                 applies=not (fixed and a == "NC2 final")) for a, v, th, ok in rows]


def _fmt_check(c: dict, key: str = "value") -> str:
    """A check's value (or threshold) as text: accuracies in percent with two decimals."""
    v = c[key]
    return f"{100 * v:.2f}%" if c["target"].startswith("train acc") else f"{v:.3g}"


def targets_table(runs: dict):
    """A pandas DataFrame: one row per run (``runs``: label -> results dict), one column per
    terminal-phase target (:func:`terminal_phase_checks`), cells "value (met)" / "value (MISSED)",
    and a last column "all met"."""
    import pandas as pd
    rows = {}
    for label, res in runs.items():
        checks = terminal_phase_checks(res)
        status = {c["target"]: ("met" if c["met"] else "MISSED") if c["applies"] else "n/a: W is a fixed ETF"
                  for c in checks}
        row = {c["target"]: f"{_fmt_check(c)} ({status[c['target']]})" for c in checks}
        row["all met"] = "yes" if all(c["met"] for c in checks) else "no"
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def optimizer_steps(res: dict) -> int:
    """Optimizer steps of a stored run: batches per epoch (the last one partial) times epochs."""
    return batches_per_epoch(res["data"]["n_train"], res["config"]["batch_size"]) * res["config"]["epochs"]


def final_metrics_table(runs: dict, paper_test_acc: dict | None = None):
    """A pandas DataFrame of each run's final logged epoch: steps, wall time, NC1-NC4 on the
    training and the test set, train and test accuracy (and the paper's test accuracy where
    given: ``paper_test_acc`` label -> percent)."""
    import pandas as pd
    rows = {}
    for label, res in runs.items():
        f, c, pv = res["final"], res["config"], res.get("provenance", {})
        row = {"epochs": c["epochs"], "steps": optimizer_steps(res), "wall time": fmt_seconds(pv.get("wall_time_s", float("nan")))}
        for k in ("nc1", "nc2", "nc3", "nc4"):
            row[f"{k.upper()} train"] = f"{f[k]:.3g}"
            row[f"{k.upper()} test"] = f"{f[f'test_{k}']:.3g}" if f"test_{k}" in f else "-"
        row["train acc"] = f"{100 * f['train_acc']:.2f}%"
        row["test acc"] = f"{100 * f['test_acc']:.2f}%"
        if paper_test_acc is not None:
            p = paper_test_acc.get(label)
            row["paper test acc (full data)"] = "-" if p is None else f"{p:.2f}%"
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def summary_markdown(runs: dict, profiles: dict) -> str:
    """"What this shows", computed: which runs meet the terminal-phase targets
    (:func:`terminal_phase_checks`) and which miss which, and how the test set's NC1 compares
    with the training set's.  ``runs``: label -> results dict; ``profiles``: label -> profile."""
    if not runs:
        return "No runs are shown, so there is nothing to conclude."
    if set(profiles.values()) == {"smoke"}:
        return ("These are **smoke** runs (a few epochs on tiny data, for CI): their numbers say nothing "
                "about neural collapse.")
    met, missed, fixed = [], [], []
    for label, res in runs.items():
        checks = terminal_phase_checks(res)
        if not all(c["applies"] for c in checks):
            fixed.append(label)
        bad = [c for c in checks if not c["met"]]
        if not bad:
            met.append(label)
        else:
            parts = "; ".join(f"{c['target']}: {_fmt_check(c)} against {_fmt_check(c, 'threshold')}" for c in bad)
            missed.append(f"{label} ({parts})")
    out = []
    n = len(runs)
    if met:
        out.append(f"**{len(met)} of the {n} runs shown meet every terminal-phase target**: {', '.join(met)}. "
                   f"In these runs the training features of each class have (nearly) collapsed to their class "
                   f"mean, and the class means and classifier rows are close to a simplex ETF"
                   + (f" (the classifier rows by construction in {', '.join(fx)}: their W is a fixed "
                      f"simplex ETF, so NC2 is 0 there and is not counted as a result)."
                      if (fx := [lb for lb in met if lb in fixed]) else "."))
    else:
        out.append(f"**None of the {n} runs shown meets every terminal-phase target.**")
    if missed:
        out.append(f"{len(missed)} {'runs miss' if len(missed) > 1 else 'run misses'} at least one target: "
                   + "; ".join(missed) + ".")
    ratios = {lb: r["history"]["test_nc1"][-1] / r["history"]["nc1"][-1] for lb, r in runs.items()
              if r["history"].get("test_nc1")}
    if ratios:
        lo, hi = min(ratios.values()), max(ratios.values())
        out.append(f"On the **test set**, the final NC1 is {lo:.3g} to {hi:.3g} times its training-set value: "
                   + ("held-out features collapse far less than the training features, as "
                      "Hui, Belkin and Nakkiran (2022) found." if lo > 10 else
                      "held-out features are less collapsed than the training features." if lo > 1 else
                      "in at least one run the test features are as collapsed as the training features."))
    profs = sorted(set(profiles.values()))
    if "full" not in profs:
        out.append("These are small-scale (`cpu` profile) runs, not the paper's experiment.")
    return "\n\n".join(out)


def accuracy_difference_se(acc: float, n_test: int) -> float:
    """Standard error, in percentage points, of the difference of two test accuracies near ``acc``,
    each measured on ``n_test`` images by an independent run (binomial: sqrt(2 p (1 - p) / n));
    how far apart two single-seed runs of Figures 6-7 may land by chance alone."""
    if not 0.0 <= acc <= 1.0 or n_test < 1:
        raise ValueError(f"need 0 <= acc <= 1 and n_test >= 1, got acc={acc!r}, n_test={n_test!r}")
    return 100.0 * math.sqrt(2.0 * acc * (1.0 - acc) / n_test)


def load_runs(names, profile: str = "auto", results_dir="results") -> dict:
    """Stored results of named runs for a page that shows runs outside the figure chapters
    (e.g. "Other losses", "Nonnegative features"): ``{name: results dict or None}``.

    ``profile``: "auto" (stored "full" results if present, else stored "cpu" ones), "cpu" or
    "full" (stored only: a missing run is None, never trained here), or "smoke" (trained in
    seconds into the smoke folder, :func:`results_dir_for`, never into the book's results).
    """
    _check_profile(profile)
    out = {}
    for name in names:
        res = None
        for prof in (("full", "cpu") if profile == "auto" else (profile,)):
            if not C.has_profile(name, prof):
                continue
            cfg = C.get_config(name, prof)
            if prof == "smoke":
                res = E.load_or_run(cfg, results_dir_for("smoke", results_dir), progress=False)
            else:
                res = _stored(cfg, results_dir)
            if res is not None:
                break
        out[name] = res
    return out


def best_before_first_step(trial: dict) -> float:
    """The best logged training accuracy of a recipe-search trial before its first learning-rate
    step (its first milestone, or ``lr_step``; the whole run when it has no schedule)."""
    ms = trial.get("lr_milestones") or ([trial["lr_step"]] if trial.get("lr_step") else [])
    first = min(ms) if ms else float("inf")
    accs = [a for e, a in zip(trial["epoch"], trial["train_acc"]) if e <= first]
    return max(accs) if accs else float("nan")


def trial_as_run(trial: dict, steps: int) -> dict:
    """A trial of ``tools/recipe_search.py`` cut to its first ``steps`` epochs, in the shape of
    a stored run that :func:`terminal_phase_checks` reads (``config``: dataset, epochs;
    ``history``: the logged epochs up to ``steps`` and their training metrics)."""
    if not 1 <= steps <= trial["epochs"]:
        raise ValueError(f"steps must be in [1, {trial['epochs']}] (the trial's epochs), got {steps!r}")
    keep = [i for i, e in enumerate(trial["epoch"]) if e <= steps]
    if not keep or trial["epoch"][keep[-1]] != steps:
        raise ValueError(f"the trial {trial['name']!r} has no logged epoch {steps}")
    hist = {k: [trial[k][i] for i in keep] for k in ("epoch", "train_acc", "nc1", "nc2", "nc3", "nc4")}
    return dict(config=dict(name=trial["name"], dataset=trial["dataset"], epochs=steps), history=hist)


def full_batch_summary(trial: dict, budget_s: float = 1200) -> dict:
    """What a full-batch L-BFGS trial of ``tools/recipe_search.py`` (one step per epoch) reaches
    within a wall-clock budget and after all its steps, for comparison with the terminal-phase
    targets of the ``cpu`` profile (:data:`TERMINAL_TARGETS`, :func:`terminal_phase_checks`:
    final NC1 <= 1e-2 on MNIST or 5e-2 on CIFAR-10, final NC2 and NC3 <= 0.15 or 0.2, and 100%
    training accuracy at every logged epoch of the last quarter).

    A trial records only its total wall time, so ``s_per_step`` is the mean time per step
    (evaluations included) and a logged step ``e`` counts as within the budget when
    ``e * s_per_step <= budget_s``.  Keys of the returned dict:

    * ``steps``, ``wall_s``, ``s_per_step``, ``budget_s``;
    * ``best_acc``, ``best_step``, ``best_nc1``: the best logged training accuracy within the
      budget (the earliest step on a tie), its step and the NC1 there;
    * ``min_nc1``, ``min_nc2``, ``min_nc3``: the lowest logged values within the budget;
    * ``nc1_target``, ``nc23_target``: the targets of the trial's dataset family, and
      ``nc1_met_in_budget``: whether a logged NC1 within the budget is at or below its target;
    * ``final_acc``, ``final_nc1``, ``final_nc2``, ``final_nc3``: at the last logged step;
    * ``lowest_acc``, ``lowest_step``: the lowest logged training accuracy after step 1 (the
      earliest on a tie);
    * ``first_100_step``: the first logged step at 100% training accuracy, and ``first_100_s``,
      its time ``first_100_step * s_per_step``.

    Values that do not exist (no logged step within the budget, nothing logged after step 1,
    never 100%) are None.
    """
    steps, wall = trial["epochs"], float(trial["wall_s"])
    per_step = wall / steps
    t = TERMINAL_TARGETS[_family(trial["dataset"])]
    log = list(zip(trial["epoch"], trial["train_acc"], trial["nc1"], trial["nc2"], trial["nc3"]))
    within = [r for r in log if r[0] * per_step <= budget_s]
    best = max(within, key=lambda r: r[1]) if within else (None,) * 3   # max keeps the first of equal values
    later = [r for r in log if r[0] > 1]
    low = min(later, key=lambda r: r[1]) if later else (None,) * 2
    first_100 = next((r[0] for r in log if r[1] >= 1.0), None)
    lowest = {k: (min(r[i] for r in within) if within else None) for k, i in (("nc1", 2), ("nc2", 3), ("nc3", 4))}
    return dict(
        steps=steps, wall_s=wall, s_per_step=per_step, budget_s=float(budget_s),
        best_acc=best[1], best_step=best[0], best_nc1=best[2],
        min_nc1=lowest["nc1"], min_nc2=lowest["nc2"], min_nc3=lowest["nc3"],
        nc1_target=t["nc1"], nc23_target=t["nc23"],
        nc1_met_in_budget=bool(within) and lowest["nc1"] <= t["nc1"],
        final_acc=log[-1][1], final_nc1=log[-1][2], final_nc2=log[-1][3], final_nc3=log[-1][4],
        lowest_acc=low[1], lowest_step=low[0],
        first_100_step=first_100, first_100_s=None if first_100 is None else first_100 * per_step)


def frontier_checks(record: dict) -> list:
    """:func:`terminal_phase_checks` of one record of ``tools/frontier.py`` (a ``cpu`` run
    retrained with its schedule stretched), recomputed from the record's history."""
    cfg = C.get_config(record["name"], "cpu")
    return terminal_phase_checks(dict(history=record["history"],
                                      config=dict(dataset=cfg.dataset, epochs=record["epochs"])))


def _cpu_runs_by_name(runs: dict) -> dict:
    """``runs`` (label -> stored results) of the ``cpu`` profile by configuration name: name -> (label, results)."""
    return {r["config"]["name"]: (label, r) for label, r in runs.items() if r["config"].get("profile") == "cpu"}


def frontier_rows(records: list, runs: dict) -> list:
    """The records of ``tools/frontier.py`` whose run is in ``runs`` (label -> stored results; a
    ``cpu`` run of the same configuration name) and that trained longer than it (a record made
    before the recipe grew to its schedule is no longer more compute), as ``(label, record,
    missed_before, missed_after)``: the targets the stored run misses (names) and the checks the
    stretched run still misses (:func:`frontier_checks` rows)."""
    by_name = _cpu_runs_by_name(runs)
    rows = []
    for rec in records:
        if rec["name"] in by_name and rec["epochs"] > by_name[rec["name"]][1]["config"]["epochs"]:
            label, res = by_name[rec["name"]]
            before = [c["target"] for c in terminal_phase_checks(res) if not c["met"]]
            rows.append((label, rec, before, [c for c in frontier_checks(rec) if not c["met"]]))
    return rows


def frontier_markdown(records: list, runs: dict) -> str:
    """What the runs of ``runs`` (label -> stored ``cpu`` results) that miss a terminal-phase
    target reach with more compute: one line per row of :func:`frontier_rows`, with the factor,
    schedule and wall time and the targets the run still misses or now meets; "" when no
    record matches."""
    lines = []
    stored_epochs = {name: res["config"]["epochs"] for name, (_, res) in _cpu_runs_by_name(runs).items()}
    for label, rec, before, after in frontier_rows(records, runs):
        m, e0 = rec["lr_milestones"], stored_epochs[rec["name"]]
        cpu = f" on {rec['cpu']}" if rec.get("cpu") else ""
        head = (f"- {label}: {rec['epochs']} epochs ({rec['epochs'] / e0:.3g}x the stored run's {e0}), steps at "
                f"{' and '.join(str(e) for e in m)}, {rec['wall_s'] / 60:.1f} min{cpu}; missed before: "
                f"{', '.join(before) if before else 'none'}; ")
        if after:
            head += "still missed: " + "; ".join(
                f"{c['target']} {_fmt_check(c)} against {_fmt_check(c, 'threshold')}" for c in after) + "."
        else:
            head += "**every target met**."
        lines.append(head)
    if not lines:
        return ""
    return ("With more compute (`tools/frontier.py`, stored in `results/frontier.jsonl`: the same configuration "
            "with every epoch count of the schedule multiplied; wall times on one thread; a record that names no "
            "CPU was made on an earlier session's machine, and on another CPU the same run trains differently, "
            "so a longer run can miss a target that the stored run meets):\n\n"
            + "\n".join(lines))


def _on_schedule(rec: dict, epochs: int, milestones) -> bool:
    """Whether a record of ``tools/frontier.py`` trained ``epochs`` epochs with these milestones."""
    return (rec["epochs"], list(rec["lr_milestones"])) == (epochs, list(milestones or ()))


def same_schedule_rows(records: list, runs: dict) -> list:
    """The records of ``tools/frontier.py`` whose run is in ``runs`` (label -> stored ``cpu``
    results) and that trained exactly the stored run's schedule (epochs and milestones): the same
    configuration trained twice, at another commit or on another machine, as ``(label, record,
    missed_stored, missed_record)`` (target names)."""
    by_name = _cpu_runs_by_name(runs)
    rows = []
    for rec in records:
        if rec["name"] not in by_name:
            continue
        label, res = by_name[rec["name"]]
        if _on_schedule(rec, res["config"]["epochs"], res["config"].get("lr_milestones")):
            rows.append((label, rec, [x["target"] for x in terminal_phase_checks(res) if not x["met"]],
                         [x["target"] for x in frontier_checks(rec) if not x["met"]]))
    return rows


def same_schedule_markdown(records: list, runs: dict) -> str:
    """One line per row of :func:`same_schedule_rows`: the targets the stored run and the record
    (the same configuration and schedule, trained elsewhere) each miss; "" when no record matches."""
    rows = same_schedule_rows(records, runs)
    if not rows:
        return ""
    lines = []
    for label, rec, stored, other in rows:
        where = f"on {rec['cpu']}" if rec.get("cpu") else "on an earlier session's machine"
        lines.append(f"- {label}: stored run: {', '.join(stored) if stored else 'every target met'}; "
                     f"trained {where} ({rec['wall_s'] / 60:.1f} min): {', '.join(other) if other else 'every target met'}.")
    differ = sum(a != b for _, _, a, b in rows)
    if differ:
        verdict = (f"The two trainings miss different targets in {differ} of {len(rows)} cases: where they differ, "
                   "the same recipe met a target in one training and missed it in the other, so that target sits "
                   "at the edge of what this recipe reaches.")
    else:
        cases = "both cases" if len(rows) == 2 else f"all {len(rows)} cases"
        verdict = f"In {cases} the two trainings meet and miss the same targets." if len(rows) > 1 \
            else "The two trainings meet and miss the same targets."
    return ("The same configurations on the same schedule were also trained before this recipe was chosen "
            "(`tools/frontier.py`, `results/frontier.jsonl`; one thread; a record that names no CPU was made on an "
            "earlier session's machine, without `flush_denormal`). Targets missed, the stored run against that "
            "record:\n\n" + "\n".join(lines) + "\n\n" + verdict)


def moved_schedule_rows(records: list, runs: dict) -> list:
    """Records of ``tools/frontier.py --milestones`` (the epochs of a ``cpu`` run kept, its
    learning-rate steps moved) paired by run and machine: for each run of ``runs`` (label -> stored
    ``cpu`` results) and each CPU with a record on the stored schedule and one on another,
    ``(label, cpu, [(record, wrong, recipe)], same_start)``, the records sorted by milestones, ``wrong``
    the ``(epoch, images wrong)`` of the training set at the logged epochs of the last quarter where
    accuracy fell short of 100%, ``recipe`` whether the record trained the stored run's own schedule,
    and ``same_start`` whether the histories agree up to the first
    milestone where the schedules still agree (the same training until the first step that moved)."""
    by_name = _cpu_runs_by_name(runs)
    rows = []
    for name, (label, res) in by_name.items():
        cfg, n = res["config"], res["data"]["n_train"]
        for cpu in sorted({r.get("cpu") or "" for r in records if r["name"] == name}):
            mine = sorted((r for r in records if r["name"] == name and (r.get("cpu") or "") == cpu
                           and r["epochs"] == cfg["epochs"]), key=lambda r: r["lr_milestones"])
            recipe = [_on_schedule(r, cfg["epochs"], cfg.get("lr_milestones")) for r in mine]
            if not any(recipe) or len(mine) < 2:
                continue
            wrong = [[(e, round((1 - a) * n)) for e, a in _last_quarter(r["history"], cfg["epochs"]) if a < 1.0]
                     for r in mine]
            shared = min(_shared_steps(r["lr_milestones"], mine[0]["lr_milestones"]) for r in mine)
            upto = [{k: [v for e, v in zip(r["history"]["epoch"], r["history"][k]) if e <= shared]
                     for k in ("train_acc", "nc1")} for r in mine]
            rows.append((label, cpu, list(zip(mine, wrong, recipe)), all(u == upto[0] for u in upto)))
    return rows


def _shared_steps(a, b) -> int:
    """The epoch up to which two schedules' learning rates agree: the first milestone where they differ."""
    for x, y in zip(a, b):
        if x != y:
            return min(x, y)
    return min(a[-1], b[-1]) if a and b else 0


def moved_schedule_markdown(records: list, runs: dict) -> str:
    """What moving a stored ``cpu`` run's learning-rate steps did on one machine: one line per row of
    :func:`moved_schedule_rows` (the training images wrong in the last quarter under each schedule and
    the targets missed), then in how many trainings the moved schedule met every target; "" when no
    record matches."""
    rows = moved_schedule_rows(records, runs)
    if not rows:
        return ""
    lines, fixed, n_runs, acc_missed, recipe_met = [], 0, 0, 0, 0
    for label, cpu, recs, same_start in rows:
        parts = []
        for rec, wrong, on in recs:
            missed = [c["target"] for c in frontier_checks(rec) if not c["met"]]
            worst = max((w for _, w in wrong), default=0)
            epochs = ("epochs " if len(wrong) > 1 else "epoch ") + ", ".join(str(e) for e, _ in wrong)
            where = f"at most {worst} training image{'s' if worst != 1 else ''} wrong ({epochs})" if wrong else "none wrong"
            parts.append(f"steps at {', '.join(map(str, rec['lr_milestones']))}{' (the recipe)' if on else ''}: "
                         f"{where}, {'every target met' if not missed else 'missed ' + ', '.join(missed)}")
            if not on:
                n_runs += 1
                fixed += not missed
                acc_missed += "train acc = 100% (last quarter)" in missed
            else:
                recipe_met += not missed
        start = " (the same training up to the first step that moved)" if same_start else ""
        lines.append(f"- {label}, on {cpu or 'an unnamed CPU'}{start}: " + "; ".join(parts) + ".")
    if fixed:
        verdict = f"The moved schedule met every target in {fixed} of {n_runs} trainings." if n_runs > 1 else \
            "The moved schedule met every target."
    else:
        verdict = (f"In none of these {n_runs} trainings did the moved schedule meet every target" if n_runs > 1 else
                   "The moved schedule did not meet every target" + ("" if recipe_met else " either"))
        verdict += (": the images left wrong in the last quarter are not a matter of where the last step falls."
                    if acc_missed == n_runs else ".")
    return ("Moving the learning-rate steps instead (`tools/frontier.py --milestones`, `results/frontier_schedules.jsonl`; "
            "the same configuration, seed and epochs, both schedules trained on one machine, one thread, "
            "training-set targets only). Images of the training set wrong at a logged epoch of the last quarter:\n\n"
            + "\n".join(lines) + "\n\n" + verdict)


def frontier_on_stored_schedule(records: list, results_dir) -> list:
    """The records of ``tools/frontier.py`` whose schedule (epochs and milestones) is that of the
    ``cpu`` configuration of their name today, paired with its stored results in ``results_dir``:
    ``[(record, results)]``.  The same configuration and schedule trained twice, so their wall
    times compare the machines that ran them (the chapter on Section 4.1 prints them)."""
    out = []
    for rec in records:
        cfg = C.get_config(rec["name"], "cpu")
        path = E.results_path(cfg, results_dir)
        if _on_schedule(rec, cfg.epochs, cfg.lr_milestones) and path.exists():
            out.append((rec, E.load_results_file(path)))
    return out


def profile_core_hours(results_dir, profile: str = "cpu") -> tuple:
    """``(hours, n)``: the wall times of the stored results of ``profile`` in ``results_dir`` added up,
    in hours, over the ``n`` trainings (a result copied from another run, ``provenance.copied_from``,
    trained nothing and is not counted).  With one thread per run, as the ``cpu`` profile trains, this
    is the profile's cost in core-hours (the budget of the issue behind that profile: about 4)."""
    total, n = 0.0, 0
    for name in C.list_configs(profile=_check_profile(profile, E.PROFILES)):
        path = E.results_path(C.get_config(name, profile), results_dir)
        if path.exists():
            prov = E.load_results_file(path)["provenance"]
            if not prov.get("copied_from"):
                total, n = total + prov["wall_time_s"], n + 1
    return total / 3600, n


def unfitted_rows(records: list, runs: dict) -> list:
    """The records of ``tools/bn_eval_check.py`` made from a run in ``runs`` (label -> stored ``cpu``
    results; a record matches only the run whose content hash it names, so that a record of an
    earlier run of the same name is not shown for a new one; records made before the field match
    nothing), as ``(label, record, before, after)``: the indices of the training images wrong at
    the final weights in eval mode with the running BatchNorm statistics (``before``) and after
    re-estimating them (``after``), as sets."""
    by_name = _cpu_runs_by_name(runs)
    return [(by_name[rec["name"]][0], rec, {w["index"] for w in rec["wrong_eval_running"]},
             {w["index"] for w in rec["wrong_eval_recalibrated"]}) for rec in records
            if rec["name"] in by_name and rec.get("stored_content_hash") == by_name[rec["name"]][1].get("content_hash")]


def unfitted_markdown(records: list, runs: dict, class_names=None) -> str:
    """Which training images the runs of ``runs`` still misclassify at their final weights, and
    what re-estimated BatchNorm statistics change (:func:`unfitted_rows`); "" when no record
    matches.  ``class_names``: dataset name -> names of its labels (else the label numbers)."""
    rows = unfitted_rows(records, runs)
    if not rows:
        return ""
    lines = []
    for label, rec, before, after in rows:
        names = (class_names or {}).get(runs[label]["config"]["dataset"])
        name = (lambda k, names=names: names[k]) if names else str
        wrong = ", ".join(f"#{w['index']} ({name(w['label'])} taken for {name(w['pred'])}, margin {w['margin']:.2f})"
                          for w in rec["wrong_eval_running"])
        if after == before:
            change = "the same image" if len(after) == 1 else "the same images"
        else:
            new_wrong = len(after - before)
            change = f"{len(before - after)} of these fixed, {new_wrong} other{'' if new_wrong == 1 else 's'} now wrong"
        lines.append(f"- {label}: {len(before)} of {rec['n_train']:,} training images wrong at the final weights"
                     f"{': ' + wrong if wrong else ''}. With re-estimated statistics: {len(after)} wrong ({change}).")
    if all(after for *_, after in rows):
        fixed = max(len(b - a) for *_, b, a in rows)
        fixed = "not one image fixed" if fixed == 0 else f"at most {fixed} image{'' if fixed == 1 else 's'} of a run fixed"
        who = "No run reaches" if len(rows) > 1 else "The run does not reach"
        verdict = (f"{who} 100% with re-estimated statistics ({fixed}): the "
                   "running statistics are not what keeps " + ("these runs" if len(rows) > 1 else "it")
                   + " from the target; the network has not fitted the images that stay wrong.")
    else:
        fitted = [label for label, *_, after in rows if not after]
        verdict = (f"With re-estimated statistics, {' and '.join(fitted)} classif{'ies' if len(fitted) == 1 else 'y'} "
                   "every training image: there the miss is eval mode's running statistics.")
    return ("Which training images stay wrong (`tools/bn_eval_check.py`, stored in `results/bn_eval_check.jsonl`: "
            "the run retrained with the same seed and settings, its history checked equal to the stored one, then "
            "classified in eval mode with the running BatchNorm statistics, and again after re-estimating them at "
            "the final weights; #: the image's index in the training subset; margin: the top logit minus the logit of the label):\n\n"
            + "\n".join(lines) + "\n\n" + verdict)


def read_jsonl(results_dir, name: str) -> list:
    """The records of a JSON-lines file ``name`` of stored results (one dict per line), read from
    ``results_dir``, else from the repository's ``book/results`` beside this package (e.g. when a
    test runs a chapter from a scratch folder); [] when neither has the file."""
    for d in (pathlib.Path(results_dir), pathlib.Path(__file__).resolve().parents[1] / "book" / "results"):
        p = d / name
        if p.exists():
            with open(p) as f:
                return [json.loads(line) for line in f if line.strip()]
    return []


def recipe_search_trials(results_dir="results") -> list:
    """The trials of ``tools/recipe_search.py`` (``recipe_search.jsonl``, see :func:`read_jsonl`)."""
    return read_jsonl(results_dir, "recipe_search.jsonl")
