"""Every numbered script is also a notebook (jupytext percent format): check that it is one."""

import glob
import os

import jupytext
import pytest
from conftest import ROOT, check_results_contract, quick_run

SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "0[1-7]_*.py")))


def cells(name):
    return jupytext.read(os.path.join(ROOT, name)).cells


def test_scripts_present():
    assert SCRIPTS, "no numbered script found"


@pytest.mark.parametrize("name", SCRIPTS)
def test_title_cell(name):
    first = cells(name)[0]
    assert first.cell_type == "markdown"
    assert first.source.lstrip().startswith(f"# {name[:2]}"), "title cell must start with '# 0N'"
    assert "arxiv.org/abs/" in first.source


@pytest.mark.parametrize("name", SCRIPTS)
def test_code_cells_compile(name):
    for i, c in enumerate(cells(name)):
        if c.cell_type == "code":
            compile(c.source, f"{name}[cell {i}]", "exec")


@pytest.mark.parametrize("name", SCRIPTS)
def test_jupytext_round_trip(name):
    nb = jupytext.read(os.path.join(ROOT, name))
    again = jupytext.reads(jupytext.writes(nb, fmt="py:percent"), fmt="py:percent")
    assert [(c.cell_type, c.source) for c in nb.cells] == [
        (c.cell_type, c.source) for c in again.cells
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_runs_as_notebook(name, tmp_path_factory):
    """The one quick run of each script per test session: executed cell by cell as a kernel
    would (QUICK=1), it writes results that keep the contract and displays its figure."""
    stem = name[:-3]
    run = quick_run(stem, tmp_path_factory)
    check_results_contract(run["record"], stem, run["out"], quick=True)
    assert run["figures_shown"] >= 1, "no figure was left open for the notebook to display"
