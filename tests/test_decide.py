"""The "What should I use?" page: each case's fastest choice, its runner-up and whether their intervals are apart, from
rows (synthetic here, and the shipped reference build), every table on the page, every choice in plain words."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ipcbench import compare, decide

REPO = Path(__file__).resolve().parents[1]

TABLE = {"id": "t", "question": "q", "better": "lower", "choice": ["variant"], "columns": "readers",
         "parts": [{"chapter": "fair_serialization", "experiment": "arrays", "metric": "end_to_end",
                    "row": "{array_bytes} array", "section": "sec"}]}  # fmt: skip
WORDS = {"variant": {"a": "channel A", "b": "channel B", "c": "channel C"}}


class Rows:
    """Stands in for the results tree: one chapter's summary."""

    def __init__(self, df: pd.DataFrame | None, chapter: str = "fair_serialization"):
        self.df, self.chapter = df, chapter

    def summary(self, chapter):
        return self.df if chapter == self.chapter else None


def _row(variant, median, low, high, size=64, readers=1, unstable=False, metric="end_to_end"):
    return {"experiment": "arrays", "metric": metric, "variant": variant, "array_bytes": size, "readers": readers,
            "median": median, "ci_low": low, "ci_high": high, "unit": "s", "unstable": unstable,
            "oversubscribed": readers > 1}  # fmt: skip


def test_the_fastest_is_apart_when_its_interval_and_the_runner_ups_do_not_overlap():
    df = pd.DataFrame([_row("b", 20e-6, 19e-6, 21e-6), _row("a", 10e-6, 9e-6, 11e-6), _row("c", 40e-6, 30e-6, 50e-6)])
    [cell] = decide.cells(TABLE, Rows(df), WORDS)
    assert cell.names == ["channel A", "channel B", "channel C"] and cell.apart is True and cell.tied == []
    assert cell.margin == pytest.approx(2.0) and (cell.case, cell.column) == ("64 B array", "1 reader")
    text = decide.cell_text(cell)
    assert text.startswith("**{ref}`channel A <sec>`** 10.0 µs [9.0, 11.0].")
    assert "Next: channel B 20.0 µs [19.0, 21.0], 2x slower; apart." in text and "Unstable" not in text


def test_overlapping_intervals_name_every_choice_not_told_apart():
    df = pd.DataFrame([_row("a", 10e-6, 8e-6, 15e-6, unstable=True), _row("b", 12e-6, 9e-6, 16e-6),
                       _row("c", 40e-6, 30e-6, 50e-6)])  # fmt: skip
    [cell] = decide.cells(TABLE, Rows(df), WORDS)
    assert cell.apart is False and cell.tied == ["channel B"] and cell.unstable
    text = decide.cell_text(cell)
    assert "Not told apart from: channel B 12.0 µs [9.0, 16.0]." in text and "channel C" not in text
    assert text.endswith("*Unstable.*")


def test_a_rate_is_better_higher_and_one_choice_alone_is_said_so():
    t = dict(TABLE, better="higher")
    df = pd.DataFrame([_row("a", 1e9, 0.9e9, 1.1e9), _row("b", 3e9, 2.9e9, 3.1e9), _row("c", 5e9, 4e9, 6e9, size=4096)])
    cells = decide.cells(t, Rows(df), WORDS)
    assert [c.case for c in cells] == ["64 B array", "4 KiB array"]
    assert cells[0].names[0] == "channel B" and cells[0].apart and cells[0].margin == pytest.approx(3.0)
    assert cells[1].apart is None and "The only choice measured." in decide.cell_text(cells[1])


def test_cases_and_columns_make_a_table_with_unmeasured_cells_said_so():
    df = pd.DataFrame([_row("a", 1e-5, 0.9e-5, 1.1e-5), _row("b", 2e-5, 1.9e-5, 2.1e-5),
                       _row("a", 5e-5, 4e-5, 6e-5, readers=3), _row("b", 1e-5, 0.9e-5, 1.1e-5, size=65536)])  # fmt: skip
    md = decide.table_markdown(TABLE, decide.cells(TABLE, Rows(df), {**WORDS, "readers": {"3": "3 readers"}}))
    lines = md.splitlines()
    assert lines[0] == "| Case | 1 reader | 3 readers |"
    assert lines[2].startswith("| 64 B array |") and "*Oversubscribed.*" in lines[2]
    assert lines[3].startswith("| 64 KiB array |") and lines[3].endswith("| not measured |")


def test_a_chapter_that_did_not_run_leaves_its_table_unmeasured():
    assert decide.cells(TABLE, Rows(None), WORDS) == []
    assert decide.table_markdown(TABLE, []) == "*Not measured in this build.*"


def test_rows_without_an_interval_are_left_out_and_a_missing_column_is_named():
    df = pd.DataFrame([_row("a", 1e-5, float("nan"), 1.1e-5), _row("b", 2e-5, 1.9e-5, 2.1e-5)])
    [cell] = decide.cells(TABLE, Rows(df), WORDS)
    assert cell.names == ["channel B"]
    with pytest.raises(decide.DecisionError, match=r"no column\(s\) \['readers'\]"):
        decide.cells(TABLE, Rows(df.drop(columns="readers")), WORDS)


@pytest.mark.parametrize(
    ("change", "message"),
    [(lambda t: t.pop("question"), "has no 'question'"),
     (lambda t: t.update(better="faster"), "write lower or higher"),
     (lambda t: t["parts"][0].pop("section"), "has no 'section'"),
     (lambda t: t["parts"][0].update(chapter="nope"), "unknown chapter 'nope'")],
)  # fmt: skip
def test_a_malformed_decision_file_is_refused_by_name(tmp_path, change, message):
    data = yaml.safe_load(decide.DECISIONS_FILE.read_text())
    change(data["tables"][0])
    p = tmp_path / "decisions.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(decide.DecisionError, match=re.escape(message)):
        decide.load(str(p))


def test_every_table_is_on_the_page_and_links_to_a_section_that_exists():
    page = (REPO / "book" / "decisions.md").read_text()
    labels = set()
    for nb in (REPO / "notebooks").glob("*.ipynb"):
        for c in json.loads(nb.read_text())["cells"]:
            labels |= set(re.findall(r"^\(([\w-]+)\)=$", "".join(c["source"]), flags=re.M))
    for t in decide.load()["tables"]:
        assert f'decide.show("{t["id"]}")' in page, t["id"]
        for part in t["parts"]:
            assert part["section"] in labels, part["section"]


def test_every_choice_and_case_of_the_shipped_reference_build_reads_in_plain_words(monkeypatch):
    ref = compare.reference_dir()
    if ref is None or not (ref / "fair_serialization" / "summary.csv").exists():
        pytest.skip("no reference build is shipped")
    monkeypatch.setenv("IPCBENCH_RESULTS_DIR", str(ref))
    data = decide.load()
    total = 0
    for t in data["tables"]:
        cells = decide.cells(t, None, data["words"])
        assert cells, f"table {t['id']} has no case in the reference build"
        total += len(cells)
        for c in cells:
            for text in [c.case, c.column, *c.names]:
                assert not re.search(r"\b[a-z0-9]+_[a-z0-9_]+\b", text), f"{t['id']}: internal name in {text!r}"
                assert not re.search(r"\b(\w+) \1\b", text), f"{t['id']}: a word doubled in {text!r}"
            decide.cell_text(c)
    assert total >= 20
    assert "cases below" in decide.summary_sentence()
    assert decide.show("channel").startswith("Each number: end to end per message")
