"""Chapter 4, "Pipeline parallelism": serial vs thread pipeline vs process pool vs MPI processes as stages.

One ETL workload (:mod:`ipcbench.etl`) in three kinds (GIL-bound Python,
GIL-releasing numpy, and fixed waits per batch: the hypothesis behind seed 003's
constant serial time), and a fourth (file I/O) for the stage-count rule, run by four processors:

* **etl**: every processor x kind x dataset size (seed 003's 25 000, 50 000 and
  100 000 records, smaller sizes to find where processes pay, 1 000 000 in
  standard and 10 000 000 in full; beyond the source's sizes, where pl-13 is
  tested, the standard profile runs serial and the process pool only; the wait kind, which claims read through
  the thread pipeline, runs serial and the pipeline: :func:`processors_at`), 10 batches per run as in the source. Samples
  are interleaved (serial, threads, pool, MPI, serial, ...) so a speedup sample
  pairs each run with the serial run next to it; every run's output checksum must
  equal serial's before its time is kept;
* **start_method**: process-pool start-up (until every worker is up) with fork,
  forkserver and spawn, and the whole pool run with each at the smallest source size;
* **batch_size** and **queue_size**: the source's tuning guide, on the thread pipeline;
* **pool_settings** and **stage_threads**: the source's other rules, in every replicate, each configuration in the
  rounds of serial: the process pool with ``cpu_count // 2``, ``cpu_count`` and the source's 8 workers and with one
  and two chunks per worker (per-record Python work); the thread pipeline with 1 to 5 stage threads on file I/O work
  (the ``io`` kind: each stage writes, fsyncs and reads back a scratch file);
* **memory**: peak proportional set size (PSS, shared pages split among sharers) of
  every process of a run, sampled every 10 ms in a separate, untimed run;
* **mpi one stage per rank**: five ranks on this machine's two cores, labelled
  oversubscribed (a waiting rank polls with a 0.2 ms sleep, so it yields its core).

Metrics: ``wall_time`` (s), ``speedup`` (x, serial's time / the processor's, base
stated per row), ``first_batch`` (s from start to the first saved batch),
``cpu_cores`` (CPU seconds of every process of the run / wall seconds),
``busy_<stage>`` (s summed over batches: wall time inside the stage, GIL waits
included), pool phases (``startup``, ``generate``, ``serialize``, ``deserialize``,
``compute``, ``teardown``), ``peak_pss`` and ``peak_pss_increase`` (B).
"""

from __future__ import annotations

import multiprocessing as mp
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import claims, profiles, results
from .. import etl as pl
from ..cluster import usable_cores
from ..measure import Replicated, summarize
from ._common import (
    REPLICATES,
    Replicates,
    add_time,
    machine_state,
    pick_row,
    progress,
    require_engines,
    round_order,
    run_meta,
    run_point,
)
from ._common import stats_rows as _stats_rows

CHAPTER = "pipeline"
SOURCE_SIZES = (25_000, 50_000, 100_000)
SOURCE_BATCH = 10_000
"""The source's example batch size (``run_pipeline(data_size=100000, batch_size=10000)``), used at every size."""
SOURCE_SERIAL_S = {25_000: 0.69, 50_000: 0.70, 100_000: 0.71}
"""The source's serial times (s) by size, as its table prints them (pl-03..05 quote the same table)."""
SOURCE_PIPELINE_SPEEDUP = 2.55
"""The source's average pipeline speedup (pl-01)."""
READINGS = {
    "python": "per-record Python work, the source's four threads and 10 000-record batches",
    "numpy": "vectorised numpy work, the source's four threads and 10 000-record batches",
    "wait_source_batches": "fixed waits per stage and batch, the source's four threads and 10 000-record batches",
    "wait_ten_batches": "fixed waits per stage and batch, five threads and 10 batches at every size (this book's wait kind)",
}
"""Readings of the source's table: what its workload and layout might have been. Each is set against the table's two
shapes: a serial time that barely grows from 25 000 to 100 000 records, and a pipeline speedup of 2.55x."""
SOURCE_ROWS = ("pl-03", "pl-04", "pl-05")
"""The claims that quote the rows of seed 003's results table (its table is read from their quotes, never retyped)."""


def source_table() -> pd.DataFrame:
    """Return seed 003's results table read from the quotes of its rows in data/seeds/claims.csv (s and x)."""
    seeds = claims.load_claims().set_index("id")
    rows = []
    for cid in SOURCE_ROWS:
        cells = [c.strip() for c in seeds.loc[cid, "quote"].strip().strip("|").split("|")]
        num = [float(re.sub(r"[^\d.\-]", "", c)) for c in cells]
        rows.append({"records": int(num[0]), "serial (s)": num[1], "thread pipeline (s)": num[2],
                     "process pool (s)": num[3], "thread pipeline speedup": num[4], "process pool change (%)": num[5]})  # fmt: skip
    return pd.DataFrame(rows)
PROCESSORS = ("serial", "thread_pipeline", "process_pool", "mpi_stages")
LABELS = {"serial": "serial", "thread_pipeline": "thread pipeline", "process_pool": "process pool",
          "mpi_stages": "MPI stages (2 ranks)", "mpi_stages_5": "MPI stage per rank (5 ranks, oversubscribed)"}  # fmt: skip
START_METHODS = tuple(m for m in ("fork", "forkserver", "spawn") if m in mp.get_all_start_methods())


