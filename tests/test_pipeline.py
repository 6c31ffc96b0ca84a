"""The ETL processors give identical output, and every failure ends cleanly with its stage and batch named."""

import os
import pickle
import threading
import time

import numpy as np
import pandas as pd
import psutil
import pytest

from ipcbench import etl as pl

N, BS = 6_000, 1_000  # 6 batches
LOCAL = [pl.SerialProcessor, pl.ThreadPipelineProcessor, pl.ProcessPoolProcessor]


HELPERS = ("resource_tracker", "forkserver")  # multiprocessing's process-wide helpers, kept by design


def _children():
    """Return (pid, command line) of live child processes, apart from multiprocessing's helpers."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            if p.status() != psutil.STATUS_ZOMBIE and not any(h in cmd for h in HELPERS):
                out.append((p.pid, cmd))
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.parametrize("kind", pl.KINDS)
def test_every_local_processor_writes_the_same_output(kind, tmp_path):
    w = pl.Workload(kind=kind, wait_s=0.001)
    out = {}
    for cls in LOCAL:
        r = cls().run(w, N, BS, tmp_path / cls.name)
        files = _batch_files(tmp_path / cls.name)
        assert len(files) == N // BS and all(f.stat().st_size > 0 for f in files)
        assert r.n_batches == N // BS and r.wall_s > 0 and 0 < r.first_batch_s <= r.wall_s
        assert {e[0] for e in r.events} >= {"preprocess", "transform", "metrics", "save"}
        assert r.metrics[:, 0].sum() == N  # every record counted once
        out[cls.name] = r
    ref = out["serial"]
    for name, r in out.items():
        assert r.checksum == ref.checksum, name
        assert np.array_equal(r.metrics, ref.metrics), name
    # a different batch size writes different files but the same records and the same per-category counts
    other = pl.SerialProcessor().run(w, N, BS // 2, tmp_path / "half")
    assert np.array_equal(other.metrics[:, 0], ref.metrics[:, 0])
    assert np.allclose(other.metrics, ref.metrics, rtol=1e-12)


def test_records_do_not_depend_on_batching():
    w = pl.Workload(kind="numpy", seed=3)
    whole = pl.generate(w, 0, 0, 1_000)
    part = pl.generate(w, 7, 400, 250)
    for col in ("id", "value", "quantity", "category", "timestamp"):
        assert np.array_equal(whole[col][400:650], part[col]), col
    assert whole["category"].min() >= 0 and whole["category"].max() < pl.N_CATEGORIES
    assert (whole["quantity"] >= 1).all() and np.isfinite(whole["value"]).all()


def test_python_and_numpy_kinds_compute_the_same_features():
    b = pl.generate(pl.Workload(), 0, 0, 2_000)
    outs = {}
    for kind in ("python", "numpy"):
        w = pl.Workload(kind=kind)
        outs[kind] = pl.metrics(w, pl.transform(w, pl.preprocess(w, b)))
    for col in ("amount", "hour", "score", "bucket", "tier", "hour_sin", "_metrics"):
        assert np.allclose(outs["python"][col], outs["numpy"][col], rtol=1e-12, atol=1e-12), col


FAULTS = [
    (pl.Faults(raise_in=("transform", 3)), "transform", 3, pl.PipelineError),
    (pl.Faults(raise_in=("generate", 0)), "generate", 0, pl.PipelineError),
    (pl.Faults(raise_in=("save", 5)), "save", 5, pl.PipelineError),
    (pl.Faults(invalid_record=2_345), "preprocess", 2, pl.RecordValidationError),
]


@pytest.mark.parametrize("cls", LOCAL, ids=lambda c: c.name)
@pytest.mark.parametrize(("faults", "stage", "batch", "exc"), FAULTS, ids=lambda v: str(v) if isinstance(v, str) else None)
def test_a_failing_stage_names_stage_and_batch_and_keeps_no_output(cls, faults, stage, batch, exc, tmp_path):
    before = threading.active_count()
    children = _children()
    t0 = time.monotonic()
    with pytest.raises(exc) as info:
        cls().run(pl.Workload(kind="python", faults=faults), N, BS, tmp_path / "out")
    assert time.monotonic() - t0 < 60
    assert info.value.stage == stage and info.value.batch == batch
    assert f"batch {batch}" in str(info.value)
    if exc is pl.RecordValidationError:
        assert info.value.record == 2_345 and "nan" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # neither the output nor its .partial directory
    assert threading.active_count() == before
    assert _children() == children


def test_a_dead_pool_worker_is_reported_with_its_stage_and_batch(tmp_path):
    children = _children()
    t0 = time.monotonic()
    with pytest.raises(pl.PipelineError, match="worker process died") as info:
        pl.ProcessPoolProcessor(2).run(pl.Workload(kind="python", faults=pl.Faults(kill_in=("metrics", 4))), N, BS,
                                       tmp_path / "out")  # fmt: skip
    assert time.monotonic() - t0 < 60
    assert (info.value.stage, info.value.batch) == ("metrics", 4)
    assert list(tmp_path.iterdir()) == []
    assert _children() == children


def _batch_files(out):
    """Return an output directory's files, less the marker that says the pipeline wrote it."""
    return sorted(f for f in out.iterdir() if f.name != pl.OUTPUT_MARKER)


