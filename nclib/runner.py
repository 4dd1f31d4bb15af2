"""The experiment chapters' configurations, their results and the papermill batch runner (Section 4).

The three experiment chapters of the book reproduce Sections 4.1-4.3 of Zhu et al. (2021):

* ``exp_optimizers``   -- Section 4.1, Figures 3 and 4 (``fig3-*`` runs of :mod:`nclib.experiments`);
* ``exp_ufm_validity`` -- Section 4.2, Figures 5 and 6 (``fig5-*``, ``fig6-*``);
* ``exp_design``       -- Section 4.3, Figure 7 and the parameter tables (``fig7-*``).

Each chapter is a parameterized notebook (a cell tagged ``parameters``).  This module holds the
one piece of logic the chapters and the batch runner share: which configurations a chapter
shows for a profile and its parameters (:func:`chapter_groups`), how they are loaded (or
trained) and where the shown results came from (:func:`load_chapter`), and a rough cost
estimate (:func:`estimate_seconds`).  ``python -m nclib run`` (:func:`main` in
:mod:`nclib.__main__`, logic in :func:`run_chapters`) executes chapters with papermill.

Profiles: ``"smoke"``, ``"cpu"``, ``"full"`` as in :mod:`nclib.experiments`, and ``"auto"``:
per figure panel (a *group* of runs drawn together), the stored ``"full"`` results when all of
the panel's runs have them, else the ``"cpu"`` profile (loaded when stored, else trained while
the estimated cost stays within ``auto_run_limit_s``; runs beyond it are left out and named in
the note).  The chapter prints :attr:`ChapterResults.note`, which says which profile each
panel shows and where its results came from (device, date, commit, wall time).

Equivalent runs: ``fig6-<ds>-all`` and ``fig7-<ds>-resnet18-learned`` train exactly what
``fig3-<ds>-sgd`` trains (same data, model, optimizer, decay and seed; only name, figure and
label differ).  Such a run is trained once; the others get a copy of its results with their
own configuration and ``provenance["copied_from"]`` naming the source file
(:func:`copy_equivalent`).

Smoke results (meaningless numbers, for CI) are never written into the book's results folder:
they go to ``$NCLIB_SMOKE_RESULTS``, else ``_build/smoke-results`` (relative to the working
directory, which is ``book/`` for the book build, nbval and the runner).
"""
from __future__ import annotations

import ast
import dataclasses
import datetime
import json
import math
import os
import pathlib
import subprocess
import sys
import time

from . import configs as C
from . import experiments as E

__all__ = [
    "CHAPTERS",
    "PROFILES",
    "chapter_names",
    "chapter_parameters",
    "chapter_groups",
    "chapter_configs",
    "apply_overrides",
    "results_dir_for",
    "training_key",
    "find_equivalent",
    "copy_equivalent",
    "estimate_seconds",
    "describe_data",
    "describe_run",
    "model_flops",
    "PAPER_SAVINGS",
    "dk_savings",
    "fixed_classifier_savings",
    "ChapterResults",
    "load_chapter",
    "provenance_line",
    "parse_value",
    "results_table",
    "plan",
    "run_chapters",
]

#: Profiles a chapter accepts (``"auto"`` chooses between stored "full" and "cpu", see module doc).
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
    return {"losses": {w: f"loss-mnist-{w}" for w in p["LOSSES"]}}


def _g_imbalance(p):
    return {"imbalance": {f"r{r}": f"imb-mnist-r{r}" for r in p["RATIOS"]}}


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
        params=dict(LOSSES=(["ce", "mse", "ls"], ("ce", "mse", "ls"))), groups=_g_losses),
    "imbalance": dict(
        title="Imbalanced classes and minority collapse", figures=("imb",),
        params=dict(RATIOS=([1, 10, 50], (1, 10, 50))), groups=_g_imbalance),
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


# ----------------------------------------------------------------------------- cost estimates
_FLOPS_CACHE: dict = {}

