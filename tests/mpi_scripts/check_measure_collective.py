"""measure.repeat_collective under `mpiexec -n 2`: same iteration count on every rank, max across ranks."""

import time

from mpi4py import MPI

from ipcbench.measure import StoppingRule, repeat_collective

comm = MPI.COMM_WORLD
rule = StoppingRule(rel_ci=0.05, min_samples=10, max_samples=50, time_budget_s=0.5, warmup=2)


def step():
    # rank 1 is always slower: the cross-rank max must follow it
    t0 = time.perf_counter()
    time.sleep(0.001 * (1 + comm.rank))
    return time.perf_counter() - t0


point = repeat_collective(comm, step, rule)
if comm.rank == 0:
    per_rank = point.extra["per_rank"]
    assert len(per_rank) == comm.size and len({len(s) for s in per_rank}) == 1, "ranks ran different counts"
    assert point.summary.n == len(per_rank[0])
    assert all(x == max(col) for x, col in zip(point.samples, zip(*per_rank, strict=True), strict=True))
    assert point.summary.median >= 0.002 * 0.95, point.summary
    assert point.extra["cross_rank"] == "max" and point.summary.stop_reason in ("ci", "budget", "max_samples")
    print("repeat_collective OK")
