"""measure.repeat_collective, repeat_split and calibrate_inner_collective under `mpiexec -n 2`: same iteration
count on every rank, max (or min) across ranks."""

import time

from mpi4py import MPI

from ipcbench.measure import (
    StoppingRule,
    calibrate_inner_collective,
    repeat_collective,
    repeat_split,
)

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


def split_step():
    # rank 1 computes longer; inside the "collective" rank 0 waits for it
    t0 = time.perf_counter()
    time.sleep(0.001 * (1 + comm.rank))
    t1 = time.perf_counter()
    comm.Barrier()
    time.sleep(0.0005)
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1


split = repeat_split(comm, split_step, rule)
if comm.rank == 0:
    n = len(split["total"])
    assert n >= 5 and all(len(split[k]) == n for k in ("compute", "communication", "in_collectives_min"))
    for tot, comp, com, least in zip(split["total"], split["compute"], split["communication"], split["in_collectives_min"], strict=True):
        assert comp >= 0.002 * 0.95 and abs(tot - comp - com) < 1e-12 and 0.0005 * 0.9 <= least <= com + 1e-3
    print("repeat_split OK")
else:
    assert split is None

inner = calibrate_inner_collective(comm, comm.Barrier, min_sample_s=200e-6)
assert comm.allgather(inner) == [inner] * comm.size and inner >= 1
if comm.rank == 0:
    print("calibrate_inner_collective OK")

# a step that raises on one rank ends the loop on every rank (no rank is left waiting in a collective)
from ipcbench.measure import CollectiveAborted  # noqa: E402

calls = [0]


def failing_step():
    calls[0] += 1
    if comm.rank == comm.size - 1 and calls[0] == 4:
        raise ZeroDivisionError("deliberate failure in a timed step")
    return 1e-6


try:
    repeat_collective(comm, failing_step, rule)
    raise AssertionError("repeat_collective returned although a rank failed")
except ZeroDivisionError:
    assert comm.rank == comm.size - 1
except CollectiveAborted:
    assert comm.rank != comm.size - 1
comm.Barrier()  # every rank got here: none is stuck
if comm.rank == 0:
    print("collective failure OK")

# the warm-up: rank 0 decides when it ends (its count, or its budget after one call), every rank makes the same calls
warm_calls = [0]


def slow_step():
    warm_calls[0] += 1
    time.sleep(0.05 * (1 + comm.rank))  # rank 1 is slower: rank 0's clock still sees the budget spent
    return 0.05


wrule = StoppingRule(rel_ci=0.0, min_samples=6, max_samples=6, time_budget_s=60, warmup=5, warmup_budget_s=0.15)
repeat_collective(comm, slow_step, wrule)
assert comm.allgather(warm_calls[0]) == [warm_calls[0]] * comm.size
assert warm_calls[0] - 6 == 2, warm_calls  # 2 x ~0.1 s (each waits for rank 1 at the next barrier) >= 0.15 s
if comm.rank == 0:
    print("time-bounded warm-up OK")
