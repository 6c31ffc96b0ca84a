"""Chapter 3, "Broadcast serialization": SGLang's multimodal from_dict + broadcast path across TP ranks, under load.

Experiments (TP ranks are MPI engines; :mod:`ipcbench.multimodal` is the data path):

* **phases**: per payload size, on 2 ranks: ``from_dict`` with SHA-256 (SGLang's path:
  ``tobytes()`` then hash), its two parts (``tobytes`` copy, SHA-256 of the array's memory),
  xxh3 and BLAKE3 hashes, ``pickle.dumps`` / ``pickle.loads`` of the constructed object (default
  protocol, as ``broadcast_pyobj``), the broadcast of those bytes (size ``Bcast`` + bytes
  ``Bcast``, slowest rank), mpi4py's plain ``bcast`` of the object (pickle, transfer and
  unpickle in one call, slowest rank), and the out-of-band path (pickle 5 stream, buffer ``Bcast``,
  ``loads`` on the received buffers);
* **latency**: end-to-end latency of one request at a time (no load) per strategy and payload
  class: ``Barrier``, then every rank processes the request; done when the last rank holds its
  :class:`~ipcbench.multimodal.MultimodalInputs`. Also per-rank phase times. Measured at TP = 2
  and, on a 4-engine cluster, TP = 4 (oversubscribed on 2 cores, labelled);
* **load**: Poisson arrivals at the same absolute rates for every strategy of a class (fractions of
  the class's highest no-load capacity, so every strategy is driven past its saturation), each
  point run ``load_repeats`` times (interleaved, a new arrival sequence each time): throughput
  (completed / (last completion - first arrival)), p50 and p99 latency (arrival to the last rank's
  completion; p99 only from 100 requests or more), per-rank CPU utilisation (CPU seconds / wall
  seconds of the run), each with an interval over the runs; capacity per run (the highest
  throughput over the rates) and its interval over the runs;
* **scheduler**: a scheduler loop on every rank, as SGLang's: the root takes the requests that have arrived (a
  batch), every rank builds their inputs, then a step of fixed time (a forward during which the CPU is free) for the
  batch. 10 MB requests as Poisson arrivals at the same absolute rates for every configuration, with and without the
  step: building on every rank, broadcasting the built object (blocking), the same broadcast from a helper thread
  overlapped with the previous batch's step (the source's option B), and a hash cache keyed by the feature's identity
  that hashes only on a miss (its option C) with 0, 50 and 90% of the requests repeating a feature. Throughput and
  median latency per run, the latency of every request, the cache's hit rate and the steps the broadcast overlapped;
* **models**: the source's latency model (before: T_from_dict; the change: T_from_dict + T_pickle +
  T_bcast + T_unpickle) and the full model (every phase a strategy runs on its critical path) with the
  measured phase costs, against the measured no-load latency; a TP = 8 projection with chapter
  0's alpha-beta fit for the broadcast.

Every strategy's result is checked on every rank against a single-process ``from_dict`` of the
same request before anything is timed.
"""

from __future__ import annotations

import math
import pickle
import time

import numpy as np
import pandas as pd

from .. import claims, measure, profiles, results
from .. import multimodal as mm
from ..measure import StoppingRule, now_ns
from ._common import (
    REPLICATES,
    Replicates,
    add_time,
    machine_state,
    per_message,
    progress,
    require_engines,
    run_meta,
    run_point,
    stats_rows,
)

CHAPTER = "broadcast"
MB = 1e6
CLASS_LABELS = {"small_image": "small image", "large_image": "large image", "video": "video"}
SOURCE_SIZE = 10 * MB  # the source's table assumes 10 MB of data
SPIN_S = 0.002
"""A load run's root (and every rank of ``replicated``) sleep until an arrival is this close, then spin."""
SATURATION_FACTOR = 5
"""The saturation point: the offered rate where the median latency (every run's requests pooled) first exceeds this
many times its value at the lowest rate."""
P99_MIN_REQUESTS = 100
"""A p99 is reported only from this many requests or more (fewer: the 99th percentile is the largest one or two)."""
SUSTAIN = 0.95
"""The target's "at least raw_bcast's throughput": the best strategy's capacity >= this fraction of it in every class."""
BCAST_TREE_BELOW = 12288
"""MPICH broadcasts with a binomial tree below this many bytes, scatter + ring allgather above (the model's switch)."""


def parameters(profile: str | None = None) -> dict:
    """Return a profile's sweep: payload classes (feature bytes), phase sizes, load rates, requests per point."""
    name = profiles.profile_name(profile)
    base = {
        "classes": {"small_image": 100_000, "large_image": 2_000_000, "video": 20_000_000},
        "phase_sizes": [10_000, 100_000, 1_000_000, 2_000_000, 10_000_000, 20_000_000],
        # offered rates: fractions of the class's highest no-load capacity (1 / the lowest TP = 2 latency of any
        # strategy), the same absolute rates for every strategy; each point runs load_repeats times
        "rate_fractions": [0.5, 1.5], "load_repeats": 3,
        # requests per load run: rate x duration, within [min, max]
        "requests": 8, "max_requests": 300, "load_duration_s": 0.2,
        "pool_bytes": 64_000_000,
        "tp_oversubscribed": 4,
        "replicates": REPLICATES,
        # the strategies timed at the oversubscribed TP (None: every one): the old path, the source's change and its
        # baseline, which the page's TP = 4 ratios, option D's thresholds and the projection's check read (four ranks on
        # 2 cores are oversubscribed: the hashing alternatives are timed at TP = 2)
        "tp_oversubscribed_strategies": ["replicated", "raw_bcast", "object_bcast"],
        "seed": 3,
        # the scheduler loop: requests of the source's 10 MB, a step of 10 ms (a forward during which the CPU is free),
        # offered rates as fractions of 1 / (from_dict + step) measured in this run (3: past what batching lets any
        # strategy serve), one round per replicate
        "scheduler": {"feature_bytes": int(SOURCE_SIZE), "step_s": 0.01, "rate_fractions": [0.5, 3.0],
                      "hit_rates": [0.0, 0.5, 0.9], "requests": 8, "max_requests": 40, "duration_s": 0.15,
                      "max_batch": 8},
    }
    if name == "quick":
        return base
    if name == "standard":
        return {**base, "classes": {**base["classes"], "video": 40_000_000},
                # the classes' sizes and a decade apart between them (the phase curves are straight on log axes)
                "phase_sizes": [10_000, 100_000, 1_000_000, 2_000_000, 10_000_000, 20_000_000, 40_000_000],
                # below capacity and saturated (capacity is what a saturated run serves); 6 runs: a 95% interval
                # a load run lasts ~0.2 s (as quick): its
                # capacity is one sample, and the 6 runs per point give the interval. The floor of requests binds
                # only the video class (40 MB: 0.03-0.3 s a request). A saturated run of n requests serves
                # n / ((n - 1) b + L) per second (b: the busiest rank's time per request, L: a request's latency):
                # 6 requests instead of 10 read at most ~6% lower where ranks overlap requests by half (b = L / 2),
                # nothing where they do not (b = L); the run's time per point records what it saves
                # the saturated rate gives capacity (6 runs: its 95% interval); the rate below it, the latency of a
                # lightly loaded server on the page, runs in the first 2 (its interval is over their requests)
                "rate_fractions": [0.5, 2.0], "load_repeats": 6, "light_rate_repeats": 2, "requests": 6,
                "max_requests": 1000, "load_duration_s": 0.2}  # fmt: skip
    return {**base, "classes": {**base["classes"], "video": 50_000_000},
            "phase_sizes": [10_000 * 2**k for k in range(13)],
            "rate_fractions": [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0], "load_repeats": 8, "requests": 100,
            "max_requests": 20000, "load_duration_s": 2.0, "tp_oversubscribed_strategies": None}  # fmt: skip


# ----------------------------------------------------------------------- requests on the engines

_POOLS: dict = {}


