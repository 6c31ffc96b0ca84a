import time

import numpy as np
import pytest

from ipcbench import measure
from ipcbench.measure import StoppingRule, median_ci, summarize


@pytest.mark.parametrize("n", [10, 30, 101])
def test_median_ci_covers_true_median_at_stated_rate(n):
    # lognormal(0, 1): skewed like latencies; its true median is exp(0) = 1
    rng = np.random.default_rng(1234 + n)
    trials = 2000
    hits = 0
    for _ in range(trials):
        lo, hi = median_ci(rng.lognormal(0.0, 1.0, size=n))
        hits += lo <= 1.0 <= hi
    coverage = hits / trials
    # order-statistic intervals are conservative: at least 95%, but not absurdly wide
    assert 0.935 <= coverage <= 0.995, coverage


def test_median_ci_exponential_distribution():
    rng = np.random.default_rng(7)
    true_median = np.log(2) * 3.0
    hits = sum(
        lo <= true_median <= hi for lo, hi in (median_ci(rng.exponential(3.0, 50)) for _ in range(1500))
    )
    assert 0.935 <= hits / 1500 <= 0.995


def test_median_ci_small_samples_fall_back_to_range():
    assert median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)
    assert all(np.isnan(median_ci([])))


def test_summarize_statistics_and_flags():
    x = np.array([1.0] * 51 + [1.1] * 48 + [10.0])
    s = summarize(x, "ci")
    assert s.n == 100
    assert s.median == pytest.approx(1.0)
    assert s.min == 1.0
    assert s.p99 == pytest.approx(np.percentile(x, 99))
    assert s.iqr == pytest.approx(np.percentile(x, 75) - np.percentile(x, 25))
    assert s.cv == pytest.approx(x.std(ddof=1) / x.mean())
    assert s.unstable  # one 10x outlier pushes CV above 10%
    assert s.outliers == 1
    assert s.stop_reason == "ci"
    assert s.ci_low <= s.median <= s.ci_high


def test_summarize_stable_point():
    s = summarize(np.linspace(0.99, 1.01, 40))
    assert not s.unstable
    assert s.ci_halfwidth_rel < 0.05


def test_summarize_rejects_empty():
    with pytest.raises(ValueError, match="at least one sample"):
        summarize([])


def test_stopping_rule_stops_on_ci_for_tight_samples():
    rule = StoppingRule(rel_ci=0.05, min_samples=10, max_samples=1000, time_budget_s=60, check_every=5)
    point = measure.repeat(lambda: 1.0 + np.random.default_rng().normal(0, 0.001), rule)
    assert point.summary.stop_reason == "ci"
    assert point.summary.n == 10


def test_stopping_rule_stops_on_budget_for_noisy_samples():
    rng = np.random.default_rng(3)
    rule = StoppingRule(rel_ci=0.001, min_samples=10, max_samples=10**9, time_budget_s=0.05, warmup=0)
    point = measure.repeat(lambda: float(rng.lognormal(0, 2)), rule)
    assert point.summary.stop_reason == "budget"


def test_stopping_rule_max_samples():
    rule = StoppingRule(rel_ci=0.0, min_samples=5, max_samples=7, time_budget_s=60, warmup=0)
    point = measure.repeat(lambda: float(np.random.default_rng().random()), rule)
    assert (point.summary.n, point.summary.stop_reason) == (7, "max_samples")


def test_timer_info_is_measured():
    info = measure.timer_info(n=20_000)
    assert info.clock == "time.perf_counter_ns"
    assert 0 < info.measured_resolution_ns < 1e6
    assert 0 < info.overhead_ns < 1e5


def _busy_ms():
    """Spin for 1 ms of this clock (a call of known length, unlike sleep)."""
    end = measure.now_ns() + 1_000_000
    while measure.now_ns() < end:
        pass


def test_time_call_and_calibrate_inner():
    # a 1 ms call: 5 of them make a 5 ms sample (4 when the first call ran slow by a quarter or more)
    assert measure.calibrate_inner(_busy_ms, min_sample_s=5e-3) in (4, 5)
    assert measure.calibrate_inner(_busy_ms, min_sample_s=5e-4) == 1
    assert measure.calibrate_inner(lambda: None, min_sample_s=10.0, cap=100) == 100  # the cap
    per_call = measure.time_call(_busy_ms, inner=5)
    assert 1e-3 <= per_call < 3e-3, per_call  # (above 1 ms only where another process took the core)
    calls = []
    measure.time_call(lambda: calls.append(1), inner=7)
    assert len(calls) == 7