#: Sustained throughput assumed by :func:`estimate_seconds` (FLOP/s of a training step, counted
#: as 3 x the forward FLOPs; eval counted as 1 x) and a fixed cost per optimizer step.  CPU:
#: measured on one thread of a shared 2-core machine under load (ResNet18 32 x 32: ~12 ms per
#: image per training step, ~2 ms per image in eval).  GPU: not measured here; derived from
#: ~24k images/s for a CIFAR ResNet18 on an A100 (ANCHORS part 5) plus ~4 ms of kernel launches
#: per step for these small 32 x 32 networks.  Rough: take them as +-2x.
THROUGHPUT = {"cpu": dict(train=1.8e10, eval=2.5e10, step=2e-3), "gpu": dict(train=4e13, eval=8e13, step=4e-3)}


def model_flops(config: E.ExperimentConfig) -> float:
    """Forward FLOPs per 32 x 32 image of the configuration's network (counted once by
    ``torch.utils.flop_counter`` on a single image; cached)."""
    key = (config.model, config.width, config.depth, config.feature_dim, config.stem)
    if key not in _FLOPS_CACHE:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from . import models as M
        model = M.build(config.model, 10, feature_dim=config.feature_dim, width=config.width,
                        depth=config.depth, stem=config.stem).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(torch.zeros(1, 3, 32, 32))
        _FLOPS_CACHE[key] = float(fc.get_total_flops())
    return _FLOPS_CACHE[key]


def _sizes(config) -> tuple:
    full = {"mnist": (60000, 10000), "cifar10": (50000, 10000), "cifar10-jpeg": (50000, 10000),
            "fashionmnist": (60000, 10000), "cifar100": (50000, 10000), "digits": (1430, 367),
            "gaussian": (1000, 1000)}[config.dataset]
    K = 100 if config.dataset == "cifar100" else 10
    n = full[0] if config.n_per_class is None else config.n_per_class * K
    nt = full[1] if config.n_test_per_class is None else config.n_test_per_class * K
    return n, nt


