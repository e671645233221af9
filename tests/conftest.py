"""Shared test set-up: repo root on sys.path, a headless matplotlib, the compilation cache."""

import importlib
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")  # before anything imports pyplot
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import utils  # noqa: E402

utils.enable_compilation_cache()


def load(stem: str):
    """Import a numbered script by its file stem, e.g. load("02_guided_es"); main() is not run."""
    return importlib.import_module(stem)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs a whole script in quick mode")
