"""The book's own pages: findings worded by the judge's verdicts, the ledger complete or the build stops, the
environment appendix, the chapters' headers, and the order in which Sphinx reads the pages."""

import json

import pandas as pd
import pytest
import yaml

from conftest import REPO, book_extension
from ipcbench import book, chapters, claims, results


def _row(verdict: str, **kw) -> dict:
    base = {"id": "fs-01", "verdict": verdict, "measured": 12.5, "measured_unit": "%", "ci_low": 10.0, "ci_high": 15.0,
            "n": 8, "value": 5, "unit": "%", "paraphrase": "All five backends are within 5% of each other."}  # fmt: skip
    return {**base, **kw}


def test_every_finding_has_a_wording_for_every_verdict_the_judge_can_give():
    found = book.load_findings()
    assert 6 <= len(found) <= 10
    for f in found:
        for verdict in claims.VERDICTS:
            text = book.finding_sentence(f, _row(verdict, id=f["claim"]))
            assert f"**{verdict}**" in text and f"<{f['section']}>" in text
            assert "12.5% [10.0, 15.0]" in text and "n = 8" in text  # the interval is always printed
            if verdict in f["says"]:  # the wording written for exactly this verdict, and no other
                head = f["says"][verdict].split("{")[0].strip()
                assert head in text
            else:  # the neutral form, and "undecided" only where the judge did not decide
                assert "he source claims “" in text
                assert ("Undecided in this build" in text) == (verdict == claims.INCONCLUSIVE)


def test_a_finding_is_worded_by_its_verdict_not_by_its_text():
    f = {"claim": "fs-01", "section": "s", "topic": "T.", "says": {"confirmed": "It holds ({measured})",
                                                                  "refuted": "It does not hold ({measured})"}}  # fmt: skip
    assert "It holds" in book.finding_sentence(f, _row("confirmed"))
    refuted = book.finding_sentence(f, _row("refuted"))
    assert "It does not hold" in refuted and "It holds" not in refuted
    assert ("Undecided in this build: the source claims “All five backends are within 5% of each other”"
            in book.finding_sentence(f, _row("inconclusive")))  # fmt: skip


def test_a_finding_says_beside_its_verdict_when_its_chapter_ran_on_a_noisy_machine():
    f = {"claim": "fs-01", "section": "s", "topic": "T.", "says": {"confirmed": "It holds ({measured})"}}
    for noisy, said in ((True, True), ("True", True), (False, False), (None, False), (float("nan"), False)):
        text = book.finding_sentence(f, _row("confirmed", noisy=noisy))
        assert ("**confirmed** (measured while the machine was noisy" in text) == said, (noisy, text)


def test_a_finding_shows_the_measured_comparison_without_the_judges_reasoning():
    ev = ("End to end. Claimed: 5%. Measured: (1) end-to-end time, ZeroMQ, 10 000 records: 10.8 ms [10.5, 11.1] (n = 24) "
          "against end-to-end time, LMDB, 10 000 records: 11.2 ms [9.9, 12.7] (n = 24); the intervals overlap "
          "[inconclusive]; (2) slowest backend over the fastest: 10% [2, 65] (n = 24), against the band at most 6.25%; "
          "the interval straddles an edge of the band [inconclusive]. Tolerance: 25% (the policy's default).")
    short = book.evidence_short(ev)
    assert short == ("end-to-end time, ZeroMQ, 10 000 records: 10.8 ms [10.5, 11.1] (n = 24) against end-to-end time, "
                     "LMDB, 10 000 records: 11.2 ms [9.9, 12.7] (n = 24); slowest backend over the fastest: 10% [2, 65] "
                     "(n = 24)")  # fmt: skip
    read = "Measured: fewest messages a reader received: 10 (n = 1), against the band 29.9 to 30.1 around messages sent = 30; the interval lies below the band."
    assert book.evidence_short(read) == "fewest messages a reader received: 10 (n = 1) against messages sent = 30"
    assert book.evidence_short(None) == "" and book.evidence_short("Not testable here because x.") == "Not testable here because x"


@pytest.mark.parametrize("change, message", [
    ({"claim": "xx-99"}, "no such claim"),
    ({"says": {"proven": "x"}}, "never gives"),
])  # fmt: skip
def test_findings_file_errors_are_specific(tmp_path, change, message):
    items = yaml.safe_load(book.FINDINGS_FILE.read_text())["findings"]
    items[0] = {**items[0], **change}
    p = tmp_path / "findings.yaml"
    p.write_text(yaml.safe_dump({"findings": items}))
    with pytest.raises(book.BookError, match=message):
        book.load_findings(p)


def test_every_finding_links_to_a_section_that_exists():
    labels = set()
    for nb in (REPO / "notebooks").glob("*.ipynb"):
        for cell in json.loads(nb.read_text())["cells"]:
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("(") and line.endswith(")="):
                    labels.add(line[1:-2])
    for f in book.load_findings():
        assert f["section"] in labels, f"finding on {f['claim']} links to {f['section']!r}, which no notebook defines"
    for ch in chapters.CHAPTERS.values():
        assert ch.label in labels
        if ch.claim_prefix:
            assert f"{ch.label}-verdicts" in labels  # the ledger page links every claim there