def test_fit_alpha_beta_recovers_parameters():
    sizes = np.array([1, 8, 64, 512, 4096, 32768, 262144, 2**21, 2**24], dtype=float)
    alpha, beta = 2e-6, 5e9
    t = alpha + sizes / beta
    a, b = measure.fit_alpha_beta(sizes, t)
    assert a == pytest.approx(alpha, rel=1e-6)
    assert b == pytest.approx(beta, rel=1e-6)
    assert measure.alpha_beta_time(1024, a, b) == pytest.approx(alpha + 1024 / beta)


def test_fit_alpha_beta_needs_two_points():
    with pytest.raises(ValueError):
        measure.fit_alpha_beta([1], [1e-6])


def test_ci_overlap():
    a, b = summarize(np.linspace(1, 2, 20)), summarize(np.linspace(5, 6, 20))
    assert not measure.ci_overlap(a, b)
    assert measure.ci_overlap(a, a)


def test_ci_level_is_the_coverage_the_interval_really_has():
    from ipcbench.measure import ci_coverage, exact

    assert summarize([1.0, 2, 3, 4, 5]).ci_level == pytest.approx(1 - 2 * 0.5**5)  # the range of 5: 93.75%
    assert summarize([1.0, 2, 3, 4, 5]).ci_level < 0.95
    assert summarize(np.arange(8.0)).ci_level >= 0.95
    assert summarize([3.0]).ci_level == 0.0  # one value: no interval at all
    assert ci_coverage(3) == pytest.approx(0.75)
    assert all(ci_coverage(n) >= 0.95 for n in range(6, 200))
    assert exact(7).ci_level == 1.0 and exact(7).ci_low == exact(7).ci_high == 7


def test_median_ci_ranks_and_coverage_are_scipys_binomial():
    """The ranks come from a log-space Binomial(n, 1/2) CDF instead of scipy.stats: the same ranks at every n to 2 000
    and at large n up to the full profile's 10 000 samples, for three confidence levels; the same coverage to float
    precision."""
    from scipy import stats

    from ipcbench.measure import _ci_rank, ci_coverage

    for conf in (0.95, 0.99, 0.9):
        for n in list(range(0, 2001)) + [2500, 4999, 5000, 7777, 10_000]:
            lo = int(stats.binom.ppf((1 - conf) / 2, n, 0.5))
            lo -= stats.binom.cdf(lo, n, 0.5) > (1 - conf) / 2
            assert _ci_rank(n, conf) == max(lo, 0), (conf, n)
    for n in (9, 20, 101, 1000, 9999):  # (below 9 the interval is the sample range: lo = 0)
        lo = _ci_rank(n)
        assert lo > 0
        assert ci_coverage(n) == pytest.approx(1 - 2 * stats.binom.cdf(lo - 1, n, 0.5), abs=1e-12)


def test_a_spent_budget_never_stops_a_point_below_six_samples():
    from ipcbench.measure import MIN_SAMPLES_95

    rule = StoppingRule(rel_ci=0.0, min_samples=20, max_samples=1000, time_budget_s=0.0, warmup=0)
    assert rule.decide([1.0] * (MIN_SAMPLES_95 - 1), 10.0) is None
    assert rule.decide([1.0] * MIN_SAMPLES_95, 10.0) == "budget"


def test_derived_quantity_has_a_bootstrap_interval_around_the_ratio_of_medians():
    from ipcbench.measure import derived

    rng = np.random.default_rng(1)
    a = rng.normal(2.0, 0.05, 40)
    b = rng.normal(1.0, 0.02, 40)
    st = derived(lambda x, y: x / y, a, b)
    assert st.median == pytest.approx(np.median(a) / np.median(b))
    assert st.ci_low < st.median < st.ci_high and st.ci_high - st.ci_low < 0.2
    assert st.n == 40 and st.ci_level >= 0.95
    paired = derived(lambda x, y: x / y, a, a * 0.5, paired=True)  # paired rounds: the ratio is exactly 2
    assert paired.ci_low == pytest.approx(2.0) and paired.ci_high == pytest.approx(2.0)
    few = derived(lambda x, y: x - y, a[:4], b)
    assert few.n == 4 and few.ci_level < 0.95  # a bootstrap of 4 samples is no better than their range
    with pytest.raises(ValueError, match="equal counts"):
        derived(lambda x, y: x / y, a, b[:10], paired=True)


