"""`ipcbench compare` sets two results trees side by side: rows that moved, verdicts that flipped, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from ipcbench import claims, compare, results
from ipcbench.measure import Replicated, summarize


def _tree(root, monkeypatch, speed: float, wall_scale: float = 1.0, schema: int | None = None):
    """Write a synthetic 'pipeline' chapter under ``root``: a speed-up row (pl-01 reads it) and two wall times."""
    monkeypatch.setenv("IPCBENCH_RESULTS_DIR", str(root))
    rng = np.random.default_rng(int(speed * 100))
    rows, samples = [], []
    for variant, metric, unit, center in (("thread_pipeline", "speedup", "x", speed),
                                          ("serial", "wall_time", "s", 2.0 * wall_scale),
                                          ("process_pool", "wall_time", "s", 1.0)):  # fmt: skip
        vals = Replicated(center * rng.lognormal(0, 0.01, 18), np.repeat([0, 1, 2], 6))
        lab = {"chapter": "pipeline", "experiment": "etl", "variant": variant, "payload": "python", "size_bytes": None,
               "ranks": 2, "oversubscribed": False, "metric": metric, "unit": unit}  # fmt: skip
        rows.append(results.summary_row(summarize(vals), **lab, n_records=25_000))
        samples += results.sample_rows(vals, **lab, n_records=25_000)
    meta = {"profile": "standard", "environment": {"cpu_model": "test CPU", "cores": 2},
            "machine_state": {"quiet": True, "flags": []}}  # fmt: skip
    results.write("pipeline", results.frame(rows), pd.DataFrame(samples), meta)
    if schema is not None:
        p = root / "pipeline" / "meta.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), "schema": schema}))
    return root


@pytest.fixture
def rules(tmp_path):
    """A rules file for chapter 4's claims alone: pl-01 reads the synthetic speed-up, the rest are not testable."""
    doc = yaml.safe_load(claims.rules_path().read_text(encoding="utf-8"))
    ids = claims.load_claims().query("chapter == 'pipeline'")["id"]
    doc["rules"] = {cid: {"kind": "not_testable", "reason": "because a test"} for cid in ids}
    doc["rules"]["pl-01"] = {"kind": "ratio", "select": {"experiment": "etl", "variant": "thread_pipeline",
                                                         "metric": "speedup", "payload": "python"}}  # fmt: skip
    p = tmp_path / "rules.yaml"
    p.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return p


def test_compare_reports_the_rows_that_moved_and_the_claims_that_flipped(tmp_path, monkeypatch, rules):
    a = _tree(tmp_path / "a", monkeypatch, speed=2.5)
    b = _tree(tmp_path / "b", monkeypatch, speed=0.5, wall_scale=1.5)
    c = compare.compare_trees(a, b, rules_file=rules)
    rows = c.rows.set_index("variant")
    assert rows.loc["serial", "b_is"] == "slower" and rows.loc["serial", "b_over_a"] == pytest.approx(1.5, rel=0.02)
    assert rows.loc["process_pool", "b_is"] == "no different"
    assert rows.loc["thread_pipeline", "b_is"] == "lower" and rows.loc["thread_pipeline", "apart"]
    assert "bootstrap" in rows.loc["serial", "ratio_interval"]
    cl = c.claims.set_index("id")
    assert (cl.loc["pl-01", "verdict_a"], cl.loc["pl-01", "verdict_b"]) == (claims.CONFIRMED, claims.REFUTED)
    assert list(c.flips()["id"]) == ["pl-01"]
    counts = c.claim_counts().set_index("chapter")
    assert counts.loc["all", "flips"] == 1 and counts.loc["all", "differ"] == 1
    moved = c.moved().set_index("chapter")
    assert moved.loc["pipeline", "rows"] == 3 and moved.loc["pipeline", "apart"] == 2
    assert c.environments.set_index("fact").loc["cpu_model", "same"]
    # the same tree against itself: nothing moves, nothing flips
    same = compare.compare_trees(a, a, rules_file=rules)
    assert (same.rows["b_is"] == "no different").all() and same.flips().empty


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ipcbench.cli", "compare", *map(str, args)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_compare_cli_formats_and_fail_on_flip(tmp_path, monkeypatch, rules):
    a = _tree(tmp_path / "a", monkeypatch, speed=2.5)
    b = _tree(tmp_path / "b", monkeypatch, speed=0.5)
    out = _cli(a, b, "--rules", rules)
    assert out.returncode == 0 and "pl-01" in out.stdout and "Claims per chapter" in out.stdout, out.stderr
    assert _cli(a, b, "--rules", rules, "--fail-on-flip").returncode == 1
    assert _cli(a, a, "--rules", rules, "--fail-on-flip").returncode == 0
    md = _cli(a, b, "--rules", rules, "--format", "markdown")
    assert md.returncode == 0 and "## Claims" in md.stdout and "| pl-01 |" in md.stdout
    csv = _cli(a, b, "--rules", rules, "--format", "csv")
    table = pd.read_csv(__import__("io").StringIO(csv.stdout))
    assert len(table) == 3 and {"a", "b", "b_over_a", "ratio_low", "ratio_high", "b_is"} <= set(table.columns)


