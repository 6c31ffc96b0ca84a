"""Every chapter notebook executes in the quick profile, and chapter 0 agrees with mpi4py.bench."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_in_quick_profile(path: Path, session_results, monkeypatch):
    monkeypatch.setenv("IPCBENCH_PROFILE", "quick")
    monkeypatch.setenv("IPCBENCH_RESULTS_DIR", str(session_results))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "store notebooks without outputs"
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "a chapter shows figures"


@pytest.mark.slow
def test_chapter0_agrees_with_mpi4py_bench(session_results, monkeypatch):
    monkeypatch.setenv("IPCBENCH_RESULTS_DIR", str(session_results))
    from ipcbench import results

    if not (session_results / "machine_limits" / "crosscheck.csv").exists():
        pytest.fail("chapter 0's notebook did not run first in this session")
    check = results.read("machine_limits").extra("crosscheck")
    required = check[check["required"]]
    assert set(required["metric"]) == {"one_way_latency", "bandwidth"}
    # the book's buffer-path 8 B latency and 16 MiB bandwidth agree with mpi4py.bench within 25%
    assert required["within_tolerance"].all(), required.to_string()
    summary = results.read("machine_limits").summary
    assert os.environ["IPCBENCH_RESULTS_DIR"] == str(session_results)
    assert set(summary.query("experiment == 'pingpong'")["variant"]) == {
        "mpi_buffer", "mpi_pickle", "mpi_pkl5", "zmq_ipc", "zmq_tcp"}  # fmt: skip
    assert (summary["n"] >= 5).all()


@pytest.mark.slow
def test_chapter1_gives_every_seed_000_claim_a_verdict(session_results, monkeypatch):
    monkeypatch.setenv("IPCBENCH_RESULTS_DIR", str(session_results))
    from ipcbench import backends, claims, results

    if not (session_results / "fair_serialization" / "claims.csv").exists():
        pytest.fail("chapter 1's notebook did not run first in this session")
    led = claims.ledger().query("chapter == 'fair_serialization'")
    assert (led["verdict"] != claims.PENDING).all(), led[led["verdict"] == claims.PENDING]["id"].tolist()
    assert set(led["verdict"]) <= set(claims.VERDICTS)
    summary = results.read("fair_serialization").summary
    # every broadcast backend ran every payload kind, with 1 and 3 readers
    ran = summary.query("metric == 'end_to_end'").groupby(["variant", "kind"])["readers"].agg(set)
    for b in backends.BROADCAST_BACKENDS:
        assert ran[(b, "records")] == {1, 3} and ran[(b, "array")] == {1, 3}, (b, ran)
    assert (summary.query("ranks > 2")["oversubscribed"]).all()
    assert not any(backends.leftovers().values())