def test_the_harness_pauses_the_cyclic_collector_while_it_times():
    import gc

    from ipcbench.measure import gc_paused, repeat

    seen = []
    rule = StoppingRule(rel_ci=0.5, min_samples=6, max_samples=6, time_budget_s=10, warmup=1)
    repeat(lambda: seen.append(gc.isenabled()) or 1.0, rule)
    assert seen and not any(seen) and gc.isenabled()  # paused inside, restored after
    with pytest.raises(ZeroDivisionError), gc_paused():
        assert not gc.isenabled()
        1 / 0  # noqa: B018
    assert gc.isenabled()  # restored after an exception too


def test_warm_up_is_the_count_or_fewer_calls_once_they_took_the_warm_up_budget():
    from ipcbench.measure import repeat

    def count(rule, call_s):
        calls = []

        def sample():
            calls.append(1)
            time.sleep(call_s)
            return call_s

        repeat(sample, rule)
        return len(calls) - rule.max_samples

    fast = StoppingRule(rel_ci=0.0, min_samples=6, max_samples=6, time_budget_s=60, warmup=5, warmup_budget_s=0.25)
    assert count(fast, 0.001) == 5  # quick calls: the whole count
    assert count(fast, 0.1) == 3  # 0.1 s calls: until 0.25 s were spent (0.1, 0.2, 0.3)
    assert count(fast, 0.3) == 1  # at least one
    from dataclasses import replace

    assert count(replace(fast, warmup_budget_s=None), 0.1) == 5  # no budget: the count
    assert count(replace(fast, warmup=0), 0.3) == 0  # no warm-up asked for: none
    assert not fast.warm_enough(0, 10.0) and fast.warm_enough(1, 0.25) and fast.warm_enough(5, 0.0)


# ------------------------------------------------------------------ replicates


def _replicated(groups):
    return measure.Replicated(np.concatenate(groups), np.concatenate([np.full(len(g), i) for i, g in enumerate(groups)]))


def test_the_interval_over_replicates_matches_the_plain_one_where_they_agree_and_widens_where_not():
    rng = np.random.default_rng(7)
    agree = _replicated([rng.lognormal(0, 0.1, 20) for _ in range(3)])
    plain = measure.median_ci(np.asarray(agree))
    st = measure.summarize(agree)
    assert st.replicates == 3 and st.n == 60
    width = plain[1] - plain[0]
    assert abs(st.ci_low - plain[0]) <= 0.25 * width and abs(st.ci_high - plain[1]) <= 0.25 * width, (st, plain)
    # the same samples shifted per replicate (a process state, a drifting machine): the interval spans the replicates
    shifted = _replicated([g * f for g, f in zip(measure.replicate_groups(agree), (0.8, 1.0, 1.25), strict=True)])
    wide = measure.summarize(shifted)
    plain_shifted = measure.median_ci(np.asarray(shifted))
    meds = [float(np.median(g)) for g in measure.replicate_groups(shifted)]
    assert wide.ci_low <= min(meds) and wide.ci_high >= max(meds)
    assert wide.ci_high - wide.ci_low > 2 * (plain_shifted[1] - plain_shifted[0])
    # unlabelled samples (one replicate) keep the plain interval
    one = measure.summarize(np.asarray(agree))
    assert (one.ci_low, one.ci_high, one.replicates) == (plain[0], plain[1], 1)


def test_derived_rows_draw_the_replicates_jointly_and_hold_each_replicates_own_ratio():
    rng = np.random.default_rng(3)
    base = [rng.lognormal(0, 0.05, 12) for _ in range(3)]
    a = _replicated(base)
    b = _replicated([g * 2 for g in base])
    st = measure.derived(lambda x, y: y / x, a, b, paired=True)
    assert st.replicates == 3 and st.ci_low <= 2.0 <= st.ci_high and st.ci_high - st.ci_low < 0.01
    # B twice A in two replicates, three times in the third: the interval holds both readings
    c = _replicated([base[0] * 2, base[1] * 2, base[2] * 3])
    st2 = measure.derived(lambda x, y: y / x, a, c, paired=True)
    assert st2.ci_low <= 2.0 + 1e-9 and st2.ci_high >= 3.0 - 1e-9
    # arithmetic keeps the labels (a per-message sum of two phases is still that message's replicate)
    assert ((a + b).replicate == a.replicate).all()


