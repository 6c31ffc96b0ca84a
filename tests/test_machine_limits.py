import pandas as pd
import pytest

from ipcbench.experiments import machine_limits as ml

BENCH = """# MPI PingPong Test
# Size [B]  Bandwidth [MB/s] | Time Mean [s] ± StdDev [s]  Samples
         1              0.70 | 1.4378070e-06 ± 7.2994e-07    10000
         8              5.58 | 1.4329790e-06 ± 7.5469e-07    10000
  16777216          12362.04 | 1.3571563e-03 ± 2.7812e-04       10
"""


def test_parse_bench():
    df = ml.parse_bench(BENCH)
    assert df["size_bytes"].tolist() == [1, 8, 16777216]
    assert df["bandwidth_Bps"].iloc[2] == pytest.approx(12362.04e6)
    assert df["one_way_mean_s"].iloc[1] == pytest.approx(1.4329790e-06)
    with pytest.raises(ValueError, match="no result lines"):
        ml.parse_bench("garbage")


def test_crosscheck_ratio_and_tolerance():
    bench = ml.parse_bench(BENCH).assign(mode="buffer")
    summary = pd.DataFrame([
        {"experiment": "pingpong", "variant": "mpi_buffer", "metric": "one_way_latency", "size_bytes": 8,
         "median": 1.5e-6, "ci_low": 1.4e-6, "ci_high": 1.6e-6},
        {"experiment": "pingpong", "variant": "mpi_buffer", "metric": "bandwidth", "size_bytes": 16777216,
         "median": 6e9, "ci_low": 5.9e9, "ci_high": 6.1e9},
    ])  # fmt: skip
    check = ml.crosscheck(summary, bench).set_index("metric")
    assert check.loc["one_way_latency", "ratio"] == pytest.approx(1.5e-6 / 1.4329790e-06)
    assert bool(check.loc["one_way_latency", "within_tolerance"])
    assert not bool(check.loc["bandwidth", "within_tolerance"])  # 6 GB/s vs 12.4 GB/s
    assert check.loc["bandwidth", "book_buffers"] == "filled payload"
    assert check.loc["bandwidth", "filled_ratio"] == pytest.approx(check.loc["bandwidth", "ratio"])


def test_crosscheck_compares_the_bench_condition_and_reports_the_filled_payload():
    bench = ml.parse_bench(BENCH).assign(mode="buffer")
    row = {"variant": "mpi_buffer", "metric": "bandwidth", "size_bytes": 16777216, "ci_low": 0.0, "ci_high": 1.0}
    summary = pd.DataFrame([
        {**row, "experiment": "pingpong", "median": 6e9, "best_allocation": 8e9},
        {**row, "experiment": "pingpong_as_bench", "median": 11e9, "best_allocation": 12e9},
    ])  # fmt: skip
    check = ml.crosscheck(summary, bench).set_index("metric").loc["bandwidth"]
    assert check["book_value"] == 12e9 and check["book_statistic"] == "best allocation's median"
    assert check["book_buffers"].startswith("as mpi4py.bench")
    assert check["ratio"] == pytest.approx(12e9 / 12362.04e6) and bool(check["within_tolerance"])
    assert check["book_filled_value"] == 8e9 and check["filled_ratio"] == pytest.approx(8e9 / 12362.04e6)


def test_bench_buffer_condition_only_on_the_buffer_path():
    with pytest.raises(ValueError, match="one of"):
        ml._mpi_transport(None, "mpi_buffer", 8, "zeros")
    with pytest.raises(ValueError, match="only measured on the mpi_buffer path"):
        ml._mpi_transport(None, "mpi_pickle", 8, "as_bench")
    with pytest.raises(ValueError, match="only measured on the mpi_buffer path"):
        ml._zmq_transport(None, "zmq_ipc", 8, "as_bench")


def test_profiles_keep_every_path_and_the_crosscheck_sizes():
    for profile in ("quick", "standard", "full"):
        p = ml.parameters(profile)
        assert {8, 16 * ml.MiB} <= set(p["message_sizes"])
        assert min(p["message_sizes"]) == 1 and max(p["message_sizes"]) == 64 * ml.MiB
        assert min(p["memcpy_sizes"]) == ml.KiB and max(p["memcpy_sizes"]) == 256 * ml.MiB
        assert p["bench_modes"] == ["buffer", "pickle", "outband"] and p["bench_repeats"]["buffer"] >= 3 and p["allocations"] >= 3


def test_split_rule_shares_the_budget_and_the_warm_up_budget():
    from ipcbench import profiles

    rule = profiles.stopping_rule("standard")
    sub = ml._split_rule(rule, 4)
    assert sub.time_budget_s == rule.time_budget_s / 4 and sub.warmup_budget_s == rule.warmup_budget_s / 4
    assert sub.min_samples == max(3, rule.min_samples // 4) and sub.warmup == rule.warmup
    assert ml._split_rule(rule, 1) is rule
    # a slow allocation stops warming up after one call once that took its share; a fast one makes the full count
    assert sub.warm_enough(1, sub.warmup_budget_s) and not sub.warm_enough(1, sub.warmup_budget_s / 2)
    assert not sub.warm_enough(0, 10.0)


@pytest.mark.parametrize("size", [0, 1, 255, 256, 257, 4096 + 3, 1 << 20])
def test_pattern_bytes_are_the_byte_ramp(size):
    import numpy as np

    got = ml.pattern_bytes(size)
    assert got.dtype == np.uint8 and got.shape == (size,) and got.flags["C_CONTIGUOUS"]
    assert np.array_equal(got, np.arange(size, dtype=np.uint64).astype(np.uint8))
