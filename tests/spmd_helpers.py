"""SPMD functions used by tests (engines import this module: conftest puts tests/ on PYTHONPATH)."""

from ipcbench import backends


def open_all_then_fail_on_reader(comm):
    """Open a shm, zmq and lmdb channel, then fail on rank 1 while rank 0 waits in a collective."""
    chans = [backends.open_channel("shm", comm), backends.open_channel("zmq", comm), backends.open_channel("lmdb", comm)]
    if comm.rank == 1:
        raise RuntimeError("deliberate reader failure with channels open")
    comm.Barrier()  # rank 0 waits here for ever: the cluster must kill it
    for c in chans:
        c.close()
