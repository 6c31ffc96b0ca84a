"""Rank 1 fails while rank 0 waits in a collective: under `python -m mpi4py` the whole job must end at once."""

from mpi4py import MPI

comm = MPI.COMM_WORLD
if comm.rank == 1:
    raise AssertionError("rank 1 fails on purpose")
comm.Barrier()  # rank 0 would wait here for ever if the failure did not abort the job
print("unreachable")
