"""Chapter 6's analysis: alpha-beta per link, the ring model's projection against measured rows, the RPC projection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ipcbench import hosts
from ipcbench import tensor_parallel as tp
from ipcbench.experiments import scale_out as so

ALPHA, BETA = 20e-6, 100e6


def _row(**kw):
    m = kw.pop("median")
    spread = kw.pop("spread", 0.02)
    return {"chapter": so.CHAPTER, "payload": "x", "oversubscribed": False, "unit": "s", "n": 20, "median": m,
            "ci_low": m * (1 - spread), "ci_high": m * (1 + spread), "ci_level": 0.95, **kw}  # fmt: skip


def _summary(collective_factor: float = 1.0, link: str = "1GbE") -> pd.DataFrame:
    rows = [_row(experiment="pingpong", variant="mpi_buffer", size_bytes=s, ranks=2, hosts=2, link=link,
                 metric="one_way_latency", median=ALPHA + s / BETA) for s in (8, 1024, 65536, 1 << 20, 4 << 20)]  # fmt: skip
    for op in ("Allgather", "Allreduce"):
        for s in (65536, 1 << 20):
            rows.append(_row(experiment="collective", variant=op, size_bytes=s, ranks=2, hosts=2, link=link,
                             metric="total", median=collective_factor * tp.ring_time(op, s, 2, ALPHA, BETA)))  # fmt: skip
    return pd.DataFrame(rows)


def test_fit_recovers_the_link_and_compares_it_with_the_configured_rate():
    fit = so.fits(_summary()).set_index("link")
    assert fit.loc["1GbE", "alpha_s"] == pytest.approx(ALPHA, rel=1e-6)
    assert fit.loc["1GbE", "beta_Bps"] == pytest.approx(BETA, rel=1e-6)
    assert fit.loc["1GbE", "beta_over_configured"] == pytest.approx(BETA / (hosts.LINKS["1GbE"].rate_bps / 8))
    # the two-regime fit: alpha from the smallest message, beta from the large ones only
    assert fit.loc["1GbE", "alpha_small_s"] == pytest.approx(ALPHA + 8 / BETA)
    assert fit.loc["1GbE", "beta_large_Bps"] == pytest.approx(BETA, rel=1e-6)


@pytest.mark.parametrize("factor, holds", [(1.0, True), (1.2, True), (2.0, False), (0.5, False)])
def test_projection_holds_only_within_tolerance_of_the_interval(factor, holds):
    pe = so.projection_errors(_summary(factor), pd.DataFrame())
    fit_rows = pe[pe["model"] == "ping-pong fit"]
    assert len(fit_rows) == 4 and len(pe[pe["model"] == "two-regime fit"]) == 4
    assert fit_rows["error"].to_numpy() == pytest.approx(1 / factor - 1, rel=1e-6)
    assert (fit_rows["holds"] == holds).all()
    # stated parameters exist for a shaped link, and not for an unshaped one
    assert set(pe["model"]) == {"ping-pong fit", "two-regime fit", "stated (chapter 5)"}
    assert set(so.projection_errors(_summary(factor, "unshaped"), pd.DataFrame())["model"]) == {"ping-pong fit", "two-regime fit"}


def test_mlp_projection_sums_the_layouts_collectives():
    s = _summary()
    s = pd.concat([s, pd.DataFrame([_row(experiment="mlp", variant="s3", size_bytes=np.nan, ranks=2, hosts=2,
                                         link="1GbE", metric="in_collectives_min", median=0.01)])])  # fmt: skip
    calls = pd.DataFrame([{"link": "1GbE", "strategy": "s3", "op": "Allreduce", "result_bytes": 1 << 19}])
    pe = so.projection_errors(s, calls)
    mlp = pe[(pe["what"] == "MLP s3 (2 hosts)") & (pe["model"] == "ping-pong fit")].iloc[0]
    assert mlp["predicted_s"] == pytest.approx(tp.ring_time("Allreduce", 1 << 19, 2, ALPHA, BETA), rel=1e-6)


def test_latency_projection_adds_one_round_trip_per_call():
    rows = []
    for conf, token_s, calls in (("baseline", 0.02, 14), ("fused", 0.015, 4), ("best", 0.014, 4)):
        for metric, v in (("tokens_per_s", 1 / token_s), ("token", token_s), ("overhead", 0.005),
                          ("calls_per_token", calls), ("bytes_per_token", 1e5)):  # fmt: skip
            rows.append(_row(experiment="rpc", variant=conf, size_bytes=np.nan, ranks=2, hosts=2, link="1GbE",
                             metric=metric, median=v))  # fmt: skip
    lp = so.latency_projection(pd.DataFrame(rows), added=[0.0, 0.01]).set_index(["config", "added_one_way_s"])
    assert lp.loc[("baseline", 0.0), "tokens_per_s"] == pytest.approx(50)
    assert lp.loc[("baseline", 0.01), "tokens_per_s"] == pytest.approx(1 / (0.02 + 14 * 0.02))
    assert lp.loc[("fused", 0.01), "tokens_per_s"] == pytest.approx(1 / (0.015 + 4 * 0.02))


def test_the_chapter_says_what_it_needs_where_it_cannot_run(monkeypatch):
    from ipcbench import experiments

    monkeypatch.setattr(hosts, "requirements_problem", lambda: "emulated hosts need root")
    with pytest.raises(hosts.HostsError, match="cannot run here: emulated hosts need root"):
        experiments.drive("scale_out", "quick")  # (the driver enters the chapter's make_cluster)
    with pytest.raises(ValueError, match="engines on emulated hosts"):
        so.run(object(), "quick")
    with pytest.raises(experiments.EnginesError, match="do not apply"):
        experiments.drive("scale_out", "quick", engines_n=4)


def _write_scale_out(tmp_path, monkeypatch, allgather_us: float, allreduce_us: float, comm_ms: float, compute_ms: float,
                     n: int = 20) -> None:
    from ipcbench import results
    from ipcbench.measure import summarize

    monkeypatch.setenv("IPCBENCH_RESULTS_DIR", str(tmp_path))
    rng = np.random.default_rng(0)
    rows = []
    lab = {"chapter": so.CHAPTER, "payload": "float32", "ranks": 2, "hosts": 2, "link": "1GbE", "oversubscribed": False,
           "unit": "s"}  # fmt: skip
    for variant, us in (("Allgather", allgather_us), ("Allreduce", allreduce_us)):
        v = us * 1e-6 * (1 + 0.01 * rng.standard_normal(n))
        rows.append(results.summary_row(summarize(v), **lab, experiment="collective", variant=variant, size_bytes=8,
                                        metric="total"))  # fmt: skip
    for metric, ms in (("communication", comm_ms), ("compute", compute_ms)):
        v = ms * 1e-3 * (1 + 0.01 * rng.standard_normal(n))
        rows.append(results.summary_row(summarize(v), **{**lab, "payload": "numpy"}, experiment="mlp", variant="s2",
                                        size_bytes=None, metric=metric))  # fmt: skip
    results.write(so.CHAPTER, results.frame(rows), None, {"profile": "quick"})


@pytest.mark.parametrize("values, want", [
    ((20, 30, 25, 10), {"tp-12": "confirmed", "tp-13": "confirmed"}),
    ((20, 30, 12, 10), {"tp-12": "confirmed", "tp-13": "partly"}),  # communication exceeds compute, not "far"
    ((200, 300, 5, 10), {"tp-12": "refuted", "tp-13": "refuted"}),
    ((20, 300, 10, 10), {"tp-12": "partly", "tp-13": "inconclusive"}),
    ((150, 150, 10, 10), {"tp-12": "inconclusive", "tp-13": "inconclusive"}),  # intervals across the band's edge
    # (an absolute time from the source's machine: 10-50 µs within a factor of 3, so 150 µs is the edge)
])  # fmt: skip
def test_source_claims_are_judged_again_across_hosts_by_the_same_judge(tmp_path, monkeypatch, values, want):
    from ipcbench import claims

    _write_scale_out(tmp_path, monkeypatch, *values)
    got = claims.judge_across_hosts().set_index("claim_id")
    assert got["verdict"].to_dict() == want
    assert set(got["chapter"]) == {"tensor_parallel"}  # the claim's own chapter keeps its own verdict


def test_across_hosts_rules_name_real_claims(tmp_path):
    from ipcbench import claims

    assert set(claims.load_across_hosts_rules()) == {"tp-12", "tp-13"}
    bad = tmp_path / "rules.yaml"
    bad.write_text(claims.rules_path().read_text() + "\n  xx-99: {kind: value, select: {experiment: x}}\n")
    with pytest.raises(claims.ClaimsError, match="xx-99"):
        claims.load_across_hosts_rules(bad)


def test_engines_on_emulated_hosts_are_always_started_here(monkeypatch):
    from ipcbench.cluster import Cluster, ClusterError

    monkeypatch.setenv("IPCBENCH_CLUSTER_PROFILE", "big")
    assert Cluster(n=2).profile == "big"
    c = Cluster(n=2, hosts=object())
    assert c.owned and c.profile is None
    with pytest.raises(ClusterError, match="emulated hosts"):
        Cluster(n=2, hosts=object(), profile="big")


def test_a_run_whose_bytes_did_not_cross_the_link_is_an_error():
    row = {"experiment": "pingpong", "link": "1GbE", "h0_tx_bytes": 5_000_000, "h1_tx_bytes": 8_941}
    so._require_crossed({**row, "h1_tx_bytes": 5_000_000}, ["h0", "h1"], 1_000_000)
    with pytest.raises(RuntimeError, match="did not cross"):
        so._require_crossed(row, ["h0", "h1"], 1_000_000)


def test_small_collective_growth_from_2_to_4_hosts():
    rows = [_row(experiment="collective", variant="Allgather", size_bytes=8, ranks=p, hosts=p, link=link, metric="total",
                 median=m) for link, p, m in (("1GbE", 2, 10e-6), ("1GbE", 4, 60e-6), ("10GbE", 2, 10e-6),
                                              ("10GbE", 4, 80e-6))]  # fmt: skip
    g = so.small_collective_growth(pd.DataFrame(rows))
    assert g == {"measured": pytest.approx(7.0), "model": pytest.approx(3.0), "links": 2}
    assert so.small_collective_growth(pd.DataFrame(rows[:1] + rows[2:3])) is None


def test_links_are_swept_up_to_the_first_rate_the_machine_cannot_carry():
    links = ["unshaped", "25GbE", "10GbE", "1GbE"]
    rate = {k: (hosts.LINKS[k].rate_bps or 0) / 8 for k in links}
    # this VM: 1GbE reached, 10 and 25 Gb/s both capped at ~0.9 GB/s by the machine
    d = so.links_to_sweep(links, {"unshaped": 2.3e9, "25GbE": 0.86e9, "10GbE": 0.89e9, "1GbE": 0.96 * rate["1GbE"]})
    assert list(d) == links
    assert [k for k, v in d.items() if v.startswith("swept")] == ["unshaped", "10GbE", "1GbE"]
    assert "10GbE" in d["25GbE"] and d["25GbE"].startswith("probed only")
    # a machine that carries every rate sweeps every link model
    d = so.links_to_sweep(links, {k: (v or 3e9) * 0.95 for k, v in rate.items()})
    assert all(v.startswith("swept") for v in d.values())
    # none reached: only the slowest shaped link shows the machine's limit (and the unshaped link its ceiling)
    d = so.links_to_sweep(links, {k: 1e6 for k in links})
    assert [k for k, v in d.items() if v.startswith("swept")] == ["unshaped", "1GbE"]
    # None sweeps everything (the full profile), whatever the probes say
    d = so.links_to_sweep(links, {k: 1e6 for k in links}, unreachable_swept=None)
    assert all(v.startswith("swept") for v in d.values())
    assert so.parameters("full")["unreachable_swept"] is None and so.parameters("standard")["unreachable_swept"] == 0
    # none of the unreachable swept (the standard profile): each is probed, and says why in words that stand alone
    d = so.links_to_sweep(links, {"unshaped": 2.3e9, "25GbE": 0.86e9, "10GbE": 0.89e9, "1GbE": 0.96 * rate["1GbE"]},
                          unreachable_swept=0)  # fmt: skip
    assert [k for k, v in d.items() if v.startswith("swept")] == ["unshaped", "1GbE"]
    assert d["10GbE"].startswith("probed only") and "cannot fill" in d["10GbE"] and "10GbE" in d["25GbE"]
