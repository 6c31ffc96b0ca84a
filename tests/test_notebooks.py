"""Every chapter notebook executes in the quick profile and records what its page and ledger need."""

import io
import os
from pathlib import Path

import nbformat
import numpy as np
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
def test_chapter0_records_the_mpi4py_bench_crosscheck_like_for_like(session_results, monkeypatch):
    """The cross-check ran and recorded both sides in the same condition; whether they agree is a result, not a test.

    Agreement within 25% is shown (and flagged) on chapter 0's page: a speed comparison on a shared
    2-core VM is a benchmark outcome, and asserting it here failed clean clones at random.
    """
    monkeypatch.setenv("IPCBENCH_RESULTS_DIR", str(session_results))
    from ipcbench import results
    from ipcbench.experiments import machine_limits as ml

    if not (session_results / "machine_limits" / "crosscheck.csv").exists():
        pytest.fail("chapter 0's notebook did not run first in this session")
    check = results.read("machine_limits").extra("crosscheck")
    required = check[check["required"]]
    assert set(required["metric"]) == {"one_way_latency", "bandwidth"}
    assert set(required["size_bytes"]) == {ml.CROSSCHECK_LATENCY_SIZE, ml.CROSSCHECK_BANDWIDTH_SIZE}
    # like for like: the book side timed in the bench's own buffer condition, both sides best-of-k, both positive
    assert (required["book_buffers"] == "as mpi4py.bench (numpy.empty, never filled)").all(), required.to_string()
    assert (required["book_value"] > 0).all() and (required["bench_value"] > 0).all()
    assert np.allclose(required["ratio"], required["book_value"] / required["bench_value"])
    assert (required["within_tolerance"] == ((required["ratio"] - 1).abs() <= ml.CROSSCHECK_TOLERANCE)).all()
    summary = results.read("machine_limits").summary
    assert os.environ["IPCBENCH_RESULTS_DIR"] == str(session_results)
    assert set(summary.query("experiment == 'pingpong'")["variant"]) == {
        "mpi_buffer", "mpi_pickle", "mpi_pkl5", "zmq_ipc", "zmq_tcp"}  # fmt: skip
    assert (summary["n"] >= 5).all()


def _ledger_of(chapter: str, session_results, monkeypatch):
    """Return a chapter's ledger rows after checking its notebook ran in this session and gave every claim a verdict."""
    monkeypatch.setenv("IPCBENCH_RESULTS_DIR", str(session_results))
    from ipcbench import claims

    if not (session_results / chapter / "claims.csv").exists():
        pytest.fail(f"the {chapter} notebook did not run first in this session")
    led = claims.ledger().query("chapter == @chapter")
    assert (led["verdict"] != claims.PENDING).all(), led[led["verdict"] == claims.PENDING]["id"].tolist()
    assert set(led["verdict"]) <= set(claims.VERDICTS)
    return led


@pytest.mark.slow
def test_chapter1_gives_every_seed_000_claim_a_verdict(session_results, monkeypatch, new_leftovers):
    from ipcbench import backends, results

    _ledger_of("fair_serialization", session_results, monkeypatch)
    summary = results.read("fair_serialization").summary
    # every broadcast backend ran every payload kind, with 1 and 3 readers
    ran = summary.query("metric == 'end_to_end'").groupby(["variant", "kind"])["readers"].agg(set)
    for b in backends.BROADCAST_BACKENDS:
        assert ran[(b, "records")] == {1, 3} and ran[(b, "array")] == {1, 3}, (b, ran)
    assert (summary.query("ranks > 2")["oversubscribed"]).all()
    assert not any(new_leftovers().values())  # nothing left by this session's notebooks