def estimate_seconds(config: E.ExperimentConfig, device: str = "auto") -> float:
    """Rough wall time (s) of one run on ``"cpu"`` (one thread) or ``"gpu"`` (``"auto"``: gpu
    for the "full" profile, else cpu): training passes (3 x forward FLOPs per image and
    epoch; L-BFGS: 25 function evaluations per step, torch's max_iter=20 plus line search)
    plus one eval pass over train and test sets per logged epoch, at :data:`THROUGHPUT`."""
    dev = ("gpu" if config.profile == "full" else "cpu") if device == "auto" else device
    if dev not in THROUGHPUT:
        raise ValueError(f"unknown device class {device!r}; allowed: 'auto', 'cpu', 'gpu'")
    t = THROUGHPUT[dev]
    f = model_flops(config)
    n, nt = _sizes(config)
    evals = 25 if config.optimizer == "lbfgs" else 1
    steps = math.ceil(n / config.batch_size) * config.epochs
    train = 3 * f * n * config.epochs * evals / t["train"] + steps * evals * t["step"]
    le = config.log_epochs
    n_logged = config.epochs if le in ("all", None) else len(le) if isinstance(le, (list, tuple)) else \
        (1 if le == "last" else 30 if le == "log" else config.epochs // int(le) + 1)
    return train + f * (n + nt) * n_logged / t["eval"]


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
    n, nt = _sizes(config)
    if config.n_per_class is None:
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
    sched = "no schedule" if config.lr_step is None else f"lr x{config.lr_gamma:g} every {config.lr_step} epochs"
    opt = {"sgd": "SGD", "adam": "Adam", "lbfgs": "L-BFGS"}.get(config.optimizer, config.optimizer)
    return (f"{model}, {opt} lr {config.lr:g}, batch {config.batch_size}, "
            f"{config.epochs} epochs, {sched}")


# ----------------------------------------------------------------------------- Section 4.3 tables
#: The paper's numbers (Section 4.3) for the tables of the exp_design chapter.
PAPER_SAVINGS = {"dk": {"resnet18": 20.70, "resnet50": 4.45},
                 "fixed": {"resnet50": 8.01, "densenet169": 11.76, "shufflenet": 52.56}}


def dk_savings(models=("resnet18", "resnet50"), num_classes: int = 10, stem: str = "imagenet") -> list:
    """Section 4.3, "d = K": parameters of each network with its own feature dimension and with
    d = K (:func:`nclib.models.build` with ``feature_dim=K``), counted from the models
    themselves.  Rows: dict(model, d, params, params_dk, saving_percent)."""
    from . import models as M
    rows = []
    for name in models:
        a = M.build(name, num_classes, stem=stem)
        b = M.build(name, num_classes, feature_dim=num_classes, stem=stem)
        pa, pb = M.count_parameters(a), M.count_parameters(b)
        rows.append(dict(model=name, d=int(a.classifier.in_features), params=pa, params_dk=pb,
                         saving_percent=100.0 * (pa - pb) / pa))
    return rows


def fixed_classifier_savings(models=("resnet50", "densenet169", "shufflenet_v2_x1_0"),
                             num_classes: int = 1000) -> list:
    """Section 4.3, fixed classifier on ImageNet: the share of all parameters in the classifier's
    K x d weight matrix (bias excluded; :func:`nclib.models.classifier_fraction`) of
    torchvision's models with ``num_classes`` outputs, no pretrained weights.  Rows:
    dict(model, K, d, classifier_weight, params, saving_percent)."""
    import torchvision

    from . import models as M
    rows = []
    for name in models:
        if not hasattr(torchvision.models, name):
            raise ValueError(f"unknown torchvision model {name!r}")
        m = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        fc = M.classifier_of(m)
        rows.append(dict(model=name, K=num_classes, d=int(fc.in_features), classifier_weight=int(fc.weight.numel()),
                         params=M.count_parameters(m), saving_percent=100.0 * M.classifier_fraction(m)))
    return rows


# ----------------------------------------------------------------------------- loading for a chapter
def provenance_line(res: dict) -> str:
    """One line naming where a stored result came from (device, date, commit, wall time)."""
    pv = res.get("provenance", {})
    wall = pv.get("wall_time_s")
    wall_s = _fmt_s(wall) if isinstance(wall, (int, float)) else "?"
    dev = pv.get("device_name") or pv.get("device") or "?"
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
        lines.append(f"  - MISSING {name}: {why}. Run: python -m nclib run {chapter} --profile cpu --resume")
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
                    f"{_fmt_s(wall) if isinstance(wall, (int, float)) else '?'} | {fin.get('epoch', '?')} | "
                    f"{100 * fin.get('train_acc', float('nan')):.1f}% | {100 * fin.get('test_acc', float('nan')):.1f}% | "
                    f"{fin.get('nc1', float('nan')):.3g} | {str(pv.get('date', '?'))[:10]} | "
                    f"{str(pv.get('git_commit', '?'))[:12]} |")
    return "\n".join(rows)


# ----------------------------------------------------------------------------- the batch runner
def parse_value(text: str):
    """A ``-p NAME VALUE`` value: a Python/JSON literal (``10``, ``None``, ``['mnist']``) when
    it parses as one, else the string itself."""
    for conv in (ast.literal_eval, json.loads):
        try:
            return conv(text)
        except (ValueError, SyntaxError, TypeError):
            pass
    low = text.strip().lower()
    if low in ("null", "none"):
        return None
    return text


def notebook_parameters(path) -> dict:
    """Names assigned in the cell tagged ``parameters`` of a notebook (``.md`` or ``.ipynb``),
    with their literal values where they are literals (else the source text)."""
    import jupytext
    nb = jupytext.read(str(path))
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if not cells:
        raise ValueError(f"{path} has no cell tagged 'parameters'")
    out = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    try:
                        out[t.id] = ast.literal_eval(node.value)
                    except ValueError:
                        out[t.id] = ast.get_source_segment(cells[0].source, node.value)
    return out


@dataclasses.dataclass
class PlannedRun:
    chapter: str
    config: E.ExperimentConfig
    results_dir: pathlib.Path
    status: str          # "stored", "copy", "checkpoint", "train"
    estimate_s: float


def _checkpoint_path(config, results_dir) -> pathlib.Path:
    from .data import cache_root
    d = os.environ.get("NCLIB_CHECKPOINTS") or cache_root() / "checkpoints"
    return pathlib.Path(d) / (E.results_path(config, results_dir).stem + ".pt")