def test_compare_refuses_bad_input_clearly(tmp_path, monkeypatch, rules):
    a = _tree(tmp_path / "a", monkeypatch, speed=2.5)
    for args, match in [((tmp_path / "nope", a), "does not exist"),
                        ((a, tmp_path), "holds no chapter's results")]:  # fmt: skip
        out = _cli(*args, "--rules", rules)
        assert out.returncode == 2 and match in out.stderr and "Traceback" not in out.stderr, out.stderr
    newer = _tree(tmp_path / "newer", monkeypatch, speed=2.5, schema=results.SCHEMA_VERSION + 1)
    out = _cli(a, newer, "--rules", rules)
    assert out.returncode == 2 and "schema" in out.stderr and "Traceback" not in out.stderr
    older = _tree(tmp_path / "older", monkeypatch, speed=2.5, schema=1)
    out = _cli(a, older, "--rules", rules)
    assert out.returncode == 0 and "schema 1" in out.stdout
    broken = _tree(tmp_path / "broken", monkeypatch, speed=2.5)
    (broken / "pipeline" / "summary.csv").write_bytes(b"\x00\xff" * 50)
    out = _cli(a, broken, "--rules", rules)
    assert out.returncode == 2 and "summary.csv" in out.stderr and "Traceback" not in out.stderr
    # a chapter in one tree only is named, and the rest compared
    other = _tree(tmp_path / "other", monkeypatch, speed=2.5)
    import shutil

    shutil.copytree(other / "pipeline", other / "tensor_parallel")
    df = pd.read_csv(other / "tensor_parallel" / "summary.csv")
    df["chapter"] = "tensor_parallel"
    df.to_csv(other / "tensor_parallel" / "summary.csv", index=False)
    c = compare.compare_trees(a, other, rules_file=rules)
    assert any("tensor_parallel" in n and "only" in n for n in c.notes)


def test_the_reproducibility_page_builds_with_and_without_a_reference(tmp_path, monkeypatch, rules):
    from ipcbench import book

    assert "No reference build is shipped" in book.reproducibility_markdown(None)
    monkeypatch.setenv("IPCBENCH_CLAIM_RULES", str(rules))
    ref = _tree(tmp_path / "ref", monkeypatch, speed=2.5)
    _tree(tmp_path / "build", monkeypatch, speed=0.5)  # (IPCBENCH_RESULTS_DIR now points here: this build)
    (ref / "reference.json").write_text(json.dumps({"commit": "abc1234", "profile": "standard", "built": "today",
                                                    "machine": "a test machine",
                                                    "remeasured": [{"chapter": "pipeline", "commit": "def5678",
                                                                    "built": "later", "why": "it measures more"}]}))  # fmt: skip
    text = book.reproducibility_markdown(book.reproducibility(ref))
    assert "abc1234" in text and "pl-01" in text and "confirmed" in text and "refuted" in text
    assert "“4. Pipeline parallelism” was measured again on later, with commit `def5678`: it measures more." in text
    assert str(tmp_path) not in text, "the page names no path of this machine"
    assert book.reproducibility(None) is None
    empty = tmp_path / "empty_reference_dir"
    empty.mkdir()
    assert compare.reference_dir(empty) is None


def test_a_tree_the_rules_cannot_judge_is_named_and_its_rows_still_compared(tmp_path, monkeypatch, rules):
    a = _tree(tmp_path / "a", monkeypatch, speed=2.5)
    old = _tree(tmp_path / "old", monkeypatch, speed=2.5)
    s = pd.read_csv(old / "pipeline" / "summary.csv")
    s[s["variant"] != "thread_pipeline"].to_csv(old / "pipeline" / "summary.csv", index=False)  # pl-01's row is gone
    c = compare.compare_trees(a, old, rules_file=rules, names=("A", "the old tree"))
    assert any(n.startswith("the old tree cannot be judged by these rules") for n in c.notes), c.notes
    assert c.claims.empty and len(c.rows) == 2 and c.flips().empty
    assert "cannot be judged" in compare.as_text(c, "markdown")
