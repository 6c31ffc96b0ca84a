"""The measurement harness: timer, warm-up, repetition with a stopping rule, statistics.

Every chapter times through this module, so every number in the book is produced
by the same rules (DESIGN.md, "Measurement rules"):

* the clock is ``time.perf_counter_ns`` (monotonic, shared by all processes of one
  machine on Linux); its resolution and per-call overhead are measured, not assumed;
* a point is warmed up, then repeated until the median's 95% confidence interval is
  within ``rel_ci`` of the median or the point's time budget is spent (which of the
  two ended it is recorded);
* a point is summarised by n, median, a distribution-free 95% CI of the median,
  IQR, min, p99, CV and an ``unstable`` flag (CV >= 10%); outliers are counted,
  never dropped.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .clock import now_ns, now_s  # noqa: F401 - the book's one clock, re-exported here

MIN_SAMPLES_95 = 6
"""The fewest samples whose median interval covers 95% (with 5 the sample range covers 94%): a spent budget never
stops a point below this."""

UNSTABLE_CV = 0.10
"""Coefficient of variation at or above which a point is flagged unstable."""


# --------------------------------------------------------------------------- timer


@contextlib.contextmanager
def gc_paused():
    """Collect the young generations, then pause Python's cyclic garbage collector while timing (reference counting
    still frees memory).

    Every chapter times with the collector paused, so a collection triggered by one variant's garbage is never
    charged to the next; the previous state is restored on exit, also after an exception. While paused nothing is
    promoted, so the previous point's cyclic garbage is young: collecting generations 0 and 1 frees it. The oldest
    generation (an engine's long-lived objects: ipyparallel, pandas, numpy) is left to the collector's own
    thresholds between points: collecting it on every entry was most of a small point's wall time.
    """
    was = gc.isenabled()
    gc.collect(1)
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()



@dataclass(frozen=True)
class TimerInfo:
    """The clock's measured properties, in nanoseconds."""

    clock: str
    declared_resolution_ns: float
    measured_resolution_ns: float
    overhead_ns: float

    def as_dict(self) -> dict:
        """Return the record as a plain dict (ns units)."""
        return asdict(self)


def timer_info(n: int = 200_000) -> TimerInfo:
    """Return the timer's declared resolution, its smallest observed tick and its per-call overhead (ns)."""
    declared = time.get_clock_info("perf_counter").resolution * 1e9
    ticks = np.empty(n, dtype=np.int64)
    for i in range(n):
        ticks[i] = now_ns()
    diffs = np.diff(ticks)
    positive = diffs[diffs > 0]
    resolution = float(positive.min()) if positive.size else float("nan")
    # per-call overhead: average cost of one call, from a long back-to-back run
    overhead = float((ticks[-1] - ticks[0]) / (n - 1))
    return TimerInfo("time.perf_counter_ns", declared, resolution, overhead)


# ---------------------------------------------------------------------- statistics


def _half_binom_cdf(n: int) -> np.ndarray:
    """Return P(B <= k) for k = 0..n, B ~ Binomial(n, 1/2), summed from the probabilities in log space (no overflow
    of C(n, k) or underflow of 2^-n at any n). The book's only binomial, so no engine, kernel or spawned process
    imports scipy.stats (a heavy import) for it; the ranks are scipy's at the n the rules reach (a test checks)."""
    i = np.arange(n, dtype=np.float64)
    log_pmf = -n * math.log(2.0) + np.concatenate(([0.0], np.cumsum(np.log((n - i) / (i + 1.0)))))
    return np.cumsum(np.exp(log_pmf))


@functools.lru_cache(maxsize=16384)
def _ci_rank(n: int, confidence: float = 0.95) -> int:
    """Return the 0-based index ``lo`` of the lower order statistic of the median's CI for ``n`` samples."""
    alpha = 1.0 - confidence
    # largest l with P(B <= l-1) <= alpha/2, B ~ Bin(n, 0.5): then [x_(l), x_(n-l+1)] (1-based)
    lo = int(np.searchsorted(_half_binom_cdf(n), alpha / 2, side="right")) - 1
    return max(lo, 0)  # 0-based index of x_(l) where l = lo + 1


def ci_coverage(n: int, confidence: float = 0.95) -> float:
    """Return the coverage (a fraction) that :func:`median_ci`'s interval really has for ``n`` samples.

    With l = the interval's lower rank, coverage = 1 - 2 P(B <= l - 1), B ~ Binomial(n, 1/2). At
    least ``confidence`` from 6 samples on; below that the interval is the sample range, whose
    coverage is 1 - 2^(1-n): 0 for one sample, 0.75 for 3, 0.94 for 5.
    """
    if n < 1:
        return 0.0
    lo = _ci_rank(n, confidence)
    return float(1.0 - 2.0 * _half_binom_cdf(n)[lo - 1]) if lo > 0 else float(1.0 - 2.0 * 0.5**n)


def median_ci(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Return a distribution-free CI of the median (order statistics, binomial ranks), in the samples' unit.

    The interval is [x_(l), x_(u)] with l, u from Binomial(n, 1/2) quantiles, so its
    coverage is at least ``confidence`` for any continuous distribution. With fewer
    than 6 samples no 95% interval exists and the sample range is returned.
    """
    x = np.sort(np.asarray(samples, dtype=float))
    n = x.size
    if n == 0:
        return (float("nan"), float("nan"))
    lo = _ci_rank(n, confidence)
    hi = n - 1 - lo
    return (float(x[lo]), float(x[hi]))


class Replicated(np.ndarray):
    """Samples (a float array) with the replicate each was measured in (``.replicate``, an int array of the same
    shape): replicates are independent repetitions of a chapter's sweep, at least one in fresh engine processes.

    Element-wise arithmetic on samples of one point keeps the labels (the per-message sum of two phases is still the
    message's replicate), so the chapters' derived quantities carry them into :func:`derived`.
    """

    def __new__(cls, values, replicate):
        obj = np.asarray(values, dtype=float).view(cls)
        obj.replicate = np.broadcast_to(np.asarray(replicate, dtype=int), obj.shape).copy()
        return obj

    def __array_finalize__(self, obj):
        self.replicate = getattr(obj, "replicate", None)

    def __reduce__(self):  # pickled as a plain array with its labels (sent between engines and the client)
        return (Replicated, (np.asarray(self), self.replicate))


def replicate_groups(samples) -> list[np.ndarray]:
    """Return the samples split by replicate (in replicate order); one group for samples without labels."""
    x = np.asarray(samples, dtype=float)
    labels = getattr(samples, "replicate", None)
    if labels is None or x.shape != np.shape(labels):
        return [x]
    return [x[labels == r] for r in np.unique(labels)]


@dataclass
class Summary:
    """One measured point's statistics, in the unit of its samples."""

    n: int
    median: float
    ci_low: float
    ci_high: float
    iqr: float
    min: float
    p99: float
    cv: float
    unstable: bool
    outliers: int = 0
    stop_reason: str = ""
    ci_level: float = float("nan")
    replicates: int = 1
    replicates_agree: bool | None = None  # whether one value lies inside every replicate's own interval (None: one)

    def __post_init__(self):
        if self.ci_level != self.ci_level:  # NaN: the order-statistic interval's own coverage
            self.ci_level = ci_coverage(self.n)

    def as_dict(self) -> dict:
        """Return the statistics as a plain dict."""
        return asdict(self)

    @property
    def ci_halfwidth_rel(self) -> float:
        """Return the CI's half-width relative to the median (a fraction)."""
        if not self.median:
            return float("inf")
        return (self.ci_high - self.ci_low) / 2 / abs(self.median)


HIER_RESAMPLES = 2000
"""Resamples of the two-stage bootstrap behind every interval that rests on several replicates."""


def hierarchical_ci(groups: Sequence[Sequence[float]], fn: Callable | None = None, resamples: int = HIER_RESAMPLES,
                    seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """Return a 95% interval of the median of samples taken in several replicates (``groups``) that holds the variation
    between replicates, not only within them (units of the samples).

    Two-stage bootstrap: draw the replicates with replacement, then each drawn replicate's samples with replacement;
    the 2.5% and 97.5% percentiles of the medians of the pooled draws. The interval returned is the hull of that, the
    pooled samples' order-statistic interval (:func:`median_ci`) and every replicate's own median: it never claims
    more than one replicate alone would show, and where the replicates agree it is the plain interval.
    """
    groups = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not groups:
        return (float("nan"), float("nan"))
    pooled = np.concatenate(groups)
    lo, hi = median_ci(pooled)
    if len(groups) == 1:
        return lo, hi
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(groups), size=(resamples, len(groups)))
    meds = _two_stage_medians([groups], picks, _draws(groups, picks, rng))[0]
    b_lo, b_hi = np.percentile(meds, [2.5, 97.5])
    own = [float(np.median(g)) for g in groups]
    return float(min(lo, b_lo, *own)), float(max(hi, b_hi, *own))


def _draws(groups: list[np.ndarray], picks: np.ndarray, rng) -> np.ndarray:
    """Return sample indices for a two-stage bootstrap: for every resample and drawn replicate (``picks``, shape
    (B, k)), as many indices into that replicate as it has samples, padded with -1 to the largest replicate."""
    sizes = np.array([g.size for g in groups])
    drawn = sizes[picks]  # (B, k)
    width = int(sizes.max())
    idx = np.floor(rng.random((*picks.shape, width)) * drawn[..., None]).astype(int)
    idx[np.arange(width)[None, None, :] >= drawn[..., None]] = -1
    return idx


def _two_stage_medians(sets: list[list[np.ndarray]], picks: np.ndarray, idx: np.ndarray,
                       mean: bool = False) -> list[np.ndarray]:  # fmt: skip
    """Return, per set of replicate groups, the median (or with ``mean``, the mean) of every resample drawn by ``picks``
    and ``idx`` (:func:`_draws`; the same draws for every set: samples paired by index across sets stay paired)."""
    out = []
    for groups in sets:
        width = max(int(g.size) for g in groups)
        table = np.full((len(groups), width), np.nan)
        for i, g in enumerate(groups):
            table[i, : g.size] = g
        vals = np.where(idx >= 0, table[picks[..., None], np.maximum(idx, 0)], np.nan)
        vals = vals.reshape(picks.shape[0], -1)
        if mean:
            out.append(np.nanmean(vals, axis=1))
        else:
            out.append(np.nanmedian(vals, axis=1) if (idx < 0).any() else np.median(vals, axis=1))
    return out


def summarize(samples: Sequence[float], stop_reason: str = "") -> Summary:
    """Return n, median with 95% CI, IQR, min, p99, CV, unstable flag and Tukey outlier count of the samples.

    Samples labelled with their replicates (:class:`Replicated`, several of them) get the interval that holds the
    variation between replicates (:func:`hierarchical_ci`), and ``replicates`` says how many it rests on.
    """
    x = np.asarray(samples, dtype=float)
    if x.size == 0:
        raise ValueError("summarize() needs at least one sample")
    q1, med, q3, p99 = np.percentile(x, [25, 50, 75, 99])
    groups = replicate_groups(samples)
    lo, hi = hierarchical_ci(groups) if len(groups) > 1 else median_ci(x)
    mean = float(x.mean())
    cv = float(x.std(ddof=1) / mean) if x.size > 1 and mean else 0.0
    iqr = float(q3 - q1)
    outliers = int(np.count_nonzero((x < q1 - 1.5 * iqr) | (x > q3 + 1.5 * iqr)))
    return Summary(
        n=int(x.size),
        median=float(med),
        ci_low=lo,
        ci_high=hi,
        iqr=iqr,
        min=float(x.min()),
        p99=float(p99),
        cv=cv,
        unstable=bool(cv >= UNSTABLE_CV),
        outliers=outliers,
        stop_reason=stop_reason,
        replicates=len(groups),
        replicates_agree=_replicates_agree(groups),
    )


def mean_summary(samples: Sequence[float], resamples: int = HIER_RESAMPLES, seed: int = 0) -> Summary:
    """Return :func:`summarize` of the samples with the mean in place of the median (the ``median`` field holds the mean)
    and a percentile-bootstrap 95% interval of the mean: two-stage where the samples carry replicates (the replicates
    drawn first, then the samples within each), the hull with every replicate's own mean. The coverage recorded is the
    median interval's for as many samples (at least 95% from 6 on): a bootstrap over fewer is no better than their range.
    """
    st = summarize(samples)
    groups = replicate_groups(samples)
    rng = np.random.default_rng(seed)
    if len(groups) > 1:
        picks = rng.integers(0, len(groups), size=(resamples, len(groups)))
        means = _two_stage_medians([groups], picks, _draws(groups, picks, rng), mean=True)[0]
        own = [float(g.mean()) for g in groups]
    else:
        x = groups[0]
        means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
        own = []
    lo, hi = np.percentile(means, [2.5, 97.5])
    mean = float(np.concatenate(groups).mean())
    st.median, st.ci_low, st.ci_high = mean, float(min(lo, mean, *own)), float(max(hi, mean, *own))
    return st


def _replicates_agree(groups: list[np.ndarray]) -> bool | None:
    """Return whether one value lies inside every replicate's own median interval (None for one replicate)."""
    if len(groups) < 2:
        return None
    cis = [median_ci(g) for g in groups]
    return bool(max(lo for lo, _ in cis) <= min(hi for _, hi in cis))


def exact(value: float) -> Summary:
    """Return the summary of a quantity that is counted or computed, not sampled (a count, a formula): CI = the value, coverage 1."""
    v = float(value)
    return Summary(n=1, median=v, ci_low=v, ci_high=v, iqr=0.0, min=v, p99=v, cv=0.0, unstable=False, ci_level=1.0)


def derived(fn: Callable[..., float], *sample_sets: Sequence[float], paired: bool = False, resamples: int = 2000,
            seed: int = 0) -> Summary:  # fmt: skip
    """Return the summary of ``fn(median(a), median(b), ...)`` with a percentile-bootstrap 95% CI.

    Each set of samples is resampled (jointly, by index, when ``paired``: samples taken side by side
    in the same rounds), ``fn`` is applied to the resamples' medians, and the 2.5% and 97.5%
    percentiles of the results are the interval. Samples labelled with the same replicates (:class:`Replicated`) are
    drawn in two stages, the replicates first (jointly for every set), and the interval also holds ``fn`` of each
    replicate's own medians. ``n`` is the smallest input's sample count and
    ``ci_level`` the smallest input's :func:`ci_coverage`: a bootstrap over fewer than 6 samples is no
    better than the range of those samples. For a ratio, a difference or a share whose parts are in
    the results, so that a claim rule reads them and never computes a number itself.
    """
    sets = [np.asarray(s, dtype=float) for s in sample_sets]
    if not sets or any(s.size == 0 for s in sets):
        raise ValueError("derived() needs at least one non-empty set of samples")
    if paired and len({s.size for s in sets}) != 1:
        raise ValueError(f"paired samples must have equal counts, got {[s.size for s in sets]}")
    point = float(fn(*(float(np.median(s)) for s in sets)))
    rng = np.random.default_rng(seed)
    labels = _shared_replicates(sample_sets)
    own = []
    if labels is not None:  # two stages: the replicates (the same draw for every set: they ran in the same rounds)
        reps = np.unique(np.concatenate([np.unique(lab) for lab in labels]))
        by_rep = [[s[lab == r] for r in reps] for s, lab in zip(sets, labels, strict=True)]
        picks = rng.integers(0, reps.size, size=(resamples, reps.size))
        if paired:  # one draw of message indices per replicate, shared by the sets
            meds = _two_stage_medians(by_rep, picks, _draws(by_rep[0], picks, rng))
        else:
            meds = [_two_stage_medians([groups], picks, _draws(groups, picks, rng))[0] for groups in by_rep]
        with np.errstate(divide="ignore", invalid="ignore"):
            own = [float(fn(*(float(np.median(groups[r])) for groups in by_rep))) for r in range(reps.size)]
        own = [v for v in own if math.isfinite(v)]
    elif paired:
        idx = rng.integers(0, sets[0].size, size=(resamples, sets[0].size))
        meds = [np.median(s[idx], axis=1) for s in sets]
    else:
        meds = [np.median(s[rng.integers(0, s.size, size=(resamples, s.size))], axis=1) for s in sets]
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = np.asarray(fn(*meds), dtype=float)
    boot = boot[np.isfinite(boot)]
    lo, q1, q3, p99 = (np.percentile(boot, [2.5, 25, 75, 99]) if boot.size else (np.nan,) * 4)
    n = min(s.size for s in sets)
    spread = float(boot.std(ddof=1) / abs(boot.mean())) if boot.size > 1 and boot.mean() else 0.0
    hi = float(np.percentile(boot, 97.5)) if boot.size else float("nan")
    return Summary(n=int(n), median=point, ci_low=float(min(lo, point, *own)), ci_high=float(max(hi, point, *own)),
                   iqr=float(q3 - q1), min=float(boot.min()) if boot.size else float("nan"), p99=float(p99), cv=spread,
                   unstable=bool(spread >= UNSTABLE_CV), ci_level=min(ci_coverage(s.size) for s in sets),
                   replicates=1 if labels is None else int(np.unique(np.concatenate(labels)).size))  # fmt: skip


def _shared_replicates(sample_sets) -> list[np.ndarray] | None:
    """Return each set's replicate labels where every set has labels and they name the same replicates (two or more),
    else None (a plain one-stage bootstrap)."""
    labels = [getattr(s, "replicate", None) for s in sample_sets]
    if any(lab is None or np.shape(lab) != np.shape(s) for lab, s in zip(labels, sample_sets, strict=True)):
        return None
    names = [set(np.unique(lab).tolist()) for lab in labels]
    if len(names[0]) < 2 or any(n != names[0] for n in names):
        return None
    return [np.asarray(lab) for lab in labels]


def ci_overlap(a: Summary, b: Summary) -> bool:
    """Return True when the two points' median CIs overlap (then no difference is claimed)."""
    return not (a.ci_high < b.ci_low or b.ci_high < a.ci_low)


# -------------------------------------------------------------------- stopping rule


@dataclass(frozen=True)
class StoppingRule:
    """When to stop repeating a point: CI within ``rel_ci`` of the median, or the budget spent.

    Before the samples, ``warmup`` untimed calls; with ``warmup_budget_s``, fewer once the calls made (at least one)
    took that long: a call of a tenth of a second has touched its buffers, filled its caches and compiled its code
    the first time, and five of them were most of a slow point's time.
    """

    rel_ci: float = 0.05
    min_samples: int = 10
    max_samples: int = 1000
    time_budget_s: float = 1.0
    warmup: int = 3
    check_every: int = 5
    warmup_budget_s: float | None = None
    budget_floor: int = MIN_SAMPLES_95
    """The fewest samples a spent budget stops at (6: a 95% median interval; a replicate's share of it where a point
    pools several replicates)."""

    def per_replicate(self, n: int) -> StoppingRule:
        """Return the rule for one of ``n`` replicates of a point: its share of the samples, of the time budget and of
        the fewest samples a spent budget stops at (the pooled point still has at least 6; the warm-up stays whole: each
        replicate runs in its own call, on buffers of its own)."""
        if n <= 1:
            return self
        return replace(self, min_samples=max(2, math.ceil(self.min_samples / n)),
                       max_samples=max(2, math.ceil(self.max_samples / n)), time_budget_s=self.time_budget_s / n,
                       budget_floor=max(2, math.ceil(self.budget_floor / n)))  # fmt: skip

    def warm_enough(self, calls: int, elapsed_s: float) -> bool:
        """Return whether the warm-up may end after ``calls`` calls that took ``elapsed_s``."""
        if calls >= self.warmup:
            return True
        return calls >= 1 and self.warmup_budget_s is not None and elapsed_s >= self.warmup_budget_s

    def decide(self, samples: Sequence[float], elapsed_s: float) -> str | None:
        """Return why to stop ('ci', 'budget', 'max_samples') or None to go on."""
        n = len(samples)
        if n >= self.max_samples:
            return "max_samples"
        if n >= self.min_samples and n % self.check_every == 0:
            lo, hi = median_ci(samples)
            med = statistics.median(samples)
            if med and (hi - lo) / 2 <= self.rel_ci * abs(med):
                return "ci"
        if elapsed_s >= self.time_budget_s and n >= min(self.min_samples, self.budget_floor):
            return "budget"
        return None


@dataclass
class Point:
    """Raw samples of one point (seconds unless stated) with their summary."""

    samples: list[float]
    summary: Summary
    inner: int = 1
    extra: dict = field(default_factory=dict)


def repeat(sample: Callable[[], float], rule: StoppingRule) -> Point:
    """Warm up, then call ``sample()`` (which returns one measured value) until ``rule`` stops; return the point.

    The cyclic garbage collector is paused meanwhile (:func:`gc_paused`), as in every timed loop of the book.
    """
    with gc_paused():
        calls, w0 = 0, now_ns()
        while not rule.warm_enough(calls, (now_ns() - w0) * 1e-9):
            sample()
            calls += 1
        values: list[float] = []
        t0 = now_ns()
        while True:
            values.append(float(sample()))
            reason = rule.decide(values, (now_ns() - t0) * 1e-9)
            if reason:
                return Point(values, summarize(values, reason))


def calibrate_inner(run_once: Callable[[], None], min_sample_s: float = 100e-6, cap: int = 10_000) -> int:
    """Return how many back-to-back calls make one sample last at least ``min_sample_s``."""
    t0 = now_ns()
    run_once()
    first = (now_ns() - t0) * 1e-9
    if first <= 0:
        first = 1e-9
    return int(min(cap, max(1, math.ceil(min_sample_s / first))))


def time_call(fn: Callable[[], object], inner: int = 1) -> float:
    """Return the mean seconds per call of ``inner`` back-to-back calls of ``fn``."""
    t0 = now_ns()
    for _ in range(inner):
        fn()
    return (now_ns() - t0) * 1e-9 / inner


# ------------------------------------------------------------------ multi-rank rules


class CollectiveAborted(RuntimeError):
    """Another rank failed inside a collective timing loop; this rank stops too instead of waiting for ever."""



def _collective_rounds(comm, sample: Callable[[], Sequence[float]], rule: StoppingRule, op: str,
                       warmup: int | None = None) -> tuple[list[list[float]], list[np.ndarray], str]:  # fmt: skip
    """The one collective timing loop: Barrier, ``sample()`` -> vector on every rank, element-wise ``op`` over ranks.

    The stopping decision is taken on rank 0 on the first element of the reduced
    vector and broadcast, so every rank runs the same number of iterations and
    none is left waiting in a collective. Returns (this rank's vectors, the reduced
    vectors, the stop reason).
    """
    from mpi4py import MPI  # imported here: the client process never needs MPI

    mpi_op = {"max": MPI.MAX, "min": MPI.MIN, "sum": MPI.SUM}[op]

    def guarded():
        """Run ``sample()``; on an exception every rank learns of it in the same collective and raises."""
        try:
            return np.asarray(sample(), dtype=np.float64).reshape(-1), None
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            return None, exc

    def agree(exc) -> None:
        failed = comm.allreduce(1 if exc is not None else 0, op=MPI.MAX)
        if failed:
            if exc is not None:
                raise exc
            raise CollectiveAborted(f"another rank failed while rank {comm.rank} was timing a collective step")

    wrule = rule if warmup is None else replace(rule, warmup=warmup)
    calls, w0 = 0, now_ns()
    while True:  # rank 0 decides when the warm-up ends, every rank follows
        done = wrule.warm_enough(calls, (now_ns() - w0) * 1e-9) if comm.rank == 0 else None
        if comm.bcast(done, root=0):
            break
        comm.Barrier()
        agree(guarded()[1])
        calls += 1
    mine: list[list[float]] = []
    cross: list[np.ndarray] = []
    firsts: list[float] = []
    t0 = now_ns()
    reason = None
    while reason is None:
        comm.Barrier()
        v, exc = guarded()
        agree(exc)  # before the Allreduce: a rank that failed never leaves the others waiting in it
        out = np.empty_like(v)
        comm.Allreduce(v, out, op=mpi_op)
        mine.append(v.tolist())
        cross.append(out)
        firsts.append(float(out[0]))
        decision = rule.decide(firsts, (now_ns() - t0) * 1e-9) if comm.rank == 0 else None
        reason = comm.bcast(decision, root=0)
    return mine, cross, reason


def repeat_collective(comm, sample: Callable[[], float], rule: StoppingRule, reduce: str = "max") -> Point:
    """Time a collective step on every rank of ``comm`` (barrier before each sample); return the cross-rank point.

    Each iteration: ``Barrier``, then every rank calls ``sample()`` and returns its
    own duration; the per-iteration cross-rank value is ``reduce`` over ranks
    (``max`` by default: a collective is done when its slowest rank is). The
    stopping decision is taken on rank 0 and broadcast, so every rank runs the
    same number of iterations and none is left waiting. The per-rank samples are
    kept in ``point.extra['per_rank']`` (on rank 0).
    """
    with gc_paused():
        mine, cross, reason = _collective_rounds(comm, lambda: [float(sample())], rule, reduce)
    values = [float(c[0]) for c in cross]
    per_rank = comm.gather([m[0] for m in mine], root=0)
    point = Point(values, summarize(values, reason))
    point.extra["per_rank"] = per_rank
    point.extra["cross_rank"] = reduce
    return point


def repeat_split(comm, step: Callable[[], tuple], rule: StoppingRule, warmup: int | None = None,
                 parts: Sequence[str] = ()) -> dict | None:  # fmt: skip
    """Time a step that mixes compute and collectives on every rank; rank 0 returns the split samples (s).

    ``step()`` returns (wall seconds, seconds inside collectives) on each rank, and
    with ``parts`` a third item: that rank's seconds in each named part of the step.
    Per sample: ``total`` = the slowest rank's wall time; ``compute`` = the largest
    time any rank spent outside collectives; ``communication`` = total - compute
    (time in collectives, waiting for the slower rank included); ``in_collectives_min``
    = the least time any rank spent inside collectives (the rank that arrives last
    waits least: close to the pure transfer time); each part = the largest time any
    rank spent in it. Other ranks return None.
    """
    n_parts = len(parts)

    def vec():
        got = step()
        wall, inside = got[0], got[1]
        extra = list(got[2]) if n_parts else []
        if len(extra) != n_parts:
            raise ValueError(f"the step returned {len(extra)} part times for the parts {list(parts)}")
        return [wall, wall - inside, -inside, *extra]  # max over ranks of each; the third gives -min(inside)

    with gc_paused():
        _, cross, reason = _collective_rounds(comm, vec, rule, "max", warmup)
    if comm.rank != 0:
        return None
    total = [float(c[0]) for c in cross]
    compute = [float(c[1]) for c in cross]
    out = {"total": total, "compute": compute, "communication": [t - c for t, c in zip(total, compute, strict=True)],
           "in_collectives_min": [float(-c[2]) for c in cross], "stop_reason": reason}  # fmt: skip
    for j, name in enumerate(parts):
        out[name] = [float(c[3 + j]) for c in cross]
    return out


def calibrate_inner_collective(comm, run_once: Callable[[], None], min_sample_s: float = 100e-6, cap: int = 10_000) -> int:
    """Like :func:`calibrate_inner` for a collective call: every rank makes the same calls; rank 0 decides.

    (Calibrating a collective on one rank alone would deadlock.)
    """
    inner = 1
    while True:
        comm.Barrier()
        t0 = now_ns()
        for _ in range(inner):
            run_once()
        enough = (now_ns() - t0) * 1e-9 >= min_sample_s or inner >= cap
        if comm.bcast(enough if comm.rank == 0 else None, root=0):
            return inner
        inner *= 2


def fit_alpha_beta(sizes_bytes: Sequence[float], times_s: Sequence[float]) -> tuple[float, float]:
    """Return (alpha in s, beta in B/s) of t = alpha + n / beta, fitted with relative (1/t) weights."""
    n = np.asarray(sizes_bytes, dtype=float)
    t = np.asarray(times_s, dtype=float)
    if n.size < 2:
        raise ValueError("fit_alpha_beta needs at least two sizes")
    w = 1.0 / t  # relative residuals: small messages count as much as large ones
    a = np.column_stack([np.ones_like(n), n]) * w[:, None]
    coef, *_ = np.linalg.lstsq(a, t * w, rcond=None)
    alpha, inv_beta = float(coef[0]), float(coef[1])
    if inv_beta <= 0:
        raise ValueError("alpha-beta fit gave a non-positive per-byte time; the sweep is too short")
    return max(alpha, 0.0), 1.0 / inv_beta


def alpha_beta_time(size_bytes, alpha_s: float, beta_Bps: float):
    """Return the alpha-beta model's time in seconds for ``size_bytes``."""
    return alpha_s + np.asarray(size_bytes, dtype=float) / beta_Bps
