"""A rebuild executes only the chapters whose inputs changed: the digests follow the modules a chapter imports, the seed
files they read, the profile and the chapters it builds on, and nothing else."""

import json
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from conftest import QUICK_BUILD, QUICK_SOURCE, REPO, book_extension, build_quick_book, copy_source
from ipcbench import chapters, rebuild


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of the repository's source files (what git tracks or would track)."""
    return copy_source(tmp_path_factory.mktemp("src"))


def _changed(root: Path, edit) -> set[str]:
    before = rebuild.digests("quick", root)
    undo = edit()
    try:
        after = rebuild.digests("quick", root)
    finally:
        undo()
    assert rebuild.digests("quick", root) == before, "undoing the change restores every digest"
    return {chapters.by_notebook(d).id for d in before if before[d] != after[d]}


def _append(path: Path, text: str):
    old = path.read_text(encoding="utf-8")
    path.write_text(old + text, encoding="utf-8")
    return lambda: path.write_text(old, encoding="utf-8")


def test_a_change_in_one_chapters_module_changes_that_chapter_and_those_that_import_or_read_it(tree):
    exp = tree / "lib" / "ipcbench" / "experiments"
    assert _changed(tree, lambda: _append(exp / "pipeline.py", "\n# one line\n")) == {"pipeline"}
    assert _changed(tree, lambda: _append(exp / "rpc_breakdown.py", "\nX = 1\n")) == {"rpc_breakdown", "scale_out"}
    # chapter 0: its own module, the chapters that read its results, and chapter 6, which imports it
    assert _changed(tree, lambda: _append(exp / "machine_limits.py", "\n")) == {
        "machine_limits", *chapters.dependents("machine_limits"), "scale_out"}  # fmt: skip


def test_a_shared_module_changes_every_chapter_and_a_notebooks_prose_changes_none(tree):
    assert _changed(tree, lambda: _append(tree / "lib" / "ipcbench" / "results.py", "\n")) == set(chapters.IDS)
    assert _changed(tree, lambda: _append(tree / "data" / "seeds" / "claim_rules.yaml", "\n")) == set(chapters.IDS)
    nb_path = tree / chapters.get("pipeline").notebook_path
    old = nb_path.read_text(encoding="utf-8")

    def prose():
        nb = nbformat.read(nb_path, as_version=4)
        nb.cells[0].source += "\n\nOne more sentence."
        nbformat.write(nb, nb_path)
        return lambda: nb_path.write_text(old, encoding="utf-8")

    assert _changed(tree, prose) == set()  # Jupyter Book's own cache sees a change of code; prose needs no execution
    assert rebuild.digests("quick", tree) != rebuild.digests("standard", tree)


def test_the_recorded_digests_and_the_execution_cache(tmp_path):
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    f = tmp_path / "digests.json"
    assert rebuild.read_recorded(f) == {}
    rebuild.record(f, "notebooks/a", "1")
    rebuild.record(f, "notebooks/b", "2")
    assert rebuild.read_recorded(f) == {"notebooks/a": "1", "notebooks/b": "2"}
    f.write_text("{not json")
    assert rebuild.read_recorded(f) == {}  # unreadable: every chapter executes again

    nb_path = tmp_path / "n.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, nb_path)
    cache = get_cache(str(tmp_path / "cache"))
    cache.cache_notebook_bundle(CacheBundleIn(nbformat.read(nb_path, as_version=4), str(nb_path)), check_validity=False)
    assert len(cache.list_cache_records()) == 1
    assert rebuild.drop_cached(tmp_path / "cache", nb_path) == 1
    assert cache.list_cache_records() == []
    assert rebuild.drop_cached(tmp_path / "nothing", nb_path) == 0


@pytest.mark.slow
def test_a_rebuild_executes_nothing_unchanged_and_after_a_one_line_change_only_that_chapter(quick_book, session_results,
                                                                                          tmp_path):  # fmt: skip
    """The quick book built again from the same source executes nothing; after one more line in chapter 6's module it
    executes chapter 6 (its cached outputs dropped, the others kept) and the pages built from every chapter."""
    from jupyter_cache import get_cache

    last = len(book_extension().LAST)
    results_copy = shutil.copytree(session_results, tmp_path / "results")
    cache = get_cache(str(QUICK_BUILD / "_build" / ".jupyter_cache"))
    before = {(r.pk, r.created): Path(r.uri).name for r in cache.list_cache_records()}  # a new record may reuse a pk
    assert sorted(before.values()) == sorted(c.notebook_path.name for c in chapters.CHAPTERS.values())
    times = {}

    t0 = time.perf_counter()
    out = build_quick_book(results_copy, timeout=600)
    times["unchanged_s"] = time.perf_counter() - t0
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    assert log.count("Executing notebook") == 0, "an unchanged source executed a page again"

    target = QUICK_SOURCE / "lib" / "ipcbench" / "experiments" / "scale_out.py"
    target.write_text(target.read_text(encoding="utf-8") + "\n# one more line\n", encoding="utf-8")
    t0 = time.perf_counter()
    out = build_quick_book(results_copy, timeout=900)
    times["one_chapter_changed_s"] = time.perf_counter() - t0
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    after = {(r.pk, r.created): Path(r.uri).name for r in cache.list_cache_records()}
    assert sorted(v for k, v in after.items() if k not in before) == ["06_scale_out.ipynb"]
    assert sorted(v for k, v in before.items() if k not in after) == ["06_scale_out.ipynb"]
    assert log.count("Executing notebook") == 1 + last, "chapter 6 and the pages built from every chapter's results"
    (QUICK_BUILD / "rebuild-times.json").write_text(json.dumps(times, indent=1))
    assert not (REPO / "lib" / "ipcbench" / "experiments" / "scale_out.py").read_text().endswith("# one more line\n")

