"""Tests of the book itself: chapter headers, paired .ipynb files, Colab links, nbval runs.

* every chapter (a notebook listed in _toc.yml) has the same jupytext header and kernelspec,
  starts with the same Colab setup cell (tagged to be skipped by the book build, papermill
  and nbval, and hidden from readers, with a visible note after it) and has a cell tagged
  ``parameters``;
* the paired, outputs-free ``.ipynb`` next to each ``.md`` holds the same cells (Colab opens it);
* on the built HTML, each chapter's Colab button points at that ``.ipynb`` on the main branch;
* every chapter whose code reads ``NCLIB_PROFILE`` runs under nbval with the ``smoke`` profile
  (converted by jupytext into a scratch folder): there the smoke run takes another path than the
  book build.  The other chapters run the same code either way, and the strict book build
  (``jupyter-book build --all -W -n --keep-going .``, CI step 1) executes every chapter and
  fails on any error, so nbval would only repeat it (about 200 s of CI).
"""
import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())


def _toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        for ch in part.get("chapters", []):
            files.append(ch["file"])
            files += [s["file"] for s in ch.get("sections", [])]
    return files


def chapters():
    """The toc entries that are notebooks (a .md with a jupytext/kernelspec header)."""
    out = []
    for f in _toc_files():
        p = ROOT / (f + ".md")
        text = p.read_text() if p.exists() else ""
        if text.startswith("---\n") and "jupytext:" in text.split("---\n")[1]:
            out.append(p)
    return out


CHAPTERS = chapters()
IDS = [p.stem for p in CHAPTERS]
NBVAL_CHAPTERS = [p for p in CHAPTERS if "NCLIB_PROFILE" in p.read_text()]


def _header(path):
    text = path.read_text()
    return yaml.safe_load(text.split("---\n")[1])


def _cells(nb):
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


def test_there_are_chapters():
    assert len(CHAPTERS) >= 1


def test_identical_headers():
    headers = [_header(p) for p in CHAPTERS]
    for h in headers:
        h.pop("accelerator", None)  # GPU chapters may ask Colab for a GPU runtime
    for p, h in zip(CHAPTERS, headers):
        assert h == headers[0], f"{p.name} header differs from {CHAPTERS[0].name}"
    assert headers[0]["kernelspec"]["name"] == "python3"
    assert headers[0]["jupytext"]["formats"] == "ipynb,md:myst"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_setup_and_parameters_cells(path):
    nb = jupytext.read(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    setup = code[0]
    assert {"skip-execution", "nbval-skip"} <= set(setup.metadata.get("tags", [])), "setup cell tags"
    assert "pip" in setup.source and "find_spec(\"nclib\")" in setup.source
    # the install URL is the repository of _config.yml, on the configured branch
    url = CONFIG["repository"]["url"]
    assert f"git+{url}@{CONFIG['repository']['branch']}" in setup.source
    first_setup = jupytext.read(CHAPTERS[0]).cells
    assert setup.source == [c for c in first_setup if c.cell_type == "code"][0].source
    assert any("parameters" in c.metadata.get("tags", []) for c in code), "no cell tagged 'parameters'"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_setup_cell_hidden_with_a_visible_note(path):
    """Readers do not see the Colab install cell (``remove-input``: it stays the notebook's first
    cell for Colab), and a visible line right after it says what it does."""
    cells = jupytext.read(path).cells
    first = next(i for i, c in enumerate(cells) if c.cell_type == "code")
    assert "remove-input" in cells[first].metadata.get("tags", []), "tag the setup cell remove-input"
    note = cells[first + 1] if first + 1 < len(cells) else None
    assert note is not None and note.cell_type == "markdown" and "Colab" in note.source.split("\n\n")[0], \
        "the cell after the setup cell should start with a one-line note on running the page in Colab"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_paired_ipynb_in_sync(path):
    ipynb = path.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: run `jupytext --sync {path.relative_to(ROOT)}`"
    md_nb, py_nb = jupytext.read(path), jupytext.read(ipynb)
    assert _cells(md_nb) == _cells(py_nb), f"{ipynb.name} out of sync: run `jupytext --sync`"
    assert all(not c.get("outputs") for c in py_nb.cells if c.cell_type == "code"), "commit it without outputs"
    assert py_nb.metadata["kernelspec"]["name"] == "python3"


HTML = ROOT / "_build" / "html"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_colab_link_points_to_runnable_ipynb(path):
    page = HTML / path.relative_to(ROOT).with_suffix(".html")
    if not page.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{page} not built: CI builds the book before the tests")
        pytest.skip("book not built (run `jupyter-book build --all -W -n --keep-going .` first)")
    links = set(re.findall(r'https://colab\.research\.google\.com/github/[^"\']+', page.read_text()))
    assert len(links) == 1, links
    link = links.pop()
    repo = CONFIG["repository"]["url"].removeprefix("https://github.com/")
    prefix = f"https://colab.research.google.com/github/{repo}/blob/{CONFIG['repository']['branch']}/"
    assert link.startswith(prefix), link
    target = ROOT / link.removeprefix(prefix)
    assert target.suffix == ".ipynb" and target.exists(), link
    assert _cells(jupytext.read(target)) == _cells(jupytext.read(path))


def test_every_chapter_is_executed_by_the_strict_build():
    # what makes nbval of the chapters without a profile switch redundant
    assert CONFIG["execute"]["execute_notebooks"] in ("cache", "force", "auto")
    assert not CONFIG["execute"].get("exclude_patterns")
    for p in CHAPTERS:
        rel = str(p.relative_to(ROOT))
        assert not any(fnmatch.fnmatch(rel, pat) for pat in CONFIG.get("exclude_patterns", [])), rel
    ci = (ROOT / ".ci" / "run").read_text()
    assert "jupyter-book build --all -W -n --keep-going ." in ci
    assert {p.stem for p in NBVAL_CHAPTERS} >= {"exp_optimizers", "exp_ufm_validity", "exp_design"}


@pytest.mark.slow
@pytest.mark.parametrize("path", NBVAL_CHAPTERS, ids=[p.stem for p in NBVAL_CHAPTERS])
def test_chapter_runs_under_nbval(path, tmp_path):
    nb = jupytext.read(path)
    out = tmp_path / (path.stem + ".ipynb")
    jupytext.write(nb, out)
    env = dict(os.environ, NCLIB_PROFILE=os.environ.get("NCLIB_PROFILE", "smoke"))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-q", "-p", "no:cacheprovider",
         "--nbval-cell-timeout=1800", str(out)],
        cwd=ROOT / "book", env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
