"""One ETL workload and four ways to run it: serial, a thread pipeline, a process pool, MPI processes as stages.

The workload (seed 003's framework, rebuilt): records are generated in batches,
then preprocessed (validated, derived columns), transformed (features), reduced
to per-category metrics and saved to real files, one file per batch. Every
processor runs the same stage functions on the same batches, so their outputs are
identical: :attr:`RunResult.checksum` is the SHA-256 of the saved files' contents
in batch order, and :attr:`RunResult.metrics` sums the per-batch metrics in batch
order.

Four kinds of work on the same records (:data:`KINDS`):

* ``python``: every stage loops over records in Python (holds the GIL);
* ``numpy``: the same formulas vectorised (numpy releases the GIL inside its loops),
  saved as binary;
* ``wait``: the numpy work plus a fixed wait per batch in each stage after
  ``generate`` (``time.sleep``: the GIL is released, no core is used). This is the
  hypothesis that seed 003's serial time (0.69-0.71 s whatever the data size)
  came from fixed per-batch waits, not from processing records;
* ``io``: the numpy work plus real file I/O per batch in each stage after
  ``generate``: write the stage's scratch file (``io_bytes``) under ``io_dir``,
  ``fsync`` it, read it back and check it (Python releases the GIL in each system
  call; the disk, not a core, is the wait).

A failing stage, an invalid record or a dead worker ends a run with
:class:`PipelineError` naming the stage and the batch; threads are joined,
processes and queues released, and the partial output directory removed (a run
writes into ``<out>.partial`` and renames it only when every batch is saved).
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import queue
import resource
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations, pairwise
from pathlib import Path

import numpy as np

STAGES = ("generate", "preprocess", "transform", "metrics", "save")
KINDS = ("python", "numpy", "wait", "io")
N_CATEGORIES = 16
N_BUCKETS = 32
WEIGHTS = tuple(0.5 + 0.1 * c for c in range(N_CATEGORIES))  # per-category weight of the score
_W = np.array(WEIGHTS)
METRIC_COLUMNS = ("count", "amount_sum", "score_sum")

now_ns = time.perf_counter_ns


# ------------------------------------------------------------------------ errors


class PipelineError(RuntimeError):
    """A run failed: ``stage`` and ``batch`` say where (batch is None when unknown); no output was kept."""

    def __init__(self, message: str, stage: str | None, batch: int | None, processor: str = ""):
        super().__init__(message)
        self.stage = stage
        self.batch = batch
        self.processor = processor

    def __reduce__(self):
        return (PipelineError, (str(self), self.stage, self.batch, self.processor))


class PeerTimeout(PipelineError):
    """An MPI stage waited longer than its peer timeout for the previous stage's rank."""

    def __init__(self, message: str):
        super().__init__(message, None, None, "mpi_stages")


class RecordValidationError(PipelineError):
    """A record failed validation in ``preprocess``; ``record`` is its id."""

    def __init__(self, batch: int, record: int, reason: str):
        super().__init__(f"record {record} of batch {batch} is invalid: {reason}", "preprocess", batch)
        self.record = record

    def __reduce__(self):  # picklable across processes with its fields
        return (_rebuild_validation, (self.batch, self.record, str(self).split(": ", 1)[-1]))


def _rebuild_validation(batch, record, reason):
    return RecordValidationError(batch, record, reason)


class InjectedFault(RuntimeError):
    """The error a :class:`Faults` ``raise_in`` entry raises (a stand-in for a bug in a stage)."""


# ---------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Faults:
    """Faults to inject: raise in (stage, batch); an invalid record id; kill the worker process at (stage, batch)."""

    raise_in: tuple[str, int] | None = None
    invalid_record: int | None = None
    kill_in: tuple[str, int] | None = None

    def __post_init__(self):
        for what in (self.raise_in, self.kill_in):
            if what is not None and what[0] not in STAGES:
                raise ValueError(f"unknown stage {what[0]!r}; stages are {', '.join(STAGES)}")


@dataclass(frozen=True)
class Workload:
    """What to run: ``kind`` of work (see :data:`KINDS`), the data seed, the per-stage wait of ``wait`` (s), the
    per-stage file of ``io`` (``io_bytes`` under ``io_dir``, default the system's temporary directory), faults."""

    kind: str = "numpy"
    seed: int = 0
    wait_s: float = 0.015
    faults: Faults = field(default_factory=Faults)
    io_bytes: int = 256 * 1024
    io_dir: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown workload kind {self.kind!r}; kinds are {', '.join(KINDS)}")
        if self.wait_s < 0:
            raise ValueError("wait_s must be >= 0")
        if self.io_bytes < 1:
            raise ValueError("io_bytes must be >= 1")
        if self.io_dir and not Path(self.io_dir).is_dir():
            raise ValueError(f"io_dir {self.io_dir!r} is not a directory")