def plan(chapters, profile: str, params: dict | None = None, *, book_dir="book", results_dir="results",
         resume: bool = True) -> tuple:
    """What :func:`run_chapters` would do: ``(runs, chapter_params)``.  ``runs``: one
    :class:`PlannedRun` per distinct configuration (status "stored": results exist and
    ``resume``; "copy": an equivalent run is stored or planned; "checkpoint": an interrupted
    run continues; "train").  ``chapter_params``: the ``-p`` values each chapter receives.
    ``"auto"`` plans the "cpu" profile for groups without complete stored "full" results.
    Unknown chapters, profiles or parameters raise ValueError."""
    _check_profile(profile)
    chapters = list(chapters) or chapter_names()
    for ch in chapters:
        _check_chapter(ch)
    params = dict(params or {})
    book_dir = pathlib.Path(book_dir)
    per_chapter = {}
    known = set()
    for ch in chapters:
        path = book_dir / f"{ch}.md"
        nb_params = notebook_parameters(path) if path.exists() else chapter_parameters(ch)
        known |= set(nb_params)
        per_chapter[ch] = {k: v for k, v in params.items() if k in nb_params}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; the chosen chapters "
                         f"({', '.join(chapters)}) take: {', '.join(sorted(known))}")
    if "PROFILE" in params:
        raise ValueError("give the profile with --profile, not -p PROFILE")
    runs, seen_keys, seen = [], set(), set()
    for ch in chapters:
        p = per_chapter[ch]
        rdir_base = book_dir / p.get("RESULTS_DIR", results_dir)
        own = {k: v for k, v in p.items() if k not in COMMON_PARAMS}
        epochs = p.get("EPOCHS")
        if profile == "auto":
            full = chapter_groups(ch, "full", EPOCHS=epochs, **own)
            cpu = chapter_groups(ch, "cpu", EPOCHS=epochs, **own)
            cfgs = []
            for g in full:
                done = all(E.results_path(c, rdir_base).exists() for c in full[g].values())
                cfgs += list((full if done else cpu)[g].values())
        else:
            cfgs = chapter_configs(ch, profile, EPOCHS=epochs, **own)
        for c in cfgs:
            rdir = rdir_base if c.profile != "smoke" else results_dir_for("smoke")
            if not rdir.is_absolute() and c.profile == "smoke":
                rdir = book_dir / rdir
            ident = (c.name, E.config_hash(c))
            if ident in seen:
                continue
            seen.add(ident)
            key = (training_key(c), str(rdir))
            if resume and E.results_path(c, rdir).exists():
                status = "stored"
            elif key in seen_keys or (resume and find_equivalent(c, rdir) is not None):
                status = "copy"
            elif resume and _checkpoint_path(c, rdir).exists():
                status = "checkpoint"
            else:
                status = "train"
            seen_keys.add(key)
            est = estimate_seconds(c) if status in ("train", "checkpoint") else 0.0
            runs.append(PlannedRun(ch, c, rdir, status, est))
    return runs, per_chapter


