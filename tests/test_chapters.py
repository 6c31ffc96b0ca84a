"""The chapter descriptors are the one list of chapters: every registry, the table of contents, the ledger's sections and
the claims' ids follow them; a chapter that reads another's results refuses to start without them."""

import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from ipcbench import book, chapters, claims, experiments, results


def test_every_registry_derives_from_the_descriptors():
    assert results.CHAPTERS == chapters.IDS == tuple(experiments.CHAPTERS)
    for c in chapters.CHAPTERS.values():
        assert experiments.CHAPTERS[c.id] == c.module
        assert experiments.get(c.id) is c.experiment()
        assert callable(c.experiment().run) and callable(c.experiment().parameters)
        assert c.engines("quick") >= 1
        assert set(c.requires) < set(chapters.IDS) - {c.id}
    assert [c.number for c in chapters.CHAPTERS.values()] == list(range(len(chapters.CHAPTERS)))
    assert claims.ACROSS_HOSTS_CHAPTER in chapters.IDS and chapters.get(claims.ACROSS_HOSTS_CHAPTER).across_hosts
    with pytest.raises(KeyError, match="chapters are machine_limits"):
        chapters.get("nope")


def test_every_notebook_is_a_chapter_and_the_toc_lists_them_in_order():
    stored = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "notebooks").glob("*.ipynb"))
    assert stored == sorted(c.notebook_path.as_posix() for c in chapters.CHAPTERS.values())
    toc = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
    listed = [f["file"] for part in toc["parts"] for f in part["chapters"]]
    in_toc = [d for d in listed if d.startswith("notebooks/")]
    assert in_toc == [c.notebook for c in chapters.CHAPTERS.values()]
    for c in chapters.CHAPTERS.values():  # each notebook carries its chapter's label and heading
        text = (REPO / c.notebook_path).read_text(encoding="utf-8")
        assert f"({c.label})=" in text, c.id
        assert f"# {c.heading}" in text, c.id


def test_the_ledger_has_one_section_per_judging_chapter_and_every_claim_id_carries_its_prefix():
    page = (REPO / "book" / "ledger.md").read_text(encoding="utf-8")
    sections = re.findall(r"^## (\d+\. .+)$", page, flags=re.M)
    assert sections == [c.heading for c in chapters.judging()]
    for c in chapters.judging():
        assert f'book.ledger_markdown(led, "{c.id}")' in page
    seeds = claims.load_claims()  # load_claims checks every id's prefix and source against its chapter
    for c in chapters.judging():
        assert set(seeds[seeds["chapter"] == c.id]["source"].str[:4]) == {f"{c.seed}_"}
    assert set(seeds["chapter"]) == {c.id for c in chapters.judging()}
    assert chapters.dependents("machine_limits") == [c.id for c in chapters.CHAPTERS.values() if c.requires]
    assert chapters.dependents("scale_out") == []
    assert book.counts_table(claims.ledger()).index[:-1].str.startswith(tuple(c.heading for c in chapters.judging())).all()


def test_a_chapter_without_the_results_it_reads_refuses_before_any_engine_starts(results_tmp, monkeypatch):
    from ipcbench import cluster, lifecycle

    def no(*a, **k):
        raise AssertionError("nothing may start before the requirements are checked")

    monkeypatch.setattr(cluster.Cluster, "__init__", no)
    monkeypatch.setattr(lifecycle, "wait_for_quiet", no)
    for c in chapters.CHAPTERS.values():
        if not c.requires:
            continue
        with pytest.raises(experiments.RequirementsError, match=rf"no results for '{c.requires[0]}'"):
            experiments.drive(c.id, "quick")
    out = subprocess.run([sys.executable, "-m", "ipcbench.cli", "run", "fair_serialization", "--profile", "quick"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2 and "nothing was started" in out.stderr and "Traceback" not in out.stderr