def test_the_ledger_page_stops_the_build_when_a_claim_has_no_verdict(results_tmp):
    with pytest.raises(book.BookError, match="no verdict"):
        book.full_ledger()


def _fake_ledger() -> pd.DataFrame:
    led = claims.load_claims()
    verdicts = list(claims.VERDICTS)
    return led.assign(verdict=[verdicts[i % len(verdicts)] for i in range(len(led))], measured=1.0, measured_unit="x",
                      ci_low=0.9, ci_high=1.1, n=6, evidence="e")  # fmt: skip


def test_ledger_counts_and_tables_cover_every_claim():
    led = _fake_ledger()
    t = book.counts_table(led)
    assert int(t.loc["all sources", "claims"]) == len(led)
    assert list(t.columns) == [*claims.VERDICTS, "claims"]
    compact = book.counts_compact(led)  # the page's narrow form: the same counts, one column per chapter
    assert list(compact.index) == [*claims.VERDICTS, "claims"] and compact.loc["claims", "all"] == len(led)
    assert list(compact.columns) == [f"ch. {i}" for i in range(1, len(compact.columns))] + ["all"]
    for chapter in set(led["chapter"]):
        md = book.ledger_markdown(led, chapter)
        ids = led.loc[led["chapter"] == chapter, "id"]
        items = [line for line in md.splitlines() if line.startswith("- ")]
        assert len(items) == len(ids)  # one block per claim, its id and verdict on its first line
        assert all(sum(f"{{ref}}`{i} <" in line for line in items) == 1 for i in ids)
        assert "|" not in md.replace("\\|", "")  # no table: the blocks wrap at any width
    fig = book.counts_figure(led)
    assert fig.axes and fig.axes[0].get_legend() is not None


def test_the_forest_plot_draws_every_judged_claim_once_and_lists_the_rest():
    import math

    import matplotlib

    matplotlib.use("Agg")
    led = _fake_ledger()
    n = len(led)
    # every kind of row: inside, outside both ways, beyond the axis, a sign flip, no value on the scale
    rel = [1.0, 0.5, 3.0, 100.0, -0.4, math.nan]
    led = led.assign(rel=[rel[i % len(rel)] for i in range(n)], rel_low=lambda d: d["rel"] * 0.9,
                     rel_high=lambda d: d["rel"] * 1.1, band_low=0.75, band_high=1.25)  # fmt: skip
    judged = led[~led["verdict"].isin([claims.NOT_TESTABLE])]
    fig = book.forest_figure(led)
    drawn = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
    assert sorted(drawn) == sorted(judged["id"]) and len(drawn) == len(set(drawn))
    assert len(fig.axes) == led["chapter"].nunique()  # one panel per source
    skipped = set(led["id"]) - set(judged["id"])
    text = book.not_plotted_text(led)
    assert skipped and all(i in text for i in skipped)
    one = book.forest_figure(led, "pipeline")
    assert [t.get_text() for t in one.axes[0].get_yticklabels()] == list(judged.loc[judged["chapter"] == "pipeline", "id"])
    assert all(ax.get_xscale() == "log" for ax in fig.axes)


def test_chapter_header_run_times_and_downloads(results_tmp, tmp_path, monkeypatch):
    row = {c: None for c in results.SUMMARY_COLUMNS}
    row.update({"chapter": "pipeline", "experiment": "etl", "variant": "serial", "metric": "wall", "unit": "s", "n": 6,
                "median": 1.0, "ci_low": 0.9, "ci_high": 1.1, "ci_level": 0.97, "unstable": False})  # fmt: skip
    summary = results.frame([row])
    env = {"cpu_model": "Test CPU", "usable_cores": 2, "logical_cores": 2, "memory_bytes": 24 * 2**30}
    results.write("pipeline", summary, None, {"profile": "quick", "environment": env})
    with pytest.raises(results.ResultsError, match="run it first"):
        results.update_meta("broadcast", run_time_s={"total": 1.0})
    results.update_meta("pipeline", run_time_s={"total": 12.0, "cluster_start": 2.0, "experiments": 9.0,
                                                "sections": {"ETL": 7.5, "memory": 1.5}})  # fmt: skip
    results.write_table("pipeline", "claims", pd.DataFrame({"claim_id": ["pl-01"]}))
    monkeypatch.chdir(REPO / "notebooks")  # a page executes in its own directory
    h = book.chapter_header("pipeline")
    assert h["profile"] == "quick" and h["run_time"] == "12 s"
    assert h["machine"] == "Test CPU, 2 usable cores (2 logical), 24 GiB memory"
    assert "{download}`pipeline/summary.csv <" in h["downloads"] and "claims.csv" in h["downloads"]
    rel = h["downloads"].split("<")[1].split(">")[0]
    assert (REPO / "notebooks" / rel).resolve() == (results_tmp / "pipeline" / "summary.csv").resolve()
    rt = book.run_times_table()
    assert list(rt["chapter"]) == ["4. Pipeline parallelism", "all chapters"]
    assert rt["longest section"].iloc[0] == "ETL (8 s)" and rt["total (s)"].iloc[-1] == 12.0