def _pool(feature_bytes: int, seed: int, pool_bytes: int) -> list[dict]:
    """Return distinct requests of one class, together larger than ``pool_bytes`` (cycled, so caches stay cold)."""
    key = (feature_bytes, seed, pool_bytes)
    if key not in _POOLS:
        _POOLS.clear()  # one class at a time: a video pool is ~100 MB per rank
        count = max(2, min(64, math.ceil(pool_bytes / feature_bytes)))
        modality = "video" if feature_bytes >= 10_000_000 else "image"
        _POOLS[key] = [mm.make_request(feature_bytes, modality, seed=seed * 1000 + k) for k in range(count)]
    return _POOLS[key]


_CHECKED: set = set()  # (strategy, pool key) already checked on this engine's pool


def drop_pools(comm=None) -> None:
    """Free the request pools an engine holds (and forget which strategies were checked on them)."""
    _POOLS.clear()
    _CHECKED.clear()


def _check(comm, strategy: str, raw: dict, root: int = 0) -> None:
    """Raise unless every rank's result equals a single-process from_dict of ``raw`` (pad values and features)."""
    algorithm = mm.STRATEGY_SPEC[strategy][2]
    got = mm.process_request(comm, strategy, raw, root)
    mine = got.fingerprint()
    prints = comm.allgather(mine)
    want = comm.bcast(mm.MultimodalInputs.from_dict(raw, algorithm).fingerprint() if comm.rank == root else None,
                      root=root)  # fmt: skip
    bad = [r for r, p in enumerate(prints) if p != want]
    if bad:
        raise AssertionError(f"strategy {strategy}: ranks {bad} hold different MultimodalInputs than from_dict on the root")


# ----------------------------------------------------------------------------- SPMD: phases


def phase_point(comm, size: int, rule: StoppingRule, seed: int = 0) -> dict | None:
    """Time every phase of the data path for a request with ``size`` bytes of features; rank 0 returns samples (s)."""
    from mpi4py import MPI

    raw = mm.make_request(size, "video" if size >= 10_000_000 else "image", seed=seed)
    obj = mm.MultimodalInputs.from_dict(raw)
    feature = raw["mm_items"][0]["feature"]
    out: dict[str, list[float]] = {}

    def local(name, fn):
        if comm.rank == 0:
            out[name] = measure.repeat(lambda: measure.time_call(fn), rule).samples
        comm.Barrier()

    local("from_dict", lambda: mm.MultimodalInputs.from_dict(raw, "sha256"))
    local("tobytes", lambda: np.ascontiguousarray(feature).tobytes())
    for algo in mm.HASHES:
        local(f"hash_{algo}", lambda a=algo: mm.hash_feature(feature, a, copy=False))
    local("from_dict_xxh3", lambda: mm.MultimodalInputs.from_dict(raw, "xxh3"))
    data = pickle.dumps(obj)
    local("pickle", lambda: pickle.dumps(obj))
    local("unpickle", lambda: pickle.loads(data))
    bufs: list = []
    meta = pickle.dumps((raw, obj.hashes()), protocol=5, buffer_callback=bufs.append)
    local("pickle_oob", lambda: pickle.dumps((raw, obj.hashes()), protocol=5, buffer_callback=[].append))
    raws = [np.frombuffer(b.raw(), dtype=np.uint8).copy() for b in bufs]
    local("unpickle_oob", lambda: pickle.loads(meta, buffers=raws))

    local("to_tensor", lambda: mm.to_tensor(data))  # SGLang's two copies of the pickled bytes, alone
    received = mm.to_tensor(data)
    local("from_tensor", lambda: mm.from_tensor(received))
    size_buf = np.array([len(data)], dtype=np.int64)

    def bcast_bytes():  # as broadcast_pyobj between pickle and unpickle: copy in, the size, the bytes, copy out
        t = now_ns()
        if comm.rank == 0:
            tensor = mm.to_tensor(data)
            comm.Bcast([size_buf, MPI.INT64_T], root=0)
            comm.Bcast([tensor, MPI.BYTE], root=0)
        else:
            comm.Bcast([size_buf, MPI.INT64_T], root=0)
            buf = np.empty(int(size_buf[0]), np.uint8)
            comm.Bcast([buf, MPI.BYTE], root=0)
            mm.from_tensor(buf)
        return (now_ns() - t) * 1e-9

    p = measure.repeat_collective(comm, bcast_bytes, rule)
    out["bcast"] = p.samples if comm.rank == 0 else None
    def bcast_oob():  # as broadcast_oob: header, stream, then each buffer into one allocated for it
        t = now_ns()
        comm.bcast((len(meta), [r.nbytes for r in raws]), root=0)
        comm.Bcast([np.frombuffer(meta, dtype=np.uint8) if comm.rank == 0 else np.empty(len(meta), np.uint8), MPI.BYTE], root=0)
        for r in raws:
            comm.Bcast([r if comm.rank == 0 else np.empty_like(r), MPI.BYTE], root=0)
        return (now_ns() - t) * 1e-9

    p = measure.repeat_collective(comm, bcast_oob, rule)
    out["bcast_oob"] = p.samples if comm.rank == 0 else None

    def bcast_mpi4py():  # mpi4py's own lowercase bcast: pickle, transfer and unpickle in one call
        t = now_ns()
        comm.bcast(obj if comm.rank == 0 else None, root=0)
        return (now_ns() - t) * 1e-9

    p = measure.repeat_collective(comm, bcast_mpi4py, rule)
    if comm.rank != 0:
        return None
    out["mpi4py_bcast"] = p.samples
    return {"samples": out, "pickled_bytes": len(data), "feature_bytes": int(feature.nbytes)}


# ---------------------------------------------------------------------------- SPMD: latency


