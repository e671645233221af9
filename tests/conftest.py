"""Shared test set-up: the repository root on sys.path, a headless matplotlib, the compilation
cache, `load(stem)`, the one quick run per script (`quick_run`) and the results contract."""

import contextlib
import datetime
import importlib
import json
import math
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")  # before anything imports pyplot
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jupytext  # noqa: E402  (after sys.path and MPLBACKEND are set)
import matplotlib.pyplot as plt  # noqa: E402
import utils  # noqa: E402

utils.enable_compilation_cache()


def load(stem: str):
    """Import a numbered script by its file stem, e.g. load("02_guided_es"); main() is not run."""
    return importlib.import_module(stem)


@contextlib.contextmanager
def notebook_kernel(folder):
    """What a Jupyter kernel looks like to a script: its own argv, QUICK=1, cwd = folder."""
    saved_argv = sys.argv
    saved_cwd = os.getcwd()
    saved_quick = os.environ.get("QUICK")
    sys.argv = ["ipykernel_launcher.py", "-f", "kernel.json"]
    os.environ["QUICK"] = "1"
    os.chdir(folder)
    try:
        yield
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        if saved_quick is None:
            os.environ.pop("QUICK", None)
        else:
            os.environ["QUICK"] = saved_quick


_QUICK_RUNS = {}


def quick_run(stem: str, tmp_path_factory) -> dict:
    """Run `<stem>.py` once per test session as a notebook in quick mode: every code cell in
    order, in a fresh namespace, as a kernel would. After each cell, the figures left open are
    what the inline backend would display; they are counted, then closed, as it does.

    Returns {"record": the saved JSON, "out": results folder, "figures_shown": count}. A run
    that failed is not run again: later callers get its error."""
    if stem not in _QUICK_RUNS:
        try:
            _QUICK_RUNS[stem] = _run_as_notebook(stem, tmp_path_factory.mktemp(f"quick_{stem}"))
        except BaseException as error:
            _QUICK_RUNS[stem] = error
    if isinstance(_QUICK_RUNS[stem], BaseException):
        raise _QUICK_RUNS[stem]
    return _QUICK_RUNS[stem]


def _run_as_notebook(stem: str, folder) -> dict:
    namespace = {"__name__": "__main__"}
    shown = 0
    plt.close("all")
    try:
        with notebook_kernel(folder):
            for i, cell in enumerate(jupytext.read(os.path.join(ROOT, f"{stem}.py")).cells):
                if cell.cell_type == "code":
                    exec(compile(cell.source, f"{stem}.py[cell {i}]", "exec"), namespace)
                    shown += len(plt.get_fignums())
                    plt.close("all")
    finally:
        plt.close("all")
    out = folder / "results"
    record = json.loads((out / f"{stem}.json").read_text())
    return {"record": record, "out": out, "figures_shown": shown}


def check_results_contract(record: dict, stem: str, out, quick: bool = True) -> None:
    """The keys and types every results JSON carries (shared/CONVENTIONS.md, "Results")."""
    assert record["script"] == stem
    assert {"title", "url", "reproduced"} <= set(record["paper"])
    assert record["paper"]["url"].startswith("https://arxiv.org/abs/")
    assert isinstance(record["config"], dict) and record["config"]
    assert record["quick"] is quick
    seeds = record["seeds"]
    assert seeds and all(isinstance(s, int) for s in seeds)
    assert record["metrics"]
    for name, metric in record["metrics"].items():
        assert set(metric) == {"mean", "std", "per_seed"}, name
        per_seed = metric["per_seed"]
        assert len(per_seed) in (1, len(seeds)), name  # per seed, or one pooled number
        assert all(math.isfinite(v) for v in per_seed), name
        assert math.isclose(
            metric["mean"], sum(per_seed) / len(per_seed), rel_tol=1e-9, abs_tol=1e-12
        )
    assert isinstance(record["paper_values"], dict) and "source" in record["paper_values"]
    assert record["compile_s"] >= 0 and record["run_s"] >= 0
    env = record["env"]
    assert {"python", "jax", "numpy", "device", "git_commit"} <= set(env)
    assert env["git_commit"] is None or len(env["git_commit"]) == 40
    datetime.datetime.fromisoformat(record["created_utc"])
    png = out / f"{stem}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    mode = (out / f"{stem}.json").stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask(), oct(mode)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs a whole script in quick mode")