@pytest.mark.slow
def test_chapter5_counts_volumes_checks_outputs_and_gives_every_seed_004_claim_a_verdict(session_results, monkeypatch):
    from ipcbench import results
    from ipcbench import tensor_parallel as tp
    from ipcbench.experiments import tensor_parallel as tpx

    _ledger_of("tensor_parallel", session_results, monkeypatch)
    res = results.read("tensor_parallel")
    summary, calls = res.summary, res.extra("calls")
    # counted bytes per strategy equal the formulas at every measured shape
    for (s, p, t, i), c in calls.groupby(["strategy", "ranks", "tokens", "intermediate"]):
        f = tp.volume_formulas(int(t), int(c["hidden"].iloc[0]), int(i), int(p))[s]
        assert len(c) == f["collectives"] and c["result_bytes"].sum() == f["result_bytes"], (s, p, t, i)
    mlp = summary.query("experiment == 'mlp'")
    assert set(mlp.query("ranks == 2")["variant"]) == set(tp.STRATEGIES)
    assert (mlp["max_rel_error"] <= tpx.MLP_TOL).all()
    dec = summary[summary["experiment"].str.startswith("decoder")]
    assert (dec["max_rel_error"] <= tpx.LOGIT_TOL).all()
    assert dec.query("ranks == 2 and kernel == 'numpy'")["variant"].nunique() == 4
    # the source's pair ran with its kernels on both ranks (tokens checked against the reference before timing)
    for m, kern in tpx.SOURCE_PAIR:
        got = dec[(dec["ranks"] == 2) & (dec["variant"] == f"sequence/{m}/{kern}")]
        assert set(got["kernel"]) == {kern} and set(got["experiment"]) == {"decoder_decode"}, (m, kern)
        assert (got["max_rel_error"] <= tpx.LOGIT_TOL).all() and (got["n"] >= 6).all()
    thr = dec.query("ranks == 1 and threads == @tpx.THREADS_PER_RANK")
    assert set(thr["experiment"]) == {"decoder_prefill", "decoder_decode"} and not thr["oversubscribed"].any()
    d = summary.query("experiment == 'derived'").set_index("metric")
    for k in ("source_pair_decoder_slower", "threads_over_ranks_decode", "threads_over_ranks_prefill"):
        assert d.loc[k, "ci_low"] <= d.loc[k, "median"] <= d.loc[k, "ci_high"], k
    assert summary.query("ranks > 2")["oversubscribed"].all() and not summary.query("ranks <= 2")["oversubscribed"].any()
    # compute + communication = total, per point
    piv = mlp.pivot_table(index=["variant", "payload", "ranks", "tokens", "intermediate"], columns="metric", values="median")
    assert (piv["communication"] >= 0).all() and (piv["compute"] <= piv["total"] * 1.0001).all()


