"""MPI ranks as pipeline stages under mpiexec -n 2: serial's output, and failures raised on every rank."""

import tempfile
from pathlib import Path

import numpy as np
from mpi4py import MPI

from ipcbench import etl as pl
from ipcbench.experiments import pipeline as plx

comm = MPI.COMM_WORLD
root = Path(tempfile.gettempdir()) / f"ipcbench-check-pipeline-{comm.bcast(MPI.Wtime() if comm.rank == 0 else None)}"
N, BS = 6_000, 1_000
last = comm.size - 1

for kind in pl.KINDS:
    w = pl.Workload(kind=kind, wait_s=0.001)
    r = pl.MpiStagePipeline(comm).run(w, N, BS, root / "mpi")
    if comm.rank == last:
        s = pl.SerialProcessor().run(w, N, BS, root / "serial")
        assert r.checksum == s.checksum and np.array_equal(r.metrics, s.metrics), kind
        assert sorted(p.name for p in (root / "mpi").iterdir()) == sorted(p.name for p in (root / "serial").iterdir())
        assert {e[4] for e in r.events} == set(range(comm.size))  # every rank worked
    comm.Barrier()

# a failure anywhere is raised on every rank, with its stage and batch, and no output is kept
for faults, stage, batch in [(pl.Faults(raise_in=("transform", 3)), "transform", 3),
                             (pl.Faults(invalid_record=4_321), "preprocess", 4),
                             (pl.Faults(raise_in=("generate", 1)), "generate", 1),
                             (pl.Faults(raise_in=("save", 0)), "save", 0)]:  # fmt: skip
    groups = [["generate", "preprocess"], ["transform", "metrics", "save"]]
    try:
        pl.MpiStagePipeline(comm, groups).run(pl.Workload(kind="numpy", faults=faults), N, BS, root / "fail")
        raise AssertionError(f"no error for {faults}")
    except pl.PipelineError as e:
        assert (e.stage, e.batch) == (stage, batch), (comm.rank, e.stage, e.batch, str(e))
    comm.Barrier()
    assert not (root / "fail").exists() and not (root / "fail.partial").exists()
    comm.Barrier()

# the communicator is clean afterwards (no STOP left behind): a normal run still matches serial
w = pl.Workload(kind="numpy")
r = pl.MpiStagePipeline(comm).run(w, N, BS, root / "again")
if comm.rank == last:
    assert r.checksum == pl.SerialProcessor().run(w, N, BS, root / "serial2").checksum
# a directory the pipeline did not write is refused on every rank, before anything is written or removed
if comm.rank == last:
    (root / "foreign").mkdir(parents=True)
    (root / "foreign" / "data.txt").write_text("keep")
comm.Barrier()
try:
    pl.MpiStagePipeline(comm).run(w, N, BS, root / "foreign")
    raise AssertionError("a foreign directory was not refused")
except pl.PipelineError as e:
    assert "was not written by the pipeline" in str(e), (comm.rank, str(e))
comm.Barrier()
assert (root / "foreign" / "data.txt").read_text() == "keep"
# the experiment's SPMD point
out = plx.mpi_stage_point(comm, w, N, BS, str(root / "point"), None, 3)
if comm.rank == last:
    assert out["checksum"] == r.checksum and not (root / "point").exists()
comm.Barrier()
if comm.rank == 0:
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    print("OK")
