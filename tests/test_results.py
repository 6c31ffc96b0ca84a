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


def test_claims_evidence_round_trip(results_tmp):
    seeds = claims.load_claims()
    cid = seeds.query("chapter == 'fair_serialization'")["id"].iloc[0]
    row = claims.evidence(cid, 1.5, "x", "refuted", "measured at N = 10 000")
    claims.record("fair_serialization", [row])
    led = claims.ledger()
    assert led.set_index("id").loc[cid, "verdict"] == "refuted"
    assert (led["verdict"] == claims.PENDING).sum() == len(seeds) - 1


def test_claims_evidence_is_validated(results_tmp):
    cid = claims.load_claims()["id"].iloc[0]
    with pytest.raises(claims.ClaimsError, match="not one of"):
        claims.evidence(cid, 1, "x", "maybe", "")
    with pytest.raises(claims.ClaimsError, match="must say why"):
        claims.evidence(cid, None, "", "not testable here", "no GPU")
    with pytest.raises(claims.ClaimsError, match="not in data/seeds"):
        claims.evidence("nope-1", 1, "x", "confirmed", "")
    other = claims.load_claims().query("chapter == 'pipeline'")["id"].iloc[0]
    with pytest.raises(claims.ClaimsError, match="other chapters"):
        claims.record("broadcast", [claims.evidence(other, 1, "x", "confirmed", "e")])