@pytest.mark.slow
def test_chapter4_runs_every_processor_and_kind_and_gives_every_seed_003_claim_a_verdict(session_results, monkeypatch):
    from ipcbench import results
    from ipcbench.experiments import pipeline as plx

    _ledger_of("pipeline", session_results, monkeypatch)
    res = results.read("pipeline")
    s = res.summary
    etl = s.query("experiment == 'etl' and metric == 'wall_time'")
    params = plx.parameters("quick")
    for kind in ("python", "numpy"):
        for proc in plx.PROCESSORS:
            assert sorted(etl.query("payload == @kind and variant == @proc")["n_records"]) == params["sizes"], (kind, proc)
    for proc in plx.PROCESSORS:  # the wait kind at the source's sizes, by the processors the profile runs it with
        want = list(plx.SOURCE_SIZES) if proc in plx.processors_at(min(plx.SOURCE_SIZES), params, "wait") else []
        assert sorted(etl.query("payload == 'wait' and variant == @proc")["n_records"]) == want, proc
    assert {"serial", "thread_pipeline"} <= set(plx.processors_at(min(plx.SOURCE_SIZES), params, "wait"))
    assert plx.processors_at(min(plx.SOURCE_SIZES), plx.parameters("full"), "wait") == list(plx.PROCESSORS)
    # speedups name their base case; the five-rank MPI run is labelled oversubscribed, nothing else is
    sp = s.query("metric == 'speedup'")
    assert sp["base_s"].notna().all() and (sp["base_s"] > 0).all()
    assert s.query("variant == 'mpi_stages_5'")["oversubscribed"].all()
    assert not s.query("variant != 'mpi_stages_5'")["oversubscribed"].any()
    assert set(s.query("experiment == 'start_method'")["start_method"]) == set(plx.START_METHODS)
    assert set(s.query("experiment == 'memory'")["variant"]) == set(plx.PROCESSORS)
    report = res.json("final_performance_report")
    assert set(report["results"]) == {"python", "numpy", "wait"}
    assert set(report["results"]["python"]["25000"]) >= set(plx.PROCESSORS)
    tl = res.extra("timeline")
    assert set(tl["processor"]) == set(plx.PROCESSORS) and (tl["end_s"] >= tl["start_s"]).all()
    assert not res.extra("queue_depth").empty
    # the source's layout as written: 10 000-record batches, four threads, a pool with one chunk per process
    lay = s.query("experiment == 'source_layout' and metric == 'wall_time'")
    for kind in ("python", "numpy", "wait"):
        got = lay.query("payload == @kind")
        assert sorted(set(got["n_records"])) == params["source_layout_sizes"], kind
        assert (got.query("variant == 'thread_pipeline'")["threads"] == 4).all()
        assert (got.query("variant != 'process_pool'")["batch_size"] == plx.SOURCE_BATCH).all()
    pool = lay.query("variant == 'process_pool'")
    assert (pool["batches"] == pool["ranks"]).all()  # one chunk per process
    rd = plx.readings(s)
    assert set(rd["reading"]) == set(plx.READINGS) and rd["the data"].isin(["ruled out", "consistent", "not decided"]).all()


@pytest.mark.slow
def test_chapter2_checks_every_configuration_splits_every_token_and_gives_every_seed_001_claim_a_verdict(
        session_results, monkeypatch):  # fmt: skip
    from ipcbench import results
    from ipcbench.experiments import rpc_breakdown as rb
    from ipcbench.rpc import analyze, perflog

    _ledger_of("rpc_breakdown", session_results, monkeypatch)
    res = results.read("rpc_breakdown")
    s, steps, checks = res.summary, res.extra("steps"), res.extra("checks")
    # every rung of the ladder was checked against the reference, within its tolerance, before timing
    assert list(checks["config"]) and set(checks["config"]) == set(rb.LADDER)
    assert (checks["max_rel_logit_error"] <= checks["tolerance"]).all()
    assert checks.query("tolerance == @rb.F32_TOL")["tokens_identical"].all()
    # the split adds up to the token's wall time, per step
    parts = steps[list(rb.PHASES)].sum(axis=1)
    assert np.allclose(parts, steps["token"], rtol=1e-6, atol=1e-9)
    assert (steps["server_compute"] > 0).all() and (steps["serialize"] > 0).all()
    # RPC counts per step follow the layout: 6 per layer + 2, or 1 per layer + 2
    layers = res.meta["model"]["layers"]
    for conf, (_, _, gran, _, _) in rb.LADDER.items():
        want = (6 if gran == "per_op" else 1) * layers + 2
        assert set(steps.query("config == @conf")["rpcs"]) == {want}, conf
    params = rb.parameters("quick")
    assert steps.groupby("config")["round"].nunique().eq(params["samples"]).all()
    # the logs are in the source's format and the analyser reads them without problems (the ZeroMQ client writes them;
    # the gRPC configurations have none, and say so by having no file)
    for conf in rb.LADDER:
        if rb.LADDER[conf][0] in rb.GRPC_TRANSPORTS:
            assert not (session_results / "rpc_breakdown" / "logs" / f"{conf}.log").exists()
            continue
        parsed = perflog.parse(res.text(f"logs/{conf}.log"))
        per_step = int(steps.query("config == @conf")["rpcs"].iloc[0])
        assert not parsed.problems and parsed.transport == rb.LADDER[conf][0].upper()
        assert analyze.analyze(parsed).calls == params["decode"] * per_step  # one generation: D forward steps
    # each transport's own bare round trip, in every timed round, at both sizes; every call has a ratio against it
    bare = s.query("experiment == 'bare_round_trip'")
    assert set(bare["variant"]) == {"ZeroMQ ipc", "gRPC unary"} and (bare["n"] == params["samples"]).all()
    own = s.query("experiment == 'per_call' and metric == 'overhead_vs_bare_own'")
    assert set(own["variant"]) == set(rb.LADDER) and (own["median"] > 0).all()
    parts = rb.call_decomposition(res.extra("calls"), ["fused", "grpc_fused"])
    assert set(parts["method"]) == {"Embedding", "FusedLayer"} and (parts["overhead (sum)"] > 0).all()
    tg = res.meta["targets"]
    assert tg["best"] in rb.LADDER and tg["best_tokens_identical"]
    assert rb.LADDER[tg["best"]][0] not in rb.GRPC_TRANSPORTS and tg["own_ratio_x"] > 0
    assert tg["overhead_cut_x"] > 0  # recorded; whether the best beats the baseline is a result shown on the page
    # only the several-clients runs may put more processes than cores on the host, and they say so
    clients = s["experiment"] == "clients"
    assert not s.loc[~clients, "oversubscribed"].any()
    cores = os.cpu_count()
    assert (s.loc[clients, "oversubscribed"] == (s.loc[clients, "clients"] + 1 > cores)).all()  # clients + server


