import numpy as np
import pandas as pd
import pytest

from ipcbench import claims, results
from ipcbench.measure import summarize


def _summary():
    stats = summarize(np.linspace(1e-6, 2e-6, 30))
    rows = [
        results.summary_row(stats, chapter="machine_limits", experiment="pingpong", variant=v, payload="uint8 array",
                            size_bytes=8, ranks=2, oversubscribed=False, metric="one_way_latency", unit="s", inner=4)
        for v in ("mpi_buffer", "zmq_ipc")
    ]  # fmt: skip
    return results.frame(rows), stats


def test_round_trip(results_tmp):
    summary, stats = _summary()
    samples = pd.DataFrame(results.sample_rows([1.0, 2.0], chapter="machine_limits", experiment="x", variant="v",
                                               payload="p", size_bytes=1, ranks=1, metric="m", unit="s"))  # fmt: skip
    d = results.write("machine_limits", summary, samples, {"profile": "quick", "params": {"a": np.int64(3)}},
                      extra={"fit": pd.DataFrame({"alpha": [1.0]})})  # fmt: skip
    assert d == results_tmp / "machine_limits"
    back = results.read("machine_limits")
    assert list(back.summary.columns[: len(results.SUMMARY_COLUMNS)]) == results.SUMMARY_COLUMNS
    assert back.summary["median"].tolist() == pytest.approx([stats.median] * 2)
    assert back.summary["inner"].tolist() == [4, 4]
    assert back.samples["value"].tolist() == [1.0, 2.0]
    assert back.meta["params"]["a"] == 3 and back.meta["chapter"] == "machine_limits" and back.meta["written"]
    assert back.extra("fit")["alpha"].tolist() == [1.0]


def test_schema_is_enforced(results_tmp):
    summary, _ = _summary()
    with pytest.raises(results.ResultsError, match="must start with"):
        results.write("machine_limits", summary.drop(columns=["cv"]), None, {})
    bad = summary.copy()
    bad["unit"] = "ms"
    with pytest.raises(results.ResultsError, match="unknown unit"):
        results.write("machine_limits", bad, None, {})
    with pytest.raises(results.ResultsError, match="unknown chapter"):
        results.write("chapter9", summary, None, {})


def test_missing_results_say_what_to_do(results_tmp):
    with pytest.raises(results.ResultsError, match="ipcbench run broadcast"):
        results.read("broadcast")


def test_judged_evidence_round_trip(results_tmp, tmp_path, monkeypatch):
    """A chapter's claims are judged from its results on disk and written as its evidence; the ledger reads them back."""
    import yaml

    seeds = claims.load_claims().query("chapter == 'pipeline'")
    first = seeds["id"].iloc[0]
    rules = {cid: {"kind": "not_testable", "reason": "because this is a test"} for cid in seeds["id"]}
    rules[first] = {"kind": "ratio", "select": {"experiment": "etl", "variant": "thread_pipeline", "metric": "speedup"}}
    p = tmp_path / "rules.yaml"
    p.write_text(yaml.safe_dump({"policy": {"tolerance": 0.25, "text": "test"}, "rules": rules}))
    monkeypatch.setenv("IPCBENCH_CLAIM_RULES", str(p))
    stats = summarize([0.9, 0.91, 0.89, 0.92, 0.88, 0.9, 0.91])
    row = results.summary_row(stats, chapter="pipeline", experiment="etl", variant="thread_pipeline", payload="python",
                              size_bytes=None, ranks=1, oversubscribed=False, metric="speedup", unit="x")  # fmt: skip
    results.write("pipeline", results.frame([row]), None, {})
    ev = claims.record("pipeline")
    assert list(ev.columns) == claims.EVIDENCE_COLUMNS
    led = claims.ledger().set_index("id")
    assert led.loc[first, "verdict"] == claims.REFUTED  # measured 0.9x against the claimed 2.55x: slower, not faster
    assert (led.loc[seeds["id"].iloc[1:], "verdict"] == claims.NOT_TESTABLE).all()
    assert (led["verdict"] == claims.PENDING).sum() == len(claims.load_claims()) - len(seeds)


def test_samples_of_points_that_share_the_schemas_labels_stay_apart():
    """Two points with the same schema labels (here: tokens differ) keep their own raw samples."""
    from ipcbench.experiments._common import sample_values

    rows, samples = [], []
    for tokens, vals in ((1, [1.0, 2.0, 3.0]), (128, [10.0, 20.0])):
        lab = {"chapter": "tensor_parallel", "experiment": "mlp", "variant": "s1", "payload": "numpy", "size_bytes": None,
               "ranks": 2, "oversubscribed": False, "metric": "total", "unit": "s", "tokens": tokens}  # fmt: skip
        rows.append(results.summary_row(summarize(vals), **lab))
        samples += results.sample_rows(vals, **lab)
    summary, samples = results.frame(rows), pd.DataFrame(samples)
    assert sample_values(summary, samples, tokens=128).tolist() == [10.0, 20.0]
    assert sample_values(summary, samples, tokens=1).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(results.ResultsError, match="exactly 1"):
        sample_values(summary, samples, variant="s1")
