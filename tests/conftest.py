"""Shared test set-up: headless plotting, mpiexec on PATH, results kept out of data/results."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

os.environ.setdefault("MPLBACKEND", "Agg")
# engines inherit the environment: let them import test modules that define SPMD functions
_tests = str(Path(__file__).resolve().parent)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_tests, os.environ.get("PYTHONPATH")) if p)
os.environ["IPP_NONINTERACTIVE"] = "1"
_bindir = str(Path(sys.executable).parent)
if _bindir not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _bindir + os.pathsep + os.environ.get("PATH", "")


LEFTOVERS_AT_START: dict[str, list[str]] = {}
HYDRA_AT_START: set[str] = set()


def pytest_sessionstart(session):
    """Note what an earlier, killed run left in /tmp and /dev/shm, so that checks see only this session's leftovers."""
    import glob

    from ipcbench import backends, lifecycle

    LEFTOVERS_AT_START.update(backends.leftovers())
    HYDRA_AT_START.update(glob.glob(lifecycle.HYDRA_GLOB))


@pytest.fixture
def new_leftovers():
    """Return a function giving the library's leftovers that appeared during this test session, by kind."""
    from ipcbench import backends

    def new() -> dict[str, list[str]]:
        return {k: sorted(set(v) - set(LEFTOVERS_AT_START.get(k, []))) for k, v in backends.leftovers().items()}

    return new


@pytest.fixture
def results_tmp(tmp_path, monkeypatch):
    """Point IPCBENCH_RESULTS_DIR at a temporary directory for one test."""
    d = tmp_path / "results"
    monkeypatch.setenv("IPCBENCH_RESULTS_DIR", str(d))
    return d


@pytest.fixture(scope="session")
def session_results(tmp_path_factory):
    """Return a results directory shared by the notebook and book tests of one session."""
    return tmp_path_factory.mktemp("results")


def book_extension():
    """Return the book's Sphinx extension module (book/_ext/book_pages.py), loaded from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("book_pages", REPO / "book" / "_ext" / "book_pages.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


QUICK_BUILD = REPO / "_build" / "test-quick"
"""Where the tests build the quick book (its HTML under _build/html, its executed notebooks under _build/jupyter_execute)."""
QUICK_SOURCE = QUICK_BUILD / "src"
"""The copy of the book's source tree the quick book is built from (a rebuild test edits the copy, never the repository;
the kernels import the installed package)."""


def copy_source(dest: Path) -> Path:
    """Copy the repository's source files (what git tracks, or would) to ``dest``; return it."""
    import shutil
    import subprocess

    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"], capture_output=True,
                           text=True, check=True).stdout.splitlines()  # fmt: skip
    for rel in files:
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def build_quick_book(results_dir: Path, timeout: int = 1500):
    """Build the quick book from :data:`QUICK_SOURCE` into :data:`QUICK_BUILD` (warnings as errors) with its results in
    ``results_dir``; return the completed process."""
    import subprocess

    env = dict(os.environ, IPCBENCH_PROFILE="quick", IPCBENCH_RESULTS_DIR=str(results_dir), IPCBENCH_ON_BUSY="wait")
    env.pop("MPLBACKEND", None)
    jb = Path(sys.executable).with_name("jupyter-book")
    return subprocess.run(
        [str(jb), "build", str(QUICK_SOURCE), "--path-output", str(QUICK_BUILD), "--warningiserror", "--nitpick",
         "--keep-going"], capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="session")
def quick_book(session_results):
    """Build the book once in the quick profile, with warnings as errors: it runs every chapter once, into
    ``session_results``; every check of a chapter's results and of the rendered pages reads this one build. Return
    the HTML directory."""
    import shutil

    shutil.rmtree(QUICK_BUILD, ignore_errors=True)  # a fresh build: every chapter executes
    copy_source(QUICK_SOURCE)
    out = build_quick_book(session_results)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-4000:]
    return QUICK_BUILD / "_build" / "html"