@pytest.mark.slow
def test_chapter3_checks_every_strategy_measures_every_class_and_gives_every_seed_002_claim_a_verdict(
        session_results, monkeypatch):  # fmt: skip
    from ipcbench import multimodal as mm
    from ipcbench import results
    from ipcbench.experiments import broadcast as bx

    _ledger_of("broadcast", session_results, monkeypatch)
    res = results.read("broadcast")
    s, load, cap = res.summary, res.extra("load"), res.extra("capacity")
    params = bx.parameters("quick")
    classes = set(params["classes"])
    # every phase at every size; every strategy and class at no load at TP = 2, the profile's strategies at the
    # oversubscribed TP = 4 (at least those its ratios, option D and the projection's check read)
    ph = s.query("experiment == 'phases'")
    assert ph.groupby("size_bytes")["variant"].nunique().eq(15).all() and ph["size_bytes"].nunique() == len(params["phase_sizes"])
    lat = s.query("experiment == 'latency'")
    for tp in (2, params["tp_oversubscribed"]):
        got = lat.query("ranks == @tp")
        want = bx.strategies_at(tp, params)
        assert set(zip(got["payload_class"], got["variant"], strict=True)) == {(c, v) for c in classes for v in want}, tp
        assert got["oversubscribed"].all() == (tp > 2)
    assert {"replicated", "raw_bcast", "object_bcast"} <= set(bx.strategies_at(params["tp_oversubscribed"], params))
    assert bx.strategies_at(2, params) == list(mm.STRATEGIES)
    assert bx.strategies_at(4, bx.parameters("full")) == list(mm.STRATEGIES)
    # every strategy under load at every rate of every class, each point run at least 3 times, with per-rank CPU;
    # every strategy of a class is offered the same absolute rates; a p99 only from 100 requests or more
    assert params["load_repeats"] >= 3
    assert len(load) == len(classes) * len(mm.STRATEGIES) * len(params["rate_fractions"]) * params["load_repeats"]
    assert load.groupby(["payload_class", "variant", "rate_fraction"])["repeat"].nunique().eq(params["load_repeats"]).all()
    assert load.groupby(["payload_class", "rate_fraction"])["offered_rate"].nunique().eq(1).all()
    assert (load["throughput"] > 0).all() and load[["cpu_rank0", "cpu_rank1"]].notna().all().all()
    assert load.query("requests < @bx.P99_MIN_REQUESTS")["latency_p99"].isna().all()
    assert set(cap["variant"]) == set(mm.STRATEGIES) and (cap["runs"] == params["load_repeats"]).all()
    thr = s.query("experiment == 'load' and metric == 'throughput'")
    assert (thr["n"] == params["load_repeats"]).all() and (thr["ci_low"] <= thr["ci_high"]).all()
    capr = s.query("experiment == 'capacity'")
    assert (capr["n"] == params["load_repeats"]).all() and capr["ci_level"].between(0, 1).all()
    # the models and the projection are computed from the measurements
    models = res.extra("models")
    assert models["full_model_s"].gt(0).all() and len(models) == len(classes) * len(mm.STRATEGIES)
    proj = res.extra("projection")
    assert set(proj["ranks"]) == {2, 4, 8} and proj.query("ranks == 8")["measured_s"].isna().all()