def latency_point(comm, strategy: str, feature_bytes: int, rule: StoppingRule, seed: int, pool_bytes: int) -> dict | None:
    """Time one request at a time end to end under ``strategy`` (slowest rank); rank 0 returns samples and phases (s)."""
    pool = _pool(feature_bytes, seed, pool_bytes)
    _check(comm, strategy, pool[0])
    import resource

    state = {"i": 0}
    calls: list[dict[str, float]] = []  # this rank's phase seconds (and minor faults) of every call

    def one():
        raw = pool[state["i"] % len(pool)]
        state["i"] += 1
        phases: dict[str, float] = {}
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = now_ns()
        mm.process_request(comm, strategy, raw if (comm.rank == 0 or strategy == "replicated") else None, 0, phases)
        dt = (now_ns() - t) * 1e-9
        phases["minor_faults"] = float(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        calls.append(phases)
        return dt

    p = measure.repeat_collective(comm, one, rule)
    # the same statistic as the latency it is set against: the median over the timed calls (warm-ups left out)
    timed = calls[len(calls) - len(p.samples):]
    names = sorted(set().union(*timed)) if timed else []
    per_rank_phases = comm.gather({k: float(np.median([c.get(k, 0.0) for c in timed])) for k in names}, root=0)
    if comm.rank != 0:
        return None
    return {"samples": p.samples, "stop_reason": p.summary.stop_reason, "phases": per_rank_phases}


# ------------------------------------------------------------------------------- SPMD: load


def _wait_until(t_ns: int) -> None:
    while True:
        left = t_ns - now_ns()
        if left <= 0:
            return
        if left > SPIN_S * 1e9:
            time.sleep((left - SPIN_S * 1e9 / 2) * 1e-9)


def load_point(comm, strategy: str, feature_bytes: int, rate: float, requests: int, seed: int,
               pool_bytes: int, repeat: int = 0) -> dict | None:  # fmt: skip
    """Serve ``requests`` Poisson arrivals at ``rate``/s under ``strategy``; rank 0 returns per-request times and CPU.

    ``repeat`` draws a new arrival sequence for the same rate (the requests come from the same pool)."""
    pool = _pool(feature_bytes, seed, pool_bytes)
    key = (strategy, feature_bytes, seed, pool_bytes)
    if key not in _CHECKED:  # once per strategy and pool: every rank decides alike (same calls, same order)
        _check(comm, strategy, pool[0])
        _CHECKED.add(key)
    gaps = np.random.default_rng([seed, int(rate * 1000), repeat]).exponential(1.0 / rate, requests)
    arrivals = np.cumsum(gaps) - gaps[0] + 0.005  # first request 5 ms after the start
    holds = comm.rank == 0 or strategy == "replicated"
    finish = np.empty(requests)
    comm.Barrier()
    with measure.gc_paused():
        t0 = now_ns()
        cpu0 = time.process_time()
        for i in range(requests):
            if holds:
                _wait_until(t0 + int(arrivals[i] * 1e9))
            mm.process_request(comm, strategy, pool[i % len(pool)] if holds else None, 0)
            finish[i] = (now_ns() - t0) * 1e-9
        wall = (now_ns() - t0) * 1e-9
        cpu = time.process_time() - cpu0
    gathered = comm.gather((finish, cpu, wall), root=0)
    if comm.rank != 0:
        return None
    done = np.max(np.stack([g[0] for g in gathered]), axis=0)
    latency = done - arrivals
    return {"latency": latency.tolist(), "arrivals": arrivals.tolist(), "done": done.tolist(),
            "throughput": requests / (done.max() - arrivals[0]),
            "cpu_util": [g[1] / g[2] for g in gathered]}  # fmt: skip


def load_round(comm, feature_bytes: int, points: list, seed: int, pool_bytes: int, repeat: int) -> list | None:
    """Run one round of load points of one class back to back (``points``: (strategy, rate, requests) in order);
    rank 0 returns their results. One engine call per round keeps the calls' own overhead out of the sweep."""
    out = [load_point(comm, strategy, feature_bytes, rate, n, seed, pool_bytes, repeat) for strategy, rate, n in points]
    return out if comm.rank == 0 else None


# -------------------------------------------------------------------------- SPMD: the scheduler


SCHEDULER_STRATEGIES = ("replicated", "object_bcast", "object_bcast_async", "hash_cache")
"""What the scheduler experiment runs: every rank builds the inputs (the source's before); the root builds and
broadcasts them, blocking (the change); the same broadcast in a helper thread overlapped with the scheduler's step (the
source's option B); and every rank builds them with a hash cache keyed by the feature's identity, hashing only on a miss
(the source's option C: cached and lazy hashing)."""


def request_schedule(requests: int, rate: float, hit_rate: float, seed: int, repeat: int) -> tuple[np.ndarray, list[int]]:
    """Return Poisson arrival times (s, the first at 5 ms) and each request's identity: a new one, or with probability
    ``hit_rate`` one seen before (a feature sent again). The arrivals depend on the rate and the repeat only, so every
    configuration offered one rate in one round sees the same arrival times."""
    gaps = np.random.default_rng([seed, int(rate * 1000), repeat]).exponential(1.0 / rate, requests)
    arrivals = np.cumsum(gaps) - gaps[0] + 0.005
    rng = np.random.default_rng([seed, int(rate * 1000), repeat, int(round(hit_rate * 100)), 1])
    keys: list[int] = []
    for i in range(requests):
        keys.append(keys[int(rng.integers(len(keys)))] if keys and rng.random() < hit_rate else i)
    return arrivals, keys


def scheduler_point(comm, strategy: str, feature_bytes: int, rate: float, requests: int, step_s: float, seed: int,
                    pool_bytes: int, repeat: int = 0, hit_rate: float = 0.0, max_batch: int = 8) -> dict | None:  # fmt: skip
    """Serve Poisson arrivals through a scheduler loop on every rank; rank 0 returns latencies, throughput and counts.

    Each iteration, as a TP scheduler's event loop: the root takes the requests that have arrived (at most
    ``max_batch``) and broadcasts how many (every rank follows); the batch's inputs are built under ``strategy``; then
    every rank runs the step: a forward of ``step_s`` seconds during which the scheduler's CPU is free (a GPU's
    forward; 0: no step). A request is done when the step that includes it ends on every rank. With
    ``object_bcast_async`` a helper thread builds and broadcasts batch k (on a duplicate communicator) while the
    main thread runs the step of batch k - 1; its requests are done one step later.
    """
    import threading

    if strategy not in SCHEDULER_STRATEGIES:
        raise ValueError(f"unknown scheduler strategy {strategy!r}: use one of {SCHEDULER_STRATEGIES}")
    pool = _pool(feature_bytes, seed, pool_bytes)
    sync = {"object_bcast_async": "object_bcast", "hash_cache": "replicated"}.get(strategy, strategy)
    key = (sync, feature_bytes, seed, pool_bytes)
    if key not in _CHECKED:
        _check(comm, sync, pool[0])
        _CHECKED.add(key)
    arrivals, keys = request_schedule(requests, rate, hit_rate, seed, repeat)
    holds = comm.rank == 0 or sync == "replicated"
    cache: dict[int, list[int]] = {}
    counts = {"hits": 0, "lookups": 0}
    starts: list[int] = []

    def build(c, batch):
        starts.append(now_ns())
        for i in batch:
            raw = pool[keys[i] % len(pool)] if holds else None
            if strategy != "hash_cache":
                mm.process_request(c, sync, raw, 0)
                continue
            counts["lookups"] += 1
            known = cache.get(keys[i])
            if known is None:  # a miss: hash now, and keep the hashes under the feature's identity
                cache[keys[i]] = mm.MultimodalInputs.from_dict(raw).hashes()
            else:  # a hit: the inputs are built from the kept hashes, nothing is hashed
                mm.MultimodalInputs.from_dict(raw, hashes=known)
                counts["hits"] += 1

    async_ = strategy == "object_bcast_async"
    helper_comm = comm.Dup() if async_ else None
    finish = np.full(requests, np.nan)
    steps_ns: list[int] = []
    overlapped: list[bool] = []
    batches: list[int] = []
    nxt, pending = 0, []

    def step(done: list) -> int:
        """Run the step (the CPU free for ``step_s``), record its time, and mark ``done``'s requests finished at its
        end; return the end (ns)."""
        s0 = now_ns()
        if step_s > 0:
            time.sleep(step_s)
        s1 = now_ns()
        steps_ns.append(s1 - s0)
        finish[done] = (s1 - t0) * 1e-9
        return s1

    comm.Barrier()
    try:
        with measure.gc_paused():
            t0 = now_ns()
            while True:
                if comm.rank == 0:
                    if not pending and nxt < requests:
                        _wait_until(t0 + int(arrivals[nxt] * 1e9))
                    now = (now_ns() - t0) * 1e-9
                    k = 0
                    while nxt + k < requests and k < max_batch and arrivals[nxt + k] <= now:
                        k += 1
                else:
                    k = None
                k = comm.bcast(k, root=0)  # the scheduler's receive: every rank learns the batch
                batch = list(range(nxt, nxt + k))
                nxt += k
                if batch:
                    batches.append(k)
                if not batch and not pending:
                    if nxt >= requests:
                        break
                    continue
                if async_:
                    helper, n_starts, failed = None, len(starts), []

                    def build_in_helper(batch=batch, failed=failed):
                        try:
                            build(helper_comm, batch)
                        except BaseException as exc:  # noqa: BLE001 - re-raised by the main thread after the join
                            failed.append(exc)

                    if batch:
                        helper = threading.Thread(target=build_in_helper)
                        helper.start()
                    if pending:
                        s1 = step(pending)
                    if helper is not None:
                        helper.join()
                        if failed:
                            raise failed[0]
                        if pending:
                            overlapped.append(starts[n_starts] < s1)
                    pending = batch
                    continue
                build(comm, batch)
                step(batch)
    finally:
        if helper_comm is not None:
            helper_comm.Free()
    gathered = comm.gather((finish, counts, steps_ns), root=0)
    if comm.rank != 0:
        return None
    done = np.max(np.stack([g[0] for g in gathered]), axis=0)
    if np.isnan(done).any():
        raise AssertionError(f"scheduler {strategy}: {int(np.isnan(done).sum())} requests never completed")
    latency = done - arrivals
    repeats = sum(1 for i, k_ in enumerate(keys) if k_ != i)
    return {"latency": latency.tolist(), "throughput": requests / (done.max() - arrivals[0]),
            "hit_rate": counts["hits"] / counts["lookups"] if counts["lookups"] else float("nan"),
            "asked_repeats": repeats / requests, "hits": counts["hits"],
            "step_s": float(np.mean(steps_ns)) * 1e-9 if steps_ns else 0.0,
            "overlap": float(np.mean(overlapped)) if overlapped else float("nan"),
            "mean_batch": float(np.mean(batches)), "requests": requests}  # fmt: skip


def scheduler_round(comm, feature_bytes: int, points: list, seed: int, pool_bytes: int, repeat: int,
                    max_batch: int = 8) -> list | None:  # fmt: skip
    """Run one round of scheduler points back to back (``points``: (strategy, rate, requests, step_s, hit_rate, ...)
    in order); rank 0 returns their results."""
    out = [scheduler_point(comm, st, feature_bytes, rate, n, step, seed, pool_bytes, repeat, hit, max_batch)
           for st, rate, n, step, hit, *_ in points]  # fmt: skip
    return out if comm.rank == 0 else None


# ------------------------------------------------------------------------------- the chapter


CLAIMED_STRATEGIES = ("replicated", "raw_bcast", "object_bcast")
"""The strategies whose no-load latency at TP = 2 seed 002's claims read (the source's before, its change and the
raw request broadcast): measured in every replicate; the hashing alternatives in the first."""


def _claimed_phase_sizes(params: dict) -> set[int]:
    """Return the phase sizes seed 002's claims read: the source's 10 MB, 1 MB and every payload class's size."""
    return {int(SOURCE_SIZE), 1_000_000, *params["classes"].values()}


def engines(profile: str | None = None) -> int:
    """Return the MPI engines this chapter needs: the oversubscribed TP degree of the profile."""
    return int(parameters(profile)["tp_oversubscribed"])


def run(cluster, profile: str | None = None) -> pd.DataFrame:
    """Run chapter 3 on ``cluster`` (>= 2 ranks; TP = 4 also when it has 4); write results; return the summary."""
    name = profiles.profile_name(profile)
    rule = profiles.stopping_rule(name)
    params = parameters(name)
    require_engines(cluster, engines(name), CHAPTER, f"TP = 2 and the oversubscribed TP = {params['tp_oversubscribed']}")
    started = results.now_iso()
    machine_start = machine_state(cluster)  # CPU steal, load and two calibration kernels, again at the end
    base = {"chapter": CHAPTER, "payload": "float32 features [patches, 1176]"}
    rows: list[dict] = []
    samples: list[dict] = []
    seed, pool_bytes = params["seed"], params["pool_bytes"]
    tp_big = params["tp_oversubscribed"]

    plan = Replicates(cluster, params["replicates"])
    tps = [2] + ([tp_big] if tp_big else [])
    try:
        # every comparison runs in each replicate, its configurations in a rotated order; the replicates spread over
        # the chapter, the last in fresh engines (each load round is one replicate of its class's runs)
        phase_samples: dict[tuple, list] = {}
        phase_info: dict[int, dict] = {}
        lat_samples: dict[tuple, list] = {}
        phase_rows = []
        load_rows, run_latencies = [], {}
        rates: dict[str, list] = {}
        reps = params["load_repeats"]
        per_pass = [reps // plan.n + (1 if r < reps % plan.n else 0) for r in range(plan.n)]  # load rounds per pass
        steps = (plan.n * (len(params["phase_sizes"]) + len(params["classes"]) + 1)
                 + (len(tps) - 1) * len(params["classes"]) + reps * len(params["classes"]))  # fmt: skip
        sched_plan, sched_got = None, {}
        ticks = iter(progress(range(steps), "broadcast (every replicate)"))
        repeat = 0
        for rep in plan.passes():
            # 1. phase costs against size (every phase variant of a size in one call)
            sizes = [n for n in params["phase_sizes"] if rep == 0 or n in _claimed_phase_sizes(params)]
            for size in plan.order("phases", sizes, rep):
                next(ticks, None)
                t0 = time.perf_counter()
                pt = run_point(cluster, phase_point, size, plan.rule(rule, rep), seed, ranks=2, timeout=600)[0]
                add_time("broadcast: phases", time.perf_counter() - t0)
                phase_info[size] = {"feature_bytes": pt["feature_bytes"], "pickled_bytes": pt["pickled_bytes"]}
                for metric, values in pt["samples"].items():
                    phase_samples.setdefault((size, metric), []).append((rep, values))
            # 2. no-load latency per strategy and class (TP = 2, and the oversubscribed TP): a class's strategies
            # together; the oversubscribed TP (shown on the page, never judged) in the first replicate only
            for tp in tps if rep == 0 else [2]:
                for cls in params["classes"]:
                    next(ticks, None)
                    fb = params["classes"][cls]
                    strategies = [x for x in strategies_at(tp, params) if rep == 0 or x in CLAIMED_STRATEGIES]
                    for strategy in plan.order(f"latency/{tp}/{cls}", strategies, rep):
                        t0 = time.perf_counter()
                        replicated = tp == 2 and strategy in CLAIMED_STRATEGIES
                        pt = run_point(cluster, latency_point, strategy, fb, plan.rule(rule, rep) if replicated else rule, seed,
                                       pool_bytes, ranks=tp, timeout=600)[0]  # fmt: skip
                        add_time(f"broadcast: no-load latency, TP = {tp}", time.perf_counter() - t0)
                        lat_samples.setdefault((tp, cls, strategy), []).append((rep, pt["samples"]))
                        for rank, ph in enumerate(pt["phases"]):
                            for phase, value in ph.items():
                                phase_rows.append({"variant": strategy, "payload_class": cls, "ranks": tp, "rank": rank,
                                                   "phase": phase, "value": value, "replicate": rep,
                                                   "unit": "faults per request" if phase == "minor_faults" else "s"})  # fmt: skip
            # 3. load: Poisson arrivals, TP = 2, the same absolute rates for every strategy of a class (fractions of the
            # class's highest no-load capacity in the first replicate), each point repeated over the replicates; a
            # round runs every strategy and rate of a class in one call (one pool each)
            for cls in params["classes"]:
                if cls not in rates:
                    lat0 = {st: float(np.median(lat_samples[(2, cls, st)][0][1])) for st in mm.STRATEGIES}
                    fastest = min(lat0.values())
                    rates[cls] = [(strategy, f, f / fastest, 1.0 / lat0[strategy]) for strategy in mm.STRATEGIES
                                  for f in params["rate_fractions"]]  # fmt: skip
            for k in range(per_pass[rep]):
                for cls, fb in params["classes"].items():
                    next(ticks, None)
                    light = params.get("light_rate_repeats")
                    here = [x for x in rates[cls] if light is None or repeat < light
                            or x[1] == max(params["rate_fractions"])]  # fmt: skip
                    pts = plan.order(f"load/{cls}", here, repeat, label=lambda x: f"{x[0]}@{x[1]:g}")
                    calls = [(strategy, rate, requests_at(rate, params, cap_)) for strategy, _, rate, cap_ in pts]
                    t0 = time.perf_counter()
                    got = run_point(cluster, load_round, fb, calls, seed, pool_bytes, repeat, ranks=2, timeout=900)[0]
                    add_time("broadcast: load rounds", time.perf_counter() - t0)
                    for (strategy, frac, rate, _), (_, _, n), pt in zip(pts, calls, got, strict=True):
                        lat = np.asarray(pt["latency"])
                        run_latencies.setdefault((cls, strategy, frac), []).append(lat)
                        load_rows.append({"variant": strategy, "payload_class": cls, "feature_bytes": fb, "offered_rate": rate,
                                          "rate_fraction": frac, "repeat": repeat, "replicate": rep, "requests": n,
                                          "throughput": pt["throughput"], "latency_p50": float(np.median(lat)),
                                          "latency_p99": float(np.quantile(lat, 0.99)) if n >= P99_MIN_REQUESTS else float("nan"),
                                          **{f"cpu_rank{k}": u for k, u in enumerate(pt["cpu_util"])}})  # fmt: skip
                repeat += 1
            # 4. the scheduler loop: the same absolute rates for every configuration, with and without the step,
            # one round per replicate (its configurations in a rotated order)
            # the highest rate (what the claims read) runs twice per replicate, so that its runs give a 95% interval
            next(ticks, None)
            sp = params["scheduler"]
            if sched_plan is None:
                sched_plan = scheduler_plan(sp, float(np.median(phase_samples[(int(SOURCE_SIZE), "from_dict")][0][1])))
            top = max(sp["rate_fractions"])
            for k, members in enumerate((sched_plan, [x for x in sched_plan if x[5] == top])):
                pts = plan.order("scheduler", members, 2 * rep + k, label=lambda x: f"{x[0]}@{x[1]:g}/{x[3]:g}/{x[4]:g}")
                t0 = time.perf_counter()
                got = run_point(cluster, scheduler_round, sp["feature_bytes"], pts, seed, pool_bytes, 2 * rep + k,
                                sp["max_batch"], ranks=2, timeout=900)[0]  # fmt: skip
                add_time("broadcast: scheduler loop", time.perf_counter() - t0)
                for pt_, out in zip(pts, got, strict=True):
                    sched_got.setdefault(pt_, []).append((rep, out))
        for _ in ticks:
            pass
        for (size, metric), per_rep in phase_samples.items():
            info = phase_info[size]
            r, s_ = stats_rows(per_message(per_rep), {**base, "experiment": "phases", "variant": metric,
                                                      "size_bytes": info["feature_bytes"], "ranks": 2,
                                                      "oversubscribed": cluster.oversubscribed_at(2)}, "time", "s", "",
                               pickled_bytes=info["pickled_bytes"], nominal_bytes=size)  # fmt: skip
            rows.append(r)
            samples += s_
        for (tp, cls, strategy), per_rep in lat_samples.items():
            labels = {**base, "experiment": "latency", "variant": strategy, "size_bytes": params["classes"][cls],
                      "ranks": tp, "oversubscribed": cluster.oversubscribed_at(tp)}  # fmt: skip
            values = per_message(per_rep)
            r, s_ = stats_rows(values, labels, "end_to_end", "s", f"{len(values)} samples in {plan.n} replicates",
                               payload_class=cls)  # fmt: skip
            rows.append(r)
            samples += s_
        load_df = pd.DataFrame(load_rows)
        over2 = cluster.oversubscribed_at(2)
        for (cls, strategy, frac), g in load_df.groupby(["payload_class", "variant", "rate_fraction"], sort=False):
            g = g.sort_values("repeat")
            labels = {**base, "experiment": "load", "variant": strategy, "size_bytes": int(g["feature_bytes"].iloc[0]),
                      "ranks": 2, "oversubscribed": over2}  # fmt: skip
            extra = {"payload_class": cls, "offered_rate": float(g["offered_rate"].iloc[0]), "rate_fraction": frac,
                     "requests": int(g["requests"].sum()), "stop_reason": f"fixed: {len(g)} runs"}  # fmt: skip
            lats = run_latencies[(cls, strategy, frac)]
            pooled = per_message([(int(rp), lat) for rp, lat in zip(g["replicate"], lats, strict=True)])
            r, s_ = stats_rows(pooled, labels, "latency", "s", **extra)  # every request of every run
            rows.append(r)
            samples += s_
            metrics = [("throughput", "1/s"), ("latency_p50", "s")]
            if g["latency_p99"].notna().all():
                metrics.append(("latency_p99", "s"))
            for metric, unit in metrics:  # one value per run: the interval is over the runs (each its replicate)
                r, s_ = stats_rows(per_message([(int(rp), [v]) for rp, v in zip(g["replicate"], g[metric], strict=True)]),
                                   labels, metric, unit, **extra)  # fmt: skip
                rows.append(r)
                samples += s_
        rows_s, samples_s = scheduler_rows(sched_got, {**base, "oversubscribed": over2}, params["scheduler"])
        rows += rows_s
        samples += samples_s
    finally:
        try:  # best effort: after a failure the engines may have been restarted already
            cluster.run(drop_pools, timeout=60)
        except Exception:  # noqa: BLE001 - never mask the run's own error
            pass

    samples_df = pd.DataFrame(samples)
    phases_df = pd.DataFrame(phase_rows)
    cap = capacity(load_df, run_latencies)
    summary = results.frame(rows)
    summary = results.frame(rows + derived_rows(summary, samples_df, cap, params))
    model_df = models(summary, params, phases_df)
    proj = projection(summary, params)
    meta_replicates = plan.record()
    meta = run_meta(name, cluster, params, started, machine_start=machine_start, definitions={
        "end_to_end": "one request at a time: Barrier, then every rank processes it; the slowest rank's time (s)",
        "latency (load)": "arrival on the root to the moment the last rank holds its MultimodalInputs (s)",
        "throughput": "requests / (last completion - first arrival) (1/s)",
        "capacity": "per run, the highest measured throughput of a strategy over the offered rates (1/s); the median "
                    "and its interval over the runs",
        "latency_p99 (load)": f"the 99th percentile of one run's latencies, only from {P99_MIN_REQUESTS} requests or more",
        "cpu utilisation": "a rank's CPU seconds / wall seconds over a load run (1 = one core busy)",
        "phases": "rank 0 alone for local phases; bcast phases: the slowest rank, Barrier before each sample",
        "scheduler": "a scheduler loop on every rank: the root takes the requests that have arrived (a batch), every "
                     "rank builds the batch's inputs under the strategy, then a step of a fixed time (a forward during "
                     "which the CPU is free); latency: arrival to the end of the step that includes the request",
        "hit_rate": "scheduler, hash cache: the share of requests whose feature was found in the cache (not hashed)",
        "overlap": "scheduler, asynchronous broadcast: the share of steps during which the next batch's broadcast had "
                   "already started",
    })
    meta["replicates"] = meta_replicates
    results.write(CHAPTER, summary, samples_df, meta,
                  extra={"load": load_df, "capacity": cap, "rank_phases": phases_df, "models": model_df,
                         "projection": proj})  # fmt: skip
    claims.record(CHAPTER)
    return summary


def scheduler_plan(sp: dict, from_dict_s: float) -> list[tuple]:
    """Return the scheduler round's configurations, (strategy, rate, requests, step_s, hit_rate, rate_fraction) each,
    at absolute rates that are fractions of 1 / (from_dict + step) (``from_dict_s``: this run's median at the requests'
    size): every strategy with the step, the two blocking ones without it, and the hash cache at each hit rate with the
    step."""
    base = 1.0 / (from_dict_s + sp["step_s"])
    out = []
    for frac in sp["rate_fractions"]:
        rate = frac * base
        n = int(min(sp["max_requests"], max(sp["requests"], round(rate * sp["duration_s"]))))
        out += [(st, rate, n, sp["step_s"], 0.0, frac) for st in ("replicated", "object_bcast", "object_bcast_async")]
        out += [(st, rate, n, 0.0, 0.0, frac) for st in ("replicated", "object_bcast")]  # (no step: nothing to overlap)
        out += [("hash_cache", rate, n, sp["step_s"], h, frac) for h in sp["hit_rates"]]
    return out


def scheduler_variant(strategy: str, hit_rate: float) -> str:
    """Return a scheduler configuration's variant name: the strategy, and the hash cache's asked hit rate in %."""
    return f"hash_cache/{round(hit_rate * 100)}" if strategy == "hash_cache" else strategy


def scheduler_rows(got: dict, labels: dict, sp: dict) -> tuple[list[dict], list[dict]]:
    """Return the scheduler's summary and sample rows from its rounds ({configuration: [(replicate, result), ...]}):
    per configuration the latency of every request, and per run its throughput, median latency, mean step and, where
    they apply, the hash cache's hit rate and the asynchronous broadcast's overlap (intervals over the runs)."""
    rows, samples = [], []
    for (strategy, rate, n, step, hit, frac), per_rep in got.items():
        lab = {**labels, "experiment": "scheduler", "variant": scheduler_variant(strategy, hit),
               "size_bytes": sp["feature_bytes"], "ranks": 2}  # fmt: skip
        extra = {"offered_rate": rate, "rate_fraction": frac, "step_ms": step * 1e3, "hit_rate_asked": hit,
                 "requests": n * len(per_rep), "stop_reason": f"fixed: {len(per_rep)} runs"}  # fmt: skip
        r, s_ = stats_rows(per_message([(rp, x["latency"]) for rp, x in per_rep]), lab, "latency", "s", **extra)
        rows.append(r)
        samples += s_
        per_run = [("throughput", "1/s", lambda x: x["throughput"]),
                   ("latency_p50", "s", lambda x: float(np.median(x["latency"]))),
                   ("step", "s", lambda x: x["step_s"])]  # fmt: skip
        if strategy == "hash_cache":
            per_run.append(("hit_rate", "1", lambda x: x["hit_rate"]))
        if strategy == "object_bcast_async" and step > 0:
            per_run.append(("overlap", "1", lambda x: x["overlap"]))
        for metric, unit, fn in per_run:
            r, s_ = stats_rows(per_message([(rp, [fn(x)]) for rp, x in per_rep]), lab, metric, unit, **extra)
            rows.append(r)
            samples += s_
    return rows, samples


def requests_at(rate: float, params: dict, capacity: float | None = None) -> int:
    """Return the requests of a load point at ``rate``/s: rate x the profile's duration, within its bounds.

    Past a strategy's no-load ``capacity`` (1 / its latency) it completes about 1.25 x capacity requests per second
    at most, so the count follows the smaller of the two rates: a saturated run lasts about the profile's duration
    instead of requests / capacity."""
    served = rate if capacity is None else min(rate, 1.25 * capacity)
    return int(min(params["max_requests"], max(params["requests"], round(served * params["load_duration_s"]))))


# ------------------------------------------------------------------------------- analysis


def phase_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Return phase medians (s) per feature size: one row per size, one column per phase."""
    ph = summary.query("experiment == 'phases'")
    return ph.pivot_table(index="size_bytes", columns="variant", values="median")


def phase_at(summary: pd.DataFrame, size: int) -> pd.Series:
    """Return the phase medians (s) at the phase size nearest ``size``, interpolated linearly in size."""
    tab = phase_table(summary)
    xs = tab.index.to_numpy(dtype=float)
    return pd.Series({c: float(np.interp(size, xs, tab[c].to_numpy())) for c in tab.columns})


def model_latency(ph: pd.Series, strategy: str, bcast_s: float | None = None, bcast_oob_s: float | None = None) -> float:
    """Return the full-model no-load latency (s) of ``strategy`` from phase costs: every phase on its critical path."""
    b = ph["bcast"] if bcast_s is None else bcast_s
    bo = ph["bcast_oob"] if bcast_oob_s is None else bcast_oob_s
    fd, fdx = ph["from_dict"], ph["from_dict_xxh3"]
    travel = ph["pickle"] + b + ph["unpickle"]
    travel_oob = ph["pickle_oob"] + bo + ph["unpickle_oob"]
    return {"replicated": fd, "raw_bcast": travel + fd, "object_bcast": fd + travel, "hashes": fd + travel, "hashes_xxh3": fdx + travel,
            "hashes_oob": fd + travel_oob, "hashes_xxh3_oob": fdx + travel_oob}[strategy]  # fmt: skip


def source_model(ph: pd.Series, strategy: str) -> float | None:
    """Return the source's latency model (s): before (replicated, raw_bcast): T_from_dict; the change (object_bcast):
    T_from_dict + T_pickle + T_bcast + T_unpickle."""
    if strategy in ("replicated", "raw_bcast"):
        return float(ph["from_dict"])
    if strategy == "object_bcast":
        return float(ph["from_dict"] + ph["pickle"] + ph["bcast"] + ph["unpickle"])
    return None


def rank_phase_costs(phases_df: pd.DataFrame, cls: str, strategy: str, ranks: int = 2) -> tuple[dict, dict]:
    """Return (root, others) phase seconds per request measured inside the no-load runs; ``others`` is the max over
    the non-root ranks."""
    g = phases_df.query("payload_class == @cls and variant == @strategy and ranks == @ranks and unit == 's'")
    root = g.query("rank == 0").set_index("phase")["value"].to_dict()
    others = g.query("rank > 0").groupby("phase")["value"].max().to_dict()
    return root, others


def model_in_situ(root: dict, others: dict, strategy: str) -> float:
    """Return the no-load latency (s) the phase times measured inside the runs add up to on a strategy's critical path."""
    fd0, pk0 = root.get("from_dict", 0.0), root.get("pickle", 0.0)
    bc0 = root.get("to_tensor", 0.0) + root.get("bcast", 0.0)  # SGLang's copy into a byte tensor, then the Bcasts
    up1 = others.get("from_tensor", 0.0) + others.get("unpickle", 0.0)  # the copy out into bytes, then unpickle
    fd1, b1 = others.get("from_dict", 0.0), others.get("build", 0.0)
    if strategy == "replicated":
        return max(fd0, fd1)
    if strategy == "raw_bcast":
        return pk0 + bc0 + max(fd0, up1 + fd1)
    return fd0 + pk0 + bc0 + up1 + b1


def models(summary: pd.DataFrame, params: dict, phases_df: pd.DataFrame) -> pd.DataFrame:
    """Return measured no-load latency (TP = 2) beside the source's model and the full model, each with the phase
    costs measured in isolation (``phases``) and inside the runs (per-rank phase times), with relative errors."""
    out = []
    lat = summary.query("experiment == 'latency' and ranks == 2")
    for r in lat.itertuples():
        ph = phase_at(summary, r.size_bytes)
        root, others = rank_phase_costs(phases_df, r.payload_class, r.variant)
        src = source_model(ph, r.variant)
        src_in = (root.get("from_dict", 0.0) if r.variant in ("replicated", "raw_bcast") else
                  root.get("from_dict", 0.0) + root.get("pickle", 0.0) + root.get("to_tensor", 0.0) + root.get("bcast", 0.0)
                  + others.get("from_tensor", 0.0) + others.get("unpickle", 0.0)
                  if r.variant == "object_bcast" else None)  # fmt: skip
        full, full_in = model_latency(ph, r.variant), model_in_situ(root, others, r.variant)
        out.append({"variant": r.variant, "payload_class": r.payload_class, "feature_bytes": r.size_bytes,
                    "measured_s": r.median, "ci_low": r.ci_low, "ci_high": r.ci_high,
                    "source_model_s": src, "source_error": None if src is None else src / r.median - 1,
                    "source_in_situ_s": src_in, "source_in_situ_error": None if src_in is None else src_in / r.median - 1,
                    "full_model_s": full, "full_error": full / r.median - 1,
                    "full_in_situ_s": full_in, "full_in_situ_error": full_in / r.median - 1})  # fmt: skip
    return pd.DataFrame(out)


def _alpha_beta() -> tuple[float, float]:
    """Return chapter 0's MPI buffer alpha (s) and beta (B/s), or a stated fallback measured here."""
    from . import machine_limits

    return machine_limits.alpha_beta("mpi_buffer")


def bcast_model(nbytes: float, ranks: int, alpha: float, beta: float) -> float:
    """Return MPICH-style broadcast time (s): binomial tree below 12 KiB, scatter + ring allgather above."""
    if ranks <= 1:
        return 0.0
    steps = math.ceil(math.log2(ranks))
    if nbytes < BCAST_TREE_BELOW:
        return steps * (alpha + nbytes / beta)
    return (steps + ranks - 1) * alpha + 2 * (ranks - 1) / ranks * nbytes / beta


def strategies_at(tp: int, params: dict) -> list[str]:
    """Return the strategies whose no-load latency is timed at ``tp`` ranks (all but at the oversubscribed TP)."""
    chosen = params.get("tp_oversubscribed_strategies")
    if tp != params["tp_oversubscribed"] or chosen is None:
        return list(mm.STRATEGIES)
    return [s for s in mm.STRATEGIES if s in chosen]


def projection(summary: pd.DataFrame, params: dict, ranks=(2, 4, 8)) -> pd.DataFrame:
    """Return projected no-load latency per strategy and class at each TP size: the latency measured at TP = 2 plus
    the growth of the broadcast from 2 to N ranks in the alpha-beta model (chapter 0's MPI buffer fit; MPICH's
    algorithms), beside the measured latency where there is one. Empty when chapter 0 has no results."""
    try:
        alpha, beta = _alpha_beta()
    except results.ResultsError:  # chapter 0 not run (or no fit): no projection; any other error is a bug and raises
        return pd.DataFrame()
    lat = summary.query("experiment == 'latency'")
    pk = summary.query("experiment == 'phases'").groupby("size_bytes")["pickled_bytes"].first()
    out = []
    for cls, fb in params["classes"].items():
        pickled = float(np.interp(fb, pk.index.to_numpy(dtype=float), pk.to_numpy(dtype=float)))
        for strategy in mm.STRATEGIES:
            base2 = float(lat.query("variant == @strategy and payload_class == @cls and ranks == 2")["median"].iloc[0])
            for n in ranks:
                growth = 0.0 if strategy == "replicated" else bcast_model(pickled, n, alpha, beta) - bcast_model(pickled, 2, alpha, beta)
                meas = lat.query("variant == @strategy and payload_class == @cls and ranks == @n")
                out.append({"variant": strategy, "payload_class": cls, "ranks": n, "model_s": base2 + growth,
                            "bcast_growth_s": growth,
                            "measured_s": float(meas["median"].iloc[0]) if not meas.empty else None,
                            "oversubscribed": bool(meas["oversubscribed"].iloc[0]) if not meas.empty else None})  # fmt: skip
    df = pd.DataFrame(out)
    df["error"] = df["model_s"] / df["measured_s"] - 1
    return df


def capacity(load: pd.DataFrame, run_latencies: dict | None = None) -> pd.DataFrame:
    """Return per class and strategy its capacity: per run (``repeat``), the highest throughput over the offered rates;
    the median over the runs with its order-statistic interval (``ci_level`` its real coverage). Also the
    saturation rate: the lowest offered rate where the median latency of all runs' requests pooled (from
    ``run_latencies``, else the runs' p50s) exceeds :data:`SATURATION_FACTOR` x its value at the lowest rate."""
    from ..measure import Replicated, summarize

    if "repeat" not in load.columns:
        load = load.assign(repeat=0)
    out = []
    for (cls, strategy), g in load.groupby(["payload_class", "variant"], sort=False):
        per_run = g.groupby("repeat")["throughput"].max().to_numpy(dtype=float)
        run_reps = (g.groupby("repeat")["replicate"].first().to_numpy(dtype=int) if "replicate" in g
                    else np.zeros(len(per_run), dtype=int))  # fmt: skip
        st = summarize(Replicated(per_run, run_reps))
        by_rate = []
        for frac, gr in g.groupby("rate_fraction"):
            lats = (run_latencies or {}).get((cls, strategy, frac))
            p50 = float(np.median(np.concatenate(lats))) if lats else float(gr["latency_p50"].median())
            by_rate.append((float(gr["offered_rate"].iloc[0]), p50))
        by_rate.sort()
        low = by_rate[0][1]
        over = [rate for rate, p50 in by_rate if p50 > SATURATION_FACTOR * low]
        out.append({"payload_class": cls, "variant": strategy, "capacity": st.median, "ci_low": st.ci_low,
                    "ci_high": st.ci_high, "ci_level": st.ci_level, "runs": len(per_run),
                    "capacity_runs": " ".join(f"{v:.6g}" for v in per_run),
                    "capacity_replicates": " ".join(str(int(v)) for v in run_reps),
                    "saturation_rate": over[0] if over else None, "p50_at_lowest_rate": low,
                    "highest_offered_rate": by_rate[-1][0]})  # fmt: skip
    return pd.DataFrame(out)


def best_strategy(cap: pd.DataFrame) -> dict:
    """Return the strategy with the highest total capacity relative to raw_bcast, and the two targets checked on
    intervals.

    "Sustains raw_bcast" fails only where the best's interval lies wholly below SUSTAIN x raw_bcast's; "beats" needs
    the best's interval wholly above raw_bcast's and object_bcast's, all covering at least 95% (fewer runs: no class
    is beaten, "not shown")."""
    piv = cap.pivot_table(index="payload_class", columns="variant", values="capacity")
    lo = cap.pivot_table(index="payload_class", columns="variant", values="ci_low")
    hi = cap.pivot_table(index="payload_class", columns="variant", values="ci_high")
    level = cap.pivot_table(index="payload_class", columns="variant", values="ci_level")
    rel = piv.div(piv["raw_bcast"], axis=0)
    candidates = [s for s in piv.columns if s not in ("replicated",)]
    best = max(candidates, key=lambda s: float(np.log(rel[s]).sum()))
    holds_a = bool((hi[best] >= SUSTAIN * lo["raw_bcast"]).all())
    enough = bool((level[[best, "raw_bcast", "object_bcast"]] >= 0.95).all().all())
    beats = [c for c in piv.index if enough and lo.loc[c, best] > hi.loc[c, "raw_bcast"] and lo.loc[c, best] > hi.loc[c, "object_bcast"]]
    return {"best": best, "ratio_to_raw": rel[best].to_dict(), "ratio_to_object": (piv[best] / piv["object_bcast"]).to_dict(),
            "sustains_raw_everywhere": holds_a, "beats_raw_and_object_in": beats, "intervals_cover_95": enough,
            "target_met": holds_a and bool(beats)}  # fmt: skip


def crossover(summary: pd.DataFrame) -> pd.DataFrame:
    """Return per class the no-load latency of object_bcast over raw_bcast (TP = 2 and TP = 4 where measured): above
    1, broadcasting the built object loses; ``clear`` where the two 95% intervals do not overlap."""
    lat = summary.query("experiment == 'latency'")
    out = []
    for (cls, tp), g in lat.groupby(["payload_class", "ranks"], sort=False):
        a, b = g.set_index("variant").loc["raw_bcast"], g.set_index("variant").loc["object_bcast"]
        out.append({"payload_class": cls, "ranks": tp, "size_bytes": int(a["size_bytes"]), "raw_bcast_s": a["median"],
                    "object_bcast_s": b["median"], "object_over_raw": b["median"] / a["median"],
                    "clear": bool(b["ci_low"] > a["ci_high"] or b["ci_high"] < a["ci_low"])})  # fmt: skip
    return pd.DataFrame(out)


def adaptive_thresholds(summary: pd.DataFrame) -> dict[int, float | None]:
    """Return, per TP degree measured, the feature size from which the source's option D (choose by size and TP)
    broadcasts the built object: the smallest class at which object_bcast is clearly faster than raw_bcast (95%
    intervals apart) at that class and every larger one; None where it never is (always raw_bcast)."""
    cr = crossover(summary)
    out: dict[int, float | None] = {}
    for tp, g in cr.groupby("ranks"):
        g = g.sort_values("size_bytes")
        wins = (g["clear"] & (g["object_over_raw"] < 1)).to_numpy()
        threshold = None
        for k in range(len(g)):
            if wins[k:].all():
                threshold = float(g["size_bytes"].iloc[k])
                break
        out[int(tp)] = threshold
    return out


def adaptive_table(summary: pd.DataFrame, cap: pd.DataFrame, thresholds: dict) -> pd.DataFrame:
    """Return per class (TP = 2, under load) what the adaptive option chooses and its capacity beside raw_bcast's,
    object_bcast's and the best strategy's. Its thresholds come from the no-load runs; the capacities from the
    load runs, which are separate runs, so the rule is tested on data it was not taken from. Running "adaptive"
    is running the strategy it picks (the decision is a comparison), so its capacity is that strategy's."""
    out = []
    c = cap.set_index(["payload_class", "variant"])
    for cls, g in cap.groupby("payload_class", sort=False):
        fb = int(summary.query("experiment == 'latency' and payload_class == @cls")["size_bytes"].iloc[0])
        pick = mm.choose_adaptive(fb, 2, thresholds)
        best = g.loc[g["capacity"].idxmax()]
        row = {"payload_class": cls, "feature_bytes": fb, "adaptive picks": pick}
        for name, v in (("adaptive", pick), ("raw_bcast", "raw_bcast"), ("object_bcast", "object_bcast"),
                        ("best", best["variant"])):
            r = c.loc[(cls, v)]
            row[f"{name} (req/s)"] = f"{r['capacity']:.4g} [{r['ci_low']:.4g}, {r['ci_high']:.4g}]"
        row["best strategy"] = best["variant"]
        out.append(row)
    return pd.DataFrame(out)


# ------------------------------------------------------------------ derived rows (analysis)


def derived_rows(summary: pd.DataFrame, samples: pd.DataFrame, cap: pd.DataFrame, params: dict) -> list[dict]:
    """Return the capacities, model checks and sums seed 002's claims read, each with its own interval.

    Pure: from this chapter's summary, raw samples and the load runs' capacities. Phase costs come from
    the isolated phase measurements and latencies from the separate no-load runs, so a model built
    from the first is checked against the second (held out), not against the runs it was read from.
    """
    from ._common import derived_row, sample_values

    out = []

    def phase(name, size):
        return sample_values(summary, samples, experiment="phases", variant=name, nominal_bytes=size)

    def lat(strategy, cls, tp=2):
        return sample_values(summary, samples, experiment="latency", variant=strategy, payload_class=cls, ranks=tp)

    def add(fn, sets, name, unit, inputs, **labels):
        out.append(derived_row(fn, sets, name, unit, CHAPTER, inputs=inputs, **labels))

    src = int(SOURCE_SIZE)
    add(lambda fd: 1 / fd, [phase("from_dict", src)], "capacity_from_dict", "1/s",
        "1 / T_from_dict at 10 MB: one rank's requests per second without a broadcast", size_bytes=src)
    add(lambda p, b, u: p + b + u, [phase("pickle", src), phase("bcast", src), phase("unpickle", src)], "travel_cost",
        "s", "T_pickle + T_bcast + T_unpickle at 10 MB (TP = 2)", size_bytes=src)  # fmt: skip
    add(lambda fd, p, b, u: fd + p + b + u, [phase(x, src) for x in ("from_dict", "pickle", "bcast", "unpickle")],
        "source_model_total", "s", "T_from_dict + T_pickle + T_bcast + T_unpickle at 10 MB (TP = 2)", size_bytes=src)
    tp_big = params["tp_oversubscribed"]
    add(lambda fd: (tp_big - 1) * fd, [phase("from_dict", src)], "from_dict_saved", "s",
        f"(N - 1) x T_from_dict at 10 MB, N = {tp_big}: the hashing object_bcast spares the other ranks", size_bytes=src)
    for cls, fb in params["classes"].items():
        lab = {"payload_class": cls, "size_bytes": fb, "ranks": 2}
        add(lambda a0, b: (1 - a0 / b) * 100, [lat("replicated", cls), lat("object_bcast", cls)], "throughput_drop_serial", "%",
            "1 - latency(replicated) / latency(object_bcast) at TP = 2: the throughput drop if each strategy handled one request at a time",
            **lab)  # fmt: skip
        add(lambda fd, p, b, u, m: (fd + p + b + u) / m, [*(phase(x, fb) for x in ("from_dict", "pickle", "bcast", "unpickle")),
                                                          lat("object_bcast", cls)],
            "source_model_over_measured_object_bcast", "x", "the source's model for object_bcast (isolated phase costs) over its measured no-load "
            "latency at TP = 2 (separate runs)", **lab)  # fmt: skip
        add(lambda fd, m: fd / m, [phase("from_dict", fb), lat("raw_bcast", cls)], "source_model_over_measured_raw_bcast", "x",
            "the source's model for the old path (T_from_dict alone, isolated) over raw_bcast's measured no-load latency at TP = 2",
            **lab)  # fmt: skip
        add(lambda b, a0: b - a0, [lat("object_bcast", cls), lat("replicated", cls)], "object_bcast_extra_latency", "s",
            "latency(object_bcast) - latency(replicated) at TP = 2: the latency the change adds per request", **lab)
        add(lambda p, u, fd: (p + u) / fd, [phase("pickle", fb), phase("unpickle", fb), phase("from_dict", fb)],
            "pickle_unpickle_over_from_dict", "x", "(T_pickle + T_unpickle) / T_from_dict for this class's features, each "
            "timed alone: the source's condition for the change to be slower", **lab)  # fmt: skip
        # against SGLang's code before the change: the raw request broadcast, then from_dict on every rank
        add(lambda r0, b: (1 - r0 / b) * 100, [lat("raw_bcast", cls), lat("object_bcast", cls)], "throughput_drop_vs_old_code",
            "%", "1 - latency(raw_bcast) / latency(object_bcast) at TP = 2: the throughput drop against the code before the "
            "change, if each handled one request at a time", **lab)  # fmt: skip
        add(lambda b, r0: b - r0, [lat("object_bcast", cls), lat("raw_bcast", cls)], "extra_latency_vs_old_code", "s",
            "latency(object_bcast) - latency(raw_bcast) at TP = 2: the latency the change adds per request over the code "
            "before it", **lab)  # fmt: skip
        add(lambda fd: (tp_big - 1) * fd, [phase("from_dict", fb)], "from_dict_saved", "s",
            f"(N - 1) x T_from_dict with N = {tp_big}: the hashing object_bcast spares the other ranks per request", **lab)
    # capacity under load: one value per run (the highest throughput over the offered rates), interval over the runs
    from ..measure import summarize

    load_rows = summary.query("experiment == 'load'")
    load_oversubscribed = bool(load_rows["oversubscribed"].any()) if not load_rows.empty else False  # as its runs

    from ..measure import Replicated

    for r in cap.itertuples():
        runs = [float(v) for v in str(r.capacity_runs).split()]
        reps = [v for v in str(getattr(r, "capacity_replicates", "")).split() if v.isdigit()]  # (none before schema 2)
        runs = Replicated(runs, [int(v) for v in reps] if len(reps) == len(runs) else np.zeros(len(runs), dtype=int))
        out.append(results.summary_row(summarize(runs, f"fixed: {len(runs)} runs"), chapter=CHAPTER, experiment="capacity",
                                       variant=r.variant, payload=None, size_bytes=params["classes"][r.payload_class],
                                       ranks=2, oversubscribed=load_oversubscribed, metric="capacity", unit="1/s",
                                       payload_class=r.payload_class,
                                       inputs="per run, the highest throughput over the offered rates"))  # fmt: skip
        if r.variant == "object_bcast":
            add(lambda c, m: c * m, [runs, lat("object_bcast", r.payload_class)], "capacity_times_latency_object_bcast",
                "x", "object_bcast's capacity under load (per run) x its no-load latency at TP = 2: 1 when requests run strictly "
                "one after another", payload_class=r.payload_class, ranks=2)  # fmt: skip
    return out


def reanalyze(res: results.Results) -> list[dict]:
    """Return this chapter's derived rows recomputed from its results on disk."""
    measured = res.summary[~res.summary["experiment"].isin(["derived", "capacity"])]
    return derived_rows(measured, res.samples, res.extra("capacity"), res.meta["parameters"])