def test_pages_built_from_results_are_read_last_and_again_when_a_chapter_is_read(tmp_path):
    from types import SimpleNamespace

    ext = book_extension()
    docs = sorted(["book/findings", "book/decisions", "book/intro", "book/ledger", "book/environment",
                   "book/methodology", "book/reproducibility", "notebooks/00_machine_limits",
                   "notebooks/05_tensor_parallel"])  # fmt: skip
    order = list(docs)
    ext._order(None, None, order)
    assert order[-5:] == ["book/findings", "book/decisions", "book/ledger", "book/reproducibility", "book/environment"]
    assert order[:4] == ["book/intro", "book/methodology", "notebooks/00_machine_limits", "notebooks/05_tensor_parallel"]

    app = SimpleNamespace(srcdir=str(REPO), doctreedir=str(tmp_path / ".doctrees"))
    env = SimpleNamespace(found_docs=set(docs), mystnb_config=SimpleNamespace(execution_cache_path=str(tmp_path / "c")))
    chapters_read = ["notebooks/00_machine_limits", "notebooks/05_tensor_parallel"]
    # nothing recorded: every chapter executes, then the pages built from their results
    assert ext._outdated(app, env, set(), set(), set()) == chapters_read + list(ext.LAST)
    for d in chapters_read:  # each chapter read records the inputs it ran with
        app.env = SimpleNamespace(docname=d)
        ext._executed(app, None)
    assert ext._outdated(app, env, set(), set(), set()) == []
    assert ext._outdated(app, env, set(), {"notebooks/05_tensor_parallel"}, set()) == list(ext.LAST)
    assert ext._outdated(app, env, set(), {"book/intro"}, set()) == []
    assert ext._outdated(app, env, set(), {"notebooks/00_machine_limits", "book/ledger"}, set()) == [
        "book/findings", "book/decisions", "book/reproducibility", "book/environment"]
    for page in ext.LAST:  # executed on every read, never from the cache; MyST roles in their Markdown outputs
        front = (REPO / f"{page}.md").read_text().split("---")[1]
        meta = yaml.safe_load(front)["mystnb"]
        assert meta == {"execution_mode": "force", "render_markdown_format": "myst"}


def test_progress_sections_record_their_time():
    import time

    from ipcbench.experiments import _common

    _common.SECTION_TIMES.clear()

    def slow():
        for i in (1, 2, 3):
            time.sleep(0.02)
            yield i

    assert list(_common.progress(slow(), "a section")) == [1, 2, 3]
    assert 0.06 <= _common.SECTION_TIMES["a section"] < 1.0  # the bar's section holds the loop's own time
    _common.add_time("a section", 1.0)
    assert 1.06 <= _common.SECTION_TIMES["a section"] < 2.0
    _common.add_time("a finer split", 0.5)
    assert _common.SECTION_TIMES["a finer split"] == 0.5


def test_findings_on_rules_with_several_cases_are_worded_on_every_case():
    _policy, rules = claims.load_rules()
    for f in book.load_findings():
        if len(rules[f["claim"]].get("cases") or []) > 1:
            for verdict, text in f["says"].items():
                assert "{evidence}" in text and "{measured}" not in text, (f["claim"], verdict)


def test_every_table_reads_as_a_table():
    import numpy as np

    from ipcbench import plots

    df = pd.DataFrame({("size", "B"): [10.0, 10000.0], ("time", "ms"): [0.333333, np.nan], "name": ["a", None]})
    html = plots.book_table(df).to_html()
    assert "size / B" in html and "time / ms" in html and "('size'" not in html  # flat headers
    assert ">10<" in html and ">10 000<" in html and ">0.333<" in html  # integers whole, 3 digits otherwise
    assert "nan" not in html.lower() and "None" not in html
    assert 'class="row_heading' not in html  # no bare row numbers
    named = plots.book_table(pd.DataFrame({"v": [1.5]}, index=pd.Index(["x"], name="variant"))).to_html()
    assert ">variant<" in named and ">x<" in named  # a named index is a column
    clash = plots.book_table(pd.DataFrame({"v": [1.0]}, index=pd.Index(["x"], name="v"))).to_html()
    assert ">x<" in clash
    long = plots.book_table(pd.DataFrame({"i": range(plots.TABLE_ROWS + 5)})).to_html()
    shown = plots.TABLE_SHOWN
    assert f"The first {shown} of {plots.TABLE_ROWS + 5} rows" in long and f">{shown - 1}<" in long and f">{shown}<" not in long
    import base64
    import re

    link = re.search(r'download="table.csv" href="data:text/csv;base64,([^"]+)">all (\d+) rows as CSV</a>', long)
    assert link and int(link.group(2)) == plots.TABLE_ROWS + 5
    assert base64.b64decode(link.group(1)).decode().splitlines() == ["i", *map(str, range(plots.TABLE_ROWS + 5))]
    dup = pd.DataFrame([[1.0, 2.0]], columns=["a", "a"])
    assert ">2<" in plots.book_table(dup).to_html()