@pytest.mark.slow
def test_chapter6_ran_across_emulated_hosts_and_the_bytes_crossed(session_results, monkeypatch):
    from ipcbench import hosts, results
    from ipcbench.experiments import scale_out as so

    monkeypatch.setenv("IPCBENCH_RESULTS_DIR", str(session_results))
    if not (session_results / "scale_out" / "summary.csv").exists():
        pytest.fail("the scale_out notebook did not run first in this session")
    res = results.read("scale_out")
    s = res.summary
    params = so.parameters("quick")
    assert {"hosts", "link"} <= set(s.columns) and s["link"].notna().all() and (s["hosts"] >= 2).all()
    assert set(s["experiment"]) == {"link_probe", "pingpong", "collective", "mlp", "broadcast", "rpc"}
    assert res.meta["cluster"]["hosts"] == [f"h{i}" for i in range(params["hosts"])]  # MPICH's names: one per host
    link = res.meta["links"][params["links"][0]]
    assert {k: link[k] for k in hosts.LINKS[params["links"][0]].describe()} == hosts.LINKS[params["links"][0]].describe()
    assert link["sweep"].startswith("swept")  # quick's one link model is always swept
    crossed = res.extra("crossed")
    pp = crossed.query("experiment == 'pingpong'").iloc[0]
    assert pp["h0_tx_bytes"] >= sum(params["pingpong_sizes"]) and pp["h1_tx_bytes"] >= sum(params["pingpong_sizes"])
    assert (crossed.query("experiment == 'rpc'")[["h0_tx_bytes", "h1_tx_bytes"]] > 100_000).all().all()
    rpc = s.query("experiment == 'rpc' and metric == 'calls_per_token'").set_index("variant")["median"]
    assert rpc["baseline"] > rpc["fused"]
    assert len(so.projection_errors(s, res.extra("mlp_calls"))) > 0
    assert not [n for v in hosts.leftovers().values() for n in v], "the chapter left namespaces, links or launcher directories behind"


# ------------------------------------------------------------------ the ledger, from disk