def test_a_successful_run_replaces_a_previous_output(tmp_path):
    out = tmp_path / "out"
    pl.SerialProcessor().run(pl.Workload(kind="numpy"), N, BS, out)
    (out / "stale.txt").write_text("from an older run")
    pl.SerialProcessor().run(pl.Workload(kind="numpy"), N, BS, out)
    assert not (out / "stale.txt").exists() and len(_batch_files(out)) == N // BS
    assert (out / pl.OUTPUT_MARKER).exists()


@pytest.mark.parametrize("cls", LOCAL)
def test_a_directory_the_pipeline_did_not_write_is_refused_and_kept(cls, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "thesis.tex").write_text("somebody's work")
    with pytest.raises(pl.PipelineError, match="was not written by the pipeline"):
        cls().run(pl.Workload(kind="numpy"), N, BS, out)
    assert [f.name for f in out.iterdir()] == ["thesis.tex"] and not (tmp_path / "data.partial").exists()
    # a file, or a foreign .partial, is refused the same way
    (tmp_path / "file").write_text("x")
    with pytest.raises(pl.PipelineError, match="is not a directory"):
        cls().run(pl.Workload(kind="numpy"), N, BS, tmp_path / "file")
    (tmp_path / "o.partial").mkdir()
    (tmp_path / "o.partial" / "keep").write_text("y")
    with pytest.raises(pl.PipelineError, match="o.partial is not empty"):
        cls().run(pl.Workload(kind="numpy"), N, BS, tmp_path / "o")
    assert (tmp_path / "o.partial" / "keep").read_text() == "y"
    # an empty directory is no one's data: it is used
    (tmp_path / "empty").mkdir()
    cls().run(pl.Workload(kind="numpy"), N, BS, tmp_path / "empty")
    assert len(_batch_files(tmp_path / "empty")) == N // BS


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown workload kind"):
        pl.Workload(kind="gpu")
    with pytest.raises(ValueError, match="unknown stage"):
        pl.Faults(raise_in=("load", 1))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        pl.SerialProcessor().run(pl.Workload(), 10, 0, tmp_path / "o")
    with pytest.raises(ValueError, match="n_records must be >= 1"):
        pl.SerialProcessor().run(pl.Workload(), 0, 10, tmp_path / "o")
    with pytest.raises(ValueError, match="no worker process to kill"):
        pl.ThreadPipelineProcessor().run(pl.Workload(faults=pl.Faults(kill_in=("save", 0))), 10, 5, tmp_path / "o")
    with pytest.raises(ValueError, match="queue_size"):
        pl.ThreadPipelineProcessor(0)


def test_errors_cross_process_boundaries_with_their_fields():
    e = pickle.loads(pickle.dumps(pl.PipelineError("boom", "save", 7, "process_pool")))
    assert (str(e), e.stage, e.batch, e.processor) == ("boom", "save", 7, "process_pool")
    v = pickle.loads(pickle.dumps(pl.RecordValidationError(2, 99, "value nan is not a finite number >= 0")))
    assert (v.stage, v.batch, v.record) == ("preprocess", 2, 99) and "record 99 of batch 2" in str(v)


def test_balanced_groups_split_stages_in_order():
    costs = {"generate": 1, "preprocess": 1, "transform": 1, "metrics": 1, "save": 4}
    assert pl.balanced_groups(costs, 2) == [["generate", "preprocess", "transform", "metrics"], ["save"]]
    assert pl.balanced_groups(costs, 5) == [[s] for s in pl.STAGES]
    with pytest.raises(ValueError):
        pl.balanced_groups(costs, 6)