def parameters(profile: str | None = None) -> dict:
    """Return a profile's sweep."""
    name = profiles.profile_name(profile)
    base = {
        "sizes": [2_500, 10_000, *SOURCE_SIZES],
        "kinds": ["python", "numpy", "wait"],  # the main sweep's kinds; the io kind runs in the stage-count sweep
        "wait_sizes": list(SOURCE_SIZES),  # the wait kind is the source's hypothesis: its sizes
        "batches": 10,  # batch_size = n // 10: 10 batches, as the source's example (100 000 / 10 000)
        "queue_size": 5,
        "batch_fractions": [50, 20, 10, 5, 2],  # batch_size = n // f (the guide: n // 20 for latency, n // 5 for throughput)
        "queue_sizes": [1, 3, 5, 10],  # the guide: 3 when memory is short, 10 when ample
        "sweep_size": 100_000,
        "start_method_samples": 5,
        "seed": 0,
        # the source's layout as written: batches of 10 000 records, four threads, a pool with one chunk per process
        "source_layout_sizes": list(SOURCE_SIZES),
        # beyond the source's sizes the book tests pl-13 (processes pay off above ~1M records): serial and the process
        # pool only (None: every processor). At 1 000 000 Python records the other two took half of the sweep's time
        "large_processors": ["serial", "process_pool"],
        # the wait kind (the book's hypothesis for the source's constant serial time) is read by claims through the
        # thread pipeline only (pl-01, pl-03..05, pl-12, pl-14): serial and the pipeline run it (None: every processor)
        "wait_processors": ["serial", "thread_pipeline"],
        "replicates": REPLICATES,
        # the source's tuning rules, in every replicate: pool workers (cpu_count // 2, cpu_count, the source's 8) and
        # chunk sizes (n // (2 p), n // p, beside n // 10) on Python work; stage threads 1-5 on file I/O work
        "tuning_size": 50_000, "pool_workers": [max(1, usable_cores() // 2), usable_cores(), 8],
        "chunk_divisors": ["2p", "p"], "stage_threads": [1, 2, 3, 4, 5], "io_bytes": 256 * 1024,
    }
    if name == "quick":
        return {**base, "samples": 3, "wait_s": 0.005, "sweep_samples": 3, "sweep_size": 50_000, "start_method_samples": 3,
                "tuning_size": 20_000,
                "batch_fractions": [20, 10, 5], "queue_sizes": [1, 5, 10]}  # fmt: skip
    if name == "standard":
        # the tuning series (batch and queue sizes) take 3 runs a setting: shown with their intervals' real coverage
        return {**base, "sizes": [*base["sizes"], 1_000_000], "samples": 6, "wait_s": 0.015, "sweep_samples": 3}
    return {**base, "sizes": [*base["sizes"], 1_000_000, 10_000_000], "samples": 7, "wait_s": 0.015,
            "sweep_samples": 7, "sweep_size": 1_000_000, "large_processors": None, "wait_processors": None}  # fmt: skip


# ------------------------------------------------------------- SPMD: on the engines


def mpi_stage_point(comm, w: pl.Workload, n: int, batch_size: int, out_dir: str, groups, queue_size: int) -> dict | None:
    """Run the MPI stage pipeline once on every rank; the last rank returns its result as a dict."""
    r = pl.MpiStagePipeline(comm, groups, queue_size=queue_size).run(w, n, batch_size, out_dir)
    if comm.rank != comm.size - 1:
        return None
    shutil.rmtree(out_dir, ignore_errors=True)
    return _as_dict(r)


def _as_dict(r: pl.RunResult) -> dict:
    return {"processor": r.processor, "wall_s": r.wall_s, "checksum": r.checksum, "metrics": r.metrics,
            "first_batch_s": r.first_batch_s, "cpu_s": r.cpu_s, "events": r.events, "queue_depth": r.queue_depth,
            "phases": r.phases, "workers": r.workers, "busy": r.stage_busy_s(), "n_batches": r.n_batches}  # fmt: skip


# ------------------------------------------------------------------------ the run


class _Runner:
    """Runs one processor on one workload and size; checks its output against serial's."""

    def __init__(self, cluster, scratch: Path, queue_size: int):
        self.cluster = cluster
        self.scratch = scratch
        self.queue_size = queue_size
        self.reference: dict[tuple, tuple[str, np.ndarray]] = {}

    def ensure_reference(self, w: pl.Workload, n: int, batch_size: int) -> None:
        """Run serial once, untimed, where no reference output exists yet for this point (the rounds' rotated order may
        run another processor first)."""
        if (w.kind, n, batch_size) not in self.reference:
            self.run("serial", w, n, batch_size)

    def run(self, proc: str, w: pl.Workload, n: int, batch_size: int, groups=None, ranks: int = 2,
            queue_size: int | None = None, start_method: str | None = None, reference_batch: int | None = None,
            workers: int | None = None) -> dict:  # fmt: skip
        """Run one processor; ``groups`` are its stage groups (MPI ranks, or threads for the thread pipeline); the output
        is checked against serial's at ``reference_batch`` (default: the same batch size; per-category counts only
        when the batch sizes differ, since the files then differ)."""
        out = self.scratch / f"{proc}-{w.kind}-{n}"
        q = queue_size or self.queue_size
        if proc == "serial":
            r = _as_dict(pl.SerialProcessor().run(w, n, batch_size, out))
        elif proc == "thread_pipeline":
            r = _as_dict(pl.ThreadPipelineProcessor(q, groups).run(w, n, batch_size, out))
        elif proc == "process_pool":
            r = _as_dict(pl.ProcessPoolProcessor(workers or usable_cores(), start_method).run(w, n, batch_size, out))
        elif proc == "mpi_stages":
            r = run_point(self.cluster, mpi_stage_point, w, n, batch_size, str(out), groups, q, ranks=ranks,
                          timeout=600)[-1]  # fmt: skip
        else:
            raise ValueError(f"unknown processor {proc!r}")
        shutil.rmtree(out, ignore_errors=True)
        key = (w.kind, n, batch_size if reference_batch is None else reference_batch)
        if proc == "serial":
            self.reference.setdefault((w.kind, n, batch_size), (r["checksum"], r["metrics"]))
        ref = self.reference.get(key)
        if ref is None:
            raise RuntimeError(f"no serial reference for {key}: run serial first")
        same_files = key[2] == batch_size
        if (same_files and r["checksum"] != ref[0]) or not np.array_equal(r["metrics"], ref[1]):
            raise AssertionError(f"{proc} ({w.kind}, {n} records, batch {batch_size}) wrote different output than serial")
        return r


def processors_at(n: int, params: dict, kind: str | None = None) -> list[str]:
    """Return the processors the main sweep runs at ``n`` records (of ``kind``): all of them up to the source's sizes
    (and the smaller ones), the profile's ``large_processors`` beyond, and its ``wait_processors`` for the wait kind."""
    procs = list(PROCESSORS)
    if n > max(SOURCE_SIZES) and params.get("large_processors") is not None:
        procs = [p for p in procs if p in params["large_processors"]]
    if kind == "wait" and params.get("wait_processors") is not None:
        procs = [p for p in procs if p in params["wait_processors"]]
    return procs


def _label(proc: str, ranks: int) -> str:
    return "mpi_stages_5" if proc == "mpi_stages" and ranks == 5 else proc


def engines(profile: str | None = None) -> int:
    """Return the MPI engines this chapter needs: one per stage for the MPI stage run."""
    return len(pl.STAGES)


def run(cluster, profile: str | None = None) -> pd.DataFrame:
    """Run chapter 4 (>= 2 engines; 5 for one MPI rank per stage), write its results and report, return the summary."""
    name = profiles.profile_name(profile)
    params = parameters(name)
    require_engines(cluster, engines(name), CHAPTER, f"one MPI rank per stage ({len(pl.STAGES)} stages)")
    cluster.require_one_host("the stages write one output directory and compare against a local serial run")
    started = results.now_iso()
    machine_start = machine_state(cluster)  # CPU steal, load and two calibration kernels, again at the end
    cores = usable_cores()
    scratch = Path(tempfile.mkdtemp(prefix="ipcbench-pipeline-"))
    runner = _Runner(cluster, scratch, params["queue_size"])
    rows, samples, timeline, depth, groups_used = [], [], [], [], []
    base = {"chapter": CHAPTER, "size_bytes": None}
    plan = Replicates(cluster, params["replicates"])
    per_rep = max(1, params["samples"] // plan.n)  # rounds of each point in each replicate
    try:
        # 1. the main sweep and 5. the source's layout, the points the claims read: in every replicate (spread over the
        # run, the last with fresh engines for the MPI stages; serial and the threads run in this process, the pool's
        # workers are new processes every run), each round running the point's processors in a rotated order
        points = [(k, n) for k in params["kinds"] for n in params["sizes"] if k != "wait" or n in params["wait_sizes"]]
        lpoints = [(k, n) for k in ("python", "numpy", "wait") for n in params["source_layout_sizes"]]
        main_runs: dict[tuple, dict] = {}
        tuning_runs: dict[str, dict] = {}
        layout_runs: dict[tuple, dict] = {}
        groups_at: dict[tuple, list | None] = {}
        workers = usable_cores()
        steps = plan.n * (len(points) + len(lpoints) + 2)
        ticks = iter(progress(range(steps), "ETL and the source's layout (every replicate)"))
        for rep in plan.passes():
            for kind, n in points:
                next(ticks, None)
                w = pl.Workload(kind=kind, seed=params["seed"], wait_s=params["wait_s"])
                bs = max(1, n // params["batches"])
                procs = processors_at(n, params, kind)
                if (kind, n) not in groups_at:
                    groups = None
                    if "mpi_stages" in procs:
                        # MPI stages: two ranks, stages grouped by serial's per-stage times at this point (the thread
                        # pipeline keeps one thread per stage)
                        calib = runner.run("serial", w, n, bs)
                        groups = pl.balanced_groups(calib["busy"], 2)
                        groups_used.append({"kind": kind, "n_records": n, "groups": groups})
                    groups_at[(kind, n)] = groups
                runs = main_runs.setdefault((kind, n), {p: [] for p in procs})
                for k in range(per_rep):
                    for proc in _serial_first(plan.order(f"etl/{kind}/{n}", procs, rep * per_rep + k), runner, w, n, bs):
                        grp = groups_at[(kind, n)] if proc == "mpi_stages" else None
                        runs[proc].append({**runner.run(proc, w, n, bs, groups=grp), "replicate": rep})
            for kind, n in lpoints:
                next(ticks, None)
                w = pl.Workload(kind=kind, seed=params["seed"], wait_s=params["wait_s"])
                chunk = -(-n // workers)
                runner.ensure_reference(w, n, chunk)  # the reference for the pool's chunks (untimed here)
                runs = layout_runs.setdefault((kind, n), {"serial": [], "thread_pipeline": []}
                                              | ({"process_pool": []} if kind != "wait" else {}))  # fmt: skip
                for k in range(per_rep):
                    for proc in _serial_first(plan.order(f"source_layout/{kind}/{n}", list(runs), rep * per_rep + k),
                                              runner, w, n, SOURCE_BATCH):  # fmt: skip
                        if proc == "serial":
                            r = runner.run("serial", w, n, SOURCE_BATCH)
                        elif proc == "thread_pipeline":
                            r = runner.run("thread_pipeline", w, n, SOURCE_BATCH, groups=pl.SOURCE_THREAD_GROUPS)
                        else:
                            r = runner.run("process_pool", w, n, chunk, reference_batch=chunk)
                        runs[proc].append({**r, "replicate": rep})
            t0 = time.perf_counter()
            _tuning(runner, params, scratch, plan, rep, per_rep, tuning_runs)
            add_time("workers, chunks and stage threads (every replicate)", time.perf_counter() - t0)
            if rep == 0:
                _unreplicated(cluster, runner, params, base, cores, rows, samples)
        for _ in ticks:
            pass
        for (kind, n), runs in main_runs.items():
            bs = max(1, n // params["batches"])
            rows_, samples_ = _point_rows(runs, base, kind, n, bs, params["queue_size"], cores, groups_at[(kind, n)])
            rows += rows_
            samples += samples_
            if n == params["sweep_size"]:  # keep the median run's timeline at one size
                for proc, rs in runs.items():
                    mid = sorted(rs, key=lambda r: r["wall_s"])[len(rs) // 2]  # the median run's timeline
                    timeline += [{"processor": proc, "kind": kind, "n_records": n, "stage": s, "batch": b, "start_s": t0,
                                  "end_s": t1, "worker": str(wk)} for s, b, t0, t1, wk in mid["events"]]  # fmt: skip
                    depth += [{"processor": proc, "kind": kind, "n_records": n, "t_s": t, "queue": q, "depth": d}
                              for t, q, d in mid["queue_depth"]]  # fmt: skip
        for (kind, n), runs in layout_runs.items():
            chunk = -(-n // workers)
            r_, s_ = _point_rows(runs, {**base, "experiment": "source_layout"}, kind, n, SOURCE_BATCH,
                                 params["queue_size"], cores, None, batch_of={"process_pool": chunk},
                                 threads_of={"thread_pipeline": len(pl.SOURCE_THREAD_GROUPS)})  # fmt: skip
            rows += r_
            samples += s_

        r_, s_ = _tuning_rows(tuning_runs, params, base, cores)
        rows += r_
        samples += s_
        # 6. peak memory, one untimed run each, at the largest size
        n = max(params["sizes"])
        rows += _memory_rows(cluster, runner, params, n, base, cores)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    samples_df = pd.DataFrame(samples)
    summary = results.frame(rows)
    summary = results.frame(rows + derived_rows(summary, samples_df))
    report = performance_report(summary, params)
    meta = run_meta(name, cluster, params, started, machine_start=machine_start, definitions={
        "wall_time": "seconds from the processor's start (pool: before creating it) to its last saved batch",
        "speedup": "serial's wall time / the processor's, per pair of neighbouring runs (x); base_s names serial's median",
        "first_batch": "seconds from the start to the first saved batch",
        "cpu_cores": "CPU seconds of every process of the run (user + system) / wall seconds: cores kept busy",
        "busy_<stage>": "seconds summed over batches inside a stage (wall time: GIL waits included for threads)",
        "pool phases": "startup: until every worker is up; serialize: pickling in the parent; deserialize: unpickling "
                       "in the workers; compute: worker stages; teardown: shutting the pool down",
        "peak_pss": "peak of the summed proportional set size of the run's processes, sampled every 10 ms (B)",
        "peak_pss_increase": "peak_pss minus the same processes' PSS before the run (B)",
        "stage_bound": "n S1 / (S1 + (n - 1) m): the speedup of a perfect pipeline of the serial per-batch stage times "
                       "(S1 their sum, m the largest, n batches)",
        "core_bound": "cores x serial wall / serial CPU: the speedup if every core were kept busy",
    })  # fmt: skip
    meta["groups"] = groups_used
    meta["replicates"] = plan.record()
    meta["start_methods"] = list(START_METHODS)
    meta["default_start_method"] = mp.get_start_method()
    results.write(CHAPTER, summary, samples_df, meta,
                  extra={"timeline": pd.DataFrame(timeline), "queue_depth": pd.DataFrame(depth),
                         "bounds": bounds_table(summary, cores)})  # fmt: skip
    results.write_json(CHAPTER, "final_performance_report", report)
    claims.record(CHAPTER)
    return summary


def tuning_configs(params: dict, cores: int) -> dict[str, list[tuple]]:
    """Return the tuning groups, each a list of (variant, processor, keyword arguments of :meth:`_Runner.run`, batch
    size) run together: the pool's workers and chunk sizes (one group: the pool with cpu_count workers and n // 10
    chunks stands in both series), and the thread pipeline's stage threads on I/O work; serial first in each."""
    n = params["tuning_size"]
    bs = n // params["batches"]
    pool = [("serial", "serial", {}, bs)]
    for wk in dict.fromkeys(params["pool_workers"]):
        pool.append((f"pool_workers_{wk}", "process_pool", {"workers": wk}, bs))
    for div in params["chunk_divisors"]:
        parts = cores * (2 if div == "2p" else 1)
        chunk = -(-n // parts)
        if chunk != bs:
            pool.append((f"pool_chunk_n/{div}", "process_pool", {"workers": cores, "reference_batch": chunk}, chunk))
    stages = [("serial", "serial", {}, bs)]
    for k in params["stage_threads"]:
        stages.append((f"stage_threads_{k}", "thread_pipeline", {"threads": k}, bs))
    return {"pool_settings": pool, "stage_threads": stages}


def _tuning(runner: _Runner, params: dict, scratch: Path, plan, rep: int, per_rep: int, got: dict) -> None:
    """Run the tuning groups' rounds of one replicate (each round every configuration once, in a rotated order, serial
    checked first); append each run to ``got[group][variant]``. The stage threads group the stages by serial's stage
    costs from the first replicate's untimed calibration run (kept in ``got["_stage_costs"]``)."""
    cores = usable_cores()
    n = params["tuning_size"]
    io_dir = scratch / "io"
    io_dir.mkdir(exist_ok=True)
    kinds = {"pool_settings": pl.Workload(kind="python", seed=params["seed"]),
             "stage_threads": pl.Workload(kind="io", seed=params["seed"], io_bytes=params["io_bytes"], io_dir=str(io_dir))}
    costs = got.setdefault("_stage_costs", {})  # serial's stage costs, measured once: every replicate groups alike
    for group, configs in tuning_configs(params, cores).items():
        w = kinds[group]
        by_name = {c[0]: c for c in configs}
        runs = got.setdefault(group, {c[0]: [] for c in configs})
        for c in configs:
            if c[1] == "process_pool" and "reference_batch" in c[2]:
                runner.ensure_reference(w, n, c[3])
        for k in range(per_rep):
            order = plan.order(f"tuning/{group}", list(by_name), rep * per_rep + k)
            for name in _serial_first(order, runner, w, n, by_name["serial"][3]):
                _variant, proc, kw, bs = by_name[name]
                kw = dict(kw)
                threads = kw.pop("threads", None)
                if threads is not None:
                    if "calib" not in costs:
                        costs["calib"] = runner.run("serial", w, n, bs)["busy"]
                    kw["groups"] = pl.balanced_groups(costs["calib"], threads)
                runs[name].append({**runner.run(proc, w, n, bs, **kw), "replicate": rep})


def _tuning_rows(got: dict, params: dict, base: dict, cores: int) -> tuple[list[dict], list[dict]]:
    """Return the tuning groups' summary and sample rows: each configuration against serial from the same rounds
    (experiment = the group, variant = the configuration)."""
    rows, samples = [], []
    n = params["tuning_size"]
    for group, configs in tuning_configs(params, cores).items():
        runs = got.get(group)
        if not runs:
            continue
        kind = "python" if group == "pool_settings" else "io"
        for name, proc, kw, bs in configs:
            if name == "serial":
                continue
            r_, s_ = _point_rows({"serial": runs["serial"], proc: runs[name]}, {**base, "experiment": group}, kind, n,
                                 n // params["batches"], params["queue_size"], cores, None,
                                 batch_of={proc: bs}, threads_of={proc: kw.get("threads")} if "threads" in kw else None)  # fmt: skip
            keep = [r for r in r_ if r["variant"] != "serial"]
            for r in keep:
                r["variant"] = name
            rows += keep
            for smp in s_:
                if smp["variant"] != "serial":
                    smp["variant"] = name
                    samples.append(smp)
        r_, s_ = _point_rows({"serial": runs["serial"]}, {**base, "experiment": group}, kind, n, n // params["batches"],
                             params["queue_size"], cores, None)  # fmt: skip
        rows += r_
        samples += s_
    return rows, samples


def _serial_first(order: list[str], runner: _Runner, w: pl.Workload, n: int, batch_size: int) -> list[str]:
    """Return a round's order, with serial moved first where it has not yet written the reference output the other
    processors are checked against (the point's first round only)."""
    if (w.kind, n, batch_size) in runner.reference or "serial" not in order:
        return order
    return ["serial"] + [p for p in order if p != "serial"]


def _rotated(procs: list[str], round_index: int) -> list[str]:
    """Return a round's processors in their rotated order (:func:`~ipcbench.experiments._common.round_order`)."""
    return [procs[i] for i in round_order(len(procs), round_index)]


def _unreplicated(cluster, runner: _Runner, params: dict, base: dict, cores: int, rows: list, samples: list) -> None:
    """Run the points the chapter shows once, without replicates (between the first replicate and the second): one MPI
    rank per stage, the pool's start methods, the batch- and queue-size tuning; append their rows."""
    # 2. one MPI rank per stage (oversubscribed on 2 cores), at the sweep size
    n = params["sweep_size"]
    bs = n // params["batches"]
    for kind in progress(params["kinds"], "MPI: one stage per rank"):
        w = pl.Workload(kind=kind, seed=params["seed"], wait_s=params["wait_s"])
        runs = {"serial": [], "mpi_stages": []}
        for k in range(params["samples"]):
            for proc in _serial_first(_rotated(list(runs), k), runner, w, n, bs):
                runs[proc].append(runner.run(proc, w, n, bs, groups=None, ranks=len(pl.STAGES) if proc != "serial" else 2))
        r_, s_ = _point_rows(runs, base, kind, n, bs, params["queue_size"], cores, None, ranks_mpi=len(pl.STAGES))
        rows += [r for r in r_ if r["variant"] != "serial"]
        samples += [s for s in s_ if s["variant"] != "serial"]

    # 3. process start-up per start method, and the pool run with each
    n0 = min(SOURCE_SIZES)
    w = pl.Workload(kind="python", seed=params["seed"])
    for method in progress(START_METHODS, "pool start methods"):
        runs = {"serial": [], "process_pool": []}
        for k in range(params["start_method_samples"]):
            for proc in _serial_first(_rotated(list(runs), k), runner, w, n0, n0 // params["batches"]):
                runs[proc].append(runner.run(proc, w, n0, n0 // params["batches"],
                                             start_method=method if proc == "process_pool" else None))  # fmt: skip
        r_, s_ = _point_rows(runs, {**base, "experiment": "start_method"}, "python", n0, n0 // params["batches"],
                             params["queue_size"], cores, None, start_method=method)  # fmt: skip
        rows += [r for r in r_ if r["variant"] == "process_pool"]
        samples += [s for s in s_ if s["variant"] == "process_pool"]

    # 4. batch size and queue size (the source's tuning guide), thread pipeline vs serial
    n = params["sweep_size"]
    tune = [("batch_size", f, params["queue_size"]) for f in params["batch_fractions"]]
    tune += [("queue_size", 20, q) for q in params["queue_sizes"]]
    for kind in ("python", "numpy"):
        w = pl.Workload(kind=kind, seed=params["seed"])
        measured = {}  # (batch fraction, queue size): runs. The batch-size series at the default queue size and
        # the queue-size series at its batch size share one setting: it runs once and stands in both series
        for what, frac, q in progress(tune, f"tuning ({kind})"):
            bs = n // frac
            runs = measured.setdefault((frac, q), {"serial": [], "thread_pipeline": []})
            for k in range(len(runs["serial"]), params["sweep_samples"]):
                for proc in _serial_first(_rotated(list(runs), k), runner, w, n, bs):
                    runs[proc].append(runner.run(proc, w, n, bs, queue_size=q if proc != "serial" else None))
            r_, s_ = _point_rows(runs, {**base, "experiment": what}, kind, n, bs, q, cores, None)
            rows += r_
            samples += s_


def _point_rows(runs: dict, base: dict, kind: str, n: int, bs: int, q: int, cores: int, groups, ranks_mpi: int = 2,
                start_method: str | None = None, batch_of: dict | None = None,
                threads_of: dict | None = None) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """Return summary and sample rows for one (kind, size) point from each processor's runs (``batch_of``: a
    processor's own batch size where it differs from ``bs``; ``threads_of``: a thread pipeline's thread count)."""
    rows, samples = [], []
    serial = runs["serial"]
    ser_wall = [r["wall_s"] for r in serial]
    ser_med = float(np.median(ser_wall))
    method = start_method or mp.get_start_method()
    for proc, rs in runs.items():
        nranks = ranks_mpi if proc == "mpi_stages" else rs[0]["workers"] if proc == "process_pool" else 1
        labels = {**base, "experiment": base.get("experiment", "etl"), "variant": _label(proc, nranks), "payload": kind,
                  "ranks": nranks, "oversubscribed": bool(nranks > cores)}  # fmt: skip
        extra = {"n_records": n, "batch_size": (batch_of or {}).get(proc, bs), "batches": rs[0]["n_batches"],
                 "threads": (threads_of or {}).get(proc, rs[0]["phases"].get("threads") if proc == "thread_pipeline" else None),
                 "queue_size": q if proc in ("thread_pipeline", "mpi_stages") else None,
                 "start_method": method if proc == "process_pool" else None,
                 "groups": "|".join("+".join(g) for g in rs[0]["phases"]["groups"]) if proc == "mpi_stages" else None}  # fmt: skip
        wall = [r["wall_s"] for r in rs]
        reps = [r.get("replicate", 0) for r in rs]  # run k of every processor ran in the same round (replicate)

        def lab(vals, reps=reps):
            return Replicated(vals, reps)

        for metric, unit, vals in (("wall_time", "s", wall),
                                   ("first_batch", "s", [r["first_batch_s"] for r in rs]),
                                   ("cpu_cores", "1", [r["cpu_s"] / r["wall_s"] for r in rs]),
                                   ("speedup", "x", [s / p for s, p in zip(ser_wall, wall, strict=True)])):  # fmt: skip
            r_, s_ = _stats_rows(lab(vals), labels, metric, unit, **extra, base_s=ser_med)
            rows.append(r_)
            samples += s_
        for stage in pl.STAGES:
            r_, s_ = _stats_rows(lab([r["busy"][stage] for r in rs]), labels, f"busy_{stage}", "s", **extra)
            rows.append(r_)
            samples += s_
        if proc == "process_pool":
            for ph in ("startup", "generate", "serialize", "deserialize", "compute", "teardown"):
                r_, s_ = _stats_rows(lab([r["phases"][f"{ph}_s"] for r in rs]), labels, ph, "s", **extra)
                rows.append(r_)
                samples += s_
            r_, _ = _stats_rows(lab([r["phases"]["payload_bytes"] for r in rs]), labels, "payload", "B", **extra)
            rows.append(r_)
    return rows, samples


def _memory_rows(cluster, runner: _Runner, params: dict, n: int, base: dict, cores: int) -> list[dict]:
    """Return peak-PSS rows for every processor and the python/numpy kinds at ``n`` records (one untimed run each).

    Local processors run in a fresh interpreter each (:func:`ipcbench.etl.measure_peak_memory`);
    the MPI stages are sampled on their two engines.
    """
    rows = []
    engine_pids = [r["pid"] for r in cluster.ranks[:2]] if cluster.owned else []
    bs = n // params["batches"]
    for kind in progress(("python", "numpy"), "peak memory"):
        w = pl.Workload(kind=kind, seed=params["seed"])
        ref, groups = None, None
        for proc in PROCESSORS:  # serial first: the reference output and the MPI stage groups
            if proc == "mpi_stages":
                if not engine_pids:
                    continue
                with pl.PeakMemory(lambda: engine_pids) as pm:
                    r = runner.run(proc, w, n, bs, groups=groups)
                mem = {"peak": pm.peak, "baseline": pm.baseline, "checksum": r["checksum"]}
            else:
                mem = pl.measure_peak_memory(proc, w, n, bs, runner.scratch / f"mem-{proc}", params["queue_size"], cores)
                if proc == "serial":
                    ref = mem["checksum"]
                    groups = pl.balanced_groups(mem["busy"], 2)  # the stages' times of this run: no second run
            if mem["checksum"] != ref:
                raise AssertionError(f"the memory run of {proc} ({kind}) wrote different output than serial")
            nranks = 2 if proc in ("mpi_stages", "process_pool") else 1
            labels = {**base, "experiment": "memory", "variant": proc, "payload": kind, "ranks": nranks,
                      "oversubscribed": False, "n_records": n, "batch_size": bs}  # fmt: skip
            for metric, v in (("peak_pss", mem["peak"]), ("peak_pss_increase", mem["peak"] - mem["baseline"])):
                rows.append(results.summary_row(summarize([float(v)]), **labels, metric=metric, unit="B",
                                                baseline_pss=float(mem["baseline"])))  # fmt: skip
    return rows


# ------------------------------------------------------------------------ analysis


def etl_table(summary: pd.DataFrame, kind: str, sizes=None) -> pd.DataFrame:
    """Return the source's results table rebuilt for one kind: wall medians (s) per processor and the speedups."""
    e = summary.query("experiment == 'etl' and payload == @kind")
    sizes = sizes or sorted(e["n_records"].unique())
    out = []
    for n in sizes:
        row = {"records": int(n)}
        ran = set(e.loc[e["n_records"] == n, "variant"])  # (beyond the source's sizes, fewer: processors_at)
        for proc in PROCESSORS:
            row[f"{LABELS[proc]} (s)"] = pick_row(e, n_records=n, variant=proc, metric="wall_time")["median"] if proc in ran else np.nan
        for proc in PROCESSORS[1:]:
            row[f"{LABELS[proc]} speedup"] = pick_row(e, n_records=n, variant=proc, metric="speedup")["median"] if proc in ran else np.nan
        out.append(row)
    return pd.DataFrame(out)


def bounds_table(summary: pd.DataFrame, cores: int) -> pd.DataFrame:
    """Return per kind and size: the measured speedups beside the stage bound and the core bound (x)."""
    e = summary.query("experiment == 'etl'")
    out = []
    for (kind, n), sub in e.groupby(["payload", "n_records"]):
        ser = sub.query("variant == 'serial'")
        busy = {s: float(pick_row(ser, metric=f"busy_{s}")["median"]) for s in pl.STAGES}
        nb = int(ser["batches"].iloc[0])
        per = {s: v / nb for s, v in busy.items()}
        s1, m = sum(per.values()), max(per.values())
        stage_bound = nb * s1 / (s1 + (nb - 1) * m)
        wall = float(pick_row(ser, metric="wall_time")["median"])
        cpu = float(pick_row(ser, metric="cpu_cores")["median"]) * wall
        core_bound = cores * wall / cpu if cpu > 0 else float("inf")
        row = {"kind": kind, "records": int(n), "batches": nb, "serial (s)": wall,
               "slowest stage": max(per, key=per.get), "stage bound": stage_bound, "core bound": core_bound,
               "bound": min(stage_bound, core_bound)}  # fmt: skip
        for proc in PROCESSORS[1:]:
            sp = sub.query("variant == @proc and metric == 'speedup'")
            row[f"{LABELS[proc]}"] = float(sp["median"].iloc[0]) if len(sp) else np.nan
        out.append(row)
    return pd.DataFrame(out)


def crossover(summary: pd.DataFrame, kind: str, proc: str = "process_pool") -> dict:
    """Return the smallest measured size from which ``proc`` beats serial with CIs clear at that and every larger size."""
    e = summary.query("experiment == 'etl' and payload == @kind and variant == @proc and metric == 'speedup'")
    e = e.sort_values("n_records")
    wins = (e["ci_low"] > 1).to_numpy()
    sizes = e["n_records"].astype(int).tolist()
    first = None
    for k in range(len(sizes)):
        if wins[k:].all():
            first = sizes[k]
            break
    return {"kind": kind, "processor": proc, "crossover_records": first, "sizes": sizes, "speedups": e["median"].tolist()}


def pool_phase_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Return the process pool's phases per kind and size: seconds and share of the wall time."""
    e = summary.query("experiment == 'etl' and variant == 'process_pool'")
    out = []
    for (kind, n), sub in e.groupby(["payload", "n_records"]):
        wall = float(pick_row(sub, metric="wall_time")["median"])
        row = {"kind": kind, "records": int(n), "wall (s)": wall}
        for ph in ("startup", "generate", "serialize", "deserialize", "compute", "teardown"):
            v = float(pick_row(sub, metric=ph)["median"])
            row[f"{ph} (s)"] = v
        row["startup share"] = row["startup (s)"] / wall
        row["pickling share"] = (row["serialize (s)"] + row["deserialize (s)"]) / wall
        out.append(row)
    return pd.DataFrame(out)


def memory_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Return peak PSS and its increase over the processes' baseline (MiB) per processor and kind."""
    m = summary.query("experiment == 'memory'")
    piv = m.pivot_table(index=["payload", "variant"], columns="metric", values="median", aggfunc="first") / 2**20
    return piv.rename(columns={"peak_pss": "peak PSS (MiB)", "peak_pss_increase": "increase (MiB)"}).reset_index()


def readings(summary: pd.DataFrame, tolerance: float | None = None) -> pd.DataFrame:
    """Return each reading of the source's table against the table's two shapes, with what the data say of it.

    A reading's measured serial growth (25 000 -> 100 000 records) and pipeline speedup are set against the source's
    (its serial times' growth, 2.55x), each widened by the claim rules' tolerance: "ruled out" when an interval
    covering at least 95% lies wholly outside its band, "consistent" when both lie inside, else "not decided".
    """
    if tolerance is None:
        tolerance = float(claims.load_rules()[0].tolerance)
    src_growth = SOURCE_SERIAL_S[max(SOURCE_SIZES)] / SOURCE_SERIAL_S[min(SOURCE_SIZES)]
    want = {"reading_serial_growth": src_growth, "reading_speedup": SOURCE_PIPELINE_SPEEDUP}
    d = summary[(summary["experiment"] == "derived") & summary["metric"].isin(list(want))]
    out = []
    for reading, text in READINGS.items():
        rows = d[d["payload"] == reading].set_index("metric")
        if len(rows) < len(want):
            continue
        row = {"reading": reading, "what": text}
        outside, inside = False, True
        for metric, claimed in want.items():
            r = rows.loc[metric]
            band = (claimed * (1 - tolerance), claimed * (1 + tolerance))
            enough = float(r["ci_level"]) >= 0.95
            out_of = float(r["ci_high"]) < band[0] or float(r["ci_low"]) > band[1]
            outside |= enough and out_of
            inside &= enough and band[0] <= float(r["ci_low"]) and float(r["ci_high"]) <= band[1]
            short = metric.removeprefix("reading_")
            row[f"{short} (measured)"] = f"{r['median']:.2f}x [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
            row[f"{short} (source)"] = f"{claimed:.2f}x"
        row["ci_level"] = float(rows["ci_level"].min())
        row["the data"] = "ruled out" if outside else "consistent" if inside else "not decided"
        out.append(row)
    return pd.DataFrame(out)


def _average_speedup(points: list[dict], proc: str) -> float:
    """Return ``proc``'s mean speedup over report entries, NaN where it did not run them all (:func:`processors_at`)."""
    if not points or not all(proc in p for p in points):
        return float("nan")
    return float(np.mean([p[proc]["speedup"] for p in points]))


def performance_report(summary: pd.DataFrame, params: dict) -> dict:
    """Return the source's ``final_performance_report.json`` rebuilt from this run, per kind and size."""
    e = summary.query("experiment == 'etl'")
    out = {"test_config": {"sizes": [int(s) for s in params["sizes"]], "batches_per_run": params["batches"],
                           "queue_size": params["queue_size"], "samples": params["samples"],
                           "wait_s_per_stage (wait kind)": params["wait_s"], "cores": usable_cores(),
                           "start_method": mp.get_start_method()},
           "results": {}, "summary": {}}  # fmt: skip
    for kind, sub in e.groupby("payload"):
        per = {}
        for n, s2 in sub.groupby("n_records"):
            entry = {}
            ran = [p for p in PROCESSORS if p in set(s2["variant"])]  # (beyond the source's sizes: processors_at)
            for proc in ran:
                t = pick_row(s2, variant=proc, metric="wall_time")
                entry[proc] = {"total_time": t["median"], "ci": [t["ci_low"], t["ci_high"]],
                               "first_batch_time": pick_row(s2, variant=proc, metric="first_batch")["median"]}  # fmt: skip
                if proc != "serial":
                    entry[proc]["speedup"] = pick_row(s2, variant=proc, metric="speedup")["median"]
            entry["fastest"] = min(ran, key=lambda p: entry[p]["total_time"])
            per[str(int(n))] = entry
        src = [per[str(n)] for n in SOURCE_SIZES if str(n) in per]
        out["results"][kind] = per
        out["summary"][kind] = {
            "average_pipeline_speedup (source sizes)": _average_speedup(src, "thread_pipeline"),
            "average_process_pool_speedup (source sizes)": _average_speedup(src, "process_pool"),
            "average_mpi_stages_speedup (source sizes)": _average_speedup(src, "mpi_stages"),
            "process_pool_crossover_records": crossover(summary, kind)["crossover_records"],
        }
    return out


def derived_rows(summary: pd.DataFrame, samples: pd.DataFrame) -> list[dict]:
    """Return the speedups, shares and changes seed 003's claims read, each with its own interval.

    Pure: from this chapter's summary and raw samples. Runs of different processors at one point were
    interleaved (run k of each processor sits in the same round), so their ratios are paired by round.
    Percent changes follow the source's sign: (processor / serial - 1) x 100 for times, so -66% is
    "0.34x serial's speed" (its 2.06 s against 0.69 s).
    """
    from ._common import derived_row, exact_row, sample_values

    out = []
    etl = summary.query("experiment == 'etl'")

    def smp(proc, kind, n, metric, experiment="etl"):
        return sample_values(summary, samples, experiment=experiment, variant=proc, payload=kind, n_records=n, metric=metric)

    def add(fn, sets, name, unit, inputs, paired=True, **labels):
        out.append(derived_row(fn, sets, name, unit, CHAPTER, paired=paired, inputs=inputs, **labels))

    out.append(exact_row(1.0, "parity", "x", CHAPTER, "a speedup of 1: the processor takes serial's time"))
    kinds = [k for k in pl.KINDS if k in set(etl["payload"])]
    for kind in kinds:
        sp = [smp("thread_pipeline", kind, n, "speedup") for n in SOURCE_SIZES]
        add(lambda *a: np.mean(np.stack(np.broadcast_arrays(*a)), 0), sp, "pipeline_speedup_mean", "x",
            "thread pipeline speedup over serial, mean over 25 000, 50 000 and 100 000 records", paired=False, payload=kind)
        add(lambda *a: np.max(np.stack(np.broadcast_arrays(*a)), 0) / np.min(np.stack(np.broadcast_arrays(*a)), 0), sp,
            "pipeline_speedup_max_over_min", "x", "thread pipeline speedup, largest over smallest of 25k/50k/100k records",
            paired=False, payload=kind)  # fmt: skip
        for n in SOURCE_SIZES:
            if kind == "wait":
                continue
            add(lambda s: (s - 1) * 100, [smp("process_pool", kind, n, "speedup")], "pool_speed_change", "%",
                "process pool: (speedup over serial - 1) x 100, the source's sign", payload=kind, n_records=n)
            add(lambda a, b, w: (a + b) / w * 100, [smp("process_pool", kind, n, "startup"), smp("process_pool", kind, n, "teardown"),
                                                   smp("process_pool", kind, n, "wall_time")],
                "pool_startup_teardown_share", "%", "process pool: (start-up + teardown) / wall time, per run", payload=kind,
                n_records=n)  # fmt: skip
            add(lambda a, b, w, c: (a + b) / (w * c) * 100,
                [smp("process_pool", kind, n, m) for m in ("serialize", "deserialize", "wall_time", "cpu_cores")],
                "pool_pickling_share_of_cpu", "%",
                "process pool: (pickling in the parent + unpickling in the workers) / the run's CPU seconds (wall x cores busy)",
                payload=kind, n_records=n)  # fmt: skip
        n = max(SOURCE_SIZES)
        add(lambda a, b: (a / b - 1) * 100, [smp("thread_pipeline", kind, n, "first_batch"), smp("serial", kind, n, "first_batch")],
            "pipeline_first_batch_change", "%", "time to the first saved batch, thread pipeline / serial - 1", payload=kind,
            n_records=n)  # fmt: skip
        add(lambda a, b: (a / b - 1) * 100, [smp("thread_pipeline", kind, n, "cpu_cores"), smp("serial", kind, n, "cpu_cores")],
            "pipeline_cpu_change", "%", "cores kept busy (CPU s / wall s), thread pipeline / serial - 1", payload=kind,
            n_records=n)  # fmt: skip
        if kind != "wait":
            busy = {p: sum(smp(p, kind, n, f"busy_{st}") for st in pl.STAGES[1:]) for p in ("process_pool", "serial")}
            add(lambda a, b: a / b, [busy["process_pool"], busy["serial"]], "pool_stage_time_ratio", "x",
                "seconds inside the transform stages (preprocess to save) per run, process pool's workers / serial",
                payload=kind, n_records=n)  # fmt: skip
    # readings of the source's table: serial growth from 25 000 to 100 000 records and the pipeline speedup
    lay = summary.query("experiment == 'source_layout'")
    lo, hi = min(SOURCE_SIZES), max(SOURCE_SIZES)
    sources = {r: (("source_layout", "wait" if r.startswith("wait") else r) if r != "wait_ten_batches" else ("etl", "wait"))
               for r in READINGS}  # fmt: skip
    for reading, (exp, kind) in sources.items():
        have = set(summary.query("experiment == @exp and payload == @kind and variant == 'serial' and metric == 'wall_time'")
                   ["n_records"])  # fmt: skip
        if not {lo, hi} <= have or (exp == "source_layout" and lay.empty):
            continue
        add(lambda a, b: a / b, [smp("serial", kind, hi, "wall_time", exp), smp("serial", kind, lo, "wall_time", exp)],
            "reading_serial_growth", "x", f"serial wall time at {hi:,} over {lo:,} records: {READINGS[reading]}",
            paired=False, payload=reading)  # fmt: skip
        sizes = sorted(int(n) for n in have & set(SOURCE_SIZES))  # (whole numbers: a re-read summary holds floats)
        add(lambda *a: np.mean(np.stack(np.broadcast_arrays(*a)), 0), [smp("thread_pipeline", kind, n, "speedup", exp) for n in sizes],
            "reading_speedup", "x", f"thread pipeline over serial, mean over {', '.join(f'{n:,}' for n in sizes)} records: "
            f"{READINGS[reading]}", paired=False, payload=reading)  # fmt: skip
        add(lambda *a: np.max(np.stack(np.broadcast_arrays(*a)), 0) / np.min(np.stack(np.broadcast_arrays(*a)), 0),
            [smp("thread_pipeline", kind, n, "speedup", exp) for n in sizes], "reading_speedup_max_over_min", "x",
            f"thread pipeline's speedup over serial, largest over smallest of {', '.join(f'{n:,}' for n in sizes)} "
            f"records: {READINGS[reading]}", paired=False, payload=reading)  # fmt: skip
    # memory: one untimed run per processor (no interval: the rules see n = 1)
    mem = summary.query("experiment == 'memory'")
    for kind in sorted(set(mem["payload"])):
        def m(proc, metric, kind=kind):
            return np.array([float(pick_row(mem, variant=proc, payload=kind, metric=metric)["median"])])

        add(lambda a, b: (a / b - 1) * 100, [m("process_pool", "peak_pss"), m("serial", "peak_pss")], "pool_memory_change",
            "%", "peak PSS of every process of the run, process pool / serial - 1 (one run each)", paired=False,
            payload=kind)  # fmt: skip
        add(lambda a, b: (a / b - 1) * 100, [m("serial", "peak_pss_increase"), m("thread_pipeline", "peak_pss_increase")],
            "pipeline_memory_efficiency", "%", "memory growth during the run, serial / thread pipeline - 1 (one run each)",
            paired=False, payload=kind)  # fmt: skip
    return out


def _fmt(xs) -> str:
    return ", ".join(f"{x:.2f}x" for x in xs)


def reanalyze(res: results.Results) -> list[dict]:
    """Return this chapter's derived rows recomputed from its results on disk."""
    return derived_rows(res.summary[res.summary["experiment"] != "derived"], res.samples)