@pytest.mark.slow
def test_every_rule_selects_rows_in_the_quick_build_and_the_cli_rejudges_the_same(session_results, tmp_path, monkeypatch):
    """`ipcbench ledger` over a copy of the build's results gives the build's verdicts, and follows a changed value."""
    import shutil
    import subprocess
    import sys

    import pandas as pd

    from ipcbench import claims, results

    monkeypatch.setenv("IPCBENCH_RESULTS_DIR", str(session_results))
    missing = [ch for ch in results.CHAPTERS if not (session_results / ch / "summary.csv").exists()]
    if missing:
        pytest.fail(f"the notebooks of {missing} did not run first in this session")
    built = claims.ledger().set_index("id")
    assert (built["verdict"] != claims.PENDING).all()
    judged = claims.judge_all().set_index("id")  # raises if any rule's selector finds no row
    assert judged["verdict"].to_dict() == built["verdict"].to_dict()

    copy = tmp_path / "results"
    shutil.copytree(session_results, copy)
    cli = [sys.executable, "-m", "ipcbench.cli", "ledger", "--results", str(copy), "--format", "csv"]
    out = subprocess.run(cli, capture_output=True, text=True, timeout=300, check=True).stdout
    led = pd.read_csv(io.StringIO(out)).set_index("id")
    assert list(led.reset_index().columns) == claims.LEDGER_COLUMNS
    assert led["verdict"].to_dict() == built["verdict"].to_dict()

    # change the measured value behind a decided claim in the copy: its verdict follows
    rule = claims.load_rules()[1]["bc-03"]
    summary = pd.read_csv(copy / "broadcast" / "summary.csv")
    sel = (summary["experiment"] == "phases") & (summary["variant"] == "from_dict") & (summary["nominal_bytes"] == 10_000_000)
    assert sel.sum() == 1 and rule["select"]["nominal_bytes"] == 10_000_000
    for c in ("median", "ci_low", "ci_high"):
        summary.loc[sel, c] = 0.200  # 200 ms against the claimed ~10 ms
    summary["ci_level"] = summary["ci_level"].where(~sel, 0.99)
    summary.to_csv(copy / "broadcast" / "summary.csv", index=False)
    out = subprocess.run(cli, capture_output=True, text=True, timeout=300, check=True).stdout
    changed = pd.read_csv(io.StringIO(out)).set_index("id")
    assert changed.loc["bc-03", "verdict"] == claims.REFUTED
    assert changed.loc["bc-03", "measured"] == pytest.approx(200.0)
    # every claim whose rule does not read the changed row keeps its verdict; those that read it (bc-17 and bc-19
    # compare against it) may follow it, as they should: asserting them unchanged failed a clean clone at random
    row = {"experiment": "phases", "variant": "from_dict", "nominal_bytes": 10_000_000}
    readers = {cid for cid, r in claims.load_rules()[1].items() if r["kind"] != "not_testable" and any(
        all(sel.get(k) == v for k, v in row.items()) for case in claims._cases(r)
        for key in ("select", "higher", "lower", "than") if isinstance(sel := case.get(key), dict))}  # fmt: skip
    assert "bc-03" in readers
    assert set(changed.loc[sorted(readers), "verdict"]) <= set(claims.VERDICTS)
    assert (changed.drop(index=sorted(readers))["verdict"] == led.drop(index=sorted(readers))["verdict"]).all()


@pytest.mark.slow
@pytest.mark.parametrize("chapter", ["machine_limits", "fair_serialization", "rpc_breakdown", "broadcast", "pipeline",
                                     "tensor_parallel", "scale_out"])  # fmt: skip
def test_headless_run_and_notebook_run_the_same_experiment(chapter, session_results, tmp_path):
    """`ipcbench run <chapter>` and the notebook produce the same summary rows (experiment, variant, metric, ranks)."""
    import shutil
    import subprocess
    import sys

    import pandas as pd

    if not (session_results / chapter / "summary.csv").exists():
        pytest.fail(f"the {chapter} notebook did not run first in this session")
    d = tmp_path / "results"
    d.mkdir()
    if chapter != "machine_limits":  # the later chapters read chapter 0's results of the same build
        shutil.copytree(session_results / "machine_limits", d / "machine_limits")
    env = {**os.environ, "IPCBENCH_RESULTS_DIR": str(d), "IPCBENCH_PROFILE": "quick"}
    subprocess.run([sys.executable, "-m", "ipcbench.cli", "run", chapter, "--profile", "quick"], env=env, check=True,
                   capture_output=True, text=True, timeout=600)  # fmt: skip

    def rows(root):
        s = pd.read_csv(root / chapter / "summary.csv")
        return set(zip(s["experiment"], s["variant"], s["metric"], s["ranks"].fillna(-1).astype(int), strict=True))

    assert rows(d) == rows(session_results)