def test_thread_pipeline_records_bounded_queue_depth(tmp_path):
    r = pl.ThreadPipelineProcessor(queue_size=2).run(pl.Workload(kind="python"), N, BS // 4, tmp_path / "o")
    assert r.queue_depth and max(d for _, _, d in r.queue_depth) <= 2
    assert {q for _, q, _ in r.queue_depth} == set(range(len(pl.STAGES) - 1))


def test_pool_phases_and_peak_memory_are_measured(tmp_path):
    r = pl.ProcessPoolProcessor(2).run(pl.Workload(kind="numpy"), N, BS, tmp_path / "o")
    assert r.phases["workers"] == 2 and r.phases["startup_s"] > 0 and r.phases["payload_bytes"] > N * 8
    assert 0 < r.phases["serialize_s"] < r.wall_s
    mem = pl.measure_peak_memory("process_pool", pl.Workload(kind="numpy"), N, BS, tmp_path / "m")
    assert mem["peak"] >= mem["baseline"] > 0 and mem["checksum"] == r.checksum
    assert set(mem["busy"]) == set(pl.STAGES) and all(v > 0 for v in mem["busy"].values())  # the MPI stages' grouping
    assert not (tmp_path / "m").exists()


def test_an_mpi_stage_never_waits_for_ever_for_a_dead_peer():
    """A rank that died outside a stage sends no END: the next rank's probe gives up with a clear error."""
    from ipcbench.etl import MpiStagePipeline, PeerTimeout

    class SilentComm:  # rank 1 of 2 whose rank 0 never sends anything
        rank, size = 1, 2

        def Iprobe(self, source, tag):  # noqa: N802 - mpi4py's name
            return False

    stage = MpiStagePipeline(SilentComm(), groups=[["generate", "preprocess"], ["transform", "metrics", "save"]],
                             peer_timeout_s=0.05)  # fmt: skip
    with pytest.raises(PeerTimeout, match=r"rank 1 waited 0.05 s for a message from rank 0 \(stages \['generate'"):
        stage._probe(0, 1)


def test_readings_of_the_source_reach_every_outcome():
    from ipcbench.experiments import pipeline as plx

    def row(reading, metric, med, lo, hi, level=0.97):
        return {"experiment": "derived", "payload": reading, "metric": metric, "median": med, "ci_low": lo,
                "ci_high": hi, "ci_level": level}

    rows = [row("python", "reading_serial_growth", 3.9, 3.7, 4.1), row("python", "reading_speedup", 1.0, 0.95, 1.05),
            row("numpy", "reading_serial_growth", 1.0, 0.95, 1.05), row("numpy", "reading_speedup", 2.5, 2.3, 2.7),
            row("wait_source_batches", "reading_serial_growth", 1.0, 0.7, 1.1),  # straddles the band's lower edge
            row("wait_source_batches", "reading_speedup", 2.5, 2.3, 2.7),
            row("wait_ten_batches", "reading_serial_growth", 3.9, 3.7, 4.1, level=0.75),  # too few samples to decide
            row("wait_ten_batches", "reading_speedup", 2.5, 2.3, 2.7, level=0.75)]
    got = plx.readings(pd.DataFrame(rows), tolerance=0.25).set_index("reading")["the data"].to_dict()
    assert got == {"python": "ruled out", "numpy": "consistent", "wait_source_batches": "not decided",
                   "wait_ten_batches": "not decided"}


def test_the_source_thread_layout_runs_four_threads_and_writes_serials_output(tmp_path):
    w = pl.Workload(kind="numpy", wait_s=0.001)
    ref = pl.SerialProcessor().run(w, N, BS, tmp_path / "serial")
    r = pl.ThreadPipelineProcessor(5, pl.SOURCE_THREAD_GROUPS).run(w, N, BS, tmp_path / "four")
    assert r.checksum == ref.checksum and np.array_equal(r.metrics, ref.metrics)
    assert r.phases["threads"] == 4 and "cpu_metrics+save_s" in r.phases
    with pytest.raises(ValueError, match="in order"):
        pl.ThreadPipelineProcessor(5, [["generate", "transform"], ["preprocess", "metrics", "save"]])


def test_the_io_kind_writes_fsyncs_and_reads_back_real_files_and_leaves_none(tmp_path, monkeypatch):
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(pl.os, "fsync", lambda fd: calls.append(fd) or real_fsync(fd))
    w = pl.Workload(kind="io", io_bytes=70_000, io_dir=str(tmp_path))
    ref = pl.SerialProcessor().run(pl.Workload(kind="numpy"), N, BS, tmp_path / "numpy")
    got = pl.SerialProcessor().run(w, N, BS, tmp_path / "io")
    assert got.checksum == ref.checksum  # the same records and files: the I/O is beside the work, not in it
    assert len(calls) == (N // BS) * (len(pl.STAGES) - 1)  # every stage after generate, every batch
    assert not list(tmp_path.glob("ipcbench-io-*"))
    with pytest.raises(ValueError, match="not a directory"):
        pl.Workload(kind="io", io_dir=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="io_bytes"):
        pl.Workload(kind="io", io_bytes=0)


def test_the_tuning_groups_are_the_sources_rules():
    from ipcbench.experiments import pipeline as plx

    params = plx.parameters("standard")
    groups = plx.tuning_configs(params, cores=2)
    pool = {name: (proc, kw, bs) for name, proc, kw, bs in groups["pool_settings"]}
    n = params["tuning_size"]
    assert {k: v[1].get("workers") for k, v in pool.items() if k.startswith("pool_workers")} == {
        "pool_workers_1": 1, "pool_workers_2": 2, "pool_workers_8": 8}  # fmt: skip
    assert pool["pool_chunk_n/p"][2] == n // 2 and pool["pool_chunk_n/2p"][2] == n // 4
    threads = [kw["threads"] for name, proc, kw, _ in groups["stage_threads"] if proc == "thread_pipeline"]
    assert threads == [1, 2, 3, 4, 5] and groups["stage_threads"][0][0] == "serial"