def test_round_orders_are_seeded_recorded_and_change_between_rounds():
    from ipcbench.experiments._common import Replicates, round_order

    orders = [round_order(5, r) for r in range(5)]
    assert all(sorted(o) == list(range(5)) for o in orders)
    assert len({tuple(o) for o in orders}) == 5  # every round its own order
    assert {o[0] for o in orders} == set(range(5))  # every configuration runs first once in five rounds
    assert round_order(5, 2) == round_order(5, 2) and round_order(5, 2, seed=1) != round_order(5, 2)

    class _Cluster:
        owned, restarts = True, 0

        def fresh_engines(self):
            self.restarts += 1

    cl = _Cluster()
    plan = Replicates(cl, 3)
    seen = [(rep, plan.order("g", ["a", "b", "c"], rep)) for rep in plan.passes()]
    assert [rep for rep, _ in seen] == [0, 1, 2] and cl.restarts == 1 and plan.fresh == [2]
    rec = plan.record()
    assert rec["orders"]["g"] == [o for _, o in seen] and len({tuple(o) for o in rec["orders"]["g"]}) == 3
    assert rec["replicates"] == 3 and rec["fresh_engines"] == [2]


def test_intervals_are_computed_again_from_the_replicated_samples_on_disk():
    import pandas as pd

    from ipcbench import results
    from ipcbench.experiments._common import reinterval

    rng = np.random.default_rng(11)
    shifted = _replicated([rng.lognormal(0, 0.05, 8) * f for f in (0.8, 1.0, 1.3)])
    plain = rng.lognormal(0, 0.05, 12)
    labels = {"chapter": "fair_serialization", "experiment": "records", "payload": "records:pickle5", "size_bytes": 100,
              "ranks": 2, "oversubscribed": False, "metric": "end_to_end", "unit": "s"}  # fmt: skip
    rows, samples = [], []
    for variant, values in (("shm", shifted), ("zmq", plain)):
        rows.append(results.summary_row(summarize(values), **labels, variant=variant, readers=1))
        samples += results.sample_rows(values, **labels, variant=variant, readers=1)
    summary, samples = results.frame(rows), pd.DataFrame(samples)
    expected = summary.copy()
    summary.loc[0, ["ci_low", "ci_high"]] = (0.99, 1.01)  # an interval written by an older analysis
    summary.loc[1, ["ci_low", "ci_high"]] = (0.5, 2.0)
    got, n = reinterval(summary, samples)
    assert n == 1  # the replicated row; the one-replicate row is kept as written
    assert got.loc[0, ["ci_low", "ci_high"]].tolist() == pytest.approx(expected.loc[0, ["ci_low", "ci_high"]].tolist())
    assert got.loc[1, ["ci_low", "ci_high"]].tolist() == [0.5, 2.0]
    assert got.loc[0, "replicates_agree"] is False


def test_the_mean_summary_gives_the_mean_and_an_interval_that_holds_the_replicates_means():
    rng = np.random.default_rng(3)
    one = rng.exponential(1.0, 200)
    st = measure.mean_summary(one)
    assert st.median == pytest.approx(one.mean()) and st.ci_low < one.mean() < st.ci_high
    assert st.ci_high - st.ci_low < 0.5 and st.n == 200 and st.ci_level >= 0.95
    groups = [rng.exponential(1.0, 30) * f for f in (0.7, 1.0, 1.4)]  # replicates that disagree
    rep = _replicated(groups)
    st = measure.mean_summary(rep)
    assert st.median == pytest.approx(np.concatenate(groups).mean()) and st.replicates == 3
    assert all(st.ci_low <= g.mean() <= st.ci_high for g in groups)
    assert st.ci_high - st.ci_low > measure.mean_summary(np.concatenate(groups)).ci_high - measure.mean_summary(
        np.concatenate(groups)).ci_low  # the spread between replicates widens the interval