def batch_ranges(n_records: int, batch_size: int) -> list[tuple[int, int]]:
    """Return (first record id, record count) of every batch."""
    if n_records < 1:
        raise ValueError(f"n_records must be >= 1, got {n_records}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [(s, min(batch_size, n_records - s)) for s in range(0, n_records, batch_size)]


Batch = dict  # column name -> numpy array; key "_index" holds the batch number


def _fault(w: Workload, stage: str, index: int) -> None:
    f = w.faults
    if f.raise_in == (stage, index):
        raise InjectedFault(f"injected failure in stage {stage!r}, batch {index}")
    if f.kill_in == (stage, index):
        os._exit(17)  # a worker that dies without a word (a segfault, the OOM killer)


def generate(w: Workload, index: int, first: int, count: int) -> Batch:
    """Return batch ``index``: ``count`` records from id ``first`` (the same for every processor and batch size)."""
    ids = np.arange(first, first + count, dtype=np.int64)
    # per record, from its id: independent of batching
    rng = np.random.Generator(np.random.Philox(key=w.seed))
    rng.bit_generator.advance(first)  # one Philox4x64 block = the 4 draws of one record
    raw = rng.bit_generator.random_raw(count * 4).reshape(count, 4)  # exactly 4 raw draws per record
    u = (raw >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)  # uniform in [0, 1)
    value = np.round(np.exp(u[:, 0] * 6.0), 2)  # 1 .. 403, long tailed
    quantity = (1 + raw[:, 1] % np.uint64(10)).astype(np.int64)
    category = (raw[:, 2] % np.uint64(N_CATEGORIES)).astype(np.int64)
    timestamp = 1.7e9 + np.floor(u[:, 3] * 86_400 * 7)
    if w.faults.invalid_record is not None and first <= w.faults.invalid_record < first + count:
        value[w.faults.invalid_record - first] = float("nan")
    _fault(w, "generate", index)
    return {"_index": index, "id": ids, "value": value, "quantity": quantity, "category": category, "timestamp": timestamp}


def _wait(w: Workload) -> None:
    if w.kind == "wait" and w.wait_s > 0:
        time.sleep(w.wait_s)
    elif w.kind == "io":
        _file_io(w)


_IO_BLOCK = np.frombuffer(hashlib.sha256(b"ipcbench io").digest() * 2048, dtype=np.uint8)  # 64 KiB, not all zeros


def _file_io(w: Workload) -> None:
    """Write ``io_bytes`` to a file of this thread's own under ``io_dir``, fsync it, read it back, check it, remove it."""
    import tempfile

    data = np.resize(_IO_BLOCK, w.io_bytes).tobytes()
    fd, path = tempfile.mkstemp(prefix="ipcbench-io-", dir=w.io_dir or None)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.lseek(fd, 0, os.SEEK_SET)
        got = bytearray()
        while len(got) < len(data):
            chunk = os.read(fd, len(data) - len(got))
            if not chunk:
                break
            got += chunk
        if got != data:
            raise PipelineError(f"the stage's scratch file {path} read back {len(got)} B, not the {len(data)} B written")
    finally:
        os.close(fd)
        os.unlink(path)


def preprocess(w: Workload, b: Batch) -> Batch:
    """Return the batch validated (value finite and >= 0, category and quantity in range) with amount and hour."""
    index = b["_index"]
    _fault(w, "preprocess", index)
    if w.kind == "python":
        amount, hour = [], []
        ncat = N_CATEGORIES
        for rid, v, q, c, t in zip(b["id"].tolist(), b["value"].tolist(), b["quantity"].tolist(),
                                   b["category"].tolist(), b["timestamp"].tolist(), strict=True):  # fmt: skip
            if not (v == v and 0.0 <= v < math.inf):
                raise RecordValidationError(index, rid, f"value {v!r} is not a finite number >= 0")
            if not 0 <= c < ncat:
                raise RecordValidationError(index, rid, f"category {c} is outside 0..{ncat - 1}")
            if q < 1:
                raise RecordValidationError(index, rid, f"quantity {q} < 1")
            amount.append(v * q)
            hour.append(int(t // 3600.0) % 24)
        out = {**b, "amount": np.array(amount, dtype=np.float64), "hour": np.array(hour, dtype=np.int64)}
    else:
        v, c, q = b["value"], b["category"], b["quantity"]
        bad = ~(np.isfinite(v) & (v >= 0)) | (c < 0) | (c >= N_CATEGORIES) | (q < 1)
        if bad.any():
            k = int(np.argmax(bad))
            reason = (f"value {float(v[k])!r} is not a finite number >= 0" if not (np.isfinite(v[k]) and v[k] >= 0)
                      else f"category {c[k]} is outside 0..{N_CATEGORIES - 1}" if not 0 <= c[k] < N_CATEGORIES
                      else f"quantity {q[k]} < 1")  # fmt: skip
            raise RecordValidationError(index, int(b["id"][k]), reason)
        out = {**b, "amount": v * q, "hour": (b["timestamp"] // 3600.0).astype(np.int64) % 24}
    _wait(w)
    return out


def transform(w: Workload, b: Batch) -> Batch:
    """Return the batch with features: score = log1p(amount) x weight[category] + sqrt(quantity), bucket, tier, cyclic hour."""
    _fault(w, "transform", b["_index"])
    if w.kind == "python":
        score, bucket, tier, hsin = [], [], [], []
        wts, log1p, sqrt, sin, tau = WEIGHTS, math.log1p, math.sqrt, math.sin, 2 * math.pi / 24
        for a, c, q, h in zip(b["amount"].tolist(), b["category"].tolist(), b["quantity"].tolist(), b["hour"].tolist(),
                              strict=True):  # fmt: skip
            s = log1p(a) * wts[c] + sqrt(q)
            score.append(s)
            bucket.append(int(s * 4.0) % N_BUCKETS)
            tier.append(0 if a < 50.0 else 1 if a < 500.0 else 2)
            hsin.append(sin(h * tau))
        out = {**b, "score": np.array(score), "bucket": np.array(bucket, dtype=np.int64),
               "tier": np.array(tier, dtype=np.int64), "hour_sin": np.array(hsin)}  # fmt: skip
    else:
        a = b["amount"]
        s = np.log1p(a) * _W[b["category"]] + np.sqrt(b["quantity"])
        out = {**b, "score": s, "bucket": (s * 4.0).astype(np.int64) % N_BUCKETS,
               "tier": (a >= 50.0).astype(np.int64) + (a >= 500.0), "hour_sin": np.sin(b["hour"] * (2 * np.pi / 24))}  # fmt: skip
    _wait(w)
    return out


def metrics(w: Workload, b: Batch) -> Batch:
    """Return the batch with ``_metrics``: per category (count, sum of amount, sum of score), shape (16, 3)."""
    _fault(w, "metrics", b["_index"])
    if w.kind == "python":
        m = [[0, 0.0, 0.0] for _ in range(N_CATEGORIES)]
        for c, a, s in zip(b["category"].tolist(), b["amount"].tolist(), b["score"].tolist(), strict=True):
            row = m[c]
            row[0] += 1
            row[1] += a
            row[2] += s
        out = {**b, "_metrics": np.array(m, dtype=np.float64)}
    else:
        c = b["category"]
        out = {**b, "_metrics": np.column_stack([np.bincount(c, minlength=N_CATEGORIES).astype(np.float64),
                                                 np.bincount(c, b["amount"], N_CATEGORIES),
                                                 np.bincount(c, b["score"], N_CATEGORIES)])}  # fmt: skip
    _wait(w)
    return out


SAVED_COLUMNS = ("id", "category", "amount", "score", "bucket", "tier", "hour_sin")


def save(w: Workload, b: Batch, out_dir: Path) -> tuple[str, np.ndarray]:
    """Write the batch's output file under ``out_dir``; return (SHA-256 of its bytes, its metrics)."""
    index = b["_index"]
    _fault(w, "save", index)
    if w.kind == "python":  # CSV text, formatted record by record
        lines = [f"{i},{c},{a:.2f},{s:.6f},{k},{t},{h:.6f}\n" for i, c, a, s, k, t, h in
                 zip(*(b[col].tolist() for col in SAVED_COLUMNS), strict=True)]  # fmt: skip
        data = "".join(lines).encode()
        path = out_dir / f"batch-{index:06d}.csv"
    else:  # binary: one float64 matrix, the same columns
        mat = np.column_stack([b[col].astype(np.float64, copy=False) for col in SAVED_COLUMNS])
        data = mat.tobytes()
        path = out_dir / f"batch-{index:06d}.f64"
    with open(path, "wb") as f:
        f.write(data)
    _wait(w)
    return hashlib.sha256(data).hexdigest(), b["_metrics"]


STAGE_FUNCS: dict[str, Callable] = {"preprocess": preprocess, "transform": transform, "metrics": metrics}


# ------------------------------------------------------------------- run records


@dataclass
class RunResult:
    """One run: wall time (s), output checksum and metrics, per-batch stage events and whatever the processor measured.

    ``events`` rows are (stage, batch, start_s, end_s, worker) with times in seconds
    from the run's start; ``queue_depth`` rows are (t_s, queue, depth);
    ``phases`` holds named durations (s) a processor measured (pool start-up,
    pickling, ...); ``cpu_s`` is the CPU time of every process of the run.
    """

    processor: str
    kind: str
    n_records: int
    batch_size: int
    wall_s: float
    checksum: str
    metrics: np.ndarray
    n_batches: int
    first_batch_s: float
    cpu_s: float
    events: list[tuple] = field(default_factory=list)
    queue_depth: list[tuple] = field(default_factory=list)
    phases: dict = field(default_factory=dict)
    workers: int = 1

    def stage_busy_s(self) -> dict[str, float]:
        """Return the summed time each stage spent on batches (s)."""
        out = dict.fromkeys(STAGES, 0.0)
        for stage, _, s, e, _ in self.events:
            out[stage] += e - s
        return out


def combine(digests: list[str], metric_parts: list[np.ndarray]) -> tuple[str, np.ndarray]:
    """Return the run's checksum (SHA-256 over batch digests in order) and its metrics (sum in batch order)."""
    h = hashlib.sha256()
    for d in digests:
        h.update(d.encode())
    total = np.zeros((N_CATEGORIES, len(METRIC_COLUMNS)))
    for m in metric_parts:
        total = total + m
    return h.hexdigest(), total


OUTPUT_MARKER = ".ipcbench-pipeline-output"
"""A file the pipeline writes into every output directory it creates: only such a directory is ever replaced."""


class _Output:
    """The run's output directory: written as ``<out>.partial``, renamed to ``<out>`` on success, removed on failure.

    A directory is replaced only if the pipeline wrote it (it holds :data:`OUTPUT_MARKER`) or it is empty: a
    mistyped path that names somebody's data is refused before anything is written or removed.
    """

    def __init__(self, out_dir: Path | str):
        self.final = Path(out_dir)
        self.partial = self.final.with_name(self.final.name + ".partial")

    def refusal(self) -> str | None:
        """Return why ``out_dir`` (or its ``.partial`` scratch) must not be replaced, or None when it may."""
        for p in (self.final, self.partial):
            if p.is_symlink() or (p.exists() and not p.is_dir()):
                return f"{p} exists and is not a directory: refusing to replace it with the pipeline's output"
            if p.is_dir() and not (p / OUTPUT_MARKER).exists() and any(p.iterdir()):
                return (f"{p} is not empty and was not written by the pipeline (it has no {OUTPUT_MARKER}): "
                        "refusing to replace it; name another output directory, or remove this one yourself")
        return None

    def __enter__(self) -> Path:
        why = self.refusal()
        if why:
            raise PipelineError(why, None, None)
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)
        (self.partial / OUTPUT_MARKER).write_text("written by ipcbench.etl; a later run may replace this directory\n")
        return self.partial

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            shutil.rmtree(self.final, ignore_errors=True)
            self.partial.rename(self.final)
        else:
            shutil.rmtree(self.partial, ignore_errors=True)
        return False


def _cpu_s() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _wrap(exc: BaseException, stage: str, index: int | None, processor: str) -> PipelineError:
    if isinstance(exc, PipelineError):
        exc.processor = processor
        return exc
    where = f"batch {index}" if index is not None else "an unknown batch"
    return PipelineError(f"{processor}: stage {stage!r} failed on {where}: {type(exc).__name__}: {exc}",
                         stage, index, processor)  # fmt: skip


def _check_no_kill(w: Workload, processor: str) -> None:
    if w.faults.kill_in is not None:
        raise ValueError(f"{processor} has no worker process to kill: kill_in needs ProcessPoolProcessor or MpiStagePipeline")


# -------------------------------------------------------------------- processors


class SerialProcessor:
    """Generate -> preprocess -> transform -> metrics -> save, one batch at a time, in this thread."""

    name = "serial"

    def run(self, w: Workload, n_records: int, batch_size: int, out_dir: Path | str) -> RunResult:
        """Run the workload; return the result (raise :class:`PipelineError` on any failure, keeping no output)."""
        _check_no_kill(w, self.name)
        ranges = batch_ranges(n_records, batch_size)
        events, digests, parts = [], [], []
        cpu0, t0 = _cpu_s(), now_ns()
        first = None
        with _Output(out_dir) as out:
            for index, (start, count) in enumerate(ranges):
                stage = "generate"
                try:
                    s = now_ns()
                    b = generate(w, index, start, count)
                    events.append(("generate", index, (s - t0) * 1e-9, (now_ns() - t0) * 1e-9, "main"))
                    for stage in ("preprocess", "transform", "metrics"):
                        s = now_ns()
                        b = STAGE_FUNCS[stage](w, b)
                        events.append((stage, index, (s - t0) * 1e-9, (now_ns() - t0) * 1e-9, "main"))
                    stage = "save"
                    s = now_ns()
                    d, m = save(w, b, out)
                    events.append(("save", index, (s - t0) * 1e-9, (now_ns() - t0) * 1e-9, "main"))
                except Exception as exc:
                    raise _wrap(exc, stage, index, self.name) from exc
                digests.append(d)
                parts.append(m)
                if first is None:
                    first = (now_ns() - t0) * 1e-9
        wall = (now_ns() - t0) * 1e-9
        checksum, total = combine(digests, parts)
        return RunResult(self.name, w.kind, n_records, batch_size, wall, checksum, total, len(ranges), first,
                         _cpu_s() - cpu0, events)  # fmt: skip


_END = object()


class _Stopped(Exception):
    """Raised inside a stage thread when another stage failed."""


SOURCE_THREAD_GROUPS = [["generate"], ["preprocess"], ["transform"], ["metrics", "save"]]
"""The source's four threads: producer, preprocess, transform, and a consumer that computes the metrics and saves."""


def check_groups(groups: list[list[str]]) -> list[list[str]]:
    """Return ``groups`` if they cover every stage once, in order, with no empty group; else raise ValueError."""
    flat = [st for g in groups for st in g]
    if list(flat) != list(STAGES) or any(not g for g in groups):
        raise ValueError(f"stage groups must split {STAGES} in order into non-empty groups, got {groups}")
    return [list(g) for g in groups]


class ThreadPipelineProcessor:
    """One thread per stage group joined by bounded queues (``queue_size``, the source's 5): backpressure, clean end of
    stream. ``groups`` defaults to one stage per thread (5 threads); :data:`SOURCE_THREAD_GROUPS` is the source's
    four-thread layout.

    An exception in any stage stops every thread (their queue waits poll a stop
    flag), all threads are joined, and the first failure is raised with its stage
    and batch.
    """

    name = "thread_pipeline"
    POLL_S = 0.05

    def __init__(self, queue_size: int = 5, groups: list[list[str]] | None = None):
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.queue_size = queue_size
        self.groups = check_groups(groups if groups is not None else [[st] for st in STAGES])

    def run(self, w: Workload, n_records: int, batch_size: int, out_dir: Path | str) -> RunResult:
        """Run the workload; return the result (raise :class:`PipelineError` on any failure, keeping no output)."""
        _check_no_kill(w, self.name)
        ranges = batch_ranges(n_records, batch_size)
        groups = self.groups
        queues = [queue.Queue(maxsize=self.queue_size) for _ in range(len(groups) - 1)]
        stop = threading.Event()
        failures: list[tuple[int, PipelineError, BaseException]] = []
        events: list[tuple] = []
        depth: list[tuple] = []
        digests, parts = [], []
        first: list[float] = []
        cpu_thread = dict.fromkeys(("+".join(g) for g in groups), 0.0)
        lock = threading.Lock()
        t0 = now_ns()

        def put(qi, item):
            while True:
                if stop.is_set():
                    raise _Stopped
                try:
                    queues[qi].put(item, timeout=self.POLL_S)
                    depth.append(((now_ns() - t0) * 1e-9, qi, queues[qi].qsize()))
                    return
                except queue.Full:
                    continue

        def get(qi):
            while True:
                if stop.is_set():
                    raise _Stopped
                try:
                    item = queues[qi].get(timeout=self.POLL_S)
                    depth.append(((now_ns() - t0) * 1e-9, qi, queues[qi].qsize()))
                    return item
                except queue.Empty:
                    continue

        def apply(stage: str, b, index: int, out: Path):
            """Run one stage on batch ``index``; return the batch for the next stage (None after save)."""
            s = now_ns()
            if stage == "generate":
                start, count = ranges[index]
                b = generate(w, index, start, count)
            elif stage == "save":
                d, m = save(w, b, out)
                digests.append(d)
                parts.append(m)
                if not first:
                    first.append((now_ns() - t0) * 1e-9)
                b = None
            else:
                b = STAGE_FUNCS[stage](w, b)
            events.append((stage, index, (s - t0) * 1e-9, (now_ns() - t0) * 1e-9, stage))
            return b

        def stage_thread(k: int, out: Path):
            group = groups[k]
            stage = group[0]
            index = None
            last = k == len(groups) - 1
            c0 = time.thread_time()
            try:
                if k == 0:
                    for index in range(len(ranges)):
                        b = None
                        for stage in group:
                            b = apply(stage, b, index, out)
                        if not last:
                            put(0, b)
                    index = None
                    if not last:
                        put(0, _END)
                    return
                while True:
                    b = get(k - 1)
                    if b is _END:
                        if not last:
                            put(k, _END)
                        return
                    index = b["_index"]
                    for stage in group:
                        b = apply(stage, b, index, out)
                    if not last:
                        put(k, b)
                    index = None
            except _Stopped:
                pass
            except BaseException as exc:  # noqa: BLE001 - every failure stops the pipeline and reaches the caller
                with lock:
                    failures.append((now_ns(), _wrap(exc, stage, index, self.name), exc))
                stop.set()
            finally:
                cpu_thread["+".join(group)] = time.thread_time() - c0

        cpu0 = _cpu_s()
        with _Output(out_dir) as out:
            threads = [threading.Thread(target=stage_thread, args=(k, out), name=f"stage-{'+'.join(g)}", daemon=True)
                       for k, g in enumerate(groups)]  # fmt: skip
            for t in threads:
                t.start()
            try:
                for t in threads:
                    while t.is_alive():
                        t.join(0.1)
            except BaseException:  # KeyboardInterrupt in the caller: stop the stages too
                stop.set()
                for t in threads:
                    t.join()
                raise
            if failures:
                failures.sort(key=lambda f: f[0])
                _, err, original = failures[0]
                raise err from (None if err is original else original)
        wall = (now_ns() - t0) * 1e-9
        checksum, total = combine(digests, parts)
        return RunResult(self.name, w.kind, n_records, batch_size, wall, checksum, total, len(ranges),
                         first[0] if first else float("nan"), _cpu_s() - cpu0, events, depth,
                         {f"cpu_{k}_s": v for k, v in cpu_thread.items()} | {"queue_size": self.queue_size,
                                                                             "threads": len(groups)})  # fmt: skip


# ------------------------------------------------------------- process pool


_WORKER: dict = {}


def _worker_init(barrier, progress_dir: str) -> None:
    _WORKER["barrier"] = barrier
    _WORKER["progress"] = ProgressBoard(progress_dir)


def _worker_ready(timeout_s: float) -> int:
    _WORKER["barrier"].wait(timeout_s)  # every worker is up before the clock for work starts
    return os.getpid()


def _pool_task(w: Workload, payload: bytes, out_dir: str, submitted_ns: int) -> dict:
    """Worker side: unpickle a generated batch, run preprocess..save on it, return digest, metrics and timings."""
    t_start = now_ns()
    board: ProgressBoard = _WORKER["progress"]
    b = pickle.loads(payload)
    t_loaded = now_ns()
    index = b["_index"]
    ev = []
    stage = "preprocess"
    try:
        for stage in ("preprocess", "transform", "metrics"):
            board.mark(stage, index)
            s = now_ns()
            b = STAGE_FUNCS[stage](w, b)
            ev.append((stage, index, s, now_ns(), os.getpid()))
        stage = "save"
        board.mark(stage, index)
        s = now_ns()
        d, m = save(w, b, Path(out_dir))
        ev.append((stage, index, s, now_ns(), os.getpid()))
    except Exception as exc:
        raise _wrap(exc, stage, index, ProcessPoolProcessor.name) from None
    board.mark("idle", index)
    return {"index": index, "digest": d, "metrics": m, "events": ev, "submitted_ns": submitted_ns,
            "start_ns": t_start, "deserialize_s": (t_loaded - t_start) * 1e-9, "end_ns": now_ns()}  # fmt: skip


class ProgressBoard:
    """Per-process progress notes (stage, batch) in a directory, so a run can say where a dead worker was."""

    def __init__(self, directory: Path | str):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fd = None

    def mark(self, stage: str, batch: int) -> None:
        """Record that this process is now in ``stage`` on ``batch`` (one small pwrite)."""
        if self._fd is None:
            self._fd = os.open(self.dir / str(os.getpid()), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.pwrite(self._fd, f"{stage} {batch}".ljust(64).encode(), 0)

    def close(self) -> None:
        """Close this process's note file (the notes stay readable)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def dead(self) -> list[tuple[int, str, int]]:
        """Return (pid, stage, batch) of processes that wrote notes and no longer run, excluding finished ('idle') ones."""
        import psutil

        out = []
        for p in self.dir.iterdir():
            pid = int(p.name)
            try:
                alive = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                alive = False
            if not alive:
                stage, batch = p.read_text().split()
                if stage != "idle":
                    out.append((pid, stage, int(batch)))
        return out


class ProcessPoolProcessor:
    """A pool of worker processes (``concurrent.futures.ProcessPoolExecutor``): the parent generates and pickles batches.

    Timed separately: pool start-up (until every worker is up), generation,
    pickling in the parent, unpickling in the workers, each worker stage, pool
    teardown. A dead worker raises :class:`PipelineError` naming its stage and
    batch (``multiprocessing.Pool`` would wait for the lost task for ever; the
    executor notices the death).
    """

    name = "process_pool"

    def __init__(self, workers: int | None = None, start_method: str | None = None, ready_timeout_s: float = 60.0):
        import multiprocessing as mp

        self.workers = workers or len(os.sched_getaffinity(0))
        self.start_method = start_method or mp.get_start_method()
        self.ready_timeout_s = ready_timeout_s

    def run(self, w: Workload, n_records: int, batch_size: int, out_dir: Path | str) -> RunResult:
        """Run the workload; return the result (raise :class:`PipelineError` on any failure, keeping no output)."""
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        ranges = batch_ranges(n_records, batch_size)
        ctx = mp.get_context(self.start_method)
        events, digests, parts = [], {}, {}
        ph = dict.fromkeys(("startup_s", "generate_s", "serialize_s", "deserialize_s", "compute_s", "teardown_s",
                            "payload_bytes"), 0.0)  # fmt: skip
        cpu0, t0 = _cpu_s(), now_ns()
        first = None
        with _Output(out_dir) as out:
            board = ProgressBoard(out / ".progress")
            barrier = ctx.Barrier(self.workers)
            ex = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init,
                                     initargs=(barrier, str(board.dir)))  # fmt: skip
            try:
                ready = [ex.submit(_worker_ready, self.ready_timeout_s) for _ in range(self.workers)]
                pids = {f.result(timeout=self.ready_timeout_s + 5) for f in ready}
                ph["startup_s"] = (now_ns() - t0) * 1e-9
                pending = {}
                inflight_max = 2 * self.workers  # generate ahead of the workers, not the whole dataset at once
                it = iter(enumerate(ranges))
                exhausted = False
                while pending or not exhausted:
                    while not exhausted and len(pending) < inflight_max:
                        nxt = next(it, None)
                        if nxt is None:
                            exhausted = True
                            break
                        index, (start, count) = nxt
                        s = now_ns()
                        try:
                            b = generate(w, index, start, count)
                        except Exception as exc:
                            raise _wrap(exc, "generate", index, self.name) from exc
                        g = now_ns()
                        events.append(("generate", index, (s - t0) * 1e-9, (g - t0) * 1e-9, "parent"))
                        payload = pickle.dumps(b, protocol=pickle.HIGHEST_PROTOCOL)
                        p = now_ns()
                        ph["generate_s"] += (g - s) * 1e-9
                        ph["serialize_s"] += (p - g) * 1e-9
                        ph["payload_bytes"] += len(payload)
                        pending[ex.submit(_pool_task, w, payload, str(out), p)] = index
                    done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                    for f in done:
                        index = pending.pop(f)
                        r = f.result()  # re-raises a worker's PipelineError, or BrokenProcessPool
                        digests[index], parts[index] = r["digest"], r["metrics"]
                        ph["deserialize_s"] += r["deserialize_s"]
                        for stage, i, s, e, pid in r["events"]:
                            events.append((stage, i, (s - t0) * 1e-9, (e - t0) * 1e-9, pid))
                            ph["compute_s"] += (e - s) * 1e-9
                        if first is None:
                            first = (now_ns() - t0) * 1e-9
            except BrokenProcessPool as exc:
                dead = board.dead()
                stage, batch = (dead[0][1], dead[0][2]) if dead else (None, None)
                raise PipelineError(f"{self.name}: a worker process died"
                                    + (f" (pid {dead[0][0]}) in stage {stage!r} on batch {batch}" if dead else "")
                                    + "; the pool was shut down and no output kept", stage, batch, self.name) from exc  # fmt: skip
            except PipelineError:
                raise
            except Exception as exc:
                raise _wrap(exc, "pool", None, self.name) from exc
            finally:
                td = now_ns()
                ex.shutdown(wait=True, cancel_futures=True)
                ph["teardown_s"] = (now_ns() - td) * 1e-9
            shutil.rmtree(board.dir, ignore_errors=True)
        wall = (now_ns() - t0) * 1e-9
        order = sorted(digests)
        checksum, total = combine([digests[i] for i in order], [parts[i] for i in order])
        ph["workers"] = len(pids)
        ph["start_method"] = self.start_method
        return RunResult(self.name, w.kind, n_records, batch_size, wall, checksum, total, len(ranges), first,
                         _cpu_s() - cpu0, events, [], ph, workers=self.workers)  # fmt: skip


# ------------------------------------------------------------ MPI processes as stages


TAG_HEADER, TAG_DATA, TAG_STOP = 11, 12, 13


def balanced_groups(stage_costs: dict[str, float], ranks: int) -> list[list[str]]:
    """Return the stages split into ``ranks`` contiguous groups minimising the largest group's cost (s)."""
    if not 1 <= ranks <= len(STAGES):
        raise ValueError(f"ranks must be 1..{len(STAGES)}, got {ranks}")
    costs = [float(stage_costs.get(s, 0.0)) for s in STAGES]
    best, best_cuts = math.inf, None
    for cuts in combinations(range(1, len(STAGES)), ranks - 1):
        bounds = (0, *cuts, len(STAGES))
        worst = max(sum(costs[a:b]) for a, b in pairwise(bounds))
        if worst < best - 1e-15:
            best, best_cuts = worst, bounds
    return [list(STAGES[a:b]) for a, b in pairwise(best_cuts)]


class MpiStagePipeline:
    """Each group of stages on its own MPI rank, batches passed downstream as numpy buffers (``Isend`` of each column).

    ``groups`` lists the stages of each rank (default: one stage per rank when the
    communicator has 5 ranks, else :func:`balanced_groups` of equal costs). At most
    ``queue_size`` batches are in flight between two ranks (backpressure). A rank
    waiting for its upstream polls with a short sleep (``poll_s``) instead of
    MPICH's spin, so it leaves the core to the others. A stage that fails sends
    STOP upstream and its error downstream; every rank drains what it was sent and
    returns, so no rank is left waiting.
    """

    name = "mpi_stages"

    def __init__(self, comm, groups: list[list[str]] | None = None, queue_size: int = 5, poll_s: float = 200e-6,
                 peer_timeout_s: float = 600.0):  # fmt: skip
        self.comm = comm
        self.peer_timeout_s = peer_timeout_s
        if groups is None:
            groups = [[s] for s in STAGES] if comm.size == len(STAGES) else balanced_groups({}, comm.size)
        flat = [s for g in groups for s in g]
        if flat != list(STAGES) or any(not g for g in groups):
            raise ValueError(f"groups must split {list(STAGES)} in order into non-empty groups, got {groups}")
        if len(groups) != comm.size:
            raise ValueError(f"{len(groups)} stage groups for {comm.size} ranks: give one group per rank")
        self.groups = groups
        self.queue_size = queue_size
        self.poll_s = poll_s

    # -- messaging
    def _probe(self, source: int, tag: int) -> None:
        deadline = time.monotonic() + self.peer_timeout_s
        while not self.comm.Iprobe(source=source, tag=tag):
            if time.monotonic() > deadline:  # a rank that died outside a stage never sends END: do not wait for ever
                raise PeerTimeout(f"rank {self.comm.rank} waited {self.peer_timeout_s:g} s for a message from rank "
                                  f"{source} (stages {self.groups[source]}): it died or is stuck")  # fmt: skip
            time.sleep(self.poll_s)

    def _send(self, b: Batch, inflight: list) -> None:
        dest = self.comm.rank + 1
        while len(inflight) >= self.queue_size:
            self._wait_all(inflight.pop(0))
        cols = {k: v for k, v in b.items() if k != "_index"}
        hdr = {"index": b["_index"], "cols": [(k, v.dtype.str, v.shape) for k, v in cols.items()]}
        reqs = [self.comm.isend(hdr, dest=dest, tag=TAG_HEADER)]
        bufs = [np.ascontiguousarray(v) for v in cols.values()]
        reqs += [self.comm.Isend(v, dest=dest, tag=TAG_DATA) for v in bufs]
        inflight.append((reqs, bufs))

    def _wait_all(self, item) -> None:
        from mpi4py import MPI

        reqs, _ = item
        while not MPI.Request.Testall(reqs):
            time.sleep(self.poll_s)

    def _recv(self) -> Batch | dict:
        src = self.comm.rank - 1
        self._probe(src, TAG_HEADER)
        hdr = self.comm.recv(source=src, tag=TAG_HEADER)
        if "end" in hdr:
            return hdr
        b = {"_index": hdr["index"]}
        for name, dtype, shape in hdr["cols"]:
            buf = np.empty(shape, dtype=np.dtype(dtype))
            self._probe(src, TAG_DATA)
            self.comm.Recv(buf, source=src, tag=TAG_DATA)
            b[name] = buf
        return b

    def run(self, w: Workload, n_records: int, batch_size: int, out_dir: Path | str) -> RunResult | dict:
        """Run on every rank; the last rank returns the :class:`RunResult`, the others a dict of their events.

        Every rank raises the same :class:`PipelineError` when any stage failed.
        """
        comm, rank, size = self.comm, self.comm.rank, self.comm.size
        mine = self.groups[rank]
        if size < 2:
            raise ValueError("MpiStagePipeline needs 2 or more ranks (the last one saves)")
        ranges = batch_ranges(n_records, batch_size)
        output = _Output(Path(out_dir))
        refused = None
        if rank == size - 1:
            try:
                output.__enter__()
            except PipelineError as e:
                refused = str(e)
        refused = comm.bcast(refused, root=size - 1)  # every rank refuses alike (none waits in a collective)
        if refused:
            raise PipelineError(refused, None, None, self.name)
        # progress notes, so a dead rank's stage and batch can be named (ranks on this host see the directory)
        board = ProgressBoard(output.partial / ".progress") if output.partial.is_dir() else None
        events, digests, parts = [], [], []
        inflight: list = []
        state = {"error": None, "stage": mine[0], "stops_sent": 0, "stops_seen": 0, "first": None}
        cpu0 = time.process_time()
        t0 = now_ns()

        def timed(stage, index, fn):
            state["stage"] = stage
            if board is not None:
                board.mark(stage, index)
            s = now_ns()
            out = fn()
            events.append((stage, index, (s - t0) * 1e-9, (now_ns() - t0) * 1e-9, rank))
            return out

        def process(b: Batch, index: int) -> Batch | None:
            for stage in mine:
                if stage == "generate":
                    continue
                if stage == "save":
                    d, m = timed("save", index, lambda b=b: save(w, b, output.partial))
                    digests.append(d)
                    parts.append(m)
                    if state["first"] is None:
                        state["first"] = (now_ns() - t0) * 1e-9
                    return None
                b = timed(stage, index, lambda b=b, stage=stage: STAGE_FUNCS[stage](w, b))
            return b

        def stop_upstream():
            if rank > 0:
                comm.send(True, dest=rank - 1, tag=TAG_STOP)
                state["stops_sent"] += 1

        def stop_requested() -> bool:
            if rank + 1 < size and comm.Iprobe(source=rank + 1, tag=TAG_STOP):
                comm.recv(source=rank + 1, tag=TAG_STOP)
                state["stops_seen"] += 1
                return True
            return False

        stopping = False  # a downstream stage failed: stop working, drain upstream, pass END on
        if rank == 0:
            for index, (start, count) in enumerate(ranges):
                if stopping or (stopping := stop_requested()):
                    break
                try:
                    b = timed("generate", index, lambda start=start, count=count, index=index: generate(w, index, start, count))
                    b = process(b, index)
                except Exception as exc:  # noqa: BLE001 - reported on every rank below
                    state["error"] = _error_record(exc, state["stage"], index, self.name)
                    break
                self._send(b, inflight)
        else:
            while True:
                b = self._recv()
                if "end" in b:
                    if state["error"] is None and b.get("error"):
                        state["error"] = b["error"]
                    break
                if stopping or state["error"]:
                    continue  # drain what upstream already sent
                if stop_requested():
                    stopping = True
                    stop_upstream()
                    continue
                index = b["_index"]
                try:
                    b = process(b, index)
                except Exception as exc:  # noqa: BLE001 - reported on every rank below
                    state["error"] = _error_record(exc, state["stage"], index, self.name)
                    stop_upstream()
                    continue
                if rank < size - 1:
                    self._send(b, inflight)
        for item in inflight:  # our data first, then END with the first error seen
            self._wait_all(item)
        if rank < size - 1:
            comm.send({"end": True, "error": state["error"]}, dest=rank + 1, tag=TAG_HEADER)
        wall = (now_ns() - t0) * 1e-9
        cpu = time.process_time() - cpu0
        if board is not None:
            board.close()
        shared = comm.allgather((state["error"], state["stops_sent"]))
        # receive every STOP still addressed to us, so none is left for the next run on this communicator
        if rank + 1 < size:
            for _ in range(shared[rank + 1][1] - state["stops_seen"]):
                comm.recv(source=rank + 1, tag=TAG_STOP)
        err = shared[-1][0] or next((e for e, _ in shared if e), None)  # the last rank saw every upstream error
        if rank == size - 1:
            if board is not None:
                shutil.rmtree(board.dir, ignore_errors=True)
            output.__exit__(PipelineError if err else None, None, None)
        comm.Barrier()  # the output is renamed (or removed) before any rank returns
        if err:
            raise PipelineError(err["message"], err["stage"], err["batch"], self.name)
        cpus = comm.gather(cpu, root=size - 1)
        evs = comm.gather(events, root=size - 1)
        if rank != size - 1:
            return {"events": events, "cpu_s": cpu}
        checksum, total = combine(digests, parts)
        return RunResult(self.name, w.kind, n_records, batch_size, wall, checksum, total, len(ranges),
                         state["first"], float(sum(cpus)), [e for part in evs for e in part], [],
                         {"groups": [list(g) for g in self.groups], "queue_size": self.queue_size}, workers=size)  # fmt: skip


def _error_record(exc: BaseException, stage: str, index: int, processor: str) -> dict:
    err = _wrap(exc, stage, index, processor)
    return {"message": str(err), "stage": err.stage, "batch": err.batch}


# ---------------------------------------------------------------- memory sampling


def pss_bytes(pid: int) -> int:
    """Return a process's proportional set size (B): shared pages split among their sharers (RSS where PSS is unknown)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.NoSuchProcess:
        return 0


class PeakMemory:
    """Sample the summed PSS of a set of processes every ``interval_s`` in a thread; ``peak``/``baseline`` in bytes."""

    def __init__(self, pids: Callable[[], list[int]], interval_s: float = 0.01):
        self.pids = pids
        self.interval_s = interval_s
        self.peak = 0
        self.baseline = 0
        self._stop = threading.Event()

    def _sample(self) -> int:
        return sum(pss_bytes(p) for p in self.pids())

    def _loop(self):
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> PeakMemory:
        self.baseline = self._sample()
        self.peak = self.baseline
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())
        return False

    @staticmethod
    def tree(pid: int | None = None) -> Callable[[], list[int]]:
        """Return a function listing ``pid`` (default: this process) and its live descendants."""
        import psutil

        root = psutil.Process(pid or os.getpid())

        def f():
            try:
                return [root.pid] + [c.pid for c in root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return []

        return f


def _memory_child(spec_json: str) -> None:
    """Entry point of :func:`measure_peak_memory`'s fresh interpreter: run once, print the peak PSS as JSON."""
    import json
    import sys

    spec = json.loads(spec_json)
    w = Workload(kind=spec["kind"], seed=spec["seed"], wait_s=spec["wait_s"])
    proc = {"serial": SerialProcessor, "thread_pipeline": lambda: ThreadPipelineProcessor(spec["queue_size"]),
            "process_pool": lambda: ProcessPoolProcessor(spec["workers"])}[spec["processor"]]()  # fmt: skip
    with PeakMemory(PeakMemory.tree()) as mem:
        r = proc.run(w, spec["n_records"], spec["batch_size"], spec["out_dir"])
    shutil.rmtree(spec["out_dir"], ignore_errors=True)
    json.dump({"peak": mem.peak, "baseline": mem.baseline, "checksum": r.checksum, "busy": r.stage_busy_s()}, sys.stdout)


def measure_peak_memory(processor: str, w: Workload, n_records: int, batch_size: int, out_dir: Path | str,
                        queue_size: int = 5, workers: int | None = None, timeout_s: float = 600) -> dict:  # fmt: skip
    """Run one processor in a fresh interpreter; return its peak PSS, the PSS before the run (B), the checksum and the
    seconds each stage spent on batches (``busy``).

    A fresh process, so memory freed by earlier runs and kept by the allocator
    does not hide this run's growth; its worker processes are included.
    """
    import json
    import subprocess
    import sys

    if processor not in ("serial", "thread_pipeline", "process_pool"):
        raise ValueError(f"measure_peak_memory runs local processors, not {processor!r}")
    spec = {"processor": processor, "kind": w.kind, "seed": w.seed, "wait_s": w.wait_s, "n_records": n_records,
            "batch_size": batch_size, "out_dir": str(out_dir), "queue_size": queue_size,
            "workers": workers or len(os.sched_getaffinity(0))}  # fmt: skip
    code = f"from ipcbench.etl import _memory_child; _memory_child({json.dumps(spec)!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    if out.returncode != 0:
        raise PipelineError(f"the memory run of {processor} failed: {out.stderr[-2000:]}", None, None, processor)
    return json.loads(out.stdout)
