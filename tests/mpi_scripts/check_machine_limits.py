"""Run chapter 0's SPMD functions as a plain MPI program: `mpiexec -n 2 python check_machine_limits.py`."""

import numpy as np
from mpi4py import MPI

from ipcbench.experiments import machine_limits as ml
from ipcbench.measure import StoppingRule

comm = MPI.COMM_WORLD
rule = StoppingRule(rel_ci=0.2, min_samples=5, max_samples=20, time_budget_s=0.05, warmup=1)
for path in ml.PATHS:
    for size in (1, 4096, 1 << 20):
        out = ml.pingpong_point(comm, path, size, rule)
        if comm.rank == 0:
            assert 5 <= len(out["samples"]) <= 20, (path, size, out)
            assert all(0 < s < 1 for s in out["samples"]), (path, size)
        else:
            assert out is None
m = ml.memcpy_point(comm, 1 << 20, rule)
if comm.rank == 0:
    assert np.median(m["samples"]) > 0
comm.Barrier()
if comm.rank == 0:
    print("machine_limits SPMD OK")