def _fmt_s(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def describe_plan(runs) -> str:
    """A table of planned runs with status and estimated cost, and the total."""
    lines = [f"{'chapter':18} {'configuration':34} {'profile':7} {'status':10} {'estimate':>10}"]
    for r in runs:
        lines.append(f"{r.chapter:18} {r.config.name:34} {r.config.profile:7} {r.status:10} {_fmt_s(r.estimate_s):>10}")
    tot = sum(r.estimate_s for r in runs)
    lines.append(f"total estimated training: {_fmt_s(tot)} (rough: cpu = one thread, gpu = one GPU; see "
                 f"nclib.runner.THROUGHPUT)")
    return "\n".join(lines)


def list_chapters(book_dir="book", results_dir="results") -> str:
    """``--list``: every chapter, its configurations, their estimated cost per profile and
    whether results are stored."""
    book_dir = pathlib.Path(book_dir)
    lines = []
    for ch, spec in CHAPTERS.items():
        lines.append(f"{ch}: {spec['title']} -- figures {', '.join(spec['figures'])}")
        lines.append(f"  parameters: {', '.join(f'{k}={v!r}' for k, v in chapter_parameters(ch).items())}")
        tot = {p: 0.0 for p in E.PROFILES}
        cfgs = {p: chapter_configs(ch, p) for p in E.PROFILES}
        for i, c in enumerate(cfgs["cpu"]):
            cells = []
            for p in E.PROFILES:
                cp = cfgs[p][i]
                est = estimate_seconds(cp)
                tot[p] += est
                stored = E.results_path(cp, results_dir_for(p, book_dir / results_dir)).exists() \
                    if p != "smoke" else False
                cells.append(f"{p} {_fmt_s(est)}{' (stored)' if stored else ''}")
            lines.append(f"  {c.name:34} {' | '.join(cells)}")
        lines.append(f"  total: {' | '.join(f'{p} {_fmt_s(t)}' for p, t in tot.items())}")
    lines.append("Estimates: smoke and cpu on one CPU thread, full on one GPU; rough (+-2x).")
    return "\n".join(lines)


def _gpu_slots(gpus, per_gpu: int) -> list:
    """Device slots for parallel pre-runs: a list of CUDA_VISIBLE_DEVICES values (None = CPU)."""
    if gpus in (None, "none", 0, "0"):
        return [None]
    if gpus == "auto":
        try:
            import torch
            n = torch.cuda.device_count()
        except Exception:  # noqa: BLE001 - no CUDA build
            n = 0
        ids = list(range(n))
    else:
        ids = [int(x) for x in str(gpus).split(",")]
    if not ids:
        return [None]
    return [str(i) for i in ids for _ in range(max(1, int(per_gpu)))]


def _run_one(run: PlannedRun, slot, log_dir: pathlib.Path, resume: bool, threads: int | None) -> tuple:
    """Train one configuration in a worker process (``python -m nclib _worker``), logging to a
    file; the worker sets torch's thread count to ``threads`` (:func:`nclib.threads.configure`)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{run.config.name}__{run.config.profile}.log"
    env = dict(os.environ)
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        env["NCLIB_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "nclib", "_worker", "--config", json.dumps(run.config.to_dict()),
           "--results-dir", str(run.results_dir)] + ([] if resume else ["--fresh"])
    t0 = time.time()
    with open(log, "w") as f:
        f.write(f"# {datetime.datetime.now().isoformat(timespec='seconds')} slot={slot} {run.config.name}\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    return rc, time.time() - t0, log


def worker(config_json: str, results_dir: str, fresh: bool = False) -> dict:
    """Body of ``python -m nclib _worker``: train (or continue) one configuration and store it.
    ``fresh``: ignore a stored result and a checkpoint (the new result replaces the old
    file only once it is complete)."""
    import tempfile
    from .threads import configure
    configure()  # $NCLIB_THREADS (set by the runner from --threads), else one thread
    cfg = C.check_config(json.loads(config_json))
    rdir = pathlib.Path(results_dir)
    if not fresh:
        res = _stored(cfg, rdir) or copy_equivalent(cfg, rdir)
        if res is not None:
            return res
        return E.load_or_run(cfg, rdir, progress=True)
    ck = _checkpoint_path(cfg, rdir)
    if ck.exists():
        ck.unlink()
    with tempfile.TemporaryDirectory(dir=rdir.parent if rdir.parent.exists() else None) as tmp:
        E.load_or_run(cfg, tmp, progress=True, checkpoint_dir=ck.parent)
        src = E.results_path(cfg, tmp)
        rdir.mkdir(parents=True, exist_ok=True)
        os.replace(src, E.results_path(cfg, rdir))
    return E.load_or_run(cfg, rdir, run=False)


def run_chapters(chapters=(), profile: str = "auto", params: dict | None = None, *, book_dir="book",
                 results_dir="results", output_dir="_build/executed", log_dir="_build/logs",
                 resume: bool = False, dry_run: bool = False, gpus="auto", per_gpu: int = 1,
                 threads: int | None = None, workers: int = 1, execute: bool = True, echo=print) -> dict:
    """``python -m nclib run``: plan, pre-run the configurations in worker processes (in
    parallel, one per device slot: ``per_gpu`` per GPU, or ``workers`` CPU processes of
    ``threads`` threads each on a CPU-only machine), then
    execute each chapter with papermill (cwd = ``book_dir``; the notebook only loads), writing
    ``<output_dir>/<chapter>.ipynb`` and logs under ``log_dir``.  Returns a summary dict."""
    from concurrent.futures import ThreadPoolExecutor

    runs, per_chapter = plan(chapters, profile, params, book_dir=book_dir, results_dir=results_dir,
                             resume=resume)
    chapters = list(per_chapter)
    echo(describe_plan(runs))
    summary = dict(planned=[(r.config.name, r.config.profile, r.status) for r in runs], trained=[], failed=[],
                   executed=[])
    if dry_run:
        return summary
    log_dir = pathlib.Path(log_dir)
    todo = [r for r in runs if r.status in ("train", "checkpoint")]
    # distinct trainings first (longest first), copies after them
    todo.sort(key=lambda r: -r.estimate_s)
    copies = [r for r in runs if r.status == "copy"]
    slots = _gpu_slots(gpus, per_gpu)
    if slots == [None] and workers > 1:
        slots = [None] * int(workers)  # CPU workers, each pinned to `threads` (default 1) threads
        threads = threads or 1
    if todo and slots == [None]:
        # no GPU: one configuration after the other, in this process (no start-up cost per run)
        import contextlib
        echo(f"pre-running {len(todo)} configuration(s) one after the other on the CPU")
        log_dir.mkdir(parents=True, exist_ok=True)
        for r in todo:
            log = log_dir / f"{r.config.name}__{r.config.profile}.log"
            t0 = time.time()
            try:
                with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                    worker(json.dumps(r.config.to_dict()), str(r.results_dir), fresh=not resume)
                ok = True
            except Exception as exc:  # noqa: BLE001 - reported, and the run is named as failed
                with open(log, "a") as f:
                    f.write(f"\nFAILED: {type(exc).__name__}: {exc}\n")
                ok = False
            echo(f"  {'done' if ok else 'FAILED'} {r.config.name} ({r.config.profile}) in {time.time() - t0:.0f} s; "
                 f"log {log}")
            (summary["trained"] if ok else summary["failed"]).append(r.config.name)
    elif todo:
        echo(f"pre-running {len(todo)} configuration(s) on {len(slots)} slot(s): {slots}")
        free = list(slots)
        import threading
        lock = threading.Lock()

        def job(r):
            with lock:
                slot = free.pop(0)
            try:
                rc, dt, log = _run_one(r, slot, log_dir, resume, threads)
            finally:
                with lock:
                    free.append(slot)
            echo(f"  {'done' if rc == 0 else 'FAILED'} {r.config.name} ({r.config.profile}) in {dt:.0f} s; log {log}")
            return r, rc

        with ThreadPoolExecutor(max_workers=len(slots)) as ex:
            for r, rc in ex.map(job, todo):
                (summary["trained"] if rc == 0 else summary["failed"]).append(r.config.name)
    for r in copies:
        if r.config.name in summary["failed"]:
            continue
        if copy_equivalent(r.config, r.results_dir) is None:
            summary["failed"].append(r.config.name)
            echo(f"  FAILED {r.config.name}: its equivalent run is not stored")
    if summary["failed"]:
        raise RuntimeError(f"{len(summary['failed'])} run(s) failed: {', '.join(summary['failed'])}; "
                           f"see the logs in {log_dir}")
    if not execute:
        return summary
    import jupytext
    import papermill as pm
    out_dir = pathlib.Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for ch in chapters:
        nb = jupytext.read(str(pathlib.Path(book_dir) / f"{ch}.md"))
        prm = dict(per_chapter[ch], PROFILE=profile)
        prm.setdefault("RESULTS_DIR", str(results_dir))
        out = out_dir / f"{ch}.ipynb"
        echo(f"executing {ch} with {prm} -> {out}")
        t0 = time.time()
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{ch}.notebook.log", "w") as f:
            pm.execute_notebook(nb, str(out), parameters=prm, kernel_name="python3", cwd=str(book_dir),
                                progress_bar=False, log_output=True, stdout_file=f, stderr_file=f)
        echo(f"  executed {ch} in {time.time() - t0:.0f} s")
        summary["executed"].append(str(out))
    return summary
